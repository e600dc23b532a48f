"""postprocessing_effect: rows per (epsilon, post-processing) whose figures mean what they say; bad input refused;
the script writes its JSON and plot."""

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def judge():
    from dpdiffusion.evaluation.default_model import train_attribute_classifier

    return train_attribute_classifier(16, num_images=64, epochs=1, progress=False)[0]


@pytest.mark.usefixtures("one_torch_thread")
def test_rows_clip_puts_coordinates_on_bounds_and_posterior_mean_does_not(dummy_pipe, judge):
    from dpdiffusion.evaluation.postprocessing import postprocessing_effect

    rows = postprocessing_effect(dummy_pipe, judge, epsilons=[0.1, 50.0], attributes=["dark_skin"], num_images=16,
                                 num_inference_steps=2)
    assert [(r["epsilon"], r["post_processing"]) for r in rows] == [
        (0.1, "clip"), (0.1, "posterior_mean"), (50.0, "clip"), (50.0, "posterior_mean")]
    by = {(r["epsilon"], r["post_processing"]): r for r in rows}
    # at epsilon 0.1 sigma is many times C: clip lands (almost) every coordinate on a bound, the posterior mean none
    assert by[(0.1, "clip")]["share_at_a_bound"] >= 0.75
    assert by[(0.1, "posterior_mean")]["share_at_a_bound"] == 0.0
    assert by[(0.1, "posterior_mean")]["mse_over_c2"] < by[(0.1, "clip")]["mse_over_c2"]
    assert by[(50.0, "clip")]["mse_over_c2"] < by[(0.1, "clip")]["mse_over_c2"]
    for r in rows:
        assert set(r["utility_agreement"]) == {"long_hair", "smiling", "eyeglasses", "wearing_hat"}
        assert 0 <= r["utility_agreement_min"] <= r["utility_agreement_mean"] <= 1
        lk = r["leakage"]["dark_skin"]
        assert lk["best"] == max(lk["judge"], lk["probe"]) == r["leakage_best"]
        assert r["leakage_within_bound"] == (lk["best"] <= lk["bound"])


def test_bad_arguments_are_refused(dummy_pipe, judge):
    from dpdiffusion.evaluation.postprocessing import postprocessing_effect

    for kw, match in [({"num_images": 4}, "num_images must be an integer >= 8"),
                      ({"epsilons": [0.0]}, "epsilons must be finite numbers > 0"),
                      ({"epsilons": [float("inf")]}, "epsilons must be finite"),
                      ({"attributes": ["beard"]}, "attributes must be SynthFaces attributes"),
                      ({"post_processings": ["none"]}, "post_processings must be among")]:
        with pytest.raises(ValueError, match=match):
            postprocessing_effect(dummy_pipe, judge, **kw)


def test_script_writes_json_and_plot(tmp_path, dummy_pipe, judge):
    dummy_pipe.save_pretrained(tmp_path / "model")
    judge.save_pretrained(tmp_path / "judge")  # the folder format of load_or_train_judge: no judge training here
    (tmp_path / "judge" / "judge_accuracy.json").write_text(json.dumps({"image_size": 16, "accuracy": {"x": 1.0}}))
    out, plot = tmp_path / "effect.json", tmp_path / "effect.png"
    res = subprocess.run([sys.executable, "scripts/postprocessing_effect.py", "--model", str(tmp_path / "model"),
                          "--num-images", "16", "--epsilons", "1", "--attributes", "dark_skin",
                          "--num-inference-steps", "2", "--judge", str(tmp_path / "judge"), "--out", str(out), "--plot", str(plot)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert [r["post_processing"] for r in data["rows"]] == ["clip", "posterior_mean"]
    assert data["judge_accuracy"] == {"x": 1.0}
    assert data["command"].startswith("python scripts/postprocessing_effect.py --model")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 | posterior_mean |" in res.stdout


def test_sweep_plot_script_reads_two_sweeps(tmp_path):
    def sweep(shift):
        rows = [{"method": "dpdiffusion", "epsilon": e, "leakage_accuracy": 0.5 + 0.05 * e,
                 "utility": {"min_ratio": 0.8 + shift, "mean_ratio": 0.85 + shift}} for e in (0.5, 1.0, 4.0)]
        rows.append({"method": "dpdiffusion", "epsilon": "inf", "leakage_accuracy": 1.0,  # as results.json writes it
                     "utility": {"min_ratio": 0.9, "mean_ratio": 0.9}})
        return {"rows": rows}

    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "plot.png"
    a.write_text(json.dumps(sweep(0.0)))
    b.write_text(json.dumps(sweep(-0.05)))
    res = subprocess.run([sys.executable, "scripts/plot_postprocessing_sweep.py", "--clip", str(a),
                          "--posterior-mean", str(b), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    b.write_text(json.dumps({"rows": []}))
    res = subprocess.run([sys.executable, "scripts/plot_postprocessing_sweep.py", "--clip", str(a),
                          "--posterior-mean", str(b), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "has no finite-epsilon rows" in res.stderr
