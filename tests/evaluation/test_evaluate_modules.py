"""The ``evaluate`` modules: each loads by path (offline, in a fresh process), its ``compute`` equals the project's
plain function on the same inputs, and both equal an independent oracle where one exists (scikit-learn's
``roc_auc_score``, SciPy's exact binomial interval, the closed forms of the DP bound and of an audit's resolution);
``evaluate.evaluator("image-classification")`` with the project's accuracy module equals a hand count."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

evaluate = pytest.importorskip("evaluate")

from dpdiffusion.evaluation import METRIC_NAMES, load_metric, metric_path  # noqa: E402
from dpdiffusion.evaluation.audit import threshold_audit  # noqa: E402
from dpdiffusion.evaluation.leakage import leakage_accuracy  # noqa: E402
from dpdiffusion.evaluation.probes import roc_auc  # noqa: E402
from dpdiffusion.evaluation.unlearning_metrics import prediction_accuracy  # noqa: E402
from dpdiffusion.evaluation.unlearning_shift import gap_restored  # noqa: E402
from dpdiffusion.evaluation.utility import attribute_accuracies, utility_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    return evaluate.load(metric_path(name), keep_in_memory=True)


def test_metric_path_names_every_module_folder_and_refuses_others():
    for name in METRIC_NAMES:
        assert (Path(metric_path(name)) / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="name must be one of"):
        metric_path("accuracy")
    assert load_metric("mia_auc") is load_metric("mia_auc")  # loaded once per process


def test_every_module_loads_by_path_offline_in_a_fresh_process(tmp_path):
    """A fresh interpreter, an empty Hugging Face cache and the Hub, datasets and evaluate offline."""
    code = (
        "import json, evaluate\n"
        "from dpdiffusion.evaluation import METRIC_NAMES, metric_path\n"
        "out = {}\n"
        "for n in METRIC_NAMES:\n"
        "    m = evaluate.load(metric_path(n))\n"
        "    out[n] = [type(m).__name__, m.module_type, sorted(m.features) if not isinstance(m.features, list)\n"
        "              else sorted(m.features[0]), bool(m.description.strip())]\n"
        "out['leak'] = evaluate.load(metric_path('attribute_leakage')).compute(\n"
        "    predictions=[1, 0, 1, 1], references=[1, 0, 0, 1], epsilon=1.0)['bound']\n"
        "print(json.dumps(out))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    env.pop("HF_ENDPOINT", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in METRIC_NAMES:
        cls, module_type, features, described = out[name]
        assert module_type == "metric" and features == ["predictions", "references"] and described
    assert out["leak"] == pytest.approx(math.e / (1 + math.e), rel=1e-12)


def test_every_module_example_runs_as_written():
    """The Examples of each module's inputs description (what ``evaluate.load(...).inputs_description`` and a metric
    Space's card show) are doctests."""
    import doctest

    for name in METRIC_NAMES:
        module = load_metric(name)
        assert module.citation is not None and module.description.strip()
        test = doctest.DocTestParser().get_doctest(module.inputs_description, {}, name, None, 0)
        runner = doctest.DocTestRunner()
        runner.run(test, out=lambda text: None)
        assert test.examples and runner.failures == 0, f"the example of {name} fails"


# ------------------------------------------------------------------------------------------------------------ leakage
def _dp_bound_closed_form(eps, delta, prior):
    return min(1.0, max((math.exp(eps) + delta) / (1 + math.exp(eps)), prior + (1 - prior) * delta,
                        (1 - prior) + prior * delta))


