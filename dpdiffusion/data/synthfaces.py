"""SynthFaces: procedural cartoon faces with ground-truth attributes, identities and counterfactuals.

Every image is a pure function of a small parameter record (`sample_face_params`), and the renderer
(`render_faces`) is vectorised numpy over the whole batch and pixel grid, so 10,000 faces at 32 px take a
few seconds on one CPU core. Because the parameters are explicit, any attribute can be flipped while every
other parameter stays bit-identical (`render_counterfactual`): the exact "attribute-neighbour" pairs that
privacy audits and unlearning experiments need.

Attributes (all booleans, each Bernoulli(0.5), mutually independent):

| attribute     | level    | what changes in the image                                            |
|---------------|----------|----------------------------------------------------------------------|
| `dark_skin`   | identity | skin tone from a dark range instead of a light one (see below)       |
| `long_hair`   | identity | hair falls beside the face down to the shoulders (else a short cap)  |
| `smiling`     | image    | open, wider mouth curved up at the corners (else a flat line)        |
| `eyeglasses`  | image    | two rims, a bridge and temples over the eyes                         |
| `wearing_hat` | image    | a hat (crown, band and brim) on top of the head, random colour       |

Identity-level parameters (face geometry, hair colour, skin shade, `dark_skin`, `long_hair`) are a
function of ``(seed, identity)`` only; image-level parameters (pose, scale, lighting, background, clothes,
expression jitter, `smiling`, `eyeglasses`, `wearing_hat`) are a function of ``(seed, index)`` only. Both
are drawn from a counter-based generator (SplitMix64 keyed by seed, stream, key and parameter name), so a
row's parameters can be re-created from its ``index``, ``identity`` and ``seed`` alone, after any
shuffle, `select` or `train_test_split` of the dataset (`params_for_dataset`). Identities are assigned to
image indices as a seeded, balanced permutation: every identity gets ``num_images // num_identities`` or
one more images.

The light and dark base skin ranges do not overlap, but scene lighting (a directional gradient of up to
+-18 %) and exposure (0.9 to 1.07) modulate every pixel, so single pixels of the two classes can overlap and
telling them apart takes looking at the face. Pose (offset, in-plane rotation, a yaw-like shift of the
features), scale, background colour and gradient, shirt, hair colour and expression jitter all vary.

Example:

>>> from dpdiffusion.data.synthfaces import make_synthfaces_arrays, render_counterfactual
>>> images, params = make_synthfaces_arrays(8, image_size=32, seed=0)
>>> images.shape, images.dtype
((8, 32, 32, 3), dtype('uint8'))
>>> pairs = render_counterfactual(params, "dark_skin", image_size=32)  # same faces, skin tone flipped
"""

from __future__ import annotations

import io
import logging
import zlib
from typing import Any

import numpy as np

from .synthfaces_render import render_chunk

logger = logging.getLogger(__name__)

SYNTHFACES_ATTRIBUTES = ("dark_skin", "long_hair", "smiling", "eyeglasses", "wearing_hat")
DEFAULT_PROTECTED_ATTRIBUTES = ("dark_skin", "long_hair")
IDENTITY_ATTRIBUTES = ("dark_skin", "long_hair")
IMAGE_ATTRIBUTES = ("smiling", "eyeglasses", "wearing_hat")

# Continuous parameters: name -> (low, high) of a uniform draw. Geometry is in image units (the image is
# the unit square) at scale 1. Order does not matter: each parameter has its own random stream.
_IDENTITY_RANGES = {
    "face_width": (0.195, 0.245),  # half-width of the face ellipse
    "face_height": (0.255, 0.305),  # half-height of the face ellipse
    "eye_spacing": (0.078, 0.100),  # half the distance between the eye centres
    "eye_size": (0.024, 0.034),
    "nose_length": (0.045, 0.085),
    "mouth_width": (0.060, 0.085),  # half-width of the neutral mouth
    "skin_shade": (0.0, 1.0),  # position within the light or dark skin range
    "hair_volume": (1.0, 1.12),
    "hair_part": (-1.0, 1.0),
    "chin_taper": (0.05, 0.25),
}
_IMAGE_RANGES = {
    "offset_x": (-0.06, 0.06),
    "offset_y": (-0.04, 0.04),
    "rotation": (-0.16, 0.16),  # radians, in the image plane
    "yaw": (-0.12, 0.12),  # horizontal shift of the features, in face widths
    "scale": (0.86, 1.08),
    "light_angle": (0.0, 2.0 * np.pi),
    "light_strength": (0.0, 0.18),
    "exposure": (0.9, 1.07),
    "bg_angle": (0.0, 2.0 * np.pi),
    "bg_strength": (0.0, 0.35),
    "eye_open": (0.65, 1.0),
    "brow_raise": (-0.008, 0.012),
    "brow_tilt": (-0.01, 0.01),
    "mouth_jitter": (-0.006, 0.006),  # curvature of the neutral mouth / extra smile depth
    "mouth_offset": (-0.012, 0.012),
    "hat_height": (0.03, 0.09),  # crown height above the top of the hair
}
_RGB_IDENTITY = ("hair",)  # hair_r, hair_g, hair_b
_RGB_IMAGE = ("bg", "shirt", "hat", "glasses")

