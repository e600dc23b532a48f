"""The model card of a saved ``DPDiffusionPipeline`` folder (``model_cards/dp_diffusion_pipeline.md``), used for the
embedded default (`dpdiffusion.models.default.install_default_model`) and by ``DPDiffusionPipeline.push_to_hub``.

It depends on the saved folder only (never on the pipeline class), so the pipeline can render its own card.
"""

from __future__ import annotations

import json
from pathlib import Path


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
    from .training_domain import REAL_FACE_COMMANDS, TrainingDomain

    model_dir = Path(model_dir)
    dirs = AttributeDirections.from_pretrained(model_dir / "attribute_directions")
    unet_cfg = json.loads((model_dir / "unet" / "config.json").read_text())
    enc_cfg = json.loads((model_dir / "encoder" / "config.json").read_text())
    state = training_state or {}
    index = json.loads((model_dir / "model_index.json").read_text())
    unet_class, encoder_class = index["unet"][1], index["encoder"][1]
    domain = TrainingDomain.from_config(index.get("training_domain"))  # not declared: "unknown"
    decoder = ("`DiffAEUNet2DModel` decoder (the DiffAE architecture: timestep AdaGN, z multiplying every residual "
               "block; official respaced DDIM sampler, no semantic guidance)" if unet_class == "DiffAEUNet2DModel"
               else f"`{unet_class}` decoder conditioned on z (added to the timestep embedding)")
    data = ModelCardData(library_name="diffusers", license="apache-2.0",
                         tags=["differential-privacy", "diffusion-autoencoder", "dpdiffusion"]
                         + (["synthetic-data"] if domain.synthetic else []),
                         pipeline_tag="image-to-image")
    data.training_command = command
    data.training_domain = domain.to_dict()
    data.attribute_names = list(dirs.names)
    data.clip_bounds = dirs.clip_bounds
    basis = ("per release, the span of the protected attributes' raw directions, orthonormalised (QR) in the order "
             "named" if dirs.has_raw_directions else
             f"the stored-order orthonormal directions (QR in the order {list(dirs.names)}); a protected set that is "
             "not a prefix of that order is only partly covered")
    privacy = {"neighbouring_relation": "attribute-neighbours", "basis": basis, "scopes": ["attributes", "latent"],
               "default_scope": "attributes", "mechanism": "weighted Gaussian, analytic calibration",
               "guarantee": "formal with stochastic_code='random', heuristic with 'inverted'",
               "noise_source": "csprng"}
    data.privacy = privacy
    card = render_model_card(
        "dp_diffusion_pipeline", card_data=data,
        title=title or "dpdiffusion default diffusion autoencoder (SynthFaces)", privacy=privacy,
        custom_pipeline=custom_pipeline, encoder_class=encoder_class, decoder=decoder,
        latent_dim=enc_cfg.get("latent_dim", "?"), attribute_names=list(dirs.names),
        image_size=unet_cfg.get("sample_size", unet_cfg.get("image_size", "?")),
        steps=state.get("step", "unknown"),
        dataset=state.get("dataset", domain.name if domain.known else "an undeclared dataset"), command=command,
        domain=domain, real_face_commands=REAL_FACE_COMMANDS,
        repo_or_path=repo_or_path,
        bounds=[{"name": n, "alone": dirs.clip_bounds[n], "bound": b, "accuracy": a} for n, b, a in
                zip(dirs.names, dirs.clip_bound_values.tolist(), dirs.probe_accuracy.tolist())],
        has_raw_directions=dirs.has_raw_directions, fit_sample_size=int(dirs.config.fit_sample_size),
        residual_bound=dirs.residual_clip_bound,
        evaluation=json.dumps(evaluation, indent=2) if evaluation else None, evaluation_command=evaluation_command)
    return str(card)
