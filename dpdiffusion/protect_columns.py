"""Which input columns a ``dpdiffusion protect`` release may publish (``keep_columns``), checked before anything is
written, and the one JSON encoder of its records.

A kept column is copied next to each protected image in the published ``metadata.jsonl``; it must not publish what
the image hides, the original image, or a key that re-renders it. ``check_keep_columns`` refuses, naming each column
and the reason (column names only, never a cell's value):

* **by name**: a protected attribute's column however it is spelt (names compared as ``column_key`` reads them:
  Unicode NFKC, casefolded, every character that is not a letter or a digit dropped, so ``dark.skin``, ``Dark-Skin``,
  ``ｄａｒｋ＿ｓｋｉｎ`` and ``dark\\u200bskin`` are all ``darkskin``), a name that *contains* a protected attribute's
  (``Is_Dark_Skin``, ``darkskinned``), a CelebA look-alike of a protected SynthFaces attribute
  (``CELEBA_LOOKALIKES``: ``Pale_Skin`` for ``dark_skin``), ``identity`` and ``seed``, the image column, a name the
  record uses itself, an unknown column;
* **by type** (the dataset's features): anything holding an image or other media anywhere (nested in lists or
  structs), raw bytes (``Value("binary")``), a struct with a ``bytes`` or ``path`` field (an image cell's layout);
* **by content** (one pass over the source's metadata, images never decoded, memory bounded by the number of
  distinct values tracked): when a protected attribute's own column is in the source, any column whose values are a
  one-to-one relabelling of it over the released rows (equal, negated, or any bijection between the two value sets,
  e.g. ``skin`` = ``"dark"``/``"light"``): it would publish the protected partition under other names. The same
  pass refuses values a JSON record cannot carry as they are (bytes, images), where the features did not say.

Not caught: a column that reveals a protected attribute only in part (a correlate, or a finer label that determines
it, e.g. a 6-level skin-type scale), a translated or homoglyph name when the protected column itself is not in the
source. Keep only columns whose meaning you know.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
import unicodedata
from typing import Any

import numpy as np

# Never kept, whatever the dataset: a person's identity label links their releases to each other, and SynthFaces'
# generator keys `identity` and `seed` (with the row's index, which every record carries) re-render the original.
NEVER_KEPT_COLUMNS = ("identity", "seed")
# Keys of every published record besides the privacy figures (a kept column may not overwrite them).
RECORD_KEYS = ("index", "file_name", "faces")
# Distinct values tracked per (kept column, protected column) pair by the content check; past it only equality and
# negation are checked, so memory stays bounded whatever the dataset size.
MAX_TRACKED_VALUES = 10_000
_MEDIA_FEATURES = ("Image", "Audio", "Video", "Pdf", "Nifti")


def column_key(name: str) -> str:
    """A column name compared as a person reads it: Unicode NFKC (fullwidth letters are letters), casefolded, and
    every character that is not a letter or a digit dropped (``_``, ``-``, ``.``, spaces, zero-width characters).

    >>> [column_key(n) for n in ("Dark-Skin", "dark.skin", "\\uff44\\uff41\\uff52\\uff4b_skin", "Is_Dark_Skin")]
    ['darkskin', 'darkskin', 'darkskin', 'isdarkskin']
    """
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return re.sub(r"[\W_]+", "", text)


def protected_column_keys(pipe, spec) -> dict[str, tuple[str, str]]:
    """``column_key`` -> ``(attribute, how)`` for every attribute this release protects: the spec's attributes (with
    ``scope="latent"``, where the whole image is the protected unit, every attribute of the model), under their own
    name and their CelebA / SynthFaces counterpart (``how="own"``), and their CelebA look-alikes (``how="lookalike"``,
    ``CELEBA_LOOKALIKES``)."""
    from .data.attributes import CELEBA_LOOKALIKES, CELEBA_TO_SYNTHFACES

    names = list(spec.attributes)
    directions = getattr(pipe, "attribute_directions", None)
    if spec.scope == "latent" and directions is not None:
        names += [n for n in directions.names if n not in names]
    keys: dict[str, tuple[str, str]] = {}
    for name in names:
        synthfaces = next((s for s, c in CELEBA_TO_SYNTHFACES.items() if c == name), name)
        for alias in (name, synthfaces, CELEBA_TO_SYNTHFACES.get(synthfaces)):
            if alias and column_key(alias):
                keys.setdefault(column_key(alias), (name, "own"))
        for alias in CELEBA_LOOKALIKES.get(synthfaces, ()):
            keys.setdefault(column_key(alias), (name, "lookalike"))
    return keys


def media_reason(feature) -> str | None:
    """Why a column of this `datasets` feature may hold the original image (or other media), or ``None``."""
    import datasets

    media = tuple(getattr(datasets, n) for n in _MEDIA_FEATURES if hasattr(datasets, n))
    if isinstance(feature, media):
        return f"it holds {type(feature).__name__} data: the original image"
    if isinstance(feature, datasets.Value) and "binary" in str(feature.dtype):
        return "a binary column: raw bytes, such as an original image file"
    if isinstance(feature, dict):
        if {"bytes", "path"} & set(feature):
            return "a struct with a bytes or path field: an image cell's contents or its source path"
        return next((r for r in map(media_reason, feature.values()) if r), None)
    if isinstance(feature, (list, tuple)):
        return next((r for r in map(media_reason, feature) if r), None)
    inner = getattr(feature, "feature", None)  # List, LargeList, Sequence
    return media_reason(inner) if inner is not None else None


def jsonable(value: Any):
    """``value`` as JSON types: numpy scalars and arrays, dates and times (ISO 8601), durations (seconds) and
    decimals (their text) are converted; anything else that JSON cannot hold is refused (never written as its
    ``str()``, which for bytes would publish them).

    Raises:
        TypeError: naming the type only (never the value): bytes, images and unknown objects.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        if isinstance(value, (np.bool_, np.integer, np.floating)):
            return value.item()
        if isinstance(value, np.datetime64):
            return str(np.datetime_as_string(value))
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "SVa":
            return [jsonable(v) for v in value.tolist()]
    elif isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    elif isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: jsonable(v) for k, v in value.items()}
    elif isinstance(value, (datetime.date, datetime.time)):  # datetime.datetime is a date
        return value.isoformat()
    elif isinstance(value, datetime.timedelta):
        return value.total_seconds()
    elif isinstance(value, decimal.Decimal):
        return str(value)
    kind = type(value)
    raise TypeError(f"a value of type {kind.__module__}.{kind.__qualname__} cannot be written to a JSON record")


