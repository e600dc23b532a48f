"""How well did unlearning work? Utility, closeness to retraining, membership inference, attribute probes.

Pure functions on arrays (`best_threshold`; `roc_auc` and `fit_logistic_regression`, scikit-learn's, from
`dpdiffusion.evaluation.probes`) sit below thin wrappers that run a model over images. The reference for every
unlearning method is the model retrained on the revised data: an unlearned model should agree with it, sit close to it in parameter space, leak as little about the removed
originals as it does (membership inference on the original images of the changed examples), and encode the
protected attribute no more than it does (linear probe on penultimate features).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch

from ..training.classifier import (
    as_label_tensor,
    infer_problem_type,
    per_example_loss,
    predict_logits,
    to_pixel_values,
)
from .metrics import load_metric
from .probes import fit_logistic_regression, predict_logistic_regression, roc_auc

logger = logging.getLogger(__name__)

__all__ = [
    "roc_auc",
    "fit_logistic_regression",
    "predict_logistic_regression",
    "best_threshold",
    "prediction_accuracy",
    "accuracy",
    "predictions",
    "prediction_agreement",
    "parameter_distance",
    "probability_distance",
    "per_example_losses",
    "membership_inference",
    "penultimate_features",
    "linear_probe",
    "compare_unlearning",
    "format_table",
]


# ----------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------
def best_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """Threshold t maximising the balanced accuracy of `scores >= t` for `labels`; returns `(t, accuracy)`."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    cands = np.unique(s)
    cands = np.concatenate([cands, [np.inf]])
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    best_t, best_acc = float(cands[0]), -1.0
    for t in cands:
        pred = s >= t
        acc = 0.5 * ((pred & y).sum() / n_pos + (~pred & ~y).sum() / n_neg)
        if acc > best_acc:
            best_t, best_acc = float(t), float(acc)
    return best_t, best_acc


def prediction_accuracy(predictions: Any, references: Any) -> float:
    """Accuracy of hard predictions: top-1 for class ids ``(N,)``, the mean per-label accuracy for 0/1 rows ``(N, L)``.

    The one accuracy of the evaluation's ``evaluate`` modules (``classification_accuracy``, ``gap_restored``).

    Example:
    ```py
    >>> prediction_accuracy([2, 0, 1, 1], [2, 0, 0, 1])
    0.75
    >>> prediction_accuracy([[1, 0], [1, 1]], [[1, 1], [1, 1]])
    0.75

    ```

    Raises:
        ValueError: if the shapes differ, there are no predictions, or the arrays are neither 1-D nor 2-D.
    """
    p, y = np.asarray(predictions), np.asarray(references)
    if p.shape != y.shape or p.size == 0 or p.ndim not in (1, 2):
        raise ValueError(f"predictions and references must be non-empty arrays of the same shape, (N,) or (N, L), "
                         f"got {p.shape} and {y.shape}")
    if p.ndim == 2:
        p, y = p > 0.5, y > 0.5
    return float(np.mean(p == y))


