"""The command line forgives a newcomer's slips (issue 33, part 4): ``--help`` is plain text and imports no heavy
library; one image file is a source; a source that is no file, folder or Hub id is refused at once, naming
``--source``; a run that released nothing exits 1 with the reasons counted; a whole image resized to the model's
square is said once."""

import json
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import PIL.Image
import pytest

from dpd_test_components import get_dummy_components

HEAVY = ("torch", "diffusers", "transformers", "gradio", "datasets", "accelerate")
RST = re.compile(r"``|:[a-z]+:`|`|\.\. \w+::")


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dpdiffusion.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dpdiffusion import DPDiffusionPipeline

    path = tmp_path_factory.mktemp("tiny-model")
    DPDiffusionPipeline(**get_dummy_components()).save_pretrained(path)  # 16 x 16 px
    return path


def _png_header_only(path, width, height):
    """A PNG whose header says ``width`` x ``height`` (no pixel data): refused from its header, before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_help_imports_no_heavy_library_and_is_plain_text():
    """`dpdiffusion --help` starts in well under a second: no subcommand's module (nor torch, diffusers,
    transformers, gradio) is imported; `-X importtime` lists every module the process imported. The command is the
    console script's (pyproject.toml: dpdiffusion = "dpdiffusion.cli:main")."""
    script = "import sys; from dpdiffusion.cli import main; sys.argv[1:] = ['--help']; sys.exit(main())"
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "dpdiffusion.cli" in imported  # the check can fail: the listing is read
    assert not {name for name in imported if name.split(".")[0] in HEAVY}
    assert not {name for name in imported if name.startswith("dpdiffusion.") and name != "dpdiffusion.cli"}
    assert "protect" in res.stdout and not RST.search(res.stdout)
    assert "The dpdiffusion command line" in res.stdout


def _parsers(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*prefix, name))


def test_every_subcommand_help_is_plain_text():
    from dpdiffusion.cli import build_parser

    seen = {}
    for names, parser in _parsers(build_parser()):
        text = parser.format_help()  # adds a lazy subcommand's arguments first
        assert not RST.search(text), (names, RST.findall(text))
        seen[" ".join(names)] = text
    assert {"", "demo", "protect", "unlearn", "evaluate", "evaluate experiments", "evaluate autoencoder", "train",
            "space"} <= set(seen)
    assert "--source" in seen["protect"] and "--classifier" in seen["unlearn"] and "--judge" in seen[
        "evaluate autoencoder"]


def test_plain_text_drops_restructuredtext_markup():
    from dpdiffusion.cli import plain_text

    assert plain_text("The ``dpdiffusion`` CLI; see :class:`~dpdiffusion.PrivacySpec` and `dpdiffusion protect`. "
                      ".. note:: mind it") == ("The dpdiffusion CLI; see dpdiffusion.PrivacySpec and "
                                               "'dpdiffusion protect'. Note: mind it")


def test_a_lazy_parser_parses_as_before():
    from dpdiffusion.cli import build_parser, cmd_protect, cmd_unlearn

    ns = build_parser().parse_args(["protect", "--source", "s", "--output-dir", "o", "--epsilon", "2"])
    assert ns.func is cmd_protect and ns.epsilon == 2.0 and ns.source == "s"
    assert build_parser().parse_args(["unlearn", "--classifier", "c", "--original", "a", "--revised", "b",
                                      "--label-columns", "x", "--output-dir", "o"]).func is cmd_unlearn


@pytest.mark.parametrize("source, why", [
    ("photo.png", "no such file or folder"), ("notes.csv", "a file that is not an image"),
    ("a/b/c", "not a Hub dataset id"), ("~/photos", "not a Hub dataset id"),
])
def test_source_kind_refuses_a_slip_naming_the_argument(tmp_path, monkeypatch, source, why):
    from dpdiffusion.data.sources import source_kind

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=f"^source must be an image folder.*got source={re.escape(repr(source))}: "
                                         f".*{why}"):
        source_kind(source)


def test_source_kind_of_each_kind(tmp_path, monkeypatch):
    from dpdiffusion.data.sources import source_kind

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "one.JPG")
    assert [source_kind(s) for s in ("photos", "saved", "one.JPG", tmp_path / "one.JPG", "mnist", "owner/name")] == [
        "folder", "saved", "file", "file", "hub", "hub"]
    with pytest.raises(ValueError, match="photos/missing.*no such file or folder"):
        source_kind("photos/missing")  # its first component is a local folder: a path, not a Hub id
    with pytest.raises(ValueError, match=r"^--source must be .*got --source ''"):
        source_kind("", name="--source")


