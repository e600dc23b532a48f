"""Real photos for the faces tests (importable as ``dpd_faces_photos``: several ``conftest`` modules exist, so a plain
``from conftest import ...`` is ambiguous)."""

from __future__ import annotations

import numpy as np
import PIL.Image

ASTRONAUT_FACE = (175, 76, 266, 167)  # dlib HOG box of Eileen Collins' face in data.astronaut() (x0, y0, x1, y1)


def _face_tile(scale: float, flip: bool) -> np.ndarray:
    from skimage import data

    tile = data.astronaut()[10:250, 110:340]  # (240, 230, 3): the face with hair and a margin
    if flip:
        tile = tile[:, ::-1]
    img = PIL.Image.fromarray(np.ascontiguousarray(tile))
    return np.asarray(img.resize((round(230 * scale), round(240 * scale)), PIL.Image.LANCZOS))


def make_group_photo():
    """A 760 x 320 canvas (coffee as the background) with three real faces at known places; returns the canvas and
    the (x0, y0, w, h) of each face tile."""
    from skimage import data

    canvas = np.asarray(PIL.Image.fromarray(data.coffee()).resize((760, 320), PIL.Image.BILINEAR)).copy()
    placed = []
    for (x, y), scale, flip in (((10, 40), 1.0, False), ((270, 10), 1.2, True), ((560, 80), 0.8, False)):
        tile = _face_tile(scale, flip)
        h, w = tile.shape[:2]
        canvas[y:y + h, x:x + w] = tile
        placed.append((x, y, w, h))
    return canvas, placed


class CountingPipe:
    """Wraps a pipeline and counts its releases (to show nothing is released for a refused call)."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0

    @property
    def image_size(self):
        return self.pipe.image_size

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.pipe(*args, **kwargs)
