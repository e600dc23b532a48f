"""Empirical privacy audit: a 95 % lower confidence bound on epsilon from attack scores on two neighbours."""

import datasets
import evaluate
import numpy as np

from dpdiffusion.evaluation.audit import threshold_audit

_DESCRIPTION = """
Given attack scores on outputs of a mechanism run many times on each of two neighbouring inputs x_0 and x_1, a
threshold test is chosen on one split of the trials and epsilon is bounded once on the other:

    eps >= max( log((1 - delta - FNR) / FPR),  log((1 - delta - FPR) / FNR) )

with FPR and FNR replaced by the upper ends of their 95 % Clopper-Pearson intervals (Kairouz, Oh & Viswanath 2015;
Jagielski, Ullman & Oprea 2020). A bound above the claimed epsilon is evidence against the claim. The trial count
limits what any attack can show: `max_certifiable_epsilon` is the bound of a perfect attack, and `can_refute_claim`
says whether it is at least twice the claim (only then could the audit have failed). Computed by
`dpdiffusion.evaluation.audit.threshold_audit`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): attack scores, one per trial.
    references (`list[int]`): the world of each trial (0: x_0, 1: x_1), at least 4 trials of each.
    delta (`float`, *optional*, defaults to 0): the delta of the claim, in [0, 1).
    claimed_epsilon (`float`, *optional*): the epsilon claimed (sets exceeds_claim and can_refute_claim).
    alpha (`float`, *optional*, defaults to 0.05): 1 - confidence.
    selection_fraction (`float`, *optional*, defaults to 0.5): share of the trials that choose the threshold.
    seed (`int`, *optional*, defaults to 0): seed of the split.
Returns:
    epsilon_lower_bound, epsilon_point, threshold, direction, fpr, fnr, trials_per_world, max_certifiable_epsilon,
    delta, alpha, claimed_epsilon, exceeds_claim, can_refute_claim.
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation import metric_path
    >>> audit = evaluate.load(metric_path("dp_audit"))
    >>> r = audit.compute(predictions=[0.0] * 100 + [1.0] * 100, references=[0] * 100 + [1] * 100, delta=1e-5,
    ...                   claimed_epsilon=1.0)
    >>> round(r["epsilon_lower_bound"], 4), r["exceeds_claim"], r["can_refute_claim"]   # a perfect attack
    (2.5696, True, True)
"""

_CITATION = """
@inproceedings{jagielski2020auditing,
  title={Auditing differentially private machine learning: How private is private {SGD}?},
  author={Jagielski, Matthew and Ullman, Jonathan and Oprea, Alina},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DpAudit(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("int64")}),
            reference_urls=["https://arxiv.org/abs/2006.07709"],
        )

    def _compute(self, predictions, references, delta=0.0, claimed_epsilon=None, alpha=0.05,
                 selection_fraction=0.5, seed=0):
        s = np.asarray(predictions, dtype=np.float64)
        w = np.asarray(references)
        if not np.all((w == 0) | (w == 1)):
            raise ValueError("references must be 0 (a trial on x_0) or 1 (a trial on x_1)")
        return threshold_audit(s[w == 0], s[w == 1], delta=delta, alpha=alpha, seed=seed,
                               selection_fraction=selection_fraction, claimed_epsilon=claimed_epsilon).to_dict()
