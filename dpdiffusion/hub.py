"""Model cards from `model_cards/` templates, and pushing unlearned classifiers to the Hugging Face Hub.

```python
from dpdiffusion.hub import push_unlearned_model
folder = push_unlearned_model(
    result.model, "me/faces-unlearned", result=result,
    privacy=dict(epsilon=1.0, delta=1e-5, guarantee="formal", neighbouring_relation="attribute-neighbours",
                 attributes=["dark_skin"]),
    metrics=table, cost=dict(seconds=result.seconds, retrain_seconds=retrained.seconds),
    dry_run_dir="to-upload",   # writes exactly the folder that would be uploaded; omit to upload
)
```
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import os

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .privacy.spec import GUARANTEES as SPEC_GUARANTEES

logger = logging.getLogger(__name__)

__all__ = ["MODEL_CARDS_DIR", "public_command", "public_path", "render_model_card", "build_unlearned_model_card", "push_unlearned_model",
           "write_unlearned_model"]

# what each figure of an unlearning run means, for the card: only the figures a run computed are described
METRIC_DESCRIPTIONS = {
    "changed_pairs": "number of training images that were replaced by their protected revision",
    "training_rows": "size of the training set after revision",
    "accuracy_revised_before": "accuracy of the original classifier on the revised (protected) training images",
    "accuracy_revised_after": "accuracy of the unlearned classifier on the revised (protected) training images",
    "agreement_with_retrained": "fraction of the revised training set on which the unlearned and the retrained "
                                "model predict the same labels",
    "mia_auc": "ROC AUC of a loss-threshold membership-inference attack separating the original images of the "
               "revised examples from held-out images (0.5: no signal; compare with the retrained model)",
    "mia_auc_retrained": "the same attack against the model retrained from scratch on the revised data",
    "accuracy_shifted_before": "accuracy of the original classifier on the shifted test split (held-out images on "
                               "which the correlation to unlearn is reversed)",
    "accuracy_shifted_after": "accuracy of the unlearned classifier on the shifted test split",
    "accuracy_shifted_retrained": "accuracy of the retrained classifier on the shifted test split",
    "gap_restored_shifted": "share of the original -> retrained accuracy gap on the shifted split that unlearning "
                            "restored (1: as good as retraining)",
    "unlearning_seconds": "wall-clock seconds of the unlearning update",
    "retrain_seconds": "wall-clock seconds of retraining from scratch on the revised data",
    "speedup_vs_retrain": "retraining time divided by unlearning time",
    "wall_seconds": "wall-clock seconds of the whole job (loading, unlearning, evaluation)",
    # columns of a `compare_unlearning` table
    "seconds": "wall-clock seconds of the method",
    "test_accuracy": "accuracy on held-out test images",
    "l2_to_retrained": "L2 parameter distance to the model retrained from scratch on the revised data",
    "prob_distance_to_retrained": "mean distance of predicted probabilities to the retrained model's",
    "probe_accuracy": "accuracy of a linear probe for the protected attribute on the penultimate features",
}
# the `model-index` metric type of each figure: for the unlearn job's figures, the `evaluate` module that computed it
# (`evaluate.load(dpdiffusion.evaluation.metric_path(type))`, or a Space pushed by `dpdiffusion evaluate push-metrics`)
METRIC_TYPES = {"accuracy_revised_before": "classification_accuracy", "accuracy_revised_after": "classification_accuracy",
                "accuracy_shifted_before": "classification_accuracy", "accuracy_shifted_after": "classification_accuracy",
                "accuracy_shifted_retrained": "classification_accuracy", "gap_restored_shifted": "gap_restored",
                "agreement_with_retrained": "agreement", "mia_auc": "mia_auc", "mia_auc_retrained": "mia_auc",
                "test_accuracy": "accuracy", "unlearning_seconds": "wall_time", "retrain_seconds": "wall_time",
                "wall_seconds": "wall_time", "seconds": "wall_time", "speedup_vs_retrain": "speedup"}

# the repository's model_cards/ (dpdiffusion/model_cards links to it, so that wheels carry the templates too)
MODEL_CARDS_DIR = Path(__file__).resolve().parent / "model_cards"
PRIVACY_KEYS = ("epsilon", "delta", "guarantee", "neighbouring_relation", "attributes")
# a card takes the guarantee a release reports (`dpdiffusion.privacy.spec.GUARANTEES`), or a plain "none"
GUARANTEES = SPEC_GUARANTEES + ("none",)


def _template_path(template_name: str, template_dir: str | Path | None) -> Path:
    base = Path(template_dir) if template_dir is not None else MODEL_CARDS_DIR
    name = template_name if template_name.endswith(".md") else f"{template_name}.md"
    path = base / name
    if not path.is_file():
        available = sorted(p.stem for p in base.glob("*.md")) if base.is_dir() else []
        raise ValueError(f"template_name={template_name!r} not found in {base}; available: {available}")
    return path


def render_model_card(
    template_name: str, *, card_data: ModelCardData | None = None, template_dir: str | Path | None = None, **context
) -> ModelCard:
    """Render a Jinja template from `model_cards/` into a `huggingface_hub.ModelCard`.

    The template's front matter is `{{ card_data }}` (the YAML of `card_data`); every key of `card_data` and of
    `context` is available to the template (`ModelCard.from_template`).

    Args:
        template_name (`str`): file name in `template_dir`, with or without `.md`.
        card_data (`ModelCardData`, *optional*): the front matter; empty by default.
        template_dir (`str` or `Path`, *optional*): defaults to the repository's `model_cards/`.
        **context: template variables.

    Raises:
        ValueError: if the template does not exist.
    """
    path = _template_path(template_name, template_dir)
    return ModelCard.from_template(card_data or ModelCardData(), template_str=path.read_text(encoding="utf-8"), **context)


def _check_privacy(privacy: Mapping[str, Any]) -> dict:
    if not isinstance(privacy, Mapping):
        raise ValueError(f"privacy must be a dict with keys {PRIVACY_KEYS}, got {type(privacy).__name__}")
    missing = [k for k in PRIVACY_KEYS if k not in privacy]
    if missing:
        raise ValueError(f"privacy is missing keys {missing} (required: {list(PRIVACY_KEYS)})")
    eps, delta = float(privacy["epsilon"]), float(privacy["delta"])
    if not (eps >= 0):
        raise ValueError(f"privacy['epsilon'] must be >= 0 (or inf), got epsilon={privacy['epsilon']}")
    if not 0 <= delta < 1:
        raise ValueError(f"privacy['delta'] must be in [0, 1), got delta={privacy['delta']}")
    if privacy["guarantee"] not in GUARANTEES:
        raise ValueError(f"privacy['guarantee'] must be one of {GUARANTEES}, got {privacy['guarantee']!r}")
    attrs = privacy["attributes"]
    attrs = [attrs] if isinstance(attrs, str) else list(attrs)
    out = dict(privacy)
    out.update(epsilon=eps, delta=delta, attributes=attrs, neighbouring_relation=str(privacy["neighbouring_relation"]))
    return out


def _default_protected(privacy: dict, n_changed: int, method: str) -> str:
    eps = "infinity (no noise)" if math.isinf(privacy["epsilon"]) else f"{privacy['epsilon']:g}"
    return (
        f"- The protected attributes ({', '.join(privacy['attributes'])}) of the {n_changed} revised training images: "
        f"the images the model now reflects were released with ({eps}, {privacy['delta']:g})-differential privacy "
        f"({privacy['guarantee']} guarantee) for the neighbouring relation `{privacy['neighbouring_relation']}`.\n"
        f"- The original (unprotected) versions of those images, to the extent that `{method}` unlearning "
        "approximates retraining on the revised data (see the evaluation below for what this run measured)."
    )


def _default_not_protected(privacy: dict, method: str) -> str:
    exact = method == "retrain"
    return (
        "- Everything outside the protected attributes: identity, pose, expression and all other image content of "
        "the revised images, and every training image that was not revised.\n"
        + (
            ""
            if exact
            else f"- `{method}` unlearning is approximate and carries no formal guarantee: traces of the original "
            "images can remain in the weights; only retraining removes them exactly.\n"
        )
        + "- Correlations between the protected attributes and the labels that the remaining training data still "
        "carry: the model may still infer a protected attribute from them."
    )


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    if "rows" in metrics and "columns" in metrics:  # a compare_unlearning table
        cols = list(metrics["columns"])
        lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, row in metrics["rows"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
        return "\n".join(lines)
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in metrics.items()]
    return "\n".join(lines)


def build_unlearned_model_card(
    model: Any,
    repo_id: str,
    *,
    result: Any,
    privacy: Mapping[str, Any],
    metrics: Mapping[str, Any],
    cost: Mapping[str, Any],
    command: str | None = None,
    template_name: str = "unlearned_classifier",
    template_dir: str | Path | None = None,
    card_info: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The model card of an unlearned classifier (see `push_unlearned_model` for the arguments).

    `repo_id=None` (a local folder that is not pushed) names the model after nothing invented: the usage snippet
    loads the folder. `card_info` may give `base_model` (a Hub id, set only when the input was one),
    `base_model_path` (where the base model's own card is read for its `license`), `license` (given: no look-up),
    `datasets` (Hub dataset ids),
    `processor_source`, `label_kind` and `label_columns`.
    """
    privacy = _check_privacy(privacy)
    if "seconds" not in cost or "retrain_seconds" not in cost:
        raise ValueError(f"cost must have keys 'seconds' and 'retrain_seconds', got {sorted(cost)}")
    seconds = float(cost["seconds"])
    retrain_seconds = None if cost["retrain_seconds"] is None else float(cost["retrain_seconds"])
    if retrain_seconds is None:  # the caller did not retrain: say so rather than invent a figure
        cost_text = {"seconds": f"{seconds:.3g}", "retrain_seconds": "not measured", "speedup": "not measured"}
    else:
        speedup = retrain_seconds / seconds if seconds > 0 else float("inf")
        cost_text = {"seconds": f"{seconds:.3g}", "retrain_seconds": f"{retrain_seconds:.3g}",
                     "speedup": f"{speedup:.3g}x"}
    method = getattr(result, "method", None) or str(result.get("method"))
    summary = result.summary() if hasattr(result, "summary") else dict(result)
    n_changed = int(summary.get("n_changed", 0))
    unlearning = {"method": method, "n_changed": n_changed}
    for key in ("tau", "damping", "n_train", "seconds"):
        if summary.get(key) is not None:
            unlearning[key] = float(summary[key]) if key != "n_train" else int(summary[key])
    config = getattr(model, "config", None)
    label_names = [str(v) for v in getattr(config, "id2label", {}).values()] if config is not None else []
    info = dict(card_info or {})
    # step_*, held_out_pairs, training_rows, revised_share: see unlearning.step_search; l2, newton_steps,
    # certified_distance: head_exact
    for key in ("updated_modules", "problem_type", "step_search", "step_scale", "held_out_pairs", "training_rows",
                "revised_share", "l2", "newton_steps", "certified_distance"):
        if summary.get(key) is not None:
            unlearning[key] = summary[key]
    base_model = info.get("base_model")
    license_ = info["license"] if "license" in info else _base_model_license(info.get("base_model_path") or base_model)
    datasets_ = [str(d) for d in (info.get("datasets") or [])]
    flat = _flat_metrics(metrics, method)
    model_name = repo_id.split("/")[-1] if repo_id else "unlearned-classifier"
    dataset_name = f"revised training images ({flat.get('changed_pairs', n_changed)} protected)"
    eval_results = [
        EvalResult(task_type="image-classification", dataset_type=datasets_[-1] if datasets_ else "imagefolder",
                   dataset_name=dataset_name, dataset_split="train", metric_type=METRIC_TYPES.get(k, k),
                   metric_name=k, metric_value=float(v))
        for k, v in flat.items() if k not in ("changed_pairs", "training_rows")
    ]
    tags = ["dp", "differential-privacy", "machine-unlearning", "dpdiffusion", "image-classification"]
    model_type = getattr(config, "model_type", None)
    if model_type:
        tags.append(str(model_type))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license_,
        base_model=base_model,
        datasets=datasets_ or None,
        tags=tags,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        privacy={k: privacy[k] for k in PRIVACY_KEYS},
        unlearning=unlearning,
    )
    described = [k for k in _metric_keys(metrics) if k in METRIC_DESCRIPTIONS]
    return render_model_card(
        template_name,
        card_data=card_data,
        template_dir=template_dir,
        model_name=model_name,
        repo_id=repo_id or info.get("local_path") or "path/to/this/folder",
        base_model=base_model or public_path(info.get("base_model_path")),
        license=license_,
        datasets=datasets_,
        processor_source=info.get("processor_source"),
        label_kind=info.get("label_kind") or getattr(config, "problem_type", None),
        label_columns=info.get("label_columns") or [],
        architecture=type(model).__name__,
        num_parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        label_names=label_names or ["-"],
        n_changed=n_changed,
        privacy=privacy,
        unlearning=unlearning,
        unlearning_details={k: v for k, v in summary.items() if k not in ("method", "n_changed") and v is not None},
        what_is_protected=privacy.get("what_is_protected") or _default_protected(privacy, n_changed, method),
        what_is_not_protected=privacy.get("what_is_not_protected") or _default_not_protected(privacy, method),
        metrics_table=_metrics_table(metrics),
        metric_descriptions={k: METRIC_DESCRIPTIONS[k] for k in described},
        cost=cost_text,
        command=public_command(command or " ".join(shlex.quote(a) for a in sys.argv)),
    )


