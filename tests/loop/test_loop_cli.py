"""`dpdiffusion loop` end to end as a subprocess on tiny data, and its refusals (one line, exit status 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from loop_components import LABELS, make_loop_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop-cli")
    train, held, classifier = make_loop_data(tmp)
    train.save_to_disk(str(tmp / "train"))
    held.save_to_disk(str(tmp / "held"))
    return tmp, classifier


def _args(tmp, classifier, out, *extra):
    return ["loop", "--source", str(tmp / "train"), "--classifier", str(classifier), "--held-out", str(tmp / "held"),
            "--attributes", "dark_skin", "--labels", *LABELS, "--output-dir", str(out), "--pilot-size", "16",
            "--num-previews", "2", "--num-inference-steps", "2", "--attacker-epochs", "1", "--retrain-epochs", "1",
            "--unlearning-method", "first_order", *extra]


def test_scripted_verdicts_visit_the_controllers_epsilons_and_write_every_output(data):
    tmp, classifier = data
    out = tmp / "OUT"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", *_args(
        tmp, classifier, out, "--verdicts", "more_privacy", "more_utility", "accept")],
        capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("verdict: ") == 3 and "leakage from the release: dark_skin" in run.stdout
    assert "accepted epsilon=0.7071" in run.stdout
    record = json.loads((out / "loop.json").read_text())
    assert [(s["epsilon"], s["verdict"]) for s in record["steps"]] == [
        (1.0, "more_privacy"), (0.5, "more_utility"), (0.7071, "accept")]
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["epsilon-0.5", "epsilon-0.7071", "epsilon-1"]
    assert len(list((out / "previews" / "epsilon-1").glob("*.png"))) == 2
    assert (out / "release" / "metadata.jsonl").is_file() and (out / "model" / "model.safetensors").is_file()
    assert (out / "private" / "ledger.sqlite").is_file()


@pytest.mark.parametrize("extra, match", [
    (["--verdicts", "more_privacy"], "must end with accept"),
    (["--verdicts", "accept", "more_privacy", "accept"], "only at the end"),
    ([], "--verdicts is required when stdin is not a terminal"),
])
def test_bad_verdicts_are_refused_in_one_line(data, capsys, monkeypatch, extra, match):
    from dpdiffusion.cli import main

    tmp, classifier = data
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(_args(tmp, classifier, tmp / "refused", *extra))
    assert exc.value.code == 2 and match in capsys.readouterr().err
    assert not (tmp / "refused").exists()
