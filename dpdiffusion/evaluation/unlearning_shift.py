"""Unlearning measured where it matters: a test split on which the unlearned shortcut is reversed.

On an unbiased test set an original model that leans on a spurious feature (in the benchmark: `dark_skin`, which
agrees with `smiling` on 90 % of the original training images) is already close to the retrained one, so the
metrics barely separate the methods. On a *reversed-correlation* split, where the spurious attribute is the
opposite of the label for every face, the shortcut is always wrong: the original model loses accuracy there, the
retrained model (trained on data where the revised rows carry no skin-tone signal) loses less, and an unlearning
method is judged by the share of that gap it restores:

    gap_restored = (acc_method - acc_original) / (acc_retrained - acc_original)      (reversed split)

0 is no better than the original model, 1 is as good as retraining. Retraining itself is noisy (initialisation and
data order): several retraining seeds give the natural noise floor, `acc_retrained` is their mean, and a method's
agreement with retraining is compared with the mean pairwise agreement between the retrained models. The `retrain`
row of `compare_on_reversed_split` is that mean, so retraining restores exactly 100 % by definition; how far the
seeds fall on either side of it (`reference["gap_restored_seeds"]`, each seed's share of the gap measured against
the mean) is the spread, reported separately: a method inside it is as close to retraining as retraining is to
itself.

The split is rendered exactly (`reversed_correlation_split`): SynthFaces draws fresh face parameters, then
`counterfactual_params(params, spurious, value=~params[label])` sets the spurious attribute to the opposite of the
label and every other parameter is kept, so the faces differ from an ordinary test draw only in that attribute
(the same counterfactual renderer the revision uses).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .metrics import load_metric
from .unlearning_metrics import _model, accuracy, membership_inference, prediction_accuracy, predictions

__all__ = [
    "reversed_correlation_split",
    "gap_restored",
    "label_accuracy",
    "retrain_agreement_floor",
    "compare_on_reversed_split",
    "SHIFT_COLUMNS",
]


def reversed_correlation_split(
    num_images: int,
    *,
    spurious: str = "dark_skin",
    label: str = "smiling",
    label_names: Sequence[str] = ("smiling", "eyeglasses", "wearing_hat"),
    image_size: int = 32,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """SynthFaces whose `spurious` attribute is the opposite of `label` on every face, rendered exactly.

    Fresh parameters from `sample_face_params(num_images, seed=seed)`; then `counterfactual_params` sets
    `spurious = not label` for each face, leaving every other parameter (identity, pose, colours, the label itself)
    unchanged, and `render_faces` draws them. A model that predicts `label` from `spurious` is wrong on every image.

    Args:
        num_images (`int`): number of faces, >= 2.
        spurious (`str`): the SynthFaces attribute that was correlated with `label` in training.
        label (`str`): the label it was correlated with; must differ from `spurious`.
        label_names (`Sequence[str]`): the classifier's outputs, in order (the columns of the returned labels).
        image_size (`int`): image side in pixels, >= 16.
        seed (`int`): seed of the face parameters (use one that the training data did not use).

    Returns:
        `(images, labels, params)`: uint8 `(N, H, W, 3)`, float32 `(N, len(label_names))` and the parameters.

    Raises:
        ValueError: if `num_images` < 2, `spurious == label`, or a name is not a SynthFaces attribute.
    """
    from ..data.synthfaces import SYNTHFACES_ATTRIBUTES, counterfactual_params, render_faces, sample_face_params

    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 2:
        raise ValueError(f"num_images must be an integer >= 2, got num_images={num_images!r}")
    for name, value in [("spurious", spurious), ("label", label), *(("label_names", n) for n in label_names)]:
        if value not in SYNTHFACES_ATTRIBUTES:
            raise ValueError(f"{name} must be one of {list(SYNTHFACES_ATTRIBUTES)}, got {name}={value!r}")
    if spurious == label:
        raise ValueError(f"spurious and label must differ, got spurious=label={label!r}")
    params = sample_face_params(int(num_images), seed=seed)
    params = counterfactual_params(params, spurious, value=~np.asarray(params[label], dtype=bool))
    images = render_faces(params, image_size=image_size)
    labels = np.stack([params[a] for a in label_names], axis=1).astype(np.float32)
    return images, labels, params


def gap_restored(accuracy_method: float, *, original: float, retrained: float) -> float:
    """Share of the original -> retrained accuracy gap a method restores: `(acc - original) / (retrained - original)`.

    >>> round(gap_restored(0.85, original=0.75, retrained=0.95), 6)
    0.5

    Returns `nan` when the gap is 0 (nothing to restore). Values above 1 overshoot retraining; below 0, the method
    made things worse.
    """
    gap = float(retrained) - float(original)
    if gap == 0.0:
        return math.nan
    return (float(accuracy_method) - float(original)) / gap


def _column_accuracy(pred: torch.Tensor, labels: Any, column: int) -> float:
    y = torch.as_tensor(np.asarray(labels))
    if y.ndim != 2 or not 0 <= int(column) < y.shape[1]:
        raise ValueError(f"column must be in [0, {y.shape[1] - 1 if y.ndim == 2 else 0}] for multi-label labels of "
                         f"shape {tuple(y.shape)}, got column={column}")
    return prediction_accuracy(np.asarray(pred[:, int(column)]).astype(bool), (y[:, int(column)] > 0.5).numpy())


def _reversed_gap(pred: torch.Tensor, original_pred: torch.Tensor, retrained_preds: Sequence[torch.Tensor],
                  labels: Any, column: int) -> dict:
    """One model's accuracy on output ``column`` and its share of the gap, through the ``gap_restored`` evaluate
    module (`prediction_accuracy`, `gap_restored`)."""
    def col(p):
        return np.asarray(p[:, int(column)]).astype(np.int64)

    return load_metric("gap_restored").compute(
        predictions=col(pred), references=(np.asarray(labels)[:, int(column)] > 0.5).astype(np.int64),
        original_predictions=col(original_pred), retrained_predictions=[col(p) for p in retrained_preds])


def _agreement(pa: torch.Tensor, pb: torch.Tensor) -> float:
    return float((pa == pb).float().mean())


def _pairwise_floor(preds: Sequence[torch.Tensor]) -> float:
    if len(preds) < 2:
        raise ValueError(f"retrained must hold >= 2 models (different seeds), got {len(preds)}")
    return float(np.mean([_agreement(a, b) for a, b in itertools.combinations(preds, 2)]))


def label_accuracy(model: Any, images: Any, labels: Any, *, column: int, batch_size: int = 256) -> float:
    """Accuracy of one output of a multi-label classifier (`column`), e.g. `smiling` on the reversed split.

    Raises:
        ValueError: if `column` is not a valid output index.
    """
    return _column_accuracy(predictions(model, images, batch_size=batch_size), labels, column)


def retrain_agreement_floor(retrained: Sequence[Any], images: Any, *, batch_size: int = 256) -> float:
    """Mean pairwise prediction agreement between models retrained with different seeds: the noise floor.

    Raises:
        ValueError: with fewer than two retrained models.
    """
    if len(retrained) < 2:
        raise ValueError(f"retrained must hold >= 2 models (different seeds), got {len(retrained)}")
    return _pairwise_floor([predictions(m, images, batch_size=batch_size) for m in retrained])


SHIFT_COLUMNS = (
    "seconds",
    "speedup_vs_retrain",
    "clean_accuracy",
    "reversed_accuracy",
    "gap_restored",
    "gap_restored_per_second",
    "agreement_with_retrained",
    "mia_auc",
)


def compare_on_reversed_split(
    results: Mapping[str, Any],
    retrained: Sequence[Any],
    *,
    original: Any,
    clean: tuple[Any, Any],
    reversed_split: tuple[Any, Any],
    column: int,
    members: tuple[Any, Any],
    non_members: tuple[Any, Any],
    batch_size: int = 256,
    seed: int = 0,
) -> dict:
    """Original, unlearned and retrained models on the clean and the reversed split, side by side.

    Args:
        results (`Mapping[str, UnlearningResult | model]`): unlearned models by name (with `.seconds`).
        retrained (`Sequence[UnlearningResult | model]`): models retrained on the revised data with different
            seeds; the first one is the timed reference (`retrain` row), all of them define the reference accuracy
            (their mean) and the agreement floor (their mean pairwise agreement, >= 2 models).
        original: the model before unlearning.
        clean (`(images, labels)`): an unbiased test set.
        reversed_split (`(images, labels)`): `reversed_correlation_split` images and labels.
        column (`int`): output index of the label the spurious attribute was correlated with.
        members, non_members (`(images, labels)`): membership inference of the changed original images.

    Returns:
        `dict` with `"columns"` (`SHIFT_COLUMNS`), `"rows"` (`original`, the methods, `retrain`), and
        `"reference"`: `reversed_accuracy` (mean over retraining seeds), `agreement_floor`, `mia_auc` (mean),
        `retrain_seeds`, the per-seed `reversed_accuracies`, `clean_accuracy` (mean) / `clean_accuracies`, and
        `gap_restored_seeds` (each seed's share of the gap against the mean: the spread of retraining itself; they
        average to 1). The `retrain` row is the reference itself: its accuracies and membership-inference AUC are
        the means over the seeds, its `gap_restored` is 1 (nan when there is no gap), its `seconds` those of the
        first (timed) seed. `agreement_with_retrained` (reversed split, every output) is the mean over the
        retrained models; for the `retrain` row, the mean pairwise agreement between the seeds (the floor).

    Raises:
        ValueError: with fewer than two retrained models.
    """
    retrained = list(retrained)
    if len(retrained) < 2:
        raise ValueError(f"retrained must hold >= 2 models (different seeds), got {len(retrained)}")
    x_rev, y_rev = reversed_split
    kw = dict(batch_size=batch_size)
    # every model's predictions on the reversed split are computed once and shared by its accuracy, its agreement
    # with each retrained model and the floor
    rev_pred = {id(m): predictions(m, x_rev, **kw) for m in [original, *results.values(), *retrained]}
    retrained_preds = [rev_pred[id(m)] for m in retrained]
    rev_accs = [_column_accuracy(p, y_rev, column) for p in retrained_preds]
    mias = [membership_inference(m, members, non_members, seed=seed, **kw)["auc"] for m in retrained]
    clean_accs = [accuracy(_model(m), *clean, **kw) for m in retrained]
    ref_acc = float(np.mean(rev_accs))
    orig_acc = _column_accuracy(rev_pred[id(original)], y_rev, column)
    retrain_seconds = getattr(retrained[0], "seconds", None)
    rows: dict[str, dict] = {}
    entries = {"original": original, **results, "retrain": retrained[0]}
    floor = _pairwise_floor(retrained_preds)
    for name, entry in entries.items():
        seconds = None if name == "original" else getattr(entry, "seconds", None)
        if name == "retrain":  # the reference itself: the mean over the seeds, 100 % of the gap by definition
            acc, agreement = ref_acc, floor
            clean_acc, mia = float(np.mean(clean_accs)), float(np.mean(mias))
            restored = gap_restored(acc, original=orig_acc, retrained=ref_acc)
        else:
            pred = rev_pred[id(entry)]
            shift = _reversed_gap(pred, rev_pred[id(original)], retrained_preds, y_rev, column)
            acc, restored = shift["accuracy"], shift["gap_restored"]
            agreement = float(np.mean([_agreement(pred, r) for r in retrained_preds]))
            clean_acc = accuracy(_model(entry), *clean, **kw)
            mia = membership_inference(entry, members, non_members, seed=seed, **kw)["auc"]
        rows[name] = {
            "seconds": seconds,
            "speedup_vs_retrain": (retrain_seconds / seconds) if seconds and retrain_seconds else None,
            "clean_accuracy": clean_acc,
            "reversed_accuracy": acc,
            "gap_restored": restored,
            "gap_restored_per_second": (restored / seconds) if seconds else None,
            "agreement_with_retrained": agreement,
            "mia_auc": mia,
        }
    reference = {
        "reversed_accuracy": ref_acc,
        "reversed_accuracies": rev_accs,
        "gap_restored_seeds": [gap_restored(a, original=orig_acc, retrained=ref_acc) for a in rev_accs],
        "clean_accuracy": float(np.mean(clean_accs)),
        "clean_accuracies": clean_accs,
        "agreement_floor": floor,
        "mia_auc": float(np.mean(mias)),
        "retrain_seeds": len(retrained),
    }
    return {"columns": list(SHIFT_COLUMNS), "rows": rows, "reference": reference}
