"""The project's figures as ``evaluate`` modules, loadable offline by path.

```py
import evaluate
from dpdiffusion.evaluation import metric_path

leakage = evaluate.load(metric_path("attribute_leakage"))
leakage.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1], epsilon=1.0)["bound"]   # e / (1 + e)
```

Each folder holds one module script named like the folder (``evaluate.load`` of a folder loads ``<folder>/<folder>.py``),
a thin adapter whose ``_compute`` calls the project's one implementation, so a figure computed through ``evaluate``
and the same figure in the demo report, the paper sweep or an unlearned model's card cannot drift apart:

- ``attribute_leakage``: an attacker's accuracy on a binary protected attribute, its Clopper-Pearson interval and
  the (epsilon, delta)-DP bound on any attacker (`dpdiffusion.evaluation.leakage.leakage_accuracy`);
- ``utility_ratio``: accuracy of a classifier trained on protected images against the clean recipe's, per attribute
  (`dpdiffusion.evaluation.utility.utility_report`);
- ``dp_audit``: the empirical epsilon lower bound of a threshold attack, the largest epsilon the trial count can
  certify and whether the audit can refute the claim (`dpdiffusion.evaluation.audit.threshold_audit`);
- ``mia_auc``: the ROC AUC of a membership-inference score (`dpdiffusion.evaluation.probes.roc_auc`);
- ``gap_restored``: the share of the original -> retrained accuracy gap that unlearning restores
  (`dpdiffusion.evaluation.unlearning_shift.gap_restored`);
- ``classification_accuracy``: top-1 (or mean per-label) accuracy, the metric the project gives
  ``evaluate.evaluator("image-classification")`` (`dpdiffusion.evaluation.unlearning_metrics.prediction_accuracy`).

`push_metric_spaces` publishes them as metric Spaces (``dpdiffusion evaluate push-metrics --namespace NAME``).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

__all__ = ["METRICS_DIR", "METRIC_NAMES", "metric_path", "load_metric", "write_metric_space", "push_metric_spaces"]

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("attribute_leakage", "utility_ratio", "dp_audit", "mia_auc", "gap_restored",
                "classification_accuracy")


def _check_name(name: str) -> str:
    if name not in METRIC_NAMES:
        raise ValueError(f"name must be one of {list(METRIC_NAMES)}, got name={name!r}")
    return name


def metric_path(name: str) -> str:
    """The folder to pass to ``evaluate.load`` for the module ``name`` (one of `METRIC_NAMES`).

    Example:
    ```py
    >>> Path(metric_path("mia_auc")).name
    'mia_auc'

    ```

    Raises:
        ValueError: for a name that is not one of `METRIC_NAMES`.
    """
    return str(METRICS_DIR / _check_name(name))


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """``evaluate.load(metric_path(name), keep_in_memory=True)``, once per process (the project's own figures are
    computed through this; nothing is fetched from the Hub and nothing is written to the ``evaluate`` cache).

    Raises:
        ValueError: for a name that is not one of `METRIC_NAMES`.
    """
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)


# ------------------------------------------------------------------------------------------------------------------
# metric Spaces on the Hub
# ------------------------------------------------------------------------------------------------------------------
_SPACE_README = """---
title: {title}
emoji: 🔒
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
short_description: {summary}
tags:
- evaluate
- metric
- dpdiffusion
- differential-privacy
---

# {title}

{description}

## How to use

```python
import evaluate
metric = evaluate.load("{repo_id}")   # or offline, with dpdiffusion installed:
# from dpdiffusion.evaluation import metric_path; metric = evaluate.load(metric_path("{name}"))
```

```
{inputs_description}
```

The module is a thin adapter: its `_compute` calls `{implementation}` of the `dpdiffusion` package (listed in
`requirements.txt`), the function the project's own reports use, so the numbers here and there are the same.

## Citation

