"""The official Diffusion Autoencoder sampler: respaced DDIM (eta = 0) and its inversion, as in ``phizaz/diffae``.

What is computed (official ``diffusion/base.py`` and ``diffusion/diffusion.py``, Song et al. 2021 Eq. 12 with
eta = 0):

- betas: ``beta_schedule="linear"`` over ``T`` training steps, in float64 (``get_named_beta_schedule``).
- grid: ``space_timesteps(T, f"ddim{N}")``, i.e. ``range(0, T, s)`` for the smallest stride ``s`` giving exactly
  ``N`` steps (``s = T // N`` whenever ``N`` divides ``T``); respaced ``abar_i`` (i = 0 .. N-1) with
  ``abar_prev_0 = 1`` and ``abar_next_{N-1} = 0``; the network sees the original index ``t_i = i * s``.
- decode (``ddim_sample_loop``), i = N-1 .. 0:
  ``x0 = clip(sqrt(1/abar_i) x - sqrt(1/abar_i - 1) eps, -1, 1)``,
  ``eps' = (sqrt(1/abar_i) x - x0) / sqrt(1/abar_i - 1)``,
  ``x <- sqrt(abar_prev_i) x0 + sqrt(1 - abar_prev_i) eps'``.
- invert (``ddim_reverse_sample_loop``), i = 0 .. N-1: the same ``x0``/``eps'`` at ``(x, t_i)``, then
  ``x <- sqrt(abar_next_i) x0 + sqrt(1 - abar_next_i) eps'``; the last step lands on ``abar = 0``, so ``x_T = eps'``.

Coefficients are computed in float64 and cast to float32 per step, as the official ``_extract_into_tensor`` does.

Why not diffusers' ``DDIMScheduler``: configured with ``beta_schedule="linear"``, ``clip_sample=True``,
``set_alpha_to_one=True``, ``timestep_spacing="leading"`` and ``use_clipped_model_output=True`` its decoding step is
the same update on the same grid when ``N`` divides ``T``, but (1) its ``alphas_cumprod`` are float32 products (the
official ones float64), (2) its grid differs from ``space_timesteps`` when ``N`` does not divide ``T`` (N = 3:
``{0, 333, 666}`` against the official ``{0, 334, 668}``), and (3) ``DDIMInverseScheduler`` neither clips ``x0`` nor
ends on ``abar = 0`` as the official inversion does. The scheduler of a converted pipeline is still a
``DDIMScheduler`` with the official betas: it stores the schedule (``beta_start``, ``beta_end``,
``num_train_timesteps``) that this module reads, and the privacy code maps noise to diffusion strength on it.

A network trained here with ``prediction_type="v_prediction"`` (``train_autoencoder --prediction_type``; not an
official option) is sampled on the same grid, its output converted to the noise prediction first (``_eps``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def official_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """The official ``space_timesteps(T, "ddimN")`` grid, increasing.

    Raises:
        ValueError: when no integer stride in ``[1, T)`` gives exactly ``num_inference_steps`` steps (the official
            code raises too; e.g. N = 1, or N = 400 with T = 1000).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(
            f"num_inference_steps must be an integer >= 1, got num_inference_steps={num_inference_steps!r}")
    for stride in range(1, num_train_timesteps):
        if len(range(0, num_train_timesteps, stride)) == num_inference_steps:
            return list(range(0, num_train_timesteps, stride))
    raise ValueError(
        f"num_inference_steps must be a step count reachable with an integer stride over "
        f"num_train_timesteps={num_train_timesteps} (the official space_timesteps grid; e.g. any divisor of it "
        f"other than 1), got num_inference_steps={num_inference_steps}")


def official_betas(scheduler_config) -> np.ndarray:
    """Float64 betas of a ``DDIMScheduler`` config with the official linear schedule."""
    if scheduler_config.beta_schedule != "linear":
        raise ValueError(f"the DiffAE sampler needs beta_schedule='linear' (official 'linear'), "
                         f"got beta_schedule={scheduler_config.beta_schedule!r}")
    t = int(scheduler_config.num_train_timesteps)
    return np.linspace(scheduler_config.beta_start, scheduler_config.beta_end, t, dtype=np.float64)


