"""Crash safety with real processes and real SIGKILLs.

1. ``protect_dataset`` killed at random moments and resumed until it finishes writes exactly the files of an
   uninterrupted run: same names, same bytes (images and ``metadata.jsonl`` in the release folder,
   ``skipped.jsonl`` and ``protect_config.json`` in the private one), no duplicate record, no missing one, no
   half-written file and no temporary file left behind (no hidden file in the release folder; the private folder's
   ``.parts/`` holds only the part files).
2. A ``PrivacyLedger`` charged in a loop by a process killed at random moments never loses an acknowledged release,
   never double-counts one, and its stored totals always equal the exact composition of its history.

The runs, kills and what the kills interrupted are printed at the end of each test (shown without ``-s``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from _reliability import HERE, get_dummy_components

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and SIGKILL")

SEED = 20241125
N_TRIALS = 4  # kill/resume trials (batch sizes 1 and 2 alternate)
MAX_KILLS = 6  # kills per trial; the run after the last one is left to finish
STEPS = 6  # DDIM steps: enough work per image that kills land in every phase of a run



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from threads; two OpenMP threads on a busy two-core machine spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

def _say(request, lines):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


def _make_source(src: Path) -> int:
    """12 readable images of assorted modes, sizes and formats, 2 unreadable files, and a metadata column."""
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        name = f"{i:02d}." + ("jpg" if i % 5 == 4 else "png")
        kind = i % 4
        if kind == 0:
            img = PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        elif kind == 1:
            img = PIL.Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8), mode="L")
        elif kind == 2:
            img = PIL.Image.fromarray(rng.integers(0, 256, (18, 18, 4), dtype=np.uint8), mode="RGBA")
        else:
            img = PIL.Image.fromarray(rng.integers(0, 65536, (16, 22), dtype=np.uint16))  # 16-bit greyscale
        if name.endswith(".jpg"):
            img = img.convert("RGB")
        img.save(src / name)
        rows.append({"file_name": name, "Smiling": int(rng.integers(0, 2)) * 2 - 1})
    good = (src / "00.png").read_bytes()
    (src / "12.png").write_bytes(good[: len(good) // 2])  # truncated
    (src / "13.png").write_bytes(b"this is not an image\n")  # not an image at all
    rows += [{"file_name": "12.png", "Smiling": 1}, {"file_name": "13.png", "Smiling": -1}]
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


class ForkServer:
    """Client of ``protect_forkserver.py``: start a protect run in a fresh child, kill it, reap it."""

    def __init__(self, model_dir: Path, log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "protect_forkserver.py"), str(model_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.log_path = log
        assert self._read().get("ready")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("fork server died:\n" + self.log_path.read_text()[-4000:])
        return json.loads(line)

    def _send(self, msg: dict) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def start(self, config: dict) -> int:
        self._send({"run": config})
        return int(self._read()["pid"])

    def wait(self, pid: int) -> dict:
        self._send({"wait": pid})
        return self._read()

    def close(self) -> None:
        try:
            self._send({"quit": True})
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from dpdiffusion import DPDiffusionPipeline

    root = tmp_path_factory.mktemp("kill")
    DPDiffusionPipeline(**get_dummy_components()).save_pretrained(root / "model")  # safetensors
    srv = ForkServer(root / "model", root / "server.log")
    yield srv
    srv.close()


def _private(out: Path) -> Path:
    """The run's private folder (the default, next to the release folder)."""
    return out.with_name(out.name + "-private")