_HAIR_PALETTE = np.array(
    [
        [0.07, 0.06, 0.05],  # black
        [0.24, 0.15, 0.08],  # dark brown
        [0.46, 0.30, 0.16],  # brown
        [0.86, 0.71, 0.42],  # blonde
        [0.63, 0.27, 0.11],  # red
        [0.62, 0.62, 0.64],  # grey
    ]
)
# Skin ranges (RGB at shade 0 and shade 1). The two ranges do not overlap in any channel's luminance.

_STREAM_IDENTITY = 0x1D
_STREAM_IMAGE = 0x1A
_STREAM_ASSIGN = 0xA5


# ----------------------------------------------------------------------------------------------------
# Counter-based random numbers
# ----------------------------------------------------------------------------------------------------


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _to_u64(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64)
    return arr.astype(np.uint64)  # two's complement for negative seeds


def _uniform(seed: np.ndarray, stream: int, key: np.ndarray, name: str) -> np.ndarray:
    """U[0, 1) per element, a pure function of (seed, stream, key, name); float64, shape of key."""
    name_hash = np.uint64(zlib.crc32(name.encode("utf-8")))
    z = _splitmix64(_to_u64(seed) ^ np.uint64(stream << 56))
    z = _splitmix64(z ^ _to_u64(key))
    z = _splitmix64(z ^ name_hash)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


# ----------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------


def _validate_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def _assign_identities(num_images: int, num_identities: int, seed: int) -> np.ndarray:
    """Balanced, seeded assignment: a random permutation of ``arange(num_images) % num_identities``."""
    keys = np.arange(num_images, dtype=np.int64)
    order = np.argsort(_uniform(np.full(num_images, seed), _STREAM_ASSIGN, keys, "assign"), kind="stable")
    identity = np.empty(num_images, dtype=np.int64)
    identity[order] = keys % num_identities
    return identity


def _params_from_keys(index: np.ndarray, identity: np.ndarray, seed: np.ndarray) -> dict[str, np.ndarray]:
    index = np.asarray(index, dtype=np.int64)
    identity = np.asarray(identity, dtype=np.int64)
    seed = np.broadcast_to(np.asarray(seed, dtype=np.int64), index.shape)
    params: dict[str, np.ndarray] = {"index": index.copy(), "identity": identity.copy(), "seed": seed.copy()}

    def ident(name: str) -> np.ndarray:
        return _uniform(seed, _STREAM_IDENTITY, identity, name)

    def image(name: str) -> np.ndarray:
        return _uniform(seed, _STREAM_IMAGE, index, name)

    for name, (lo, hi) in _IDENTITY_RANGES.items():
        params[name] = lo + (hi - lo) * ident(name)
    hair_idx = np.minimum((ident("hair_palette") * len(_HAIR_PALETTE)).astype(np.int64), len(_HAIR_PALETTE) - 1)
    for c, channel in enumerate("rgb"):
        jitter = 0.08 * (ident(f"hair_{channel}") - 0.5)
        params[f"hair_{channel}"] = np.clip(_HAIR_PALETTE[hair_idx, c] + jitter, 0.0, 1.0)
    for name in IDENTITY_ATTRIBUTES:
        params[name] = ident(name) < 0.5

    for name, (lo, hi) in _IMAGE_RANGES.items():
        params[name] = lo + (hi - lo) * image(name)
    for part in _RGB_IMAGE:
        lo, hi = {"bg": (0.08, 0.95), "shirt": (0.1, 0.9), "hat": (0.05, 0.95), "glasses": (0.0, 0.45)}[part]
        for channel in "rgb":
            params[f"{part}_{channel}"] = lo + (hi - lo) * image(f"{part}_{channel}")
    for name in IMAGE_ATTRIBUTES:
        params[name] = image(name) < 0.5
    return params