class OfficialDDIMGrid:
    """Respaced DDIM coefficients (float64) of the official ``SpacedDiffusionBeatGans`` for ``N`` steps."""

    def __init__(self, betas: np.ndarray, num_inference_steps: int):
        self.timesteps = official_timesteps(len(betas), num_inference_steps)  # original indices, increasing
        base = np.cumprod(1.0 - betas, axis=0)
        use, last, new_betas = set(self.timesteps), 1.0, []
        for i, ac in enumerate(base):  # the official respacing: betas recomputed, then cumprod again
            if i in use:
                new_betas.append(1 - ac / last)
                last = ac
        ac = np.cumprod(1.0 - np.array(new_betas), axis=0)
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod_next = np.append(ac[1:], 0.0)
        self.sqrt_recip = np.sqrt(1.0 / ac)
        self.sqrt_recipm1 = np.sqrt(1.0 / ac - 1)

    def coef(self, name: str, i: int, like: torch.Tensor) -> torch.Tensor:
        """Coefficient ``name[i]`` as a float32 scalar tensor (the official ``_extract_into_tensor(...).float()``)."""
        return torch.tensor(getattr(self, name)[i], dtype=torch.float64).float().to(device=like.device)


def _prediction_type(scheduler) -> str:
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise ValueError(f"the DiffAE sampler needs prediction_type 'epsilon' (official) or 'v_prediction', "
                         f"got prediction_type={kind!r}")
    return kind


def _eps(unet, x, t, cond, guidance_scale=1.0, guidance_cond=None, *, grid=None, i=None, kind="epsilon"):
    """The noise prediction at ``(x, t)``; a ``v_prediction`` network's output ``v`` is turned into it first,
    ``eps = sqrt(abar) v + sqrt(1 - abar) x`` (Salimans & Ho 2022, with ``v = sqrt(abar) eps - sqrt(1 - abar) x0``;
    the respaced ``abar_i`` equals the original ``abar`` at ``t_i``)."""
    timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    if guidance_scale != 1.0:  # semantic guidance (see dpdiffusion.models.diffae.ddim_decode), one batched call
        out, out_c = unet(torch.cat([x, x]), timestep.repeat(2),
                          cond=torch.cat([cond, guidance_cond.expand_as(cond)])).sample.chunk(2)
        out = out_c + guidance_scale * (out - out_c)
    else:
        out = unet(x, timestep, cond=cond).sample
    if kind == "v_prediction":
        a = grid.coef("alphas_cumprod", i, x)
        return torch.sqrt(a) * out + torch.sqrt(1 - a) * x
    return out


def _x0_and_eps(grid: OfficialDDIMGrid, i: int, x: torch.Tensor, eps: torch.Tensor, clip: bool):
    sr, srm1 = grid.coef("sqrt_recip", i, x), grid.coef("sqrt_recipm1", i, x)
    x0 = sr * x - srm1 * eps  # _predict_xstart_from_eps
    if clip:
        x0 = x0.clamp(-1, 1)
    return x0, (sr * x - x0) / srm1  # _predict_eps_from_xstart


def diffae_ddim_decode(unet, scheduler, x_T: torch.Tensor, cond: torch.Tensor, num_inference_steps: int, *,
                       clip_denoised: bool = True, guidance_scale: float = 1.0, guidance_cond=None,
                       callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """The official ``ddim_sample_loop`` (eta = 0): stochastic code ``x_T`` (B, 3, H, W) -> ``x_0`` given
    ``cond`` = z_sem (B, d). ``guidance_scale = 1`` (the default) is the official sampler exactly."""
    if guidance_scale != 1.0 and guidance_cond is None:
        raise ValueError("guidance_cond (the condition of the centre latent) is needed when guidance_scale != 1")
    grid = OfficialDDIMGrid(official_betas(scheduler.config), num_inference_steps)
    kind = _prediction_type(scheduler)
    x = x_T
    for k, i in enumerate(reversed(range(len(grid.timesteps)))):
        eps = _eps(unet, x, grid.timesteps[i], cond, guidance_scale, guidance_cond, grid=grid, i=i, kind=kind)
        x0, eps = _x0_and_eps(grid, i, x, eps, clip_denoised)
        a_prev = grid.coef("alphas_cumprod_prev", i, x)
        x = x0 * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev) * eps  # (B, 3, H, W)
        if callback is not None:
            callback(k)
    return x


def diffae_ddim_invert(unet, scheduler, x_0: torch.Tensor, cond: torch.Tensor, num_inference_steps: int, *,
                       clip_denoised: bool = True, callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """The official ``ddim_reverse_sample_loop``: ``x_0`` (B, 3, H, W) in [-1, 1] -> stochastic code ``x_T``."""
    grid = OfficialDDIMGrid(official_betas(scheduler.config), num_inference_steps)
    kind = _prediction_type(scheduler)
    x = x_0
    for i, t in enumerate(grid.timesteps):
        x0, eps = _x0_and_eps(grid, i, x, _eps(unet, x, t, cond, grid=grid, i=i, kind=kind), clip_denoised)
        a_next = grid.coef("alphas_cumprod_next", i, x)
        x = x0 * torch.sqrt(a_next) + torch.sqrt(1 - a_next) * eps
        if callback is not None:
            callback(i)
    return x
