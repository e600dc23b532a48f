"""Model cards and Hub upload of unlearned classifiers: dry run, front matter, fake HfApi, real Hub (opt-in)."""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

import dpdiffusion.hub as hub
from dpdiffusion.hub import push_unlearned_model, render_model_card
from dpdiffusion.training.classifier import build_classifier
from dpdiffusion.unlearning import UnlearningResult
from hub_standin import HubStandIn  # tests/ is on sys.path (conftest)

PRIVACY = dict(epsilon=1.5, delta=1e-5, guarantee="formal", neighbouring_relation="attribute-neighbours",
               attributes=["dark_skin"])
METRICS = {
    "columns": ["seconds", "test_accuracy", "mia_auc"],
    "rows": {"first_order": {"seconds": 0.5, "test_accuracy": 0.91, "mia_auc": 0.52},
             "retrain": {"seconds": 60.0, "test_accuracy": 0.92, "mia_auc": 0.51}},
}
COST = dict(seconds=0.5, retrain_seconds=60.0)


@pytest.fixture(scope="module")
def model():
    return build_classifier(2, image_size=16, hidden_sizes=(4, 8), embedding_size=4, seed=0,
                            label_names=["smiling", "wearing_hat"])


@pytest.fixture
def result(model):
    return UnlearningResult(model=model, method="first_order", seconds=0.5, n_changed=30, tau=1e-4, n_train=100,
                            updated_parameters=123, extra={"update_norm": 0.1})


def _section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"section {title!r} missing"
    return m.group(1).strip()


def test_dry_run_writes_upload_folder(tmp_path, model, result):
    folder = push_unlearned_model(model, "me/faces-unlearned", result=result, privacy=PRIVACY, metrics=METRICS,
                                  cost=COST, dry_run_dir=tmp_path / "up", command="python bench.py --seed 0")
    assert folder == tmp_path / "up"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "unlearning.json"}
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(pixel_values=x).logits, model(pixel_values=x).logits)
    record = json.loads((folder / "unlearning.json").read_text())
    assert record["privacy"]["epsilon"] == 1.5 and record["unlearning"]["method"] == "first_order"


