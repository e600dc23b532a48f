"""Building blocks of the official Diffusion Autoencoder architecture (the "BeatGANs" UNet of Preechakul et al.,
CVPR 2022, itself derived from Dhariwal & Nichol's guided-diffusion), re-implemented for ``DiffAEUNet2DModel`` and
``DiffAESemanticEncoder``.

Module and parameter names follow the official checkpoints (``input_blocks.K.L.in_layers.0.weight`` ...), so that
``scripts/convert_diffae_checkpoint.py`` converts by renaming prefixes only and every tensor keeps its meaning.
Only inference is implemented: dropout, gradient checkpointing and zero initialisation (which change training, not
the function computed by given weights) are left out.

Notation (the paper's Section 3.1 and the official ``model/blocks.py``): a residual block computes

    h = conv(x)                                            # in_layers: GroupNorm, SiLU, 3x3 conv
    h = GroupNorm(h) * (1 + s_t) + b_t                     # timestep AdaGN: (s_t, b_t) = Linear(SiLU(emb_t))
    h = h * (1 + s_z)                                      # semantic condition: s_z = Linear(SiLU(z_sem))
    out = skip(x) + conv(SiLU(h))                          # out_layers
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as the official ``GroupNorm32``) with ``min(32, channels)`` groups."""

    def __init__(self, channels: int):
        super().__init__(min(32, channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers; residual blocks among them receive the timestep and semantic embeddings."""

    def forward(self, x, emb=None, cond=None, lateral=None):
        for layer in self:
            x = layer(x, emb=emb, cond=cond, lateral=lateral) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 conv (official ``Upsample``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """x2 downsampling by a stride-2 3x3 conv or a 2x2 average pool (official ``Downsample``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op = (nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1) if use_conv
                   else nn.AvgPool2d(kernel_size=2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with timestep scale-shift AdaGN and the multiplicative semantic condition.

    Args:
        channels (`int`): input channels (including the lateral skip channels when ``has_lateral``).
        emb_channels (`int | None`): timestep-embedding width; ``None`` builds the unconditioned encoder block
            (``use_condition=False`` in the official code: only ``in_layers`` and the skip connection).
        out_channels (`int`): output channels.
        cond_channels (`int | None`): semantic-condition width (``two_cond``); ``None`` disables it.
        up (`bool`), down (`bool`): resample inside the block (``resblock_updown``).
        has_lateral (`bool`): concatenate the UNet skip connection to the input.
    """

    def __init__(self, channels: int, emb_channels: int | None, out_channels: int | None = None, *,
                 cond_channels: int | None = None, up: bool = False, down: bool = False, has_lateral: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.has_lateral = has_lateral
        self.use_condition = emb_channels is not None
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        if self.use_condition:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            self.cond_emb_layers = (nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, out_channels))
                                    if cond_channels is not None else None)
            self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=0.0),
                                            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb=None, cond=None, lateral=None):
        if self.has_lateral:
            x = torch.cat([x, lateral], dim=1)  # (B, C + C_lateral, H, W)
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        if self.use_condition:
            h = self.out_layers[0](h)
            if emb is not None:
                scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)  # (B, C, 1, 1)
                h = h * (1 + scale) + shift
            if self.cond_emb_layers is not None and cond is not None:
                h = h * (1 + self.cond_emb_layers(cond).type(h.dtype)[..., None, None])  # (B, C, 1, 1)
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        return self.skip_connection(x) + h


class QKVAttentionLegacy(nn.Module):
    """Multi-head self-attention on packed ``qkv`` (B, H * 3 * C, T), heads split before q/k/v (official order)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)  # (B * H, T, T)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)  # (B, H * C, T)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (official ``AttentionBlock``, legacy head order)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"channels={channels} must be divisible by num_head_channels={num_head_channels}")
            num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttentionLegacy(num_heads)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, H * W)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)
