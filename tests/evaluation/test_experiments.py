"""The paper sweep end to end on the tiny dummy pipeline: table, JSON and PNGs are written and consistent; the
script runs as a subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dpdiffusion.evaluation.audit import REFUTATION_FACTOR, largest_refutable_claim, max_certifiable_epsilon
from dpdiffusion.evaluation.experiments import check_claims, render_markdown, run_paper_experiments

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(epsilons=[1.0, math.inf], num_train=24, num_test=20, num_inference_steps=1, classifier_epochs=1,
            audit_epsilons=[1.0], audit_trials=200, audit_decoded_trials=8, audit_pairs=1, progress=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import sys as _sys

    _sys.path.insert(0, str(ROOT / "tests"))
    from dpd_test_components import get_dummy_components

    from dpdiffusion import DPDiffusionPipeline

    pipe = DPDiffusionPipeline(**get_dummy_components())
    out = tmp_path_factory.mktemp("paper")
    return out, run_paper_experiments(out, pipe=pipe, command="pytest tiny sweep", **TINY)


def test_sweep_writes_every_output(sweep):
    out, results = sweep
    for name in ("results.json", "results.md", "privacy_utility.png", "leakage_vs_epsilon.png",
                 "utility_vs_epsilon.png", "audit.png", "samples_dpdiffusion.png", "samples_methods.png"):
        assert (out / name).stat().st_size > 0, name
    for path in results["files"].values():
        assert Path(path).exists()
    assert (out / "privacy_utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_holds_every_row_and_figure(sweep):
    out, results = sweep
    data = json.loads((out / "results.json").read_text())
    assert data["command"] == "pytest tiny sweep"
    methods = {(r["method"], r["epsilon"], r.get("matched_to_epsilon")) for r in data["rows"]}
    for m in ("dpdiffusion", "latent", "dp_pix", "dp_pix_attribute", "pixel_gaussian"):
        assert (m, 1.0, None) in methods and (m, "inf", None) in methods
    for m in ("blur", "pixelate"):  # each matched setting a row, or said to match nothing (never both)
        for eps in (1.0, "inf"):
            unmatched = [u for u in data["unmatched_obfuscations"]
                         if (u["method"], u["matched_to_epsilon"]) == (m, eps)]
            assert ((m, None, eps) in methods) != bool(unmatched), (m, eps)
            assert all(u["reason"].startswith(f"no {m} setting matches") for u in unmatched)
    row = next(r for r in data["rows"] if r["method"] == "dpdiffusion" and r["epsilon"] == 1.0)
    assert set(row["leakage"]["best"]) == {"dark_skin", "long_hair"}
    assert set(row["utility"]["per_attribute"]) == {"smiling", "eyeglasses", "wearing_hat"}
    # the utility classifier (and its clean reference) train with flips and colour jitter; the attacker does not
    assert data["config"]["utility_augment"] is True and "flips and colour jitter" in (out / "results.md").read_text()
    for a, v in row["utility"]["per_attribute"].items():
        assert v["clean_accuracy"] == data["clean"]["utility_accuracy"][a]
        assert v["accuracy"] == row["accuracy_on_clean_test"][a]
        assert row["utility_without_augmentation"]["per_attribute"][a]["clean_accuracy"] == data["clean"]["accuracy"][a]
    assert data["claims"]["utility_ratio_mean_without_augmentation"] == pytest.approx(
        row["utility_without_augmentation"]["mean_ratio"])
    assert {"psnr_db", "ssim", "fd_synthfaces_resnet"} <= set(row["quality"])
    assert row["description"]["neighbouring_relation"].startswith("attribute-neighbours")
    assert row["leakage_bound"] == pytest.approx(math.e / (1 + math.e), abs=1e-4)
    # eps = inf of both diffusion scopes is the same release (mechanism off): measured once
    inf_rows = [r for r in data["rows"] if r["method"] in ("dpdiffusion", "latent") and r["epsilon"] == "inf"]
    assert inf_rows[0]["quality"] == inf_rows[1]["quality"]


def test_audit_covers_every_formal_method_and_stays_below_claims(sweep):
    _, results = sweep
    audit = results["audit"]
    assert set(audit) == {"dpdiffusion", "latent", "dp_pix", "dp_pix_attribute", "pixel_gaussian"}
    ours = audit["dpdiffusion"]["1"]
    assert {"formal_worst_case_latent", "formal_counterfactual_coordinates_latent", "formal_worst_case_decoded",
            "image_pairs_protected_coordinates_latent", "image_pairs_full_latent"} <= set(ours)
    for method, per_eps in audit.items():
        for entry in per_eps.values():
            for kind, v in entry.items():
                if v["covered_by_claim"]:
                    assert v["epsilon_lower_bound"] <= v["claimed_epsilon"], method
                decoded = kind.endswith("_decoded")
                # TINY: 200 trials per world certify 3.28 >= 2 x 1; 8 decoded trials certify nothing
                assert v["max_certifiable_epsilon"] == pytest.approx(
                    max_certifiable_epsilon(8 if decoded else 200, delta=v["delta"]), rel=1e-9), (method, kind)
                assert v["can_refute_claim"] is (not decoded), (method, kind)
    assert results["claims"]["audit_never_exceeds_claim"] is True
    assert results["claims"]["audit_all_can_refute_claim"] is False
    assert {w["audit"] for w in results["claims"]["audit_cannot_refute_claim"]} == {"formal_worst_case_decoded"}


def test_markdown_table_and_claims(sweep):
    out, results = sweep
    md = (out / "results.md").read_text()
    assert md == render_markdown(results) + "\n"
    assert results["table_md"] in md
    assert "| dpdiffusion | 1 |" in md and "| dp_pix | 1 |" in md and "| blur | none (quality of eps=1) |" in md
    assert "| max certifiable | can refute the claim (max >= 2x claim) |" in md
    assert "| formal_worst_case_latent | yes | " in md and " | 100 | 3.28 | yes |" in md and " | 4 | 0.00 | NO |" in md
    assert md.count("Command: `pytest tiny sweep`") >= 5  # every figure with its command
    claims = check_claims(results)
    assert (out / ".protected-cache").is_dir()  # decoded settings kept for resuming
    for key in ("utility_ratio_min", "leakage_within_bound", "utility_gain_vs_dp_pix_points",
                "utility_gain_vs_pixel_gaussian_points", "audit_never_exceeds_claim"):
        assert key in claims


def test_bad_arguments_raise(tmp_path, dummy_pipe):
    with pytest.raises(ValueError, match="unknown methods"):
        run_paper_experiments(tmp_path, pipe=dummy_pipe, methods=["jpeg"], progress=False)
    with pytest.raises(ValueError, match="epsilons must be > 0"):
        run_paper_experiments(tmp_path, pipe=dummy_pipe, epsilons=[0.0], progress=False)
    with pytest.raises(ValueError, match="unknown attribute"):
        run_paper_experiments(tmp_path, pipe=dummy_pipe, protected_attributes=["eyeglasses"], progress=False)


def test_script_runs_end_to_end(tmp_path, dummy_pipe):
    model = tmp_path / "model"
    dummy_pipe.save_pretrained(model)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "run_paper_experiments.py"), "--model", str(model), "--out",
           str(out), "--epsilons", "1", "--methods", "dpdiffusion", "dp_pix", "--num-train", "20", "--num-test", "20",
           "--num-inference-steps", "1", "--classifier-epochs", "1", "--audit-epsilons", "1", "--audit-trials", "64",
           "--audit-decoded-trials", "0", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python scripts/run_paper_experiments.py --model")
    assert {r["method"] for r in results["rows"]} == {"dpdiffusion", "dp_pix"}
    assert (out / "results.md").exists() and (out / "audit.png").exists()
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_paper_experiments.py"), "--methods", "jpeg"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_celeba_schema_dataset_from_disk(tmp_path, dummy_pipe):
    """A `datasets` folder with CelebA-style -1/1 attribute columns and a person-id column."""
    import datasets
    import numpy as np

    from dpdiffusion.data.synthfaces import make_synthfaces

    ds = make_synthfaces(48, image_size=16, seed=5)
    table = ds.with_format("numpy", columns=["dark_skin", "smiling", "wearing_hat", "identity"])[:]
    celeba = datasets.Dataset.from_dict(
        {"image": ds["image"], "person_id": table["identity"].astype(np.int64),
         **{name: np.where(table[col], 1, -1).astype(np.int64)
            for name, col in (("dark_skin", "dark_skin"), ("Smiling", "smiling"), ("Wearing_Hat", "wearing_hat"))}},
        features=datasets.Features({"image": datasets.Image(), "person_id": datasets.Value("int64"),
                                    "dark_skin": datasets.Value("int64"), "Smiling": datasets.Value("int64"),
                                    "Wearing_Hat": datasets.Value("int64")}))
    path = tmp_path / "celeba-like"
    celeba.save_to_disk(str(path))
    results = run_paper_experiments(
        tmp_path / "out", pipe=dummy_pipe, dataset=str(path), attribute_columns=["dark_skin", "Smiling", "Wearing_Hat"],
        protected_attributes=["dark_skin"], identity_column="person_id", epsilons=[1.0], methods=["dpdiffusion",
        "dp_pix"], num_train=24, num_test=20, num_inference_steps=1, classifier_epochs=1, audit_epsilons=[1.0],
        audit_trials=100, audit_decoded_trials=0, audit_pairs=1, progress=False, command="celeba-like")
    assert results["config"]["unprotected"] == ["Smiling", "Wearing_Hat"]
    row = results["rows"][0]
    assert set(row["utility"]["per_attribute"]) == {"Smiling", "Wearing_Hat"}
    assert row["identity"] is not None
    assert set(results["audit"]) == {"dpdiffusion", "dp_pix"}


def test_interrupted_sweep_resumes_from_the_decoded_cache(tmp_path, dummy_pipe, monkeypatch):
    kw = dict(pipe=dummy_pipe, epsilons=[1.0], methods=["dpdiffusion"], num_train=20, num_test=20,
              num_inference_steps=1, classifier_epochs=1, audit_epsilons=[], progress=False, command="c")
    first = run_paper_experiments(tmp_path, **kw)
    from dpdiffusion.evaluation import baselines

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(baselines.DiffusionMethod, "protect", fail)
    second = run_paper_experiments(tmp_path, **kw)
    assert second["rows"][0]["quality"] == first["rows"][0]["quality"]


def test_cli_evaluate_experiments_in_process(tmp_path, dummy_pipe, capsys):
    """``dpdiffusion evaluate experiments`` runs the same sweep and records its own command beside the figures."""
    from dpdiffusion.cli import build_parser, cmd_evaluate, main

    model = tmp_path / "model"
    dummy_pipe.save_pretrained(model)
    out = tmp_path / "out"
    argv = ["evaluate", "experiments", "--model", str(model), "--out", str(out), "--epsilons", "1", "--methods",
            "dpdiffusion", "--num-train", "20", "--num-test", "20", "--num-inference-steps", "1",
            "--classifier-epochs", "1", "--audit-epsilons", "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("dpdiffusion evaluate experiments --model")
    assert [r["method"] for r in results["rows"]] == ["dpdiffusion"]
    assert "results:" in capsys.readouterr().out
    assert build_parser().parse_args(["evaluate", "autoencoder", "--num-images", "3"]).func is cmd_evaluate
    parsed = build_parser().parse_args(["evaluate", "autoencoder", "--agreement-steps", "5", "20"])
    assert parsed.agreement_steps == [5, 20]
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "experiments", "--epsilons", "0"])
    assert exc.value.code == 2


def test_no_utility_augment_uses_the_attacker_and_the_plain_clean_reference(tmp_path, dummy_pipe):
    from dpdiffusion.cli import main

    model = tmp_path / "model"
    dummy_pipe.save_pretrained(model)
    out = tmp_path / "out"
    assert main(["evaluate", "experiments", "--model", str(model), "--out", str(out), "--epsilons", "1",
                 "--methods", "dpdiffusion", "--num-train", "20", "--num-test", "20", "--num-inference-steps", "1",
                 "--classifier-epochs", "1", "--audit-epsilons", "--no-progress", "--no-utility-augment"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["utility_augment"] is False
    assert results["clean"]["utility_accuracy"] == results["clean"]["accuracy"]
    row = results["rows"][0]
    for a, v in row["utility"]["per_attribute"].items():
        assert v["clean_accuracy"] == results["clean"]["accuracy"][a]
    assert row["utility_without_augmentation"] == row["utility"]
    assert "utility_ratio_mean_without_augmentation" not in results["claims"]
    assert "(the attacker itself)" in (out / "results.md").read_text()


def test_default_audit_trials_can_refute_every_default_claim():
    """The sweep's and the demo's default audits state what they can certify: 24,000 trials per world certify 8.09,
    at least twice every default audited epsilon; 100 decoded trials certify 2.57, so decoded claims above 1.28 are
    tested at 1.28 instead (and the row says so)."""
    from dpdiffusion.evaluation.experiments import _DEFAULTS, AUDIT_EPSILONS
    from dpdiffusion.evaluation.experiments.audits import _decoded_claim

    for quick in (False, True):
        top = max_certifiable_epsilon(_DEFAULTS[quick]["audit_trials"], delta=1e-5)
        assert top >= REFUTATION_FACTOR * max(AUDIT_EPSILONS), (quick, top)
    decoded = _DEFAULTS[False]["audit_decoded_trials"]
    assert max_certifiable_epsilon(decoded, delta=1e-5) == pytest.approx(2.5696, abs=1e-4)
    assert largest_refutable_claim(decoded, delta=1e-5) == 1.28
    kw = dict(attributes=["dark_skin"], delta=1e-5, alpha=0.05)
    assert _decoded_claim({**kw, "epsilon": 1.0}, decoded) == ({**kw, "epsilon": 1.0}, {})
    changed, note = _decoded_claim({**kw, "epsilon": 4.0}, decoded)
    assert changed["epsilon"] == 1.28 and note["requested_epsilon"] == 4.0 and "at most epsilon = 2.57" in note["note"]


def test_unrefutable_audit_configurations_are_logged(caplog):
    import logging

    from dpdiffusion.evaluation.experiments import warn_unrefutable

    with caplog.at_level(logging.WARNING, logger="dpdiffusion.evaluation.experiments"):
        msgs = warn_unrefutable([0.5, 1.0, 4.0, math.inf], delta=1e-5, num_trials=20000, decoded_trials=100)
    assert len(msgs) == 2 and all(m in caplog.text for m in msgs)
    assert "audit_trials=20000 certifies at most epsilon = 7.9" in msgs[0] and "21997 trials" in msgs[0]
    assert "audit_decoded_trials=100" in msgs[1] and "audited at epsilon = 1.28" in msgs[1]
    assert warn_unrefutable([0.5, 1.0, 4.0], delta=1e-5, num_trials=24000, decoded_trials=0) == []
