"""Small `transformers` image classifiers for the unlearning experiments.

The classifier is a `ResNetForImageClassification` sized for 32-64 px images (about 50k parameters with the
default widths), so that training it from scratch -- the retraining baseline of feature unlearning -- takes
seconds to minutes on a CPU. It saves with `save_pretrained` (safetensors) and loads back with
`AutoModelForImageClassification.from_pretrained(path)`.

Conventions shared with `dpdiffusion.unlearning` and `dpdiffusion.evaluation.unlearning_metrics`:

- images are either `uint8` arrays/tensors of shape `(N, H, W, 3)` (what `dpdiffusion.data.synthfaces` returns)
  or float tensors already shaped `(N, 3, H, W)`; `to_pixel_values` maps the former to `[-1, 1]`.
- labels are `(N, num_labels)` 0/1 (multi-label, binary cross-entropy per label) or `(N,)` class indices
  (single-label, cross-entropy); `per_example_loss` returns one loss per row.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ResNetConfig, ResNetForImageClassification, get_cosine_schedule_with_warmup

logger = logging.getLogger(__name__)

PROBLEM_TYPES = ("multi_label_classification", "single_label_classification", "regression")

__all__ = [
    "build_classifier",
    "train_classifier",
    "to_pixel_values",
    "as_label_tensor",
    "per_example_loss",
    "predict_logits",
    "make_accelerator",
]


# ----------------------------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------------------------
def to_pixel_values(images: Any) -> torch.Tensor:
    """Convert images to the classifier's input: float32 `(N, 3, H, W)` in `[-1, 1]`.

    Args:
        images (`np.ndarray` or `torch.Tensor`):
            `uint8` images `(N, H, W, 3)` or `(N, 3, H, W)`, or float images `(N, 3, H, W)` (returned unchanged
            apart from the dtype).

    Returns:
        `torch.Tensor`: `(N, 3, H, W)` float32.

    Raises:
        ValueError: if `images` is not 4-dimensional with 3 channels.
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim != 4:
        raise ValueError(f"images must be 4-dimensional (N, H, W, 3) or (N, 3, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
        if x.shape[1] != 3:
            raise ValueError(f"images must have 3 channels, got shape {tuple(x.shape)}")
        return x.float().div(127.5).sub(1.0).contiguous()
    if x.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W), got shape {tuple(x.shape)}")
    return x.float()


def as_label_tensor(labels: Any) -> torch.Tensor:
    """Labels as a tensor: float `(N, L)` for multi-label 0/1 (or bool) labels, int64 `(N,)` for class indices."""
    y = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    if y.dtype == torch.bool:
        y = y.float()
    if y.ndim == 1 and not y.is_floating_point():
        return y.long()
    return y.float() if y.ndim >= 2 or y.is_floating_point() else y


