"""Linear probes: both logistic-regression conventions reach the optimum of their stated objective; ROC AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpdiffusion.evaluation.probes import fit_logistic, fit_logistic_regression, predict_logistic_regression, roc_auc


def _data(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 4.0, size=d) + rng.normal(size=d)
    y = (x[:, 0] - x[:, 1] + rng.logistic(size=n) > 0).astype(np.float64)
    return x, y


def _gradient(xs, y, w, b, penalty):
    """Gradient of mean log-loss + penalty ||w||^2 at (w, b) on standardised features xs."""
    p = 1.0 / (1.0 + np.exp(-(xs @ w + b)))
    return np.concatenate([xs.T @ (p - y) / len(y) + 2 * penalty * w, [np.mean(p - y)]])


def test_fit_logistic_regression_reaches_the_optimum_of_mean_log_loss_plus_half_l2():
    x, y = _data()
    model = fit_logistic_regression(x, y, l2=0.05)
    xs = (x - x.mean(0)) / x.std(0)
    grad = _gradient(xs, y, model["weights"], model["bias"], penalty=0.05 / 2)
    assert np.abs(grad).max() < 1e-7
    np.testing.assert_allclose(predict_logistic_regression(model, x), xs @ model["weights"] + model["bias"])


def test_fit_logistic_reaches_the_optimum_of_its_objective_on_sample_standardised_features():
    x, y = _data(seed=1)
    predict = fit_logistic(torch.tensor(x), torch.tensor(y), l2=0.01)
    xs = (x - x.mean(0)) / x.std(0, ddof=1)
    logits = predict(torch.tensor(x)).numpy()
    a = np.concatenate([xs, np.ones((len(x), 1))], axis=1)
    coef = np.linalg.lstsq(a, logits, rcond=None)[0]  # the fitted function is affine in xs
    np.testing.assert_allclose(a @ coef, logits, atol=1e-9)
    assert np.abs(_gradient(xs, y, coef[:-1], coef[-1], penalty=0.01)).max() < 1e-7


def test_roc_auc_is_exact_on_ties_and_matches_the_pairwise_definition():
    s = np.array([0.3, 0.3, 0.1, 0.9, 0.3, 0.5, 0.1])
    y = np.array([1, 0, 0, 1, 1, 0, 1])
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in s[y == 1] for q in s[y == 0]]
    assert roc_auc(s, y) == pytest.approx(np.mean(pairs), abs=1e-15)
    same = np.random.default_rng(0).normal(size=50)
    assert roc_auc(np.concatenate([same, same]), [1] * 50 + [0] * 50) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])


def test_a_single_class_gives_a_constant_predictor_of_that_class():
    x, _ = _data(n=40)
    for label in (0.0, 1.0):
        model = fit_logistic_regression(x, np.full(40, label))
        scores = predict_logistic_regression(model, x)
        assert np.all(scores == scores[0]) and np.isfinite(scores[0]) and (scores[0] > 0) == bool(label)
        predict = fit_logistic(torch.tensor(x), torch.full((40,), label))
        assert torch.all((predict(torch.tensor(x)) > 0) == bool(label))
