"""The figures of one step of the privacy loop: what a release at some epsilon does to the model trained on the data.

Every figure goes through the project's ``evaluate`` modules (`dpdiffusion.evaluation.metrics.load_metric`):

- ``utility``: the unlearned classifier's accuracy per label on held-out clean images (``utility_ratio``, which also
  gives the original classifier's accuracy and the ratio), each with its Clopper-Pearson 95 % interval;
- ``leakage_release``: an attacker (`dpdiffusion.evaluation.utility.train_attribute_classifier`, a ResNet) trained on
  one half of the released images to predict each protected attribute, tested on the other half
  (``attribute_leakage``: accuracy, interval, and the (epsilon, delta)-DP bound on any attacker beside it), and
  ``label_baseline``: the accuracy of guessing the attribute from the published labels alone (`label_baseline`). The
  bound covers the protected coordinates only: where a visible label is correlated with the attribute, an attacker
  can beat the bound through it (not a failure of the mechanism: "correlations" are outside the guarantee). The
  attacker is trained on half the released rows: on a small pilot it is weak, so the pilot's leakage underestimates
  what an attacker learns from the whole release;
- ``leakage_model``: a linear probe of the protected attribute on the unlearned classifier's penultimate features of
  held-out clean images (``attribute_leakage``; the DP bound is shown for reference only: the classifier was trained
  on the originals and unlearning is approximate, so no DP guarantee covers it);
- ``mia_auc``: the loss-threshold membership-inference AUC of the unlearned classifier, members the originals it was
  trained on, non-members the held-out images (``mia_auc``), with the Hanley-McNeil standard error;
- the share of the gap restored (``gap_restored``) needs a classifier retrained on the whole release: it is measured
  once, at ``accept``, by the unlearn job (`dpdiffusion.unlearning.job`, ``compare_retrain``) on the held-out rows
  whose protected attribute disagrees with the first label (`reversed_rows`).

Inputs are arrays the caller prepared: pixel values for the classifier (its image processor applied) and images in
[0, 1] for the attacker; this module draws no noise and reads no file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..evaluation.audit import clopper_pearson
from ..evaluation.metrics import load_metric

__all__ = ["auc_standard_error", "measure_figures", "reversed_rows"]


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of a ROC AUC (Hanley & McNeil 1982, eq. 2).

    Example:
    ```py
    >>> round(auc_standard_error(0.5, 50, 50), 4)
    0.058

    ```
    """
    if n_pos < 1 or n_neg < 1 or not math.isfinite(auc):
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(math.sqrt(max(var, 0.0)))


