"""Unlearning metrics: pure functions against known values, model wrappers on tiny ResNets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from types import SimpleNamespace

from dpdiffusion.evaluation.unlearning_metrics import (
    accuracy,
    best_threshold,
    compare_unlearning,
    fit_logistic_regression,
    format_table,
    linear_probe,
    membership_inference,
    parameter_distance,
    penultimate_features,
    predict_logistic_regression,
    prediction_agreement,
    probability_distance,
    roc_auc,
)
from dpdiffusion.training.classifier import build_classifier

TINY = dict(image_size=16, hidden_sizes=(4, 8), embedding_size=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread, and two threads stall badly on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


# ----------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------
def test_roc_auc_known_values():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # the scikit-learn documentation example
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([7, 7, 7, 7], [0, 1, 0, 1]) == 0.5
    assert roc_auc([1, 2, 2, 3], [0, 1, 0, 1]) == 0.875  # (1 + 0.5 + 1 + 1) / 4: the tie counts one half


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=57).astype(float)  # many ties
    labels = rng.random(57) < 0.4
    assert roc_auc(scores, labels) == pytest.approx(_brute_force_auc(scores, labels), abs=1e-12)
    assert roc_auc(-scores, labels) == pytest.approx(1 - _brute_force_auc(scores, labels), abs=1e-12)


@pytest.mark.parametrize(
    "scores, labels, match",
    [([1, 2], [1, 1], "both classes"), ([1, 2, 3], [0, 1], "same length"), ([1, 2], [0, 2], "0/1"),
     ([1, float("nan")], [0, 1], "finite")],
)
def test_roc_auc_bad_inputs(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(scores, labels)


def test_best_threshold_separable():
    t, acc = best_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert acc == 1.0 and 0.2 < t <= 0.8


def test_logistic_regression_recovers_a_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] - 2 * x[:, 2] + 0.1 * rng.normal(size=400)) > 0
    model = fit_logistic_regression(x[:200], y[:200], l2=1e-3)
    acc = ((predict_logistic_regression(model, x[200:]) > 0) == y[200:]).mean()
    assert acc > 0.95
    w = model["weights"] / model["scale"]
    assert w[2] < 0 < w[0] and abs(w[1]) < 0.25 * abs(w[2])
    with pytest.raises(ValueError, match="l2"):
        fit_logistic_regression(x, y, l2=-1)


# ----------------------------------------------------------------------------------------------------------------
# Model wrappers
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    a = build_classifier(2, seed=0, **TINY)
    b = build_classifier(2, seed=1, **TINY)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8, generator=g)
    labels = (torch.rand(40, 2, generator=g) > 0.5).float()
    return SimpleNamespace(a=a, b=b, images=images, labels=labels)


def test_parameter_distance_and_agreement(models):
    assert parameter_distance(models.a, models.a) == 0.0
    shifted = build_classifier(2, seed=0, **TINY)
    with torch.no_grad():
        shifted.classifier[1].bias += torch.tensor([3.0, 4.0])
    assert parameter_distance(models.a, shifted) == pytest.approx(5.0, rel=1e-6)
    assert prediction_agreement(models.a, models.a, models.images) == 1.0
    assert 0.0 <= prediction_agreement(models.a, models.b, models.images) <= 1.0
    assert probability_distance(models.a, models.a, models.images) == 0.0
    with torch.no_grad():
        saturated = build_classifier(2, seed=0, **TINY)
        saturated.classifier[1].weight.zero_()
        saturated.classifier[1].bias.fill_(50.0)  # probability 1 for every label
    probs = torch.sigmoid(models.a(pixel_values=models.images.permute(0, 3, 1, 2).float() / 127.5 - 1).logits)
    assert probability_distance(models.a, saturated, models.images) == pytest.approx(float((1 - probs).mean()), abs=1e-5)
    other = build_classifier(3, seed=0, **TINY)
    with pytest.raises(ValueError, match="shapes"):
        parameter_distance(models.a, other)


def test_accuracy_multi_label_is_per_label_mean(models):
    with torch.no_grad():
        always_pos = build_classifier(2, seed=0, **TINY)
        always_pos.classifier[1].weight.zero_()
        always_pos.classifier[1].bias.fill_(1.0)
    assert accuracy(always_pos, models.images, models.labels) == pytest.approx(float(models.labels.mean()))


def test_membership_inference_no_signal_on_identical_sets(models):
    data = (models.images, models.labels)
    out = membership_inference(models.a, data, data)
    assert out["auc"] == 0.5
    assert set(out) >= {"auc", "attack_auc", "attack_accuracy", "advantage", "member_loss", "non_member_loss"}


def test_membership_inference_detects_memorised_members():
    from dpdiffusion.training.classifier import train_classifier

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8, generator=g)
    labels = (torch.rand(64, 2, generator=g) > 0.5).float()  # random labels: only memorisation fits them
    model = train_classifier(build_classifier(2, seed=0, **TINY), images[:32], labels[:32], epochs=20,
                             batch_size=32, lr=3e-2, seed=0, progress=False)
    out = membership_inference(model, (images[:32], labels[:32]), (images[32:], labels[32:]))
    assert out["auc"] > 0.75 and out["member_loss"] < out["non_member_loss"]


def test_linear_probe_reads_a_colour_attribute(models):
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 128, (80, 16, 16, 3), dtype=torch.uint8, generator=g)
    attr = torch.arange(80) % 2 == 0
    images[attr, ..., 0] += 120  # a "skin tone": red channel brighter
    feats = penultimate_features(models.a, images)
    assert feats.shape == (80, 8)
    out = linear_probe(models.a, images, attr.numpy())
    assert out["accuracy"] > 0.9 and out["chance"] == 0.5
    with pytest.raises(ValueError, match="one value per image"):
        linear_probe(models.a, images, attr[:10])


def test_compare_unlearning_table(models):
    result = SimpleNamespace(model=models.b, seconds=2.0, method="first_order")
    retrained = SimpleNamespace(model=models.a, seconds=100.0)
    data = (models.images, models.labels)
    attr = (torch.arange(40) % 2).numpy()
    table = compare_unlearning({"first_order": result}, retrained, original=models.b, test=data,
                               members=(models.images[:20], models.labels[:20]),
                               non_members=(models.images[20:], models.labels[20:]), probe=(models.images, attr))
    rows = table["rows"]
    assert list(rows) == ["original", "first_order", "retrain"]
    assert rows["first_order"]["speedup_vs_retrain"] == 50.0
    assert rows["retrain"]["agreement_with_retrained"] == 1.0 and rows["retrain"]["l2_to_retrained"] == 0.0
    assert rows["retrain"]["prob_distance_to_retrained"] == 0.0 and rows["original"]["prob_distance_to_retrained"] > 0
    assert rows["original"]["seconds"] is None
    assert set(table["columns"]) <= set(rows["first_order"])
    text = format_table(table)
    assert text.splitlines()[0].startswith("| method | seconds") and "| first_order | 2 | 50 |" in text
