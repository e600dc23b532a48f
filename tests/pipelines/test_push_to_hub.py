"""``DPDiffusionPipeline.push_to_hub``: the project's model card and the custom-pipeline file go up with the pipeline,
and the pushed repository loads with diffusers' ``custom_pipeline`` (against a local stand-in of the Hub API that
also serves the download routes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from hub_standin import hub  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_save_hub_folder_has_card_and_custom_pipeline(dummy_pipe, tmp_path):
    folder = dummy_pipe.save_hub_folder(tmp_path / "repo", repo_id="me/dp-pipe", command="python make.py")
    names = set(_files(folder))
    assert {"model_index.json", "README.md", "pipeline.py", "unet/config.json", "encoder/config.json",
            "attribute_directions/config.json", "scheduler/scheduler_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt"))]  # safetensors only
    assert (folder / "pipeline.py").read_text() == (ROOT / "pipelines" / "dp_diffusion" / "pipeline.py").read_text()
    text = (folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["privacy"]["neighbouring_relation"] == "attribute-neighbours"
    assert front["privacy"]["default_scope"] == "attributes" and front["library_name"] == "diffusers"
    assert front["clip_bounds"] == dummy_pipe.attribute_directions.clip_bounds
    for section in ("## Privacy scope", "## What is protected", "## What is not protected", "## How to use"):
        assert section in text, section
    assert 'DPDiffusionPipeline.from_pretrained("me/dp-pipe")' in text
    assert 'DiffusionPipeline.from_pretrained("me/dp-pipe", custom_pipeline="pipeline", trust_remote_code=True)' in text
    assert "python make.py" in text


def test_push_to_hub_then_load_with_custom_pipeline_through_the_hub(dummy_pipe, tmp_path, hub, monkeypatch):  # noqa: F811
    from diffusers import DiffusionPipeline
    from huggingface_hub import ModelCard

    from dpdiffusion import DPDiffusionPipeline

    info = dummy_pipe.push_to_hub("me/dp-pipe", endpoint=hub.url, token="hf_x", command="python make.py")
    stored = hub.files("me/dp-pipe")
    expected = _files(dummy_pipe.save_hub_folder(tmp_path / "local", repo_id="me/dp-pipe", command="python make.py"))
    assert stored == expected  # every file, byte for byte
    assert hub.repos[("model", "me/dp-pipe")]["create"]["type"] in (None, "model")
    assert info.oid == hub.repos[("model", "me/dp-pipe")]["commits"][-1]["oid"]
    assert ModelCard(stored["README.md"].decode()).data.privacy["neighbouring_relation"] == "attribute-neighbours"
    # the stored folder loads with diffusers' custom_pipeline ...
    checkout = hub.write_to("me/dp-pipe", tmp_path / "checkout")
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(str(checkout), custom_pipeline="pipeline")
    pipe = DiffusionPipeline.from_pretrained(str(checkout), custom_pipeline="pipeline", trust_remote_code=True)
    assert type(pipe).__name__ == "DPDiffusionPipeline"
    # ... and so does the repo id, resolved through the stand-in's download routes
    import diffusers.utils.constants as diffusers_constants

    monkeypatch.setattr(diffusers_constants, "HF_HUB_OFFLINE", False, raising=False)
    cache = tmp_path / "cache"
    remote = DiffusionPipeline.from_pretrained("me/dp-pipe", custom_pipeline="pipeline", trust_remote_code=True,
                                               cache_dir=cache, token="hf_x")
    assert type(remote).__name__ == "DPDiffusionPipeline"
    assert ("GET", "/me/dp-pipe/resolve/" + info.oid + "/pipeline.py") in hub.requests or any(
        p.endswith("/pipeline.py") for _, p in hub.requests)
    direct = DPDiffusionPipeline.from_pretrained("me/dp-pipe", cache_dir=cache, token="hf_x")
    for name in ("unet", "encoder", "attribute_directions"):
        for (k, a), b in zip(getattr(dummy_pipe, name).state_dict().items(), getattr(direct, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"
    assert not [u for u in hub.unknown if "resolve" not in u[1]], hub.unknown


@pytest.mark.parametrize("kwargs, match", [
    (dict(repo_id="no-namespace"), "repo_id must be 'namespace/name'"),
    (dict(repo_id="me/x", safe_serialization=False), "safe_serialization must be True"),
    (dict(repo_id="me/x", variant="fp16"), "variant is not supported"),
    (dict(repo_id="me/x", max_shard_size="1GB"), "unknown arguments to push_to_hub: \\['max_shard_size'\\]"),
])
def test_push_to_hub_bad_arguments(dummy_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dummy_pipe.push_to_hub(**kwargs)