@pytest.mark.parametrize("eps,delta", [(0.731, 1e-3), (2.71828, 0.0), (0.05, 0.01)])
def test_attribute_leakage_equals_plain_function_and_closed_forms(eps, delta):
    from scipy.stats import binomtest

    rng = np.random.default_rng(3)
    y = (rng.random(157) < 0.7).astype(int)  # a skewed prior: the prior terms of the bound matter at small eps
    p = np.where(rng.random(157) < 0.8, y, 1 - y)
    via_module = _load("attribute_leakage").compute(predictions=p, references=y, epsilon=eps, delta=delta)
    plain = leakage_accuracy(p, y, epsilon=eps, delta=delta)
    assert via_module == plain
    k, n, prior = int((p == y).sum()), len(y), float(y.mean())
    assert via_module["accuracy"] == k / n and via_module["n"] == n and via_module["prior"] == prior
    assert via_module["bound"] == pytest.approx(_dp_bound_closed_form(eps, delta, prior), rel=1e-12)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert (via_module["ci_low"], via_module["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert via_module["within_bound"] == (via_module["ci_low"] <= via_module["bound"])


def test_attribute_leakage_refuses_non_binary_values():
    with pytest.raises(ValueError, match="predictions must be 0/1"):
        _load("attribute_leakage").compute(predictions=[0, 2], references=[0, 1], epsilon=1.0)


# ------------------------------------------------------------------------------------------------------------ MIA AUC
def test_mia_auc_equals_roc_auc_and_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    members = np.r_[np.ones(60), np.zeros(90)].astype(int)
    scores = np.round(rng.normal(0.4 * members, 1.0), 1)  # rounded: ties between members and non-members
    via_module = _load("mia_auc").compute(predictions=scores, references=members)["mia_auc"]
    assert via_module == roc_auc(scores, members)
    assert via_module == pytest.approx(roc_auc_score(members, scores), rel=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        _load("mia_auc").compute(predictions=[0.1, 0.2], references=[1, 1])


# ------------------------------------------------------------------------------------------------------------ audit
def test_dp_audit_equals_threshold_audit_and_the_resolution_closed_form():
    rng = np.random.default_rng(1)
    n = 600
    s0, s1 = rng.normal(0.0, 1.0, n), rng.normal(1.3, 1.0, n)
    scores, worlds = np.r_[s0, s1], np.r_[np.zeros(n), np.ones(n)].astype(int)
    kw = dict(delta=1e-5, claimed_epsilon=1.0, alpha=0.05, seed=7)
    via_module = _load("dp_audit").compute(predictions=scores, references=worlds, **kw)
    assert via_module == threshold_audit(s0, s1, **kw).to_dict()
    # a perfect attack's bound, in closed form: n_eval trials per world, p = 1 - (alpha/2)^(1/n_eval)
    n_eval = n - n // 2
    q = (0.05 / 2) ** (1 / n_eval)
    assert via_module["max_certifiable_epsilon"] == pytest.approx(math.log((q - 1e-5) / (1 - q)), rel=1e-9)
    assert via_module["can_refute_claim"] == (via_module["max_certifiable_epsilon"] >= 2 * 1.0)
    assert 0 < via_module["epsilon_lower_bound"] <= via_module["max_certifiable_epsilon"]
    with pytest.raises(ValueError, match="references must be 0"):
        _load("dp_audit").compute(predictions=scores, references=worlds * 2, delta=1e-5)


# ------------------------------------------------------------------------------------------------------------ utility
def test_utility_ratio_equals_utility_report_and_a_hand_count():
    rng = np.random.default_rng(2)
    y = (rng.random((40, 3)) < 0.5).astype(int)
    pred = np.where(rng.random((40, 3)) < 0.8, y, 1 - y)
    clean = np.where(rng.random((40, 3)) < 0.9, y, 1 - y)
    names = ["smiling", "eyeglasses", "wearing_hat"]
    via_module = _load("utility_ratio").compute(predictions=pred, references=y, clean_predictions=clean, names=names,
                                                attributes=["eyeglasses", "wearing_hat"])
    plain = utility_report(attribute_accuracies(pred, y, names), attribute_accuracies(clean, y, names),
                           ["eyeglasses", "wearing_hat"])
    assert via_module == plain
    for j, a in ((1, "eyeglasses"), (2, "wearing_hat")):
        hand = sum(int(pred[i, j] == y[i, j]) for i in range(40)) / 40
        hand_clean = sum(int(clean[i, j] == y[i, j]) for i in range(40)) / 40
        assert via_module["per_attribute"][a] == {"accuracy": hand, "clean_accuracy": hand_clean,
                                                  "ratio": hand / hand_clean}
    with pytest.raises(ValueError, match="clean_predictions is required"):
        _load("utility_ratio").compute(predictions=pred, references=y)


# ------------------------------------------------------------------------------------------------------------ gap
def test_gap_restored_equals_plain_function_and_a_hand_count():
    y = np.ones(20, dtype=int)
    method = np.r_[np.ones(13), np.zeros(7)].astype(int)  # 13 / 20 right
    original = np.r_[np.ones(5), np.zeros(15)].astype(int)  # 5 / 20
    retrained = [np.r_[np.ones(17), np.zeros(3)].astype(int), np.r_[np.ones(15), np.zeros(5)].astype(int)]
    via_module = _load("gap_restored").compute(predictions=method, references=y, original_predictions=original,
                                               retrained_predictions=retrained)
    reference = np.mean([prediction_accuracy(r, y) for r in retrained])
    assert via_module["gap_restored"] == gap_restored(prediction_accuracy(method, y),
                                                      original=prediction_accuracy(original, y), retrained=reference)
    assert via_module["gap_restored"] == pytest.approx((13 / 20 - 5 / 20) / ((17 + 15) / 40 - 5 / 20), rel=1e-12)
    assert via_module["retrained_accuracies"] == [17 / 20, 15 / 20]
    one = _load("gap_restored").compute(predictions=method, references=y, original_predictions=original,
                                        retrained_predictions=retrained[0])  # one retrained model
    assert one["gap_restored"] == pytest.approx((13 - 5) / (17 - 5), rel=1e-12)
    no_gap = _load("gap_restored").compute(predictions=method, references=y, original_predictions=original,
                                           retrained_predictions=original)
    assert math.isnan(no_gap["gap_restored"])
    with pytest.raises(ValueError, match="both required"):
        _load("gap_restored").compute(predictions=method, references=y, original_predictions=original)


# ------------------------------------------------------------------------------------------------------------ accuracy
def test_classification_accuracy_single_and_multi_label():
    acc = _load("classification_accuracy")
    assert acc.compute(predictions=[2, 0, 1, 1, 2], references=[2, 0, 0, 1, 1]) == {"accuracy": 3 / 5}
    rows_p, rows_y = [[1, 0, 1], [0, 0, 1]], [[1, 1, 1], [0, 0, 0]]
    assert acc.compute(predictions=rows_p, references=rows_y) == {"accuracy": 4 / 6}
    assert prediction_accuracy(rows_p, rows_y) == 4 / 6
    with pytest.raises(ValueError, match="same shape"):
        prediction_accuracy([1, 0], [1, 0, 1])


def test_combine_reports_accuracy_and_leakage_of_one_attacker():
    combined = evaluate.combine([_load("classification_accuracy"), _load("attribute_leakage")])
    out = combined.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    # both modules report "accuracy": evaluate prefixes the duplicate key with each module's name
    assert out["classification_accuracy_accuracy"] == out["attribute_leakage_accuracy"] == 0.75
    assert out["ci_low"] == leakage_accuracy([1, 0, 1, 1], [1, 0, 0, 1])["ci_low"]


# ------------------------------------------------------------------------------------------------------------ evaluator
def test_image_classification_evaluator_with_the_project_accuracy_equals_a_hand_count():
    """A tiny ViT built from its own config (nothing downloaded), a datasets split of 12 images, and the evaluator
    given the module loaded by path: its accuracy is the hand count of argmax(logits) == label."""
    import datasets
    import PIL.Image
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    try:
        from transformers import ViTImageProcessorPil as ViTImageProcessor  # transformers 5 without torchvision
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor

    torch.manual_seed(0)
    labels = {0: "neutral", 1: "smiling", 2: "laughing"}
    model = ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})).eval()
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(12)]
    truth = [int(v) for v in rng.integers(0, 3, 12)]
    data = datasets.Dataset.from_dict({"image": images, "label": truth}).cast_column("image", datasets.Image())

    task = evaluate.evaluator("image-classification")
    # the model itself, not a transformers Pipeline: evaluate 0.4.6 tests a Pipeline against
    # transformers.TFPreTrainedModel, which transformers 5 no longer has; the evaluator builds the pipeline itself
    result = task.compute(model_or_pipeline=model, feature_extractor=processor, data=data, device=-1,
                          metric=evaluate.load(metric_path("classification_accuracy")),
                          label_mapping=model.config.label2id)
    with torch.no_grad():
        logits = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits
    hand = sum(int(a == b) for a, b in zip(logits.argmax(-1).tolist(), truth)) / len(truth)
    assert result["accuracy"] == hand
    assert 0 < hand < 1  # the count is not trivial for this untrained model and seed


