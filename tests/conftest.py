"""Shared fixtures: tiny real models built in-process (diffusers style)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from dpd_test_components import ATTRS, get_dummy_components  # noqa: F401,E402


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored after: two OpenMP threads on a busy two-core machine spin against
    each other (tiny models gain nothing from threads). Use with ``pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dummy_components():
    return get_dummy_components()


@pytest.fixture
def dummy_pipe(dummy_components):
    from dpdiffusion import DPDiffusionPipeline

    pipe = DPDiffusionPipeline(**dummy_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def dummy_images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 16, generator=g)


@pytest.fixture(autouse=True)
def _quiet_prng_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a cryptographically secure.*")
        yield
