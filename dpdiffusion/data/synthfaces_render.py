"""The SynthFaces renderer: signed distances (negative inside), antialiased soft masks, painted in layers.

`render_chunk` draws a batch of faces from their parameter record (`dpdiffusion.data.synthfaces`) as vectorised
float32 numpy over the batch and the pixel grid, back to front: background, torso and neck, long hair, ears and
face, hair cap, eyes and brows, nose, mouth, eyeglasses, hat, then scene lighting. Every image depends only on its
own parameters (per-image libm trigonometry, `_paint`'s identical float operations on either path), so a face
renders bit-identically in any batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["render_chunk"]

LIGHT_SKIN = np.array([[1.00, 0.87, 0.76], [0.88, 0.68, 0.54]])
DARK_SKIN = np.array([[0.56, 0.38, 0.27], [0.30, 0.19, 0.12]])
_F32 = np.float32


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



@dataclass
class _Face:
    """The face frame of a batch: pixel coordinates in face units and the per-image scalars the layers share."""

    p: dict
    sl: slice
    u: np.ndarray  # (1, 1, W) pixel centres in [0, 1]
    v: np.ndarray  # (1, H, 1)
    x: np.ndarray  # (B, H, W) face frame, y down
    y: np.ndarray
    aa: np.ndarray  # (B, 1, 1) one pixel in face units
    line: np.ndarray  # (B, 1, 1) half-width of strokes

    def col(self, name: str) -> np.ndarray:
        """A per-image scalar (or boolean attribute as {0, 1}) as (B, 1, 1) float32."""
        return np.asarray(self.p[name][self.sl], dtype=_F32)[:, None, None]

    def rgb(self, part: str) -> np.ndarray:
        return _rgb(self.p, part, self.sl)


def _face_frame(p: dict, sl: slice, image_size: int) -> _Face:
    f32 = _F32
    grid = (np.arange(image_size, dtype=f32) + 0.5) / image_size  # pixel centres in [0, 1]
    u = grid[None, None, :]  # (1, 1, W)
    v = grid[None, :, None]  # (1, H, 1)
    face = _Face(p, sl, u, v, None, None, None, None)
    scale = face.col("scale")
    cos_r, sin_r = _cos_sin(p["rotation"][sl])
    dx = u - (0.5 + face.col("offset_x"))
    dy = v - (0.47 + face.col("offset_y"))
    face.x = (cos_r * dx + sin_r * dy) / scale  # (B, H, W) face frame, y down
    face.y = (-sin_r * dx + cos_r * dy) / scale
    face.aa = (1.0 / image_size) / scale  # one pixel in face units, (B, 1, 1)
    face.line = np.maximum(f32(0.011), 0.55 * face.aa)  # half-width of strokes: at least about one pixel wide
    return face


def _background(f: _Face, n: int, image_size: int) -> np.ndarray:
    """Background: colour with a linear gradient; a writable (B, H, W, 3) float32 image."""
    bg = f.rgb("bg")
    bg_cos, bg_sin = _cos_sin(f.p["bg_angle"][f.sl])
    bg_dir = (f.u - 0.5) * bg_cos + (f.v - 0.5) * bg_sin
    img = bg * (1.0 + (f.col("bg_strength") * bg_dir)[..., None])  # (B, H, W, 3)
    return np.broadcast_to(img, (n, image_size, image_size, 3)).astype(_F32)  # a writable copy


def _skin(f: _Face) -> np.ndarray:
    """Skin colour (B, 1, 1, 3): a shade within the light or dark range."""
    f32 = _F32
    shade = f.col("skin_shade")[..., None]
    dark = f.col("dark_skin")[..., None]
    light_rgb = (1 - shade) * LIGHT_SKIN[0].astype(f32) + shade * LIGHT_SKIN[1].astype(f32)
    dark_rgb = (1 - shade) * DARK_SKIN[0].astype(f32) + shade * DARK_SKIN[1].astype(f32)
    return (1 - dark) * light_rgb + dark * dark_rgb  # (B, 1, 1, 3)


def _paint_head(img: np.ndarray, f: _Face, skin: np.ndarray, hair: np.ndarray) -> None:
    """Torso and neck, long hair, ears, face and hair cap."""
    f32, x, y, aa = _F32, f.x, f.y, f.aa
    fw, fh, hair_v = f.col("face_width"), f.col("face_height"), f.col("hair_volume")
    _paint(img, _coverage(_ellipse_sd(x, y - (fh + 0.30), f32(0.40), f32(0.22)), aa), f.rgb("shirt"))
    _paint(img, _coverage(_box_sd(x, y - fh * 0.98, fw * 0.42, fh * 0.42, f32(0.02)), aa), skin * 0.86)

    # Long hair: a curtain behind the head falling beside the face to the shoulders.
    long_hair = f.col("long_hair")
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
    taper = 1.0 - f.col("chin_taper") * np.clip(y / fh, 0.0, 1.0)
    _paint(img, _coverage(_ellipse_sd(x / taper, y, fw, fh), aa), skin)

    # Hair cap on top of the head (every face), with a hairline that dips at the sides and a parting.
    part_x = (x - f.col("hair_part") * fw * 0.35) / fw
    hairline = -fh * 0.47 + fh * 0.30 * part_x * part_x
    cap = np.maximum(_ellipse_sd(x, y + fh * 0.08, fw * 1.1 * hair_v, fh * 1.05 * hair_v), y - hairline)
    _paint(img, _coverage(cap, aa), hair)


def _paint_eyes_and_nose(img: np.ndarray, f: _Face, skin: np.ndarray, hair: np.ndarray) -> None:
    """Eyes, brows and nose, with a yaw-like horizontal shift of all features."""
    f32, y, aa, line = _F32, f.y, f.aa, f.line
    fw, fh = f.col("face_width"), f.col("face_height")
    feat_x = f.x - f.col("yaw") * fw
    es, ez = f.col("eye_spacing"), f.col("eye_size")
    ey = -fh * 0.12
    eye_open = f.col("eye_open")
    for sign in (-1.0, 1.0):
        ex = feat_x - sign * es
        white = _ellipse_sd(ex, y - ey, ez * 1.45, np.maximum(ez * eye_open, 0.6 * aa))
        _paint(img, _coverage(white, aa), np.full((1, 1, 1, 3), 0.96, dtype=f32))
        iris = np.maximum(_ellipse_sd(ex, y - ey, ez * 0.8, ez * 0.8), white)
        _paint(img, _coverage(iris, aa), np.full((1, 1, 1, 3), 0.10, dtype=f32))
        by = ey - ez * 1.9 - 0.012 - f.col("brow_raise")
        tilt = f.col("brow_tilt")
        brow = _segment_sd(ex, y, -ez * 1.5, by + sign * tilt, ez * 1.5, by - sign * tilt, line)
        _paint(img, _coverage(brow, aa), hair * 0.7)

    nose_len = f.col("nose_length")
    nose = _segment_sd(feat_x, y, f32(0.0), ey + ez, f32(0.006), ey + ez + nose_len, line * 1.1)
    _paint(img, _coverage(nose, aa), skin * 0.78)


def _paint_mouth(img: np.ndarray, f: _Face) -> None:
    """A flat line (neutral) or an open crescent curved up at the corners (smiling), in t = x / width."""
    f32, y, aa, line = _F32, f.y, f.aa, f.line
    feat_x = f.x - f.col("yaw") * f.col("face_width")
    smiling = f.col("smiling")
    mw = f.col("mouth_width") * (1.0 + 0.35 * smiling)
    ym = f.col("face_height") * 0.50 + f.col("mouth_offset")
    t = feat_x / mw
    t2 = np.minimum(t * t, 1.0)
    depth = (0.045 + 3.0 * np.abs(f.col("mouth_jitter"))) * smiling  # smile depth
    curve = f.col("mouth_jitter") * (1.0 - smiling)  # slight curvature of the neutral mouth
    top = ym - depth * 0.7 * t2 + curve * t2
    bottom = top + depth * (1.0 - t2)
    mouth = np.maximum(np.maximum(top - y, y - bottom), np.abs(t) * mw - mw) - line
    _paint(img, _coverage(mouth, aa), np.array([0.45, 0.09, 0.11], dtype=f32)[None, None, None, :])
    teeth_top = top + line * 0.6
    teeth_bottom = teeth_top + depth * 0.35 * (1.0 - t2)
    teeth = np.maximum(np.maximum(teeth_top - y, y - teeth_bottom), np.abs(t) * mw - mw * 0.8)
    _paint(img, _coverage(teeth, aa) * smiling, np.full((1, 1, 1, 3), 0.97, dtype=f32))


def _paint_eyeglasses(img: np.ndarray, f: _Face) -> None:
    """Two rims, a bridge and temples, with lightly tinted lenses (only where `eyeglasses` is set)."""
    glasses = f.col("eyeglasses")
    if not np.any(glasses):
        return
    f32, x, y, aa, line = _F32, f.x, f.y, f.aa, f.line
    fw, fh = f.col("face_width"), f.col("face_height")
    feat_x = x - f.col("yaw") * fw
    es, ez = f.col("eye_spacing"), f.col("eye_size")
    ey = -fh * 0.12
    rim_r = np.maximum(ez * 1.9, f32(0.052))
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
        _segment_sd(x, y, f.col("yaw") * fw - es - rim_r, ey - 0.004, -fw * 0.98, ey - 0.012, line * 0.9),
        _segment_sd(x, y, f.col("yaw") * fw + es + rim_r, ey - 0.004, fw * 0.98, ey - 0.012, line * 0.9),
    )
    frame = np.minimum(np.minimum(rims, bridge), temples)
    _paint(img, _coverage(frame, aa) * glasses, f.rgb("glasses"))


def _paint_hat(img: np.ndarray, f: _Face) -> None:
    """Crown, band and brim on top of the head (only where `wearing_hat` is set)."""
    hat = f.col("wearing_hat")
    if not np.any(hat):
        return
    f32, x, y, aa, line = _F32, f.x, f.y, f.aa, f.line
    fw, fh, hair_v = f.col("face_width"), f.col("face_height"), f.col("hair_volume")
    hcol = f.rgb("hat")
    brim_y = -fh * 0.60 * hair_v
    crown_top = -fh * (0.08 + 1.05 * hair_v) - f.col("hat_height")
    crown_h = brim_y - crown_top
    crown = _box_sd(x, y - (brim_y - crown_h * 0.5), fw * 0.92 * hair_v, crown_h * 0.5, f32(0.035))
    brim = _box_sd(x, y - brim_y, fw * 1.38, np.maximum(f32(0.018), line * 1.5), f32(0.015))
    _paint(img, _coverage(np.minimum(crown, brim), aa) * hat, hcol)
    band = np.maximum(crown, np.abs(y - (brim_y - 0.028)) - np.maximum(f32(0.013), line))
    _paint(img, _coverage(band, aa) * hat, hcol * 0.45)


def render_chunk(p: dict[str, np.ndarray], sl: slice, image_size: int) -> np.ndarray:
    """Render the faces ``p[...][sl]`` as uint8 ``(B, image_size, image_size, 3)``, layer by layer."""
    f = _face_frame(p, sl, image_size)
    img = _background(f, sl.stop - sl.start, image_size)
    skin, hair = _skin(f), f.rgb("hair")
    _paint_head(img, f, skin, hair)
    _paint_eyes_and_nose(img, f, skin, hair)
    _paint_mouth(img, f)
    _paint_eyeglasses(img, f)
    _paint_hat(img, f)

    # Lighting: a directional gradient over the whole scene and an exposure factor.
    l_cos, l_sin = _cos_sin(p["light_angle"][sl])
    l_dir = (f.u - 0.5) * l_cos + (f.v - 0.5) * l_sin
    light = f.col("exposure") * (1.0 + 2.0 * f.col("light_strength") * l_dir)
    img *= light[..., None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
