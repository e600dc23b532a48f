"""FFHQ alignment of a face to a square crop, and the inverse warp back into the photo.

This follows the recipe of the official FFHQ ``align.py`` (``recreate_aligned_images`` in NVlabs' ffhq-dataset,
used by the official DiffAE code): from dlib's 68 landmarks take the eye centres (points 36-41, 42-47) and the
mouth corners (48, 54); the crop is the oriented square

    x = eye_to_eye - rot90(eye_to_mouth),  |x| = max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = rot90(x),  c = eye_avg + 0.1 eye_to_mouth,  quad = [c - x - y, c - x + y, c + x + y, c + x - y]

(corners top-left, bottom-left, bottom-right, top-right), whose map to the output square is a similarity
transform. As in FFHQ, a face much larger than the output is first shrunk by an integer factor (box average), and
where the quad leaves the photo it is padded: reflect, then blur the padding and blend it towards the median colour.
The warp then supersamples and area-averages (FFHQ renders at 4096 px and downsamples with an antialiasing filter).

Coordinates: landmarks are pixel indices (pixel ``(r, c)`` has its centre at ``(x, y) = (c, r)``); a quad is in
continuous coordinates in which pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MAX_SUPERSAMPLE = 8


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and the geometry that maps it back.

    Attributes:
        crop (`np.ndarray`): ``(S, S, 3)`` uint8 RGB, the FFHQ-aligned face.
        quad (`np.ndarray`): ``(4, 2)`` float corners in photo coordinates (top-left, bottom-left, bottom-right,
            top-right of the crop).
    """

    crop: np.ndarray
    quad: np.ndarray

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop quad ``(4, 2)`` (continuous photo coordinates) of a face with 68 landmarks ``(68, 2)``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise ValueError(f"landmarks must be a finite (68, 2) array of (x, y) points, got shape {lm.shape}")
    lm = lm + 0.5  # pixel centres in continuous coordinates
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm == 0:
        raise ValueError("degenerate landmarks: the eyes and the mouth coincide")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _quad_axes(quad: np.ndarray):
    quad = np.asarray(quad, dtype=np.float64)
    return quad[0], quad[3] - quad[0], quad[1] - quad[0]  # origin, crop's +u (x) side, crop's +v (y) side


