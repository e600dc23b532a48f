"""Attribute leakage: the DP accuracy bound, intervals, probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpdiffusion.evaluation.audit import clopper_pearson
from dpdiffusion.evaluation.leakage import (dp_accuracy_bound, implied_epsilon, latent_probe_leakage,
                                            leakage_accuracy, mlp_probe_accuracy, residual_leakage)


def test_dp_accuracy_bound_closed_forms():
    assert dp_accuracy_bound(1.0) == pytest.approx(math.e / (1 + math.e))  # 73.1 %
    assert dp_accuracy_bound(0.5, delta=1e-3) == pytest.approx((math.exp(0.5) + 1e-3) / (1 + math.exp(0.5)))
    assert dp_accuracy_bound(math.inf) == 1.0
    assert dp_accuracy_bound(0.0) == 0.5
    assert dp_accuracy_bound(0.1, prior=0.9) == pytest.approx(0.9)  # the majority guess beats the symmetric bound


def test_implied_epsilon_inverts_the_bound():
    for eps in (0.3, 1.0, 2.71828):
        assert implied_epsilon(dp_accuracy_bound(eps, delta=1e-5), delta=1e-5) == pytest.approx(eps, rel=1e-9)
    assert implied_epsilon(0.4) == 0.0 and implied_epsilon(1.0) == math.inf


def test_leakage_accuracy_interval_and_bound():
    y = np.array([1, 0] * 50)
    p = y.copy()
    p[:20] = 1 - p[:20]  # 80 correct out of 100
    out = leakage_accuracy(p, y, epsilon=1.0)
    lo, hi = clopper_pearson(80, 100)
    assert out["accuracy"] == 0.8 and out["ci_low"] == lo and out["ci_high"] == hi
    assert out["bound"] == pytest.approx(math.e / (1 + math.e))
    assert out["within_bound"] is True and out["exceeds_bound"] is False  # 0.8 but the interval reaches 0.731
    out = leakage_accuracy(np.ones(1000), np.ones(1000), epsilon=1.0)
    assert out["bound"] == 1.0  # prior 1: the majority guess is always right
    with pytest.raises(ValueError, match="aligned"):
        leakage_accuracy([1, 0], [1])


def test_latent_probe_finds_a_linear_attribute():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 6, generator=g)
    y = (z[:, 2] > 0).float()[:, None]
    out = latent_probe_leakage(z[:300], y[:300], z[300:], y[300:], names=["a"], epsilon=1.0)
    assert out["a"]["accuracy"] > 0.95 and out["a"]["exceeds_bound"]


def test_mlp_probe_reads_a_non_linear_attribute():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 2, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).float()  # XOR-like: invisible to a linear probe
    from dpdiffusion.evaluation.probes import probe_accuracy

    assert probe_accuracy(x[:400], y[:400], x[400:], y[400:]) < 0.65
    assert mlp_probe_accuracy(x[:400], y[:400], x[400:], y[400:], hidden=32, epochs=150) > 0.85


def test_residual_leakage_on_the_dummy_pipeline(dummy_pipe):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 16, 16, generator=g)
    labels = (torch.rand(32, 2, generator=g) > 0.5).float()
    out = residual_leakage(dummy_pipe, images[:20], labels[:20], images[20:], labels[20:],
                           attributes=["dark_skin"], names=["dark_skin", "smiling"])
    assert set(out) == {"dark_skin"}
    assert set(out["dark_skin"]) == {"residual_linear_probe", "residual_mlp_probe", "coordinates_linear_probe",
                                     "latent_linear_probe"}
    assert all(0.0 <= v <= 1.0 for v in out["dark_skin"].values())
