"""Attacker: another user of the machine that hosts the Space (threat model: channel "the Space folder's
permissions").

The Space runs under a permissive umask (000: what some containers and service managers set). The other user reads
or changes whatever the permissions let them: the ledger (every face's releases), the subject secret (with it, a
guessed picture can be tested against the ledger) and the feedback dataset (judgements and protected images), and
can delete or replace files in a folder it may write to. After the Space has protected a face, accepted it, and been
restarted, every folder under the Space folder must be 0700 and every file 0600: sqlite's ``-wal`` and ``-shm``
files included (checked while they exist), the secret, ``metadata.jsonl`` and every feedback image.

The test fails on commit ae36aae, where the folders followed the umask (0777 under umask 000) and so did the
ledger and the feedback files (``ledger.sqlite`` 0644 under umask 022, 0666 under 000).
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_harness():
    name = "dpdiffusion_space_harness"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "spaces" /
                                                  "space_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = load_harness()


def _modes(root: Path) -> dict:
    """``{path relative to root: (kind, mode)}`` of everything under ``root`` (root included)."""
    out = {".": ("folder", stat.S_IMODE(root.stat().st_mode))}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = ("folder" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode))
    return out


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_the_space_folder_is_private_whatever_the_umask(tmp_path, monkeypatch, umask):
    from dpdiffusion.privacy.ledger_store import connect

    app = H.load_space_module()
    pipe = H.tiny_pipe(16)
    space = tmp_path / "space"  # created by the Space, with its parents' umask applied to nothing
    monkeypatch.setenv(app.ENV_DIR, str(space))
    before = os.umask(umask)
    try:
        demo = app.build_demo(pipe, budget_epsilon=3.0, num_inference_steps=1)
        s = demo.dp_space
        view = s.feedback("more_privacy", s.protect(s.sample(0), ["dark_skin"], None, 1.0, None).session)
        s.feedback("accept", view.session)
        with connect(s.ledger.path) as conn:  # a connection open: sqlite's -wal and -shm files exist now
            conn.execute("SELECT count(*) FROM releases").fetchone()
            seen = _modes(space)
        demo = app.build_demo(pipe, num_inference_steps=1)  # a restart
        demo.dp_space.protect(demo.dp_space.sample(1), ["dark_skin"], None, 1.0, None)
        seen.update(_modes(space))
    finally:
        os.umask(before)
    names = set(seen)
    assert {"ledger/ledger.sqlite", "ledger/ledger.sqlite-wal", "ledger/ledger.sqlite-shm", "ledger/subject_key.bin",
            "feedback/metadata.jsonl", "feedback/images"} <= names, sorted(names)
    assert len([n for n in names if n.startswith("feedback/images/")]) == 2
    wrong = {n: f"{kind} {mode:o}" for n, (kind, mode) in seen.items()
             if mode != (0o700 if kind == "folder" else 0o600)}
    assert wrong == {}, wrong
    print(f"\numask {umask:03o}: {sum(k == 'folder' for k, _ in seen.values())} folder(s) 700, "
          f"{sum(k == 'file' for k, _ in seen.values())} file(s) 600: {sorted(names)}")
