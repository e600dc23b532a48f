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


def install_default_model(model_dir: str | Path, *, command: str) -> Path:
    """Copy a trained pipeline folder to ``DEFAULT_MODEL`` (weights as safetensors only) with its model card."""
    from ..hub import render_pipeline_card

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
