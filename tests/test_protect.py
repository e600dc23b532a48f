"""Dataset protection: outputs, metadata, corrupt rows, resume equals an uninterrupted run, the private folder.

What a recipient of the release folder can learn from it: tests/attacks/test_protect_release_folder.py."""

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
    assert all("Smiling" not in r for r in recs)  # no input column unless named in keep_columns
    private = tmp_path / "out-private"  # the default: next to the output folder
    skipped = [json.loads(line) for line in (private / "skipped.jsonl").read_text().splitlines()]
    assert [s["index"] for s in skipped] == [5] and skipped[0]["path"].endswith("broken.png")
    assert sorted(p.name for p in out.iterdir()) == ["images", "metadata.jsonl"]
    assert sorted(p.name for p in private.iterdir()) == [".parts", "protect_config.json", "skipped.jsonl"]
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 5 and "epsilon" in ds.column_names


def test_seeded_resume_gives_the_same_output_as_one_run(dummy_pipe, image_folder, tmp_path):
    """With --insecure-seed a lost image is the same release, so it is written again (byte for byte); the default
    mode never re-releases it (tests/test_private_by_default.py)."""
    full = protect_dataset(dummy_pipe, _cfg(image_folder, tmp_path / "full", insecure_seed=0), progress=False)
    part = tmp_path / "part"
    protect_dataset(dummy_pipe, _cfg(image_folder, part, limit=3, insecure_seed=0), progress=False)  # "crash"
    (part / "images" / "00000002.png").unlink()  # and lose an image whose record was written
    protect_dataset(dummy_pipe, _cfg(image_folder, part, insecure_seed=0), progress=False)
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
        protect_dataset(dummy_pipe, _cfg(image_folder, out, insecure_seed=5), progress=False)
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
    parts = {p.name: p.read_text().splitlines() for p in (tmp_path / "out-private" / ".parts").glob("worker-*.jsonl")}
    assert sorted(parts) == ["worker-0.jsonl", "worker-1.jsonl"]
    assert sorted(json.loads(line)["index"] for line in parts["worker-0.jsonl"]) == [0, 2, 4]
    assert sorted(json.loads(line)["index"] for line in parts["worker-1.jsonl"]) == [1, 3]
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 4]


