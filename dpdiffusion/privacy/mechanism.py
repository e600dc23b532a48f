r"""The weighted Gaussian mechanism on semantic latents (tensor layer of the privacy code).

**What is released.** A semantic latent z in R^d is split by the public attribute directions A (d x k,
orthonormal columns) into protected coordinates a = A^T z in R^k and a residual r = z - A a. For each protected
coordinate i with public clip bound C_i > 0 (fixed when the directions were fitted, never computed from the input)
the mechanism releases

    a~_i = clip(a_i, -C_i, C_i) + N(0, sigma_i^2)          independently for i = 1..k,

(`apply_weighted_gaussian_mechanism`) and, with `scope="attributes"`, the residual r unchanged. With
`scope="latent"` it also releases r~ = clip_l2(r, C_r) + P n, n ~ N(0, sigma_r^2 I_d), P = I - A A^T
(`apply_residual_mechanism`). The image decoded from z~ = A a~ + r (or A a~ + r~) with a fresh x_T is
post-processing of the release.

**Neighbouring relation and bound.** `scope="attributes"`: *attribute-neighbours*, two inputs whose latents
differ only in the protected coordinates (same r). Each clipped coordinate moves by at most Delta_i = 2 C_i, so the
whitened difference (a_c - a_c') / sigma has L2 norm at most sqrt(sum_i (2 C_i / sigma_i)^2). `scope="latent"`:
any two images; the residual additionally moves by at most Delta_r = 2 C_r in L2 inside the range of P, where the
noise is isotropic.

**Calibration** (`calibrate`). With weights w_i > 0 (and w_r for the residual), W = sum of all weights and
m = `gaussian_sigma(epsilon, delta)` (unit sensitivity, Balle & Wang 2018 Theorem 8), rho = 1 / (2 m^2) and

    rho_i = (w_i / W) rho,        sigma_i = Delta_i / sqrt(2 rho_i) = 2 C_i m sqrt(W / w_i).

Then sum_i (Delta_i / sigma_i)^2 (+ (Delta_r / sigma_r)^2) = sum_i w_i / (W m^2) = 1 / m^2: after whitening, the
release is *one* Gaussian mechanism with L2 sensitivity 1 and noise multiplier m, hence (epsilon, delta)-DP for the
relation above (Balle & Wang 2018 Theorem 8; equivalently (1/m)-GDP, Dong, Roth & Su 2019, and rho-zCDP, Bun &
Steinke 2016 Proposition 1.6 with Lemma 1.7 for the split). Sigmas are rounded up (relative 1e-14, and again to the
next representable value when cast to the tensor dtype) so that rounding never weakens the guarantee.

**What is protected.** Inference about the clipped protected coordinates of one input (e.g. "does this face have
dark skin"), to the extent the attribute lives in those coordinates. **What is not protected.** The residual r
(identity, pose, expression) with `scope="attributes"`; information about the attribute that leaks into r because
the probe direction is imperfect; the input's membership in a dataset; anything about x_T when the stochastic code
is a DDIM inversion of the input (`stochastic_code="inverted"`, guarantee "heuristic"). Floating-point side
channels of the sampler (Mironov 2012) are mitigated only in `secure_mode` (float64 sampling from `os.urandom`,
sum of four Gaussians as in opacus).

**Off switch.** epsilon = inf gives m = 0 and all sigmas 0; the mechanism is then *off*: the input is returned
bit for bit (no clipping), and no random numbers are drawn.

**Diffusion view.** The forward process q(a_t | a_0) = N(sqrt(abar_t) a_0, (1 - abar_t) I) rescaled by
1 / sqrt(abar_t) is a_0 + N(0, (1 - abar_t) / abar_t): a noise multiplier m is the diffusion time where
abar_t = 1 / (1 + m^2). `strength_to_noise_multiplier` and `noise_multiplier_to_strength` map between m and a
strength in [0, 1] on a scheduler's `alphas_cumprod`. The noise added is always exactly sigma_i; the strength is
only the equivalent diffusion time, reported next to epsilon.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from .accounting import gaussian_epsilon, gaussian_sigma

__all__ = [
    "InsecurePRNGWarning",
    "NoiseCalibration",
    "apply_residual_mechanism",
    "apply_weighted_gaussian_mechanism",
    "calibrate",
    "calibrate_from_noise_multiplier",
    "clip_coordinates",
    "clip_l2",
    "gaussian_noise_like",
    "noise_multiplier_to_strength",
    "strength_to_noise_multiplier",
]

# Sigmas are rounded up by this relative amount so that float rounding of sigma_i = 2 C_i m sqrt(W / w_i)
# never makes the composed multiplier smaller than m.
_ROUND_UP = 1.0 + 1e-14

# One-time warning that torch's PRNG is not a CSPRNG (set to True to silence, e.g. in tests).
_INSECURE_PRNG_WARNED = False


class InsecurePRNGWarning(UserWarning):
    """Noise was drawn from torch's PRNG, which is not a cryptographically secure generator."""