def _split(n: int, fraction: float, seed: int, stratify: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if stratify is None:
        perm = rng.permutation(n)
        k = int(round(fraction * n))
        return np.sort(perm[:k]), np.sort(perm[k:])
    fit, rest = [], []
    for c in np.unique(stratify):
        idx = np.flatnonzero(stratify == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        fit.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(rest))


# ----------------------------------------------------------------------------------------------------------------
# Model wrappers
# ----------------------------------------------------------------------------------------------------------------
def _model(m: Any) -> torch.nn.Module:
    """Accept a model or anything with a `.model` (e.g. an `UnlearningResult`)."""
    return m.model if hasattr(m, "model") and not isinstance(m, torch.nn.Module) else m


def predictions(model: Any, images: Any, *, batch_size: int = 256) -> torch.Tensor:
    """Hard predictions: `(N, L)` bools (multi-label, logit > 0) or `(N,)` class indices (single-label)."""
    model = _model(model)
    logits = predict_logits(model, images, batch_size=batch_size)
    if getattr(model.config, "problem_type", None) == "multi_label_classification":
        return logits > 0
    return logits.argmax(dim=-1)


def accuracy(model: Any, images: Any, labels: Any, *, batch_size: int = 256) -> float:
    """Test accuracy: mean per-label accuracy (multi-label) or top-1 accuracy (single-label)."""
    pred = predictions(model, images, batch_size=batch_size)
    y = as_label_tensor(labels)
    if pred.ndim == 2:
        return float((pred == (y > 0.5)).float().mean())
    return float((pred == y.long()).float().mean())


def prediction_agreement(model_a: Any, model_b: Any, images: Any, *, batch_size: int = 256) -> float:
    """Fraction of predictions (per label for multi-label) on which the two models agree."""
    pa = predictions(model_a, images, batch_size=batch_size)
    pb = predictions(model_b, images, batch_size=batch_size)
    return float((pa == pb).float().mean())


def probability_distance(model_a: Any, model_b: Any, images: Any, *, batch_size: int = 256) -> float:
    """Mean distance between the two models' predictive distributions on `images`, in [0, 1].

    Multi-label: mean absolute difference of the per-label probabilities; single-label: mean total-variation
    distance between the softmax distributions. A function-space companion of `parameter_distance`, which for
    networks trained by SGD is dominated by training noise rather than by what the data changed.
    """
    ma, mb = _model(model_a), _model(model_b)
    la = predict_logits(ma, images, batch_size=batch_size)
    lb = predict_logits(mb, images, batch_size=batch_size)
    if getattr(ma.config, "problem_type", None) == "multi_label_classification":
        return float((torch.sigmoid(la) - torch.sigmoid(lb)).abs().mean())
    return float(0.5 * (la.softmax(-1) - lb.softmax(-1)).abs().sum(-1).mean())


def parameter_distance(model_a: Any, model_b: Any) -> float:
    """L2 distance between the parameters of two models of the same architecture (buffers excluded).

    Raises:
        ValueError: if the parameter names or shapes differ.
    """
    pa = dict(_model(model_a).named_parameters())
    pb = dict(_model(model_b).named_parameters())
    if pa.keys() != pb.keys():
        raise ValueError("model_a and model_b must have the same parameter names")
    total = 0.0
    for name, a in pa.items():
        b = pb[name]
        if a.shape != b.shape:
            raise ValueError(f"parameter {name} has shapes {tuple(a.shape)} and {tuple(b.shape)}")
        total += float(((a.detach().float().cpu() - b.detach().float().cpu()) ** 2).sum())
    return total**0.5


@torch.no_grad()
def per_example_losses(
    model: Any, images: Any, labels: Any, *, batch_size: int = 256, per_output: bool = False
) -> torch.Tensor:
    """The training loss of each example, `(N,)`; with `per_output`, `(N, L)` per-label BCE for multi-label."""
    model = _model(model)
    logits = predict_logits(model, images, batch_size=batch_size)
    y = as_label_tensor(labels)
    problem_type = infer_problem_type(model.config, y)
    if per_output and problem_type == "multi_label_classification":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
    out = per_example_loss(logits, y, problem_type)
    return out[:, None] if per_output else out


def membership_inference(
    model: Any,
    members: tuple[Any, Any],
    non_members: tuple[Any, Any],
    *,
    batch_size: int = 256,
    fit_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, float]:
    """Loss-based membership inference (Yeom et al. 2018; Shokri et al. 2017 with a learned attack model).

    Members are examples the model may have been trained on (for unlearning: the *original* images of the
    revised examples), non-members held-out examples from the same distribution. Two attacks:

    - `auc`: ROC AUC of the score -loss over all members vs non-members (the threshold attack; no fitting).
    - `attack_auc` / `attack_accuracy`: a logistic-regression attack model on the per-output losses (per-label
      BCE for multi-label) and the loss, fit on a stratified `fit_fraction` split and evaluated (AUC, and balanced
      accuracy at its best threshold on the fit split) on the rest.

    0.5 means no membership signal. Returns a dict with `auc`, `attack_auc`, `attack_accuracy`,
    `advantage` (= 2 * attack_accuracy - 1), `member_loss`, `non_member_loss` (means).
    """
    lm = per_example_losses(model, *members, batch_size=batch_size, per_output=True).numpy()
    ln = per_example_losses(model, *non_members, batch_size=batch_size, per_output=True).numpy()
    loss_m, loss_n = lm.mean(1), ln.mean(1)
    is_member = np.concatenate([np.ones(len(lm)), np.zeros(len(ln))])
    loss = np.concatenate([loss_m, loss_n])
    feats = np.concatenate([lm, ln])
    feats = np.log(np.concatenate([feats, loss[:, None]], axis=1) + 1e-12)
    # the threshold attack's AUC through the ``mia_auc`` evaluate module (`roc_auc`), as every report shows it
    auc = load_metric("mia_auc").compute(predictions=-loss, references=is_member.astype(np.int64))["mia_auc"]
    out = {"auc": auc, "member_loss": float(loss_m.mean()), "non_member_loss": float(loss_n.mean())}
    fit, rest = _split(len(loss), fit_fraction, seed, stratify=is_member)
    if len(np.unique(is_member[fit])) == 2 and len(np.unique(is_member[rest])) == 2:
        lr = fit_logistic_regression(feats[fit], is_member[fit])
        t, _ = best_threshold(predict_logistic_regression(lr, feats[fit]), is_member[fit])
        s_rest = predict_logistic_regression(lr, feats[rest])
        pred, y = s_rest >= t, is_member[rest].astype(bool)
        acc = 0.5 * ((pred & y).sum() / y.sum() + (~pred & ~y).sum() / (~y).sum())
        out.update(attack_auc=roc_auc(s_rest, is_member[rest]), attack_accuracy=float(acc), advantage=float(2 * acc - 1))
    return out


@torch.no_grad()
def penultimate_features(model: Any, images: Any, *, batch_size: int = 256) -> torch.Tensor:
    """Pooled features that feed the classifier head: the last hidden state averaged over space (or tokens)."""
    model = _model(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        x = to_pixel_values(images[start : start + batch_size]).to(device)
        h = model(pixel_values=x, output_hidden_states=True).hidden_states[-1].float()
        outs.append((h.mean(dim=(2, 3)) if h.ndim == 4 else h.mean(dim=1)).cpu())  # (B, C)
    model.train(was_training)
    return torch.cat(outs)


def linear_probe(
    model: Any,
    images: Any,
    attribute: Any,
    *,
    train_fraction: float = 0.5,
    l2: float = 1e-2,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """How linearly decodable a binary attribute is from the model's penultimate features.

    Fits `fit_logistic_regression` on a stratified `train_fraction` split of `(features, attribute)` and reports
    the accuracy on the rest (`accuracy`), its ROC AUC (`auc`) and the majority-class rate (`chance`).

    Raises:
        ValueError: if `attribute` is not binary or its length differs from `images`.
    """
    a = np.asarray(attribute).reshape(-1)
    if len(a) != len(images):
        raise ValueError(f"attribute must have one value per image, got {len(a)} for {len(images)} images")
    if not np.all((a == 0) | (a == 1)):
        raise ValueError("attribute must be binary (0/1 or bool)")
    feats = penultimate_features(model, images, batch_size=batch_size).numpy()
    fit, rest = _split(len(a), train_fraction, seed, stratify=a.astype(int))
    lr = fit_logistic_regression(feats[fit], a[fit], l2=l2)
    s = predict_logistic_regression(lr, feats[rest])
    y = a[rest].astype(bool)
    out = {"accuracy": float(((s > 0) == y).mean()), "chance": float(max(y.mean(), 1 - y.mean()))}
    out["auc"] = roc_auc(s, y) if 0 < y.sum() < len(y) else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Side-by-side comparison
# ----------------------------------------------------------------------------------------------------------------
COLUMNS = (
    "seconds",
    "speedup_vs_retrain",
    "test_accuracy",
    "agreement_with_retrained",
    "prob_distance_to_retrained",
    "l2_to_retrained",
    "mia_auc",
    "probe_accuracy",
)


def compare_unlearning(
    results: Mapping[str, Any],
    retrained: Any,
    *,
    test: tuple[Any, Any],
    members: tuple[Any, Any],
    non_members: tuple[Any, Any],
    probe: tuple[Any, Any] | None = None,
    original: Any = None,
    retrain_seconds: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> dict:
    """Evaluate unlearned models against the retrained one, side by side.

    Args:
        results (`Mapping[str, UnlearningResult | model]`): the unlearned models by name.
        retrained (`UnlearningResult` or model): the model retrained on the revised data (the reference).
        test (`(images, labels)`): held-out test data.
        members (`(images, labels)`): the original images of the revised examples (membership inference).
        non_members (`(images, labels)`): held-out images never trained on (membership inference).
        probe (`(images, attribute)`, *optional*): images with a binary protected attribute for the linear probe.
        original (model, *optional*): the model before unlearning (adds an `"original"` row).
        retrain_seconds (`float`, *optional*): cost of retraining; read from `retrained.seconds` when omitted.

    Returns:
        `dict` with `"columns"` (the metric names), `"rows"` (`{name: {metric: value}}`, including `"original"`
        and `"retrain"`), and `"reference"` (`"retrain"`).
    """
    ref = _model(retrained)
    if retrain_seconds is None:
        retrain_seconds = getattr(retrained, "seconds", None)
    entries: dict[str, Any] = {}
    if original is not None:
        entries["original"] = original
    entries.update(results)
    entries["retrain"] = retrained
    rows: dict[str, dict] = {}
    for name, entry in entries.items():
        model = _model(entry)
        seconds = getattr(entry, "seconds", None) if name != "original" else None
        row = {
            "seconds": seconds,
            "speedup_vs_retrain": (retrain_seconds / seconds) if seconds and retrain_seconds else None,
            "test_accuracy": accuracy(model, *test, batch_size=batch_size),
            "agreement_with_retrained": prediction_agreement(model, ref, test[0], batch_size=batch_size),
            "prob_distance_to_retrained": probability_distance(model, ref, test[0], batch_size=batch_size),
            "l2_to_retrained": parameter_distance(model, ref),
            "mia_auc": membership_inference(model, members, non_members, batch_size=batch_size, seed=seed)["auc"],
            "probe_accuracy": (
                linear_probe(model, *probe, seed=seed, batch_size=batch_size)["accuracy"] if probe is not None else None
            ),
        }
        rows[name] = row
    return {"columns": list(COLUMNS), "rows": rows, "reference": "retrain"}


def format_table(table: Mapping[str, Any], *, digits: int = 4, digits_by_column: Mapping[str, int] | None = None) -> str:
    """A Markdown table of a `compare_unlearning` result (`digits` significant digits; L2 distances get 7 by
    default, since a single unlearning step moves them by a small fraction)."""
    cols = list(table["columns"])
    per_col = {"l2_to_retrained": 7, **(digits_by_column or {})}
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in table["rows"].items():
        cells = []
        for c in cols:
            v, k = row.get(c), per_col.get(c, digits)
            cells.append("-" if v is None else (f"{v:.{k}g}" if isinstance(v, float) else str(v)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
