"""Attacker: a recipient of a ``dpdiffusion protect`` release (threat model: "dataset recipient", channel "release
folder").

The recipient reads every file under ``--output-dir``, recursively, hidden files included, and nothing else: not
the source, not the owner's ``--private-dir``. The source here is a folder of people's photos named after them, with
a ``metadata.csv`` of ``name, dark_skin, long_hair, smiling, hometown``; the release protects ``dark_skin`` and
``long_hair``. The recipient must learn no name, no hometown, no true value of a protected attribute, no source path
or file name, no seed, and no column the owner did not name in ``--keep-columns``.

Every test here fails on commit ae36aae, where ``protect`` copied every input column into ``metadata.jsonl`` and
kept ``protect_config.json`` (source path, seed), ``skipped.jsonl`` (source paths) and ``.parts/`` (every column
again) inside the release folder, and had no ``keep_columns``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from dpdiffusion.protect import ProtectConfig, protect_dataset

PROTECTED = ["dark_skin", "long_hair"]
# name, dark_skin, long_hair, smiling, hometown; the last row's file is corrupt (it lands in the skipped list)
PEOPLE = [
    ("zoe_quartz", 1, 0, 1, "Fernhollow"), ("yannick_ferrule", 0, 1, 0, "Quillmere"),
    ("odalys_brackwater", 1, 1, 1, "Saltmarrow"), ("tiberius_lanthorn", 0, 0, 0, "Hollowdene"),
    ("mireille_foxglade", 1, 0, 0, "Ambercleft"), ("quentin_vellum", 1, 1, 0, "Corriebrae"),
]
CORRUPT = "quentin_vellum"
SOURCE_FOLDER = "ward7_patients_2026"  # a telling folder name: part of the source path
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_people(root: Path, *, dark_skin_header: str = "dark_skin") -> Path:
    src = root / SOURCE_FOLDER
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [f"file_name,name,{dark_skin_header},long_hair,smiling,hometown"]
    for name, dark, long_, smiling, town in PEOPLE:
        if name == CORRUPT:
            (src / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
        else:
            PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / f"{name}.png")
        lines.append(f"{name}.png,{name},{dark},{long_},{smiling},{town}")
    (src / "metadata.csv").write_text("\n".join(lines) + "\n")
    return src


def _published(out: Path) -> dict[str, bytes]:
    """What the recipient receives: every file under the release folder, hidden ones included, as bytes."""
    files = {}
    for folder, dirs, names in os.walk(out):
        for name in names:
            path = Path(folder) / name
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


def _secrets(src: Path) -> list[str]:
    """Strings that must not appear in any published byte: names, hometowns, the source path and file names."""
    return [*(p[0] for p in PEOPLE), *(p[4] for p in PEOPLE), str(src), SOURCE_FOLDER,
            *(f"{p[0]}.png" for p in PEOPLE)]


def _assert_learns_nothing(files: dict[str, bytes], secrets: list[str]) -> None:
    for rel, data in files.items():
        low = data.lower()
        for secret in secrets:
            assert secret.lower().encode() not in low, f"{secret!r} is readable in {rel}"


def _png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


def _records(files: dict[str, bytes]) -> list[dict]:
    return [json.loads(line) for line in files["metadata.jsonl"].decode().splitlines()]


def _norm(name: str) -> str:
    return name.replace("_", "").replace("-", "").replace(" ", "").lower()


def _protect(pipe, src: Path, out: Path, **kw) -> Path:
    kw.setdefault("num_inference_steps", 1)
    return protect_dataset(pipe, ProtectConfig(source=str(src), output_dir=str(out), attributes=PROTECTED,
                                               epsilon=1.0, batch_size=2, **kw), progress=False)


@pytest.mark.parametrize("insecure_seed", [None, 808_417_293])
def test_release_folder_holds_no_identifying_column_or_path(dummy_pipe, tmp_path, insecure_seed):
    """Default protect: the folder is images/ and metadata.jsonl only; no name, hometown, source path or file name in
    any byte; no input column at all, so the records differ only by index and file_name. With --insecure-seed every
    record says noise_source="seeded" (not a private release) but the seed stays with the owner. The bookkeeping is
    in the private folder, 0700/0600. Fails on ae36aae: name, hometown and the true dark_skin/long_hair were in every
    record, the source path in skipped.jsonl and protect_config.json (with the seed) inside the release folder."""
    src = _make_people(tmp_path)
    out = _protect(dummy_pipe, src, tmp_path / "release", insecure_seed=insecure_seed)
    files = _published(out)
    good = [p[0] for p in PEOPLE if p[0] != CORRUPT]
    _assert_learns_nothing(files, [*_secrets(src), *([str(insecure_seed)] if insecure_seed else [])])
    assert sorted(files) == sorted(["metadata.jsonl", *(f"images/{i:08d}.png" for i in range(len(good)))])
    records = _records(files)
    columns = {_norm(c) for c in ("name", *PROTECTED, "smiling", "hometown")}
    assert all(not columns & {_norm(k) for k in r} for r in records)
    # nothing per row but its position: every record is the same release figures
    figures = [{k: v for k, v in r.items() if k not in ("index", "file_name")} for r in records]
    assert all(f == figures[0] for f in figures)
    expected = ("csprng", "formal") if insecure_seed is None else ("seeded", "none (reproducible noise)")
    assert (figures[0]["noise_source"], figures[0]["guarantee"]) == expected
    for rel, data in files.items():  # the PNGs carry pixels only (no text chunk)
        if rel.endswith(".png"):
            assert set(_png_chunks(data)) <= {b"IHDR", b"PLTE", b"IDAT", b"IEND"}, rel
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == len(good) and "name" not in ds.column_names and "epsilon" in ds.column_names
    # the owner keeps the bookkeeping, in a folder no other local user can read
    private = tmp_path / "release-private"
    skipped = [json.loads(line) for line in (private / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["path"].endswith(f"{CORRUPT}.png")
    assert json.loads((private / "protect_config.json").read_text())["insecure_seed"] == insecure_seed
    for path in [private, *private.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_keep_columns_keeps_only_what_is_named(dummy_pipe, tmp_path):
    """--keep-columns smiling: each record gets its row's smiling value, and still no name, hometown or protected
    label. Fails on ae36aae: no keep_columns (TypeError), and every column was published."""
    src = _make_people(tmp_path)
    out = _protect(dummy_pipe, src, tmp_path / "release", keep_columns=["smiling"])
    files = _published(out)
    _assert_learns_nothing(files, _secrets(src))
    records = _records(files)
    assert records and all(r["smiling"] == PEOPLE[r["index"]][3] for r in records)
    figures = [{k: v for k, v in r.items() if k not in ("index", "file_name", "smiling")} for r in records]
    assert all(f == figures[0] for f in figures)  # nothing else per row


@pytest.mark.parametrize("header, kept, how", [("dark_skin", "dark_skin", "api"), ("Dark-Skin", "Dark-Skin", "api"),
                                               ("DARK SKIN", "DARK SKIN", "api"), ("dark_skin", "dark_skin", "cli")])
def test_keeping_a_protected_column_is_refused_before_anything_is_written(dummy_pipe, tmp_path, header, kept, how):
    """A protected attribute's column, however it is spelt, is refused: ValueError naming keep_columns and the
    columns it may name (the command line: exit status 2 and that one line), no output folder and no private
    folder; the message names columns, never a cell. Fails on ae36aae: no keep_columns (a TypeError; argparse
    refused --keep-columns as an unknown flag, without the reason)."""
    src = _make_people(tmp_path, dark_skin_header=header)
    out, private = tmp_path / "release", tmp_path / "release-private"
    if how == "api":
        with pytest.raises(ValueError, match="keep_columns") as info:
            _protect(dummy_pipe, src, out, keep_columns=[kept])
        message = str(info.value)
    else:
        from dpdiffusion import DPDiffusionPipeline

        model = tmp_path / "model"
        DPDiffusionPipeline(**dummy_pipe.components).save_pretrained(model)
        res = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "protect", "--model", str(model), "--source",
                              str(src), "--output-dir", str(out), "--attributes", "dark_skin", "--keep-columns", kept,
                              "--num-inference-steps", "1", "--no-progress"], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        message = res.stderr
    assert "keep_columns may not name" in message and "protected attribute 'dark_skin'" in message
    assert "'smiling'" in message  # what may be kept instead
    assert not out.exists() and not private.exists()
    _assert_learns_nothing({"message": message.encode()}, [p[0] for p in PEOPLE] + [p[4] for p in PEOPLE])


def test_synthfaces_generator_columns_never_leave(dummy_pipe, tmp_path):
    """A SynthFaces ``save_to_disk`` dataset: its identity and seed columns (with index, they re-render the original
    bit for bit) are not published, and keeping them is refused. Fails on ae36aae: every record carried identity,
    seed and the source's index."""
    from dpdiffusion.data.synthfaces import make_synthfaces

    seed = 917_263_554
    make_synthfaces(4, image_size=16, seed=seed).save_to_disk(tmp_path / "synthfaces")
    out = _protect(dummy_pipe, tmp_path / "synthfaces", tmp_path / "release")
    files = _published(out)
    records = _records(files)
    assert len(records) == 4 and all(not {"identity", "seed"} & set(r) for r in records)
    assert all(not {_norm(a) for a in PROTECTED} & {_norm(k) for k in r} for r in records)
    _assert_learns_nothing(files, [str(seed), str(tmp_path)])
    for column in ("identity", "seed", "index"):
        with pytest.raises(ValueError, match=f"keep_columns may not name '{column}'"):
            _protect(dummy_pipe, tmp_path / "synthfaces", tmp_path / f"keep-{column}", keep_columns=[column])
        assert not (tmp_path / f"keep-{column}").exists() and not (tmp_path / f"keep-{column}-private").exists()