# options whose value is always a local folder (created by the run, so not yet on disk when the card is written)
LOCAL_PATH_OPTIONS = ("--output-dir", "--out", "--private-dir", "--dry-run-dir")


def _last_component(text: str) -> str:
    parts = [p for p in re.split(r"[\\/]+", text) if p]
    return parts[-1] if parts else text


def public_path(value: str | None, *, local: bool = False) -> str | None:
    """A local path as a card may show it: its last component only (``/home/ana/celeba/originals`` ->
    ``originals``); a Hub id, a number or a flag unchanged.

    A value is taken for a local path when ``local`` is set, or it exists on disk, is absolute, starts with ``~`` or
    ``.``, holds a backslash (a Windows path) or more than one ``/`` (a Hub id is ``namespace/name``). The card is
    published: the owner's folder layout (user names, project or person names in folder names) is the owner's
    bookkeeping, not part of the release (docs/threat-model.md).
    """
    if not value:
        return value
    text = str(value)
    if local or os.path.isabs(text) or text.startswith(("~", ".")) or "\\" in text or text.count("/") > 1 \
            or re.match(r"^[A-Za-z]:", text) or (("/" in text) and os.path.exists(text)):
        return _last_component(text)
    return text


def public_command(command: str) -> str:
    """``command`` with every local path replaced by `public_path` (also in ``--option=PATH``; the values of
    `LOCAL_PATH_OPTIONS` always), for a card."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: show nothing rather than a half-redacted line
        return "(command line not shown)"
    out, previous = [], None
    for word in words:
        if word.startswith("--") and "=" in word:
            flag, _, value = word.partition("=")
            out.append(f"{flag}={public_path(value, local=flag in LOCAL_PATH_OPTIONS)}")
        elif word.startswith("-"):
            out.append(word)
        else:
            out.append(public_path(word, local=previous in LOCAL_PATH_OPTIONS))
        previous = word
    return " ".join(shlex.quote(w) for w in out)


def _metric_keys(metrics: Mapping[str, Any]) -> list[str]:
    if "rows" in metrics and "columns" in metrics:
        return list(metrics["columns"])
    return list(metrics)


def _flat_metrics(metrics: Mapping[str, Any], method: str) -> dict[str, float]:
    """Numeric figures of the run for the `model-index`: a flat dict as is, or the method's row of a table."""
    if "rows" in metrics and "columns" in metrics:
        row = metrics["rows"].get(method) or {}
        items = {c: row.get(c) for c in metrics["columns"]}
    else:
        items = dict(metrics)
    return {k: float(v) for k, v in items.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _base_model_license(name_or_path: str | None) -> str | None:
    """The `license` of the base model's own card (local folder, or the Hub when reachable); None if unknown."""
    if not name_or_path:
        return None
    try:
        path = Path(os.path.expanduser(str(name_or_path)))
        if path.is_dir():
            readme = path / "README.md"
            return ModelCard.load(readme).data.license if readme.is_file() else None
        return ModelCard.load(str(name_or_path)).data.license
    except Exception as err:  # noqa: BLE001 - offline, no card, malformed card: the license stays unknown
        logger.info("license of the base model %s not found: %s", name_or_path, err)
        return None


def _write_folder(folder: Path, model: Any, card: ModelCard, record: dict, image_processor: Any = None) -> None:
    """Write the folder completely in a sibling temporary folder, then move it into place (never half-written)."""
    from .utils_files import write_folder_atomically

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)  # config.json + model.safetensors
        if image_processor is not None:
            image_processor.save_pretrained(tmp)  # preprocessor_config.json
        card.save(tmp / "README.md")
        (tmp / "unlearning.json").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")

    write_folder_atomically(folder, write)


