"""Diffusion-autoencoder building blocks: the conditional UNet, the scheduler and deterministic DDIM.

The decoder is a ``UNet2DModel`` with ``class_embed_type="identity"`` and ``resnet_time_scale_shift="scale_shift"``:
the projected semantic latent ``SemanticEncoder.condition(z)`` is added to the timestep embedding and modulates every
ResNet block (AdaGN, as in DiffAE).

Deterministic DDIM (eta = 0) in both directions uses one timestep grid, the ``DDIMScheduler``'s own
(``set_timesteps``), and the textbook update

    x_next = sqrt(abar_next) * x0_hat + sqrt(1 - abar_next) * eps_hat,   x0_hat = (x - sqrt(1 - abar) eps_hat) / sqrt(abar)

Decoding walks the grid down (t_k -> t_k - T/n, the last step to ``final_alpha_cumprod``), inversion walks exactly the
same pairs up, evaluating ``eps(x_prev, t_k)`` in place of the unknown ``eps(x_{t_k}, t_k)``. Pairing diffusers'
``DDIMInverseScheduler`` naively with ``DDIMScheduler`` uses different grids and final alphas (DESIGN.md section 4),
which is why both directions live here, on one grid.

``ddim_decode``/``ddim_invert`` given a ``DiffAEUNet2DModel`` (the official DiffAE architecture, converted from the
official checkpoints) run the official respaced sampler of ``dpdiffusion.models.diffae_sampler`` instead, so that a
converted pipeline reproduces the official renderer.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, UNet2DModel


def build_unet(
    *,
    sample_size: int = 32,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = True,
    norm_num_groups: int = 8,
) -> UNet2DModel:
    """A ``UNet2DModel`` conditioned on the semantic latent (via the time embedding, width 4 * channels[0])."""
    n = len(block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention and n >= 2:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=norm_num_groups,
        attention_head_dim=block_out_channels[-1] // 2,
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
    )


def build_diffae_unet(*, sample_size: int = 32, block_out_channels: tuple[int, ...] = (32, 64, 64),
                      num_res_blocks: int = 1):
    """A small ``DiffAEUNet2DModel`` (the DiffAE architecture) to train from scratch, with zero-initialised outputs.

    ``model_channels = block_out_channels[0]``, ``channel_mult`` the ratios of the widths (each a multiple of the
    first), timestep and semantic-condition width ``4 * block_out_channels[0]`` (``SemanticEncoder.condition``'s
    output), self-attention at the lowest resolution and in the middle block. The last convolution of every residual
    block, of every attention block and of the output are zero-initialised, as in the official code (each block
    starts as the identity), which the inference-only blocks leave out.

    Raises:
        ValueError: if a width is not a positive multiple of the first.
    """
    from .diffae_unet import DiffAEUNet2DModel

    c0 = int(block_out_channels[0])
    if c0 < 1 or any(int(c) < 1 or int(c) % c0 for c in block_out_channels):
        raise ValueError(f"block_out_channels must be positive multiples of the first width, "
                         f"got block_out_channels={list(block_out_channels)}")
    lowest = sample_size // 2 ** (len(block_out_channels) - 1)
    unet = DiffAEUNet2DModel(sample_size=sample_size, model_channels=c0,
                             channel_mult=tuple(int(c) // c0 for c in block_out_channels), num_res_blocks=num_res_blocks,
                             embed_channels=4 * c0, cond_channels=4 * c0, attention_resolutions=(lowest,),
                             num_heads=1, resblock_updown=True)
    from .diffae_blocks import AttentionBlock, ResBlock

    with torch.no_grad():
        for m in unet.modules():
            last = (m.out_layers[3] if isinstance(m, ResBlock) and m.use_condition
                    else m.proj_out if isinstance(m, AttentionBlock) else None)
            if last is not None:
                last.weight.zero_()
                last.bias.zero_()
        unet.out[-1].weight.zero_()
        unet.out[-1].bias.zero_()
    return unet


def build_diffae_scheduler(num_train_timesteps: int = 1000, prediction_type: str = "epsilon") -> DDIMScheduler:
    """The scheduler of a ``DiffAEUNet2DModel``: the official linear betas (1e-4 to 0.02 at T = 1000, rescaled for
    another T) that ``dpdiffusion.models.diffae_sampler`` reads, with ``x0`` clipping to [-1, 1] as it samples;
    ``prediction_type`` what the network predicts (``"epsilon"``, official, or ``"v_prediction"``)."""
    scale = 1000 / num_train_timesteps  # get_named_beta_schedule("linear", T)
    return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_start=scale * 0.0001, beta_end=scale * 0.02,
                         beta_schedule="linear", clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                         steps_offset=0, timestep_spacing="leading", prediction_type=prediction_type)


def build_scheduler(num_train_timesteps: int = 1000) -> DDIMScheduler:
    """The DDIM scheduler used for training, decoding and inversion (cosine schedule, no x0 clipping)."""
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    )


def ddim_pairs(scheduler: DDIMScheduler, num_inference_steps: int) -> list[tuple[int, float, float]]:
    """The decoding grid as ``(t_k, abar_{t_k}, abar_prev)`` triples, from the noisiest step down.

    Uses the scheduler's own ``set_timesteps`` and ``final_alpha_cumprod`` so that decoding and inversion agree.
    """
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got num_inference_steps={num_inference_steps!r}")
    if num_inference_steps > scheduler.config.num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be <= num_train_timesteps={scheduler.config.num_train_timesteps}, "
            f"got num_inference_steps={num_inference_steps}"
        )
    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(num_inference_steps)
    step = sched.config.num_train_timesteps // num_inference_steps
    ac = sched.alphas_cumprod
    out = []
    for t in sched.timesteps.tolist():
        prev = t - step
        a_prev = float(ac[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
        out.append((int(t), float(ac[t]), a_prev))
    return out


def _is_official(unet) -> bool:
    """Whether ``unet`` is the official DiffAE architecture (``DiffAEUNet2DModel``), which samples as the official
    code does (``dpdiffusion.models.diffae_sampler``) instead of on this module's grid."""
    from .diffae_unet import DiffAEUNet2DModel

    return isinstance(unet, DiffAEUNet2DModel)


