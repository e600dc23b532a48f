r"""Utility of protected images for the data-sharing use case.

A classifier is trained on *protected* training images and tested on *clean* test images, one accuracy per
unprotected attribute: can the recipient of a protected dataset still learn the attributes it was shared for? The
reference is the same classifier recipe trained on the clean training images (`utility_report` gives accuracy,
clean accuracy and their ratio per attribute; the claim checked in the paper is ratio >= 0.9).

The classifier is the small ``transformers`` ResNet of ``dpdiffusion.training.classifier`` (multi-label, one binary
output per attribute), trained with the same recipe and seed for every method so that differences come from the
data alone. Images of 32 px or less are enlarged 2x (nearest) before it: its stem (a stride-2 convolution and a
stride-2 pool) would otherwise leave an 8x8 map in which glasses and mouths are a pixel or two, and a classifier that
cannot see an attribute measures neither its utility nor its leakage. The factor is stored in the model's config
(``input_enlarge``) and applied by `predict_labels` and `enlarge_for`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["train_attribute_classifier", "flip_colour_augment", "predict_labels", "enlarge_for", "default_enlarge",
           "attribute_accuracies", "utility_report", "attribute_utility"]


def default_enlarge(image_size: int) -> int:
    """Enlargement factor of the evaluation classifier's input: 2 up to 32 px, else 1."""
    return 2 if int(image_size) <= 32 else 1


def enlarge_for(model, images: torch.Tensor) -> torch.Tensor:
    """``images`` ``(N, 3, H, W)`` enlarged by the model's ``config.input_enlarge`` (nearest; 1 = unchanged)."""
    k = int(getattr(model.config, "input_enlarge", 1) or 1)
    return images if k == 1 else torch.nn.functional.interpolate(images, scale_factor=k, mode="nearest")


