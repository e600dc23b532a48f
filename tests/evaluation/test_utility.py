"""Utility: accuracies, the report against clean training, a tiny classifier, and the local `evaluate` module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpdiffusion.evaluation.utility import (attribute_accuracies, attribute_utility, predict_labels,
                                            train_attribute_classifier, utility_report)


def test_attribute_accuracies_and_report():
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    p = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    acc = attribute_accuracies(p, y, ["a", "b"])
    assert acc == {"a": 0.75, "b": 0.75}
    rep = utility_report(acc, {"a": 1.0, "b": 0.8}, ["a", "b"])
    assert rep["per_attribute"]["b"]["ratio"] == pytest.approx(0.75 / 0.8)
    assert rep["min_ratio"] == pytest.approx(0.75)
    assert rep["mean_accuracy"] == pytest.approx(0.75) and rep["mean_clean_accuracy"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="must both be"):
        attribute_accuracies(p, y, ["a"])


def _toy(n, seed):
    """Label 0: a bright left half; label 1: a bright top half."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 2, generator=g) > 0.5).float()
    x = 0.2 * torch.rand(n, 3, 16, 16, generator=g)
    x[:, :, :, :8] += 0.7 * y[:, 0, None, None, None]
    x[:, :, :8, :] += 0.1 + 0.6 * y[:, 1, None, None, None]
    return x.clamp(0, 1), y


def test_classifier_learns_and_utility_compares_with_clean():
    x, y = _toy(96, 0)
    xt, yt = _toy(64, 1)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    rep = attribute_utility(noisy, y, xt, yt, names=["left", "top"], attributes=["left", "top"], train_clean=x,
                            epochs=3)
    assert rep["per_attribute"]["left"]["clean_accuracy"] > 0.8
    assert 0 < rep["min_ratio"] <= 1.5
    model = train_attribute_classifier(x[:8], y[:8], names=["left", "top"], epochs=1)
    assert predict_labels(model, xt).shape == (64, 2)


def test_train_attribute_classifier_checks_shapes():
    with pytest.raises(ValueError, match="columns"):
        train_attribute_classifier(torch.rand(4, 3, 16, 16), torch.zeros(4, 2), names=["a"], epochs=1)


def test_attribute_utility_evaluate_module():
    import evaluate

    from dpdiffusion.evaluation.metrics import metric_path

    module = evaluate.load(metric_path("attribute_utility"))
    out = module.compute(predictions=[1, 0, 1, 0], references=[1, 0, 0, 0], clean_predictions=[1, 0, 0, 1])
    assert out == {"accuracy": 0.75, "clean_accuracy": 0.75, "ratio": 1.0}
