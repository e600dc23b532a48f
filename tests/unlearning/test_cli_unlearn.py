"""`dpdiffusion unlearn` as a user runs it on a classifier the project did not make: a subprocess under
`ulimit -n 64` with more images than file descriptors, a ViT (SDPA attention) with a non-default image processor,
single-label class names, retraining for comparison, and a push to a local stand-in of the Hub API."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import yaml

from hub_standin import HubStandIn  # noqa: E402 - tests/ is on sys.path (conftest)

N_IMAGES, N_REVISED, N_HELD_OUT = 90, 72, 12  # more files than `ulimit -n 64` allows open at once
LICENSE = "cc-by-nc-4.0"


def _env(tmp_path, **extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "HF_DATASETS_CACHE": str(tmp_path / "ds-cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(extra)
    return env


def _run_limited(args, env, timeout=300):
    cmd = "ulimit -n 64 && exec " + " ".join(shlex.quote(a) for a in [sys.executable, "-m", "dpdiffusion.cli", *args])
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout, env=env)


def _folder(path: Path, n: int, seed: int, names) -> list[str]:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        label = names[int(rng.integers(0, len(names)))]
        img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        img[..., 0] = 255 if label == names[0] else img[..., 0] // 2  # a learnable signal
        PIL.Image.fromarray(img).save(path / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "species": label})
        labels.append(label)
    (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return labels


@pytest.fixture(scope="module")
def vit_setup(tmp_path_factory):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    tmp = tmp_path_factory.mktemp("vit-cli")
    names = ["cat", "dog"]
    _folder(tmp / "src", N_IMAGES, 0, names)
    _folder(tmp / "held", N_HELD_OUT, 1, names)
    _folder(tmp / "shifted", N_HELD_OUT, 3, names)
    prot = tmp / "protected"
    (prot / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    recs = []
    for i in range(N_REVISED):
        PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(prot / "images" / f"{i}.png")
        recs.append({"index": i, "file_name": f"images/{i}.png", "epsilon": 2.0, "delta": 1e-5, "guarantee": "formal",
                     "neighbouring_relation": "attribute-neighbours", "attributes": ["dark_skin"]})
    (prot / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=2, id2label=dict(enumerate(names)),
                       label2id={n: i for i, n in enumerate(names)}, attn_implementation="sdpa")
    clf = tmp / "vit"
    ViTForImageClassification(config).save_pretrained(clf)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(clf)
    (clf / "README.md").write_text(f"---\nlicense: {LICENSE}\nlibrary_name: transformers\n---\n# tiny vit\n")
    return tmp


def test_cli_unlearns_a_hub_vit_with_bounded_open_files_and_pushes(vit_setup, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoImageProcessor, pipeline

    s = vit_setup
    out = tmp_path / "out"
    with HubStandIn() as hub_api:
        res = _run_limited(
            ["unlearn", "--classifier", str(s / "vit"), "--original", str(s / "src"), "--revised", str(s / "protected"),
             "--label-column", "species", "--output-dir", str(out), "--method", "second_order",
             "--batch-size", "16", "--hessian-samples", "32", "--last-k-blocks", "1", "--compare-retrain", "true",
             "--mixed-precision", "bf16",
             "--epochs", "1", "--retrain-lr", "1e-3", "--retrain-weight-decay", "0.05", "--retrain-warmup-ratio", "0.1",
             "--held-out", str(s / "held"), "--shifted-test", str(s / "shifted"),
             "--dataset-ids", "me/protected-faces",
             "--push-to-hub", "me/vit-unlearned", "--no-progress"],
            _env(tmp_path, HF_ENDPOINT=hub_api.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_fake"))
    assert res.returncode == 0, res.stderr[-4000:]
    files = {p.name for p in out.iterdir()}
    assert files == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "unlearning.json"}
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind
    # the pushed files are exactly the folder
    pushed = hub_api.files("me/vit-unlearned")
    assert set(pushed) == files
    for name in files:
        assert pushed[name] == (out / name).read_bytes(), name
    # the processor is the classifier's own (32 px, ImageNet statistics), not a 0.5/0.5 default
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["size"] == {"height": 32, "width": 32} and proc["image_mean"] == [0.485, 0.456, 0.406]
    assert AutoImageProcessor.from_pretrained(out) is not None
    # card: valid front matter, license of the base model, datasets, model-index = the run's own figures
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    record = json.loads((out / "unlearning.json").read_text())
    metrics = record["metrics"]
    assert data["license"] == LICENSE and data["datasets"] == ["me/protected-faces"] and "base_model" not in data
    assert data["unlearning"]["updated_modules"].endswith("vit.layernorm, classifier")
    figures = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert set(figures) == {"accuracy_revised_before", "accuracy_revised_after", "agreement_with_retrained",
                            "mia_auc", "mia_auc_retrained", "unlearning_seconds", "retrain_seconds",
                            "speedup_vs_retrain", "wall_seconds", "accuracy_shifted_before", "accuracy_shifted_after",
                            "accuracy_shifted_retrained"} | ({"gap_restored_shifted"} & set(metrics))
    before, after, retrained = (metrics[f"accuracy_shifted_{k}"] for k in ("before", "after", "retrained"))
    if retrained != before:
        assert metrics["gap_restored_shifted"] == pytest.approx((after - before) / (retrained - before))
    assert "shifted test split" in card.text
    assert all(figures[k] == pytest.approx(metrics[k]) for k in figures)
    assert 0 <= figures["mia_auc"] <= 1 and 0 <= figures["agreement_with_retrained"] <= 1
    assert metrics["changed_pairs"] == N_REVISED and metrics["training_rows"] == N_IMAGES
    assert "local/" not in card.content and "apache-2.0" not in card.content
    assert 'pipeline("image-classification", model="me/vit-unlearned")' in card.text
    front = yaml.safe_load(card.content.split("---")[1])
    assert front["privacy"]["epsilon"] == 2.0
    # pipeline("image-classification") works on the output folder
    classify = pipeline("image-classification", model=str(out))
    preds = classify(PIL.Image.open(s / "src" / "0.png"))
    assert {p["label"] for p in preds} == {"cat", "dog"}


def test_cli_dry_run_card_names_no_invented_repo(vit_setup, tmp_path, capsys):
    """Without --push-to-hub: no `local/<dir>` id, no base_model for a local folder, metrics only as computed."""
    from huggingface_hub import ModelCard

    from dpdiffusion.cli import main

    s = vit_setup
    out = tmp_path / "dry"
    main(["unlearn", "--classifier", str(s / "vit"), "--original", str(s / "src"), "--revised", str(s / "protected"),
          "--label-column", "species", "--output-dir", str(out), "--method", "first_order", "--no-progress"])
    card = ModelCard.load(out / "README.md")
    assert "local/" not in card.content and "base_model" not in card.data.to_dict()
    assert 'pipeline("image-classification", model="./dry")' in card.text
    assert {r.metric_name for r in card.data.eval_results} == {
        "accuracy_revised_before", "accuracy_revised_after", "unlearning_seconds", "wall_seconds"}
    assert "agreement_with_retrained" not in card.text and "mia_auc" not in card.text


def test_cli_without_processor_or_image_size_is_one_clear_line(tmp_path, capsys):
    from dpdiffusion.cli import main
    from dpdiffusion.training.classifier import build_classifier

    clf = tmp_path / "clf"
    build_classifier(2, image_size=16, label_names=["a", "b"]).save_pretrained(clf)
    src = tmp_path / "src"
    _folder(src, 2, 0, ["a", "b"])
    args = ["unlearn", "--classifier", str(clf), "--original", str(src), "--revised", str(src), "--output-dir",
            str(tmp_path / "o")]
    for extra, needle in [(["--label-columns", "a", "b"], "--image-size"),
                          (["--label-columns", "a", "b", "--image-size", "16", "--mixed-precision", "fp8"],
                           "mixed_precision"),
                          (["--label-column", "a", "--image-size", "16"], "--label-columns"),
                          (["--label-columns", "a", "b", "--image-size", "16"], "no label columns ['a', 'b']"),
                          (["--label-columns", "a", "b", "--image-size", "16", "--last-k-blocks", "-1"],
                           "last_k_blocks"),
                          (["--label-columns", "a", "b", "--image-size", "16", "--retrain-warmup-ratio", "1"],
                           "retrain_warmup_ratio must be in [0, 1)"),
                          (["--label-columns", "a", "b", "--image-size", "16", "--retrain-lr", "0"],
                           "retrain_lr must be > 0")]:
        with pytest.raises(SystemExit) as exc:
            main(args + extra)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "o").exists()


def test_cli_head_exact_records_its_certificate_in_the_card(vit_setup, tmp_path, capsys):
    """`--method head_exact`: the head is retrained exactly; the card names the head, l2 and the certificate."""
    from huggingface_hub import ModelCard

    from dpdiffusion.cli import main

    s = vit_setup
    args = ["unlearn", "--classifier", str(s / "vit"), "--original", str(s / "src"), "--revised", str(s / "protected"),
            "--label-column", "species", "--method", "head_exact", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(args + ["--output-dir", str(tmp_path / "bad"), "--head-l2", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "head_l2 must be a finite number > 0" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "exact"
    main(args + ["--output-dir", str(out), "--head-l2", "0.01"])
    details = ModelCard.load(out / "README.md").data.to_dict()["unlearning"]
    assert details["method"] == "head_exact" and details["updated_modules"] == "classifier"
    assert details["l2"] == 0.01 and details["newton_steps"] >= 1 and 0 <= details["certified_distance"] < 1e-6


def test_cli_training_loss_step_search_is_recorded_in_the_card(vit_setup, tmp_path):
    """`--step-search training_loss`: the card says which search chose the length and with what weight the revisions
    entered it (the share of the training set they are: 72 revised of 90 images, every revised image new)."""
    from huggingface_hub import ModelCard

    from dpdiffusion.cli import main

    s = vit_setup
    out = tmp_path / "tl"
    main(["unlearn", "--classifier", str(s / "vit"), "--original", str(s / "src"), "--revised", str(s / "protected"),
          "--label-column", "species", "--output-dir", str(out), "--method", "second_order", "--step-search",
          "training_loss", "--no-progress"])
    details = ModelCard.load(out / "README.md").data.to_dict()["unlearning"]
    assert details["step_search"] == "training_loss" and details["training_rows"] == N_IMAGES
    assert details["revised_share"] == pytest.approx(N_REVISED / N_IMAGES)
    assert 0.125 <= details["step_scale"] <= 8 and details["held_out_pairs"] == round(0.2 * N_REVISED)