def flip_colour_augment(x: torch.Tensor, generator: torch.Generator, *, strength: float = 0.3) -> torch.Tensor:
    """Random horizontal flip (p = 0.5) and colour jitter of a batch ``(B, 3, H, W)`` in [-1, 1].

    Each image gets its own brightness, contrast and saturation factors, uniform in ``[1 - strength, 1 + strength]``
    (torchvision's ``ColorJitter(0.3, 0.3, 0.3)`` convention), applied in [0, 1] and clamped. The usual recipe of an
    image classifier that must generalise beyond the look of its training set.

    Example:
    ```py
    >>> x = torch.rand(4, 3, 8, 8) * 2 - 1
    >>> y = flip_colour_augment(x, torch.Generator().manual_seed(0))
    >>> y.shape == x.shape, bool(y.min() >= -1) and bool(y.max() <= 1)
    (True, True)

    ```
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, H, W), got shape {tuple(x.shape)}")
    b = x.shape[0]

    def factors():
        return 1.0 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength

    flip = torch.rand(b, generator=generator) < 0.5
    u = (torch.where(flip[:, None, None, None], x.flip(-1), x).float() + 1) / 2
    u = u * factors()
    mean = u.mean(dim=(1, 2, 3), keepdim=True)
    u = (u - mean) * factors() + mean
    grey = u.mean(dim=1, keepdim=True)
    u = ((u - grey) * factors() + grey).clamp(0, 1)
    return (u * 2 - 1).to(x.dtype)


def train_attribute_classifier(images: torch.Tensor, labels: Any, *, names: Sequence[str], epochs: int = 15,
                               batch_size: int = 64, lr: float = 1e-2, seed: int = 0, progress: bool = False,
                               enlarge: int | None = None, augment: bool = False):
    """A multi-label ResNet trained on images ``(N, 3, H, W)`` in [0, 1] with 0/1 ``labels`` ``(N, len(names))``.

    Args:
        enlarge (`int`, *optional*): nearest-neighbour enlargement of the input (default `default_enlarge`).
        augment (`bool`): train with `flip_colour_augment` (the utility classifier's recipe: it is tested on images
            of another look than its training set); False for attackers, which train and test on the same look.

    Returns:
        `ResNetForImageClassification` in eval mode (``config.input_enlarge`` set).
    """
    from ..training.classifier import build_classifier, train_classifier

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32).reshape(len(images), -1)
    if y.shape[1] != len(names):
        raise ValueError(f"labels have {y.shape[1]} columns but {len(names)} names were given")
    k = default_enlarge(images.shape[-1]) if enlarge is None else int(enlarge)
    if k < 1:
        raise ValueError(f"enlarge must be an integer >= 1, got enlarge={enlarge}")
    model = build_classifier(len(names), image_size=int(images.shape[-1]) * k, seed=seed, label_names=list(names))
    model.config.input_enlarge = k
    model.config.train_augment = "flip_colour" if augment else "none"
    return train_classifier(model, enlarge_for(model, images.float() * 2 - 1), y, epochs=epochs,
                            batch_size=batch_size, lr=lr, seed=seed, progress=progress,
                            augment=flip_colour_augment if augment else None)


def predict_labels(model, images: torch.Tensor) -> torch.Tensor:
    """0/1 predictions ``(N, L)`` of a multi-label classifier on images in [0, 1]."""
    from ..training.classifier import predict_logits

    return (predict_logits(model, enlarge_for(model, images.float() * 2 - 1)) > 0).long()


def attribute_accuracies(predictions: Any, labels: Any, names: Sequence[str]) -> dict:
    """Accuracy per attribute of 0/1 ``predictions`` against ``labels`` (both ``(N, len(names))``)."""
    p = np.asarray(predictions).reshape(len(predictions), -1).astype(bool)
    y = np.asarray(labels).reshape(len(labels), -1).astype(bool)
    if p.shape != y.shape or p.shape[1] != len(names):
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must both be (N, {len(names)})")
    return {n: float((p[:, j] == y[:, j]).mean()) for j, n in enumerate(names)}


def utility_report(accuracy: dict, clean_accuracy: dict, attributes: Sequence[str] | None = None) -> dict:
    """Per attribute: accuracy, clean accuracy and ratio; plus the mean accuracy and the mean and minimum ratio.

    Example:
    ```py
    >>> r = utility_report({"smiling": 0.9, "hat": 0.8}, {"smiling": 1.0, "hat": 1.0})
    >>> round(r["mean_accuracy"], 6), round(r["min_ratio"], 6)
    (0.85, 0.8)

    ```
    """
    attributes = list(attributes) if attributes is not None else list(accuracy)
    per = {a: {"accuracy": accuracy[a], "clean_accuracy": clean_accuracy[a],
               "ratio": accuracy[a] / clean_accuracy[a] if clean_accuracy[a] > 0 else float("nan")}
           for a in attributes}
    ratios = [v["ratio"] for v in per.values()]
    return {"per_attribute": per, "mean_accuracy": float(np.mean([v["accuracy"] for v in per.values()])),
            "mean_clean_accuracy": float(np.mean([v["clean_accuracy"] for v in per.values()])),
            "mean_ratio": float(np.mean(ratios)), "min_ratio": float(np.min(ratios))}


def attribute_utility(train_protected: torch.Tensor, train_labels: Any, test_clean: torch.Tensor, test_labels: Any,
                      *, names: Sequence[str], attributes: Sequence[str], train_clean: torch.Tensor | None = None,
                      epochs: int = 8, seed: int = 0, progress: bool = False, augment: bool = True) -> dict:
    """Train on protected images, test on clean ones; compare with training on ``train_clean`` (if given).

    Args:
        names: all label columns of ``train_labels`` / ``test_labels``.
        attributes: the (unprotected) attributes whose utility is reported.
        augment (`bool`): both classifiers train with `flip_colour_augment` (default), the recipe of a data user
            whose model must work on real images; False trains on the images exactly as released.
    """
    yte = np.asarray(test_labels)
    model = train_attribute_classifier(train_protected, train_labels, names=names, epochs=epochs, seed=seed,
                                       progress=progress, augment=augment)
    acc = attribute_accuracies(predict_labels(model, test_clean), yte, names)
    if train_clean is None:
        return {"per_attribute": {a: {"accuracy": acc[a]} for a in attributes},
                "mean_accuracy": float(np.mean([acc[a] for a in attributes]))}
    clean = train_attribute_classifier(train_clean, train_labels, names=names, epochs=epochs, seed=seed,
                                       progress=progress, augment=augment)
    clean_acc = attribute_accuracies(predict_labels(clean, test_clean), yte, names)
    return utility_report(acc, clean_acc, attributes)
