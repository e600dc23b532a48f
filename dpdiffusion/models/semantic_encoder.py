"""The semantic encoder of the diffusion autoencoder (DiffAE idea, Preechakul et al., CVPR 2022).

``SemanticEncoder`` maps an image ``x`` in ``[-1, 1]`` to a semantic latent ``z`` in ``R^d`` and projects ``z``
to the UNet's time-embedding width (``condition``), where it is added to the timestep embedding of a
``UNet2DModel`` built with ``class_embed_type="identity"``. The stochastic details that ``z`` does not carry
(exact pixel noise, fine texture) live in the DDIM stochastic code ``x_T``.

Notation map to the paper/DESIGN.md: ``z = Enc_phi(x_0)`` (``forward``), ``cond = W z + b`` (``condition``).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        return self.act(h + self.norm2(self.conv2(h)))


class SemanticEncoder(ModelMixin, ConfigMixin):
    r"""Convolutional encoder ``x -> z`` of a diffusion autoencoder.

    Args:
        in_channels (`int`, defaults to 3): image channels.
        sample_size (`int`, defaults to 32): image height and width the encoder is trained for.
        latent_dim (`int`, defaults to 64): dimension ``d`` of the semantic latent ``z``.
        block_out_channels (`tuple[int]`, defaults to `(32, 64, 128)`): channels of the stride-2 blocks.
        condition_dim (`int`, defaults to 128): width of the UNet time embedding that ``z`` is projected to
            (``4 * unet.config.block_out_channels[0]`` for a ``UNet2DModel``).
        norm_num_groups (`int`, defaults to 8): GroupNorm groups.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        sample_size: int = 32,
        latent_dim: int = 64,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        condition_dim: int = 128,
        norm_num_groups: int = 8,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        channels = block_out_channels[0]
        for out_channels in block_out_channels:
            blocks.append(_DownBlock(channels, out_channels, norm_num_groups))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.to_latent = nn.Linear(channels, latent_dim)
        self.to_condition = nn.Sequential(nn.Linear(latent_dim, condition_dim), nn.SiLU(),
                                          nn.Linear(condition_dim, condition_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images ``(B, C, H, W)`` in ``[-1, 1]`` to semantic latents ``(B, latent_dim)``."""
        h = self.conv_in(pixel_values)
        for block in self.blocks:
            h = block(h)
        return self.to_latent(self.pool(h).flatten(1))  # (B, d)

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """Project latents ``(B, d)`` to the UNet's time-embedding width ``(B, condition_dim)``."""
        return self.to_condition(z)
