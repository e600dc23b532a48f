"""The console script end to end, as a subprocess, on a tiny saved pipeline."""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from dpd_test_components import get_dummy_components


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dpdiffusion.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dpdiffusion import DPDiffusionPipeline

    path = tmp_path_factory.mktemp("tiny-model")
    DPDiffusionPipeline(**get_dummy_components()).save_pretrained(path)
    return path


def test_help_lists_subcommands():
    res = _run("--help")
    assert res.returncode == 0
    for cmd in ("demo", "protect", "unlearn", "evaluate", "train", "space"):
        assert cmd in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["--epsilon", "0"], "epsilon"), (["--epsilon", "nan"], "NaN"), (["--delta", "2"], "delta"),
    (["--attributes", "nope"], "unknown attribute"),
])
def test_protect_bad_arguments_are_one_clear_line(tiny_model, tmp_path, args, needle):
    res = _run("protect", "--model", str(tiny_model), "--source", str(tmp_path), "--output-dir",
               str(tmp_path / "out"), *args)
    assert res.returncode == 2
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_protect_subprocess_writes_outputs(tiny_model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "out"
    res = _run("protect", "--model", str(tiny_model), "--source", str(src), "--output-dir", str(out),
               "--epsilon", "2", "--num-inference-steps", "2", "--no-progress")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["epsilon"] <= 2.0 for r in recs)
    assert sorted(p.name for p in out.iterdir()) == ["images", "metadata.jsonl"]  # the rest is the owner's:
    assert (tmp_path / "out-private" / "protect_config.json").exists() and str(tmp_path / "out-private") in res.stdout


def test_protect_of_synthfaces_says_the_release_protects_no_one(tiny_model, tmp_path):
    """SynthFaces re-render from their generator's seed and the published index: the command line does not call
    that release safe to publish, and says why (tests/attacks/test_protect_release_folder.py has the attack)."""
    from dpdiffusion.data.synthfaces import make_synthfaces

    make_synthfaces(2, image_size=16).save_to_disk(tmp_path / "synthfaces")
    res = _run("protect", "--model", str(tiny_model), "--source", str(tmp_path / "synthfaces"), "--output-dir",
               str(tmp_path / "out"), "--num-inference-steps", "1", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "safe to publish" not in res.stdout and "warning: " in res.stdout and "protects no one" in res.stdout
    assert res.stderr.count("protects no one") == 1  # logged once


def test_protect_that_releases_nothing_exits_non_zero_and_says_where_the_reasons_are(tiny_model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"not an image")
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out, private = tmp_path / "out", tmp_path / "owner"
    res = _run("protect", "--model", str(tiny_model), "--source", str(src), "--output-dir", str(out), "--private-dir",
               str(private), "--num-inference-steps", "1", "--no-progress")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    reasons = private / "skipped.jsonl"
    assert f"nothing was released: all 2 row(s) were skipped; the reasons are in {reasons}" in res.stderr
    assert len((private / "skipped.jsonl").read_text().splitlines()) == 2


def test_train_subprocess_tiny_then_resume(tmp_path):
    args = ["train", "--output-dir", str(tmp_path / "run"), "--num-images", "64", "--image-size", "16",
            "--latent-dim", "8", "--unet-channels", "8", "16", "--encoder-channels", "8", "16",
            "--batch-size", "16", "--checkpoint-every", "2", "--progress", "false"]
    res = _run(*args, "--max-steps", "2")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "model" / "model_index.json").exists()
    res = _run(*args, "--max-steps", "3")
    assert res.returncode == 0, res.stderr
    state = json.loads((tmp_path / "run" / "model" / "training_state.json").read_text())
    assert state["step"] == 3
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-2", "step-3"]


def test_unlearn_subprocess_on_protect_output(tiny_model, tmp_path):
    """protect -> unlearn as the user would run them; the card's privacy figures equal protect's."""
    import yaml

    from dpdiffusion.training.classifier import build_classifier

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "Smiling": int(rng.integers(0, 2)), "Eyeglasses": 1 - i % 2})
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clf = tmp_path / "clf"
    build_classifier(2, image_size=16, label_names=["Smiling", "Eyeglasses"]).save_pretrained(clf)
    prot = tmp_path / "protected"
    res = _run("protect", "--model", str(tiny_model), "--source", str(src), "--output-dir", str(prot),
               "--epsilon", "1.5", "--num-inference-steps", "2", "--limit", "3", "--no-progress")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "unlearned"
    res = _run("unlearn", "--classifier", str(clf), "--original", str(src), "--revised", str(prot),
               "--label-columns", "Smiling", "Eyeglasses", "--output-dir", str(out), "--image-size", "16",
               "--method", "first_order", "--no-progress")
    assert res.returncode == 0, res.stderr
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    rec = json.loads((prot / "metadata.jsonl").read_text().splitlines()[0])
    assert front["privacy"]["epsilon"] == rec["epsilon"] and front["privacy"]["delta"] == rec["delta"]
    assert (out / "model.safetensors").exists()
    bad = _run("unlearn", "--classifier", str(clf), "--original", str(src), "--revised", str(src),
               "--label-columns", "Smiling", "Eyeglasses", "--output-dir", str(tmp_path / "x"), "--image-size", "16")
    assert bad.returncode == 2 and "protect" in bad.stderr


@pytest.mark.parametrize("step_search", ["held_out", "training_loss"])
def test_unlearn_two_cpu_processes_match_one(tmp_path, step_search):
    """`accelerate launch --multi_gpu --num_processes 2 -m dpdiffusion.cli unlearn`: two real CPU workers split the
    gradient sums and the step search's losses (accelerator.reduce), only rank 0 writes, and the update equals the
    single-process one."""
    import os

    from safetensors.torch import load_file

    from dpdiffusion.training.classifier import build_classifier

    src, prot = tmp_path / "src", tmp_path / "protected"
    (prot / "images").mkdir(parents=True)
    src.mkdir()
    rng = np.random.default_rng(1)
    rows, recs = [], []
    for i in range(12):
        PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "Smiling": int(rng.integers(0, 2))})
        if i % 2 == 0:  # a protect-style output for half of the rows
            PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(prot / "images" / f"{i}.png")
            recs.append({"index": i, "file_name": f"images/{i}.png", "epsilon": 1.0, "delta": 1e-5,
                         "guarantee": "formal", "neighbouring_relation": "attribute-neighbours",
                         "attributes": ["dark_skin"]})
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (prot / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    clf = tmp_path / "clf"
    build_classifier(1, image_size=16, label_names=["Smiling"], seed=3).save_pretrained(clf)
    args = ["unlearn", "--classifier", str(clf), "--original", str(src), "--revised", str(prot), "--label-columns",
            "Smiling", "--image-size", "16", "--method", "second_order", "--step-search", step_search, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", *args, "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                          "dpdiffusion.cli", *args, "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    original = load_file(clf / "model.safetensors")
    assert a.keys() == b.keys()
    moved = max(float((a[k] - original[k]).abs().max()) for k in a if a[k].is_floating_point())
    gap = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert moved > 1e-4 and gap < 1e-3 * moved  # same update up to the order of float sums


def test_evaluate_card_refuses_a_model_that_is_not_embedded_before_evaluating(tiny_model):
    from dpdiffusion.cli import main

    with pytest.raises(SystemExit, match="--card writes into an embedded model's card: --model must be omitted or "
                                         "unet2d"):
        main(["evaluate", "autoencoder", "--model", str(tiny_model), "--num-images", "20", "--card"])
