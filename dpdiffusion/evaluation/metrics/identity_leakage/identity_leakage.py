"""Identity leakage: top-1 re-identification of protected images against a gallery."""

import datasets
import evaluate

from dpdiffusion.evaluation.identity import chance_top1, reidentification_top1

_DESCRIPTION = """
Top-1 re-identification: each probe (a feature vector of a protected image) is matched to the most similar gallery
feature (cosine); the score is the rate at which the match shows the same identity. Chance level is reported too.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): probe features (one vector per protected image).
    references (`list[int]`): the probes' identities.
    gallery_features (`list[list[float]]`): gallery features.
    gallery_ids (`list[int]`): gallery identities.
    exclude_same_index (`bool`, *optional*): never match probe i to gallery item i (gallery = the probes' originals).
    metric (`str`, *optional*): "cosine" (default) or "euclidean".
Returns:
    top1, chance.
Examples:
    >>> import evaluate
    >>> from dpdiffusion.evaluation.metrics import metric_path
    >>> reid = evaluate.load(metric_path("identity_leakage"))
    >>> reid.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[0, 1],
    ...              gallery_features=[[0.9, 0.1], [0.1, 0.9]], gallery_ids=[0, 1])
    {'top1': 1.0, 'chance': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IdentityLeakage(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, gallery_features=None, gallery_ids=None, exclude_same_index=False,
                 metric="cosine"):
        if gallery_features is None or gallery_ids is None:
            raise ValueError("gallery_features and gallery_ids are required")
        return {"top1": reidentification_top1(predictions, references, gallery_features, gallery_ids,
                                              exclude_same_index=exclude_same_index, metric=metric),
                "chance": chance_top1(references, gallery_ids, exclude_same_index=exclude_same_index)}
