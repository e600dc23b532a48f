r"""The diffusion view of the noise: a noise multiplier m and a strength (diffusion time) in [0, 1].

The forward process q(a_t | a_0) = N(sqrt(abar_t) a_0, (1 - abar_t) I) rescaled by 1 / sqrt(abar_t) is
a_0 + N(0, (1 - abar_t) / abar_t): a noise multiplier m is the diffusion time where abar_t = 1 / (1 + m^2).
`strength_to_noise_multiplier` and `noise_multiplier_to_strength` map between m and a strength on a scheduler's
`alphas_cumprod`. The noise added is always exactly sigma_i; the strength is only the equivalent diffusion time,
reported next to epsilon.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["noise_multiplier_to_strength", "strength_to_noise_multiplier"]


def _log_snr(alphas_cumprod) -> np.ndarray:
    if hasattr(alphas_cumprod, "detach"):  # a torch.Tensor
        abar = alphas_cumprod.detach().cpu().double().numpy()
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