# ---------------------------------------------------------------------------------------------------------------
# Calibration (floats)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseCalibration:
    r"""Noise scales of one release of the weighted Gaussian mechanism.

    Args:
        epsilon (`float`): the release is (epsilon, delta)-DP (`inf` when the mechanism is off).
        delta (`float`): delta of the guarantee.
        noise_multiplier (`float`): multiplier m of the composed mechanism at unit sensitivity (0 when off).
        rho (`float`): zCDP parameter 1 / (2 m^2) of the composed mechanism (`inf` when off).
        sigmas (`tuple[float, ...]`): noise standard deviation of each protected coordinate.
        residual_sigma (`float` or `None`): noise standard deviation of the residual (scope "latent"), else None.
        clip_bounds (`tuple[float, ...]`): the public clip bounds C_i used.
        residual_clip_bound (`float` or `None`): the public L2 bound C_r of the residual, or None.
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    rho: float
    sigmas: tuple
    residual_sigma: Optional[float] = None
    clip_bounds: tuple = ()
    residual_clip_bound: Optional[float] = None

    @property
    def is_off(self) -> bool:
        """True when epsilon is infinite: no clipping and no noise."""
        return self.noise_multiplier == 0.0

    @property
    def l2_sensitivities(self) -> tuple:
        """Delta_i = 2 C_i of each protected coordinate."""
        return tuple(2.0 * c for c in self.clip_bounds)


def _positive_floats(name: str, values) -> tuple:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of floats, not a string, got {name}={values!r}")
    try:
        out = tuple(_real_float(name, v) for v in values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of floats, got {name}={values!r}") from None
    if not out:
        raise ValueError(f"{name} must be non-empty, got {name}={values!r}")
    if not all(0.0 < v < math.inf for v in out):
        raise ValueError(f"{name} must all be finite and > 0, got {name}={out}")
    return out


def _real_float(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must hold real numbers, got {value!r} in {name}")
    return float(value)


def _positive_float(name: str, value) -> float:
    value = _real_float(name, value)
    if not 0.0 < value < math.inf:
        raise ValueError(f"{name} must be finite and > 0, got {name}={value}")
    return value


def _calibration(epsilon, delta, noise_multiplier, clip_bounds, weights, residual_clip_bound, residual_weight):
    clip_bounds = _positive_floats("clip_bounds", clip_bounds)
    if weights is None:
        weights = (1.0,) * len(clip_bounds)
    else:
        weights = _positive_floats("weights", weights)
        if len(weights) != len(clip_bounds):
            raise ValueError(
                f"weights must have one entry per clip bound ({len(clip_bounds)}), got {len(weights)}: "
                f"weights={weights}"
            )
    residual_weight = _positive_float("residual_weight", residual_weight)
    if residual_clip_bound is not None:
        residual_clip_bound = _positive_float("residual_clip_bound", residual_clip_bound)
    total = math.fsum(weights) + (residual_weight if residual_clip_bound is not None else 0.0)

    m = noise_multiplier
    if m == 0.0:
        sigmas = (0.0,) * len(clip_bounds)
        residual_sigma = 0.0 if residual_clip_bound is not None else None
        rho = math.inf
    else:
        rho = 1.0 / (2.0 * m * m)
        # sigma_i = Delta_i / sqrt(2 rho_i), rho_i = (w_i / W) rho, Delta_i = 2 C_i  <=>  2 C_i m sqrt(W / w_i)
        sigmas = tuple(_ROUND_UP * 2.0 * c * m * math.sqrt(total / w) for c, w in zip(clip_bounds, weights))
        residual_sigma = None
        if residual_clip_bound is not None:
            residual_sigma = _ROUND_UP * 2.0 * residual_clip_bound * m * math.sqrt(total / residual_weight)
        if not all(math.isfinite(s) for s in sigmas + (residual_sigma or 0.0,)):
            raise ValueError(
                f"weights are too unequal (or epsilon too small) for a finite noise std: weights={weights}, "
                f"residual_weight={residual_weight}, noise_multiplier={m}; keep each share w_i / sum(w) above "
                "about 1e-300"
            )
    return NoiseCalibration(
        epsilon=epsilon,
        delta=delta,
        noise_multiplier=m,
        rho=rho,
        sigmas=sigmas,
        residual_sigma=residual_sigma,
        clip_bounds=clip_bounds,
        residual_clip_bound=residual_clip_bound,
    )


def calibrate(
    *,
    epsilon: float,
    delta: float,
    clip_bounds: Sequence[float],
    weights: Optional[Sequence[float]] = None,
    residual_clip_bound: Optional[float] = None,
    residual_weight: float = 1.0,
) -> NoiseCalibration:
    r"""Noise scales that make one release (epsilon, delta)-DP (see the module docstring for the mechanism).

    m = `gaussian_sigma(epsilon=epsilon, delta=delta)`, rho = 1 / (2 m^2), rho_i = (w_i / W) rho and
    sigma_i = 2 C_i / sqrt(2 rho_i). With `residual_clip_bound` (scope "latent") the residual takes the share
    w_r / W and sigma_r = 2 C_r / sqrt(2 rho_r).

    Args:
        epsilon (`float`):
            > 0; `math.inf` turns the mechanism off (m = 0, all sigmas 0).
        delta (`float`):
            In (0, 1).
        clip_bounds (`Sequence[float]`):
            Public clip bound C_i > 0 of each protected coordinate.
        weights (`Sequence[float]`, *optional*):
            Budget weight w_i > 0 of each coordinate; `None` means equal weights.
        residual_clip_bound (`float`, *optional*):
            Public L2 bound C_r of the residual; give it for scope "latent".
        residual_weight (`float`, *optional*, defaults to 1.0):
            Budget weight w_r of the residual (only used with `residual_clip_bound`).

    Returns:
        `NoiseCalibration`.

    Raises:
        ValueError: if an argument is out of range.

    Example:

    ```py
    >>> from dpdiffusion.privacy.mechanism import calibrate
    >>> cal = calibrate(epsilon=1.0, delta=1e-5, clip_bounds=[0.5, 2.0], weights=[1.0, 3.0])
    >>> round(cal.noise_multiplier, 6), [round(s, 4) for s in cal.sigmas]
    (3.730632, [7.4613, 17.231])

    ```
    """
    noise_multiplier = gaussian_sigma(epsilon=epsilon, delta=delta)
    return _calibration(
        float(epsilon), float(delta), noise_multiplier, clip_bounds, weights, residual_clip_bound, residual_weight
    )


def calibrate_from_noise_multiplier(
    *,
    noise_multiplier: float,
    delta: float,
    clip_bounds: Sequence[float],
    weights: Optional[Sequence[float]] = None,
    residual_clip_bound: Optional[float] = None,
    residual_weight: float = 1.0,
) -> NoiseCalibration:
    r"""Noise scales for a given composed noise multiplier m (the strength path), with its exact epsilon.

    Same sigmas as `calibrate` for that m; the reported epsilon is `gaussian_epsilon(sigma=m, delta=delta)`.

    Args:
        noise_multiplier (`float`):
            Composed multiplier m, finite and >= 0 (0 turns the mechanism off, epsilon = inf).
        delta (`float`):
            In (0, 1).
        clip_bounds, weights, residual_clip_bound, residual_weight:
            As in `calibrate`.

    Returns:
        `NoiseCalibration`.

    Raises:
        ValueError: if an argument is out of range.

    Example:

    ```py
    >>> from dpdiffusion.privacy.mechanism import calibrate_from_noise_multiplier
    >>> cal = calibrate_from_noise_multiplier(noise_multiplier=1.0, delta=1e-5, clip_bounds=[1.0])
    >>> round(cal.epsilon, 6), round(cal.sigmas[0], 12)
    (4.377178, 2.0)

    ```
    """
    m = float(noise_multiplier)
    if not 0.0 <= m < math.inf:
        raise ValueError(f"noise_multiplier must be finite and >= 0, got noise_multiplier={noise_multiplier}")
    epsilon = gaussian_epsilon(sigma=m, delta=delta)
    return _calibration(epsilon, float(delta), m, clip_bounds, weights, residual_clip_bound, residual_weight)


# ---------------------------------------------------------------------------------------------------------------
# Diffusion strength <-> noise multiplier
# ---------------------------------------------------------------------------------------------------------------


def _log_snr(alphas_cumprod) -> np.ndarray:
    if isinstance(alphas_cumprod, torch.Tensor):
        abar = alphas_cumprod.detach().to("cpu", torch.float64).numpy()
    else:
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
    if abar.ndim != 1 or abar.size < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with at least 2 entries, got shape {tuple(abar.shape)}")
    if np.any(np.isnan(abar)) or np.any(abar < 0.0) or np.any(abar > 1.0):
        raise ValueError("alphas_cumprod must lie in [0, 1]")
    if np.any(np.diff(abar) > 0.0) or not abar[-1] < abar[0]:
        raise ValueError("alphas_cumprod must be non-increasing and not constant (a diffusion schedule)")
    with np.errstate(divide="ignore"):
        return np.log(abar) - np.log1p(-abar)  # log SNR = log(abar / (1 - abar)), +inf at 1, -inf at 0


def strength_to_noise_multiplier(strength: float, alphas_cumprod) -> float:
    r"""Noise multiplier m equivalent to diffusing for the fraction `strength` of a schedule.

    The continuous timestep is t = strength * (T - 1) on `alphas_cumprod` (length T); abar(t) is interpolated
    linearly in log-SNR = log(abar / (1 - abar)) between the integer steps, and m = sqrt((1 - abar) / abar)
    = exp(-logSNR / 2) (forward diffusion rescaled by 1/sqrt(abar) adds N(0, m^2), module docstring).
    strength = 0 is the schedule's first step (a small m > 0), not "no noise"; to turn the mechanism off use
    epsilon = inf.

    Args:
        strength (`float`):
            In [0, 1].
        alphas_cumprod (1-D `torch.Tensor` or array-like):
            A scheduler's cumulative alpha products, non-increasing, in [0, 1].

    Returns:
        `float`: the noise multiplier m (`inf` where abar = 0).

    Raises:
        ValueError: if `strength` is not in [0, 1] or the schedule is malformed.

    Example:

    ```py
    >>> import numpy as np
    >>> from dpdiffusion.privacy.mechanism import strength_to_noise_multiplier
    >>> abar = 1.0 / (1.0 + np.array([0.5, 1.0, 2.0]) ** 2)   # multipliers 0.5, 1, 2 at t = 0, 1, 2
    >>> strength_to_noise_multiplier(0.5, abar), round(strength_to_noise_multiplier(0.75, abar), 6)
    (1.0, 1.414214)

    ```
    """
    strength_f = float(strength)
    if not 0.0 <= strength_f <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got strength={strength}")
    log_snr = _log_snr(alphas_cumprod)
    t = strength_f * (log_snr.size - 1)
    j = min(int(math.floor(t)), log_snr.size - 1)
    frac = t - j
    if frac == 0.0:
        value = float(log_snr[j])
    elif math.isinf(log_snr[j + 1]) and log_snr[j + 1] < 0:
        value = -math.inf
    else:
        value = float((1.0 - frac) * log_snr[j] + frac * log_snr[j + 1])
    return math.exp(-0.5 * value) if value > -math.inf else math.inf


def noise_multiplier_to_strength(noise_multiplier: float, alphas_cumprod) -> float:
    r"""Inverse of `strength_to_noise_multiplier`: the strength whose diffusion noise equals multiplier m.

    Multipliers below the schedule's first step (including 0, mechanism off) map to strength 0.0; a multiplier
    above the schedule's last step cannot be expressed and raises.

    Args:
        noise_multiplier (`float`):
            m >= 0.
        alphas_cumprod (1-D `torch.Tensor` or array-like):
            As in `strength_to_noise_multiplier`.

    Returns:
        `float`: strength in [0, 1].

    Raises:
        ValueError: if m is negative, NaN or larger than the schedule's largest multiplier.

    Example:

    ```py
    >>> import numpy as np
    >>> from dpdiffusion.privacy.mechanism import noise_multiplier_to_strength
    >>> abar = 1.0 / (1.0 + np.array([0.5, 1.0, 2.0]) ** 2)
    >>> noise_multiplier_to_strength(1.0, abar), noise_multiplier_to_strength(0.1, abar)
    (0.5, 0.0)

    ```
    """
    m = float(noise_multiplier)
    if math.isnan(m) or m < 0.0:
        raise ValueError(f"noise_multiplier must be >= 0, got noise_multiplier={noise_multiplier}")
    log_snr = _log_snr(alphas_cumprod)
    if m == 0.0:
        return 0.0
    target = -2.0 * math.log(m)
    if target >= log_snr[0]:
        return 0.0
    if target < log_snr[-1]:
        largest = math.exp(-0.5 * log_snr[-1])
        raise ValueError(
            f"noise_multiplier={m} exceeds what the schedule can express (largest multiplier {largest:.6g} at "
            "strength 1); use a larger epsilon or a schedule that reaches more noise"
        )
    # log_snr is non-increasing: find j with log_snr[j] > target >= log_snr[j + 1].
    j = int(np.searchsorted(-log_snr, -target, side="left")) - 1
    lo, hi = float(log_snr[j]), float(log_snr[j + 1])
    frac = 1.0 if hi == target else (lo - target) / (lo - hi)
    return min(1.0, (j + frac) / (log_snr.size - 1))


# ---------------------------------------------------------------------------------------------------------------
# Tensors: clipping and noise
# ---------------------------------------------------------------------------------------------------------------


def _bounds_tensor(bounds, like: torch.Tensor) -> torch.Tensor:
    bounds = _positive_floats("clip_bounds", bounds)
    if len(bounds) != like.shape[-1]:
        raise ValueError(
            f"clip_bounds must have one entry per coordinate (last dimension {like.shape[-1]}), got {len(bounds)}"
        )
    bounds64 = torch.tensor(bounds, dtype=torch.float64)
    cast = bounds64.to(like.dtype)
    high = cast.to(torch.float64) > bounds64
    if high.any():  # round down when casting: clipping is never looser than the public bound
        cast = torch.where(high, torch.nextafter(cast, torch.zeros_like(cast)), cast)
    return cast.to(like.device)


def _check_float_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; the mechanism cannot clip NaN")


def clip_coordinates(a: torch.Tensor, clip_bounds) -> torch.Tensor:
    r"""Clamp each coordinate a[..., i] to [-C_i, C_i].

    The bounds are cast to `a`'s dtype rounding down (towards privacy): a bound that is not representable in that
    dtype is replaced by the largest representable value below it.

    Args:
        a (`torch.Tensor`): (..., k) coordinates.
        clip_bounds (`Sequence[float]`): k public bounds C_i > 0.

    Returns:
        `torch.Tensor`: (..., k), same dtype and device.

    Raises:
        ValueError: if the bounds do not match or `a` contains NaN.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import clip_coordinates
    >>> clip_coordinates(torch.tensor([[3.0, -0.5]]), [1.0, 0.25])
    tensor([[ 1.0000, -0.2500]])

    ```
    """
    _check_float_tensor("a", a)
    bounds = _bounds_tensor(clip_bounds, a)
    return torch.maximum(torch.minimum(a, bounds), -bounds)


def clip_l2(r: torch.Tensor, bound: float) -> torch.Tensor:
    r"""Scale each row r[..., :] to L2 norm at most `bound` (rows inside the ball are unchanged).

    Computed in float64 and, if rounding to `r`'s dtype pushed a norm above the bound, scaled down once more by a
    few ulp, so the returned norms never exceed `bound` (measured in float64).

    Args:
        r (`torch.Tensor`): (..., d).
        bound (`float`): C > 0.

    Returns:
        `torch.Tensor`: (..., d), same dtype and device.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import clip_l2
    >>> clip_l2(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])

    ```
    """
    _check_float_tensor("r", r)
    bound = _positive_float("bound", bound)
    r64 = r.to(torch.float64)
    norms = torch.linalg.vector_norm(r64, dim=-1, keepdim=True)  # (..., 1)
    scale = torch.where(norms > bound, bound / norms.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    out = (r64 * scale).to(r.dtype)
    over = torch.linalg.vector_norm(out.to(torch.float64), dim=-1, keepdim=True) > bound
    if over.any():
        eps = torch.finfo(r.dtype).eps
        out = torch.where(over, (r64 * scale * (1.0 - 4.0 * eps)).to(r.dtype), out)
    return out


def _secure_standard_normal(numel: int) -> np.ndarray:
    """`numel` N(0, 1) draws in float64 from the OS CSPRNG.

    53-bit uniforms from `os.urandom`, Box-Muller; each output is (g1 + g2 + g3 + g4) / 2 of four independent
    normals, the mitigation opacus uses in secure mode against floating-point attacks on a single draw (Holohan &
    Braghin 2021).
    """
    pairs = (4 * numel + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64) >> np.uint64(11)  # 53 random bits each
    uniforms = (raw.astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1]
    u1, u2 = uniforms[0::2], uniforms[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    normals = np.concatenate([radius * np.cos(2.0 * np.pi * u2), radius * np.sin(2.0 * np.pi * u2)])
    return normals[: 4 * numel].reshape(4, numel).sum(axis=0) / 2.0


def _std_tensor(std, like: torch.Tensor) -> torch.Tensor:
    std64 = torch.as_tensor(std, dtype=torch.float64).detach().to("cpu")
    if torch.isnan(std64).any() or (std64 < 0).any() or torch.isinf(std64).any():
        raise ValueError(f"std must be finite and >= 0, got std={std64.tolist()}")
    # Round up when casting to the tensor dtype: the noise is never smaller than asked.
    cast = std64.to(like.dtype)
    low = cast.to(torch.float64) < std64
    if low.any():
        cast = torch.where(low, torch.nextafter(cast, torch.tensor(math.inf, dtype=like.dtype)), cast)
    return cast.to(like.device)


def _warn_insecure_prng() -> None:
    global _INSECURE_PRNG_WARNED
    if not _INSECURE_PRNG_WARNED:
        _INSECURE_PRNG_WARNED = True
        warnings.warn(
            "privacy noise drawn from torch's PRNG, which is not a cryptographically secure generator: whoever "
            "knows or recovers the seed can subtract the noise. Use secure_mode=True for real releases (this "
            "warning is shown once per process).",
            InsecurePRNGWarning,
            stacklevel=3,
        )


def gaussian_noise_like(
    x: torch.Tensor,
    std: Union[float, Sequence[float], torch.Tensor],
    *,
    generator: Optional[torch.Generator] = None,
    secure_mode: bool = False,
) -> torch.Tensor:
    r"""Gaussian noise N(0, std^2) with the shape, dtype and device of `x`.

    Non-secure mode draws with diffusers' `randn_tensor(x.shape, generator=generator, ...)` (reproducible from
    the generator) and warns once per process that torch's PRNG is not a CSPRNG. `secure_mode=True` draws from
    `os.urandom` (53-bit uniforms, Box-Muller in float64, sum of four normals / 2, as opacus' secure mode), ignores
    `generator` and is not reproducible. If all of `std` is 0, zeros are returned and nothing is drawn.

    Args:
        x (`torch.Tensor`): reference tensor (..., k).
        std (`float`, sequence or `torch.Tensor`): standard deviation, finite and >= 0, broadcastable to `x`
            (e.g. one per coordinate of the last dimension). Rounded up to `x`'s dtype.
        generator (`torch.Generator`, *optional*): source of randomness in non-secure mode.
        secure_mode (`bool`, *optional*, defaults to `False`): draw from the OS CSPRNG.

    Returns:
        `torch.Tensor`: noise shaped like `x`.

    Example:

    ```py
    >>> import torch, warnings
    >>> from dpdiffusion.privacy.mechanism import gaussian_noise_like
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     n = gaussian_noise_like(torch.zeros(2, 3), [1.0, 2.0, 3.0], generator=torch.Generator().manual_seed(0))
    >>> n.shape, n.dtype
    (torch.Size([2, 3]), torch.float32)

    ```
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
    std_t = _std_tensor(std, x)
    if not (std_t != 0).any():
        return torch.zeros_like(x)
    if secure_mode:
        normals = torch.from_numpy(_secure_standard_normal(x.numel())).reshape(x.shape)
        noise = normals.to(device=x.device, dtype=x.dtype)
    else:
        _warn_insecure_prng()
        noise = randn_tensor(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return noise * std_t


def apply_weighted_gaussian_mechanism(
    a: torch.Tensor,
    *,
    clip_bounds: Sequence[float],
    sigmas: Sequence[float],
    generator: Optional[torch.Generator] = None,
    secure_mode: bool = False,
) -> torch.Tensor:
    r"""Release a~_i = clip(a_i, -C_i, C_i) + N(0, sigma_i^2) for the protected coordinates (module docstring).

    If every sigma is 0 (epsilon = inf) the mechanism is off: a copy of `a`, bit for bit, is returned (no
    clipping) and nothing is drawn from `generator`. Sigmas must otherwise all be > 0 (a zero sigma on a
    coordinate would release it exactly).

    Args:
        a (`torch.Tensor`): (B, k) protected coordinates (any leading shape (..., k) works).
        clip_bounds (`Sequence[float]`): k public bounds C_i > 0.
        sigmas (`Sequence[float]`): k noise standard deviations, e.g. `NoiseCalibration.sigmas`.
        generator (`torch.Generator`, *optional*): randomness in non-secure mode.
        secure_mode (`bool`, *optional*, defaults to `False`): draw from the OS CSPRNG.

    Returns:
        `torch.Tensor`: (..., k), same dtype and device as `a`.

    Raises:
        ValueError: if shapes or values are invalid.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import apply_weighted_gaussian_mechanism
    >>> a = torch.tensor([[5.0, -0.1]])
    >>> out = apply_weighted_gaussian_mechanism(a, clip_bounds=[1.0, 1.0], sigmas=[0.0, 0.0])
    >>> torch.equal(out, a)
    True

    ```
    """
    _check_float_tensor("a", a)
    sigmas_f = tuple(float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas))
    if len(sigmas_f) != a.shape[-1]:
        raise ValueError(f"sigmas must have one entry per coordinate ({a.shape[-1]}), got {len(sigmas_f)}")
    if not all(0.0 <= s < math.inf for s in sigmas_f):
        raise ValueError(f"sigmas must be finite and >= 0, got sigmas={sigmas_f}")
    bounds = _bounds_tensor(clip_bounds, a)
    if all(s == 0.0 for s in sigmas_f):
        return a.clone()  # mechanism off (epsilon = inf): bit for bit, no clipping, nothing drawn
    if any(s == 0.0 for s in sigmas_f):
        raise ValueError(f"sigmas must be all 0 (mechanism off) or all > 0, got sigmas={sigmas_f}")
    clipped = torch.maximum(torch.minimum(a, bounds), -bounds)  # (..., k)
    return clipped + gaussian_noise_like(clipped, sigmas_f, generator=generator, secure_mode=secure_mode)


def _check_basis(basis: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(basis, torch.Tensor) or basis.ndim != 2 or basis.shape[0] != like.shape[-1]:
        raise ValueError(
            f"protected_basis must be a (d, k) tensor with d={like.shape[-1]}, got "
            f"{tuple(basis.shape) if isinstance(basis, torch.Tensor) else type(basis).__name__}"
        )
    basis = basis.to(device=like.device, dtype=like.dtype)
    k = basis.shape[1]
    gram = (basis.T.to(torch.float64) @ basis.to(torch.float64)).cpu()
    tol = 1000.0 * torch.finfo(like.dtype).eps * max(1, k)
    if (gram - torch.eye(k, dtype=torch.float64)).abs().max() > tol:
        raise ValueError("protected_basis must have orthonormal columns (A^T A = I)")
    return basis


def apply_residual_mechanism(
    r: torch.Tensor,
    *,
    clip_bound: float,
    sigma: float,
    protected_basis: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    secure_mode: bool = False,
) -> torch.Tensor:
    r"""Release r~ = clip_l2(P r, C_r) + P n, n ~ N(0, sigma^2 I), P = I - A A^T (scope "latent").

    `r` is first projected onto the orthogonal complement of the protected directions A (a no-op up to rounding
    for the residual of `AttributeDirections.project`), so that the released residual lives where the noise is
    isotropic; sensitivity 2 C_r in L2. Without `protected_basis`, P = I. If `sigma` is 0 (epsilon = inf) the
    mechanism is off and a copy of `r` is returned bit for bit.

    Args:
        r (`torch.Tensor`): (B, d) residuals.
        clip_bound (`float`): public L2 bound C_r > 0.
        sigma (`float`): noise standard deviation, e.g. `NoiseCalibration.residual_sigma`.
        protected_basis (`torch.Tensor`, *optional*): (d, k) orthonormal protected directions A.
        generator (`torch.Generator`, *optional*): randomness in non-secure mode.
        secure_mode (`bool`, *optional*, defaults to `False`): draw from the OS CSPRNG.

    Returns:
        `torch.Tensor`: (B, d), same dtype and device as `r`.

    Raises:
        ValueError: if shapes or values are invalid.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import apply_residual_mechanism
    >>> r = torch.tensor([[0.0, 3.0, 4.0]])
    >>> out = apply_residual_mechanism(r, clip_bound=1.0, sigma=0.0)
    >>> torch.equal(out, r)
    True

    ```
    """
    _check_float_tensor("r", r)
    clip_bound = _positive_float("clip_bound", clip_bound)
    sigma = float(sigma)
    if not 0.0 <= sigma < math.inf:
        raise ValueError(f"sigma must be finite and >= 0, got sigma={sigma}")
    basis = _check_basis(protected_basis, r) if protected_basis is not None else None
    if sigma == 0.0:
        return r.clone()  # mechanism off
    if basis is not None:
        r = r - (r @ basis) @ basis.T  # (B, d), onto the complement
    clipped = clip_l2(r, clip_bound)  # (B, d)
    noise = gaussian_noise_like(clipped, sigma, generator=generator, secure_mode=secure_mode)  # (B, d)
    if basis is not None:
        noise = noise - (noise @ basis) @ basis.T
    return clipped + noise


def postprocess_to_bounds(a_noisy: torch.Tensor, clip_bounds) -> torch.Tensor:
    r"""Clamp released coordinates back into the public range [-C_i, C_i] (post-processing, no privacy cost).

    The noise needed at small epsilon is many times the clip bound, so a~ alone would lie far outside the latent
    distribution the decoder was trained on. Mapping a~ to clip(a~, -C, C) uses only the released value and public
    bounds, so by the post-processing property of differential privacy (Dwork & Roth 2014, Proposition 2.1) the
    (epsilon, delta) guarantee of the release is unchanged. Large noise then yields a confidently drawn but random
    attribute instead of an off-distribution latent.

    Args:
        a_noisy (`torch.Tensor`): (..., k) released coordinates.
        clip_bounds (`Sequence[float]`): the k public bounds C_i.

    Returns:
        `torch.Tensor`: (..., k), same dtype and device.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import postprocess_to_bounds
    >>> postprocess_to_bounds(torch.tensor([[12.0, -0.5]]), [1.0, 2.0])
    tensor([[ 1.0000, -0.5000]])

    ```
    """
    return clip_coordinates(a_noisy, clip_bounds)
