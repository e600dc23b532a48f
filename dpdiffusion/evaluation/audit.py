r"""Empirical privacy audits: a lower confidence bound on epsilon from a distinguishing attack.

**The test.** A mechanism M is run ``n`` times on each of two neighbouring inputs x_0 and x_1 (the neighbouring
relation is the one the mechanism's guarantee is stated for). An attack maps each output to a score ``s``; a
threshold test says "x_1" when ``s > t``. With FPR = P[s > t | x_0] and FNR = P[s <= t | x_1], (epsilon, delta)-DP
implies (Kairouz, Oh & Viswanath 2015, Theorem 2.1; the form used by Jagielski, Ullman & Oprea 2020, "Auditing
differentially private machine learning", NeurIPS, Section 3)

    1 - FNR <= e^eps FPR + delta      and      1 - FPR <= e^eps FNR + delta,

so  eps >= max( log((1 - delta - FNR) / FPR), log((1 - delta - FPR) / FNR) ).

**Confidence.** FPR and FNR are replaced by the upper ends of their two-sided 95 % Clopper-Pearson intervals
(`clopper_pearson`), each of which fails with probability at most 2.5 %; by a union bound the resulting
``epsilon_lower_bound`` holds with probability at least 95 %. The threshold and the direction of the test are chosen
on a *selection* split of the trials and the bound is computed once, on the disjoint *evaluation* split, so the
search over thresholds does not inflate the bound (`threshold_audit`).

**Reading it.** For a mechanism that satisfies its claim, ``epsilon_lower_bound <= epsilon`` with probability at
least 95 % for every attack; a larger value is evidence that the claim (or its implementation) is wrong. The bound is
only as tight as the attack and the number of trials: with ``n`` trials per world even a perfect attack certifies at
most about ``log(n / 3.7)``.

The pipeline-level audits (`audit_latent_release`, `audit_decoded_release`) build neighbours in the semantic
latent (`formal_neighbours`) or take image pairs, run ``DPDiffusionPipeline.apply_privacy_noise`` (and optionally
the decoder) many times and score each output with a linear statistic (`linear_statistic`), which for a Gaussian
mechanism with a known covariance is the likelihood-ratio (Neyman-Pearson optimal) test.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy.stats import beta as beta_dist

logger = logging.getLogger(__name__)

__all__ = [
    "AuditResult",
    "clopper_pearson",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "threshold_audit",
    "formal_neighbours",
    "linear_statistic",
    "audit_latent_release",
    "audit_decoded_release",
    "audit_mechanism",
]


# ---------------------------------------------------------------------------------------------------------------
# Pure statistics
# ---------------------------------------------------------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got alpha={alpha!r}")
    return float(alpha)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got delta={delta!r}")
    return float(delta)


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
        max_certifiable_epsilon (`float`): the bound a perfect attack would reach with this many trials.
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

    def to_dict(self) -> dict:
        out = asdict(self)
        out["exceeds_claim"] = self.exceeds_claim
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
    if not 0.0 < selection_fraction < 1.0:
        raise ValueError(f"selection_fraction must be in (0, 1), got selection_fraction={selection_fraction}")
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
    return AuditResult(
        epsilon_lower_bound=float(bound),
        epsilon_point=float(epsilon_from_rates(fp / len(ev0), fn / len(ev1), delta=delta)),
        threshold=threshold, direction=direction, fpr=fp / len(ev0), fnr=fn / len(ev1),
        trials_per_world=int(min(len(ev0), len(ev1))), max_certifiable_epsilon=float(perfect), delta=delta,
        alpha=alpha, claimed_epsilon=None if claimed_epsilon is None else float(claimed_epsilon))


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


# ---------------------------------------------------------------------------------------------------------------
# Audits of DPDiffusionPipeline
# ---------------------------------------------------------------------------------------------------------------


def formal_neighbours(pipe, z: torch.Tensor, *, attributes: Sequence[str], target: str | torch.Tensor = "worst_case"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two attribute-neighbours in the semantic latent: the same residual, different protected coordinates.

    Args:
        pipe: a ``DPDiffusionPipeline``.
        z (`torch.Tensor`): ``(d,)`` or ``(1, d)`` latent whose residual both neighbours share.
        attributes (`Sequence[str]`): the protected attributes.
        target: ``"worst_case"`` (coordinates at ``-C`` and ``+C``: the largest move the clip bounds allow) or a
            tensor ``(k,)`` of protected coordinates for the second neighbour (the first keeps ``z``'s own), e.g.
            the coordinates of the counterfactual image's latent.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: ``z_0, z_1`` of shape ``(1, d)`` each.
    """
    dirs = pipe.attribute_directions
    z = z.reshape(1, -1)
    a, r = dirs.project(z, attributes=list(attributes))
    if isinstance(target, str):
        if target != "worst_case":
            raise ValueError(f"target must be 'worst_case' or a tensor of coordinates, got target={target!r}")
        bounds = dirs.clip_bound_tensor(list(attributes)).to(z)
        a0, a1 = -bounds.reshape(1, -1), bounds.reshape(1, -1)
    else:
        a0, a1 = a, torch.as_tensor(target).to(z).reshape(1, -1)
    return dirs.compose(a0, r, attributes=list(attributes)), dirs.compose(a1, r, attributes=list(attributes))


