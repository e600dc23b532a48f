"""Utility of protected data: a classifier trained on protected images against the same recipe on clean images."""

import datasets
import evaluate
import numpy as np

from dpdiffusion.evaluation.utility import attribute_accuracies, utility_report

_DESCRIPTION = """
The data-sharing use case: a recipient trains a classifier on the PROTECTED training images and uses it on clean
images. For each (unprotected) attribute, its accuracy on clean test images is compared with the accuracy of the same
recipe trained on the clean training images: ratio = accuracy / clean_accuracy (the claim checked in the paper is a
ratio >= 0.9). Computed by `dpdiffusion.evaluation.utility.attribute_accuracies` and `utility_report`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[list[int]]`): 0/1 predictions on clean test images of the classifier trained
        on protected images, one value (one attribute) or one row of attributes per image.
    references (same shape): the true 0/1 labels.
    clean_predictions (same shape): the predictions of the classifier trained on clean images (required).
    names (`list[str]`, *optional*): the attribute of each column (default: label, or label_0, label_1, ...).
    attributes (`list[str]`, *optional*): the attributes reported (default: all names).
Returns:
    per_attribute ({name: {accuracy, clean_accuracy, ratio}}), mean_accuracy, mean_clean_accuracy, mean_ratio,
    min_ratio.
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation import metric_path
    >>> utility = evaluate.load(metric_path("utility_ratio"))
    >>> r = utility.compute(predictions=[1, 0, 1, 0], references=[1, 0, 0, 0], clean_predictions=[1, 0, 0, 0],
    ...                     names=["smiling"])
    >>> r["per_attribute"]["smiling"], r["min_ratio"]
    ({'accuracy': 0.75, 'clean_accuracy': 1.0, 'ratio': 0.75}, 0.75)
"""

_CITATION = ""


def _rows(values, name):
    v = np.asarray(values)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or not np.all((v == 0) | (v == 1)):
        raise ValueError(f"{name} must be 0/1 values, (N,) or (N, L), got shape {np.shape(values)}")
    return v


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class UtilityRatio(evaluate.Metric):
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

    def _compute(self, predictions, references, clean_predictions=None, names=None, attributes=None):
        if clean_predictions is None:
            raise ValueError("clean_predictions is required: the predictions of the classifier trained on clean "
                             "images, the reference of the ratio")
        p, y = _rows(predictions, "predictions"), _rows(references, "references")
        c = _rows(clean_predictions, "clean_predictions")
        if c.shape != p.shape:
            raise ValueError(f"clean_predictions must have the shape of predictions {p.shape}, got {c.shape}")
        if names is None:
            names = ["label"] if p.shape[1] == 1 else [f"label_{j}" for j in range(p.shape[1])]
        names = list(names)
        return utility_report(attribute_accuracies(p, y, names), attribute_accuracies(c, y, names),
                              None if attributes is None else list(attributes))
