"""Protected-attribute leakage: an attacker's accuracy with its Clopper-Pearson interval and the DP bound."""

import datasets
import evaluate

from dpdiffusion.evaluation.leakage import leakage_accuracy

_DESCRIPTION = """
Accuracy of an attacker predicting a binary protected attribute from protected images (train and test the attacker
on protected images), its 95% Clopper-Pearson interval, and the bound that (epsilon, delta)-DP under a relation in
which flipping the attribute is a neighbour puts on any attacker: max((e^eps + delta)/(1 + e^eps), prior terms).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): the attacker's 0/1 guesses.
    references (`list[int]`): the true 0/1 attribute.
    epsilon (`float`, *optional*): the claimed epsilon (no bound when omitted).
    delta (`float`, *optional*, defaults to 0): the claimed delta.
    alpha (`float`, *optional*, defaults to 0.05): 1 - confidence of the interval.
Returns:
    accuracy, ci_low, ci_high, n, prior, majority_baseline, bound, within_bound, exceeds_bound, implied_epsilon_lower.
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation.metrics import metric_path
    >>> leak = evaluate.load(metric_path("attribute_leakage"))
    >>> r = leak.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1], epsilon=1.0)
    >>> r["accuracy"], round(r["bound"], 4)
    (0.75, 0.7311)
"""

_CITATION = """
@inproceedings{kairouz2015composition, title={The composition theorem for differential privacy},
  author={Kairouz, Peter and Oh, Sewoong and Viswanath, Pramod}, booktitle={ICML}, year={2015}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AttributeLeakage(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, epsilon=None, delta=0.0, alpha=0.05):
        return leakage_accuracy(predictions, references, epsilon=epsilon, delta=delta, alpha=alpha)