def _value_reason(value: Any) -> str | None:
    """Why a cell may not be published as it is (bytes, an image, an image cell), or ``None``."""
    if value is None or type(value) in (str, bool, int, float):
        return None
    if isinstance(value, dict):
        if {"bytes", "path"} & set(value):
            return "it holds structs with a bytes or path field: an image cell's contents or its source path"
        return next((r for r in map(_value_reason, value.values()) if r), None)
    if isinstance(value, (list, tuple)):
        return next((r for r in map(_value_reason, value) if r), None)
    try:
        jsonable(value)
    except TypeError:
        return (f"it holds {type(value).__name__} values, which a JSON record cannot carry (raw bytes or an image: "
                "the original)")
    return None


def _hashable(value: Any):
    """A dictionary key for a cell (lists and structs by their JSON text, every NaN one key); never shown."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return json.dumps(value, sort_keys=True, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else repr(o))
    return value


def _negates(a: Any, b: Any) -> bool:
    if isinstance(a, bool) and isinstance(b, bool):
        return a != b
    numbers = (int, float)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool) \
        and a == -b


class _Relabelling:
    """Streams the rows of a (kept column, protected column) pair; says whether one is a one-to-one relabelling of
    the other: a bijection between their value sets (both maps kept while at most ``MAX_TRACKED_VALUES`` distinct
    values), else equal or negated row by row. A protected column with a single value is not a partition: no."""

    __slots__ = ("backward", "equal", "forward", "negated", "overflow")

    def __init__(self):
        self.forward: dict | None = {}
        self.backward: dict | None = {}
        self.overflow, self.equal, self.negated = False, True, True

    @property
    def alive(self) -> bool:
        return self.forward is not None or (self.overflow and (self.equal or self.negated))

    def add(self, kept: Any, protected: Any) -> None:
        k, p = _hashable(kept), _hashable(protected)
        self.equal = self.equal and k == p
        self.negated = self.negated and _negates(kept, protected)
        if self.forward is not None:
            if self.forward.setdefault(p, k) != k or self.backward.setdefault(k, p) != p:
                self.forward = self.backward = None  # not a function one way or the other: no bijection
            elif len(self.forward) > MAX_TRACKED_VALUES:
                self.forward = self.backward = None
                self.overflow = True

    def verdict(self) -> bool:
        if self.forward is not None:
            return len(self.forward) >= 2
        return self.overflow and (self.equal or self.negated)


def check_keep_columns(keep_columns: list[str], columns: list[str], features: dict, *, image_column: str,
                       protected: dict[str, tuple[str, str]], figures: dict, rows=None) -> list[str]:
    """The columns of ``keep_columns``, checked against the source before anything is written.

    Args:
        keep_columns (`list[str]`): the columns asked for.
        columns (`list[str]`), features (`dict`): the source's columns and their `datasets` features (may be empty
            when a stream does not say).
        image_column (`str`): the source's image column.
        protected (`dict`): `protected_column_keys`.
        figures (`dict`): the privacy figures each record carries.
        rows (`Callable[[list[str]], Iterable[dict]]`, *optional*): the source's released rows restricted to the
            given columns (images not decoded), for the content check; without it only names and types are checked.

    Returns:
        `list[str]`: the kept columns, each once, in the order asked.

    Raises:
        ValueError: naming ``keep_columns``, each refused column with the reason, and the columns it may name (column
        names only: never a cell's value).
    """
    import datasets

    keys = {c: column_key(c) for c in columns}

    def name_reason(column: str) -> str | None:
        key = column_key(column)
        if column not in columns:
            return "not a column of the source"
        if key in protected and protected[key][1] == "own":
            return (f"the column of the protected attribute {protected[key][0]!r}: it would publish each person's true "
                    "value next to the image that hides it")
        for pkey, (attribute, how) in protected.items():
            if how == "lookalike" and pkey in key:
                return (f"a CelebA look-alike of the protected attribute {attribute!r}, which carries much of it: it "
                        "would publish much of each person's true value next to the image that hides it")
            if how == "own" and pkey in key:
                return (f"named after the protected attribute {attribute!r}: its name contains that attribute's, "
                        "letters and digits compared, so it would publish each person's true value next to the image")
        if key in NEVER_KEPT_COLUMNS:
            return ("identity and seed are never kept: an identity links a person's releases, and SynthFaces' "
                    "identity and seed re-render the original image")
        if column == image_column:
            return "an image column: the original image"
        media = media_reason(features.get(column))
        if media:
            return media
        if column in RECORD_KEYS or column in figures:
            return "a name each record uses itself"
        return None

    reasons = {c: name_reason(c) for c in dict.fromkeys([*keep_columns, *columns])}
    allowed = [c for c in columns if reasons[c] is None]
    refused = [c for c in dict.fromkeys(keep_columns) if reasons[c] is not None]
    references = [c for c in columns if any(how == "own" and pkey in keys[c] for pkey, (_, how) in protected.items())]
    # a pass over the rows: to compare contents with a protected column, or to see cells whose type is not declared
    # (also after a refusal by name, so that the message lists only what may really be kept)
    undeclared = [c for c in keep_columns if reasons[c] is None
                  and not isinstance(features.get(c), (datasets.Value, datasets.ClassLabel))]
    if rows is not None and allowed and (references or undeclared):
        content = _scan(rows, allowed, references, protected, keys)
        reasons.update(content)
        allowed = [c for c in allowed if c not in content]
        refused = [c for c in dict.fromkeys(keep_columns) if reasons[c] is not None]
    if refused:
        raise ValueError(f"keep_columns may not name {'; '.join(f'{c!r} ({reasons[c]})' for c in refused)}; the "
                         f"columns keep_columns may name are {allowed}")
    return list(dict.fromkeys(keep_columns))


def _scan(rows, candidates: list[str], references: list[str], protected, keys) -> dict[str, str]:
    """One pass over the rows (``candidates`` and ``references`` only): the candidates that are a one-to-one
    relabelling of a protected attribute's column, or hold values a record cannot carry, with the reason."""
    pairs = {(c, r): _Relabelling() for c in candidates for r in references if r != c}
    bad: dict[str, str] = {}
    for row in rows([*dict.fromkeys([*candidates, *references])]):
        for c in candidates:
            if c not in bad:
                why = _value_reason(row.get(c))
                if why:
                    bad[c] = why
        for (c, r), pair in list(pairs.items()):
            pair.add(row.get(c), row.get(r))
            if not pair.alive:
                del pairs[(c, r)]
    for (c, r), pair in pairs.items():
        if c not in bad and pair.verdict():
            attribute = next(a for pkey, (a, how) in protected.items() if how == "own" and pkey in keys[r])
            bad[c] = (f"a one-to-one relabelling of the column {r!r} of the protected attribute {attribute!r} over the "
                      "released rows: it would publish each person's true value under other names")
    return bad