def _crop_shrink_pad(photo: np.ndarray, quad: np.ndarray, size: int, padding: bool):
    """FFHQ's shrink, crop and pad steps, on the quad's neighbourhood only. Returns (float image, local quad).

    Shrink: when the quad is more than twice the output, the region is box-averaged by the integer factor
    ``floor(qsize / size / 2)`` (FFHQ resizes the photo by it with an antialiasing filter). Crop: the quad's bounding
    box plus a border of 10 % of its side. Pad (``padding=True``): where the quad leaves the photo, reflect the image,
    blur the padding (sigma 2 % of the side) and blend it towards the median colour, as FFHQ does.
    """
    h, w = photo.shape[:2]
    qsize = np.hypot(*(quad[3] - quad[0]))
    shrink = int(np.floor(qsize / size * 0.5))
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    crop = [max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, w), min(crop[3] + border, h)]
    if shrink > 1:  # grow the region to whole shrink x shrink blocks where the photo allows
        for lo, hi, limit in ((0, 2, w), (1, 3, h)):
            crop[hi] = min(crop[lo] + -(-(crop[hi] - crop[lo]) // shrink) * shrink, limit)
    img = photo[crop[1]:crop[3], crop[0]:crop[2]].astype(np.float32)
    quad = quad - [crop[0], crop[1]]
    if shrink > 1 and min(img.shape[:2]) >= shrink:
        ch, cw = img.shape[0] // shrink, img.shape[1] // shrink
        img = img[:ch * shrink, :cw * shrink].reshape(ch, shrink, cw, shrink, -1).mean(axis=(1, 3))
        quad, qsize = quad / shrink, qsize / shrink
        border = max(int(np.rint(qsize * 0.1)), 3)
    if not padding:
        return img, quad
    ch, cw = img.shape[:2]
    pad = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
           int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - cw + border, 0), max(pad[3] - ch + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, max(int(np.rint(qsize * 0.3)), 1))
        # numpy reflects repeatedly when the padding is wider than the image
        padded = np.pad(img, ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
        hh, ww = padded.shape[:2]
        yy, xx, _ = np.ogrid[:hh, :ww, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(ww - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(hh - 1 - yy) / pad[3]))
        blur = qsize * 0.02
        padded += (ndimage.gaussian_filter(padded, [blur, blur, 0]) - padded) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0.0, 1.0)
        img = padded
        quad = quad + [pad[0], pad[1]]
    return img, quad


def align_face(photo: np.ndarray, landmarks: np.ndarray, size: int, *, padding: bool = True) -> AlignedFace:
    """FFHQ-align the face with ``landmarks`` in ``photo`` to a ``size`` x ``size`` crop.

    Args:
        photo (`np.ndarray`): ``(H, W, 3)`` uint8 RGB.
        landmarks (`np.ndarray`): ``(68, 2)`` dlib landmarks ``(x, y)``.
        size (`int`): side of the crop (the model's ``image_size``), >= 8.
        padding (`bool`): pad outside the photo as FFHQ does (reflect, blur, median); else replicate the edge.

    Returns:
        `AlignedFace` with the crop and its quad in photo coordinates.

    Raises:
        ValueError: for a bad photo, landmarks or size.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got size={size!r}")
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] != 3:
        raise ValueError(f"photo must be an (H, W, 3) uint8 RGB array, got shape {photo.shape} dtype {photo.dtype}")
    quad = ffhq_quad(landmarks)
    img, local_quad = _crop_shrink_pad(photo, quad, int(size), padding)
    crop = warp_quad(img, local_quad, int(size))
    return AlignedFace(crop=np.clip(np.rint(crop), 0, 255).astype(np.uint8), quad=quad)


def warp_quad(image: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Sample the oriented square ``quad`` of ``image`` (float ``(H, W, C)``) onto a ``size`` x ``size`` grid.

    Bilinear sampling on a supersampled grid (``k = clip(round(side / size), 1, 8)``), then a ``k x k`` area
    average, so a shrinking warp is antialiased; outside the image the edge pixel is repeated.
    """
    origin, ax_u, ax_v = _quad_axes(quad)
    k = int(np.clip(np.rint(np.hypot(*ax_u) / size), 1, MAX_SUPERSAMPLE))
    n = size * k
    t = (np.arange(n) + 0.5) / n  # (n,) fractions along each side
    # continuous photo point of each supersample, then pixel-index coordinates (centres at integers)
    px = origin[0] + t[None, :] * ax_u[0] + t[:, None] * ax_v[0] - 0.5  # (n, n): rows follow v, columns u
    py = origin[1] + t[None, :] * ax_u[1] + t[:, None] * ax_v[1] - 0.5
    out = np.empty((n, n, image.shape[2]), dtype=np.float64)
    for ch in range(image.shape[2]):
        out[..., ch] = ndimage.map_coordinates(image[..., ch], [py, px], order=1, mode="nearest")
    return out.reshape(size, k, size, k, -1).mean(axis=(1, 3))


def quad_coordinates(quad: np.ndarray, shape: tuple):
    """For the photo pixels near ``quad``: their box and their crop coordinates.

    Returns:
        ``(x0, y0, x1, y1), s, t``: the pixel box (clipped to the photo of ``shape`` ``(H, W, ...)``) and two
        arrays ``(y1 - y0, x1 - x0)`` of each pixel centre's position along the crop's u and v sides, as
        fractions (inside the quad exactly when both are in [0, 1]).
    """
    origin, ax_u, ax_v = _quad_axes(quad)
    h, w = shape[:2]
    q = np.asarray(quad, dtype=np.float64)
    x0, y0 = max(int(np.floor(q[:, 0].min())), 0), max(int(np.floor(q[:, 1].min())), 0)
    x1, y1 = min(int(np.ceil(q[:, 0].max())) + 1, w), min(int(np.ceil(q[:, 1].max())) + 1, h)
    xs = np.arange(x0, x1) + 0.5
    ys = np.arange(y0, y1) + 0.5
    dx, dy = xs[None, :] - origin[0], ys[:, None] - origin[1]
    s = (dx * ax_u[0] + dy * ax_u[1]) / (ax_u @ ax_u)
    t = (dx * ax_v[0] + dy * ax_v[1]) / (ax_v @ ax_v)
    return (x0, y0, max(x1, x0), max(y1, y0)), s, t


def unwarp_crop(crop: np.ndarray, quad: np.ndarray, shape: tuple):
    """Inverse warp: the crop (``(S, S, C)``) sampled at the photo pixels near ``quad``.

    Returns:
        ``box, values, s, t``: the pixel box ``(x0, y0, x1, y1)``, the bilinear samples ``(y1-y0, x1-x0, C)``
        (float), and the crop fractions of each pixel (see ``quad_coordinates``).
    """
    box, s, t = quad_coordinates(quad, shape)
    return box, sample_bilinear(crop, s, t), s, t


def sample_bilinear(crop: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bilinear samples ``s.shape + (C,)`` (float32) of ``crop`` (``(S, S, C)``, S >= 2) at crop fractions ``(s, t)``;
    the edge pixel is repeated outside (as ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``)."""
    size = crop.shape[0]
    u = np.clip(s * size - 0.5, 0.0, size - 1.0).astype(np.float32)  # crop pixel-index coordinates
    v = np.clip(t * size - 0.5, 0.0, size - 1.0).astype(np.float32)
    u0, v0 = np.minimum(u.astype(np.int64), size - 2), np.minimum(v.astype(np.int64), size - 2)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    c = np.asarray(crop, dtype=np.float32)
    top = c[v0, u0] * (1 - fu) + c[v0, u0 + 1] * fu
    bottom = c[v0 + 1, u0] * (1 - fu) + c[v0 + 1, u0 + 1] * fu
    return top * (1 - fv) + bottom * fv