def write_unlearned_model(
    model: Any,
    folder: str | Path,
    *,
    repo_id: str | None = None,
    result: Any,
    privacy: Mapping[str, Any],
    metrics: Mapping[str, Any],
    cost: Mapping[str, Any],
    command: str | None = None,
    image_processor: Any = None,
    card_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete Hub model folder: weights, config, `preprocessor_config.json`, card, `unlearning.json`.

    See `push_unlearned_model` for the arguments; `repo_id` is only used in the card (None: not pushed).

    Returns:
        The folder `Path`.
    """
    folder = Path(folder)
    info = dict(card_info or {})
    if not repo_id:
        info.setdefault("local_path", f"./{folder.name}")  # the card of an unpushed folder names no invented id
    card = build_unlearned_model_card(model, repo_id, result=result, privacy=privacy, metrics=metrics, cost=cost,
                                      command=command, card_info=info)
    summary = result.summary() if hasattr(result, "summary") else dict(result)
    record = {"repo_id": repo_id, "unlearning": summary, "privacy": _check_privacy(privacy), "metrics": dict(metrics),
              "cost": dict(cost),
              **({"card_info": {k: public_path(v) if k.endswith("_path") else v for k, v in card_info.items()}}
                 if card_info else {})}
    _write_folder(folder, model, card, record, image_processor)
    return folder


def push_unlearned_model(
    model: Any,
    repo_id: str,
    *,
    result: Any,
    privacy: Mapping[str, Any],
    metrics: Mapping[str, Any],
    cost: Mapping[str, Any],
    token: str | None = None,
    private: bool = True,
    dry_run_dir: str | Path | None = None,
    command: str | None = None,
    commit_message: str | None = None,
    image_processor: Any = None,
    card_info: Mapping[str, Any] | None = None,
    folder: str | Path | None = None,
    endpoint: str | None = None,
):
    """Save an unlearned classifier with its model card, and upload it (or write the folder only).

    The folder holds `config.json` + `model.safetensors` (`save_pretrained`), `preprocessor_config.json` (when
    `image_processor` is given, so that `pipeline("image-classification", model=...)` works on it), `README.md`
    (the model card rendered from `model_cards/unlearned_classifier.md`: front matter with `library_name:
    transformers`, tags `dp` / `machine-unlearning`, `base_model`, `datasets`, the base model's `license`, a
    `model-index` of the figures in `metrics`, and `privacy` {epsilon, delta, guarantee, neighbouring_relation,
    attributes} and `unlearning` {method, ...} keys), and `unlearning.json` (the same figures, machine-readable).

    Args:
        model: the unlearned `transformers` model.
        repo_id (`str`): `"namespace/name"` on the Hub.
        result (`UnlearningResult` or `dict`): the unlearning run (method, n_changed, tau, damping, ...).
        privacy (`dict`): `epsilon`, `delta`, `guarantee` (`"formal"`, `"heuristic"` or `"none"`),
            `neighbouring_relation`, `attributes`; optional `what_is_protected` / `what_is_not_protected` texts.
        metrics (`dict`): a `compare_unlearning` table or a flat `{metric: value}` dict of figures the run
            computed (only these appear in the card).
        cost (`dict`): `seconds` (unlearning) and `retrain_seconds` (retraining from scratch, or None).
        token (`str`, *optional*): Hub token; the local login by default.
        private (`bool`): create the repository as private.
        dry_run_dir (`str` or `Path`, *optional*): write the exact folder to upload here and return its path,
            without any network access.
        command (`str`, *optional*): the command that produced the model (default: this process's argv).
        image_processor (*optional*): the `AutoImageProcessor` the model was unlearned with.
        card_info (`dict`, *optional*): `base_model`, `base_model_path`, `datasets`, ... (see
            `build_unlearned_model_card`).
        folder (`str` or `Path`, *optional*): an already written folder (`write_unlearned_model`) to upload as is.
        endpoint (`str`, *optional*): the Hub endpoint (default: `HF_ENDPOINT` or huggingface.co).

    Returns:
        The folder `Path` with `dry_run_dir`, else the `huggingface_hub.CommitInfo` of the upload.

    Raises:
        ValueError: for an invalid `repo_id`, `privacy` or `cost`.
    """
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must be 'namespace/name' or 'name', got repo_id={repo_id!r}")
    write = dict(repo_id=repo_id, result=result, privacy=privacy, metrics=metrics, cost=cost, command=command,
                 image_processor=image_processor, card_info=card_info)
    summary = result.summary() if hasattr(result, "summary") else dict(result)
    if dry_run_dir is not None:
        out = write_unlearned_model(model, dry_run_dir, **write)
        logger.info("dry run: wrote the upload folder to %s", out)
        return out
    api = HfApi(token=token, **({"endpoint": endpoint} if endpoint else {}))
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    message = commit_message or f"Upload {summary.get('method', 'unlearned')} unlearned classifier"
    if folder is not None:
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=message)
    with tempfile.TemporaryDirectory() as tmp:
        out = write_unlearned_model(model, Path(tmp) / "upload", **write)
        return api.upload_folder(repo_id=repo_id, folder_path=str(out), repo_type="model", commit_message=message)
