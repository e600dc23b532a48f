"""Paste a protected crop back into the photo through the inverse of its alignment, with a feathered mask.

The mask lives in crop coordinates: with ``(s, t)`` the position of a photo pixel's centre along the crop's sides
(fractions in [0, 1] inside the quad),

    m(s, t) = clip((min(s, 1 - s, t, 1 - t) - inset) / feather, 0, 1)

so it is exactly 0 on and outside the border of the quad shrunk by ``inset`` (a pixel there keeps its bytes) and 1
in the centre. Composition is done per pixel in uint8: ``out = original`` where ``m == 0``, else
``round(m * protected + (1 - m) * original)``.
"""

from __future__ import annotations

import numpy as np

from .align import quad_coordinates, sample_bilinear

DEFAULT_FEATHER = 0.1
DEFAULT_INSET = 0.05


def feather_mask(s: np.ndarray, t: np.ndarray, *, feather: float = DEFAULT_FEATHER,
                 inset: float = DEFAULT_INSET) -> np.ndarray:
    """The paste mask in [0, 1] from crop fractions ``s``, ``t`` (see the module docstring)."""
    if not 0.0 <= inset < 0.5:
        raise ValueError(f"inset must be in [0, 0.5), got inset={inset}")
    if not 0.0 < feather <= 0.5 - inset:
        raise ValueError(f"feather must be in (0, 0.5 - inset] = (0, {0.5 - inset}], got feather={feather}")
    edge = np.minimum(np.minimum(s, 1.0 - s), np.minimum(t, 1.0 - t))
    return np.clip((edge - inset) / feather, 0.0, 1.0)


def paste_face(photo: np.ndarray, crop: np.ndarray, quad: np.ndarray, *, feather: float = DEFAULT_FEATHER,
               inset: float = DEFAULT_INSET) -> tuple[np.ndarray, tuple]:
    """Paste ``crop`` (``(S, S, 3)`` uint8, aligned by ``quad``) into a copy of ``photo`` (``(H, W, 3)`` uint8).

    Args:
        photo (`np.ndarray`): the photo, uint8 RGB; not modified.
        crop (`np.ndarray`): the protected crop, uint8 RGB, square.
        quad (`np.ndarray`): ``(4, 2)`` the crop's quad in photo coordinates (``AlignedFace.quad``).
        feather (`float`): width of the mask's ramp as a fraction of the crop side, in (0, 0.5 - inset].
        inset (`float`): part of the crop side left out of the mask on each side, in [0, 0.5).

    Returns:
        ``(pasted, box)``: the new photo and the pixel box ``(x0, y0, x1, y1)`` outside which it equals ``photo``
        byte for byte (pixels inside the box with mask 0 are unchanged too).
    """
    photo = np.asarray(photo)
    crop = np.asarray(crop)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] != 3:
        raise ValueError(f"photo must be an (H, W, 3) uint8 array, got shape {photo.shape} dtype {photo.dtype}")
    if (crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[-1] != 3 or crop.shape[0] != crop.shape[1]
            or crop.shape[0] < 2):
        raise ValueError(f"crop must be a square (S, S, 3) uint8 array, got shape {crop.shape} dtype {crop.dtype}")
    (x0, y0, x1, y1), s, t = quad_coordinates(quad, photo.shape)
    out = photo.copy()
    if x1 <= x0 or y1 <= y0:
        return out, (x0, y0, x0, y0)
    m = feather_mask(s, t, feather=feather, inset=inset)  # (h, w)
    inside = np.nonzero(m > 0)  # only these pixels change; every other byte is the photo's
    if inside[0].size == 0:
        return out, (x0, y0, x0, y0)
    values = sample_bilinear(crop, s[inside], t[inside])  # (n, 3)
    w = m[inside].astype(np.float32)[:, None]
    region = out[y0:y1, x0:x1]
    original = region[inside].astype(np.float32)
    region[inside] = np.clip(np.rint(w * values + (1.0 - w) * original), 0, 255).astype(np.uint8)
    box = (x0 + int(inside[1].min()), y0 + int(inside[0].min()), x0 + int(inside[1].max()) + 1,
           y0 + int(inside[0].max()) + 1)
    return out, box


def paste_mask(quad: np.ndarray, shape: tuple, *, feather: float = DEFAULT_FEATHER,
               inset: float = DEFAULT_INSET) -> np.ndarray:
    """The full-photo ``(H, W)`` float mask that ``paste_face`` uses for ``quad`` (0 wherever bytes are kept)."""
    (x0, y0, x1, y1), s, t = quad_coordinates(quad, shape)
    mask = np.zeros(shape[:2], dtype=np.float64)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = feather_mask(s, t, feather=feather, inset=inset)
    return mask
