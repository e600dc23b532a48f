"""The version floors in pyproject.toml: every installed dependency meets its floor, the Space's requirements say
the same, and the floors are high enough for the APIs the code uses (Gradio 6: ``gr.HTML(js_on_load=...)``,
``gr.Image(buttons=...)``, ``launch(footer_links=...)``).

That the code really runs on the floors themselves is checked by ``.ci/min-versions`` (a fresh environment resolved
with ``uv pip install --resolution lowest-direct``, then these tests and the Space's, pipeline's and Hub tests).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
SPACE_EXTRA = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["space"]]
TEST_EXTRA = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]]


def _floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert len(floors) == 1, f"{req} must have exactly one floor (>=)"
    return floors[0]


@pytest.mark.parametrize("req", DEPENDENCIES + SPACE_EXTRA, ids=str)
def test_installed_version_meets_the_floor(req):
    try:
        installed = Version(importlib.metadata.version(req.name))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed")
    assert installed in req.specifier, f"{req.name} {installed} is installed, but pyproject.toml says {req}"
    assert installed >= _floor(req)


def test_every_dependency_has_a_floor_and_no_ceiling_that_blocks_the_tested_versions():
    for req in DEPENDENCIES + SPACE_EXTRA:
        _floor(req)
        assert not any(s.operator in ("<", "<=") for s in req.specifier), f"{req}: no ceilings"


def test_floors_are_high_enough_for_the_apis_used():
    floors = {req.name.lower(): _floor(req) for req in DEPENDENCIES + SPACE_EXTRA + TEST_EXTRA}
    # Gradio 6.0 introduced gr.HTML(js_on_load=...), gr.Image(buttons=...) and launch(footer_links=...); 6.24.0
    # launch(run_history=...), which the app turns off (the run history would keep inputs in the browser's
    # storage); checked by installing 6.0.0, 6.22.0, 6.23.1, 6.24.0
    assert floors["gradio"] >= Version("6.24")
    layout = (ROOT / "dpdiffusion" / "space" / "layout.py").read_text()
    assert "js_on_load=" in layout and "buttons=" in layout and "footer_links" in layout and "run_history" in layout
    # numpy 2: the pyarrow that datasets pulls in refuses numpy 1.x at import (measured on the lowest resolution),
    # and scipy / matplotlib take numpy 2 from 1.13 / 3.9; dp-accounting 0.6 has get_epsilon_gaussian (the oracle)
    assert floors["numpy"] >= Version("2.0") and floors["scipy"] >= Version("1.13")
    assert floors["matplotlib"] >= Version("3.9") and floors["dp-accounting"] >= Version("0.6")
    # diffusers 0.42 wrote the embedded default's model_index.json; huggingface-hub >= 1.32 is what diffusers
    # 0.42 itself requires (a lower floor could never be installed next to it)
    index = (ROOT / "dpdiffusion" / "default_model" / "model_index.json").read_text()
    written_by = Version(re.search(r'"_diffusers_version": "([^"]+)"', index).group(1))
    assert floors["diffusers"] <= written_by and floors["diffusers"] >= Version("0.42")
    assert floors["huggingface-hub"] >= Version("1.32")
    assert floors["torch"] >= Version("2.13")


def test_installed_gradio_has_the_gradio_6_apis():
    gr = pytest.importorskip("gradio")
    assert "js_on_load" in inspect.signature(gr.HTML.__init__).parameters
    assert "buttons" in inspect.signature(gr.Image.__init__).parameters
    assert "footer_links" in inspect.signature(gr.Blocks.launch).parameters
    assert "run_history" in inspect.signature(gr.Blocks.launch).parameters


def test_the_space_requirements_repeat_the_floors():
    lines = [ln.strip() for ln in (ROOT / "spaces" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    faces = PYPROJECT["project"]["optional-dependencies"]["faces"]  # the Space's photo mode
    assert sorted(lines) == sorted(PYPROJECT["project"]["dependencies"] + faces)
    sdk = re.search(r"^sdk_version: *(\S+)$", (ROOT / "spaces" / "README.md").read_text(), re.M).group(1)
    gradio = next(r for r in SPACE_EXTRA if r.name == "gradio")
    assert Version(sdk) in gradio.specifier
