"""The embedded default model: a small diffusion autoencoder trained on SynthFaces, shipped in the package.

``DEFAULT_MODEL`` is a local folder, so ``DPDiffusionPipeline.from_pretrained(DEFAULT_MODEL)`` works offline; any
Hub repo id or folder saved by ``save_pretrained`` works the same way. It is produced by
``scripts/train_default_models.py --install`` (the exact command is recorded in its README.md model card).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "default_model")


def default_model_available() -> bool:
    """Whether the embedded default is installed (its ``model_index.json`` exists)."""
    return (Path(DEFAULT_MODEL) / "model_index.json").is_file()


def load_pipeline(model: str | None = None, **kwargs):
    """``DPDiffusionPipeline.from_pretrained`` of ``model`` (a folder or a Hub repo id; ``None`` or ``"default"``:
    the embedded default), safetensors weights only: the one loader of the CLI, the demo and the evaluation.

    Raises:
        ValueError: if the embedded default is asked for but not installed.
        OSError: if the model has no safetensors weights (pickled weights are never loaded).
    """
    from ..pipeline_dp_diffusion import DPDiffusionPipeline

    if model in (None, "default", "DEFAULT_MODEL"):
        if not default_model_available():
            raise ValueError("the embedded default model is not installed; train it with "
                             "scripts/train_default_models.py --install or pass --model PATH_OR_REPO")
        model = DEFAULT_MODEL
    kwargs["use_safetensors"] = True  # never unpickle weights
    return DPDiffusionPipeline.from_pretrained(model, **kwargs)


def render_pipeline_card(model_dir: str | Path, *, command: str, training_state: dict | None = None,
                         repo_or_path: str = "DEFAULT_MODEL", evaluation: dict | None = None,
                         evaluation_command: str | None = None, title: str | None = None,
                         custom_pipeline: str | None = None) -> str:
    """The model card (README.md text) of a saved ``DPDiffusionPipeline`` folder, from
    ``model_cards/dp_diffusion_pipeline.md``; every figure is read from the saved model itself.

    ``repo_or_path`` is what "How to use" loads (``"DEFAULT_MODEL"``: the embedded default); ``custom_pipeline``
    the name of the repository's custom-pipeline file (without ``.py``) for the diffusers-only way to load it."""
    from huggingface_hub import ModelCardData

    from ..hub import render_model_card
    from .attribute_directions import AttributeDirections

    model_dir = Path(model_dir)
    dirs = AttributeDirections.from_pretrained(model_dir / "attribute_directions")
    unet_cfg = json.loads((model_dir / "unet" / "config.json").read_text())
    enc_cfg = json.loads((model_dir / "encoder" / "config.json").read_text())
    state = training_state or {}
    data = ModelCardData(library_name="diffusers", license="apache-2.0",
                         tags=["differential-privacy", "diffusion-autoencoder", "dpdiffusion", "synthetic-data"],
                         pipeline_tag="image-to-image")
    data.training_command = command
    data.attribute_names = list(dirs.names)
    data.clip_bounds = dirs.clip_bounds
    privacy = {"neighbouring_relation": "attribute-neighbours", "scopes": ["attributes", "latent"],
               "default_scope": "attributes", "mechanism": "weighted Gaussian, analytic calibration",
               "guarantee": "formal with stochastic_code='random', heuristic with 'inverted'",
               "noise_source": "csprng"}
    data.privacy = privacy
    card = render_model_card(
        "dp_diffusion_pipeline", card_data=data,
        title=title or "dpdiffusion default diffusion autoencoder (SynthFaces)", privacy=privacy,
        custom_pipeline=custom_pipeline,
        latent_dim=enc_cfg.get("latent_dim", "?"), attribute_names=list(dirs.names),
        image_size=unet_cfg.get("sample_size", unet_cfg.get("image_size", "?")),
        steps=state.get("step", "unknown"), dataset=state.get("dataset", "SynthFaces"), command=command,
        repo_or_path=repo_or_path,
        bounds=[{"name": n, "bound": b, "accuracy": a} for n, b, a in
                zip(dirs.names, dirs.clip_bound_values.tolist(), dirs.probe_accuracy.tolist())],
        residual_bound=dirs.residual_clip_bound,
        evaluation=json.dumps(evaluation, indent=2) if evaluation else None, evaluation_command=evaluation_command)
    return str(card)


def install_default_model(model_dir: str | Path, *, command: str) -> Path:
    """Copy a trained pipeline folder to ``DEFAULT_MODEL`` (weights as safetensors only) with its model card."""
    src, dst = Path(model_dir), Path(DEFAULT_MODEL)
    tmp = dst.with_name(".tmp-default_model")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.bin", "*.pkl", "*.pt"))
    state = json.loads((src / "training_state.json").read_text()) if (src / "training_state.json").exists() else {}
    card = render_pipeline_card(tmp, command=command, training_state=state)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
