"""Shared machinery of feature unlearning: data checks, parameter selection, sharded gradient sums.

Notation (Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023, Sec. 4):

    z_i  = (x_i, y_i)   an original training example that has been revised       (`original[i]`)
    z~_i = (x~_i, y_i)  its revision (same label, protected image)                (`revised[i]`)
    Z    = {z_1..z_n}   the n_changed affected examples; n_train = size of the whole training set
    l(z; theta)         per-example training loss (`per_example_loss` or the caller's `loss_fn`)
    delta = sum_i grad l(z~_i; theta) - sum_i grad l(z_i; theta)                 (`changed_gradient_sum`)

All sums over examples are computed in batches; under Accelerate each process takes the rows
`rank::num_processes`, and the partial sums are added with `accelerator.reduce(..., "sum")`, so the same code
computes the same numbers on one CPU and under `accelerate launch` on several GPUs.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.func import functional_call

from ..training.classifier import as_label_tensor, infer_problem_type, per_example_loss, to_pixel_values

logger = logging.getLogger(__name__)

METHODS = ("first_order", "second_order", "head_exact", "finetune", "retrain")


@dataclass
class UnlearningResult:
    """Outcome of `unlearn`.

    Attributes:
        model: the unlearned model (eval mode).
        method (`str`): `"first_order"`, `"second_order"`, `"head_exact"`, `"finetune"` or `"retrain"`.
        seconds (`float`): wall-clock time of the unlearning step (data preparation included).
        n_changed (`int`): number of revised examples.
        tau (`float`, *optional*): first-order step size, in the units of Warnecke et al. (multiplies the raw
            gradient-difference sum).
        damping (`float`, *optional*): damping lambda added to the Hessian (second order, and the line search
            of the first order).
        n_train (`int`, *optional*): training-set size used to scale the update.
        updated_parameters (`int`): number of scalar parameters the method could change.
        extra (`dict`): method-specific diagnostics (norms, eigenvalue estimate, CG residual, ...).
    """

    model: torch.nn.Module
    method: str
    seconds: float
    n_changed: int
    tau: float | None = None
    damping: float | None = None
    n_train: int | None = None
    updated_parameters: int = 0
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-serialisable dict of everything but the model."""
        out = {k: getattr(self, k) for k in ("method", "seconds", "n_changed", "tau", "damping", "n_train")}
        out["updated_parameters"] = self.updated_parameters
        out.update({k: v for k, v in self.extra.items() if isinstance(v, (int, float, str, bool, type(None)))})
        return out


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
_IMAGE_KEYS = ("pixel_values", "images", "image", "img")
_LABEL_KEYS = ("labels", "label", "y")


def _pick(row: dict, keys: tuple[str, ...], name: str, what: str):
    for k in keys:
        if k in row:
            return row[k]
    raise ValueError(f"{name} rows must have one of the keys {keys} for the {what}, got {sorted(row)}")


