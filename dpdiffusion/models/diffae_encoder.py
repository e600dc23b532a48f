"""``DiffAESemanticEncoder``: the official Diffusion Autoencoder semantic encoder (``BeatGANsEncoderModel``).

Preechakul et al., CVPR 2022 (official code ``phizaz/diffae``, ``model/unet.py``): the first half of a UNet without
time conditioning (residual blocks with ``in_layers`` only), attention at the configured resolutions and in the middle
block, then the ``adaptivenonzero`` head: GroupNorm, SiLU, global average pooling and a 1x1 conv to ``z_sem``
(``style_ch`` channels). Parameter names are those of the official ``ema_model.encoder.*`` tensors.

``z_sem`` conditions ``DiffAEUNet2DModel`` directly (the official style embedding is the identity), so
``condition(z)`` returns ``z``: the same interface as ``SemanticEncoder`` for ``DPDiffusionPipeline``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .diffae_blocks import AttentionBlock, Downsample, GroupNorm32, ResBlock, TimestepEmbedSequential


class DiffAESemanticEncoder(ModelMixin, ConfigMixin):
    r"""Image ``x`` in [-1, 1] -> semantic latent ``z_sem``.

    Args (official ``TrainConfig`` field in brackets):
        sample_size (`int`, defaults to 64): image size [``img_size``].
        in_channels (`int`, defaults to 3): image channels.
        model_channels (`int`, defaults to 64): base width [``net_ch``].
        latent_dim (`int`, defaults to 512): dimension of ``z_sem`` [``style_ch``].
        num_res_blocks (`int`, defaults to 2): residual blocks per level [``net_enc_num_res_blocks``].
        channel_mult (`tuple[int]`, defaults to `(1, 2, 4, 8, 8)`): [``net_enc_channel_mult``, else ``net_ch_mult``].
        attention_resolutions (`tuple[int]`, defaults to `(16,)`): [``net_enc_attn``, else ``net_attn``].
        num_heads (`int`, defaults to 1), num_head_channels (`int`, defaults to -1): attention heads.
        resblock_updown (`bool`, defaults to True): downsample with residual blocks [``net_resblock_updown``].
        pool (`str`, defaults to `"adaptivenonzero"`): the pooling head [``net_enc_pool``]; the only one the
            official encoder implements.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        model_channels: int = 64,
        latent_dim: int = 512,
        num_res_blocks: int = 2,
        channel_mult: Sequence[int] = (1, 2, 4, 8, 8),
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 1,
        num_head_channels: int = -1,
        resblock_updown: bool = True,
        pool: str = "adaptivenonzero",
    ):
        super().__init__()
        if pool != "adaptivenonzero":
            raise ValueError(f"pool must be 'adaptivenonzero' (the official encoder's only head), got pool={pool!r}")
        attn = set(attention_resolutions or ())
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        resolution = sample_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, None, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if resolution in attn:
                    layers.append(AttentionBlock(ch, num_heads, num_head_channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
            if level != len(channel_mult) - 1:
                resolution //= 2
                self.input_blocks.append(TimestepEmbedSequential(
                    ResBlock(ch, None, ch, down=True) if resblock_updown else Downsample(ch, True, ch)))
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, None), AttentionBlock(ch, num_heads, num_head_channels), ResBlock(ch, None))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                 nn.Conv2d(ch, latent_dim, 1), nn.Flatten())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images ``(B, C, H, W)`` in ``[-1, 1]`` to semantic latents ``(B, latent_dim)``."""
        h = pixel_values.to(dtype=self.dtype)
        for module in self.input_blocks:
            h = module(h)
        h = self.middle_block(h)
        return self.out(h)  # (B, latent_dim)

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """The UNet condition of latents ``z`` (B, d): ``z`` itself (the official style embedding is the identity)."""
        return z
