"""Fixtures: real photos that ship with scikit-image, a group photo tiled from real faces, a tiny pipeline."""

from __future__ import annotations

import pytest

from dpd_faces_photos import CountingPipe, make_group_photo


@pytest.fixture(scope="session")
def astronaut():
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8, one face


@pytest.fixture(scope="session")
def coffee():
    from skimage import data

    return data.coffee()  # (400, 600, 3) uint8, no face


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


@pytest.fixture
def counting_pipe(tiny_pipe):
    return CountingPipe(tiny_pipe)
