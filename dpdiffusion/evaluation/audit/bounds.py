r"""Pure statistics of the audits: Clopper-Pearson intervals, the epsilon a test's error rates imply, and the
resolution of an audit (the largest epsilon a trial count can certify, and the trial count a claim needs).

**Resolution.** With ``n`` evaluation trials per world even a perfect attack (no false positive, no false negative)
only shows FPR, FNR <= ``p_n = 1 - (alpha/2)^(1/n)`` (the Clopper-Pearson upper end at 0 errors), so the largest
lower bound an audit can report is

    eps_max(n) = log((1 - delta - p_n) / p_n) = log(((alpha/2)^(1/n) - delta) / (1 - (alpha/2)^(1/n))),

about ``log(n / 3.7)`` at alpha = 0.05 and delta ~ 0. An audit can refute a claim ``epsilon`` only when
``eps_max(n) > epsilon``; the project asks for a margin of ``REFUTATION_FACTOR`` = 2 (``eps_max >= 2 epsilon``), and
inverting the closed form gives the trial count that needs (`trials_needed`). Trial counts here are *per world, as
given to the audit*: `threshold_audit` keeps ``n - max(2, int(n * selection_fraction))`` of them for the bound.
"""

from __future__ import annotations

import math

from scipy.stats import beta as beta_dist

__all__ = [
    "REFUTATION_FACTOR",
    "clopper_pearson",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "evaluation_trials",
    "max_certifiable_epsilon",
    "trials_needed",
    "largest_refutable_claim",
]

REFUTATION_FACTOR = 2.0
"""An audit can refute a claim ``epsilon`` when its largest certifiable epsilon is at least this many times it."""


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got alpha={alpha!r}")
    return float(alpha)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got delta={delta!r}")
    return float(delta)


def _check_fraction(selection_fraction: float) -> float:
    if (isinstance(selection_fraction, bool) or not isinstance(selection_fraction, (int, float))
            or not 0.0 < selection_fraction < 1.0):
        raise ValueError(f"selection_fraction must be in (0, 1), got selection_fraction={selection_fraction!r}")
    return float(selection_fraction)