def test_protect_refuses_a_bad_source_at_once(tmp_path):
    """Refused before the model is loaded (a missing --model would be the error otherwise) and before the Hub (the
    other slips: test_source_kind_refuses_a_slip_naming_the_argument)."""
    source = "photo.png"
    res = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "protect", "--model", str(tmp_path / "no-model"),
                          "--source", source, "--output-dir", "out"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("dpdiffusion protect: error: --source must be an image folder")
    assert f"got --source {source!r}" in res.stderr and "Retrying" not in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-private").exists()


def test_protect_one_image_file_as_a_one_image_folder(tiny_model, tmp_path):
    """A single file is a source: one release, nothing from its folder's other files or metadata; a photo larger
    than the model is resized whole, and the command says so once."""
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("me.png", (40, 30)), ("other.png", (16, 16))):
        PIL.Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(src / name)
    (src / "metadata.jsonl").write_text(json.dumps({"file_name": "me.png", "Smiling": 1}) + "\n")
    out = tmp_path / "out"
    res = _run("protect", "--model", str(tiny_model), "--source", str(src / "me.png"), "--output-dir", str(out),
               "--num-inference-steps", "2", "--no-progress")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["file_name"] == "images/00000000.png" and "Smiling" not in recs[0]
    assert [p.name for p in (out / "images").iterdir()] == ["00000000.png"]
    assert "1 protected image(s)" in res.stdout and "Hub" not in res.stderr
    notice = ("resizing each whole image to 16x16 px, the model's resolution (centre-cropped to a square; the first "
              "one was 30x40 px)")
    assert res.stderr.count(notice) == 1 and "--faces detect" in res.stderr


def test_protect_resize_notice_once_per_run_and_not_at_the_model_size(tiny_model, tmp_path, caplog):
    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.protect import ProtectConfig, protect_dataset

    pipe = DPDiffusionPipeline.from_pretrained(tiny_model)
    for name, sizes in (("same", [(16, 16), (16, 16)]), ("larger", [(24, 20), (64, 64)])):
        src = tmp_path / name
        src.mkdir()
        for i, (h, w) in enumerate(sizes):
            PIL.Image.new("RGB", (w, h), (40 * i, 90, 120)).save(src / f"{i}.png")
        caplog.clear()
        protect_dataset(pipe, ProtectConfig(source=str(src), output_dir=str(tmp_path / f"{name}-out"),
                                            num_inference_steps=1), progress=False)
        notes = [r.getMessage() for r in caplog.records if "resizing each whole image" in r.getMessage()]
        assert notes == ([] if name == "same" else [notes[0]]) and (name == "same" or "20x24 px" in notes[0])
    with pytest.raises(ValueError, match="output_dir must not contain the source file"):  # nor sit with the original
        protect_dataset(pipe, ProtectConfig(source=str(src / "0.png"), output_dir=str(src)), progress=False)


def test_protect_that_released_nothing_counts_the_reasons_without_source_paths(tiny_model, tmp_path):
    """An 8000 x 8000 image (refused from its header) and a file that is no image: exit 1, each reason with its
    count on stderr, the rows' source paths only in the private skipped.jsonl."""
    src = tmp_path / "src"
    src.mkdir()
    _png_header_only(src / "huge.png", 8000, 8000)
    (src / "garbage.png").write_bytes(b"not an image")
    _png_header_only(src / "huge2.png", 8000, 8000)
    out, private = tmp_path / "out", tmp_path / "owner"
    res = _run("protect", "--model", str(tiny_model), "--source", str(src), "--output-dir", str(out), "--private-dir",
               str(private), "--num-inference-steps", "1", "--no-progress")
    assert res.returncode == 1 and "Traceback" not in res.stderr and "written" not in res.stdout
    assert (f"dpdiffusion protect: error: nothing was released: all 3 row(s) were skipped; the reasons are in "
            f"{private / 'skipped.jsonl'} (private: it names source files):\n"
            f"  2 row(s): ValueError: the image is 8000x8000 px; at most 16777216 pixels are accepted\n"
            f"  1 row(s): ") in res.stderr
    assert str(src) not in res.stderr  # a reason quoting the row's path shows <file> instead
    assert len((private / "skipped.jsonl").read_text().splitlines()) == 3 and str(src) in (
        private / "skipped.jsonl").read_text()
    assert all(str(src) not in p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
