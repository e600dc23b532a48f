"""dpdiffusion: differentially private face release with diffusion autoencoders and feature unlearning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Lazy public API (diffusers-style): importing ``dpdiffusion`` stays cheap and a missing optional
# dependency only fails when the name that needs it is used.
_LAZY = {
    "DPDiffusionPipeline": "dpdiffusion.pipeline_dp_diffusion",
    "DPDiffusionPipelineOutput": "dpdiffusion.pipeline_dp_diffusion",
    "DEFAULT_MODEL": "dpdiffusion.models.default",
    "UNET2D_MODEL": "dpdiffusion.models.default",
    "load_pipeline": "dpdiffusion.models.default",
    "SemanticEncoder": "dpdiffusion.models.semantic_encoder",
    "DiffAEUNet2DModel": "dpdiffusion.models.diffae_unet",
    "DiffAESemanticEncoder": "dpdiffusion.models.diffae_encoder",
    "AttributeDirections": "dpdiffusion.models.attribute_directions",
    "PrivacySpec": "dpdiffusion.privacy.spec",
    "PrivacyLedger": "dpdiffusion.privacy.ledger",
    "gaussian_sigma": "dpdiffusion.privacy.accounting",
    "gaussian_epsilon": "dpdiffusion.privacy.accounting",
    "make_synthfaces": "dpdiffusion.data.synthfaces",
    "render_counterfactual": "dpdiffusion.data.synthfaces",
    "load_attribute_dataset": "dpdiffusion.data.attributes",
    "unlearn": "dpdiffusion.unlearning",
    "UnlearningResult": "dpdiffusion.unlearning",
    "PrivacyLoop": "dpdiffusion.loop",
    "LoopResult": "dpdiffusion.loop",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dpdiffusion' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .data.attributes import load_attribute_dataset
    from .data.synthfaces import make_synthfaces, render_counterfactual
    from .models.attribute_directions import AttributeDirections
    from .models.default import DEFAULT_MODEL, UNET2D_MODEL, load_pipeline
    from .models.diffae_encoder import DiffAESemanticEncoder
    from .models.diffae_unet import DiffAEUNet2DModel
    from .models.semantic_encoder import SemanticEncoder
    from .pipeline_dp_diffusion import DPDiffusionPipeline, DPDiffusionPipelineOutput
    from .privacy.accounting import gaussian_epsilon, gaussian_sigma
    from .privacy.ledger import PrivacyLedger
    from .privacy.spec import PrivacySpec
    from .loop import LoopResult, PrivacyLoop
    from .unlearning import UnlearningResult, unlearn
