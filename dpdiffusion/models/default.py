"""The embedded default model: a small diffusion autoencoder trained on SynthFaces, shipped in the package.

``DEFAULT_MODEL`` is a local folder, so ``DPDiffusionPipeline.from_pretrained(DEFAULT_MODEL)`` works offline; any
Hub repo id or folder saved by ``save_pretrained`` works the same way. It is produced by
``scripts/train_default_models.py --install`` (the exact command is recorded in its README.md model card).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .pipeline_card import render_pipeline_card  # noqa: F401  (kept here: its first home)

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
