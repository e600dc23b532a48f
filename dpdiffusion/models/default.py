"""The embedded models: small diffusion autoencoders trained on SynthFaces, shipped in the package.

``DEFAULT_MODEL`` is a local folder, so ``DPDiffusionPipeline.from_pretrained(DEFAULT_MODEL)`` works offline; any
Hub repo id or folder saved by ``save_pretrained`` works the same way. It is the DiffAE architecture
(``DiffAEUNet2DModel``: the semantic condition multiplies every residual block), trained with v-prediction and
sampled by the official DDIM without guidance; ``scripts/train_default_models.py --unet_type diffae ... --install``
makes it (the exact commands are recorded in its README.md model card).

``UNET2D_MODEL`` (``load_pipeline("unet2d")``, ``--model unet2d`` on the command line) is the former default: a
diffusers ``UNet2DModel`` with z added to the timestep embedding, sampled with semantic guidance 5
(``--install --install_as unet2d``). It stays embedded so that the figures measured on it can be rerun; the README
section "The embedded default model" compares the two.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .pipeline_card import render_pipeline_card  # noqa: F401  (kept here: its first home)

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "default_model")
UNET2D_MODEL = str(Path(__file__).resolve().parent.parent / "unet2d_model")
# name -> (folder, constant, card title, how to make it)
EMBEDDED_MODELS = {
    "default": (DEFAULT_MODEL, "DEFAULT_MODEL",
                "dpdiffusion default diffusion autoencoder (DiffAE architecture, SynthFaces)",
                "scripts/train_default_models.py --unet_type diffae --prediction_type v_prediction ... --install"),
    "unet2d": (UNET2D_MODEL, "UNET2D_MODEL",
               "dpdiffusion UNet2DModel diffusion autoencoder (SynthFaces; the former default, embedded, not the "
               "default)", "scripts/train_default_models.py ... --install --install_as unet2d"),
}


def embedded_model_name(model: str | None) -> str | None:
    """The `EMBEDDED_MODELS` name that `model` means (``None``, a name or its constant's name, e.g.
    ``"UNET2D_MODEL"``), or ``None`` for a folder or Hub repo id."""
    if model is None:
        return "default"
    if model in EMBEDDED_MODELS:
        return model
    return next((name for name, (_, constant, _, _) in EMBEDDED_MODELS.items() if constant == model), None)


def default_model_available(name: str = "default") -> bool:
    """Whether the embedded model `name` (``"default"`` or ``"unet2d"``) is installed (its ``model_index.json``)."""
    return (Path(EMBEDDED_MODELS[name][0]) / "model_index.json").is_file()


def load_pipeline(model: str | None = None, **kwargs):
    """``DPDiffusionPipeline.from_pretrained`` of ``model`` (a folder or a Hub repo id; ``None`` or ``"default"``:
    the embedded default; ``"unet2d"``: the embedded former default), safetensors weights only: the one
    loader of the CLI, the demo and the evaluation.

    Raises:
        ValueError: if an embedded model is asked for but not installed.
        OSError: if the model has no safetensors weights (pickled weights are never loaded).
    """
    from ..pipeline_dp_diffusion import DPDiffusionPipeline

    name = embedded_model_name(model)
    if name is not None:
        folder, constant, _, how = EMBEDDED_MODELS[name]
        if not default_model_available(name):
            raise ValueError(f"the embedded {constant} model is not installed; train it with {how} or pass "
                             "--model PATH_OR_REPO")
        model = folder
    kwargs["use_safetensors"] = True  # never unpickle weights
    return DPDiffusionPipeline.from_pretrained(model, **kwargs)


def install_default_model(model_dir: str | Path, *, command: str, name: str = "default") -> Path:
    """Copy a trained pipeline folder to the embedded model `name` (``"default"``: ``DEFAULT_MODEL``, ``"unet2d"``:
    ``UNET2D_MODEL``), weights as safetensors only, with its model card.

    Raises:
        ValueError: for another `name`.
    """
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"name must be one of {sorted(EMBEDDED_MODELS)}, got name={name!r}")
    folder, constant, title, _ = EMBEDDED_MODELS[name]
    src, dst = Path(model_dir), Path(folder)
    tmp = dst.with_name(f".tmp-{dst.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.bin", "*.pkl", "*.pt"))
    state = json.loads((src / "training_state.json").read_text()) if (src / "training_state.json").exists() else {}
    card = render_pipeline_card(tmp, command=command, training_state=state, repo_or_path=constant, title=title)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def refresh_model_card(name: str = "default", *, evaluation: dict | None = None,
                       evaluation_command: str | None = None, command: str | None = None) -> Path:
    """Render the card of the installed embedded model `name` again from its own files, keeping the training
    commands its card records (or `command` instead), with `evaluation` (a JSON-able dict) and the command that
    printed it; the weights are not touched. Written atomically.

    Raises:
        ValueError: for another `name`, or if that model is not installed.
    """
    from huggingface_hub import ModelCard

    if name not in EMBEDDED_MODELS:
        raise ValueError(f"name must be one of {sorted(EMBEDDED_MODELS)}, got name={name!r}")
    folder, constant, title, _ = EMBEDDED_MODELS[name]
    if not default_model_available(name):
        raise ValueError(f"the embedded {constant} model is not installed at {folder}")
    card_file = Path(folder) / "README.md"
    front = ModelCard(card_file.read_text()).data.to_dict()
    state_file = Path(folder) / "training_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    card = render_pipeline_card(folder, command=command or front["training_command"], training_state=state,
                                repo_or_path=constant, title=title, evaluation=evaluation,
                                evaluation_command=evaluation_command)
    tmp = card_file.with_name(".README.md.tmp")
    tmp.write_text(card)
    tmp.replace(card_file)
    return card_file
