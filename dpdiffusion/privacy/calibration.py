r"""Calibration of the weighted Gaussian mechanism (floats only: no torch, no state).

With weights w_i > 0 (and w_r for the residual), W = sum of all weights and m = `gaussian_sigma(epsilon, delta)`
(unit sensitivity, Balle & Wang 2018 Theorem 8), rho = 1 / (2 m^2) and

    rho_i = (w_i / W) rho,        sigma_i = Delta_i / sqrt(2 rho_i) = 2 C_i m sqrt(W / w_i).

Then sum_i (Delta_i / sigma_i)^2 (+ (Delta_r / sigma_r)^2) = 1 / m^2: after whitening the release is one Gaussian
mechanism with L2 sensitivity 1 and noise multiplier m. Sigmas are rounded up (relative 1e-14) so that float rounding
never makes the composed multiplier smaller than m. The mechanism itself is defined in
`dpdiffusion.privacy.mechanism`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .accounting import gaussian_epsilon, gaussian_sigma

__all__ = ["NoiseCalibration", "calibrate", "calibrate_from_noise_multiplier"]

# Sigmas are rounded up by this relative amount so that float rounding of sigma_i = 2 C_i m sqrt(W / w_i)
# never makes the composed multiplier smaller than m.
_ROUND_UP = 1.0 + 1e-14


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
    if hasattr(values, "detach"):  # a torch.Tensor (this module stays free of torch)
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
