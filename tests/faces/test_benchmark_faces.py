"""``scripts/benchmark.py --sections faces`` on a tiny in-process model (figures are not checked here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from dpd_test_components import get_dummy_components

ROOT = Path(__file__).resolve().parents[2]


def test_faces_section_prints_the_overhead(tmp_path, capsys):
    from dpdiffusion import DPDiffusionPipeline

    model = tmp_path / "model"
    DPDiffusionPipeline(**get_dummy_components(image_size=32)).save_pretrained(model)
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--model", str(model), "--sections", "faces", "--steps", "2", "--faces-repeats", "1",
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())["faces"]
    names = ("astronaut_512px", "astronaut_2048px", "astronaut_2048px_min_face_160")
    assert all(result[k]["faces"] == 1 for k in names)
    assert result["astronaut_512px"]["overhead_over_protect"] > 0
    assert "faces, astronaut_512px: detect + align + paste / protect one face" in capsys.readouterr().out
