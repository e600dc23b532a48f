"""Linear probes: L2-regularised binary logistic regression on standardised features, and ROC AUC.

One implementation for the whole evaluation: scikit-learn's ``LogisticRegression`` (exact Newton steps,
``solver="newton-cholesky"``, the intercept not penalised) and the Mann-Whitney U statistic of SciPy for the AUC.
Deterministic.

Two conventions are kept because the published figures were computed with them:

* `fit_logistic_regression` (unlearning metrics): minimises ``mean log-loss + (l2 / 2) ||w||^2`` on features
  standardised with the population standard deviation.
* `fit_logistic` / `probe_accuracy` (leakage and latent probes): minimises ``mean log-loss + l2 ||w||^2`` on
  features standardised with the sample (Bessel-corrected) standard deviation.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression

__all__ = ["roc_auc", "fit_logistic_regression", "predict_logistic_regression", "fit_logistic", "probe_accuracy"]


def _binary_labels(labels: Any, n: int, *, what: str = "features") -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{what} and labels must have the same length, got {n} and {len(y)}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 (or bool)")
    return y.astype(np.float64)


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of `scores` for the positives `labels == 1` (ties count one half).

    Equals the Mann-Whitney probability P(score of a random positive > score of a random negative) + 0.5 P(tie),
    computed as ``U / (n_pos n_neg)`` with SciPy's ``mannwhitneyu`` statistic (mid-ranks, O(n log n)). Not
    ``sklearn.metrics.roc_auc_score``: its trapezoidal sum is off by a few ulps where the rank formula is exact
    (identical score sets give 0.49999999999999994 there, exactly 0.5 here).

    Args:
        scores (array-like): ``(N,)`` finite scores, higher meaning "positive".
        labels (array-like): ``(N,)`` 0/1 (or bool) labels.

    Returns:
        `float`: the AUC in [0, 1].

    Raises:
        ValueError: if the shapes differ, a label is not 0/1, a score is not finite, or one class is empty.

    Example:
    ```py
    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> roc_auc([1, 1, 1], [0, 1, 1])
    0.5

    ```
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 (or bool)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both classes, got {n_pos} positives and {n_neg} negatives")
    u = mannwhitneyu(s[y], s[~y], method="asymptotic").statistic  # rank sum of the positives - n_pos (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def fit_logistic_regression(
    features: Any, labels: Any, *, l2: float = 1e-2, max_iter: int = 50, tol: float = 1e-8
) -> dict[str, np.ndarray]:
    """L2-regularised binary logistic regression by Newton's method, on standardised features.

    Minimises ``mean log-loss + (l2 / 2) ||w||^2`` (the intercept is not penalised), i.e. scikit-learn's
    objective with ``C = 1 / (l2 * N)``; features are standardised with their mean and population standard
    deviation (constant features get scale 1). Deterministic. With a single class in `labels` the minimum lies
    at infinity: the model is then the constant log-odds ``+-log((N + 0.5) / 0.5)`` (zero weights).

    Args:
        features (array-like): ``(N, ...)`` features, flattened to ``(N, D)``.
        labels (array-like): ``(N,)`` 0/1 (or bool) labels.
        l2 (`float`, *optional*, defaults to 1e-2): the penalty weight, ``>= 0`` (0: unpenalised).
        max_iter (`int`, *optional*, defaults to 50): Newton iterations at most.
        tol (`float`, *optional*, defaults to 1e-8): stopping tolerance of the solver.

    Returns:
        `dict`: ``{"weights": (D,), "bias": (), "mean": (D,), "scale": (D,)}`` for `predict_logistic_regression`.

    Raises:
        ValueError: for mismatched lengths, non-binary labels, or `l2 < 0`.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    y = _binary_labels(labels, len(x))
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got l2={l2}")
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    if len(np.unique(y)) < 2:  # one class only: the optimum lies at infinity; the constant Jeffreys log-odds
        bias = np.log((len(y) + 0.5) / 0.5) * (1.0 if y.size and y[0] == 1 else -1.0)
        return {"weights": np.zeros(x.shape[1]), "bias": np.float64(bias), "mean": mean, "scale": scale}
    c = np.inf if l2 == 0 else 1.0 / (l2 * len(y))
    clf = LogisticRegression(C=c, solver="newton-cholesky", tol=tol, max_iter=max_iter)
    clf.fit((x - mean) / scale, y)
    return {"weights": clf.coef_[0].copy(), "bias": np.float64(clf.intercept_[0]), "mean": mean, "scale": scale}


def predict_logistic_regression(model: Mapping[str, np.ndarray], features: Any) -> np.ndarray:
    """Decision scores (log-odds) ``(N,)`` of a model from `fit_logistic_regression` on ``(N, ...)`` features."""
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    return ((x - model["mean"]) / model["scale"]) @ model["weights"] + model["bias"]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3,
                 max_iter: int = 200) -> Callable[[Any], torch.Tensor]:
    """Fit ``p(y=1|x) = sigmoid(x_s w + b)`` on features ``x_s`` standardised with the sample standard deviation.

    Minimises ``mean log-loss + l2 ||w||^2``. With the sample standard deviation ``s = s_pop sqrt(N / (N - 1))``,
    this is `fit_logistic_regression`'s problem with penalty ``2 l2 N / (N - 1)``: the same fitted function.

    Args:
        x (`torch.Tensor`): ``(N, D)`` features.
        y (`torch.Tensor`): ``(N,)`` 0/1 labels.
        l2 (`float`, *optional*, defaults to 1e-3): the penalty weight.
        max_iter (`int`, *optional*, defaults to 200): solver iterations at most.

    Returns:
        `callable`: maps features ``(M, D)`` to float64 logits ``(M,)``.

    Raises:
        ValueError: if ``x`` is not ``(N, D)`` or its length differs from ``y``'s.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x (N, D) and y (N,) must align, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, device = len(x), x.device
    model = fit_logistic_regression(x.detach().cpu().numpy(), y.detach().cpu().numpy(),
                                    l2=2.0 * l2 * n / max(n - 1, 1), max_iter=max_iter)

    def predict(feats: Any) -> torch.Tensor:
        f = torch.as_tensor(feats, dtype=torch.float64).detach().cpu().numpy()
        return torch.from_numpy(predict_logistic_regression(model, f)).to(device)  # (M,)

    return predict


def probe_accuracy(train_x, train_y, test_x, test_y, **kwargs) -> float:
    """Accuracy on ``(test_x, test_y)`` of a `fit_logistic` probe fitted on ``(train_x, train_y)``."""
    predict = fit_logistic(train_x, train_y, **kwargs)
    test_y = torch.as_tensor(test_y).reshape(-1) > 0.5
    return float(((predict(test_x) > 0) == test_y).double().mean())
