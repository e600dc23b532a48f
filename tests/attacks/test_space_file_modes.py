"""Attacker: another user of the machine that hosts the Space (threat model: channels "the Space folder's
permissions" and "Gradio's temporary folder").

The Space runs under a permissive umask (000: what some containers and service managers set). The other user reads
or changes whatever the permissions let them: the ledger (every face's releases), the subject secret (with it, a
guessed picture can be tested against the ledger), the Space's marker, the feedback dataset (judgements and
protected images) and Gradio's temporary folder (the face mode's releases, as files), and can delete or replace files
in a folder it may write to. After the Space has protected a face, accepted it, and been restarted, every folder
under the Space folder must be 0700 and every file 0600: sqlite's ``-wal`` and ``-shm`` files included (checked
while they exist), the secret, the marker, ``metadata.jsonl`` and every feedback image.

`test_the_space_folder_is_private_whatever_the_umask` fails on commit ae36aae, where the folders followed the umask
(0777 under umask 000) and so did the ledger and the feedback files (``ledger.sqlite`` 0644 under umask 022, 0666
under 000). `test_gradio_temporary_folder_is_private_whatever_the_umask` fails on commit 4c74bf1 (an attacker review
of the Space): ``dpdiffusion space`` under umask 000 left Gradio's temporary folder, its per-file folders and the
release files 0777 / 0666, readable by every local user. Now the Space's command sets the umask to 077 and the
launch makes the folder 0700 (refusing one another user owns).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


import space_harness as H  # noqa: E402  (tests/space_harness.py)


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
            "feedback/metadata.jsonl", "feedback/images", ".dpdiffusion-space-ledger"} <= names, sorted(names)
    assert len([n for n in names if n.startswith("feedback/images/")]) == 2
    wrong = {n: f"{kind} {mode:o}" for n, (kind, mode) in seen.items()
             if mode != (0o700 if kind == "folder" else 0o600)}
    assert wrong == {}, wrong
    print(f"\numask {umask:03o}: {sum(k == 'folder' for k, _ in seen.values())} folder(s) 700, "
          f"{sum(k == 'file' for k, _ in seen.values())} file(s) 600: {sorted(names)}")


@pytest.mark.filterwarnings("ignore")
def test_gradio_temporary_folder_is_private_whatever_the_umask(tmp_path):
    """``dpdiffusion space`` started under umask 000, with Gradio's temporary folder left 0777 by an earlier run; a
    person releases a face (a file in that folder); then the other user looks at every mode under
    ``GRADIO_TEMP_DIR``: nothing may be open to group or others."""
    from gradio_client import Client

    pipe = H.tiny_pipe(16)
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    gradio_tmp = tmp_path / "gradio"
    gradio_tmp.mkdir()
    os.chmod(gradio_tmp, 0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DPDIFFUSION_SPACE_MODEL=str(tmp_path / "model"),
               DPDIFFUSION_SPACE_DIR=str(tmp_path / "space"),
               DPDIFFUSION_SPACE_STEPS="1", DPDIFFUSION_SPACE_TORCH_THREADS="1", GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(gradio_tmp))
    env.pop("DPDIFFUSION_SPACE_NEW_LEDGER", None)
    code = "import os, sys; os.umask(0); from dpdiffusion.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "space", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline, up = time.time() + 180, False
        while time.time() < deadline and proc.poll() is None and not up:
            try:
                up = urllib.request.urlopen(base + "config", timeout=5).status == 200
            except OSError:
                time.sleep(0.5)
        assert up, proc.stdout.read() if proc.poll() is not None else "no answer"
        person = Client(base, verbose=False, download_files=str(tmp_path / "person"))
        n = len(person.view_api(print_info=False, return_format="dict")["named_endpoints"]["/protect"]["parameters"])
        picture = person.predict(0, api_name="/sample")
        out = person.predict(picture, ["dark_skin"], 1.0, *[1.0] * (n - 4), api_name="/protect")
        assert "First protected image" in out[4], out[4]
        person.close()
        seen = {str(p.relative_to(gradio_tmp)): stat.S_IMODE(p.lstat().st_mode)
                for p in [gradio_tmp, *sorted(gradio_tmp.rglob("*"))]}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert seen["."] == 0o700
    assert [n for n in seen if n.endswith(".png")], seen  # the release, as Gradio serves it
    open_to_others = {n: f"{mode:o}" for n, mode in seen.items() if mode & 0o077}
    assert open_to_others == {}, open_to_others
    print(f"\numask 000, `dpdiffusion space`: {len(seen)} path(s) under GRADIO_TEMP_DIR, none open to group or "
          f"others: {sorted(f'{n} {m:o}' for n, m in seen.items())}")
