"""Inputs of feature unlearning: the classifier's own preprocessing, its labels, and batch-wise data sources.

Three things a Hub classifier fixes and the unlearning code must follow exactly:

- **Preprocessing** (`make_transform`): the model's `AutoImageProcessor` (resize, crop, rescale, normalise as its
  `preprocessor_config.json` says). A classifier without one needs an explicit `image_size`; it then gets
  `default_image_processor(image_size)`: shortest edge resized to `image_size` (bicubic), centre crop, scaled to
  [-1, 1] -- the convention of the project's own classifiers -- and that processor is saved with the output, so the
  hosted model is preprocessed exactly as it was unlearned.
- **Labels** (`LabelSpec`): single-label (one column whose values are the model's `label2id` names or integer
  ids) or multi-label (one column per output, matched to `id2label` by name); the loss follows
  `config.problem_type` (`dpdiffusion.training.classifier.per_example_loss`).
- **Data access** (`TensorSource`, `DatasetSource`, `RevisedTrainSource`): `source.batch(rows)` decodes and
  preprocesses only the requested rows, so sums over many examples run in bounded memory and with a bounded
  number of open files (each image file is opened, decoded and closed inside one batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..training.classifier import to_pixel_values

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetSource",
    "LabelSpec",
    "RevisedTrainSource",
    "TensorSource",
    "default_image_processor",
    "load_classifier",
    "make_transform",
]


# ----------------------------------------------------------------------------------------------------------------
# Model and processor
# ----------------------------------------------------------------------------------------------------------------
def load_classifier(name_or_path: str, **kwargs) -> tuple[torch.nn.Module, Any]:
    """`AutoModelForImageClassification` and `AutoImageProcessor` (None when the repo has none) of a folder or id.

    Raises:
        OSError: if the model cannot be loaded (missing folder, offline Hub id, `.bin`-only weights).
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:  # no preprocessor_config.json
        logger.info("no image processor found for %s (%s)", name_or_path, err)
        processor = None
    return model, processor


