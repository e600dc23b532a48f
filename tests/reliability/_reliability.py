"""Shared helpers of the reliability tests (not a conftest: `tests/conftest.py` stays the one source of fixtures)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def get_dummy_components(**kwargs):
    """``tests/conftest.py``'s ``get_dummy_components``, imported by path (several conftest modules exist)."""
    name = "_dpdiffusion_tests_conftest"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, TESTS / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return module.get_dummy_components(**kwargs)


def dummy_pipe():
    from dpdiffusion import DPDiffusionPipeline

    pipe = DPDiffusionPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe
