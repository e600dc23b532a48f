"""Unlearning efficacy: the share of the original -> retrained accuracy gap that an unlearning method restores."""

import datasets
import evaluate
import numpy as np

from dpdiffusion.evaluation.unlearning_metrics import prediction_accuracy
from dpdiffusion.evaluation.unlearning_shift import gap_restored

_DESCRIPTION = """
Measured on a split where what was unlearned matters (in dpdiffusion: faces whose skin tone is the opposite of the
label, so a shortcut through the protected attribute is always wrong): the original model loses accuracy there, the
model retrained on the revised data loses less, and an unlearning method is judged by the share of that gap it
restores,

    gap_restored = (acc_method - acc_original) / (acc_retrained - acc_original),

0 no better than the original model, 1 as good as retraining (NaN when there is no gap). With several retrained
models (different seeds), acc_retrained is their mean. Accuracies are top-1 for class ids and the mean per-label
accuracy for 0/1 rows (`dpdiffusion.evaluation.unlearning_metrics.prediction_accuracy`); the share is
`dpdiffusion.evaluation.unlearning_shift.gap_restored`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[list[int]]`): the unlearned model's predictions on the split (class ids, or
        one 0/1 row of labels per image).
    references (same shape): the true labels.
    original_predictions (same shape): the original model's predictions (required).
    retrained_predictions (same shape, or a list of such arrays, one per retraining seed): the retrained model's
        predictions (required).
Returns:
    gap_restored, accuracy, original_accuracy, retrained_accuracy (mean over seeds), retrained_accuracies.
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation import metric_path
    >>> gap = evaluate.load(metric_path("gap_restored"))
    >>> r = gap.compute(predictions=[1, 1, 0, 0], references=[1, 1, 1, 1], original_predictions=[1, 0, 0, 0],
    ...                 retrained_predictions=[1, 1, 1, 0])
    >>> r["gap_restored"], r["accuracy"], r["original_accuracy"], r["retrained_accuracy"]
    (0.5, 0.5, 0.25, 0.75)
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GapRestored(evaluate.Metric):
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

    def _compute(self, predictions, references, original_predictions=None, retrained_predictions=None):
        if original_predictions is None or retrained_predictions is None:
            raise ValueError("original_predictions and retrained_predictions are both required")
        p = np.asarray(predictions)
        retrained = np.asarray(retrained_predictions)
        if retrained.ndim == p.ndim:
            retrained = retrained[None]
        elif retrained.ndim != p.ndim + 1 or len(retrained) < 1:
            raise ValueError(f"retrained_predictions must have the shape of predictions {p.shape} or be a list of "
                             f"such arrays (one per retraining seed), got shape {retrained.shape}")
        accuracy = prediction_accuracy(p, references)
        original = prediction_accuracy(original_predictions, references)
        per_seed = [prediction_accuracy(r, references) for r in retrained]
        reference = float(np.mean(per_seed))
        return {"gap_restored": gap_restored(accuracy, original=original, retrained=reference),
                "accuracy": accuracy, "original_accuracy": original, "retrained_accuracy": reference,
                "retrained_accuracies": per_seed}
