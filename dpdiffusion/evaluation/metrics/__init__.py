"""Local ``evaluate`` modules (offline): ``evaluate.load(metric_path("attribute_leakage"))``.

Each folder holds one module script named like the folder, a thin adapter over the pure functions of
``dpdiffusion.evaluation``: ``attribute_leakage``, ``attribute_utility``, ``identity_leakage``, ``image_quality`` and
``dp_audit``.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("attribute_leakage", "attribute_utility", "identity_leakage", "image_quality", "dp_audit")


def metric_path(name: str) -> str:
    """The folder to pass to ``evaluate.load`` for the local module ``name`` (one of ``METRIC_NAMES``)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"name must be one of {list(METRIC_NAMES)}, got name={name!r}")
    return str(METRICS_DIR / name)