def _ddim_update(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    x0 = (x - (1.0 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0 + (1.0 - a_to) ** 0.5 * eps


def _eps(unet: UNet2DModel, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
    timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    return unet(x, timestep, class_labels=cond.to(x.dtype)).sample


def predict_noise(unet: UNet2DModel, x: torch.Tensor, t: int, cond: torch.Tensor, *, guidance_scale: float = 1.0,
                  guidance_cond: torch.Tensor | None = None) -> torch.Tensor:
    """The noise prediction at timestep ``t``, with semantic guidance when ``guidance_scale != 1`` (see
    ``ddim_decode``): both conditions in one batched UNet call, as diffusers' CFG pipelines do."""
    if guidance_scale == 1.0:
        return _eps(unet, x, t, cond)
    if guidance_cond is None:
        raise ValueError("guidance_cond (the condition of the centre latent) is needed when guidance_scale != 1")
    eps, eps_c = _eps(unet, torch.cat([x, x]), t, torch.cat([cond, guidance_cond.expand_as(cond)])).chunk(2)
    return eps_c + guidance_scale * (eps - eps_c)


def ddim_decode(
    unet: UNet2DModel,
    scheduler: DDIMScheduler,
    x_T: torch.Tensor,
    cond: torch.Tensor,
    num_inference_steps: int,
    *,
    guidance_scale: float = 1.0,
    guidance_cond: torch.Tensor | None = None,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from the stochastic code ``x_T`` (B, C, H, W) to ``x_0``, conditioned on ``cond`` (B, E).

    Semantic guidance (classifier-free-guidance form, Ho & Salimans 2022, with the *public centre latent* in place of
    the null condition): ``eps = eps(c0) + s * (eps(cond) - eps(c0))`` with ``c0 = guidance_cond``. ``s = 1`` is plain
    conditioning; ``s > 1`` strengthens what ``z`` says relative to the average face. It reads only ``z`` and public
    values, so it is post-processing of a release.
    """
    if _is_official(unet):  # the official DiffAE architecture runs the official respaced sampler
        from .diffae_sampler import diffae_ddim_decode

        return diffae_ddim_decode(unet, scheduler, x_T, cond, num_inference_steps, guidance_scale=guidance_scale,
                                  guidance_cond=guidance_cond, callback=callback)
    if guidance_scale != 1.0 and guidance_cond is None:
        raise ValueError("guidance_cond (the condition of the centre latent) is needed when guidance_scale != 1")
    x = x_T
    for i, (t, a_t, a_prev) in enumerate(ddim_pairs(scheduler, num_inference_steps)):
        eps = predict_noise(unet, x, t, cond, guidance_scale=guidance_scale, guidance_cond=guidance_cond)
        x = _ddim_update(x, eps, a_t, a_prev)
        if callback is not None:
            callback(i)
    return x


def ddim_invert(
    unet: UNet2DModel,
    scheduler: DDIMScheduler,
    x_0: torch.Tensor,
    cond: torch.Tensor,
    num_inference_steps: int,
    *,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion ``x_0 -> x_T`` on exactly the decoding grid (the stochastic code of DiffAE)."""
    if _is_official(unet):
        from .diffae_sampler import diffae_ddim_invert

        return diffae_ddim_invert(unet, scheduler, x_0, cond, num_inference_steps, callback=callback)
    x = x_0
    for i, (t, a_t, a_prev) in enumerate(reversed(ddim_pairs(scheduler, num_inference_steps))):
        x = _ddim_update(x, _eps(unet, x, t, cond), a_prev, a_t)
        if callback is not None:
            callback(i)
    return x
