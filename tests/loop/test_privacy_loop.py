"""`PrivacyLoop`: steps follow the controller and are cached, figures carry their uncertainty and the DP bound, accept
writes the release, the model and loop.json, and the result pushes to (a local stand-in of) the Hub."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from loop_components import ATTRIBUTES, LABELS, make_loop, make_loop_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def accepted(tmp_path_factory):
    """A loop driven through more_privacy, more_utility and accept (one run shared by the module)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("loop")
    loop = make_loop(tmp)
    loop.step()
    loop.feedback("more_privacy")
    loop.feedback("more_utility")
    result = loop.feedback("accept", output_dir=tmp / "OUT")
    return loop, result


def test_steps_follow_the_controller_and_come_back_from_the_cache(accepted):
    loop, result = accepted
    assert [s["epsilon"] for s in result.history] == [1.0, 0.5, 0.7071]
    assert [s["verdict"] for s in result.history] == ["more_privacy", "more_utility", "accept"]
    calls = []
    release = loop._release
    loop._release = lambda *a, **k: calls.append(a) or release(*a, **k)
    try:
        assert loop.step() is loop.steps[0.7071]  # the current epsilon: served from the cache
    finally:
        loop._release = release
    assert calls == [] and sorted(loop.steps) == [0.5, 0.7071, 1.0]


def test_step_figures_carry_their_uncertainty_and_the_dp_bound(accepted):
    from dpdiffusion.evaluation.leakage import dp_accuracy_bound

    loop, _ = accepted
    step = loop.steps[0.5]
    assert step.privacy["epsilon"] == 0.5 and len(step.previews) == 4 and step.seconds > 0
    for name in LABELS:
        row = step.figures["utility"]["per_label"][name]
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"] and row["n"] == 16
    leak = step.figures["leakage_release"]["dark_skin"]
    assert leak["n"] == 8 and leak["ci_low"] <= leak["accuracy"] <= leak["ci_high"]
    assert leak["bound"] == pytest.approx(dp_accuracy_bound(0.5, delta=loop.delta, prior=leak["prior"]))
    assert 0 <= leak["label_baseline"] <= 1  # guessing dark_skin from the published labels alone
    mia = step.figures["mia_auc"]
    assert 0 <= mia["auc"] <= 1 and mia["std_error"] > 0 and mia["members"] == 16


def test_accept_writes_a_loadable_release_model_and_record(accepted):
    import datasets
    from transformers import pipeline

    loop, result = accepted
    release = datasets.load_dataset("imagefolder", data_dir=str(result.release_dir), split="train")
    assert len(release) == len(loop.dataset) == result.figures["released"]
    assert set(LABELS) <= set(release.column_names) and "dark_skin" not in release.column_names
    assert set(release["epsilon"]) == {0.7071}
    classify = pipeline("image-classification", model=str(result.model_dir))
    scores = classify(loop.held_out[0]["image"], top_k=3)
    assert {s["label"] for s in scores} == set(LABELS)
    record = json.loads(result.loop_json.read_text())
    assert [s["epsilon"] for s in record["steps"]] == [1.0, 0.5, 0.7071]
    assert record["accepted_epsilon"] == 0.7071 and record["released"] == 40 and record["subjects"] == 40
    assert "figures" in record["steps"][0] and record["final"]["mia_auc"]["members"] == 40
    card = (result.model_dir / "README.md").read_text()
    assert "## The privacy loop" in card and "| 3 | 0.7071 | accept |" in card


def test_final_utility_equals_an_independent_recomputation(accepted):
    from transformers import AutoModelForImageClassification

    from dpdiffusion.unlearning.data import default_image_processor

    loop, result = accepted
    model = AutoModelForImageClassification.from_pretrained(result.model_dir).eval()
    x = default_image_processor(32)(images=[im.convert("RGB") for im in loop.held_out["image"]],
                                    return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        decided = (model(pixel_values=x).logits > 0).numpy()
    for j, name in enumerate(LABELS):
        truth = np.asarray(loop.held_out[name]).astype(bool)
        assert result.figures["utility"]["per_label"][name]["accuracy"] == pytest.approx(
            float((decided[:, j] == truth).mean()), abs=1e-9)


def test_accept_refuses_an_output_folder_that_holds_a_result(accepted, tmp_path):
    loop, result = accepted
    before = list(loop.history)
    with pytest.raises(ValueError, match="output_dir"):
        loop.accept(result.output_dir)
    assert loop.history == before  # a refused accept records no verdict


def test_push_to_hub_sends_the_release_and_the_model_with_their_cards(accepted, monkeypatch, tmp_path):
    from hub_standin import HubStandIn
    from huggingface_hub import ModelCard, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _, result = accepted
    with HubStandIn() as hub:
        result.push_to_hub("me/faces-released", "me/faces-unlearned", token="hf_fake", endpoint=hub.url)
    data = hub.files("me/faces-released", "dataset")
    assert "metadata.jsonl" in data and "README.md" in data and sum(p.startswith("images/") for p in data) == 40
    assert "loop.json" not in data and not any(p.startswith(("private", "previews")) for p in data)
    dataset_card = data["README.md"].decode()
    assert "epsilon: 0.7071" in dataset_card and "| 2 | 0.5 | more_utility |" in dataset_card
    model = hub.files("me/faces-unlearned")
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(model)
    (tmp_path / "README.md").write_bytes(model["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets == ["me/faces-released"] and "## The privacy loop" in card.text
    assert all(a == "Bearer hf_fake" for a in hub.authorizations)


def test_a_subject_with_several_images_is_charged_once_per_image(tmp_path):
    from dpdiffusion import PrivacyLedger

    loop = make_loop(tmp_path, subject_column="identity", retrain_epochs=0, unlearning_method="first_order")
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=10.0, delta=1e-5)
    loop.feedback("accept", output_dir=tmp_path / "OUT", ledger=ledger)
    counts = {str(k): int(v) for k, v in zip(*np.unique(loop.dataset["identity"], return_counts=True))}
    assert {s: len(ledger.history(s)) for s in ledger.subjects()} == counts


@pytest.mark.parametrize("kwargs, match", [
    ({"label_columns": ["eyeglasses", "smiling", "wearing_hat"]}, "label_columns"),
    ({"attributes": ["no_such_column"]}, "no column"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"delta": 1.5}, "delta"),
    ({"pilot_size": 4}, "pilot_size"),
    ({"unlearning_method": "forget"}, "unlearning_method"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    from dpdiffusion import PrivacyLoop

    train, held, classifier = make_loop_data(tmp_path)
    options = dict(attributes=ATTRIBUTES, label_columns=LABELS, held_out=held, pilot_size=16)
    with pytest.raises(ValueError, match=match):
        PrivacyLoop(object(), train, str(classifier), **{**options, **kwargs})


def test_an_unknown_verdict_is_refused(accepted):
    loop, _ = accepted
    with pytest.raises(ValueError, match="verdict"):
        loop.feedback("more_detail")
