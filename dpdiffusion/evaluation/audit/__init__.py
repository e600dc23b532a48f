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
most `max_certifiable_epsilon` (about ``log(n_eval / 3.7)`` with ``n_eval`` evaluation trials per world). An audit is
evidence for a claim only if it could have refuted it: every `AuditResult` carries ``max_certifiable_epsilon`` and
``can_refute_claim`` (``max_certifiable_epsilon >= REFUTATION_FACTOR * claimed_epsilon``, a factor of 2), a warning is
logged when it is false, and `trials_needed` gives the trial count a claim needs.

The pipeline-level audits (`audit_latent_release`, `audit_decoded_release`) build neighbours in the semantic
latent (`formal_neighbours`) or take image pairs, run ``DPDiffusionPipeline.apply_privacy_noise`` (and optionally
the decoder) many times and score each output with a linear statistic (`linear_statistic`), which for a Gaussian
mechanism with a known covariance is the likelihood-ratio (Neyman-Pearson optimal) test.

Layout: ``bounds`` (pure statistics), ``threshold`` (`threshold_audit`, `audit_mechanism`), ``pipeline`` (the
pipeline audits).
"""

from .bounds import (REFUTATION_FACTOR, clopper_pearson, epsilon_from_rates, epsilon_lower_bound, evaluation_trials,
                     largest_refutable_claim, max_certifiable_epsilon, trials_needed)
from .pipeline import audit_decoded_release, audit_latent_release, formal_neighbours, linear_statistic
from .threshold import AuditResult, audit_mechanism, threshold_audit

__all__ = [
    "AuditResult",
    "REFUTATION_FACTOR",
    "clopper_pearson",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "evaluation_trials",
    "max_certifiable_epsilon",
    "trials_needed",
    "largest_refutable_claim",
    "threshold_audit",
    "formal_neighbours",
    "linear_statistic",
    "audit_latent_release",
    "audit_decoded_release",
    "audit_mechanism",
]