def clopper_pearson(successes: int, trials: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` Clopper-Pearson (exact binomial) interval for a proportion.

    ``lower = Beta(alpha/2; k, n-k+1)`` and ``upper = Beta(1-alpha/2; k+1, n-k)`` quantiles, with 0 and 1 at the
    edges (Clopper & Pearson 1934). Each end on its own is a one-sided ``1 - alpha/2`` bound.

    Args:
        successes (`int`): k, in [0, n].
        trials (`int`): n >= 1.
        alpha (`float`): in (0, 1).

    Returns:
        `tuple[float, float]`: (lower, upper).

    Raises:
        ValueError: if the counts are not integers with 0 <= k <= n, n >= 1, or alpha is outside (0, 1).

    Example:
    ```py
    >>> lo, hi = clopper_pearson(0, 10)
    >>> lo, round(hi, 4)
    (0.0, 0.3085)

    ```
    """
    alpha = _check_alpha(alpha)
    k, n = int(successes), int(trials)
    if k != successes or n != trials or n < 1 or not 0 <= k <= n:
        raise ValueError(f"need integers 0 <= successes <= trials, trials >= 1; got successes={successes!r}, "
                         f"trials={trials!r}")
    lower = 0.0 if k == 0 else float(beta_dist.ppf(alpha / 2.0, k, n - k + 1))
    upper = 1.0 if k == n else float(beta_dist.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return lower, upper


def epsilon_from_rates(fpr: float, fnr: float, *, delta: float = 0.0) -> float:
    """The epsilon implied by one test's error rates: ``max(log((1-delta-FNR)/FPR), log((1-delta-FPR)/FNR), 0)``.

    ``inf`` when an error rate is 0 and the numerator is positive.

    Example:
    ```py
    >>> round(epsilon_from_rates(0.1, 0.1), 4)  # log(0.9 / 0.1)
    2.1972

    ```
    """
    delta = _check_delta(delta)
    best = 0.0
    for num, den in ((1.0 - delta - fnr, fpr), (1.0 - delta - fpr, fnr)):
        if num <= 0.0:
            continue
        best = max(best, math.inf if den <= 0.0 else math.log(num / den))
    return best


def epsilon_lower_bound(*, false_positives: int, negatives: int, false_negatives: int, positives: int,
                        delta: float = 0.0, alpha: float = 0.05) -> float:
    """A ``1 - alpha`` lower confidence bound on epsilon from one threshold test's counts.

    Args:
        false_positives (`int`): outputs of world 0 (``negatives`` trials) classified as world 1.
        negatives (`int`): trials run on x_0.
        false_negatives (`int`): outputs of world 1 (``positives`` trials) classified as world 0.
        positives (`int`): trials run on x_1.
        delta (`float`): the delta of the claim being audited (0 for pure DP).
        alpha (`float`): 1 - confidence; each error rate uses its Clopper-Pearson upper end at ``alpha / 2``.

    Returns:
        `float`: ``epsilon_from_rates(FPR_upper, FNR_upper, delta=delta)`` (0 when nothing is certified).
    """
    _, fpr_u = clopper_pearson(false_positives, negatives, alpha=alpha)
    _, fnr_u = clopper_pearson(false_negatives, positives, alpha=alpha)
    return epsilon_from_rates(fpr_u, fnr_u, delta=delta)



def evaluation_trials(num_trials: int, *, selection_fraction: float = 0.5) -> int:
    """Trials per world that `threshold_audit` keeps for the bound out of ``num_trials`` (the rest select the test).

    Args:
        num_trials (`int`): trials per world given to the audit, >= 4.
        selection_fraction (`float`): in (0, 1), as in `threshold_audit`.

    Returns:
        `int`: ``num_trials - max(2, int(num_trials * selection_fraction))``.

    Raises:
        ValueError: if ``num_trials`` is not an integer >= 4 or the fraction is outside (0, 1).

    Example:
    ```py
    >>> evaluation_trials(100), evaluation_trials(5), evaluation_trials(1000, selection_fraction=0.2)
    (50, 3, 800)

    ```
    """
    fraction = _check_fraction(selection_fraction)
    if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 4:
        raise ValueError(f"num_trials must be an integer >= 4, got num_trials={num_trials!r}")
    return num_trials - max(2, int(num_trials * fraction))


def max_certifiable_epsilon(num_trials: int, *, delta: float = 0.0, alpha: float = 0.05,
                            selection_fraction: float = 0.5) -> float:
    r"""The largest epsilon lower bound an audit with ``num_trials`` trials per world can ever report.

    It is the bound of a perfect attack (0 false positives, 0 false negatives on the ``n`` evaluation trials, see
    `evaluation_trials`), in closed form (Clopper-Pearson upper end at 0 errors: ``p = 1 - (alpha/2)^(1/n)``):

        eps_max = max(0, log(((alpha/2)^(1/n) - delta) / (1 - (alpha/2)^(1/n))))   (0 when (alpha/2)^(1/n) <= delta).

    Args:
        num_trials (`int`): trials per world given to the audit (before the selection/evaluation split), >= 4.
        delta (`float`): delta of the audited claim, in [0, 1).
        alpha (`float`): 1 - confidence (0.05: the 95 % bound the audits report), in (0, 1).
        selection_fraction (`float`): share of the trials that select the threshold, in (0, 1).

    Returns:
        `float`: the largest certifiable epsilon (>= 0).

    Raises:
        ValueError: for ``num_trials`` < 4 or not an integer, or delta, alpha, selection_fraction out of range.

    Example:
    ```py
    >>> round(max_certifiable_epsilon(100, delta=1e-5), 4)  # 50 evaluation trials per world
    2.5696
    >>> round(max_certifiable_epsilon(16, delta=1e-5), 4)  # 8 evaluation trials per world
    0.5347

    ```
    """
    delta, alpha = _check_delta(delta), _check_alpha(alpha)
    n = evaluation_trials(num_trials, selection_fraction=selection_fraction)
    log_q = math.log(alpha / 2.0) / n  # log of (alpha/2)^(1/n); the error-rate bound is p = 1 - q
    q, p = math.exp(log_q), -math.expm1(log_q)
    return max(0.0, math.log((q - delta) / p)) if q > delta else 0.0  # never below 0, as `epsilon_from_rates`


def trials_needed(epsilon: float, *, delta: float = 0.0, alpha: float = 0.05, selection_fraction: float = 0.5) -> int:
    r"""The fewest trials per world with which an audit can certify ``epsilon`` (``max_certifiable_epsilon >=
    epsilon``). To refute a claim with the project's margin, ask for ``REFUTATION_FACTOR * claim``.

    Inverting `max_certifiable_epsilon`: ``n >= log(alpha/2) / log((e^eps + delta) / (1 + e^eps))`` evaluation
    trials, then the smallest total whose evaluation split holds that many.

    Args:
        epsilon (`float`): the epsilon to certify, finite and > 0.
        delta (`float`), alpha (`float`), selection_fraction (`float`): as in `max_certifiable_epsilon`.

    Returns:
        `int`: trials per world (>= 4).

    Raises:
        ValueError: for an epsilon that is not finite and > 0, or delta, alpha, selection_fraction out of range.

    Example:
    ```py
    >>> trials_needed(2 * 4.0, delta=1e-5)  # to refute epsilon = 4 with a factor-2 margin
    21997
    >>> trials_needed(2.0, delta=1e-5)
    59

    ```
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 < epsilon < math.inf:
        raise ValueError(f"epsilon must be finite and > 0, got epsilon={epsilon!r}")
    delta, alpha = _check_delta(delta), _check_alpha(alpha)
    fraction = _check_fraction(selection_fraction)
    # log((e^eps + delta) / (1 + e^eps)) = log1p(-(1 - delta) / (1 + e^eps)), stable for large epsilon
    n_eval = max(1, math.ceil(math.log(alpha / 2.0) / math.log1p(-(1.0 - delta) / (1.0 + math.exp(epsilon)))))
    n = max(4, int(n_eval / (1.0 - fraction)) - 2)
    while n > 4 and evaluation_trials(n - 1, selection_fraction=fraction) >= n_eval:
        n -= 1
    while (evaluation_trials(n, selection_fraction=fraction) < n_eval
           or max_certifiable_epsilon(n, delta=delta, alpha=alpha, selection_fraction=fraction) < epsilon):
        n += 1  # the float closed form decides ties
    return n


def largest_refutable_claim(num_trials: int, *, delta: float = 0.0, alpha: float = 0.05,
                            selection_fraction: float = 0.5, decimals: int = 2) -> float:
    """The largest claim an audit with ``num_trials`` trials per world can refute with the project's margin:
    ``max_certifiable_epsilon / REFUTATION_FACTOR``, rounded down to ``decimals`` decimals.

    Example:
    ```py
    >>> largest_refutable_claim(100, delta=1e-5)  # max certifiable 2.57
    1.28

    ```
    """
    top = max_certifiable_epsilon(num_trials, delta=delta, alpha=alpha, selection_fraction=selection_fraction)
    return math.floor(top / REFUTATION_FACTOR * 10**decimals) / 10**decimals
