r"""Protected-attribute leakage: how well the strongest attacker we run recovers a protected attribute.

**The attacker.** A classifier trained *and* tested on protected images (the attacker knows the protection method
and has labelled protected images of other people): a small ResNet (`attribute_leakage`) and a logistic probe on the
semantic latent of the re-encoded protected image (`latent_probe_leakage`). The leakage reported is the better of
the two. ``residual_leakage`` measures, on clean images, how much of the attribute a non-linear probe reads from the
residual ``r`` that the mechanism leaves untouched: the path around the mechanism.

**The bound.** If a release is (epsilon, delta)-DP for a relation under which flipping the attribute is a neighbour,
no test distinguishes the two values with ``TPR > e^eps FPR + delta`` (and symmetrically), so a Bayes attacker
guessing an attribute with prior ``p`` is right with probability at most (`dp_accuracy_bound`)

    max( (e^eps + delta) / (1 + e^eps),  p + (1 - p) delta,  (1 - p) + p delta ),

which is ``e / (1 + e) = 73.1 %`` at epsilon = 1 for a balanced attribute. Attribute-neighbours share the residual,
so the bound covers the population attack only to the extent the attribute is absent from the residual: accuracy
above the bound is leakage *around* the mechanism (through ``r``), not a failure of the mechanism, and is reported
as such together with `residual_leakage`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .audit import clopper_pearson

__all__ = ["dp_accuracy_bound", "implied_epsilon", "leakage_accuracy", "attribute_leakage",
           "latent_probe_leakage", "residual_leakage", "mlp_probe_accuracy"]


def dp_accuracy_bound(epsilon: float, *, delta: float = 0.0, prior: float = 0.5) -> float:
    """The largest accuracy of any attacker on a binary attribute with ``prior`` under (epsilon, delta)-DP.

    Example:
    ```py
    >>> round(dp_accuracy_bound(1.0), 4)  # e / (1 + e)
    0.7311

    ```
    """
    if not 0.0 <= prior <= 1.0:
        raise ValueError(f"prior must be in [0, 1], got prior={prior}")
    if math.isnan(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be >= 0 (inf allowed), got epsilon={epsilon}")
    if math.isinf(epsilon):
        return 1.0
    sym = (math.exp(epsilon) + delta) / (1.0 + math.exp(epsilon)) if epsilon < 700 else 1.0
    return float(min(1.0, max(sym, prior + (1 - prior) * delta, (1 - prior) + prior * delta)))


def implied_epsilon(accuracy: float, *, delta: float = 0.0) -> float:
    """The smallest epsilon whose balanced-prior bound allows ``accuracy``: ``log((acc - delta) / (1 - acc))``."""
    if accuracy <= 0.5:
        return 0.0
    if accuracy >= 1.0:
        return math.inf
    return float(max(0.0, math.log(max(accuracy - delta, 1e-300) / (1.0 - accuracy))))


def leakage_accuracy(predictions: Any, labels: Any, *, epsilon: float | None = None, delta: float = 0.0,
                     alpha: float = 0.05) -> dict:
    """Attack accuracy with its Clopper-Pearson interval, compared with the DP bound at ``epsilon``.

    Args:
        predictions, labels: 0/1 (or bool) arrays of the same length.
        epsilon (`float`, *optional*): the claimed epsilon (``None`` or ``inf``: no bound).

    Returns:
        `dict`: accuracy, ci_low, ci_high, n, prior (rate of the majority class), majority_baseline, bound,
        within_bound (the interval reaches the bound), exceeds_bound (the whole interval lies above it),
        implied_epsilon (from the interval's lower end, balanced-prior formula).
    """
    p = np.asarray(predictions).reshape(-1).astype(bool)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if p.shape != y.shape or len(y) == 0:
        raise ValueError(f"predictions and labels must be non-empty and aligned, got {p.shape} and {y.shape}")
    correct = int((p == y).sum())
    lo, hi = clopper_pearson(correct, len(y), alpha=alpha)
    prior = float(y.mean())
    bound = None if epsilon is None else dp_accuracy_bound(epsilon, delta=delta, prior=prior)
    return {"accuracy": correct / len(y), "ci_low": lo, "ci_high": hi, "n": int(len(y)), "prior": prior,
            "majority_baseline": max(prior, 1 - prior), "bound": bound,
            "within_bound": None if bound is None else bool(lo <= bound),
            "exceeds_bound": None if bound is None else bool(lo > bound),
            "implied_epsilon_lower": implied_epsilon(lo, delta=delta)}


def attribute_leakage(train_images: torch.Tensor, train_labels: Any, test_images: torch.Tensor, test_labels: Any, *,
                      names: Sequence[str], epsilon: float | None = None, delta: float = 0.0, epochs: int = 8,
                      seed: int = 0, progress: bool = False) -> dict:
    """Train a ResNet attacker on protected ``train_images`` (``(N, 3, H, W)`` in [0, 1]) to predict ``names`` and
    test it on protected ``test_images``; returns ``{name: leakage_accuracy(...)}``."""
    from .utility import predict_labels, train_attribute_classifier

    model = train_attribute_classifier(train_images, train_labels, names=names, epochs=epochs, seed=seed,
                                       progress=progress)
    pred = predict_labels(model, test_images)
    y = torch.as_tensor(np.asarray(test_labels)).reshape(len(test_images), -1)
    return {n: leakage_accuracy(pred[:, j], y[:, j], epsilon=epsilon, delta=delta) for j, n in enumerate(names)}


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Semantic latents ``(N, d)`` of images ``(N, 3, H, W)`` in [0, 1] with ``pipe``'s encoder."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(pipe.device, pipe.unet.dtype) * 2 - 1
        out.append(pipe.encode_tensor(x).float().cpu())
    return torch.cat(out)


def latent_probe_leakage(train_latents: torch.Tensor, train_labels: Any, test_latents: torch.Tensor,
                         test_labels: Any, *, names: Sequence[str], epsilon: float | None = None,
                         delta: float = 0.0) -> dict:
    """A logistic probe on semantic latents of protected images (train on one set, test on another)."""
    from .probes import fit_logistic

    ytr = torch.as_tensor(np.asarray(train_labels), dtype=torch.float64).reshape(len(train_latents), -1)
    yte = torch.as_tensor(np.asarray(test_labels), dtype=torch.float64).reshape(len(test_latents), -1)
    out = {}
    for j, n in enumerate(names):
        if ytr[:, j].min() == ytr[:, j].max():
            continue
        predict = fit_logistic(train_latents, ytr[:, j])
        out[n] = leakage_accuracy((predict(test_latents) > 0).numpy(), yte[:, j].numpy(), epsilon=epsilon,
                                  delta=delta)
    return out


def mlp_probe_accuracy(train_x: torch.Tensor, train_y: Any, test_x: torch.Tensor, test_y: Any, *,
                       hidden: int = 128, epochs: int = 200, lr: float = 3e-3, weight_decay: float = 1e-4,
                       seed: int = 0) -> float:
    """Accuracy of a two-layer MLP probe (full-batch Adam on standardised features): a non-linear read-out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(train_x, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    xt = (torch.as_tensor(test_x, dtype=torch.float32) - mean) / std
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.float32).reshape(-1)
    w1 = (torch.randn(x.shape[1], hidden, generator=g) / math.sqrt(x.shape[1])).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, generator=g) / math.sqrt(hidden)).requires_grad_()
    b2 = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=lr, weight_decay=weight_decay)

    def f(v):
        return torch.relu(v @ w1 + b1) @ w2 + b2

    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(f(x), y).backward()
        opt.step()
    with torch.no_grad():
        pred = f(xt) > 0
    yt = torch.as_tensor(np.asarray(test_y)).reshape(-1) > 0.5
    return float((pred == yt).float().mean())