def _noise_precision(pipe, report, attributes) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> Sigma^+ v for the release's noise covariance (public: directions and sigmas from the report)."""
    basis = pipe.attribute_directions.basis(list(attributes)).double()  # (d, k)
    inv_var = torch.tensor([1.0 / report.sigmas[a] ** 2 for a in attributes], dtype=torch.float64)
    inv_res = 0.0 if not report.residual_sigma else 1.0 / report.residual_sigma**2

    def apply(v: torch.Tensor) -> torch.Tensor:
        v = v.double().reshape(-1)
        coords = basis.T @ v
        return basis @ (inv_var * coords) + inv_res * (v - basis @ coords)

    return apply


def _precision_for(statistic: str, pipe, report, attributes) -> Callable | None:
    if statistic == "likelihood_ratio":
        return _noise_precision(pipe, report, attributes)
    if statistic == "residual":
        basis = pipe.attribute_directions.basis(list(attributes)).double()  # (d, k)
        return lambda v: v.double().reshape(-1) - basis @ (basis.T @ v.double().reshape(-1))
    if statistic == "projection":
        return None
    raise ValueError(f"statistic must be 'likelihood_ratio', 'residual' or 'projection', got statistic={statistic!r}")


def linear_statistic(mean_0: torch.Tensor, mean_1: torch.Tensor, *, precision: Callable | None = None
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear test statistic ``s(y) = (y - (m0 + m1) / 2) . W (m1 - m0)``.

    With ``precision`` = the inverse noise covariance ``W`` this is the log likelihood ratio of two Gaussians with
    that covariance (the Neyman-Pearson optimal test); without it, the projection on the mean difference.
    """
    m0, m1 = mean_0.double().reshape(-1), mean_1.double().reshape(-1)
    diff = m1 - m0
    w = precision(diff) if precision is not None else diff
    mid = (m0 + m1) / 2

    def statistic(y: torch.Tensor) -> torch.Tensor:
        return (y.double().reshape(len(y), -1) - mid) @ w

    return statistic


def _release_latents(pipe, z: torch.Tensor, n: int, *, attributes, epsilon, delta, scope, generator,
                     post_processing: str = "none", batch_size: int = 8192) -> tuple[torch.Tensor, Any]:
    outs, report = [], None
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        zt, report = pipe.apply_privacy_noise(z.reshape(1, -1).expand(m, -1).clone(), attributes=list(attributes),
                                              epsilon=epsilon, delta=delta, scope=scope, generator=generator,
                                              post_processing=post_processing)
        outs.append(zt)
    return torch.cat(outs), report


@torch.no_grad()
def audit_latent_release(pipe, z_0: torch.Tensor, z_1: torch.Tensor, *, attributes: Sequence[str], epsilon: float,
                         delta: float = 1e-5, scope: str = "attributes", num_trials: int = 20000,
                         statistic: str = "likelihood_ratio", post_processing: str = "none", alpha: float = 0.05,
                         seed: int = 0) -> AuditResult:
    """Audit ``apply_privacy_noise`` on the pair of latents ``(z_0, z_1)`` (the released latent ``z~`` is observed).

    The attack's means are estimated on ``num_trials // 4`` extra trials per world; the scores of ``num_trials``
    fresh trials per world go to `threshold_audit`.

    Args:
        statistic (`str`): ``"likelihood_ratio"`` (whitened by the release's public noise covariance: the optimal
            test when the pair differs only where noise is added), ``"residual"`` (projection of the output on the
            part of the mean difference outside the protected span: a deterministic shift of the residual, which
            ``scope="attributes"`` does not noise and the guarantee does not cover for image pairs) or
            ``"projection"`` (on the raw mean difference).
        post_processing (`str`): passed to ``apply_privacy_noise``. ``"none"`` (default) audits the mechanism's raw
            Gaussian output, of which the released ``"clip"`` output is post-processing. With ``"clip"`` the clamp
            puts point masses at ``+-C_i``; the residual, recomputed from each neighbour's latent in floating
            point, then differs by rounding (about 1e-7) between the two worlds, and an exact-float threshold can
            tell the point masses apart: a floating-point side channel of publishing the latent at full precision
            (the class of Mironov 2012), outside the model of the guarantee, which the experiments report
            separately. The decoded, 8-bit image release is audited by `audit_decoded_release`.
    """
    g = torch.Generator().manual_seed(seed)
    kw = dict(attributes=attributes, epsilon=epsilon, delta=delta, scope=scope, generator=g,
              post_processing=post_processing)
    fit = max(64, num_trials // 4)
    y0, report = _release_latents(pipe, z_0, fit, **kw)
    y1, _ = _release_latents(pipe, z_1, fit, **kw)
    stat = linear_statistic(y0.mean(0), y1.mean(0), precision=_precision_for(statistic, pipe, report, attributes))
    s0 = stat(_release_latents(pipe, z_0, num_trials, **kw)[0])
    s1 = stat(_release_latents(pipe, z_1, num_trials, **kw)[0])
    return threshold_audit(s0.numpy(), s1.numpy(), delta=delta, alpha=alpha, seed=seed,
                           claimed_epsilon=report.epsilon)


@torch.no_grad()
def audit_decoded_release(pipe, z_0: torch.Tensor, z_1: torch.Tensor, *, attributes: Sequence[str], epsilon: float,
                          delta: float = 1e-5, scope: str = "attributes", num_trials: int = 200,
                          num_inference_steps: int = 10, batch_size: int = 100, statistic: str = "likelihood_ratio",
                          alpha: float = 0.05, seed: int = 0, progress: bool = False) -> AuditResult:
    """Audit the whole release, images included: ``z~ -> decode (random x_T) -> re-encode -> statistic``.

    The attack is the latent attack of `audit_latent_release` (means estimated in the latent without decoding)
    applied to the re-encoded released image. By post-processing the bound can only be lower than the latent one;
    it checks that decoding adds no path around the mechanism for attribute-neighbours.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    kw = dict(attributes=attributes, epsilon=epsilon, delta=delta, scope=scope, generator=g)
    fit = 4096
    y0, report = _release_latents(pipe, z_0, fit, **kw)
    y1, _ = _release_latents(pipe, z_1, fit, **kw)
    stat = linear_statistic(y0.mean(0), y1.mean(0), precision=_precision_for(statistic, pipe, report, attributes))
    scores = []
    bar = tqdm(total=2 * num_trials, desc=f"audit (decoded) eps={epsilon:g}", disable=not progress, leave=False)
    for z in (z_0, z_1):
        out = []
        for start in range(0, num_trials, batch_size):
            m = min(batch_size, num_trials - start)
            zt, _ = pipe.apply_privacy_noise(z.reshape(1, -1).expand(m, -1).clone(), generator=g,
                                             attributes=list(attributes), epsilon=epsilon, delta=delta, scope=scope)
            x_t = torch.randn((m, 3, pipe.image_size, pipe.image_size), generator=g).to(pipe.device, pipe.unet.dtype)
            img = pipe.decode(zt, stochastic_code=x_t, num_inference_steps=num_inference_steps, output_type="pt",
                              progress=False)
            img = torch.round(img * 255) / 255  # the released 8-bit image
            out.append(stat(pipe.encode_tensor(img * 2 - 1).cpu()))
            bar.update(m)
        scores.append(torch.cat(out).numpy())
    bar.close()
    return threshold_audit(scores[0], scores[1], delta=delta, alpha=alpha, seed=seed, claimed_epsilon=report.epsilon)
