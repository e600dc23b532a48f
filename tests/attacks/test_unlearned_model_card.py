"""Attacker: a reader of an unlearned classifier pushed to the Hub (threat model: "Hub reader", channel "model card").

The reader sees the pushed folder: ``README.md`` (the card), ``unlearning.json``, ``config.json`` and the weights.
The data owner's folder layout (user names, project or person names in folder names) is the owner's bookkeeping,
not part of the release. Fails on commit ae36aae: the card printed the base model's local path and the command line
with every absolute path as typed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dpdiffusion.hub import push_unlearned_model
from dpdiffusion.training.classifier import build_classifier
from dpdiffusion.unlearning import UnlearningResult

SECRET_PARTS = ("ana_lopez", "clinic_patients")  # the folders above the named ones


def _read_everything(folder: Path) -> str:
    """Every text byte the Hub reader downloads (the weights are binary and hold no path)."""
    return "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in sorted(folder.rglob("*"))
                     if p.is_file() and p.suffix in (".md", ".json", ".txt"))


@pytest.fixture(scope="module")
def model():
    return build_classifier(2, image_size=16, hidden_sizes=(4, 8), embedding_size=4, seed=0,
                            label_names=["smiling", "wearing_hat"])


def test_card_names_no_local_folder_of_the_owner(tmp_path, model):
    base = tmp_path / "ana_lopez" / "clinic_patients"
    (base / "faces_2026").mkdir(parents=True)
    (base / "vit").mkdir()
    command = (f"dpdiffusion unlearn --classifier {base / 'vit'} --original {base / 'faces_2026'} "
               f"--revised={base / 'faces_2026'}-released --epochs 2")
    result = UnlearningResult(model=model, method="first_order", seconds=0.5, n_changed=3, tau=1e-4, n_train=10,
                              updated_parameters=1, extra={})
    privacy = dict(epsilon=1.0, delta=1e-5, guarantee="formal", neighbouring_relation="attribute-neighbours",
                   attributes=["dark_skin"])
    folder = push_unlearned_model(model, "me/unlearned", result=result, privacy=privacy,
                                  metrics={"test_accuracy": 0.9}, cost=dict(seconds=0.5, retrain_seconds=None),
                                  dry_run_dir=tmp_path / "upload", command=command,
                                  card_info=dict(base_model_path=str(base / "vit")))
    text = _read_everything(folder)
    assert not any(part in text for part in SECRET_PARTS), "the card shows the owner's local folders"
    assert str(tmp_path) not in text
    assert "--epochs 2" in text and "--classifier vit" in text  # still a usable record of the run


def test_card_of_an_epsilon_inf_release_says_no_protection(tmp_path, model):
    """A reader must not take an epsilon = inf release for a protected one. Fails on ae36aae: the release said
    "formal" and the card refused any guarantee but formal / heuristic / none."""
    result = UnlearningResult(model=model, method="first_order", seconds=0.5, n_changed=3, tau=1e-4, n_train=10,
                              updated_parameters=1, extra={})
    privacy = dict(epsilon=math.inf, delta=1e-5, guarantee="none (epsilon = inf)",
                   neighbouring_relation="attribute-neighbours", attributes=["dark_skin"])
    folder = push_unlearned_model(model, "me/unlearned", result=result, privacy=privacy,
                                  metrics={"test_accuracy": 0.9}, cost=dict(seconds=0.5, retrain_seconds=None),
                                  dry_run_dir=tmp_path / "upload", command="dpdiffusion unlearn")
    card = (folder / "README.md").read_text()
    assert "infinity (no noise)" in card and "none (epsilon = inf) guarantee" in card
    assert "formal guarantee" not in card.split("## Privacy", 1)[1].split("##", 1)[0]


def test_card_hides_a_relative_output_dir(tmp_path, monkeypatch):
    """Hub reader: the card's command line of `dpdiffusion unlearn ... --output-dir ana_lopez/clinic/unlearned` run
    with relative paths. The output folder does not exist yet when the card is written, so on dfd5c23 public_path
    leaves it as typed and the card shows the owner's folders."""
    import json

    from dpdiffusion.hub import write_unlearned_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ana_lopez" / "clinic_patients" / "faces").mkdir(parents=True)
    model = build_classifier(1, image_size=16, hidden_sizes=(4, 8), embedding_size=4, seed=0, label_names=["smiling"])
    result = UnlearningResult(model=model, method="first_order", seconds=0.5, n_changed=3, tau=1e-4, n_train=10,
                              updated_parameters=1, extra={})
    privacy = dict(epsilon=1.0, delta=1e-5, guarantee="formal", neighbouring_relation="attribute-neighbours",
                   attributes=["dark_skin"])
    command = ("dpdiffusion unlearn --original ana_lopez/clinic_patients/faces "
               "--output-dir ana_lopez/clinic_patients/unlearned --epochs 2")
    folder = write_unlearned_model(model, Path("ana_lopez/clinic_patients/unlearned"), result=result, privacy=privacy,
                                   metrics={"test_accuracy": 0.9}, cost=dict(seconds=0.5, retrain_seconds=None),
                                   command=command)
    text = "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in folder.rglob("*")
                     if p.suffix in (".md", ".json"))
    assert "ana_lopez" not in text and "clinic_patients" not in text
    assert "--epochs 2" in text
    json.loads((folder / "unlearning.json").read_text())
