"""Membership-inference AUC: how well a score separates training members from held-out non-members."""

import datasets
import evaluate

from dpdiffusion.evaluation.probes import roc_auc

_DESCRIPTION = """
ROC AUC of a membership-inference score (for the loss attack of Yeom et al. 2018: minus the model's loss on each
example), with members the examples the model may have been trained on (for unlearning: the original images of the
revised examples) and non-members held-out examples of the same distribution. 0.5 means no membership signal;
compare an unlearned model's value with the model retrained without the members. Ties count one half (the
Mann-Whitney statistic, exact); computed by `dpdiffusion.evaluation.probes.roc_auc`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): membership scores, higher meaning "member" (e.g. minus the per-example loss).
    references (`list[int]`): 1 for a member, 0 for a non-member (both must occur).
Returns:
    mia_auc (`float`): the area under the ROC curve, in [0, 1].
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation import metric_path
    >>> mia = evaluate.load(metric_path("mia_auc"))
    >>> mia.compute(predictions=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1])
    {'mia_auc': 0.75}
"""

_CITATION = """
@inproceedings{yeom2018privacy,
  title={Privacy risk in machine learning: Analyzing the connection to overfitting},
  author={Yeom, Samuel and Giacomelli, Irene and Fredrikson, Matt and Jha, Somesh},
  booktitle={IEEE Computer Security Foundations Symposium (CSF)},
  year={2018}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MiaAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("int64")}),
            reference_urls=["https://arxiv.org/abs/1709.01604"],
        )

    def _compute(self, predictions, references):
        return {"mia_auc": roc_auc(predictions, references)}