def default_image_processor(image_size: int):
    """The processor of the project's classifiers: shortest edge -> `image_size` (bicubic), centre crop,
    pixel values in [-1, 1] (mean 0.5, std 0.5 after rescaling by 1/255).

    Raises:
        ValueError: if `image_size` is not an integer >= 1.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1, got image_size={image_size!r}")
    try:
        from transformers import BitImageProcessorPil as Processor  # transformers >= 5 without torchvision
    except ImportError:  # pragma: no cover - older transformers
        from transformers import BitImageProcessor as Processor
    size = int(image_size)
    return Processor(
        do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )


def _to_pil_list(images: Any) -> list:
    import PIL.Image

    from ..data.images import to_rgb

    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
            images = np.moveaxis(images, 1, -1)  # (N, 3, H, W) -> (N, H, W, 3)
        return [PIL.Image.fromarray(np.ascontiguousarray(im)) for im in images]
    out = []
    for im in images:
        if isinstance(im, PIL.Image.Image):
            out.append(to_rgb(im))
        else:
            arr = np.asarray(im.cpu() if isinstance(im, torch.Tensor) else im)
            if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
                arr = np.moveaxis(arr, 0, -1)
            out.append(PIL.Image.fromarray(np.ascontiguousarray(arr)))
    return out


def make_transform(image_processor: Any = None) -> Callable[[Any], torch.Tensor]:
    """`transform(images) -> (B, 3, H, W)` float32 pixel values.

    With `image_processor`: PIL images or uint8 arrays go through it exactly (`processor(images=...,
    return_tensors="pt")`); float `(B, 3, H, W)` tensors are taken as pixel values already. Without one:
    `dpdiffusion.training.classifier.to_pixel_values` (uint8 -> [-1, 1], floats unchanged), the behaviour of the
    project's own classifiers.
    """
    if image_processor is None:
        def plain(images):
            if isinstance(images, (list, tuple)):
                images = np.stack([np.asarray(to_rgb_array(im)) for im in images])
            return to_pixel_values(images)

        return plain

    def processed(images):
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images.float()
        pil = _to_pil_list(images)
        return image_processor(images=pil, return_tensors="pt")["pixel_values"].float()

    return processed


def to_rgb_array(image: Any) -> np.ndarray:
    import PIL.Image

    from ..data.images import to_rgb

    if isinstance(image, PIL.Image.Image):
        return np.asarray(to_rgb(image), dtype=np.uint8)
    return np.asarray(image)


# ----------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------
def _is_default_name(name: Any, i: int) -> bool:
    return str(name) == f"LABEL_{i}"


@dataclass
class LabelSpec:
    """How a dataset's columns become the labels of a classifier.

    Attributes:
        problem_type (`str`): `"single_label_classification"`, `"multi_label_classification"` or `"regression"`.
        columns (`list[str]`): the label column (single-label, regression) or one column per output, in output
            order (multi-label).
    """

    problem_type: str
    columns: list[str]
    label2id: dict

    @classmethod
    def from_config(cls, config: Any, *, label_column: str | None = None,
                    label_columns: Sequence[str] | None = None) -> "LabelSpec":
        """Match `label_column` (single-label) or `label_columns` (multi-label) to the model's outputs.

        Raises:
            ValueError: if neither or both are given, if the kind does not match `config.problem_type`, or if a
                multi-label column is not one of the model's `id2label` names (the message lists them).
        """
        if (label_column is None) == (not label_columns):
            raise ValueError("give exactly one of label_column= (single-label: one column of class names or ids) "
                             "and label_columns= (multi-label: one column per output)")
        num_labels = int(config.num_labels)
        id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
        problem_type = getattr(config, "problem_type", None)
        if label_column is not None:
            if problem_type == "multi_label_classification":
                raise ValueError(
                    f"the classifier is multi-label (problem_type='multi_label_classification', {num_labels} outputs): "
                    f"pass label_columns (--label-columns) with one column per output {list(id2label.values())}, "
                    f"not label_column={label_column!r}"
                )
            if problem_type is None:
                problem_type = "regression" if num_labels == 1 else "single_label_classification"
            label2id = {str(v): k for k, v in id2label.items()}
            return cls(problem_type, [str(label_column)], label2id)
        cols = [str(c) for c in label_columns]
        if problem_type in ("single_label_classification", "regression"):
            raise ValueError(
                f"the classifier is {problem_type} ({num_labels} outputs): pass label_column (--label-column) with "
                f"one column of class names {list(id2label.values())} or ids, not label_columns={cols}"
            )
        if len(set(cols)) != len(cols):
            raise ValueError(f"label_columns must not repeat a column, got {cols}")
        names = [str(id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)]
        if all(_is_default_name(n, i) for i, n in enumerate(names)) and len(cols) == num_labels:
            ordered = cols  # unnamed outputs: the columns in output order
        else:
            unknown = [c for c in cols if c not in names]
            if unknown or len(cols) != num_labels:
                raise ValueError(
                    f"label_columns must name each of the classifier's {num_labels} outputs once by its id2label name "
                    f"{names}; got {cols}" + (f" (unknown: {unknown})" if unknown else "") +
                    ("; for a single-label classifier pass label_column (--label-column)" if len(cols) == 1 else "")
                )
            ordered = names
        return cls("multi_label_classification", ordered, {})

    def labels(self, table: dict[str, Sequence[Any]]) -> torch.Tensor:
        """Labels from a column table: `(N,)` int64 class ids, `(N, L)` float 0/1, or `(N,)` float (regression).

        Raises:
            ValueError: naming the column, the number of distinct values that do not map to the model's labels and
                their types, and the first row holding one; never a value (a column may hold personal data).
        """
        if self.problem_type == "multi_label_classification":
            from ..data.attributes import _bool_from_values

            return torch.from_numpy(np.stack(
                [_bool_from_values(np.asarray(table[c]), c) for c in self.columns], axis=1).astype(np.float32))
        col = self.columns[0]
        values = list(table[col])
        if self.problem_type == "regression":
            try:
                return torch.tensor([float(v) for v in values], dtype=torch.float32)
            except (TypeError, ValueError):  # float()'s own message quotes the value
                bad = [(i, v) for i, v in enumerate(values) if not _is_number(v)]
                raise ValueError(f"label column {col!r} must hold numbers for a regression model; "
                                 f"{_describe(bad)}") from None
        num = len(self.label2id) or None
        out = np.empty(len(values), dtype=np.int64)
        unknown, outside = [], []
        for i, v in enumerate(values):
            if isinstance(v, (bool, np.bool_)):
                v = int(v)
            if isinstance(v, str) and v in self.label2id:
                out[i] = self.label2id[v]
            elif isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.lstrip("-").isdigit()):
                out[i] = int(v)
                if num is not None and not 0 <= out[i] < num:
                    outside.append((i, v))
            else:
                unknown.append((i, v))
        if unknown:
            raise ValueError(f"label column {col!r} holds values that are neither one of the classifier's label names "
                             f"{sorted(self.label2id)} nor an integer id: {_describe(unknown)}")
        if outside:
            raise ValueError(f"label column {col!r} holds integer ids outside [0, {num - 1}] (the classifier's labels: "
                             f"{sorted(self.label2id, key=self.label2id.get)}): {_describe(outside)}")
        return torch.from_numpy(out)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _describe(bad: list[tuple[int, Any]]) -> str:
    """Rows holding unusable labels, described without a value: how many distinct values, their types, the first
    row."""
    distinct = len({(type(v).__name__, repr(v)) for _, v in bad})
    types = sorted({type(v).__name__ for _, v in bad})
    return (f"{distinct} distinct such value(s) of type {', '.join(types)}, first at row {bad[0][0]} (values not "
            "shown: the column may hold personal data)")


# ----------------------------------------------------------------------------------------------------------------
# Batch sources
# ----------------------------------------------------------------------------------------------------------------
class TensorSource:
    """In-memory `(images, labels)`; `batch(rows)` preprocesses only `images[rows]`."""

    def __init__(self, images: Any, labels: torch.Tensor, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rows.numpy() if isinstance(self.images, np.ndarray) else rows
        if isinstance(self.images, list):
            images = [self.images[int(i)] for i in rows]
        else:
            images = self.images[idx]
        return self.transform(images), self.labels[rows]


class DatasetSource:
    """A `datasets.Dataset` read lazily: only the rows of one batch are decoded (Arrow is memory-mapped).

    Args:
        dataset (`datasets.Dataset`): with an image column (`datasets.Image` or paths).
        image_column (`str`): the image column.
        labels (`torch.Tensor`): labels of every row (small: computed from the label columns without decoding).
        transform (`Callable`): see `make_transform`.
        rows (`Sequence[int]`, *optional*): a view on these rows of `dataset` (in this order).
    """

    def __init__(self, dataset: Any, image_column: str, labels: torch.Tensor, transform: Callable,
                 rows: Sequence[int] | None = None):
        import datasets

        ds = dataset.select_columns([image_column])
        if not isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image())
        self.dataset, self.image_column, self.transform = ds, image_column, transform
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = labels
        n = len(ds) if self.rows is None else len(self.rows)
        if len(labels) != n:
            raise ValueError(f"DatasetSource got {len(labels)} labels for {n} rows")

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, rows: torch.Tensor) -> list:
        idx = rows.tolist() if self.rows is None else self.rows[rows.numpy()].tolist()
        return self.dataset[idx][self.image_column]

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images(rows)), self.labels[rows]


class RevisedTrainSource:
    """The training set after revision: row j is `revised[k]` where `changed[k] == j`, else `original[j]`."""

    def __init__(self, original: Any, revised: Any, changed: Sequence[int]):
        self.original, self.revised = original, revised
        self.where = {int(j): k for k, j in enumerate(changed)}
        self.labels = original.labels

    def __len__(self) -> int:
        return len(self.original)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rev_pos = [i for i, j in enumerate(rows.tolist()) if j in self.where]
        if not rev_pos:
            return self.original.batch(rows)
        revised_here = set(rev_pos)
        orig_pos = [i for i in range(len(rows)) if i not in revised_here]
        x_r, _ = self.revised.batch(torch.tensor([self.where[int(rows[i])] for i in rev_pos]))
        parts_x = torch.empty((len(rows), *x_r.shape[1:]), dtype=x_r.dtype)
        parts_x[rev_pos] = x_r
        if orig_pos:
            x_o, _ = self.original.batch(rows[orig_pos])
            parts_x[orig_pos] = x_o
        return parts_x, self.labels[rows]


def materialise(source: Any, *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """All of `source` as `(pixel_values, labels)` tensors (for the training baselines, which need every row)."""
    xs = []
    for start in range(0, len(source), batch_size):
        xs.append(source.batch(torch.arange(start, min(start + batch_size, len(source))))[0])
    return torch.cat(xs), source.labels