def residual_leakage(pipe, train_images: torch.Tensor, train_labels: Any, test_images: torch.Tensor,
                     test_labels: Any, *, attributes: Sequence[str], names: Sequence[str]) -> dict:
    """How much of each protected attribute the residual ``r`` of *clean* images still carries.

    Linear (logistic) and non-linear (MLP) probes on ``r = z - A_S A_S^T (z - c)`` with the protected directions
    removed; the mechanism never noises ``r`` (``scope="attributes"``), so what these probes read is leakage around
    the mechanism. Also reports the probes on the protected coordinates ``a`` alone.
    """
    from .probes import probe_accuracy

    dirs = pipe.attribute_directions
    z_tr, z_te = encode_images(pipe, train_images), encode_images(pipe, test_images)
    a_tr, r_tr = dirs.project(z_tr, attributes=list(attributes))
    a_te, r_te = dirs.project(z_te, attributes=list(attributes))
    ytr = torch.as_tensor(np.asarray(train_labels), dtype=torch.float64).reshape(len(z_tr), -1)
    yte = torch.as_tensor(np.asarray(test_labels), dtype=torch.float64).reshape(len(z_te), -1)
    out = {}
    for name in attributes:
        if name not in names:
            continue
        j = list(names).index(name)
        out[name] = {
            "residual_linear_probe": probe_accuracy(r_tr, ytr[:, j], r_te, yte[:, j]),
            "residual_mlp_probe": mlp_probe_accuracy(r_tr, ytr[:, j], r_te, yte[:, j]),
            "coordinates_linear_probe": probe_accuracy(a_tr, ytr[:, j], a_te, yte[:, j]),
            "latent_linear_probe": probe_accuracy(z_tr, ytr[:, j], z_te, yte[:, j]),
        }
    return out
