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
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import HfApi, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

__all__ = ["MODEL_CARDS_DIR", "render_model_card", "build_unlearned_model_card", "push_unlearned_model"]

# the repository's model_cards/ (dpdiffusion/model_cards links to it, so that wheels carry the templates too)
MODEL_CARDS_DIR = Path(__file__).resolve().parent / "model_cards"
PRIVACY_KEYS = ("epsilon", "delta", "guarantee", "neighbouring_relation", "attributes")
GUARANTEES = ("formal", "heuristic", "none")


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
        "approximates retraining on the revised data (see the evaluation: membership inference on the originals)."
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
        "carry: the model may still infer a protected attribute from them (see the probe accuracy)."
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
) -> ModelCard:
    """The model card of an unlearned classifier (see `push_unlearned_model` for the arguments)."""
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
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license="apache-2.0",
        tags=["dp", "differential-privacy", "machine-unlearning", "dpdiffusion", "image-classification"],
        privacy={k: privacy[k] for k in PRIVACY_KEYS},
        unlearning=unlearning,
    )
    return render_model_card(
        template_name,
        card_data=card_data,
        template_dir=template_dir,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
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
        cost=cost_text,
        command=command or " ".join(shlex.quote(a) for a in sys.argv),
    )


def _write_folder(folder: Path, model: Any, card: ModelCard, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # config.json + model.safetensors
    card.save(folder / "README.md")
    (folder / "unlearning.json").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")


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
):
    """Save an unlearned classifier with its model card, and upload it (or write the folder only).

    The folder holds `config.json` + `model.safetensors` (`save_pretrained`), `README.md` (the model card
    rendered from `model_cards/unlearned_classifier.md`: front matter with `library_name: transformers`, tags
    `dp` / `machine-unlearning`, and `privacy` {epsilon, delta, guarantee, neighbouring_relation, attributes} and
    `unlearning` {method, ...} keys), and `unlearning.json` (the same figures, machine-readable).

    Args:
        model: the unlearned `transformers` model.
        repo_id (`str`): `"namespace/name"` on the Hub.
        result (`UnlearningResult` or `dict`): the unlearning run (method, n_changed, tau, damping, ...).
        privacy (`dict`): `epsilon`, `delta`, `guarantee` (`"formal"`, `"heuristic"` or `"none"`),
            `neighbouring_relation`, `attributes`; optional `what_is_protected` / `what_is_not_protected` texts.
        metrics (`dict`): a `compare_unlearning` table or a flat `{metric: value}` dict.
        cost (`dict`): `seconds` (unlearning) and `retrain_seconds` (retraining from scratch).
        token (`str`, *optional*): Hub token; the local login by default.
        private (`bool`): create the repository as private.
        dry_run_dir (`str` or `Path`, *optional*): write the exact folder to upload here and return its path,
            without any network access.
        command (`str`, *optional*): the command that produced the model (default: this process's argv).

    Returns:
        The folder `Path` with `dry_run_dir`, else the `huggingface_hub.CommitInfo` of the upload.

    Raises:
        ValueError: for an invalid `repo_id`, `privacy` or `cost`.
    """
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must be 'namespace/name' or 'name', got repo_id={repo_id!r}")
    card = build_unlearned_model_card(
        model, repo_id, result=result, privacy=privacy, metrics=metrics, cost=cost, command=command
    )
    summary = result.summary() if hasattr(result, "summary") else dict(result)
    record = {"repo_id": repo_id, "unlearning": summary, "privacy": _check_privacy(privacy), "metrics": dict(metrics),
              "cost": dict(cost)}
    if dry_run_dir is not None:
        folder = Path(dry_run_dir)
        _write_folder(folder, model, card, record)
        logger.info("dry run: wrote the upload folder to %s", folder)
        return folder
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        _write_folder(Path(tmp), model, card, record)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            repo_type="model",
            commit_message=commit_message or f"Upload {summary.get('method', 'unlearned')} unlearned classifier",
        )
