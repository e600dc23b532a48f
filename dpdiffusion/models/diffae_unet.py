"""``DiffAEUNet2DModel``: the official Diffusion Autoencoder decoder (``BeatGANsAutoencModel``) as a diffusers model.

Preechakul et al., "Diffusion Autoencoders: Toward a Meaningful and Decodable Representation", CVPR 2022, official
code ``phizaz/diffae`` (``model/unet_autoenc.py``, ``model/unet.py``). The UNet predicts the noise
``eps_theta(x_t, t, z_sem)``: the sinusoidal timestep embedding (diffusers' ``get_timestep_embedding``, cos first)
goes through a 2-layer MLP to ``emb_t``; every residual block applies the timestep AdaGN scale-shift and the
multiplicative semantic condition ``(1 + Linear(SiLU(z_sem)))`` (``resnet_two_cond``); self-attention at the
configured resolutions and in the middle block; resampling inside residual blocks when ``resblock_updown``.

Parameter names are those of the official ``ema_model.*`` tensors without the prefix (``encoder.*`` excluded: it is
``DiffAESemanticEncoder``), so conversion is a rename. Use ``dpdiffusion.models.diffae_sampler`` for the official
respaced DDIM sampler and inversion.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from .diffae_blocks import AttentionBlock, Downsample, GroupNorm32, ResBlock, TimestepEmbedSequential, Upsample

logger = logging.getLogger(__name__)


class _TimeStyleSeparateEmbed(nn.Module):
    """The official ``TimeStyleSeperateEmbed``: an MLP on the timestep embedding; the style is the identity."""

    def __init__(self, time_channels: int, time_out_channels: int):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(time_channels, time_out_channels), nn.SiLU(),
                                        nn.Linear(time_out_channels, time_out_channels))

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.time_embed(t_emb)


class DiffAEUNet2DModel(ModelMixin, ConfigMixin):
    r"""The autoencoder UNet of DiffAE, conditioned on the timestep and the semantic latent ``z_sem``.

    Args (official ``TrainConfig`` field in brackets):
        sample_size (`int`, defaults to 64): image height and width [``img_size``].
        in_channels (`int`, defaults to 3), out_channels (`int`, defaults to 3): image channels.
        model_channels (`int`, defaults to 64): base width [``net_ch``].
        channel_mult (`tuple[int]`, defaults to `(1, 2, 4, 8)`): width multipliers per level [``net_ch_mult``].
        num_res_blocks (`int`, defaults to 2): residual blocks per level [``net_num_res_blocks``]; the decoder has one
            more per level.
        num_input_res_blocks (`int`, *optional*): encoder-side blocks per level when different
            [``net_num_input_res_blocks``].
        embed_channels (`int`, defaults to 512): timestep-embedding width [``net_beatgans_embed_channels``].
        cond_channels (`int`, *optional*): width of ``z_sem`` [``net_beatgans_resnet_cond_channels``, else
            ``embed_channels``; must equal ``style_ch``].
        attention_resolutions (`tuple[int]`, defaults to `(16,)`): feature-map sizes with self-attention [``net_attn``].
        num_heads (`int`, defaults to 1): attention heads [``net_beatgans_attn_head``].
        num_head_channels (`int`, defaults to -1): channels per head instead of ``num_heads`` (official: -1).
        resblock_updown (`bool`, defaults to True): resample inside residual blocks [``net_resblock_updown``].
        resnet_two_cond (`bool`, defaults to True): the semantic condition in every block
            [``net_beatgans_resnet_two_cond``]; the official autoencoder supports only ``True``.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        num_input_res_blocks: int | None = None,
        embed_channels: int = 512,
        cond_channels: int | None = None,
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 1,
        num_head_channels: int = -1,
        resblock_updown: bool = True,
        resnet_two_cond: bool = True,
    ):
        super().__init__()
        if not resnet_two_cond:
            raise ValueError("resnet_two_cond must be True: the official autoencoder UNet raises NotImplementedError "
                             f"otherwise, got resnet_two_cond={resnet_two_cond}")
        if sample_size % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"sample_size must be divisible by 2**(len(channel_mult) - 1)="
                             f"{2 ** (len(channel_mult) - 1)}, got sample_size={sample_size}")
        cond_ch = cond_channels or embed_channels
        attn = set(attention_resolutions or ())
        block = dict(cond_channels=cond_ch)
        n_in = num_input_res_blocks or num_res_blocks

        self.time_embed = _TimeStyleSeparateEmbed(model_channels, embed_channels)
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        input_block_chans: list[list[int]] = [[] for _ in channel_mult]
        input_block_chans[0].append(ch)
        self.input_num_blocks = [0] * len(channel_mult)
        self.input_num_blocks[0] = 1
        self.output_num_blocks = [0] * len(channel_mult)
        resolution = sample_size
        for level, mult in enumerate(channel_mult):
            for _ in range(n_in):
                layers: list[nn.Module] = [ResBlock(ch, embed_channels, int(mult * model_channels), **block)]
                ch = int(mult * model_channels)
                if resolution in attn:
                    layers.append(AttentionBlock(ch, num_heads, num_head_channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans[level].append(ch)
                self.input_num_blocks[level] += 1
            if level != len(channel_mult) - 1:
                resolution //= 2
                self.input_blocks.append(TimestepEmbedSequential(
                    ResBlock(ch, embed_channels, ch, down=True, **block) if resblock_updown
                    else Downsample(ch, True, ch)))
                input_block_chans[level + 1].append(ch)
                self.input_num_blocks[level + 1] += 1

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, embed_channels, **block), AttentionBlock(ch, num_heads, num_head_channels),
            ResBlock(ch, embed_channels, **block))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans[level].pop() if input_block_chans[level] else 0
                layers = [ResBlock(ch + ich, embed_channels, int(model_channels * mult), has_lateral=ich > 0, **block)]
                ch = int(model_channels * mult)
                if resolution in attn:
                    layers.append(AttentionBlock(ch, num_heads, num_head_channels))
                if level and i == num_res_blocks:
                    resolution *= 2
                    layers.append(ResBlock(ch, embed_channels, ch, up=True, **block) if resblock_updown
                                  else Upsample(ch, True, ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self.output_num_blocks[level] += 1
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor,
                return_dict: bool = True) -> UNet2DOutput | tuple:
        r"""Predict the noise of ``sample`` (B, C, H, W) at ``timestep`` (B,) or scalar given ``cond`` = z_sem (B, D).

        Timesteps are the *original* indices in ``[0, T)`` (the official ``_WrappedModel`` maps respaced indices
        back before calling the network; ``rescale_timesteps`` is ``False`` in every official configuration).

        Returns:
            `UNet2DOutput` with ``sample`` (B, out_channels, H, W), or a tuple when ``return_dict=False``.
        """
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep[None]
        timestep = timestep.expand(sample.shape[0])  # (B,)
        t_emb = get_timestep_embedding(timestep, self.config.model_channels, flip_sin_to_cos=True,
                                       downscale_freq_shift=0)  # (B, model_channels)
        emb = self.time_embed(t_emb.to(dtype=self.dtype))  # (B, embed_channels)
        cond = cond.to(dtype=self.dtype)  # (B, cond_channels): the style is the identity of z_sem
        hs: list[list[torch.Tensor]] = [[] for _ in self.input_num_blocks]
        h = sample.to(dtype=self.dtype)
        k = 0
        for i, n in enumerate(self.input_num_blocks):
            for _ in range(n):
                h = self.input_blocks[k](h, emb=emb, cond=cond)
                hs[i].append(h)
                k += 1
        h = self.middle_block(h, emb=emb, cond=cond)
        k = 0
        for i, n in enumerate(self.output_num_blocks):
            for _ in range(n):
                lateral = hs[-i - 1].pop() if hs[-i - 1] else None
                h = self.output_blocks[k](h, emb=emb, cond=cond, lateral=lateral)
                k += 1
        pred = self.out(h)  # (B, out_channels, H, W)
        if not return_dict:
            return (pred,)
        return UNet2DOutput(sample=pred)
