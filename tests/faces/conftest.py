"""Real photos that ship with scikit-image, and a group photo tiled from real faces."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

ASTRONAUT_FACE = (175, 76, 266, 167)  # dlib HOG box of Eileen Collins' face in data.astronaut() (x0, y0, x1, y1)


def _face_tile(scale: float, flip: bool) -> np.ndarray:
    from skimage import data

    tile = data.astronaut()[10:250, 110:340]  # (240, 230, 3): the face with hair and a margin
    if flip:
        tile = tile[:, ::-1]
    img = PIL.Image.fromarray(np.ascontiguousarray(tile))
    return np.asarray(img.resize((round(230 * scale), round(240 * scale)), PIL.Image.LANCZOS))


@pytest.fixture(scope="session")
def astronaut():
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8, one face


@pytest.fixture(scope="session")
def coffee():
    from skimage import data

    return data.coffee()  # (400, 600, 3) uint8, no face


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


@pytest.fixture(scope="session")
def group_photo():
    return make_group_photo()


@pytest.fixture(scope="session")
def tiny_pipe():
    from dpd_test_components import get_dummy_components

    from dpdiffusion import DPDiffusionPipeline

    pipe = DPDiffusionPipeline(**get_dummy_components(image_size=32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


@pytest.fixture
def counting_pipe(tiny_pipe):
    return CountingPipe(tiny_pipe)
