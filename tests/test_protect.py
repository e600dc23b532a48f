"""Dataset protection: outputs, metadata, corrupt rows, resume equals an uninterrupted run."""

import json

import numpy as np
import PIL.Image
import pytest

from dpdiffusion.protect import ProtectConfig, protect_dataset


@pytest.fixture
def image_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        mode = ["RGB", "L", "RGBA", "RGB", "RGB"][i]
        shape = {"RGB": (20, 24, 3), "L": (18, 18), "RGBA": (16, 16, 4)}[mode]
        PIL.Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(src / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "Smiling": int(i % 2) * 2 - 1})
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    rows.append({"file_name": "broken.png", "Smiling": 1})
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def _cfg(src, out, **kw):
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("batch_size", 2)
    return ProtectConfig(source=str(src), output_dir=str(out), attributes=["dark_skin"], epsilon=1.0, **kw)


def test_protect_writes_imagefolder_with_figures(dummy_pipe, image_folder, tmp_path):
    out = protect_dataset(dummy_pipe, _cfg(image_folder, tmp_path / "out"), progress=False)
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 4]
    assert all(r["epsilon"] <= 1.0 and r["delta"] == 1e-5 and r["guarantee"] == "formal" for r in recs)
    assert all((out / r["file_name"]).exists() for r in recs)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["index"] for s in skipped] == [5]
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 5 and "epsilon" in ds.column_names


def test_resume_gives_the_same_output_as_one_run(dummy_pipe, image_folder, tmp_path):
    full = protect_dataset(dummy_pipe, _cfg(image_folder, tmp_path / "full"), progress=False)
    part = tmp_path / "part"
    protect_dataset(dummy_pipe, _cfg(image_folder, part, limit=3), progress=False)  # "crash" after 3 rows
    (part / "images" / "00000002.png").unlink()  # and lose an image whose record was written
    protect_dataset(dummy_pipe, _cfg(image_folder, part), progress=False)
    names = sorted(p.name for p in (full / "images").iterdir())
    assert names == sorted(p.name for p in (part / "images").iterdir())
    for n in names:
        a = np.asarray(PIL.Image.open(full / "images" / n))
        b = np.asarray(PIL.Image.open(part / "images" / n))
        assert np.array_equal(a, b), n
    assert len((part / "metadata.jsonl").read_text().splitlines()) == 5


def test_other_settings_refused_and_bad_epsilon_writes_nothing(dummy_pipe, image_folder, tmp_path):
    out = tmp_path / "out"
    protect_dataset(dummy_pipe, _cfg(image_folder, out, limit=1), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        protect_dataset(dummy_pipe, _cfg(image_folder, out, seed=5), progress=False)
    with pytest.raises(ValueError, match="epsilon"):
        protect_dataset(dummy_pipe, ProtectConfig(source=str(image_folder), output_dir=str(tmp_path / "x"),
                                                  epsilon=-1.0), progress=False)
    assert not (tmp_path / "x").exists()


def test_accelerate_launch_runs_two_real_cpu_workers(dummy_pipe, image_folder, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` forms a 2-process CPU group: each worker protects its
    own rows (worker-0 and worker-1 parts) and rank 0 merges them; the same command runs on several GPUs."""
    import os
    import subprocess
    import sys

    model = tmp_path / "model"
    dummy_pipe.save_pretrained(model)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dpdiffusion.cli",
           "protect", "--model", str(model), "--source", str(image_folder), "--output-dir", str(out),
           "--attributes", "dark_skin", "--epsilon", "1", "--num-inference-steps", "1", "--batch-size", "2",
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = {p.name: p.read_text().splitlines() for p in (out / ".parts").glob("worker-*.jsonl")}
    assert sorted(parts) == ["worker-0.jsonl", "worker-1.jsonl"]
    assert sorted(json.loads(line)["index"] for line in parts["worker-0.jsonl"]) == [0, 2, 4]
    assert sorted(json.loads(line)["index"] for line in parts["worker-1.jsonl"]) == [1, 3]
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 4]
