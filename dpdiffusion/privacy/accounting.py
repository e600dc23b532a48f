"""Privacy accounting for the Gaussian mechanism: pure float math, no torch, no state.

This is the bottom layer of the privacy code (opacus-style layering): every privacy number the package reports
comes from a function in this file. Tensors, pipelines and the ledger only call these functions.

Notation (paper -> code):

| paper                         | code                  | meaning                                           |
|-------------------------------|-----------------------|---------------------------------------------------|
| Delta                         | `sensitivity`         | L2 sensitivity of the released quantity           |
| sigma                         | `sigma`               | standard deviation of the Gaussian noise          |
| m = sigma / Delta             | `noise_multiplier`    | noise in units of the sensitivity                 |
| mu = Delta / sigma = 1 / m    |                       | Gaussian-DP parameter (Dong, Roth & Su 2019)      |
| rho = 1 / (2 m^2)             | `rho`                 | zCDP parameter (Bun & Steinke 2016)               |
| alpha, eps_alpha              | `orders`, `rdp`       | Renyi-DP curve (Mironov 2017)                     |

Exact (epsilon, delta) of one Gaussian mechanism, Balle & Wang 2018 ("Improving the Gaussian mechanism for
differential privacy", ICML, arXiv:1805.06530), Theorem 8: the mechanism M(x) = f(x) + N(0, sigma^2 I) with
||f(x) - f(x')||_2 <= Delta is (epsilon, delta)-DP if and only if

    delta >= Phi(Delta / (2 sigma) - epsilon sigma / Delta) - e^epsilon Phi(-Delta / (2 sigma) - epsilon sigma / Delta).

`gaussian_sigma` and `gaussian_epsilon` invert this curve by bisection to full double precision (Algorithm 1 of
the paper solves the same equation), evaluating it in log space with `scipy.special.erfcx` plus a bound on the
rounding error, so that every "delta(eps) <= delta" decision is certified. Both round towards privacy and are
consistent with each other: `gaussian_epsilon(sigma=gaussian_sigma(epsilon=e, ...), ...) <= e` holds exactly in
floating point, not only up to a tolerance.

Composition of Gaussian mechanisms is exact in Gaussian DP: k mechanisms with multipliers m_j compose to one Gaussian
mechanism with multiplier (sum_j m_j^-2)^(-1/2) (Dong, Roth & Su 2019, Corollary 3.3), see
`compose_noise_multipliers`. RDP and zCDP helpers are provided for reporting and for comparison with the paper.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Iterable

import numpy as np
from scipy.special import erfcx, ndtr

__all__ = [
    "RdpOrderWarning",
    "classical_gaussian_sigma",
    "compose_noise_multipliers",
    "gaussian_epsilon",
    "gaussian_rdp",
    "gaussian_sigma",
    "gaussian_zcdp_rho",
    "rdp_to_epsilon",
    "zcdp_to_epsilon",
]

# Conservative relative margin for float rounding in `compose_noise_multipliers` (about 9 ulp of a double).
_COMPOSE_MARGIN = 2e-15
_UNIT_ROUNDOFF = 2.0**-53
_SQRT2 = math.sqrt(2.0)


class RdpOrderWarning(UserWarning):
    """The optimal RDP order lies at the edge of the grid: a wider grid may give a smaller epsilon."""


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _as_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {name}={value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN, got {name}={value}")
    return value


def _check_delta(delta) -> float:
    delta = _as_real("delta", delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got delta={delta}")
    return delta


def _check_epsilon(epsilon) -> float:
    epsilon = _as_real("epsilon", epsilon)
    if not epsilon > 0.0:
        raise ValueError(f"epsilon must be > 0 (inf allowed: no privacy), got epsilon={epsilon}")
    return epsilon


def _check_sensitivity(sensitivity) -> float:
    sensitivity = _as_real("sensitivity", sensitivity)
    if not (0.0 < sensitivity < math.inf):
        raise ValueError(f"sensitivity must be finite and > 0, got sensitivity={sensitivity}")
    return sensitivity


def _check_nonnegative(name: str, value) -> float:
    value = _as_real(name, value)
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0 (inf allowed), got {name}={value}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Analytic Gaussian mechanism (Balle & Wang 2018)
# ---------------------------------------------------------------------------------------------------------------


def _log_delta_upper(epsilon: float, sigma: float, sensitivity: float) -> float:
    """An upper bound on log delta(epsilon) of the Gaussian mechanism (Balle & Wang 2018, Theorem 8).

    For 0 < sigma < inf and 0 <= epsilon < inf. With a = Delta/(2 sigma) - epsilon sigma/Delta and
    b = -Delta/(2 sigma) - epsilon sigma/Delta the identity epsilon - b^2/2 = -a^2/2 gives

        delta = Phi(a) - e^epsilon Phi(b) = exp(-a^2/2) (erfcx(-a/sqrt2) - erfcx(-b/sqrt2)) / 2     (a < 0)
        delta = Phi(a) - exp(-a^2/2) erfcx(-b/sqrt2) / 2                                          (a >= 0),

    which keeps both terms in range at any epsilon and loses little to cancellation. The value returned is the
    float evaluation plus a bound on its rounding error (first-order, with a safety factor; checked against
    50-digit mpmath in the tests), so "upper bound <= log(target)" certifies the exact inequality. Where the
    two terms cancel completely in double precision nothing can be certified and `inf` is returned.
    Both `gaussian_sigma` and `gaussian_epsilon` decide feasibility with this one function.
    """
    half_mu = sensitivity / (2.0 * sigma)
    shift = epsilon * sigma / sensitivity
    a = half_mu - shift
    b = -half_mu - shift
    arg_error = 2.0 * _UNIT_ROUNDOFF * (half_mu + shift)  # absolute rounding error of a and b
    second = float(erfcx(-b / _SQRT2))
    if a < 0.0:
        first = float(erfcx(-a / _SQRT2))
        diff = first - second
        if not diff > 0.0:
            return math.inf
        value = -0.5 * a * a + math.log(0.5 * diff)
    else:
        first = float(ndtr(a))
        second = 0.5 * math.exp(-0.5 * a * a) * second
        diff = first - second
        if not diff > 0.0:
            return math.inf
        value = math.log(diff)
    cond = first / diff  # amplification of relative errors by the cancellation
    error = _UNIT_ROUNDOFF * (64.0 * cond + 4.0 * (0.5 * a * a + 1.0))
    error += arg_error * (abs(a) + 2.0 * cond * (1.0 + abs(a) + abs(b)))
    return value + error


def _bisect_smallest_feasible(feasible, lo: float, hi: float) -> float:
    """Smallest double in (lo, hi] that is feasible, given lo infeasible and hi feasible.

    Bisects until lo and hi are adjacent doubles and returns hi (the feasible end): the answer is rounded towards
    the feasible (private) side. If `feasible(x)` holds for some x in [lo, hi], the result is <= x.
    """
    while True:
        mid = lo + 0.5 * (hi - lo)
        if not lo < mid < hi:
            return hi
        if feasible(mid):
            hi = mid
        else:
            lo = mid


def gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    r"""Smallest noise standard deviation that makes the Gaussian mechanism (epsilon, delta)-DP.

    Exact calibration with the analytic Gaussian mechanism (Balle & Wang 2018, Theorem 8; Algorithm 1 solves the
    same equation): returns the smallest sigma with delta(epsilon; sigma) <= delta, found by bisection to adjacent
    doubles and rounded towards privacy (the returned sigma never yields more than `epsilon`; it is within a few ulp
    of the exact optimum). Valid for every epsilon > 0, unlike the classical formula (see
    `classical_gaussian_sigma`).

    Args:
        epsilon (`float`):
            Target epsilon, > 0. `math.inf` means no privacy and returns 0.0 (no noise).
        delta (`float`):
            Target delta, in (0, 1).
        sensitivity (`float`, *optional*, defaults to 1.0):
            L2 sensitivity Delta of the released quantity, > 0. With the default the result is the noise
            multiplier m = sigma / Delta.

    Returns:
        `float`: the noise standard deviation sigma.

    Raises:
        ValueError: if an argument is NaN or out of range.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import gaussian_sigma, classical_gaussian_sigma
    >>> round(gaussian_sigma(epsilon=1.0, delta=1e-5), 6)
    3.730632
    >>> round(classical_gaussian_sigma(epsilon=1.0, delta=1e-5), 6)
    4.844805
    >>> gaussian_sigma(epsilon=float("inf"), delta=1e-5)
    0.0

    ```
    """
    epsilon = _check_epsilon(epsilon)
    delta = _check_delta(delta)
    sensitivity = _check_sensitivity(sensitivity)
    if epsilon == math.inf:
        return 0.0
    log_target = math.log(delta)

    def feasible(sigma: float) -> bool:
        return _log_delta_upper(epsilon, sigma, sensitivity) <= log_target

    # Bracket: delta(eps; sigma) decreases from 1 (sigma -> 0) to 0 (sigma -> inf).
    hi = sensitivity
    while not feasible(hi):
        hi *= 2.0
        if hi == math.inf:
            advice = ("epsilon must be at most about 5e14 (or inf: no noise)" if epsilon > 1.0 else
                      "use a larger epsilon or delta")
            raise ValueError(f"cannot calibrate epsilon={epsilon}, delta={delta} in double precision; {advice}")
    lo = hi
    while feasible(lo):
        hi, lo = lo, lo / 2.0
        if lo == 0.0:  # pragma: no cover - delta(eps; sigma) -> 1 as sigma -> 0, so never reached for delta < 1
            break
    sigma = _bisect_smallest_feasible(feasible, lo, hi)
    # The float evaluation of delta(eps; sigma) is not exactly monotone, so make the round trip exact explicitly:
    # grow sigma by a few ulp until `gaussian_epsilon` agrees that it gives at most `epsilon`.
    step = 2.0**-52
    while gaussian_epsilon(sigma=sigma, delta=delta, sensitivity=sensitivity) > epsilon:
        sigma *= 1.0 + step
        step *= 2.0
    return sigma


def gaussian_epsilon(*, sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    r"""Exact epsilon of the Gaussian mechanism with noise standard deviation `sigma` at `delta`.

    Returns the smallest epsilon >= 0 with delta(epsilon; sigma) <= delta (Balle & Wang 2018, Theorem 8), found by
    bisection to adjacent doubles and rounded up (towards privacy).

    Args:
        sigma (`float`):
            Noise standard deviation, >= 0. 0 means no noise and gives `math.inf`; `math.inf` gives 0.0.
        delta (`float`):
            Target delta, in (0, 1).
        sensitivity (`float`, *optional*, defaults to 1.0):
            L2 sensitivity Delta, > 0. With the default, `sigma` is the noise multiplier.

    Returns:
        `float`: epsilon.

    Raises:
        ValueError: if an argument is NaN or out of range.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import gaussian_epsilon, gaussian_sigma
    >>> round(gaussian_epsilon(sigma=1.0, delta=1e-5), 6)
    4.377178
    >>> gaussian_epsilon(sigma=gaussian_sigma(epsilon=0.5, delta=1e-6), delta=1e-6) <= 0.5
    True
    >>> gaussian_epsilon(sigma=0.0, delta=1e-5)
    inf

    ```
    """
    sigma = _check_nonnegative("sigma", sigma)
    delta = _check_delta(delta)
    sensitivity = _check_sensitivity(sensitivity)
    if sigma == 0.0:
        return math.inf
    if sigma == math.inf:
        return 0.0
    log_target = math.log(delta)

    def feasible(epsilon: float) -> bool:
        return _log_delta_upper(epsilon, sigma, sensitivity) <= log_target

    if feasible(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while not feasible(hi):
        lo, hi = hi, hi * 2.0
        if hi == math.inf:
            return math.inf
    return _bisect_smallest_feasible(feasible, lo, hi)


def classical_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    r"""The classical calibration sigma = sqrt(2 ln(1.25 / delta)) * Delta / epsilon, for comparison only.

    Dwork & Roth 2014, Theorem A.1. It is only a valid (epsilon, delta) guarantee for epsilon in (0, 1) (and at
    epsilon = 1 by continuity of delta(epsilon)) and is never tighter than `gaussian_sigma`; the package never
    calibrates with it. Above epsilon = 1 a `UserWarning` is raised and the number is returned for plots only.

    Args:
        epsilon (`float`):
            Target epsilon, > 0 (`math.inf` gives 0.0).
        delta (`float`):
            Target delta, in (0, 1).
        sensitivity (`float`, *optional*, defaults to 1.0):
            L2 sensitivity, > 0.

    Returns:
        `float`: sigma from the classical formula.

    Raises:
        ValueError: if an argument is NaN or out of range.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import classical_gaussian_sigma
    >>> round(classical_gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=2.0), 6)
    19.379221

    ```
    """
    epsilon = _check_epsilon(epsilon)
    delta = _check_delta(delta)
    sensitivity = _check_sensitivity(sensitivity)
    if epsilon == math.inf:
        return 0.0
    if epsilon > 1.0:
        warnings.warn(
            f"classical_gaussian_sigma is only a valid (epsilon, delta) calibration for epsilon <= 1, got "
            f"epsilon={epsilon}; use gaussian_sigma for a guarantee",
            UserWarning,
            stacklevel=2,
        )
    return math.sqrt(2.0 * math.log(1.25 / delta)) * sensitivity / epsilon


# ---------------------------------------------------------------------------------------------------------------
# Composition, RDP and zCDP
# ---------------------------------------------------------------------------------------------------------------


def compose_noise_multipliers(multipliers: Iterable[float]) -> float:
    r"""Noise multiplier of the composition of Gaussian mechanisms: (sum_j m_j^-2)^(-1/2).

    Exact for (adaptive) composition of Gaussian mechanisms: a Gaussian mechanism with multiplier m is
    (1/m)-GDP and mu_j-GDP mechanisms compose to sqrt(sum mu_j^2)-GDP (Dong, Roth & Su 2019, Corollary 3.3), which
    is again a Gaussian mechanism. Multipliers of `math.inf` (no release) contribute nothing; a 0 (no noise) makes
    the composition 0; an empty sequence gives `math.inf`. With more than one finite multiplier the result is
    rounded down by a relative 2e-15 so that float rounding never understates the privacy loss.

    Args:
        multipliers (`Iterable[float]`):
            Noise multipliers m_j = sigma_j / Delta_j, each >= 0.

    Returns:
        `float`: the composed noise multiplier.

    Raises:
        ValueError: if a multiplier is NaN or negative.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import compose_noise_multipliers
    >>> round(compose_noise_multipliers([2.0, 2.0, 2.0, 2.0]), 12)
    1.0
    >>> compose_noise_multipliers([3.0, float("inf")])
    3.0

    ```
    """
    values = [_check_nonnegative("multipliers[%d]" % i, m) for i, m in enumerate(multipliers)]
    finite = [m for m in values if m != math.inf]
    if not finite:
        return math.inf
    if any(m == 0.0 for m in finite):
        return 0.0
    if len(finite) == 1:
        return finite[0]
    total = math.fsum(1.0 / (m * m) for m in finite)
    if total == math.inf:
        return 0.0
    return (1.0 - _COMPOSE_MARGIN) / math.sqrt(total)


def gaussian_rdp(*, orders, noise_multiplier: float):
    r"""Renyi-DP curve of the Gaussian mechanism: eps(alpha) = alpha / (2 m^2).

    Mironov 2017 ("Renyi differential privacy", CSF), Table II.

    Args:
        orders (`float` or array-like of `float`):
            Renyi orders alpha, each > 1.
        noise_multiplier (`float`):
            m = sigma / Delta, >= 0 (0 gives `inf`, `math.inf` gives 0).

    Returns:
        `float` for a scalar `orders`, otherwise a 1-D `numpy.ndarray`: the RDP epsilon at each order.

    Raises:
        ValueError: if an order is not > 1 or the multiplier is NaN or negative.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import gaussian_rdp
    >>> gaussian_rdp(orders=[2.0, 4.0], noise_multiplier=2.0).tolist()
    [0.25, 0.5]

    ```
    """
    noise_multiplier = _check_nonnegative("noise_multiplier", noise_multiplier)
    scalar = np.ndim(orders) == 0
    alphas = _check_orders(orders)
    if noise_multiplier == 0.0:
        out = np.full_like(alphas, np.inf)
    elif noise_multiplier == math.inf:
        out = np.zeros_like(alphas)
    else:
        out = alphas / (2.0 * noise_multiplier**2)
    return float(out[0]) if scalar else out


def gaussian_zcdp_rho(noise_multiplier: float) -> float:
    r"""zCDP parameter of the Gaussian mechanism: rho = 1 / (2 m^2) (Bun & Steinke 2016, Proposition 1.6).

    Args:
        noise_multiplier (`float`):
            m = sigma / Delta, >= 0 (0 gives `math.inf`, `math.inf` gives 0.0).

    Returns:
        `float`: rho.

    Raises:
        ValueError: if the multiplier is NaN or negative.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import gaussian_zcdp_rho
    >>> gaussian_zcdp_rho(2.0)
    0.125

    ```
    """
    noise_multiplier = _check_nonnegative("noise_multiplier", noise_multiplier)
    if noise_multiplier == 0.0:
        return math.inf
    return 1.0 / (2.0 * noise_multiplier**2)


def _check_orders(orders) -> np.ndarray:
    alphas = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    if alphas.ndim != 1 or alphas.size == 0:
        raise ValueError(f"orders must be a non-empty 1-D sequence, got orders={orders!r}")
    if not np.all(np.isfinite(alphas)) or not np.all(alphas > 1.0):
        raise ValueError(f"orders must be finite and > 1, got orders={orders!r}")
    return alphas


def _rdp_epsilon_at_order(alpha: float, rdp: float, delta: float, method: str) -> float:
    if rdp == math.inf:
        return math.inf
    if method == "paper":
        # Mironov 2017, Proposition 3.
        return rdp + math.log(1.0 / delta) / (alpha - 1.0)
    # Canonne, Kamath & Steinke 2020 (arXiv:2004.00010) Proposition 12; Balle et al. 2020 (arXiv:2001.05990) Eq. 20.
    if delta**2 + math.expm1(-rdp) > 0.0:
        # delta >= sqrt(1 - exp(-KL)) with KL <= eps(alpha): (0, delta)-DP (as in dp_accounting).
        return 0.0
    eps = rdp + math.log1p(-1.0 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1.0)
    return max(0.0, eps)


def rdp_to_epsilon(*, orders, rdp, delta: float, method: str = "tight") -> tuple[float, float]:
    r"""Convert a Renyi-DP curve to (epsilon, delta)-DP, minimising over the given orders.

    - `method="paper"`: the classical conversion eps = eps(alpha) + log(1/delta) / (alpha - 1) (Mironov 2017,
      Proposition 3), the one the paper's Lemma 1 uses.
    - `method="tight"`: the improved conversion eps = eps(alpha) + log(1 - 1/alpha) - (log delta + log alpha) /
      (alpha - 1) (Canonne, Kamath & Steinke 2020, Proposition 12; Balle et al. 2020), as in `dp_accounting`'s
      `RdpAccountant`. Never larger than "paper".

    A `RdpOrderWarning` is raised when the best order is the smallest or largest of the grid (a wider grid could
    give a smaller epsilon).

    Args:
        orders (array-like of `float`):
            Renyi orders alpha, each finite and > 1.
        rdp (array-like of `float`):
            RDP epsilon at each order, >= 0 (`inf` allowed).
        delta (`float`):
            Target delta, in (0, 1).
        method (`str`, *optional*, defaults to `"tight"`):
            `"tight"` or `"paper"`.

    Returns:
        `tuple[float, float]`: (epsilon, best_order).

    Raises:
        ValueError: if the inputs are malformed or out of range.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import gaussian_rdp, rdp_to_epsilon
    >>> orders = [1.5, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    >>> eps, order = rdp_to_epsilon(orders=orders, rdp=gaussian_rdp(orders=orders, noise_multiplier=2.0), delta=1e-5)
    >>> round(eps, 6), order
    (2.214109, 8.0)

    ```
    """
    alphas = _check_orders(orders)
    values = np.atleast_1d(np.asarray(rdp, dtype=np.float64))
    if values.shape != alphas.shape:
        raise ValueError(f"rdp must have the same length as orders ({alphas.size}), got {values.size}")
    if np.any(np.isnan(values)) or np.any(values < 0.0):
        raise ValueError(f"rdp must be >= 0 and not NaN, got rdp={values.tolist()}")
    delta = _check_delta(delta)
    if method not in ("tight", "paper"):
        raise ValueError(f'method must be "tight" or "paper", got method={method!r}')
    eps = [_rdp_epsilon_at_order(float(a), float(r), delta, method) for a, r in zip(alphas, values)]
    best = int(np.argmin(eps))
    epsilon, best_order = float(eps[best]), float(alphas[best])
    if alphas.size > 1 and 0.0 < epsilon < math.inf and best_order in (alphas.min(), alphas.max()):
        warnings.warn(
            f"the best RDP order {best_order} is at the edge of the grid [{alphas.min()}, {alphas.max()}]; "
            "extend the grid for a tighter epsilon",
            RdpOrderWarning,
            stacklevel=2,
        )
    return epsilon, best_order


def zcdp_to_epsilon(rho: float, delta: float, *, method: str = "tight") -> float:
    r"""Convert rho-zCDP to (epsilon, delta)-DP.

    - `method="tight"`: rho-zCDP is (alpha, rho alpha)-RDP for every alpha > 1; the conversion of Canonne, Kamath &
      Steinke 2020 (Proposition 12) is minimised over continuous alpha. Any alpha gives a valid bound, so the
      numerical minimisation only affects tightness.
    - `method="paper"`: eps = rho + 2 sqrt(rho log(1/delta)) (Bun & Steinke 2016, Proposition 1.3).

    Args:
        rho (`float`):
            zCDP parameter, >= 0 (`math.inf` gives `math.inf`).
        delta (`float`):
            Target delta, in (0, 1).
        method (`str`, *optional*, defaults to `"tight"`):
            `"tight"` or `"paper"`.

    Returns:
        `float`: epsilon.

    Raises:
        ValueError: if an argument is out of range.

    Example:

    ```py
    >>> from dpdiffusion.privacy.accounting import zcdp_to_epsilon
    >>> round(zcdp_to_epsilon(0.125, 1e-5, method="paper"), 6)
    2.524263
    >>> zcdp_to_epsilon(0.125, 1e-5) < zcdp_to_epsilon(0.125, 1e-5, method="paper")
    True

    ```
    """
    rho = _check_nonnegative("rho", rho)
    delta = _check_delta(delta)
    if method not in ("tight", "paper"):
        raise ValueError(f'method must be "tight" or "paper", got method={method!r}')
    if rho == 0.0:
        return 0.0
    if rho == math.inf:
        return math.inf
    log_inv_delta = math.log(1.0 / delta)
    if method == "paper":
        return rho + 2.0 * math.sqrt(rho * log_inv_delta)
    if delta**2 + math.expm1(-rho) > 0.0:
        return 0.0

    from scipy.optimize import minimize_scalar

    def eps_at(log_alpha_minus_1: float) -> float:
        alpha = 1.0 + math.exp(log_alpha_minus_1)
        return _rdp_epsilon_at_order(alpha, rho * alpha, delta, "tight")

    # Optimum of the "paper" bound: alpha* = 1 + sqrt(log(1/delta) / rho); the tight optimum is close to it.
    centre = 0.5 * math.log(log_inv_delta / rho)
    result = minimize_scalar(eps_at, bounds=(centre - 8.0, centre + 8.0), method="bounded", options={"xatol": 1e-10})
    return min(float(eps_at(float(result.x))), eps_at(centre))
