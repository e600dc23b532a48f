"""The threshold test of an audit: threshold and direction chosen on a selection split, bound on the rest."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy.stats import beta as beta_dist

from .bounds import (REFUTATION_FACTOR, _check_alpha, _check_delta, _check_fraction, epsilon_from_rates,
                     epsilon_lower_bound, trials_needed)

logger = logging.getLogger(__name__)

__all__ = ["AuditResult", "threshold_audit", "audit_mechanism"]


@dataclass
class AuditResult:
    """The outcome of `threshold_audit`.

    Attributes:
        epsilon_lower_bound (`float`): 95 % (``1 - alpha``) lower confidence bound on epsilon, evaluation split.
        epsilon_point (`float`): epsilon implied by the raw error rates on the evaluation split (no confidence).
        threshold (`float`), direction (`int`): the test "world 1 iff direction * score > threshold", chosen on the
            selection split.
        fpr (`float`), fnr (`float`): error rates on the evaluation split.
        trials_per_world (`int`): trials of each world on the evaluation split.
        max_certifiable_epsilon (`float`): the bound a perfect attack would reach with this many trials (the
            audit's resolution: no attack can show more; `max_certifiable_epsilon`).
        delta (`float`), alpha (`float`): of the audit.
        claimed_epsilon (`float` or `None`): the claim audited, if any.
    """

    epsilon_lower_bound: float
    epsilon_point: float
    threshold: float
    direction: int
    fpr: float
    fnr: float
    trials_per_world: int
    max_certifiable_epsilon: float
    delta: float
    alpha: float
    claimed_epsilon: float | None = None

    @property
    def exceeds_claim(self) -> bool:
        """Whether the certified lower bound is above the claimed epsilon (evidence against the claim)."""
        return self.claimed_epsilon is not None and self.epsilon_lower_bound > self.claimed_epsilon

    @property
    def can_refute_claim(self) -> bool | None:
        """Whether the audit has the power to refute its claim: ``max_certifiable_epsilon >= REFUTATION_FACTOR *
        claimed_epsilon`` (``None`` without a claim). An audit that cannot is no evidence for the claim."""
        if self.claimed_epsilon is None:
            return None
        return bool(self.max_certifiable_epsilon >= REFUTATION_FACTOR * self.claimed_epsilon)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["exceeds_claim"] = self.exceeds_claim
        out["can_refute_claim"] = self.can_refute_claim
        return out


def _error_counts(s0: np.ndarray, s1: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each threshold t: false positives #(s0 > t) and false negatives #(s1 <= t)."""
    s0, s1 = np.sort(s0), np.sort(s1)
    fp = len(s0) - np.searchsorted(s0, thresholds, side="right")
    fn = np.searchsorted(s1, thresholds, side="right")
    return fp, fn


def _cp_upper(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    k = np.asarray(k)
    out = np.ones(k.shape, dtype=np.float64)
    inside = k < n
    out[inside] = beta_dist.ppf(1.0 - alpha / 2.0, k[inside] + 1, n - k[inside])
    return out


def _eps_from_upper_rates(fpr_u: np.ndarray, fnr_u: np.ndarray, delta: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(1.0 - delta - fnr_u > 0, np.log(np.maximum(1.0 - delta - fnr_u, 1e-300) / fpr_u), 0.0)
        b = np.where(1.0 - delta - fpr_u > 0, np.log(np.maximum(1.0 - delta - fpr_u, 1e-300) / fnr_u), 0.0)
    return np.maximum(np.maximum(a, b), 0.0)


def threshold_audit(scores_0: Any, scores_1: Any, *, delta: float = 0.0, alpha: float = 0.05,
                    selection_fraction: float = 0.5, max_thresholds: int = 2048, seed: int = 0,
                    claimed_epsilon: float | None = None) -> AuditResult:
    """Audit from attack scores on outputs of x_0 (``scores_0``) and x_1 (``scores_1``).

    The trials of each world are shuffled (``seed``) and split: on the first ``selection_fraction`` the threshold
    (among up to ``max_thresholds`` midpoints between consecutive pooled scores, evenly spaced in rank) and the
    direction that maximise the Clopper-Pearson bound are chosen; on the rest the bound is computed once for that
    single test.

    With a ``claimed_epsilon`` that the trial count cannot refute (``max_certifiable_epsilon < REFUTATION_FACTOR *
    claimed_epsilon``) a warning is logged: such an audit passes whatever the mechanism does.

    Returns:
        `AuditResult`.

    Raises:
        ValueError: with fewer than 4 trials per world, NaN scores or a selection fraction outside (0, 1).
    """
    delta, alpha = _check_delta(delta), _check_alpha(alpha)
    s0 = np.asarray(scores_0, dtype=np.float64).reshape(-1)
    s1 = np.asarray(scores_1, dtype=np.float64).reshape(-1)
    if len(s0) < 4 or len(s1) < 4:
        raise ValueError(f"need at least 4 trials per world, got {len(s0)} and {len(s1)}")
    if np.isnan(s0).any() or np.isnan(s1).any():
        raise ValueError("scores contain NaN")
    selection_fraction = _check_fraction(selection_fraction)
    rng = np.random.default_rng(seed)
    s0, s1 = rng.permutation(s0), rng.permutation(s1)
    k0, k1 = max(2, int(len(s0) * selection_fraction)), max(2, int(len(s1) * selection_fraction))
    sel0, ev0, sel1, ev1 = s0[:k0], s0[k0:], s1[:k1], s1[k1:]

    best = (-1.0, 0.0, 1)
    for direction in (1, -1):
        a0, a1 = direction * sel0, direction * sel1
        pooled = np.sort(np.concatenate([a0, a1]))
        mids = (pooled[:-1] + pooled[1:]) / 2  # a threshold between every two consecutive scores
        pick = np.unique(np.linspace(0, len(mids) - 1, min(len(mids), max_thresholds)).round().astype(np.int64))
        qs = np.unique(np.concatenate([mids[pick], mids[[int(np.argmin(np.abs(mids - np.median(pooled))))]]]))
        fp, fn = _error_counts(a0, a1, qs)
        eps = _eps_from_upper_rates(_cp_upper(fp, len(a0), alpha), _cp_upper(fn, len(a1), alpha), delta)
        i = int(np.argmax(eps))
        if eps[i] > best[0]:
            best = (float(eps[i]), float(qs[i]), direction)
    _, threshold, direction = best
    fp, fn = _error_counts(direction * ev0, direction * ev1, np.array([threshold]))
    fp, fn = int(fp[0]), int(fn[0])
    bound = epsilon_lower_bound(false_positives=fp, negatives=len(ev0), false_negatives=fn, positives=len(ev1),
                                delta=delta, alpha=alpha)
    perfect = epsilon_lower_bound(false_positives=0, negatives=len(ev0), false_negatives=0, positives=len(ev1),
                                  delta=delta, alpha=alpha)
    result = AuditResult(
        epsilon_lower_bound=float(bound),
        epsilon_point=float(epsilon_from_rates(fp / len(ev0), fn / len(ev1), delta=delta)),
        threshold=threshold, direction=direction, fpr=fp / len(ev0), fnr=fn / len(ev1),
        trials_per_world=int(min(len(ev0), len(ev1))), max_certifiable_epsilon=float(perfect), delta=delta,
        alpha=alpha, claimed_epsilon=None if claimed_epsilon is None else float(claimed_epsilon))
    if result.can_refute_claim is False:
        _warn_cannot_refute(result, selection_fraction)
    return result


def _warn_cannot_refute(result: AuditResult, selection_fraction: float) -> None:
    claim = result.claimed_epsilon
    needed = trials_needed(REFUTATION_FACTOR * claim, delta=result.delta, alpha=result.alpha,
                           selection_fraction=selection_fraction) if claim > 0 else None
    logger.warning(
        "audit with %d evaluation trials per world certifies at most epsilon = %.3g < %g x the claimed %.3g: it cannot "
        "refute the claim%s", result.trials_per_world, result.max_certifiable_epsilon, REFUTATION_FACTOR, claim,
        f" (needs num_trials >= {needed} per world)" if needed else "")


def audit_mechanism(mechanism: Callable[[int, int, torch.Generator], torch.Tensor], statistic: Callable, *,
                    num_trials: int, delta: float, claimed_epsilon: float | None = None, alpha: float = 0.05,
                    batch_size: int = 4096, seed: int = 0) -> AuditResult:
    """Audit any mechanism given as ``mechanism(world, n, generator) -> outputs`` (n outputs of world 0 or 1).

    ``statistic(outputs) -> (n,)`` scores. Runs ``num_trials`` per world in batches, then `threshold_audit`.
    """
    if int(num_trials) < 8:
        raise ValueError(f"num_trials must be >= 8, got num_trials={num_trials}")
    g = torch.Generator().manual_seed(seed)
    scores = []
    for world in (0, 1):
        out = []
        for start in range(0, num_trials, batch_size):
            n = min(batch_size, num_trials - start)
            out.append(torch.as_tensor(statistic(mechanism(world, n, g))).double().reshape(-1))
        scores.append(torch.cat(out).numpy())
    return threshold_audit(scores[0], scores[1], delta=delta, alpha=alpha, seed=seed,
                           claimed_epsilon=claimed_epsilon)