```bibtex
{citation}
```
"""

_SPACE_APP = """import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("{repo_id}")
launch_gradio_widget(module)
"""

# Space titles and short descriptions (the Hub allows 60 characters)
_TITLES = {
    "attribute_leakage": ("Attribute Leakage", "Attacker accuracy on a protected attribute vs the DP bound"),
    "utility_ratio": ("Utility Ratio", "Accuracy trained on protected vs clean images"),
    "dp_audit": ("DP Audit", "Empirical epsilon lower bound from attack scores"),
    "mia_auc": ("MIA AUC", "Membership-inference ROC AUC"),
    "gap_restored": ("Gap Restored", "Share of the retraining gap an unlearning method restores"),
    "classification_accuracy": ("Classification Accuracy", "Top-1 or per-label accuracy of a classifier"),
}

_IMPLEMENTATIONS = {
    "attribute_leakage": "dpdiffusion.evaluation.leakage.leakage_accuracy",
    "utility_ratio": "dpdiffusion.evaluation.utility.utility_report",
    "dp_audit": "dpdiffusion.evaluation.audit.threshold_audit",
    "mia_auc": "dpdiffusion.evaluation.probes.roc_auc",
    "gap_restored": "dpdiffusion.evaluation.unlearning_shift.gap_restored",
    "classification_accuracy": "dpdiffusion.evaluation.unlearning_metrics.prediction_accuracy",
}


def _check_namespace(namespace: str) -> str:
    import re

    if not isinstance(namespace, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", namespace):
        raise ValueError(f"namespace must be a Hub user or organisation name (letters, digits, '.', '_', '-'), "
                         f"got namespace={namespace!r}")
    return namespace


def write_metric_space(name: str, folder: str | Path, *, namespace: str) -> Path:
    """Write the metric Space of module ``name`` to ``folder`` (created whole, never half-written): ``<name>.py``
    (the module script, byte for byte), ``app.py`` (``evaluate``'s Gradio widget), ``README.md`` (Space YAML with the
    ``evaluate`` / ``metric`` tags, the module's description, inputs and citation) and ``requirements.txt``.

    The Space carries code and documentation only: no data, no figure of any run.

    Raises:
        ValueError: for an unknown ``name`` or an invalid ``namespace``.
    """
    from importlib.metadata import PackageNotFoundError, version

    from ...utils_files import write_folder_atomically

    _check_name(name)
    _check_namespace(namespace)
    module = load_metric(name)
    info = module._info()  # the module's own texts, as evaluate.load read them
    repo_id = f"{namespace}/{name}"
    try:
        gradio_version = version("gradio")
    except PackageNotFoundError:
        gradio_version = "6.24.0"  # the space extra's floor
    try:
        dpdiffusion_version = version("dpdiffusion")
    except PackageNotFoundError:
        dpdiffusion_version = None
    title, summary = _TITLES[name]
    readme = _SPACE_README.format(
        title=title, gradio_version=gradio_version, summary=summary, repo_id=repo_id,
        name=name, description=info.description.strip(), inputs_description=info.inputs_description.strip(),
        implementation=_IMPLEMENTATIONS[name], citation=info.citation.strip() or "(none)")
    script = (Path(metric_path(name)) / f"{name}.py").read_bytes()
    requirements = "\n".join(["evaluate", "gradio",
                              f"dpdiffusion>={dpdiffusion_version}" if dpdiffusion_version else "dpdiffusion"]) + "\n"

    def write(tmp: Path) -> None:
        (tmp / f"{name}.py").write_bytes(script)
        (tmp / "app.py").write_text(_SPACE_APP.format(repo_id=repo_id), encoding="utf-8")
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        (tmp / "requirements.txt").write_text(requirements, encoding="utf-8")

    folder = Path(folder)
    write_folder_atomically(folder, write)
    return folder


def push_metric_spaces(namespace: str, *, names: Sequence[str] | None = None, token: str | None = None,
                       private: bool | None = None, endpoint: str | None = None,
                       dry_run_dir: str | Path | None = None) -> dict:
    """Publish the modules as metric Spaces ``<namespace>/<name>`` (``evaluate.load("<namespace>/<name>")`` then
    loads them from the Hub, with ``dpdiffusion`` installed).

    Every Space folder is written first (`write_metric_space`), then each is created
    (``create_repo(repo_type="space", space_sdk="gradio")``) and uploaded in one commit.

    Args:
        namespace (`str`): the Hub user or organisation.
        names (`list[str]`, *optional*): modules to push (default: all of `METRIC_NAMES`).
        token (`str`, *optional*): Hub token with write access (default: ``$HF_TOKEN`` or the saved login).
        private (`bool`, *optional*): visibility of new Spaces (default: the Hub's).
        endpoint (`str`, *optional*): the Hub's URL (default: ``$HF_ENDPOINT`` or huggingface.co).
        dry_run_dir (`str` or `Path`, *optional*): write the Space folders here (one per module) and upload nothing.

    Returns:
        `dict`: ``{repo_id: folder}`` with ``dry_run_dir``, else ``{repo_id: CommitInfo}``.

    Raises:
        ValueError: for an invalid namespace or unknown names (before anything is written or sent).
    """
    import tempfile

    _check_namespace(namespace)
    names = list(METRIC_NAMES if names is None else names)
    if not names:
        raise ValueError("names must name at least one module, got names=[]")
    for n in names:
        _check_name(n)
    if dry_run_dir is not None:
        return {f"{namespace}/{n}": write_metric_space(n, Path(dry_run_dir) / n, namespace=namespace) for n in names}
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {n: write_metric_space(n, Path(tmp) / n, namespace=namespace) for n in names}
        for n, folder in folders.items():
            repo_id = f"{namespace}/{n}"
            api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            out[repo_id] = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(folder),
                                             commit_message=f"Upload the dpdiffusion metric {n}")
            logger.info("pushed the metric %s to the Space %s", n, repo_id)
    return out
