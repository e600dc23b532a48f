"""Utility of protected data: accuracy on clean test images of a classifier trained on protected images."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy on clean test images of a classifier trained on protected images (the data-sharing use case), for one
unprotected attribute, and its ratio to the accuracy of the same recipe trained on clean images.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): 0/1 predictions on clean test images of the classifier trained on protected images.
    references (`list[int]`): the true 0/1 labels.
    clean_predictions (`list[int]`, *optional*): predictions of the classifier trained on clean images.
Returns:
    accuracy, and with clean_predictions also clean_accuracy and ratio (accuracy / clean_accuracy).
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation.metrics import metric_path
    >>> util = evaluate.load(metric_path("attribute_utility"))
    >>> util.compute(predictions=[1, 0, 1, 0], references=[1, 0, 0, 0], clean_predictions=[1, 0, 0, 0])
    {'accuracy': 0.75, 'clean_accuracy': 1.0, 'ratio': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AttributeUtility(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, clean_predictions=None):
        y = np.asarray(references)
        out = {"accuracy": float((np.asarray(predictions) == y).mean())}
        if clean_predictions is not None:
            out["clean_accuracy"] = float((np.asarray(clean_predictions) == y).mean())
            out["ratio"] = out["accuracy"] / out["clean_accuracy"] if out["clean_accuracy"] > 0 else float("nan")
        return out
