"""Loading labelled face datasets (CelebA-style attributes) through `datasets`, checked and normalised.

`load_attribute_dataset` accepts three sources and returns one shape of dataset:

* a Hub dataset name (``datasets.load_dataset(name, split=split)``);
* a local image folder with a metadata file (``metadata.csv``, ``metadata.jsonl`` or ``metadata.parquet``
  with a ``file_name`` column), read by the ``imagefolder`` builder. CelebA's attribute table fits once
  written as ``file_name,5_o_Clock_Shadow,Arched_Eyebrows,...`` with values -1/1 or 0/1;
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``datasets.load_from_disk``).

Attribute columns come back as bool (1 -> True; -1 or 0 -> False), the image column as `datasets.Image`,
and every requested column is checked to exist. `dataset_to_tensors` turns the result into model tensors
(any PIL mode to RGB, centre crop, bicubic resize) and `validate_images` finds rows whose image does not
decode.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# The 40 binary attributes of CelebA (Liu et al. 2015), in the order of list_attr_celeba.txt.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

# SynthFaces attribute -> CelebA column, or None where CelebA has no equivalent label:
# * dark_skin: CelebA has no skin-tone label. `Pale_Skin` marks only very pale faces (about 4 % positive),
#   so `not Pale_Skin` is not "dark skin"; protecting skin tone on real faces needs another labelled source.
# * long_hair: CelebA labels hair colour and texture (`Straight_Hair`, `Wavy_Hair`, `Bald`), not length.
CELEBA_TO_SYNTHFACES = {
    "dark_skin": None,
    "long_hair": None,
    "smiling": "Smiling",
    "eyeglasses": "Eyeglasses",
    "wearing_hat": "Wearing_Hat",
}

# SynthFaces attribute -> CelebA columns that are not its label but carry much of it (a look-alike): published next
# to a release that protects the attribute, one would give much of each person's true value away, so `protect`
# refuses to keep them (``--keep-columns``). `Pale_Skin` marks faces that are not dark-skinned; `Bald` marks heads
# without long hair.
CELEBA_LOOKALIKES = {
    "dark_skin": ("Pale_Skin",),
    "long_hair": ("Bald",),
}

_METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def _check_columns(column_names: Sequence[str], wanted: Sequence[str], argument: str) -> None:
    missing = [c for c in wanted if c not in column_names]
    if missing:
        raise ValueError(f"{argument} names unknown columns {missing}; available columns: {list(column_names)}")


def _bool_from_values(values: np.ndarray, column: str) -> np.ndarray:
    """-1/1, 0/1 or bool values to bool (True iff 1); anything else raises, naming the column, the number of distinct
    values and their types, never a value (a label column may hold names, hometowns or other personal data)."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    if values.dtype.kind in "iuf":
        seen = np.unique(values)  # NaN (a missing label) stays in `seen` and fails both checks
        if np.isin(seen, (-1, 1)).all() or np.isin(seen, (0, 1)).all():
            return values == 1
        distinct, types = len(seen), [values.dtype.name]
    else:
        cells = values.ravel().tolist()
        distinct = len({(type(v).__name__, repr(v)) for v in cells})
        types = sorted({type(v).__name__ for v in cells})
    raise ValueError(
        f"attribute column {column!r} must hold -1/1, 0/1 or bool values; it holds {distinct} distinct value(s) of "
        f"type {', '.join(types)} (values not shown: the column may hold personal data)"
    )


def _is_save_to_disk_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))
    )


def _load_raw(name_or_path: str, split: str, streaming: bool, cache_dir: str | None):
    import datasets

    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        if _is_save_to_disk_folder(path):
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"split must be one of {list(loaded)} for {path!r}, got split={split!r}")
                loaded = loaded[split]
            return loaded.to_iterable_dataset() if streaming else loaded
        if not any(os.path.isfile(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
                   if f in _METADATA_FILES):
            logger.warning("%s has no %s: images load without attribute columns", path, " / ".join(_METADATA_FILES))
        return datasets.load_dataset(
            "imagefolder", data_dir=path, split=split, streaming=streaming, cache_dir=cache_dir
        )
    if os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path):
        raise ValueError(
            f"name_or_path={name_or_path!r} is not a directory: give an image folder with a metadata file, a "
            "save_to_disk folder, or a Hub dataset name"
        )
    return datasets.load_dataset(name_or_path, split=split, streaming=streaming, cache_dir=cache_dir)


