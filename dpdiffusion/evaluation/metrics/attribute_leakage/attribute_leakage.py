"""Protected-attribute leakage: an attacker's accuracy, its Clopper-Pearson interval and the (epsilon, delta)-DP bound."""

import datasets
import evaluate
import numpy as np

from dpdiffusion.evaluation.leakage import leakage_accuracy

_DESCRIPTION = """
Accuracy of an attacker that guesses a binary protected attribute from released images (trained and tested on
protected images of other people), with its two-sided Clopper-Pearson interval, compared with the bound that an
(epsilon, delta)-DP release puts on ANY attacker when flipping the attribute is a neighbour:

    max( (e^eps + delta) / (1 + e^eps),  p + (1 - p) delta,  (1 - p) + p delta )     (p: the attribute's prior),

73.1 % at epsilon = 1 for a balanced attribute. `within_bound` says the interval reaches the bound;
`exceeds_bound` that the whole interval lies above it (leakage beyond what the claim allows, e.g. around the
mechanism through what it leaves untouched). Computed by `dpdiffusion.evaluation.leakage.leakage_accuracy`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): the attacker's 0/1 guesses.
    references (`list[int]`): the true 0/1 attribute.
    epsilon (`float`, *optional*): the claimed epsilon, >= 0 (inf allowed); no bound when omitted.
    delta (`float`, *optional*, defaults to 0): the claimed delta.
    alpha (`float`, *optional*, defaults to 0.05): 1 - confidence of the interval.
Returns:
    accuracy, ci_low, ci_high, n, prior (rate of the positive class), majority_baseline, bound, within_bound,
    exceeds_bound (None without epsilon), implied_epsilon_lower (the smallest epsilon whose balanced-prior bound
    allows the interval's lower end).
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation import metric_path
    >>> leakage = evaluate.load(metric_path("attribute_leakage"))
    >>> r = leakage.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1], epsilon=1.0)
    >>> r["accuracy"], round(r["bound"], 4), r["within_bound"]
    (0.75, 0.7311, True)
"""

_CITATION = """
@inproceedings{kairouz2015composition,
  title={The composition theorem for differential privacy},
  author={Kairouz, Peter and Oh, Sewoong and Viswanath, Pramod},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2015}
}
"""


def _binary(values, name):
    v = np.asarray(values)
    if v.size and not np.all((v == 0) | (v == 1)):
        raise ValueError(f"{name} must be 0/1, got values {sorted(set(np.unique(v).tolist()) - {0, 1})[:5]}")
    return v


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AttributeLeakage(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
            reference_urls=["https://proceedings.mlr.press/v37/kairouz15.html"],
        )

    def _compute(self, predictions, references, epsilon=None, delta=0.0, alpha=0.05):
        return leakage_accuracy(_binary(predictions, "predictions"), _binary(references, "references"),
                                epsilon=epsilon, delta=delta, alpha=alpha)
