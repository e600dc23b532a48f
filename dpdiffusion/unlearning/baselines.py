"""Baselines for feature unlearning: fine-tuning on the revised data, and retraining from scratch.

Retraining on the revised training set is the exact answer that unlearning approximates (its cost is what the
approximate methods are measured against). Fine-tuning continues training the given model on the revised set
for a few epochs (Warnecke et al. use it as the naive baseline: it forgets only slowly, since the revised
examples already have a low loss when their originals differ only in the protected feature).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ..training.classifier import train_classifier

logger = logging.getLogger(__name__)

__all__ = ["finetune", "retrain"]


def finetune(
    model: torch.nn.Module,
    train_set: tuple[torch.Tensor, torch.Tensor],
    *,
    trainable: list[str] | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    accelerator: Any,
    progress: bool,
) -> torch.nn.Module:
    """Continue training `model` (in place) on the revised `train_set`; only `trainable` parameters move."""
    images, labels = train_set
    if trainable is not None:
        keep = set(trainable)
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
    try:
        model = train_classifier(
            model, images, labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            weight_decay=weight_decay, accelerator=accelerator, progress=progress,
        )
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def retrain(
    model: torch.nn.Module,
    train_set: tuple[torch.Tensor, torch.Tensor],
    *,
    retrain_fn: Callable | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    accelerator: Any,
    progress: bool,
) -> torch.nn.Module:
    """Train a fresh model on the revised `train_set`.

    With `retrain_fn`, returns `retrain_fn(images, labels)` (the caller's own recipe: use the same initial seed,
    epochs and learning rate as the original training to make "distance to the retrained model" meaningful).
    Otherwise builds `type(model)(model.config)` initialised under `torch.manual_seed(seed)` and trains it with
    `train_classifier(epochs, batch_size, lr, seed)`.
    """
    images, labels = train_set
    if retrain_fn is not None:
        return retrain_fn(images, labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    fresh.to(next(model.parameters()).device)
    return train_classifier(
        fresh, images, labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        weight_decay=weight_decay, accelerator=accelerator, progress=progress,
    )