def sample_face_params(num_images: int, *, num_identities: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw the parameters of `num_images` faces.

    Args:
        num_images (`int`): number of faces, >= 1.
        num_identities (`int`, *optional*): number of distinct people, in [1, num_images]. Defaults to
            ``max(1, num_images // 10)``.
        seed (`int`): the seed; identical arguments give bit-identical parameters.

    Returns:
        `dict[str, np.ndarray]`: one array of length `num_images` per parameter: ``index`` (0..N-1),
        ``identity`` and ``seed`` (int64), one bool array per name in `SYNTHFACES_ATTRIBUTES`, and float64
        arrays for geometry, pose, lighting and colours. Image ``i``'s image-level parameters depend only on
        ``(seed, i)``; its identity-level parameters only on ``(seed, identity[i])``.

    Raises:
        ValueError: if `num_images` < 1, `num_identities` is outside [1, num_images] or `seed` is not an int64.
    """
    num_images = _validate_count("num_images", num_images, 1)
    if num_identities is None:
        num_identities = max(1, num_images // 10)
    num_identities = _validate_count("num_identities", num_identities, 1)
    if num_identities > num_images:
        raise ValueError(
            f"num_identities must be in [1, num_images={num_images}], got num_identities={num_identities}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [-2**63, 2**63) (an int64), got seed={seed!r}")
    identity = _assign_identities(num_images, num_identities, int(seed))
    return _params_from_keys(np.arange(num_images, dtype=np.int64), identity, np.int64(seed))


def _check_params(params: dict[str, np.ndarray]) -> int:
    missing = [k for k in _REQUIRED_KEYS if k not in params]
    if missing:
        raise ValueError(f"params is missing keys {missing}; build it with sample_face_params()")
    lengths = {len(np.atleast_1d(params[k])) for k in _REQUIRED_KEYS}
    if len(lengths) != 1:
        raise ValueError(f"all params arrays must have the same length, got lengths {sorted(lengths)}")
    return lengths.pop()


_REQUIRED_KEYS = (
    tuple(_IDENTITY_RANGES)
    + tuple(_IMAGE_RANGES)
    + tuple(f"{part}_{c}" for part in _RGB_IDENTITY + _RGB_IMAGE for c in "rgb")
    + SYNTHFACES_ATTRIBUTES
)


def _validate_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got image_size={image_size!r}")
    return int(image_size)


def render_faces(params: dict[str, np.ndarray], *, image_size: int = 32) -> np.ndarray:
    """Render faces from their parameters.

    Args:
        params (`dict[str, np.ndarray]`): as returned by `sample_face_params` (or `params_for_dataset`).
        image_size (`int`): side of the square images in pixels, >= 16.

    Returns:
        `np.ndarray`: uint8 images of shape (N, image_size, image_size, 3). Each image depends only on its
        own parameters, never on the rest of the batch.

    Raises:
        ValueError: if `image_size` < 16 or `params` lacks keys or has arrays of different lengths.
    """
    image_size = _validate_image_size(image_size)
    n = _check_params(params)
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    chunk = max(1, (1 << 16) // (image_size * image_size))  # 64 K pixels at a time: float maps stay in cache
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        out[sl] = render_chunk(params, sl, image_size)
    return out


def render_counterfactual(
    params: dict[str, np.ndarray], attribute: str, *, image_size: int = 32, value: Any = None
) -> np.ndarray:
    """Render the same faces with one attribute flipped (or set), every other parameter identical.

    Args:
        params (`dict[str, np.ndarray]`): face parameters from `sample_face_params`.
        attribute (`str`): one of `SYNTHFACES_ATTRIBUTES`.
        image_size (`int`): side of the square images in pixels, >= 16.
        value (`bool` or array of `bool`, *optional*): the value to set, broadcast to all faces; by default
            the attribute is flipped for every face.

    Returns:
        `np.ndarray`: uint8 images (N, image_size, image_size, 3). ``render_counterfactual(params, a)`` and
        ``render_faces(params)`` form attribute-neighbour pairs; use `counterfactual_params` for the
        parameters themselves.

    Raises:
        ValueError: if `attribute` is not a SynthFaces attribute, or `value` cannot broadcast to N.
    """
    return render_faces(counterfactual_params(params, attribute, value=value), image_size=image_size)


def counterfactual_params(
    params: dict[str, np.ndarray], attribute: str, *, value: Any = None
) -> dict[str, np.ndarray]:
    """A copy of `params` with `attribute` flipped (or set to `value`); every other array is an equal copy.

    Raises:
        ValueError: if `attribute` is not in `SYNTHFACES_ATTRIBUTES` or `value` does not broadcast to N.
    """
    if attribute not in SYNTHFACES_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {list(SYNTHFACES_ATTRIBUTES)}, got attribute={attribute!r}")
    n = _check_params(params)
    new = {k: np.array(v, copy=True) for k, v in params.items()}
    current = np.asarray(params[attribute], dtype=bool)
    if value is None:
        new[attribute] = ~current
    else:
        try:
            new[attribute] = np.broadcast_to(np.asarray(value, dtype=bool), (n,)).copy()
        except ValueError as err:
            raise ValueError(f"value must be a bool or an array of {n} bools, got shape {np.shape(value)}") from err
    return new


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


def make_synthfaces_arrays(
    num_images: int, *, image_size: int = 32, num_identities: int | None = None, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images and parameters in memory, for fast training without PIL round trips.

    Returns:
        `tuple`: ``(images, params)`` with images uint8 (N, image_size, image_size, 3) and params as from
        `sample_face_params`.
    """
    image_size = _validate_image_size(image_size)
    params = sample_face_params(num_images, num_identities=num_identities, seed=seed)
    return render_faces(params, image_size=image_size), params


def _synthfaces_features():
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "identity": datasets.Value("int64"),
            **{name: datasets.Value("bool") for name in SYNTHFACES_ATTRIBUTES},
            "index": datasets.Value("int64"),
            "seed": datasets.Value("int64"),
        }
    )


