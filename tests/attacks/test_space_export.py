"""Attacker: anyone who reads a Space repository written by ``dpdiffusion space --export`` (threat model: channel
"Space repository"; the repository is pushed to the Hub, usually public).

The data owner ran the Space, the demo and a protect job from an editable checkout, and their files ended up inside
the package folder (a Space folder with its ledger, subject secret and feedback; a release's private bookkeeping; a
stray photo). The exported repository must hold the app, the package's code, cards and the embedded model, and none
of those files. Fails on commit ae36aae, whose export copied the package folder whole (minus caches).
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("huggingface_hub")

PLANTED = {
    "space/ledger/ledger.sqlite": b"SQLite format 3\x00 the budgets",
    "space/ledger/subject_key.bin": b"k" * 32,
    "space/feedback/metadata.jsonl": b'{"session_id": "abc", "epsilon": 1.0}\n',
    "space/feedback/images/0001.png": b"\x89PNG the protected image",
    "default_model/release-private/protect_config.json": b'{"source": "/home/ana/ward7"}',
    "default_model/ward7_selfie.png": b"\x89PNG an original",
    "demo-out/report.html": b"<html>the owner's report</html>",
    ".env": b"HF_TOKEN=hf_secret",
}


def test_an_exported_space_carries_nothing_the_owner_left_in_the_package(tmp_path, monkeypatch):
    import dpdiffusion.space.export as export

    package = tmp_path / "pkg" / "dpdiffusion"
    shutil.copytree(export.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__", "unet2d_model"))
    for rel, data in PLANTED.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_bytes(data)
    monkeypatch.setattr(export, "PACKAGE_DIR", package)
    out = export.export_space(tmp_path / "space-repo", model_repo=None)
    shipped = {p.relative_to(out / "dpdiffusion").as_posix() for p in (out / "dpdiffusion").rglob("*") if p.is_file()}
    assert not shipped & set(PLANTED), f"the Space repository carries {sorted(shipped & set(PLANTED))}"
    every_byte = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for data in PLANTED.values():
        assert data not in every_byte
    # and it is still a working Space: the app's code, the cards and the embedded model are there
    assert {"space/app.py", "default_model/model_index.json", "model_cards/unlearned_classifier.md"} <= shipped
    assert any(s.endswith(".safetensors") for s in shipped)
