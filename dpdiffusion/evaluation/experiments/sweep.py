"""``run_paper_experiments``: every method at every epsilon, every metric, the audit and the report in one call."""

from __future__ import annotations

import logging
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ..baselines import ALL_METHODS
from ..quality import FD_FEATURE_SPACE
from .audits import run_audits
from .common import _DEFAULTS, AUDIT_EPSILONS, PAPER_EPSILONS, QUICK_EPSILONS
from .data import load_evaluation_data
from .report import _table, check_claims, write_outputs
from .settings import (_build_methods, _clean_reference, _formal_rows, _obfuscation_rows, _residual_leakage,
                       _Sweep)

logger = logging.getLogger(__name__)

__all__ = ["run_paper_experiments"]


def run_paper_experiments(
    out: str | Path = "paper-results",
    *,
    pipe=None,
    model: str | None = None,
    dataset: str = "synthfaces",
    attribute_columns: Sequence[str] | None = None,
    protected_attributes: Sequence[str] | None = None,
    identity_column: str | None = None,
    epsilons: Sequence[float] | None = None,
    methods: Sequence[str] = ALL_METHODS,
    num_train: int | None = None,
    num_test: int | None = None,
    num_inference_steps: int | None = None,
    delta: float = 1e-5,
    classifier_epochs: int | None = None,
    audit_epsilons: Sequence[float] = AUDIT_EPSILONS,
    audit_trials: int | None = None,
    audit_decoded_trials: int | None = None,
    audit_pairs: int | None = None,
    dp_pix_cell_size: int = 4,
    dp_pix_m: int = 1,
    pixel_l2_sensitivity: float | None = None,
    match_metric: str = "fd",
    batch_size: int = 128,
    utility_augment: bool = True,
    post_processing: str | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Run the sweep and write ``results.json``, ``results.md`` and the PNG figures to ``out``.

    Args:
        out (`str` or `Path`): output folder (created).
        pipe (`DPDiffusionPipeline`, *optional*): the pipeline to evaluate; else loaded from ``model``.
        model (`str`, *optional*): pipeline folder or Hub repo id (default: the embedded ``DEFAULT_MODEL``).
        dataset (`str`): ``"synthfaces"`` or a dataset name/folder that ``load_attribute_dataset`` reads.
        attribute_columns (`list[str]`, *optional*): label columns (default: SynthFaces' five, or every bool column).
        protected_attributes (`list[str]`, *optional*): attributes to protect; must have directions in the pipeline
            (default: the pipeline's defaults, ``dark_skin`` and ``long_hair`` on SynthFaces).
        identity_column (`str`, *optional*): person ids of a real dataset (for re-identification).
        epsilons (`list[float]`): the sweep (default ``PAPER_EPSILONS``; ``QUICK_EPSILONS`` with ``quick``).
        methods (`list[str]`): any of ``ALL_METHODS``.
        num_train, num_test (`int`): images per split (defaults 1000/400; 400/200 with ``quick``).
        num_inference_steps (`int`): DDIM steps of the decoder (default 5, for time on a CPU; more steps decode
            closer to the data and cost proportionally more).
        delta (`float`): delta of every (epsilon, delta) claim.
        classifier_epochs (`int`): epochs of every attacker/utility ResNet.
        audit_epsilons (`list[float]`): epsilons audited (those also in ``epsilons`` or not: audits are cheap).
        audit_trials (`int`): trials per world of each latent/pixel audit (default 24,000: they certify up to
            epsilon 8.09, twice the largest default audited epsilon; see `trials_needed`).
        audit_decoded_trials (`int`): trials per world of the audits through the decoder (0 skips them; default
            100, 0 with ``quick``). Above the largest claim they can refute (1.28 for 100) the decoded release is
            audited at that claim, and the row says so.
        audit_pairs (`int`): counterfactual pairs in the image-pair audits.
        dp_pix_cell_size (`int`), dp_pix_m (`int`): DP-Pix's cell size b and neighbourhood m.
        pixel_l2_sensitivity (`float`, *optional*): Delta of the pixel Gaussian (default: SynthFaces counterfactual
            95 % quantile, `counterfactual_l2_sensitivity`).
        match_metric (`str`): quality the obfuscations are matched on, ``"fd"`` (default) or ``"psnr"``.
        utility_augment (`bool`): the utility classifiers (clean reference included) train with flips and colour
            jitter (`flip_colour_augment`, the default); the leakage attackers never do.
        post_processing (`str`, *optional*): of dpdiffusion's and latent's released coordinates (``"clip"``,
            ``"posterior_mean"``; default: the pipeline's, ``"clip"``).
        quick (`bool`): the small sweep of ``dpdiffusion demo`` (about 2-3 minutes on 2 cores).
        seed (`int`): seeds data (disjoint from the default model's training seed), noise and classifiers.
        progress (`bool`): progress bars.
        command (`str`, *optional*): the command line recorded beside every figure (default: ``sys.argv``).

    Returns:
        `dict`: the results (the content of ``results.json``, with ``inf`` as a float): ``command``, ``config``,
        ``clean``, ``residual_leakage``, ``rows`` (one per method and epsilon), ``unmatched_obfuscations`` (blur /
        pixelate settings that no strength matches, with the reason), ``audit``, ``claims`` (the paper's
        claims at epsilon = 1, checked), ``table_md`` (the Markdown table), ``seconds`` and ``files``.

    Raises:
        ValueError: for unknown methods, attributes or bad sizes.
    """
    started = time.monotonic()
    defaults = _DEFAULTS[bool(quick)]
    num_train = num_train or defaults["num_train"]
    num_test = num_test or defaults["num_test"]
    steps = num_inference_steps or defaults["num_inference_steps"]
    epochs = classifier_epochs or defaults["classifier_epochs"]
    audit_trials = audit_trials or defaults["audit_trials"]
    decoded_trials = defaults["audit_decoded_trials"] if audit_decoded_trials is None else audit_decoded_trials
    audit_pairs = audit_pairs or defaults["audit_pairs"]
    epsilons = [float(e) for e in (epsilons or (QUICK_EPSILONS if quick else PAPER_EPSILONS))]
    methods = list(methods)
    _check_arguments(epsilons, methods, match_metric, num_train, num_test)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    pipe, data, protected, unprotected, log = _prepare(pipe, model, dataset, protected_attributes, attribute_columns,
                                                       identity_column, num_train, num_test, seed, progress)
    dataset_tag = "".join(c if c.isalnum() else "-" for c in str(dataset))[-40:] + "-" + "-".join(protected)
    sw = _Sweep(pipe=pipe, data=data, out=out, protected=protected, unprotected=unprotected, delta=delta, steps=steps,
                epochs=epochs, seed=seed, utility_augment=utility_augment, progress=progress, dataset_tag=dataset_tag)
    # 1. clean reference: classifier, features, latents
    clean, clean_summary = _clean_reference(sw, log)
    resid = _residual_leakage(sw, log)
    # 2. methods, 3. obfuscations
    objs = _build_methods(pipe, methods, protected, delta=delta, steps=steps, batch_size=batch_size,
                          dp_pix_cell_size=dp_pix_cell_size, dp_pix_m=dp_pix_m,
                          pixel_l2_sensitivity=pixel_l2_sensitivity, post_processing=post_processing)
    rows, samples, quality_key, unmatched = _sweep_rows(sw, objs, methods, epsilons, match_metric)
    # 4. audits
    audit = run_audits(pipe, data, objs, protected=protected, epsilons=list(audit_epsilons), delta=delta,
                       num_trials=audit_trials, decoded_trials=decoded_trials, num_pairs=audit_pairs,
                       num_inference_steps=steps, seed=seed, progress=progress) if audit_epsilons else {}

    config = {"dataset": dataset, "source": data.source, "names": data.names, "protected": protected,
              "unprotected": unprotected, "epsilons": epsilons, "methods": methods, "num_train": num_train,
              "num_test": num_test, "num_inference_steps": steps, "delta": delta, "classifier_epochs": epochs,
              "utility_augment": bool(utility_augment),
              "audit_epsilons": list(audit_epsilons), "audit_trials": audit_trials,
              "audit_decoded_trials": decoded_trials, "audit_pairs": audit_pairs, "quick": bool(quick),
              "seed": seed, "image_size": pipe.image_size, "model": model or "DEFAULT_MODEL",
              **_environment(quality_key)}
    results = {"command": command, "config": config, "clean": clean_summary, "residual_leakage": resid, "rows": rows,
               "unmatched_obfuscations": unmatched, "audit": audit}
    results["claims"] = check_claims(results)
    results["table_md"] = "\n".join(_table(results))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["files"] = write_outputs(results, samples, out)
    log(f"wrote {out / 'results.md'} and {out / 'results.json'} ({results['seconds']} s)")
    return results


def _sweep_rows(sw: _Sweep, objs: list, methods: list, epsilons: list, match_metric: str):
    """Every formal method at every epsilon, then the obfuscations at the image quality of dpdiffusion at each
    epsilon (FD by default: see match_obfuscation); returns the rows, the sample images, the matched quality key and
    the obfuscation settings that no strength matches (no row: see `_obfuscation_rows`)."""
    from tqdm.auto import tqdm

    data = sw.data
    all_images = torch.cat([data.train_images, data.test_images])
    samples: dict = {"original": data.test_images[:8]}
    obfus = [m for m in ("blur", "pixelate") if m in methods]
    bar = tqdm(total=len(objs) * len(epsilons) + len(obfus) * len(epsilons), desc="sweep", disable=not sw.progress)
    cache: dict = {}
    rows = _formal_rows(sw, objs, epsilons, all_images, cache, samples, bar)
    more, quality_key, unmatched = _obfuscation_rows(sw, obfus, epsilons, rows, match_metric, all_images, cache,
                                                     samples, bar)
    rows += more
    bar.close()
    return rows, samples, quality_key, unmatched


def _environment(quality_key: str) -> dict:
    """The feature spaces and software the figures were computed with (recorded in the results' config)."""
    return {"fd_feature_space": FD_FEATURE_SPACE, "obfuscations_matched_on": quality_key,
            "identity_features": "semantic latent of the evaluated pipeline's encoder (cosine, top-1)",
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def _check_arguments(epsilons: list, methods: list, match_metric: str, num_train: int, num_test: int) -> None:
    if any(math.isnan(e) or e <= 0 for e in epsilons):
        raise ValueError(f"epsilons must be > 0 (inf allowed), got epsilons={epsilons}")
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(ALL_METHODS)}")
    if match_metric not in ("fd", "psnr"):
        raise ValueError(f"match_metric must be 'fd' or 'psnr', got match_metric={match_metric!r}")
    if num_train < 20 or num_test < 20:
        raise ValueError(f"num_train and num_test must be >= 20, got {num_train} and {num_test}")


def _prepare(pipe, model, dataset, protected_attributes, attribute_columns, identity_column, num_train, num_test,
             seed, progress):
    """The pipeline (loaded from ``model`` when not given), the data and the protected / unprotected attributes."""
    if pipe is None:
        from ...models.default import load_pipeline as _load_pipeline

        pipe = _load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.image_size
    protected = list(protected_attributes or pipe._default_attributes())
    pipe.attribute_directions.indices(protected)  # unknown -> ValueError

    log = (lambda msg: print(msg, flush=True)) if progress else logger.info
    data = load_evaluation_data(dataset, image_size=size, num_train=num_train, num_test=num_test,
                                attribute_columns=attribute_columns, identity_column=identity_column, seed=seed)
    missing = [a for a in protected if a not in data.names]
    if missing:
        raise ValueError(f"protected attributes {missing} are not label columns {data.names}")
    unprotected = [n for n in data.names if n not in protected]
    log(f"data: {data.source}; {len(data.train_images)} train / {len(data.test_images)} test at {size} px; "
        f"protected {protected}, utility on {unprotected}")
    return pipe, data, protected, unprotected, log