def _files(out: Path) -> dict:
    """Every file of the release folder and of the private one (``private/...``) except the per-worker part files,
    as relative path -> bytes."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    private = _private(out)
    files.update({"private/" + str(p.relative_to(private)): p.read_bytes() for p in sorted(private.rglob("*"))
                  if p.is_file() and ".parts" not in p.relative_to(private).parts})
    return files


def _state(out: Path) -> dict:
    """What a kill left behind."""
    images = list((out / "images").glob("*.png")) if (out / "images").exists() else []
    temps = [p for p in [*out.rglob("*"), *_private(out).rglob("*")] if ".tmp-" in p.name]
    part = _private(out) / ".parts" / "worker-0.jsonl"
    text = part.read_bytes() if part.exists() else b""
    records = set()
    for line in text.decode().splitlines():
        try:
            records.add(json.loads(line)["index"])
        except ValueError:
            pass  # the line a kill cut short
    return {"images": len(images), "records": len(records), "temp_files": len(temps),
            "image_without_record": len({int(p.stem) for p in images} - records),
            "partial_line": bool(text) and not text.endswith(b"\n")}


def test_protect_killed_at_random_and_resumed_equals_an_uninterrupted_run(server, tmp_path, request):
    src = tmp_path / "src"
    n_rows = _make_source(src)

    def config(out: Path, batch_size: int) -> dict:
        return dict(source=str(src), output_dir=str(out), attributes=["dark_skin"], epsilon=1.0,
                    num_inference_steps=STEPS, batch_size=batch_size, insecure_seed=7)

    # uninterrupted reference runs, one per batch size
    reference, duration = {}, {}
    for b in (1, 2):
        out = tmp_path / f"reference-{b}"
        pid = server.start(config(out, b))
        res = server.wait(pid)
        assert res["exit"] == 0, server.log_path.read_text()[-4000:]
        reference[b], duration[b] = _files(out), res["wall_s"]
        meta = [json.loads(line) for line in reference[b]["metadata.jsonl"].decode().splitlines()]
        skipped = [json.loads(line) for line in reference[b]["private/skipped.jsonl"].decode().splitlines()]
        assert [r["index"] for r in meta] == list(range(12)) and [s["index"] for s in skipped] == [12, 13]
        assert sorted(k for k in reference[b] if k.startswith("images/")) == [f"images/{i:08d}.png" for i in range(12)]
        assert sorted(k for k in reference[b] if not k.startswith("images/")) == [
            "metadata.jsonl", "private/protect_config.json", "private/skipped.jsonl"]
        assert n_rows == 14

    stats: dict = {}

    def check_same_as_reference(out: Path, b: int, label: str) -> None:
        got = _files(out)  # the same files, byte for byte, as the uninterrupted run with the same batch size
        assert sorted(got) == sorted(reference[b]), f"{label}: file sets differ"
        for name in reference[b]:
            assert got[name] == reference[b][name], f"{label}: {name} differs from the uninterrupted run"
        # no temporary or stray file anywhere, and the part files hold each row once
        assert not [p for p in out.rglob("*") if p.name.startswith(".")], f"{label}: hidden files in the release"
        assert not [p for p in _private(out).rglob("*") if ".tmp-" in p.name], f"{label}: temporary files left"
        parts = _private(out) / ".parts"
        assert sorted(p.name for p in parts.iterdir()) == ["skipped-0.jsonl", "worker-0.jsonl"]
        indices = []
        for line in (parts / "worker-0.jsonl").read_text().splitlines():
            try:
                indices.append(json.loads(line)["index"])
            except ValueError:  # a record a kill cut short stays, ended by a newline, and is ignored
                stats["cut_lines_ignored"] = stats.get("cut_lines_ignored", 0) + 1
        assert sorted(indices) == list(range(12)), f"{label}: duplicate or missing records {sorted(indices)}"

    def finish(out: Path, b: int, label: str) -> None:
        res = server.wait(server.start(config(out, b)))
        assert res["exit"] == 0, server.log_path.read_text()[-4000:]
        check_same_as_reference(out, b, label)

    # 1. kills at random moments (seeded), rerun until a run finishes
    rng = random.Random(SEED)
    stats.update({"trials": 0, "runs": 0, "kills": 0, "finished_before_kill": 0, "kills_leaving_temp_file": 0,
             "kills_leaving_image_without_record": 0, "kills_leaving_partial_line": 0, "kills_before_any_image": 0,
             "kills_after_all_images": 0, "reference_run_s": {str(k): round(v, 2) for k, v in duration.items()}})
    for trial in range(N_TRIALS):
        b = 1 + trial % 2
        out = tmp_path / f"trial-{trial}"
        kills = 0
        while True:
            pid = server.start(config(out, b))
            stats["runs"] += 1
            if kills < MAX_KILLS:
                time.sleep(rng.uniform(0.0, 0.8 * duration[b]))
                os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still our child's, even if it has exited
            res = server.wait(pid)
            if res["signal"] == signal.SIGKILL:
                kills += 1
                stats["kills"] += 1
                state = _state(out)
                stats["kills_leaving_temp_file"] += state["temp_files"] > 0
                stats["kills_leaving_image_without_record"] += state["image_without_record"] > 0
                stats["kills_leaving_partial_line"] += state["partial_line"]
                stats["kills_before_any_image"] += state["images"] == 0
                stats["kills_after_all_images"] += state["images"] == 12
                continue
            assert res["exit"] == 0, server.log_path.read_text()[-4000:]
            stats["finished_before_kill"] += kills < MAX_KILLS
            break
        stats["trials"] += 1
        check_same_as_reference(out, b, f"random trial {trial} (batch size {b})")
    assert stats["kills"] >= 1  # random kills did land (the injected ones below always do)

    # 2. kills injected at the three critical points, each followed by a normal resume
    injected = [("before_rename", 3, 1, "temp_files"), ("after_rename", 5, 2, "image_without_record"),
                ("mid_record", 2, 2, "partial_line"), ("mid_record", 4, 1, "partial_line")]
    for k, (where, nth, b, left) in enumerate(injected):
        out = tmp_path / f"injected-{k}"
        cfg = config(out, b)
        server._send({"run": cfg, "die": [where, nth]})
        res = server.wait(int(server._read()["pid"]))
        assert res["signal"] == signal.SIGKILL, (where, res, server.log_path.read_text()[-2000:])
        assert _state(out)[left], f"the kill {where}#{nth} did not leave {left}: {_state(out)}"
        stats["runs"] += 1
        stats[f"injected_{where}"] = stats.get(f"injected_{where}", 0) + 1
        finish(out, b, f"injected kill {where}#{nth} (batch size {b})")

    # 3. the default (CSPRNG) mode: the same injected kills; a resumed run keeps every image already written, byte
    # for byte (a second, differently-noised version of a row would be a second release), and finishes every row
    for k, (where, nth, b, left) in enumerate(injected):
        out = tmp_path / f"csprng-{k}"
        cfg = {key: value for key, value in config(out, b).items() if key != "insecure_seed"}
        server._send({"run": cfg, "die": [where, nth]})
        res = server.wait(int(server._read()["pid"]))
        assert res["signal"] == signal.SIGKILL, (where, res, server.log_path.read_text()[-2000:])
        before = {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}
        assert before or where == "before_rename", f"the kill {where}#{nth} left no image to keep"
        res = server.wait(server.start(cfg))
        assert res["exit"] == 0, server.log_path.read_text()[-4000:]
        after = {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}
        assert all(after[name] == data for name, data in before.items()), f"csprng {where}#{nth}: a row re-released"
        meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        assert [r["index"] for r in meta] == list(range(12)) and sorted(after) == [f"{i:08d}.png" for i in range(12)]
        assert all((r["noise_source"], r["guarantee"]) == ("csprng", "formal") for r in meta)
        stats[f"csprng_{where}_kept_images"] = stats.get(f"csprng_{where}_kept_images", 0) + len(before)

    _say(request, [f"kill/resume (protect): {json.dumps(stats)}"])
    request.node.user_properties.append(("kill_resume", stats))


# ------------------------------------------------------------------------------------------------------ ledger
def test_ledger_killed_during_charges_loses_and_double_counts_nothing(tmp_path, request):
    from dpdiffusion.privacy.accounting import compose_noise_multipliers, gaussian_epsilon
    from dpdiffusion.privacy.ledger import PrivacyLedger

    path, subject, m, delta = tmp_path / "ledger.sqlite", "alice", 1e4, 1e-5
    PrivacyLedger(path, budget_epsilon=10.0, delta=delta)
    rng = random.Random(SEED)
    acked = 0  # releases acknowledged by a child (printed after charge() returned)
    stats = {"runs": 0, "acknowledged": 0, "recorded": 0, "kills_after_commit_before_ack": 0,
             "kills_with_nothing_in_flight_committed": 0}
    for run in range(8):
        child = subprocess.Popen([sys.executable, str(HERE / "ledger_charger.py"), str(path), subject, str(m)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = child.stdout.readline()
        assert first.startswith("start "), child.stderr.read()
        assert int(first.split()[1]) == acked  # resumes after the last recorded release
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        # not communicate(): it reads the raw pipe and would drop what readline() above already buffered (the line
        # "0" arriving in the same read as "start 0"), which failed this test now and then
        rest, err = child.stdout.read(), child.stderr.read()
        child.stdout.close(), child.stderr.close()
        assert child.returncode == -signal.SIGKILL, err
        lines = rest.split()
        if lines:  # each acknowledged j arrives in order, with no gap
            assert [int(j) for j in lines] == list(range(acked, acked + len(lines)))
            acked += len(lines)
        stats["runs"] += 1

        ledger = PrivacyLedger(path)
        history = ledger.history(subject)
        h = len(history)
        # Exactly one charge can be in flight when the child dies: it ran j = acked and either committed (before
        # the kill, but its line was not printed yet) or did not. Nothing acknowledged may be lost (h >= acked) and
        # nothing may be recorded twice or out of thin air (h <= acked + 1; notes 0..h-1, each once, in order).
        assert acked <= h <= acked + 1, (acked, h)
        assert [r.note for r in history] == [str(j) for j in range(h)]
        if h == acked + 1:
            stats["kills_after_commit_before_ack"] += 1
            acked = h  # the next child continues after it
        else:
            stats["kills_with_nothing_in_flight_committed"] += 1
        # stored totals equal the exact composition of the history, prefix by prefix
        for j, release in enumerate(history):
            exact = gaussian_epsilon(sigma=compose_noise_multipliers([m] * (j + 1)), delta=delta)
            assert release.spent_after == exact and release.noise_multiplier == m
        assert ledger.spent(subject) == gaussian_epsilon(sigma=compose_noise_multipliers([m] * h), delta=delta)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stats["acknowledged"], stats["recorded"] = acked, len(PrivacyLedger(path).history(subject))
    _say(request, [f"kill/resume (ledger): {json.dumps(stats)}"])
    assert stats["recorded"] > 0


# ---------------------------------------------------------------------------------- in-process, deterministic
class _Spy:
    """The pipeline, recording which rows each call protects together (rows found from their generators' seeds)."""

    def __init__(self, pipe, seed: int, n: int):
        from dpdiffusion.protect import _row_generator

        self._pipe = pipe
        self._rows = {_row_generator(seed, i).initial_seed(): i for i in range(n)}
        self.batches: list[tuple] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, images, **kwargs):
        self.batches.append(tuple(self._rows[g.initial_seed()] for g in kwargs["generator"]))
        return self._pipe(images, **kwargs)


