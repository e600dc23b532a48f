"""The privacy loop's outputs read as their readers would: the recipient of OUT/release, the Hub reader of the model
card, and the ledger's keeper. Previews stay with the owner (never published, never charged, never reused)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from loop_components import make_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dpdiffusion import PrivacyLedger

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("loop-attack")
    loop = make_loop(tmp)
    ledger = PrivacyLedger(tmp / "ledger.sqlite", budget_epsilon=10.0, delta=1e-5)
    loop.step()
    loop.feedback("more_privacy")
    charged_before_accept = ledger.subjects()
    result = loop.feedback("accept", output_dir=tmp / "OUT", ledger=ledger)
    return tmp, loop, ledger, result, charged_before_accept


def _published_text(result) -> dict:
    files = [p for d in (result.release_dir, result.model_dir) for p in d.rglob("*")
             if p.is_file() and p.suffix in (".json", ".jsonl", ".md")]
    return {p: p.read_text(errors="replace") for p in files}


def test_loop_release_and_model_card_name_no_source_path(run):
    tmp, loop, _, result, _ = run
    assert sorted(p.name for p in result.release_dir.iterdir()) == ["images", "metadata.jsonl"]
    assert not (result.release_dir / "loop.json").exists() and not (result.model_dir / "loop.json").exists()
    for path, text in _published_text(result).items():
        assert str(tmp) not in text and os.path.expanduser("~") + "/" not in text, path
        assert "private/" not in text and "previews/" not in text, path  # no path into the owner's folders
    meta = [json.loads(line) for line in (result.release_dir / "metadata.jsonl").read_text().splitlines()]
    assert all("dark_skin" not in rec and "identity" not in rec and "seed" not in rec for rec in meta)


def test_loop_accept_never_reuses_a_previews_noise(run):
    _, loop, _, result, _ = run
    meta = {json.loads(line)["index"]: json.loads(line)["file_name"]
            for line in (result.release_dir / "metadata.jsonl").read_text().splitlines()}
    import PIL.Image

    for step in loop.steps.values():
        for k, preview in enumerate(step.previews):
            row = int(loop.pilot_rows[k])
            released = np.asarray(PIL.Image.open(result.release_dir / meta[row]).convert("RGB"))
            assert not np.array_equal(released, np.asarray(preview.convert("RGB"))), (step.epsilon, row)


def test_loop_model_card_carries_no_pilot_figure(run):
    _, loop, _, result, _ = run
    card = (result.model_dir / "README.md").read_text()
    section = card[card.index("## The privacy loop"):]
    steps = [line for line in section.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [line.count("|") for line in steps] == [4, 4]  # step, epsilon, verdict: no figure of the previews
    assert "pilot" not in section.split("Final figures")[1]


def test_loop_ledger_holds_exactly_one_charge_per_subject_and_none_for_previews(run):
    _, loop, ledger, result, charged_before_accept = run
    assert charged_before_accept == []  # two steps of previews charged nothing
    subjects = ledger.subjects()
    assert sorted(subjects) == sorted(f"row-{i}" for i in range(len(loop.dataset)))
    assert all(len(ledger.history(s)) == 1 for s in subjects)
    assert all(ledger.spent(s) <= result.epsilon + 1e-9 for s in subjects)


def test_loop_json_and_the_private_folder_stay_with_the_owner(run):
    _, _, _, result, _ = run
    assert stat.S_IMODE(result.loop_json.stat().st_mode) == 0o600
    assert stat.S_IMODE(result.private_dir.stat().st_mode) == 0o700
    assert result.loop_json.parent == result.output_dir and result.release_dir not in result.loop_json.parents
