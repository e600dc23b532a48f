"""The embedded default model: a small diffusion autoencoder trained on SynthFaces, shipped in the package.

``DEFAULT_MODEL`` is a local folder, so ``DPDiffusionPipeline.from_pretrained(DEFAULT_MODEL)`` works offline; any
Hub repo id or folder saved by ``save_pretrained`` works the same way. It is produced by
``scripts/train_default_models.py --install`` (the exact command is recorded in its README.md model card).

``DIFFAE_MODEL`` (``load_pipeline("diffae")``, ``--model diffae`` on the command line) is a second embedded model, the
DiffAE architecture (``DiffAEUNet2DModel``: the semantic condition multiplies every residual block) trained on the
same SynthFaces with v-prediction and sampled without guidance (``--install --install_as diffae``). Its figures are
in the README section "The embedded default model"; it is not the default until the figures that depend on the
default (demo, sweeps, step count) have been measured on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .pipeline_card import render_pipeline_card  # noqa: F401  (kept here: its first home)

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "default_model")
DIFFAE_MODEL = str(Path(__file__).resolve().parent.parent / "diffae_model")
# name -> (folder, constant, card title, how to make it)
EMBEDDED_MODELS = {
    "default": (DEFAULT_MODEL, "DEFAULT_MODEL", "dpdiffusion default diffusion autoencoder (SynthFaces)",
                "scripts/train_default_models.py --install"),
    "diffae": (DIFFAE_MODEL, "DIFFAE_MODEL",
               "dpdiffusion DiffAE-architecture diffusion autoencoder (SynthFaces; embedded, not the default)",
               "scripts/train_default_models.py --unet_type diffae ... --install --install_as diffae"),
}


def default_model_available(name: str = "default") -> bool:
    """Whether the embedded model `name` (``"default"`` or ``"diffae"``) is installed (its ``model_index.json``)."""
    return (Path(EMBEDDED_MODELS[name][0]) / "model_index.json").is_file()


def load_pipeline(model: str | None = None, **kwargs):
    """``DPDiffusionPipeline.from_pretrained`` of ``model`` (a folder or a Hub repo id; ``None`` or ``"default"``:
    the embedded default; ``"diffae"``: the embedded DiffAE-architecture model), safetensors weights only: the one
    loader of the CLI, the demo and the evaluation.

    Raises:
        ValueError: if an embedded model is asked for but not installed.
        OSError: if the model has no safetensors weights (pickled weights are never loaded).
    """
    from ..pipeline_dp_diffusion import DPDiffusionPipeline

    name = {None: "default", "DEFAULT_MODEL": "default", "DIFFAE_MODEL": "diffae"}.get(model, model)
    if name in EMBEDDED_MODELS:
        folder, constant, _, how = EMBEDDED_MODELS[name]
        if not default_model_available(name):
            raise ValueError(f"the embedded {constant} model is not installed; train it with {how} or pass "
                             "--model PATH_OR_REPO")
        model = folder
    kwargs["use_safetensors"] = True  # never unpickle weights
    return DPDiffusionPipeline.from_pretrained(model, **kwargs)


def install_default_model(model_dir: str | Path, *, command: str, name: str = "default") -> Path:
    """Copy a trained pipeline folder to the embedded model `name` (``"default"``: ``DEFAULT_MODEL``, ``"diffae"``:
    ``DIFFAE_MODEL``), weights as safetensors only, with its model card.

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
