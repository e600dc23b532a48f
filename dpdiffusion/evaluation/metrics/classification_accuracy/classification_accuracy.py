"""Accuracy of an image classifier: top-1 for class ids, the mean per-label accuracy for multi-label 0/1 rows."""

import datasets
import evaluate

from dpdiffusion.evaluation.unlearning_metrics import prediction_accuracy

_DESCRIPTION = """
The fraction of correct predictions: top-1 accuracy for class ids, or for multi-label classifiers (one 0/1 row of
labels per image) the mean over images and labels of the per-label accuracy. The metric dpdiffusion gives
`evaluate.evaluator("image-classification")` for an unlearned classifier's utility on a `datasets` split, loaded by
path so that nothing is fetched from the Hub. Computed by
`dpdiffusion.evaluation.unlearning_metrics.prediction_accuracy`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[list[int]]`): predicted class ids, or one 0/1 row of labels per image.
    references (same shape): the true class ids or 0/1 rows.
Returns:
    accuracy (`float`): in [0, 1].
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation import metric_path
    >>> accuracy = evaluate.load(metric_path("classification_accuracy"))
    >>> accuracy.compute(predictions=[2, 0, 1, 1], references=[2, 0, 0, 1])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                   "references": datasets.Sequence(datasets.Value("int64"))}),
            ],
        )

    def _compute(self, predictions, references):
        return {"accuracy": prediction_accuracy(predictions, references)}