def test_a_record_cut_by_a_crash_loses_nothing_and_batches_stay_aligned(tmp_path, monkeypatch, dummy_pipe):
    """Smallest failing case of two fixed bugs. A crash while a batch's records were being appended left a line cut
    short (Python's buffered writer flushes at 8 KiB boundaries, not at line ends). (a) The resumed run appended its
    next record to that cut line, so the record was unreadable and the row was missing from metadata.jsonl. (b) The
    resumed run started its batches at the first row without a record, so rows were batched differently from an
    uninterrupted run, which can change pixel values by float rounding."""
    import dpdiffusion.protect as protect
    from dpdiffusion.protect import ProtectConfig, protect_dataset

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(7):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / f"{i}.png")

    def cfg(out):
        return ProtectConfig(source=str(src), output_dir=str(out), attributes=["dark_skin"], epsilon=1.0,
                             num_inference_steps=2, batch_size=3, insecure_seed=3)

    reference = _Spy(dummy_pipe, 3, 7)
    protect_dataset(reference, cfg(tmp_path / "reference"), progress=False)
    assert reference.batches == [(0, 1, 2), (3, 4, 5), (6,)]

    real_open = protect._open_append

    class CrashMidRecords:  # the second batch's records: the first one whole, the next cut, then the crash
        def __init__(self, f):
            self._f = f

        def write(self, data):
            if b'"index": 3' in data:
                first_end = data.index(b"\n") + 1
                self._f.write(data[: first_end + 20])
                self._f.flush()
                raise KeyboardInterrupt("crash while writing records")
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

    out = tmp_path / "crashed"
    monkeypatch.setattr(protect, "_open_append", lambda path: CrashMidRecords(real_open(path)))
    with pytest.raises(KeyboardInterrupt):
        protect_dataset(dummy_pipe, cfg(out), progress=False)
    monkeypatch.setattr(protect, "_open_append", real_open)
    assert not (_private(out) / ".parts" / "worker-0.jsonl").read_bytes().endswith(b"\n")  # the cut line

    resumed = _Spy(dummy_pipe, 3, 7)
    protect_dataset(resumed, cfg(out), progress=False)
    # rows 4 and 5 had their images written before the crash: they get their records back and are not recomputed
    # (a row is released once); row 6's block is computed as in the uninterrupted run
    assert resumed.batches == [(6,)]
    assert _files(out) == _files(tmp_path / "reference")