# ------------------------------------------------------------------------------------------------- the project's uses
def test_sweep_and_unlearning_figures_go_through_the_modules_and_equal_the_plain_functions(monkeypatch):
    """The paper sweep's leakage and utility, and the reversed split's gap, as the project computes them (torch
    tensors, float labels) through the modules, equal the plain functions; each call goes through `load_metric`."""
    import torch

    import dpdiffusion.evaluation.experiments.settings as settings
    import dpdiffusion.evaluation.unlearning_shift as shift

    used = []

    def recording(name):
        used.append(name)
        return load_metric(name)

    monkeypatch.setattr(settings, "load_metric", recording)
    monkeypatch.setattr(shift, "load_metric", recording)
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(50, 3, generator=g) < 0.5).float()
    pred = torch.where(torch.rand(50, 3, generator=g) < 0.8, labels, 1 - labels).long()
    clean = torch.where(torch.rand(50, 3, generator=g) < 0.9, labels, 1 - labels).long()
    assert settings._leakage(pred[:, 0], labels[:, 0], epsilon=1.0, delta=1e-5) == \
        leakage_accuracy(pred[:, 0], labels[:, 0], epsilon=1.0, delta=1e-5)
    names = ["a", "b", "c"]
    assert settings._utility(pred, clean, labels, names, ["b", "c"]) == utility_report(
        attribute_accuracies(pred, labels, names), attribute_accuracies(clean, labels, names), ["b", "c"])
    original = torch.zeros_like(pred)
    retrained = [clean, labels.long()]
    via = shift._reversed_gap(pred, original, retrained, labels, 1)
    accs = [shift._column_accuracy(p, labels, 1) for p in (pred, original, *retrained)]
    assert via["gap_restored"] == gap_restored(accs[0], original=accs[1], retrained=float(np.mean(accs[2:])))
    assert via["accuracy"] == accs[0] == float((pred[:, 1] == labels[:, 1]).double().mean())
    assert used == ["attribute_leakage", "utility_ratio", "gap_restored"]