def reversed_rows(attribute: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Rows whose protected attribute disagrees with the label (the shortcut is wrong there), chosen from the data
    alone: the reversed-correlation subset of held-out images on which the gap restored is measured."""
    return np.flatnonzero(np.asarray(attribute).astype(bool) != np.asarray(label).astype(bool))


def label_baseline(train_labels: np.ndarray, train_attribute: np.ndarray, test_labels: np.ndarray,
                   test_attribute: np.ndarray) -> float:
    """Accuracy on the test rows of guessing a protected attribute from the published label columns alone: the
    majority attribute value among the training rows with the same labels (the overall majority for a combination
    not seen). The DP bound covers the protected coordinates only; a label correlated with the attribute (smiling with
    skin tone in a biased dataset) gives any attacker at least this much, whatever epsilon.

    Example:
    ```py
    >>> label_baseline(np.array([[0], [0], [1], [1]]), np.array([0, 0, 1, 1]), np.array([[1], [0]]), np.array([1, 1]))
    0.5

    ```
    """
    train_attribute = np.asarray(train_attribute).astype(np.int64)
    overall = int(train_attribute.mean() >= 0.5)
    groups: dict = {}
    for row, a in zip(map(tuple, np.asarray(train_labels)), train_attribute):
        groups.setdefault(row, []).append(a)
    guess = np.asarray([int(np.mean(groups[row]) >= 0.5) if row in groups else overall
                        for row in map(tuple, np.asarray(test_labels))])
    return float((guess == np.asarray(test_attribute).astype(np.int64)).mean())


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def _with_interval(correct: int, n: int) -> dict:
    lo, hi = clopper_pearson(correct, n)
    return {"accuracy": correct / n, "ci_low": lo, "ci_high": hi, "n": int(n)}


def measure_figures(
    unlearned: Any,
    original: Any,
    *,
    label_names: Sequence[str],
    attributes: Sequence[str],
    epsilon: float,
    delta: float,
    released_images: torch.Tensor,
    released_attributes: np.ndarray,
    released_labels: np.ndarray,
    held_out_pixels: torch.Tensor,
    held_out_labels: np.ndarray,
    held_out_attributes: np.ndarray,
    member_pixels: torch.Tensor,
    member_labels: np.ndarray,
    attacker_epochs: int = 8,
    seed: int = 0,
) -> dict:
    """The figures of a release at ``epsilon`` (see the module docstring).

    Args:
        unlearned, original: `transformers` multi-label image classifiers (after and before unlearning).
        label_names (`Sequence[str]`): the classifier's outputs, in order.
        attributes (`Sequence[str]`): the protected attributes.
        epsilon (`float`), delta (`float`): the release's privacy parameters (for the DP bound).
        released_images (`torch.Tensor`): `(N, 3, H, W)` released images in [0, 1] (the attacker's data).
        released_attributes (`np.ndarray`): `(N, len(attributes))` 0/1, the true attributes of those rows.
        released_labels (`np.ndarray`): `(N, len(label_names))` 0/1, their published label columns (for the
            ``label_baseline`` beside the attacker's accuracy).
        held_out_pixels (`torch.Tensor`): `(M, 3, h, w)` the classifier's pixel values of held-out clean images.
        held_out_labels (`np.ndarray`): `(M, len(label_names))` 0/1; held_out_attributes likewise for attributes.
        member_pixels, member_labels: the originals the classifier was trained on (membership inference).

    Returns:
        `dict`: ``utility``, ``leakage_release``, ``leakage_model`` and ``mia_auc``.
    """
    from ..evaluation.probes import fit_logistic_regression, predict_logistic_regression
    from ..evaluation.unlearning_metrics import (
        membership_inference,
        penultimate_features,
        predictions,
    )
    from ..evaluation.utility import predict_labels, train_attribute_classifier

    label_names, attributes = list(label_names), list(attributes)
    y_held = np.asarray(held_out_labels).astype(np.int64).reshape(len(held_out_pixels), -1)
    a_held = np.asarray(held_out_attributes).astype(np.int64).reshape(len(held_out_pixels), -1)
    a_rel = np.asarray(released_attributes).astype(np.int64).reshape(len(released_images), -1)
    pred_u = predictions(unlearned, held_out_pixels).long().numpy()
    pred_o = predictions(original, held_out_pixels).long().numpy()
    report = load_metric("utility_ratio").compute(predictions=pred_u, references=y_held, clean_predictions=pred_o,
                                                  names=label_names)
    utility = {"mean_accuracy": report["mean_accuracy"], "mean_ratio": report["mean_ratio"], "per_label": {}}
    for j, name in enumerate(label_names):
        row = report["per_attribute"][name]
        correct = int((pred_u[:, j] == y_held[:, j]).sum())
        utility["per_label"][name] = {**_with_interval(correct, len(y_held)), "original_accuracy": row["clean_accuracy"],
                                      "ratio": row["ratio"]}

    leakage = load_metric("attribute_leakage")
    train, test = _halves(len(released_images), seed)
    attacker = train_attribute_classifier(released_images[train], a_rel[train], names=attributes,
                                          epochs=attacker_epochs, seed=seed, progress=False)
    attack_pred = predict_labels(attacker, released_images[test]).numpy()
    y_rel = np.asarray(released_labels).astype(np.int64).reshape(len(released_images), -1)
    leakage_release = {a: {**leakage.compute(predictions=attack_pred[:, j], references=a_rel[test, j],
                                             epsilon=epsilon, delta=delta),
                           "label_baseline": label_baseline(y_rel[train], a_rel[train, j], y_rel[test], a_rel[test, j])}
                       for j, a in enumerate(attributes)}

    feats = penultimate_features(unlearned, held_out_pixels).numpy()
    fit, rest = _halves(len(feats), seed + 1)
    leakage_model = {}
    for j, a in enumerate(attributes):
        if len(np.unique(a_held[fit, j])) < 2:
            leakage_model[a] = None  # one class only in the probe's half: nothing to fit
            continue
        probe = fit_logistic_regression(feats[fit], a_held[fit, j])
        scores = predict_logistic_regression(probe, feats[rest])
        leakage_model[a] = leakage.compute(predictions=(scores > 0).astype(np.int64), references=a_held[rest, j],
                                           epsilon=epsilon, delta=delta)

    mia = membership_inference(unlearned, (member_pixels, torch.as_tensor(np.asarray(member_labels), dtype=torch.float32)),
                               (held_out_pixels, torch.as_tensor(y_held, dtype=torch.float32)), seed=seed)
    mia_auc = {"auc": mia["auc"], "std_error": auc_standard_error(mia["auc"], len(member_pixels), len(y_held)),
               "members": len(member_pixels), "non_members": len(y_held)}

    return {"utility": utility, "leakage_release": leakage_release, "leakage_model": leakage_model,
            "mia_auc": mia_auc}
