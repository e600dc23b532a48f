"""``scripts/benchmark.py`` end to end on a tiny in-process model and tiny sizes (figures are not checked here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from dpd_test_components import get_dummy_components

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_prints_json_and_table(tmp_path, capsys):
    from dpdiffusion import DPDiffusionPipeline

    model = tmp_path / "model"
    DPDiffusionPipeline(**get_dummy_components(image_size=32)).save_pretrained(model)
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--model", str(model), "--sections", "pipeline", "protect_memory", "unlearning",
                        "--batch-size", "2", "--steps", "2", "--memory-sizes", "8", "16", "--out", str(out),
                        "--unlearning-args", "--num-train", "120", "--num-test", "60", "--epochs", "1",
                        "--finetune-epochs", "1", "--hessian-samples", "32", "--cg-iters", "2",
                        "--power-iters", "2", "--no-warmup"]) == 0
    result = json.loads(out.read_text())
    assert result["pipeline"]["pipeline_over_floor"] > 0 and result["pipeline"]["semantic_guidance"] is True
    assert result["protect_memory"]["16"]["images"] == 16
    assert {"first_order", "second_order", "retrain"} <= set(result["unlearning"]["table"]["rows"])
    printed = capsys.readouterr().out
    for needle in ("pipeline time / UNet+encoder floor", "peak RSS ratio 16 / 8", "first_order: speed-up vs retrain",
                   "first_order: test accuracy - retrain's"):
        assert needle in printed, needle


def test_benchmark_diffae_section_on_the_tiny_official_architecture(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--sections", "diffae", "--diffae-config", "tiny32", "--diffae-batch-size", "1",
                        "--diffae-steps", "2", "--out", str(out)]) == 0
    d = json.loads(out.read_text())["diffae"]
    assert d["config"] == "tiny32" and d["image_size"] == 32 and d["pipeline_over_floor"] > 0
    assert "DiffAE tiny32 (32 px" in capsys.readouterr().out


def test_benchmark_pipeline_section_on_a_trained_diffae_architecture_default(tmp_path):
    """The pipeline section on a pipeline as `train_autoencoder --unet_type diffae` saves it (DiffAEUNet2DModel +
    SemanticEncoder): the floor calls the UNet with ``cond=``; no guidance."""
    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.models.diffae import build_diffae_scheduler, build_diffae_unet

    parts = get_dummy_components(image_size=32)
    parts.update(unet=build_diffae_unet(sample_size=32, block_out_channels=(8, 16)), scheduler=build_diffae_scheduler())
    pipe = DPDiffusionPipeline(**parts)
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.bench_pipeline(pipe, batch_size=2, steps=2, repeats=1)
    assert result["semantic_guidance"] is False and result["pipeline_over_floor"] > 0