def _write_part(out, part, indices, *, cut_after=None):
    """A worker part file with records of ``indices`` (in that order) whose images exist, optionally a cut line."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in indices:
        name = f"images/{i:08d}.png"
        (out / name).write_bytes(b"png")
        lines.append(json.dumps({"index": i, "file_name": name, "epsilon": 1.0, "pad": "x" * 400}) + "\n")
    if cut_after is not None:
        lines.insert(cut_after, '{"index": 999, "file_na')  # a record cut by a crash, then ended by _open_append
        lines[cut_after] += "\n"
    part.write_text("".join(lines))


def test_merge_sorts_out_of_order_parts_in_bounded_chunks(tmp_path, monkeypatch):
    from dpdiffusion import protect

    monkeypatch.setattr(protect, "_SORT_CHUNK", 3)  # force the external sort through several runs
    out, private = tmp_path / "out", tmp_path / "private"
    parts = private / ".parts"
    parts.mkdir(parents=True)
    _write_part(out, parts / "worker-0.jsonl", [0, 2, 4, 8, 6, 2, 10, 12, 14], cut_after=4)  # resumed: 6 and 2 late
    _write_part(out, parts / "worker-1.jsonl", [1, 3, 5, 7, 9, 11, 13])  # in order: merged as it is
    (out / "images" / "00000013.png").unlink()  # a record whose image was lost is not listed
    (parts / "skipped-0.jsonl").write_text('{"index": 16, "reason": "x"}\n{"index": 15, "reason": "y"}\n')
    protect._merge(out, private, keys={"index", "file_name", "epsilon"})
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [i for i in range(15) if i != 13]
    assert all(r["file_name"] == f"images/{r['index']:08d}.png" for r in recs)
    assert all(sorted(r) == ["epsilon", "file_name", "index"] for r in recs)  # each record reduced to `keys`
    assert [json.loads(line)["index"] for line in (private / "skipped.jsonl").read_text().splitlines()] == [15, 16]
    assert not (out / "skipped.jsonl").exists()
    assert not (parts / "merge").exists()  # sorted runs removed
    assert not list(out.glob(".*tmp*")) and not list(private.glob(".*tmp*"))


@pytest.mark.parametrize("chunk", [None, 500])
def test_merge_memory_does_not_grow_with_the_number_of_records(tmp_path, monkeypatch, chunk):
    """Peak Python memory of the merge for 1,000 and 10,000 records: flat (it used to hold every record)."""
    import random
    import tracemalloc

    from dpdiffusion import protect

    if chunk:
        monkeypatch.setattr(protect, "_SORT_CHUNK", chunk)
    peaks = {}
    for n in (1000, 10000):
        out, private = tmp_path / str(n), tmp_path / f"{n}-private"
        (private / ".parts").mkdir(parents=True)
        order = list(range(n))
        if chunk:  # out of order: exercises the chunked external sort
            random.Random(0).shuffle(order)
        _write_part(out, private / ".parts" / "worker-0.jsonl", order)
        tracemalloc.start()
        protect._merge(out, private)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len((out / "metadata.jsonl").read_text().splitlines()) == n
    assert peaks[10000] < 1.5 * peaks[1000] + 200_000, peaks


def test_protect_reads_a_saved_dataset_dict_split_as_a_stream(dummy_pipe, tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(5)]
    ds = datasets.Dataset.from_dict({"image": images, "Smiling": [1, -1, 1, -1, 1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "Smiling": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ds.select(range(2)), "test": ds.select(range(2, 5))}).save_to_disk(tmp_path / "dd")
    out = protect_dataset(dummy_pipe, _cfg(tmp_path / "dd", tmp_path / "out", split="test", keep_columns=["Smiling"]),
                          progress=False)
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["index"], r["Smiling"]) for r in recs] == [(0, 1), (1, -1), (2, 1)]
    with pytest.raises(ValueError, match="split='validation'"):
        protect_dataset(dummy_pipe, _cfg(tmp_path / "dd", tmp_path / "out2", split="validation"), progress=False)


# ----------------------------------------------------------------------------------- the release and the private folder
def test_private_folder_is_owner_only_whatever_the_umask(dummy_pipe, image_folder, tmp_path):
    import os
    import stat

    private = tmp_path / "owner" / "bookkeeping"
    old = os.umask(0)  # the most permissive umask: the modes must not follow it
    try:
        out = protect_dataset(dummy_pipe, _cfg(image_folder, tmp_path / "out", private_dir=str(private)),
                              progress=False)
    finally:
        os.umask(old)
    assert not (tmp_path / "out-private").exists()
    modes = {str(p.relative_to(private)): stat.S_IMODE(p.stat().st_mode) for p in [private, *private.rglob("*")]}
    assert modes.pop(".") == 0o700 and modes.pop(".parts") == 0o700
    assert sorted(modes) == [".parts/skipped-0.jsonl", ".parts/worker-0.jsonl", "protect_config.json", "skipped.jsonl"]
    assert set(modes.values()) == {0o600}, modes
    assert sorted(p.name for p in out.iterdir()) == ["images", "metadata.jsonl"]


@pytest.mark.parametrize("where", ["same", "inside_output", "output_inside"])
def test_private_folder_overlapping_the_release_is_refused_before_writing(dummy_pipe, image_folder, tmp_path, where):
    out = tmp_path / "out"
    private = {"same": out, "inside_output": out / "private", "output_inside": tmp_path}[where]
    argument = "output_dir must be outside private_dir" if where == "output_inside" else "private_dir must be outside"
    with pytest.raises(ValueError, match=argument):
        protect_dataset(dummy_pipe, _cfg(image_folder, out, private_dir=str(private)), progress=False)
    assert not out.exists()


def test_a_release_without_its_private_state_is_not_resumed_blind(dummy_pipe, image_folder, tmp_path):
    """A rerun reads which rows were released from the private folder; pointed at another (or with it deleted), it
    would release a row whose image was deleted a second time with other noise: refused."""
    out = tmp_path / "out"
    protect_dataset(dummy_pipe, _cfg(image_folder, out), progress=False)
    with pytest.raises(ValueError, match="holds no resume state"):
        protect_dataset(dummy_pipe, _cfg(image_folder, out, private_dir=str(tmp_path / "elsewhere")), progress=False)
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(ValueError, match="other settings"):  # the settings are compared in the private folder
        protect_dataset(dummy_pipe, _cfg(image_folder, out, keep_columns=["Smiling"]), progress=False)


@pytest.mark.parametrize("kept, reason", [
    (["Frowning"], "not a column of the source"), (["image"], "an image column"),
    (["index"], "a name each record uses itself"), (["epsilon"], "a name each record uses itself"),
    (["Smiling", "Dark Skin"], "protected attribute 'dark_skin'"),
])
def test_keep_columns_refusals_name_the_column_and_what_may_be_kept(dummy_pipe, tmp_path, kept, reason):
    import datasets

    rng = np.random.default_rng(2)
    ds = datasets.Dataset.from_dict(  # Smiling is no relabelling of Dark Skin (else it too would be refused)
        {"image": [PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)],
         "Smiling": [1, -1, 1], "index": [7, 9, 11], "epsilon": [0.5, 0.5, 0.5], "Dark Skin": [1, 0, 0]},
        features=datasets.Features({"image": datasets.Image(), "Smiling": datasets.Value("int64"),
                                    "index": datasets.Value("int64"), "epsilon": datasets.Value("float64"),
                                    "Dark Skin": datasets.Value("int64")}))
    ds.save_to_disk(tmp_path / "src")
    with pytest.raises(ValueError, match="keep_columns may not name") as info:
        protect_dataset(dummy_pipe, _cfg(tmp_path / "src", tmp_path / "out", keep_columns=kept), progress=False)
    assert reason in str(info.value) and str(info.value).endswith("the columns keep_columns may name are ['Smiling']")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-private").exists()


def test_keep_columns_follows_what_the_release_protects(dummy_pipe, image_folder, tmp_path):
    """An attribute of the model that this release does not protect may be kept (utility); with scope='latent'
    (the whole image is protected) none may."""
    rows = [json.loads(line) for line in (image_folder / "metadata.jsonl").read_text().splitlines()]
    out = protect_dataset(dummy_pipe, _cfg(image_folder, tmp_path / "out", keep_columns=["Smiling"]), progress=False)
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["Smiling"] for r in recs] == [row["Smiling"] for row in rows[:5]]
    with pytest.raises(ValueError, match="protected attribute 'smiling'"):
        protect_dataset(dummy_pipe, _cfg(image_folder, tmp_path / "latent", keep_columns=["Smiling"], scope="latent"),
                        progress=False)


def test_a_release_folder_of_an_earlier_version_is_refused_then_finished_as_its_message_says(dummy_pipe, image_folder,
                                                                                             tmp_path, monkeypatch):
    """Earlier versions kept .parts/, protect_config.json, skipped.jsonl and every input column in the output folder.
    Such a folder is refused with the commands that move the bookkeeping out; after them the rerun keeps every image
    already released (nothing recomputed) and rewrites metadata.jsonl without the columns not kept."""
    import shlex
    import subprocess

    out, private = tmp_path / "out", tmp_path / "out-private"
    protect_dataset(dummy_pipe, _cfg(image_folder, out, keep_columns=["Smiling"]), progress=False)
    for name in (".parts", "protect_config.json", "skipped.jsonl"):  # the old layout
        (private / name).rename(out / name)
    private.rmdir()
    config = json.loads((out / "protect_config.json").read_text())
    del config["keep_columns"]  # an earlier version's settings
    (out / "protect_config.json").write_text(json.dumps(config, indent=2))
    images = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    with pytest.raises(ValueError, match="earlier dpdiffusion protect") as info:
        protect_dataset(dummy_pipe, _cfg(image_folder, out), progress=False)
    assert not private.exists()
    command = str(info.value).split("released: ", 1)[1].split(" ; then", 1)[0]
    subprocess.run(command, shell=True, check=True)
    assert "mkdir -p -m 700" in command and shlex.split(command)[-1].rstrip("/") == str(private)
    calls = []
    monkeypatch.setattr(type(dummy_pipe), "__call__", lambda self, *a, **kw: calls.append(1))
    protect_dataset(dummy_pipe, _cfg(image_folder, out), progress=False)
    assert calls == [] and {p.name: p.read_bytes() for p in (out / "images").iterdir()} == images
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and all("Smiling" not in r for r in recs)
    assert sorted(p.name for p in out.iterdir()) == ["images", "metadata.jsonl"]
    assert json.loads((private / "protect_config.json").read_text())["keep_columns"] is None  # upgraded


@pytest.mark.parametrize("where", ["same", "inside_source", "source_inside"])
def test_a_release_folder_overlapping_the_source_is_refused(dummy_pipe, image_folder, where):
    out = {"same": image_folder, "inside_source": image_folder / "released",
           "source_inside": image_folder.parent}[where]
    before = sorted(p.name for p in image_folder.parent.rglob("*"))
    with pytest.raises(ValueError, match="output_dir must be outside the source folder"):
        protect_dataset(dummy_pipe, _cfg(image_folder, out, private_dir=str(image_folder.parent.parent / "private")),
                        progress=False)
    assert sorted(p.name for p in image_folder.parent.rglob("*")) == before


# ----------------------------------------------------------------------------------- settings, model and reruns
def test_settings_of_a_run_that_released_nothing_give_way_to_a_corrected_rerun(dummy_pipe, image_folder, tmp_path):
    """A run that released nothing (--limit 0; then a source whose only row is unreadable) leaves its settings in the
    private folder; a rerun with other settings replaces them (and the skipped list made under them) instead of
    refusing. Once a row is released, other settings are refused."""
    out, private = tmp_path / "out", tmp_path / "out-private"
    protect_dataset(dummy_pipe, _cfg(image_folder, out, limit=0), progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0.png").write_bytes(b"not a png")
    protect_dataset(dummy_pipe, _cfg(broken, out, delta=1e-6), progress=False)  # other settings, nothing released
    assert json.loads((private / "protect_config.json").read_text())["source"] == str(broken)
    assert len((private / "skipped.jsonl").read_text().splitlines()) == 1
    protect_dataset(dummy_pipe, _cfg(image_folder, out), progress=False)  # corrected: replaced, row 0 not skipped
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 4]
    assert [json.loads(line)["index"] for line in (private / "skipped.jsonl").read_text().splitlines()] == [5]
    with pytest.raises(ValueError, match=r"other settings \(delta differ"):
        protect_dataset(dummy_pipe, _cfg(image_folder, out, delta=1e-6), progress=False)


def test_a_resume_with_another_model_is_refused(dummy_pipe, image_folder, tmp_path):
    """The model is recorded in the private settings: a resumed run with another model would stamp its own figures
    on the rows it recovers. Refused; a config written before the model was recorded is accepted and upgraded."""
    from dpdiffusion import DPDiffusionPipeline

    dummy_pipe.save_pretrained(tmp_path / "model_a")
    dummy_pipe.save_pretrained(tmp_path / "model_b")
    a = DPDiffusionPipeline.from_pretrained(tmp_path / "model_a")
    b = DPDiffusionPipeline.from_pretrained(tmp_path / "model_b")
    out, config = tmp_path / "out", tmp_path / "out-private" / "protect_config.json"
    protect_dataset(a, _cfg(image_folder, out, limit=2), progress=False)
    assert json.loads(config.read_text())["model"] == str((tmp_path / "model_a").resolve())
    assert "model" not in json.loads((out / "metadata.jsonl").read_text().splitlines()[0])  # private only
    with pytest.raises(ValueError, match=r"other settings \(model differ"):
        protect_dataset(b, _cfg(image_folder, out), progress=False)
    old = json.loads(config.read_text())
    del old["model"]  # an earlier version's settings
    config.write_text(json.dumps(old))
    protect_dataset(a, _cfg(image_folder, out, limit=3), progress=False)
    assert json.loads(config.read_text())["model"] == str((tmp_path / "model_a").resolve())  # upgraded


def test_an_existing_private_folder_open_to_others_is_used_with_a_warning(dummy_pipe, image_folder, tmp_path, caplog):
    import os
    import stat

    private = tmp_path / "mine"
    private.mkdir()
    os.chmod(private, 0o755)
    with caplog.at_level("WARNING", logger="dpdiffusion.protect"):
        protect_dataset(dummy_pipe, _cfg(image_folder, tmp_path / "out", private_dir=str(private), limit=1),
                        progress=False)
    assert any("mode 755" in r.getMessage() and "chmod 700" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE(private.stat().st_mode) == 0o755  # the user's folder is left as it is


def test_records_hold_json_values_only():
    """Kept cells become JSON values: numpy scalars and arrays, dates and durations are converted; bytes and images
    are refused (never written as their str(), which would publish them), naming the type only."""
    import datetime
    import decimal

    from dpdiffusion.protect_columns import jsonable

    assert jsonable({"a": np.int64(3), "b": np.float32(0.5), "c": np.bool_(True), "d": np.arange(2),
                     "e": datetime.date(2024, 5, 1), "f": datetime.timedelta(seconds=3), "g": decimal.Decimal("1.5"),
                     "h": (1, None)}) == {"a": 3, "b": 0.5, "c": True, "d": [0, 1], "e": "2024-05-01", "f": 3.0,
                                          "g": "1.5", "h": [1, None]}
    for bad in (b"\x89PNG secret", [b"x"], PIL.Image.new("RGB", (2, 2)), {"k": bytearray(b"x")}, object()):
        with pytest.raises(TypeError, match="cannot be written to a JSON record") as info:
            jsonable(bad)
        assert "secret" not in str(info.value) and "PNG" not in str(info.value)


def test_keep_columns_content_check_without_features_and_past_the_tracked_values(monkeypatch):
    """The content pass: a stream that declares no features still has its bytes cells refused; past
    MAX_TRACKED_VALUES distinct values a relabelling is still caught when it is equality or negation, and a column
    that only agrees on some rows is kept."""
    from dpdiffusion import protect_columns
    from dpdiffusion.protect_columns import check_keep_columns

    monkeypatch.setattr(protect_columns, "MAX_TRACKED_VALUES", 4)
    tone = [0.1 * i for i in range(20)]
    table = {"image": [None] * 20, "raw": [b"\x89PNG"] * 20, "tone": tone, "minus": [-t for t in tone],
             "noisy": [t if i % 3 else 0.0 for i, t in enumerate(tone)], "smiling": [i % 2 for i in range(20)]}

    def rows(columns):
        for i in range(20):
            yield {c: table[c][i] for c in columns}

    protected = {"tone": ("tone", "own")}
    kw = dict(columns=list(table), features={}, image_column="image", protected=protected, figures={}, rows=rows)
    with pytest.raises(ValueError, match="may not name 'raw' \\(it holds bytes values") as info:
        check_keep_columns(["raw"], **kw)
    assert "PNG" not in str(info.value) and str(info.value).endswith("may name are ['noisy', 'smiling']")
    with pytest.raises(ValueError, match="'minus' \\(a one-to-one relabelling of the column 'tone'"):
        check_keep_columns(["minus"], **kw)
    assert check_keep_columns(["noisy", "smiling"], **kw) == ["noisy", "smiling"]