def make_synthfaces(
    num_images: int = 1000,
    *,
    image_size: int = 32,
    num_identities: int | None = None,
    seed: int = 0,
    return_params: bool = False,
):
    """A `datasets.Dataset` of SynthFaces.

    Columns: ``image`` (`datasets.Image`, PNG), ``identity`` (int64), one bool column per name in
    `SYNTHFACES_ATTRIBUTES`, ``index`` (row number at creation, int64) and ``seed`` (int64). The parameters of
    any rows, even after shuffling or selecting, are re-created exactly by ``params_for_dataset(dataset)``;
    the whole set's by ``sample_face_params(num_images, num_identities=..., seed=seed)`` (row i has index i).

    Args:
        num_images (`int`): >= 1.
        image_size (`int`): >= 16.
        num_identities (`int`, *optional*): in [1, num_images], default ``max(1, num_images // 10)``.
        seed (`int`): the seed.
        return_params (`bool`): also return the parameter dict.

    Returns:
        `datasets.Dataset`, or ``(dataset, params)`` if `return_params`.
    """
    import datasets
    from PIL import Image

    images, params = make_synthfaces_arrays(num_images, image_size=image_size, num_identities=num_identities, seed=seed)
    encoded = []
    for arr in images:
        buf = io.BytesIO()
        Image.fromarray(arr, mode="RGB").save(buf, format="PNG", compress_level=1)
        encoded.append({"bytes": buf.getvalue(), "path": None})
    data = {
        "image": encoded,
        "identity": params["identity"],
        **{name: params[name] for name in SYNTHFACES_ATTRIBUTES},
        "index": params["index"],
        "seed": params["seed"],
    }
    dataset = datasets.Dataset.from_dict(data, features=_synthfaces_features())
    return (dataset, params) if return_params else dataset


def params_for_dataset(dataset) -> dict[str, np.ndarray]:
    """Re-create the exact parameters of the rows of a SynthFaces dataset, in row order.

    Uses the ``index``, ``identity`` and ``seed`` columns, so it works after `shuffle`, `select`, `filter`
    or `train_test_split`. The attribute columns are checked against the re-created parameters.

    Raises:
        ValueError: if a column is missing or an attribute column disagrees with the parameters.
    """
    missing = [c for c in ("index", "identity", "seed") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset lacks columns {missing}; available columns: {dataset.column_names}")
    table = dataset.with_format("numpy", columns=["index", "identity", "seed"])[:]
    params = _params_from_keys(table["index"], table["identity"], table["seed"])
    for name in SYNTHFACES_ATTRIBUTES:
        if name in dataset.column_names:
            stored = np.asarray(dataset.with_format("numpy", columns=[name])[:][name], dtype=bool)
            if not np.array_equal(stored, params[name]):
                raise ValueError(f"column {name!r} disagrees with the parameters re-created from index/identity/seed")
    return params