def test_unlearned_model_card_model_index_names_the_module_of_each_figure(tmp_path):
    """The unlearn job's card: each figure computed through a module carries that module's name as its
    `model-index` metric type, and the name loads by path."""
    from huggingface_hub import ModelCard

    from dpdiffusion.hub import write_unlearned_model
    from dpdiffusion.training.classifier import build_classifier
    from dpdiffusion.unlearning import UnlearningResult

    model = build_classifier(2, image_size=16, hidden_sizes=(4, 8), embedding_size=4, seed=0,
                             label_names=["smiling", "wearing_hat"])
    result = UnlearningResult(model=model, method="first_order", seconds=0.5, n_changed=3, tau=1e-4, n_train=10,
                              updated_parameters=1, extra={})
    figures = {"accuracy_revised_after": 0.75, "accuracy_shifted_after": 0.6, "gap_restored_shifted": 0.5,
               "mia_auc": 0.55}
    folder = write_unlearned_model(
        model, tmp_path / "out", result=result, metrics=figures, cost={"seconds": 0.5, "retrain_seconds": None},
        privacy=dict(epsilon=1.0, delta=1e-5, guarantee="formal", neighbouring_relation="attribute-neighbours",
                     attributes=["dark_skin"]))
    card = ModelCard.load(folder / "README.md")
    types = {r.metric_name: r.metric_type for r in card.data.eval_results}
    assert types == {"accuracy_revised_after": "classification_accuracy",
                     "accuracy_shifted_after": "classification_accuracy", "gap_restored_shifted": "gap_restored",
                     "mia_auc": "mia_auc"}
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == figures
    for module in set(types.values()):
        assert Path(metric_path(module)).is_dir()
