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
import math
import zlib
from typing import Any

import numpy as np

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
_LIGHT_SKIN = np.array([[1.00, 0.87, 0.76], [0.88, 0.68, 0.54]])
_DARK_SKIN = np.array([[0.56, 0.38, 0.27], [0.30, 0.19, 0.12]])

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


# ----------------------------------------------------------------------------------------------------
# Rendering: signed distances (negative inside) and soft masks
# ----------------------------------------------------------------------------------------------------


def _coverage(sd: np.ndarray, aa: np.ndarray) -> np.ndarray:
    """Antialiased coverage of the region sd < 0: smoothstep across about one pixel."""
    t = np.clip(0.5 - sd / aa, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse_sd(x, y, a, b):
    return (np.sqrt((x / a) ** 2 + (y / b) ** 2) - 1.0) * np.minimum(a, b)


def _box_sd(x, y, hw, hh, r):
    qx = np.abs(x) - hw + r
    qy = np.abs(y) - hh + r
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - r


def _segment_sd(x, y, ax, ay, bx, by, radius):
    px, py = x - ax, y - ay
    dx, dy = bx - ax, by - ay
    h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2) - radius


def _paint(img: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    """In place: img += mask * (color - img). img (B,H,W,3), mask (B,H,W), color (B,1,1,3) or (1,1,1,3).

    Small layers (eyes, mouth, ...) touch few pixels: only those are updated. Both paths do the same float
    operations per pixel, so the result does not depend on which one runs (nor on the batch).
    """
    b, h, w = mask.shape
    flat_mask = mask.reshape(-1)
    idx = np.flatnonzero(flat_mask)
    if idx.size > flat_mask.size // 4:
        img += mask[..., None] * (color - img)
        return
    flat_img = img.reshape(-1, 3)
    colors = np.broadcast_to(color, (b, 1, 1, 3)).reshape(b, 3)[idx // (h * w)]
    old = flat_img[idx]
    flat_img[idx] = old + flat_mask[idx][:, None] * (colors - old)


def _rgb(params: dict[str, np.ndarray], part: str, sl: slice) -> np.ndarray:
    return np.stack([params[f"{part}_{c}"][sl] for c in "rgb"], axis=-1)[:, None, None, :].astype(np.float32)


def _cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1, 1) float32 cosines and sines, one libm call per image so that a face renders bit-identically
    whatever batch it is in (numpy's SIMD trig can differ in the last bit between vector lanes and tails)."""
    angles = np.asarray(angles, dtype=np.float64).tolist()
    cos = np.array([math.cos(a) for a in angles], dtype=np.float32)[:, None, None]
    sin = np.array([math.sin(a) for a in angles], dtype=np.float32)[:, None, None]
    return cos, sin


def _render_chunk(p: dict[str, np.ndarray], sl: slice, image_size: int) -> np.ndarray:
    f32 = np.float32

    def col(name: str) -> np.ndarray:  # (B, 1, 1) per-image scalar
        return np.asarray(p[name][sl], dtype=f32)[:, None, None]

    flag = col  # a boolean attribute as (B, 1, 1) float in {0, 1}

    n = sl.stop - sl.start
    grid = (np.arange(image_size, dtype=f32) + 0.5) / image_size  # pixel centres in [0, 1]
    u = grid[None, None, :]  # (1, 1, W)
    v = grid[None, :, None]  # (1, H, 1)

    scale = col("scale")
    cos_r, sin_r = _cos_sin(p["rotation"][sl])
    dx = u - (0.5 + col("offset_x"))
    dy = v - (0.47 + col("offset_y"))
    x = (cos_r * dx + sin_r * dy) / scale  # (B, H, W) face frame, y down
    y = (-sin_r * dx + cos_r * dy) / scale
    aa = (1.0 / image_size) / scale  # one pixel in face units, (B, 1, 1)
    line = np.maximum(f32(0.011), 0.55 * aa)  # half-width of strokes: at least about one pixel wide

    fw, fh = col("face_width"), col("face_height")
    hair_v = col("hair_volume")

    # Background: colour with a linear gradient.
    bg = _rgb(p, "bg", sl)
    bg_cos, bg_sin = _cos_sin(p["bg_angle"][sl])
    bg_dir = (u - 0.5) * bg_cos + (v - 0.5) * bg_sin
    img = bg * (1.0 + (col("bg_strength") * bg_dir)[..., None])  # (B, H, W, 3)
    img = np.broadcast_to(img, (n, image_size, image_size, 3)).astype(f32)  # a writable copy

    # Skin colour: a shade within the light or dark range.
    shade = col("skin_shade")[..., None]
    dark = flag("dark_skin")[..., None]
    light_rgb = (1 - shade) * _LIGHT_SKIN[0].astype(f32) + shade * _LIGHT_SKIN[1].astype(f32)
    dark_rgb = (1 - shade) * _DARK_SKIN[0].astype(f32) + shade * _DARK_SKIN[1].astype(f32)
    skin = (1 - dark) * light_rgb + dark * dark_rgb  # (B, 1, 1, 3)
    hair = _rgb(p, "hair", sl)

    # Torso and neck.
    _paint(img, _coverage(_ellipse_sd(x, y - (fh + 0.30), f32(0.40), f32(0.22)), aa), _rgb(p, "shirt", sl))
    _paint(img, _coverage(_box_sd(x, y - fh * 0.98, fw * 0.42, fh * 0.42, f32(0.02)), aa), skin * 0.86)

    # Long hair: a curtain behind the head falling beside the face to the shoulders.
    long_hair = flag("long_hair")
    curtain = np.minimum(
        _box_sd(x, y - fh * 0.42, fw * 1.22 * hair_v, fh * 1.0, fw * 0.45),
        _ellipse_sd(x, y + fh * 0.08, fw * 1.12 * hair_v, fh * 1.04 * hair_v),
    )
    _paint(img, _coverage(curtain, aa) * long_hair, hair * 0.85)

    # Ears, face (ellipse with a tapered chin).
    ear_sd = np.minimum(
        _ellipse_sd(x - fw * 0.97, y + 0.01, f32(0.035), f32(0.055)),
        _ellipse_sd(x + fw * 0.97, y + 0.01, f32(0.035), f32(0.055)),
    )
    _paint(img, _coverage(ear_sd, aa), skin * 0.9)
    taper = 1.0 - col("chin_taper") * np.clip(y / fh, 0.0, 1.0)
    _paint(img, _coverage(_ellipse_sd(x / taper, y, fw, fh), aa), skin)

    # Hair cap on top of the head (every face), with a hairline that dips at the sides and a parting.
    part_x = (x - col("hair_part") * fw * 0.35) / fw
    hairline = -fh * 0.47 + fh * 0.30 * part_x * part_x
    cap = np.maximum(_ellipse_sd(x, y + fh * 0.08, fw * 1.1 * hair_v, fh * 1.05 * hair_v), y - hairline)
    _paint(img, _coverage(cap, aa), hair)

    # Eyes, with a yaw-like horizontal shift of all features.
    feat_x = x - col("yaw") * fw
    es, ez = col("eye_spacing"), col("eye_size")
    ey = -fh * 0.12
    eye_open = col("eye_open")
    for sign in (-1.0, 1.0):
        ex = feat_x - sign * es
        white = _ellipse_sd(ex, y - ey, ez * 1.45, np.maximum(ez * eye_open, 0.6 * aa))
        _paint(img, _coverage(white, aa), np.full((1, 1, 1, 3), 0.96, dtype=f32))
        iris = np.maximum(_ellipse_sd(ex, y - ey, ez * 0.8, ez * 0.8), white)
        _paint(img, _coverage(iris, aa), np.full((1, 1, 1, 3), 0.10, dtype=f32))
        by = ey - ez * 1.9 - 0.012 - col("brow_raise")
        brow = _segment_sd(ex, y, -ez * 1.5, by + sign * col("brow_tilt"), ez * 1.5, by - sign * col("brow_tilt"), line)
        _paint(img, _coverage(brow, aa), hair * 0.7)

    # Nose.
    nose_len = col("nose_length")
    nose = _segment_sd(feat_x, y, f32(0.0), ey + ez, f32(0.006), ey + ez + nose_len, line * 1.1)
    _paint(img, _coverage(nose, aa), skin * 0.78)

    # Mouth: a flat line (neutral) or an open crescent curved up at the corners (smiling), in t = x / width.
    smiling = flag("smiling")
    mw = col("mouth_width") * (1.0 + 0.35 * smiling)
    ym = fh * 0.50 + col("mouth_offset")
    t = feat_x / mw
    t2 = np.minimum(t * t, 1.0)
    depth = (0.045 + 3.0 * np.abs(col("mouth_jitter"))) * smiling  # smile depth
    curve = col("mouth_jitter") * (1.0 - smiling)  # slight curvature of the neutral mouth
    top = ym - depth * 0.7 * t2 + curve * t2
    bottom = top + depth * (1.0 - t2)
    mouth = np.maximum(np.maximum(top - y, y - bottom), np.abs(t) * mw - mw) - line
    _paint(img, _coverage(mouth, aa), np.array([0.45, 0.09, 0.11], dtype=f32)[None, None, None, :])
    teeth_top = top + line * 0.6
    teeth_bottom = teeth_top + depth * 0.35 * (1.0 - t2)
    teeth = np.maximum(np.maximum(teeth_top - y, y - teeth_bottom), np.abs(t) * mw - mw * 0.8)
    _paint(img, _coverage(teeth, aa) * smiling, np.full((1, 1, 1, 3), 0.97, dtype=f32))

    # Eyeglasses: two rims, a bridge and temples, with lightly tinted lenses.
    glasses = flag("eyeglasses")
    if np.any(glasses):
        rim_r = np.maximum(ez * 1.9, f32(0.052))
        gcol = _rgb(p, "glasses", sl)
        rims = None
        lens = None
        for sign in (-1.0, 1.0):
            d = _ellipse_sd(feat_x - sign * es, y - ey, rim_r, rim_r * 0.85)
            lens = d if lens is None else np.minimum(lens, d)
            ring = np.abs(d) - line
            rims = ring if rims is None else np.minimum(rims, ring)
        _paint(img, _coverage(lens, aa) * glasses * 0.18, np.array([0.75, 0.85, 0.95], dtype=f32)[None, None, None, :])
        bridge = _segment_sd(feat_x, y, -(es - rim_r), ey - 0.006, es - rim_r, ey - 0.006, line)
        temples = np.minimum(
            _segment_sd(x, y, col("yaw") * fw - es - rim_r, ey - 0.004, -fw * 0.98, ey - 0.012, line * 0.9),
            _segment_sd(x, y, col("yaw") * fw + es + rim_r, ey - 0.004, fw * 0.98, ey - 0.012, line * 0.9),
        )
        frame = np.minimum(np.minimum(rims, bridge), temples)
        _paint(img, _coverage(frame, aa) * glasses, gcol)

    # Hat: crown, band and brim on top of the head.
    hat = flag("wearing_hat")
    if np.any(hat):
        hcol = _rgb(p, "hat", sl)
        brim_y = -fh * 0.60 * hair_v
        crown_top = -fh * (0.08 + 1.05 * hair_v) - col("hat_height")
        crown_h = brim_y - crown_top
        crown = _box_sd(x, y - (brim_y - crown_h * 0.5), fw * 0.92 * hair_v, crown_h * 0.5, f32(0.035))
        brim = _box_sd(x, y - brim_y, fw * 1.38, np.maximum(f32(0.018), line * 1.5), f32(0.015))
        _paint(img, _coverage(np.minimum(crown, brim), aa) * hat, hcol)
        band = np.maximum(crown, np.abs(y - (brim_y - 0.028)) - np.maximum(f32(0.013), line))
        _paint(img, _coverage(band, aa) * hat, hcol * 0.45)

    # Lighting: a directional gradient over the whole scene and an exposure factor.
    l_cos, l_sin = _cos_sin(p["light_angle"][sl])
    l_dir = (u - 0.5) * l_cos + (v - 0.5) * l_sin
    light = col("exposure") * (1.0 + 2.0 * col("light_strength") * l_dir)
    img *= light[..., None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


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
        out[sl] = _render_chunk(params, sl, image_size)
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