def infer_problem_type(config: Any, labels: torch.Tensor) -> str:
    """The model's `config.problem_type`, or transformers' own inference rule when it is unset."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type is not None:
        return problem_type
    if getattr(config, "num_labels", 2) == 1:
        return "regression"
    if labels.ndim == 1 and not labels.is_floating_point():
        return "single_label_classification"
    return "multi_label_classification"


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Per-example training loss, shape `(B,)`: the quantity whose mean the trainer minimises.

    multi-label: binary cross-entropy averaged over labels (transformers' `BCEWithLogitsLoss` is its mean over
    the batch); single-label: cross-entropy; regression: squared error averaged over outputs.
    """
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(dim=-1)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits, labels.long(), reduction="none")
    if problem_type == "regression":
        out = (logits.squeeze(-1) - labels.to(logits.dtype).reshape(logits.squeeze(-1).shape)) ** 2
        return out.reshape(out.shape[0], -1).mean(dim=-1)
    raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got problem_type={problem_type!r}")


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
def build_classifier(
    num_labels: int,
    *,
    image_size: int = 32,
    problem_type: str = "multi_label_classification",
    seed: int = 0,
    label_names: list[str] | None = None,
    hidden_sizes: tuple[int, ...] = (16, 32, 64),
    embedding_size: int = 16,
) -> ResNetForImageClassification:
    """A small ResNet (basic blocks, one per stage) for `image_size` px RGB images.

    The stem (7x7 stride-2 convolution + stride-2 max pool) divides the resolution by 4; the first stage
    downsamples again only for images larger than 32 px, so the last stage sees a 2x2 (32 px) or 4x4 (64 px) map.

    Args:
        num_labels (`int`): number of outputs (labels for multi-label, classes for single-label).
        image_size (`int`): input resolution, 16 to 128.
        problem_type (`str`): `"multi_label_classification"`, `"single_label_classification"` or `"regression"`.
        seed (`int`): seed of the weight initialisation (the global RNG state is left untouched).
        label_names (`list[str]`, *optional*): names stored as `config.id2label`.

    Returns:
        `ResNetForImageClassification` in eval mode.

    Raises:
        ValueError: for a non-positive `num_labels`, an unsupported `image_size` or `problem_type`.
    """
    if int(num_labels) < 1:
        raise ValueError(f"num_labels must be >= 1, got num_labels={num_labels}")
    if not 16 <= int(image_size) <= 128:
        raise ValueError(f"image_size must be in [16, 128], got image_size={image_size}")
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got problem_type={problem_type!r}")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(f"label_names must have num_labels={num_labels} entries, got {len(label_names)}")
    id2label = {i: (label_names[i] if label_names else f"LABEL_{i}") for i in range(num_labels)}
    config = ResNetConfig(
        num_channels=3,
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=[1] * len(hidden_sizes),
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=image_size > 32,
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        problem_type=problem_type,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetForImageClassification(config)
    return model.eval()


def make_accelerator(accelerator: Any = None, mixed_precision: str = "no"):
    """Return `accelerator`, or a new `accelerate.Accelerator(mixed_precision=...)` when it is `None`.

    Raises:
        ValueError: if Accelerate's global state was already initialised with another `mixed_precision`
            (pass your own `accelerator=` then).
    """
    if accelerator is not None:
        return accelerator
    from ..utils_accelerate import make_accelerator as _make

    try:
        return _make(mixed_precision=mixed_precision)
    except ValueError as err:  # AcceleratorState is a process-wide singleton
        raise ValueError(
            f"could not create an Accelerator with mixed_precision={mixed_precision!r} ({err}); "
            "pass accelerator= explicitly"
        ) from err


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: Any, *, batch_size: int = 256) -> torch.Tensor:
    """Logits of `model` (eval mode) on `images`, computed in batches on the model's device; returned on CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        x = to_pixel_values(images[start : start + batch_size]).to(device)
        outs.append(model(pixel_values=x).logits.float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
def train_classifier(
    model: torch.nn.Module,
    images: Any,
    labels: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 1e-4,
    warmup_ratio: float = 0.0,
    accelerator: Any = None,
    mixed_precision: str = "no",
    progress: bool = True,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Train `model` with AdamW on `(images, labels)`; deterministic given `seed` and the initial weights.

    Each epoch visits a permutation of the rows drawn from `torch.Generator().manual_seed(seed + epoch)`; every
    global batch of `batch_size` rows is split across Accelerate processes (`rows[rank::world_size]`), the model
    is prepared by Accelerate (DDP averages the gradients), and the loss is `per_example_loss` averaged over the
    local rows (binary cross-entropy for multi-label, cross-entropy for single-label). The learning rate rises
    linearly from zero over the first `warmup_ratio` of the steps, then follows a cosine decay to zero.

    Args:
        model (`torch.nn.Module`): a `transformers` image-classification model (trained in place).
        images: `uint8 (N, H, W, 3)` or float `(N, 3, H, W)` images.
        labels: `(N, L)` 0/1 labels (multi-label) or `(N,)` class indices.
        epochs (`int`), batch_size (`int`), lr (`float`), seed (`int`): the recipe.
        weight_decay (`float`): AdamW's decoupled weight decay.
        warmup_ratio (`float`): share of the steps, in [0, 1), spent on the linear warm-up (0: none; vision
            transformers trained from scratch need one).
        accelerator (`accelerate.Accelerator`, *optional*): created with `mixed_precision` when omitted.
        progress (`bool`): show a tqdm bar on the main process.
        augment (`callable`, *optional*): ``augment(x, generator)`` maps each training batch of pixel values
            ``(B, 3, H, W)`` in [-1, 1] to an augmented batch of the same shape, drawing its randomness from
            ``generator`` (seeded from `seed` and the process index, so a run is reproducible). None (the default)
            trains on the images as given, which the unlearning updates assume.

    Returns:
        The trained model (unwrapped from any DDP wrapper), in eval mode.

    Raises:
        ValueError: for mismatched `images`/`labels` lengths or non-positive `epochs`, `batch_size`, `lr`.
    """
    from tqdm.auto import tqdm

    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got epochs={epochs}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got lr={lr}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got warmup_ratio={warmup_ratio}")
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images and labels must have the same length, got {n} and {len(labels)}")
    y_all = as_label_tensor(labels)
    problem_type = infer_problem_type(model.config, y_all)

    accelerator = make_accelerator(accelerator, mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    # A hand-written loop rather than `transformers.Trainer`: each global batch is a fixed permutation slice split
    # across processes (`rows[rank::world]`), so a run is reproducible from its seed and sees the same global
    # batches whatever the process count, which the unlearning updates and the retraining baseline rely on.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        # linear warm-up over `warmup_ratio` of the steps, then cosine decay to zero at the last step
        scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=int(warmup_ratio * total_steps),
                                                    num_training_steps=total_steps)
        # the scheduler is not prepared: each process sees a shard of the same global batch, so it must step
        # once per global step (an Accelerate-prepared scheduler steps once per process)
        model, optimizer = accelerator.prepare(model, optimizer)
        device = accelerator.device
        bar = tqdm(
            total=total_steps, desc="train", disable=not progress or not accelerator.is_main_process, leave=False
        )
        aug_gen = torch.Generator().manual_seed(seed * 1_000_003 + 17 + rank) if augment is not None else None
        for epoch in range(epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
            running = 0.0
            for step in range(steps_per_epoch):
                rows = order[step * batch_size : (step + 1) * batch_size][rank::world]
                x = to_pixel_values(images[rows.numpy()] if isinstance(images, np.ndarray) else images[rows])
                y = y_all[rows]
                if augment is not None:
                    x = augment(x, aug_gen)
                x, y = x.to(device), y.to(device)
                with accelerator.autocast():
                    logits = model(pixel_values=x).logits
                    loss = per_example_loss(logits.float(), y, problem_type).mean()
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                running += float(loss.detach())
                bar.update(1)
            logger.info("epoch %d/%d: mean training loss %.4f", epoch + 1, epochs, running / steps_per_epoch)
        bar.close()
    model = accelerator.unwrap_model(model)
    return model.eval()