def load_attribute_dataset(
    name_or_path: str | os.PathLike,
    *,
    split: str = "train",
    image_column: str = "image",
    attribute_columns: Sequence[str] | None = None,
    identity_column: str | None = None,
    streaming: bool = False,
    cache_dir: str | os.PathLike | None = None,
):
    """Load a labelled image dataset with its attribute columns normalised to bool.

    Args:
        name_or_path (`str` or `os.PathLike`): a Hub dataset name, a local image folder with a metadata file
            (``metadata.csv`` / ``.jsonl`` / ``.parquet`` with ``file_name``), or a ``save_to_disk`` folder.
        split (`str`): the split to load.
        image_column (`str`): the column holding the images; cast to `datasets.Image` if it holds paths.
        attribute_columns (`Sequence[str]`, *optional*): binary attribute columns to normalise (-1/1 and 0/1
            become False/True). By default, every present column named in `CELEBA_ATTRIBUTES` or
            `SYNTHFACES_ATTRIBUTES`; other columns are left as they are.
        identity_column (`str`, *optional*): a column of person identities, checked to exist.
        streaming (`bool`): return a `datasets.IterableDataset`; values are then checked row by row, as they
            are read.
        cache_dir (`str`, *optional*): the `datasets` cache for Hub and image-folder loads (default: the
            `datasets` default cache).

    Returns:
        `datasets.Dataset` (or `datasets.IterableDataset` when streaming).

    Raises:
        ValueError: if a named column does not exist (the message lists the available columns), an attribute
            column holds values other than -1/1, 0/1 or bool (the message names the column, never a value), or
            the path or split does not exist.
    """
    import datasets

    from .synthfaces import SYNTHFACES_ATTRIBUTES

    ds = _load_raw(name_or_path, split, streaming, None if cache_dir is None else os.fspath(cache_dir))
    columns = ds.column_names
    if columns is None:  # streaming without known features: peek at one row
        columns = list(next(iter(ds)).keys())
    _check_columns(columns, [image_column], "image_column")
    if identity_column is not None:
        _check_columns(columns, [identity_column], "identity_column")
    if attribute_columns is None:
        known = set(CELEBA_ATTRIBUTES) | set(SYNTHFACES_ATTRIBUTES)
        attribute_columns = [c for c in columns if c in known]
    else:
        if isinstance(attribute_columns, str):
            attribute_columns = [attribute_columns]
        attribute_columns = list(attribute_columns)
        _check_columns(columns, attribute_columns, "attribute_columns")

    features = ds.features
    if features is None or not isinstance(features.get(image_column), datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image())

    if isinstance(ds, datasets.IterableDataset):
        if attribute_columns:
            def to_bool(example: dict[str, Any]) -> dict[str, Any]:
                return {c: bool(_bool_from_values(np.asarray([example[c]]), c)[0]) for c in attribute_columns}

            features = ds.features
            if features is not None:
                features = datasets.Features({**features, **{c: datasets.Value("bool") for c in attribute_columns}})
            ds = ds.map(to_bool, features=features)
        return ds

    order = list(ds.column_names)
    for c in attribute_columns:
        if ds.features[c] == datasets.Value("bool"):
            continue
        values = ds.with_format("numpy", columns=[c])[:][c]
        ds = ds.remove_columns(c).add_column(c, _bool_from_values(values, c), feature=datasets.Value("bool"))
    return ds.select_columns(order) if list(ds.column_names) != order else ds


def _open_image(value: Any):
    """Open and fully decode one ``{"bytes", "path"}`` cell; raises on missing, truncated or corrupt data."""
    from PIL import Image, ImageFile

    if value is None:
        raise ValueError("no image")
    if isinstance(value, Image.Image):
        value.load()
        return value
    data, path = value.get("bytes"), value.get("path")
    source = io.BytesIO(data) if data is not None else path
    if source is None:
        raise ValueError("no bytes and no path")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whatever a caller set globally
    try:
        with Image.open(source) as probe:
            probe.verify()
        if data is not None:
            source = io.BytesIO(data)
        image = Image.open(source)
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return image


def _undecoded(dataset, image_column: str):
    import datasets

    column_names = dataset.column_names
    if column_names is not None:
        _check_columns(column_names, [image_column], "image_column")
    return dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))


def validate_images(dataset, image_column: str = "image") -> list[tuple[int, str]]:
    """Decode every image fully and report the rows that fail.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): the dataset to check.
        image_column (`str`): the image column.

    Returns:
        `list[tuple[int, str]]`: ``(row_index, reason)`` for each image that is missing, truncated or corrupt;
        empty when all decode.

    Raises:
        ValueError: if `image_column` does not exist.
    """
    bad: list[tuple[int, str]] = []
    for i, row in enumerate(_undecoded(dataset, image_column)):
        try:
            _open_image(row[image_column])
        except Exception as err:  # noqa: BLE001 - the reason is the report
            bad.append((i, f"{type(err).__name__}: {err}"))
    return bad


def dataset_to_tensors(
    dataset,
    *,
    image_size: int,
    image_column: str = "image",
    attribute_columns: Sequence[str],
):
    """Images and labels as float tensors for training and evaluation.

    Every image is converted to RGB from any PIL mode (L, RGBA and P with transparency composited on white,
    16-bit greyscale rescaled), centre-cropped to a square and resized with bicubic filtering.

    Args:
        dataset (`datasets.Dataset`): e.g. from `load_attribute_dataset`.
        image_size (`int`): output side in pixels, >= 1.
        image_column (`str`): the image column.
        attribute_columns (`Sequence[str]`): label columns (bool, or -1/1 / 0/1 values), in output order.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: images float32 (N, 3, image_size, image_size) in [-1, 1] and
        labels float32 (N, k) in {0, 1}.

    Raises:
        ValueError: for a bad `image_size`, unknown columns, non-binary labels or an image that does not decode
            (the message gives the row).
    """
    import torch

    from .images import resize_square, to_rgb

    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1, got image_size={image_size!r}")
    if isinstance(attribute_columns, str):
        attribute_columns = [attribute_columns]
    attribute_columns = list(attribute_columns)
    _check_columns(dataset.column_names, [image_column] + attribute_columns, "image_column/attribute_columns")

    n = len(dataset)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for i, row in enumerate(_undecoded(dataset, image_column)):
        try:
            image = _open_image(row[image_column])
        except Exception as err:
            raise ValueError(f"image in row {i} does not decode: {type(err).__name__}: {err}") from err
        images[i] = np.asarray(resize_square(to_rgb(image), image_size), dtype=np.uint8)
    labels = np.zeros((n, len(attribute_columns)), dtype=np.float32)
    if attribute_columns:
        table = dataset.with_format("numpy", columns=attribute_columns)[:]
        for k, c in enumerate(attribute_columns):
            labels[:, k] = _bool_from_values(table[c], c)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (N, 3, H, W)
    return x.contiguous(), torch.from_numpy(labels)
