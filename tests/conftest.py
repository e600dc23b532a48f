"""Shared fixtures: tiny real models built in-process (diffusers style)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

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


@pytest.fixture
def dummy_components():
    return get_dummy_components()


@pytest.fixture
def dummy_pipe(dummy_components):
    from dpdiffusion import DPDiffusionPipeline

    pipe = DPDiffusionPipeline(**dummy_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def dummy_images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 16, generator=g)


@pytest.fixture(autouse=True)
def _quiet_prng_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a cryptographically secure.*")
        yield
