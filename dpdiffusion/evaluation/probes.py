"""Linear probes: L2-regularised logistic regression fitted with L-BFGS (pure torch, deterministic)."""

from __future__ import annotations

import torch


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 200):
    """Fit ``p(y=1|x) = sigmoid(x w + b)`` on standardised features.

    Args:
        x (`torch.Tensor`): ``(N, D)`` features. y (`torch.Tensor`): ``(N,)`` 0/1 labels.

    Returns:
        `callable`: maps features ``(M, D)`` to logits ``(M,)``.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x (N, D) and y (N,) must align, got {tuple(x.shape)} and {tuple(y.shape)}")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda feats: ((torch.as_tensor(feats, dtype=torch.float64) - mean) / std) @ w + b


def probe_accuracy(train_x, train_y, test_x, test_y, **kwargs) -> float:
    """Accuracy on ``(test_x, test_y)`` of a logistic probe fitted on ``(train_x, train_y)``."""
    predict = fit_logistic(train_x, train_y, **kwargs)
    test_y = torch.as_tensor(test_y).reshape(-1) > 0.5
    return float(((predict(test_x) > 0) == test_y).double().mean())
