"""Tiny real components of a DPDiffusionPipeline for tests (importable as ``dpd_test_components``; a plain
``from conftest import ...`` is ambiguous because several conftest modules exist)."""

from __future__ import annotations

import torch

ATTRS = ("dark_skin", "long_hair", "smiling")


def get_dummy_components(image_size: int = 16, latent_dim: int = 8):
    """Tiny real components of a ``DPDiffusionPipeline`` (random weights, directions fitted on random latents)."""
    from dpdiffusion.models.attribute_directions import AttributeDirections
    from dpdiffusion.models.diffae import build_scheduler, build_unet
    from dpdiffusion.models.semantic_encoder import SemanticEncoder

    torch.manual_seed(0)
    unet = build_unet(sample_size=image_size, block_out_channels=(8, 16), norm_num_groups=4)
    encoder = SemanticEncoder(sample_size=image_size, latent_dim=latent_dim, block_out_channels=(8, 16),
                              condition_dim=32, norm_num_groups=4)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(256, latent_dim, generator=g)
    labels = (latents[:, :3] + 0.5 * torch.randn(256, 3, generator=g) > 0).float()
    directions = AttributeDirections.fit(latents, labels, list(ATTRS))
    return {"unet": unet.eval(), "encoder": encoder.eval(), "scheduler": build_scheduler(),
            "attribute_directions": directions}
