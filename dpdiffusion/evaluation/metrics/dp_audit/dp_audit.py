"""Empirical privacy audit: a 95% lower confidence bound on epsilon from attack scores on two neighbours."""

import datasets
import evaluate
import numpy as np

from dpdiffusion.evaluation.audit import threshold_audit

_DESCRIPTION = """
Given attack scores on many outputs of a mechanism run on two neighbouring inputs x_0 and x_1, choose a threshold test
on one half of the trials and bound epsilon on the other: eps >= max(log((1 - delta - FNR)/FPR),
log((1 - delta - FPR)/FNR)) with FPR and FNR replaced by the upper ends of their 95% Clopper-Pearson intervals
(Jagielski, Ullman & Oprea 2020). A bound above the claimed epsilon is evidence against the claim.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): attack scores, one per trial.
    references (`list[int]`): the world of each trial (0: x_0, 1: x_1).
    delta (`float`, *optional*, defaults to 0): the delta of the claim.
    claimed_epsilon (`float`, *optional*): the epsilon claimed (sets exceeds_claim).
    alpha (`float`, *optional*, defaults to 0.05), seed (`int`, *optional*, defaults to 0).
Returns:
    epsilon_lower_bound, epsilon_point, threshold, direction, fpr, fnr, trials_per_world, max_certifiable_epsilon
    (the bound a perfect attack would reach with these trials), delta, alpha, claimed_epsilon, exceeds_claim,
    can_refute_claim (max_certifiable_epsilon >= 2 x claimed_epsilon: only then can the audit fail).
Examples:
    >>> import evaluate, numpy as np
    >>> from dpdiffusion.evaluation.metrics import metric_path
    >>> audit = evaluate.load(metric_path("dp_audit"))
    >>> rng = np.random.default_rng(0)
    >>> s = np.concatenate([rng.normal(0, 1, 2000), rng.normal(1, 1, 2000)])
    >>> w = [0] * 2000 + [1] * 2000
    >>> r = audit.compute(predictions=s, references=w, delta=1e-5, claimed_epsilon=10.0)
    >>> 0 < r["epsilon_lower_bound"] < 10, r["exceeds_claim"], r["can_refute_claim"]  # 1000 trials certify <= 5.6
    (True, False, False)
"""

_CITATION = """
@inproceedings{jagielski2020auditing, title={Auditing differentially private machine learning: How private is
  private {SGD}?}, author={Jagielski, Matthew and Ullman, Jonathan and Oprea, Alina}, booktitle={NeurIPS}, year={2020}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DpAudit(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, delta=0.0, claimed_epsilon=None, alpha=0.05, seed=0):
        s = np.asarray(predictions, dtype=np.float64)
        w = np.asarray(references)
        if set(np.unique(w).tolist()) - {0, 1}:
            raise ValueError("references must be 0 (trial on x_0) or 1 (trial on x_1)")
        return threshold_audit(s[w == 0], s[w == 1], delta=delta, alpha=alpha, seed=seed,
                               claimed_epsilon=claimed_epsilon).to_dict()