def test_model_card_front_matter_and_sections(tmp_path, model, result):
    protected = "Skin tone of the 30 revised faces, by the Gaussian mechanism on the attribute coordinate."
    privacy = dict(PRIVACY, what_is_protected=protected)
    folder = push_unlearned_model(model, "me/faces-unlearned", result=result, privacy=privacy, metrics=METRICS,
                                  cost=COST, dry_run_dir=tmp_path, command="python bench.py --seed 0")
    readme = (folder / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    for meta in (front, data):
        assert meta["library_name"] == "transformers"
        assert {"dp", "machine-unlearning"} <= set(meta["tags"])
        assert meta["privacy"]["epsilon"] == PRIVACY["epsilon"]
        assert meta["privacy"]["delta"] == PRIVACY["delta"]
        assert meta["privacy"]["neighbouring_relation"] == PRIVACY["neighbouring_relation"]
        assert meta["privacy"]["guarantee"] == "formal" and meta["privacy"]["attributes"] == ["dark_skin"]
        assert meta["unlearning"]["method"] == "first_order" and meta["unlearning"]["n_changed"] == 30
    assert _section(card.text, "What is protected") == protected
    not_protected = _section(card.text, "What is not protected")
    assert "approximate" in not_protected and "not revised" in not_protected
    assert "| first_order | 0.5 | 0.91 | 0.52 |" in card.text
    assert "python bench.py --seed 0" in _section(card.text, "How it was produced")
    assert "120x" in _section(card.text, "Cost versus retraining")


def test_default_protected_text_names_attributes_and_budget(tmp_path, model, result):
    folder = push_unlearned_model(model, "faces", result=result, privacy=dict(PRIVACY, epsilon=math.inf),
                                  metrics={"test_accuracy": 0.9}, cost=COST, dry_run_dir=tmp_path)
    card = ModelCard.load(folder / "README.md")
    assert card.data.to_dict()["privacy"]["epsilon"] == math.inf
    text = _section(card.text, "What is protected")
    assert "dark_skin" in text and "infinity" in text and "attribute-neighbours" in text
    assert "| test_accuracy | 0.9 |" in card.text


@pytest.mark.parametrize(
    "privacy, match",
    [({k: v for k, v in PRIVACY.items() if k != "delta"}, "delta"), (dict(PRIVACY, epsilon=-1), "epsilon"),
     (dict(PRIVACY, delta=1.0), "delta"), (dict(PRIVACY, guarantee="strong"), "guarantee")],
)
def test_bad_privacy_raises(tmp_path, model, result, privacy, match):
    with pytest.raises(ValueError, match=match):
        push_unlearned_model(model, "me/x", result=result, privacy=privacy, metrics=METRICS, cost=COST,
                             dry_run_dir=tmp_path)


def test_bad_repo_id_and_cost_raise(tmp_path, model, result):
    with pytest.raises(ValueError, match="repo_id"):
        push_unlearned_model(model, "a/b/c", result=result, privacy=PRIVACY, metrics=METRICS, cost=COST,
                             dry_run_dir=tmp_path)
    with pytest.raises(ValueError, match="retrain_seconds"):
        push_unlearned_model(model, "me/x", result=result, privacy=PRIVACY, metrics=METRICS, cost={"seconds": 1},
                             dry_run_dir=tmp_path)


def test_render_model_card_unknown_template():
    with pytest.raises(ValueError, match="template_name"):
        render_model_card("no_such_template")


def test_upload_uses_hf_api(monkeypatch, model, result):
    calls = {}

    class FakeApi:
        def __init__(self, token=None, **kwargs):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create_repo"] = (repo_id, kwargs)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            calls["upload_folder"] = (repo_id, sorted(p.name for p in folder.iterdir()), kwargs)
            calls["card"] = ModelCard.load(folder / "README.md").data.to_dict()
            return "commit-info"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    out = push_unlearned_model(model, "me/faces-unlearned", result=result, privacy=PRIVACY, metrics=METRICS,
                               cost=COST, token="hf_fake")
    assert out == "commit-info" and calls["token"] == "hf_fake"
    repo_id, kwargs = calls["create_repo"]
    assert repo_id == "me/faces-unlearned" and kwargs["private"] is True and kwargs["exist_ok"] is True
    repo_id, files, kwargs = calls["upload_folder"]
    assert files == ["README.md", "config.json", "model.safetensors", "unlearning.json"]
    assert kwargs["repo_type"] == "model" and "first_order" in kwargs["commit_message"]
    assert calls["card"]["privacy"]["epsilon"] == 1.5


@pytest.mark.hub
def test_real_hub_round_trip(model, result):
    token = os.environ.get("HF_TOKEN")
    if not token:
        pytest.skip("HF_TOKEN is not set")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        pytest.skip("HF_HUB_OFFLINE is set (run with HF_HUB_OFFLINE=0 HF_TOKEN=... pytest -m hub)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = f"{api.whoami()['name']}/dpdiffusion-test-{uuid.uuid4().hex[:8]}"
    try:
        push_unlearned_model(model, repo_id, result=result, privacy=PRIVACY, metrics=METRICS, cost=COST, token=token)
        card = ModelCard.load(repo_id, token=token)
        assert card.data.to_dict()["privacy"]["delta"] == PRIVACY["delta"]
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def test_model_card_templates_ship_inside_the_package():
    """Wheels carry the templates through the dpdiffusion/model_cards link (package data)."""
    from dpdiffusion.hub import MODEL_CARDS_DIR

    assert MODEL_CARDS_DIR.parent.name == "dpdiffusion"
    assert {p.name for p in MODEL_CARDS_DIR.glob("*.md")} >= {"unlearned_classifier.md", "dp_diffusion_pipeline.md"}


# ----------------------------------------------------------------------------------------------------------------
# A local stand-in of the Hub API: the requests `HfApi.create_repo` / `upload_folder` send
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def hub_online(monkeypatch):
    """The tests run offline (conftest); requests to the local stand-in must still go out."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_push_to_local_hub_stand_in_carries_every_file(hub_online, model, result, tmp_path):
    from transformers import AutoImageProcessor

    from dpdiffusion.unlearning.data import default_image_processor

    processor = default_image_processor(16)
    with HubStandIn() as hub_api:
        push_unlearned_model(model, "me/faces-unlearned", result=result, privacy=PRIVACY,
                             metrics={"accuracy_revised_before": 0.5, "accuracy_revised_after": 0.75}, cost=COST,
                             token="hf_fake", image_processor=processor, endpoint=hub_api.url,
                             card_info={"base_model": "someone/base", "datasets": ["someone/faces"],
                                        "license": "mit"})
    paths = [p for _, p in hub_api.requests]
    assert paths == ["/api/repos/create", "/api/validate-yaml", "/api/models/me/faces-unlearned/preupload/main",
                     "/api/models/me/faces-unlearned/commit/main"]
    assert all(auth == "Bearer hf_fake" for auth in hub_api.authorizations)
    assert list(hub_api.repos) == [("model", "me/faces-unlearned")]
    assert hub_api.repos[("model", "me/faces-unlearned")]["create"]["visibility"] == "private"
    pushed_files = hub_api.files("me/faces-unlearned")
    assert set(pushed_files) == {"README.md", "config.json", "model.safetensors", "preprocessor_config.json",
                                  "unlearning.json"}
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name, content in pushed_files.items():
        (pushed / name).write_bytes(content)
    card = ModelCard.load(pushed / "README.md")  # parses the front matter, model-index included
    data = card.data.to_dict()
    assert data["base_model"] == "someone/base" and data["datasets"] == ["someone/faces"] and data["license"] == "mit"
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == {
        "accuracy_revised_before": 0.5, "accuracy_revised_after": 0.75}
    assert all(r.task_type == "image-classification" and r.dataset_type == "someone/faces"
               for r in card.data.eval_results)
    assert "test accuracy" not in card.text and "membership" not in card.text  # nothing the run did not compute
    loaded = AutoModelForImageClassification.from_pretrained(pushed)
    assert AutoImageProcessor.from_pretrained(pushed).crop_size == {"height": 16, "width": 16}
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(pixel_values=x).logits, model(pixel_values=x).logits)


def test_public_command_keeps_hub_ids_and_numbers():
    assert hub.public_command("dpdiffusion unlearn --classifier google/vit-base --epsilon 1.5") == \
        "dpdiffusion unlearn --classifier google/vit-base --epsilon 1.5"
    assert hub.public_command("x --out=/home/someone/secret_folder") == "x --out=secret_folder"
