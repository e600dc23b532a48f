"""Attacker: whoever can delete or replace a file in the Space folder, or an operator's mistake (threat model: channel
"the ledger and its secret across restarts").

A face's budget lives in the ledger (``ledger/ledger.sqlite``), and a face is found in it only through the subject
secret (``ledger/subject_key.bin``). Deleting either one, or both, or pairing the ledger with another secret, then
restarting the Space, would give every face a fresh budget. The actor deletes one of them (or the whole ledger folder
while the feedback dataset stays) and restarts the Space, as a library call (`build_demo`) and as the command line
(``dpdiffusion space``); what they see is whether it starts and what it says. It must refuse to start, naming the
missing file and the way out; with ``new_ledger`` (``--new-ledger``, ``$DPDIFFUSION_SPACE_NEW_LEDGER``) it starts
over on purpose, and the old files are kept aside.

The first two tests fail on commit ae36aae, where a restart created a new secret (or a new ledger) silently, and
there was no ``new_ledger``. The last two fail on commit 4c74bf1 (an attacker review of the Space), on a Space used
only in the photo mode (which writes no feedback record): with both files gone (``rm ledger/*``) nothing was left
to compare with, so it started with an empty ledger; with another 32-byte secret (the wrong backup) nothing tied the
secret to its ledger, so it started and found no face again. Now the secret's key check
(``HMAC-SHA256(secret, "dpdiffusion-space-key-check")``) is stored in the ledger's ``meta`` table and in a marker
next to the ledger folder (``.dpdiffusion-space-ledger``), and the Space refuses where the marker outlives the
ledger or a check differs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:::gradio.queueing")]


import space_harness as H  # noqa: E402  (tests/space_harness.py)


def _a_space_that_ran(app, pipe, space: Path) -> str:
    """A Space that protected one face (a SynthFaces sample): its ledger, secret and feedback exist."""
    demo = app.build_demo(pipe, ledger_dir=space / "ledger", feedback_dir=space / "feedback", budget_epsilon=3.0,
                          num_inference_steps=1)
    view = demo.dp_space.protect(demo.dp_space.sample(0), ["dark_skin"], None, 1.0, None)
    demo.dp_space.feedback("accept", view.session)
    assert view.level == "info", view.status
    return view.session.subject_id


@pytest.mark.parametrize("deleted", ["secret", "ledger", "ledger folder"])
def test_a_restart_without_the_secret_or_the_ledger_is_refused(tmp_path, deleted):
    app = H.load_space_module()
    pipe = H.tiny_pipe(16)
    space = tmp_path / "space"
    kw = dict(ledger_dir=space / "ledger", feedback_dir=space / "feedback", num_inference_steps=1)
    sid = _a_space_that_ran(app, pipe, space)
    if deleted == "secret":
        (space / "ledger" / app.SECRET_FILE).unlink()
        missing = app.SECRET_FILE
    elif deleted == "ledger":
        for p in (space / "ledger").glob("ledger.sqlite*"):
            p.unlink()
        missing = app.LEDGER_FILE
    else:
        shutil.rmtree(space / "ledger")
        missing = app.LEDGER_FILE
    with pytest.raises(ValueError, match="refusing to start") as refused:
        app.build_demo(pipe, **kw)
    message = str(refused.value)
    assert missing in message and "--new-ledger" in message and "backup" in message, message
    print(f"\n{deleted} deleted, restart: {message}")
    # on purpose: it starts over, with a new ledger and secret, and keeps what was left of the old ones aside
    demo = app.build_demo(pipe, new_ledger=True, **kw)
    assert demo.dp_space.ledger.subjects() == []
    aside = [p for p in (space / "ledger").glob("replaced-*/*")]
    if deleted != "ledger folder":
        assert aside, "the surviving files were not kept"
    # and a second restart, with both files present, starts without new_ledger and keeps the new budgets
    view = demo.dp_space.protect(demo.dp_space.sample(0), ["dark_skin"], None, 1.0, None)
    assert view.level == "info" and view.session.subject_id != sid  # another secret: another id
    again = app.build_demo(pipe, new_ledger=True, **kw)  # new_ledger with both present changes nothing
    assert again.dp_space.ledger.subjects() == [view.session.subject_id]


@pytest.mark.filterwarnings("ignore")
def test_the_command_line_refuses_and_starts_over_with_new_ledger(tmp_path):
    import socket
    import time
    import urllib.request

    app = H.load_space_module()
    pipe = H.tiny_pipe(16)
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    space = tmp_path / "space"
    _a_space_that_ran(app, pipe, space)
    (space / "ledger" / app.SECRET_FILE).unlink()
    env = dict(os.environ, DPDIFFUSION_SPACE_MODEL=str(tmp_path / "model"), DPDIFFUSION_SPACE_DIR=str(space),
               DPDIFFUSION_SPACE_STEPS="1", DPDIFFUSION_SPACE_TORCH_THREADS="1", GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    env.pop("DPDIFFUSION_SPACE_NEW_LEDGER", None)
    cmd = [sys.executable, "-c", "import sys; from dpdiffusion.cli import main; sys.exit(main())", "space"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        refused = subprocess.run([*cmd, "--port", str(port)], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the Space started without its subject secret (still serving after 120 s)")
    assert refused.returncode == 2 and "refusing to start" in refused.stderr, refused.stderr[-2000:]
    assert app.SECRET_FILE in refused.stderr and "--new-ledger" in refused.stderr
    print(f"\n`dpdiffusion space` without the secret: exit {refused.returncode}: {refused.stderr.strip()[-600:]}")
    proc = subprocess.Popen([*cmd, "--port", str(port), "--new-ledger"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 180, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None and "How much privacy is enough?" in page, \
            proc.stdout.read() if proc.poll() is not None else "no answer"
        assert (space / "ledger" / app.SECRET_FILE).is_file() and list((space / "ledger").glob("replaced-*"))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------- restarts the checks let through (4c74bf1)
def _a_space_that_ran_in_the_photo_mode(tmp_path, pipe):
    """A Space that protected the astronaut in the photo mode only: a ledger with releases, no feedback record."""
    pytest.importorskip("dlib")
    from skimage import data

    from dpdiffusion.space.photo import protect_photo

    app = H.load_space_module()
    space_dir = tmp_path / "space"
    demo = app.build_demo(pipe, ledger_dir=space_dir / "ledger", feedback_dir=space_dir / "feedback",
                          budget_epsilon=5.0, num_inference_steps=1)
    _, status = protect_photo(demo.dp_space, H.page_data_url(data.astronaut()), ["dark_skin"], 4.0)
    assert "Protected **1 face(s)**" in status, status
    assert demo.dp_space.ledger.subjects() and not H.feedback_records(space_dir)
    return app, space_dir


def _restart(app, pipe, space_dir, **kw):
    return app.build_demo(pipe, ledger_dir=space_dir / "ledger", feedback_dir=space_dir / "feedback",
                          num_inference_steps=1, **kw)


def test_a_restart_with_the_ledger_and_the_secret_both_gone_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("DPDIFFUSION_SPACE_NEW_LEDGER", raising=False)
    pipe = H.tiny_pipe()
    app, space_dir = _a_space_that_ran_in_the_photo_mode(tmp_path, pipe)
    for p in (space_dir / "ledger").iterdir():
        if p.is_file():
            p.unlink()
    with pytest.raises(ValueError, match="refusing to start") as refused:
        demo = _restart(app, pipe, space_dir)
        pytest.fail(f"the Space started with a new, empty ledger ({len(demo.dp_space.ledger.subjects())} subjects): "
                    "every face has a fresh budget")
    message = str(refused.value)
    assert app.LEDGER_FILE in message and ".dpdiffusion-space-ledger" in message and "--new-ledger" in message
    print(f"\nboth files deleted, restart: {message}")
    demo = _restart(app, pipe, space_dir, new_ledger=True)  # on purpose: a new pair, and a new marker
    assert demo.dp_space.ledger.subjects() == []
    _restart(app, pipe, space_dir)  # and the next restart starts as it is


def test_a_restart_with_another_secret_is_refused(tmp_path, monkeypatch):
    import secrets

    monkeypatch.delenv("DPDIFFUSION_SPACE_NEW_LEDGER", raising=False)
    pipe = H.tiny_pipe()
    app, space_dir = _a_space_that_ran_in_the_photo_mode(tmp_path, pipe)
    original = (space_dir / "ledger" / app.SECRET_FILE).read_bytes()
    (space_dir / "ledger" / app.SECRET_FILE).write_bytes(secrets.token_bytes(32))
    with pytest.raises(ValueError, match="refusing to start") as refused:
        _restart(app, pipe, space_dir)
        pytest.fail("the Space started with a secret that is not its ledger's: no face is found in the ledger again")
    message = str(refused.value)
    assert app.SECRET_FILE in message and "key check" in message and "--new-ledger" in message, message
    print(f"\nanother secret, restart: {message}")
    # the right secret restored: it starts, and every face keeps its budget
    (space_dir / "ledger" / app.SECRET_FILE).write_bytes(original)
    subjects = _restart(app, pipe, space_dir).dp_space.ledger.subjects()
    assert subjects
    # another Space's ledger and secret (a pair that matches, but not this Space folder's): refused by the marker
    other_dir = tmp_path / "other"
    other = app.build_demo(pipe, ledger_dir=other_dir / "ledger", feedback_dir=other_dir / "feedback",
                           budget_epsilon=5.0, num_inference_steps=1).dp_space
    assert other.protect(other.sample(0), ["dark_skin"], None, 1.0, None).level == "info"
    for p in (space_dir / "ledger").glob(app.LEDGER_FILE + "*"):
        p.unlink()
    for p in [*(other_dir / "ledger").glob(app.LEDGER_FILE + "*"), other_dir / "ledger" / app.SECRET_FILE]:
        (space_dir / "ledger" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ValueError, match="refusing to start.*marker") as refused:
        _restart(app, pipe, space_dir)
    print(f"another Space's ledger and secret, restart: {refused.value}")