def as_image_label_pair(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise a dataset as `(images, labels)` tensors.

    Accepts an `(images, labels)` tuple of arrays/tensors, a dict with image and label columns, a
    `torch.utils.data.Dataset` whose items are `(image, label)` tuples or dicts, or a `datasets.Dataset`.
    Images stay as given (`uint8 (N, H, W, 3)` or float `(N, 3, H, W)`); conversion happens per batch.

    Raises:
        ValueError: naming `name` when the data cannot be read as images and labels.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (dict, tuple)):
        images, labels = data
    elif isinstance(data, dict):
        images, labels = _pick(data, _IMAGE_KEYS, name, "images"), _pick(data, _LABEL_KEYS, name, "labels")
    elif hasattr(data, "column_names") and hasattr(data, "with_format"):  # datasets.Dataset
        cols = data.column_names
        img_col = next((k for k in _IMAGE_KEYS if k in cols), None)
        lab_col = next((k for k in _LABEL_KEYS if k in cols), None)
        if img_col is None or lab_col is None:
            raise ValueError(f"{name} must have an image column {_IMAGE_KEYS} and a label column, got {cols}")
        images = np.stack([np.asarray(im) for im in data[img_col]])
        labels = np.asarray(data[lab_col])
    elif isinstance(data, torch.utils.data.Dataset) or (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        rows = [data[i] for i in range(len(data))]
        if not rows:
            raise ValueError(f"{name} is empty")
        if isinstance(rows[0], dict):
            images = torch.stack([torch.as_tensor(np.asarray(_pick(r, _IMAGE_KEYS, name, "images"))) for r in rows])
            labels = torch.stack([torch.as_tensor(np.asarray(_pick(r, _LABEL_KEYS, name, "labels"))) for r in rows])
        else:
            images = torch.stack([torch.as_tensor(np.asarray(r[0])) for r in rows])
            labels = torch.stack([torch.as_tensor(np.asarray(r[1])) for r in rows])
    else:
        raise ValueError(
            f"{name} must be an (images, labels) pair, a dict, a torch Dataset or a datasets.Dataset, "
            f"got {type(data).__name__}"
        )
    try:
        images = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
        labels = as_label_tensor(labels)
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"{name} must hold numeric images and labels: {err}") from err
    if images.ndim != 4:
        raise ValueError(f"{name} images must be 4-dimensional (N, H, W, 3) or (N, 3, H, W), got {tuple(images.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{name} has {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError(f"{name} is empty")
    return images, labels


Pair = tuple[torch.Tensor, torch.Tensor]


def as_source(data: Any, name: str, *, transform: Callable | None = None, label_spec: Any = None,
              image_column: str | None = None):
    """A batch source (`source.batch(rows) -> (pixel_values, labels)`, `len(source)`, `source.labels`).

    A `datasets.Dataset` is read lazily (`DatasetSource`: a batch decodes only its rows); its labels come from
    `label_spec` (`LabelSpec`) or a `labels`/`label` column. Anything `as_image_label_pair` reads is held in memory
    (`TensorSource`). An object that already has `batch` and `labels` is returned as is.

    Raises:
        ValueError: naming `name` when the data cannot be read as images and labels.
    """
    from .data import DatasetSource, TensorSource, make_transform

    transform = transform or make_transform(None)
    if hasattr(data, "batch") and hasattr(data, "labels") and hasattr(data, "__len__"):
        return data
    if hasattr(data, "column_names") and hasattr(data, "with_format") and hasattr(data, "select_columns"):
        cols = data.column_names
        img_col = image_column or next((k for k in _IMAGE_KEYS if k in cols), None)
        if img_col is None or img_col not in cols:
            raise ValueError(f"{name} must have an image column {image_column or _IMAGE_KEYS}, got {cols}")
        if label_spec is not None:
            missing = [c for c in label_spec.columns if c not in cols]
            if missing:
                raise ValueError(f"{name} has no label columns {missing} (label_column / label_columns); "
                                 f"available columns: {cols}")
            labels = label_spec.labels(data.select_columns(label_spec.columns)[:])
        else:
            lab_col = next((k for k in _LABEL_KEYS if k in cols), None)
            if lab_col is None:
                raise ValueError(f"{name} must have a label column {_LABEL_KEYS} (or pass label_column(s)), got {cols}")
            labels = as_label_tensor(np.asarray(data.select_columns([lab_col])[:][lab_col]))
        if len(labels) == 0:
            raise ValueError(f"{name} is empty")
        return DatasetSource(data, img_col, labels, transform)
    images, labels = as_image_label_pair(data, name)
    return TensorSource(images, labels, transform)


def check_sources_aligned(original: Any, revised: Any) -> None:
    """Row i of `original` and `revised` must be the same example: same length and labels (images: per batch).

    Raises:
        ValueError: if the lengths or labels differ.
    """
    yo, yr = original.labels, revised.labels
    if len(original) != len(revised):
        raise ValueError(
            f"original and revised must have the same length, got len(original)={len(original)}, "
            f"len(revised)={len(revised)}"
        )
    if tuple(yo.shape) != tuple(yr.shape):
        raise ValueError(f"original and revised labels have different shapes {tuple(yo.shape)} and {tuple(yr.shape)}")
    if not torch.equal(yo, yr):
        bad = torch.nonzero((yo != yr).reshape(len(yo), -1).any(dim=1)).flatten()[:5].tolist()
        raise ValueError(
            f"original and revised labels must be equal row by row (same examples), they differ at rows {bad}"
        )


def check_aligned(original: Any, revised: Any) -> tuple[Pair, Pair]:
    """Read `original` and `revised` and check that row i of each is the same example.

    Raises:
        ValueError: if the lengths, image shapes or labels of `original` and `revised` differ.
    """
    xo, yo = as_image_label_pair(original, "original")
    xr, yr = as_image_label_pair(revised, "revised")
    if len(xo) != len(xr):
        raise ValueError(
            f"original and revised must have the same length, got len(original)={len(xo)}, len(revised)={len(xr)}"
        )
    if tuple(xo.shape) != tuple(xr.shape):
        raise ValueError(
            f"original and revised images must have the same shape, got {tuple(xo.shape)} and {tuple(xr.shape)}"
        )
    if tuple(yo.shape) != tuple(yr.shape) or not torch.equal(yo, yr):
        if tuple(yo.shape) != tuple(yr.shape):
            raise ValueError(
                f"original and revised labels have different shapes {tuple(yo.shape)} and {tuple(yr.shape)}"
            )
        bad = torch.nonzero((yo != yr).reshape(len(yo), -1).any(dim=1)).flatten()[:5].tolist()
        raise ValueError(
            f"original and revised labels must be equal row by row (same examples), they differ at rows {bad}"
        )
    return (xo, yo), (xr, yr)


# ----------------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------------
def find_blocks(model: torch.nn.Module) -> list[str]:
    """Qualified names of the model's repeated blocks: the children of its longest `nn.ModuleList`.

    For `ResNetForImageClassification` these are `resnet.encoder.stages.{i}`; for ViT `vit.encoder.layer.{i}`.
    """
    best_name, best_len = None, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > best_len:
            best_name, best_len = name, len(module)
    if best_name is None:
        return []
    return [f"{best_name}.{i}" if best_name else str(i) for i in range(best_len)]


def select_parameters(model: torch.nn.Module, last_k_blocks: int | None) -> list[str]:
    """Names of the parameters an unlearning method may update.

    `last_k_blocks=None`: all parameters. Otherwise every parameter registered from the first parameter of the
    k-th last block (see `find_blocks`) onwards, i.e. the last k blocks plus whatever follows them (final norm,
    classifier head); `last_k_blocks=0` updates only what follows the last block (the head).

    Raises:
        ValueError: if `last_k_blocks` is negative, larger than the number of blocks, or the model has none.
    """
    names = [n for n, _ in model.named_parameters()]
    if last_k_blocks is None:
        return names
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError("last_k_blocks needs a model whose blocks sit in an nn.ModuleList; this model has none")
    k = int(last_k_blocks)
    if not 0 <= k <= len(blocks):
        raise ValueError(
            f"last_k_blocks must be in [0, {len(blocks)}] for this model, got last_k_blocks={last_k_blocks}"
        )
    if k == 0:
        prefix = blocks[-1] + "."
        last = max(i for i, n in enumerate(names) if n.startswith(prefix))
        return names[last + 1 :]
    prefix = blocks[-k] + "."
    first = min(i for i, n in enumerate(names) if n.startswith(prefix))
    return names[first:]


def describe_parameters(model: torch.nn.Module, names: list[str], last_k_blocks: int | None) -> str:
    """A short human-readable name of a parameter subset (for model cards): `"all parameters"` or the blocks
    and modules it covers, e.g. `"vit.encoder.layer.1, vit.layernorm, classifier"`."""
    if last_k_blocks is None:
        return "all parameters"
    blocks = find_blocks(model)
    parts: list[str] = []
    for n in names:
        part = next((b for b in blocks if n.startswith(b + ".")), n.rsplit(".", 1)[0])
        if part not in parts:
            parts.append(part)
    return ", ".join(parts)


class FlatParameters:
    """A flat view of the selected parameters: `theta` as one vector, and back to a name -> tensor dict."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        params = dict(model.named_parameters())
        self.names = list(names)
        self.shapes = [params[n].shape for n in self.names]
        self.numels = [params[n].numel() for n in self.names]
        self.numel = int(sum(self.numels))

    def flatten(self, model: torch.nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1).float() for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(flat, self.numels), self.shapes)}

    @torch.no_grad()
    def add_(self, model: torch.nn.Module, step: torch.Tensor) -> None:
        params = dict(model.named_parameters())
        for n, t in self.unflatten(step).items():
            params[n].add_(t.to(params[n].dtype))


# ----------------------------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------------------------
class Objective:
    """The per-example loss as a function of the flat selected parameters (`torch.func.functional_call`).

    The model runs in eval mode: batch-norm layers use their running statistics, so the loss of an example does
    not depend on the rest of its batch and gradients / Hessian-vector products are exact sums over examples.
    """

    def __init__(self, model: torch.nn.Module, flat: FlatParameters, loss_fn: Callable | None, accelerator: Any):
        self.model, self.flat, self.loss_fn, self.accelerator = model, flat, loss_fn, accelerator
        self.device = accelerator.device
        self.problem_type: str | None = None

    def _logits(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, self.flat.unflatten(theta), (), {"pixel_values": images})
        return out.logits if hasattr(out, "logits") else out[0]

    def _losses(self, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._loss_of_logits(self._logits(theta, images), labels)

    def _loss_of_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is not None:
            losses = self.loss_fn(logits.float(), labels)
            if losses.ndim != 1 or losses.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"loss_fn must return per-example losses of shape (B,)={logits.shape[0]}, got {tuple(losses.shape)}"
                )
            return losses
        if self.problem_type is None:
            self.problem_type = infer_problem_type(self.model.config, labels)
        return per_example_loss(logits.float(), labels, self.problem_type)

    def batch(self, images: Any, labels: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """`(pixel_values, labels)` of `rows` on the device: `batch(source, rows)` or `batch(images, labels, rows)`."""
        if labels is not None and rows is not None:
            x, y = to_pixel_values(images[rows]), labels[rows]
        else:
            x, y = images.batch(labels if rows is None else rows)
        return x.to(self.device), y.to(self.device)

    def shard(self, n: int) -> torch.Tensor:
        """Rows handled by this process."""
        return torch.arange(n)[self.accelerator.process_index :: self.accelerator.num_processes]

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        return t


@contextlib.contextmanager
def differentiable_attention(model: torch.nn.Module):
    """Make every attention implementation support forward-mode AD and double backward, for the duration.

    `torch.func.jvp` (exact HVPs, Gauss-Newton products) has no rule for the fused SDPA kernels
    (`_scaled_dot_product_flash_attention_for_cpu`, flash / memory-efficient CUDA kernels). Inside this context
    `torch.nn.functional.scaled_dot_product_attention` runs its math backend (matmul + softmax, the same function
    up to rounding); a model on another implementation (`flash_attention_2`, `flex_attention`, ...) is switched to
    `"eager"` and timm modules' `fused_attn` is turned off; everything is restored on exit.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) if config is not None else None
    switched = impl not in (None, "eager", "sdpa") and hasattr(model, "set_attn_implementation")
    if switched:
        logger.info("attention implementation %r -> 'eager' for the unlearning update", impl)
        model.set_attn_implementation("eager")
    fused = [m for m in model.modules() if getattr(m, "fused_attn", None) is True]
    for m in fused:
        m.fused_attn = False
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for m in fused:
            m.fused_attn = True
        if switched:
            model.set_attn_implementation(impl)


def _as_pair_source(data: Any):
    from .data import TensorSource, make_transform

    if hasattr(data, "batch"):
        return data
    images, labels = data
    return TensorSource(images, labels, make_transform(None))


def changed_gradient_sum(
    objective: Objective,
    theta: torch.Tensor,
    original: Any,
    revised: Any,
    *,
    batch_size: int,
    progress: bool = True,
    differing_rows: list | None = None,
) -> tuple[torch.Tensor, dict]:
    """delta = sum_i grad l(z~_i) - sum_i grad l(z_i), one backward pass per `batch_size` differing pairs.

    `original` / `revised` are aligned batch sources (`as_source`) or `(images, labels)` pairs; each batch is
    read, preprocessed and dropped, so memory does not grow with the number of pairs. Pairs whose two
    preprocessed images are identical (a revision that left the image unchanged) are skipped: their terms cancel
    exactly.

    `differing_rows`, when given, is extended with this process's rows (indices into `original`) whose images
    differ, the ones that entered delta.

    Returns:
        `(delta, info)` with `delta` flat `(P,)` (all-reduced across processes) and the summed losses of the
        original and revised examples at `theta` in `info`.

    Raises:
        ValueError: if a batch of original and revised images differ in shape.
    """
    from tqdm.auto import tqdm

    orig, rev = _as_pair_source(original), _as_pair_source(revised)
    rows_all = objective.shard(len(orig))
    total = torch.zeros_like(theta)
    stats = torch.zeros(3, device=theta.device, dtype=torch.float64)  # loss sums revised/original, skipped pairs

    def accumulate(x_r, y_r, x_o, y_o):  # reverse mode on theta itself (no functorch transform: ~9 % faster)
        nonlocal total
        b = len(x_r)
        with torch.enable_grad(), objective.accelerator.autocast():
            th = theta.detach().requires_grad_(True)
            losses = objective._losses(th, torch.cat([x_r, x_o]), torch.cat([y_r, y_o]))  # revised, then original
            (g,) = torch.autograd.grad(losses[:b].sum() - losses[b:].sum(), th)
        total += g.float()
        losses = losses.detach()
        stats[:2] += torch.stack([losses[:b].sum(), losses[b:].sum()]).double()

    # differing pairs are buffered to full batches (at most 2 * batch_size pairs held), so a revision that left
    # many images unchanged does not leave the backward passes half empty
    pending: list[tuple[torch.Tensor, ...]] = []
    starts = range(0, len(rows_all), batch_size)
    show = progress and objective.accelerator.is_main_process
    for start in tqdm(starts, desc="gradient sums", disable=not show, leave=False):
        rows = rows_all[start : start + batch_size]
        xb_r, yb_r = objective.batch(rev, rows)
        xb_o, yb_o = objective.batch(orig, rows)
        if xb_r.shape != xb_o.shape:
            raise ValueError(f"original and revised images must have the same shape after preprocessing, got "
                             f"{tuple(xb_o.shape[1:])} and {tuple(xb_r.shape[1:])}")
        differs = (xb_r != xb_o).reshape(len(rows), -1).any(dim=1)
        stats[2] += float((~differs).sum())
        if differing_rows is not None:
            differing_rows.extend(rows[differs.cpu()].tolist())
        if bool(differs.any()):
            pending.append((xb_r[differs], yb_r[differs], xb_o[differs], yb_o[differs]))
        while pending and (sum(len(p[0]) for p in pending) >= batch_size or start + batch_size >= len(rows_all)):
            parts = [torch.cat(t) for t in zip(*pending)]
            pending = [tuple(t[batch_size:] for t in parts)] if len(parts[0]) > batch_size else []
            accumulate(*(t[:batch_size] for t in parts))
    total = objective.reduce_sum(total)
    stats = objective.reduce_sum(stats)
    info = {"loss_sum_revised": float(stats[0]), "loss_sum_original": float(stats[1]),
            "identical_pairs_skipped": int(round(float(stats[2])))}
    return total, info


def hessian_subsample(n: int, size: int, seed: int) -> torch.Tensor:
    """A fixed random subset of `size` row indices out of `n` (all rows when `size >= n`), sorted."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
