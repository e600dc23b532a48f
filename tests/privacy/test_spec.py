"""Tests for dpdiffusion.privacy.spec.PrivacySpec."""

import dataclasses
import doctest
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpdiffusion.privacy import spec as spec_module
from dpdiffusion.privacy.accounting import gaussian_sigma
from dpdiffusion.privacy.spec import PrivacySpec

INF = float("inf")


def test_doctests():
    result = doctest.testmod(spec_module)
    assert result.attempted > 0 and result.failed == 0


def test_defaults_and_normalisation():
    spec = PrivacySpec(epsilon=1, delta=1e-5, attributes=["dark_skin"])
    assert spec.attributes == ("dark_skin",)
    assert spec.weights is None and spec.scope == "attributes" and spec.stochastic_code == "random"
    assert isinstance(spec.epsilon, float) and spec.epsilon == 1.0
    assert spec.normalized_weights() == (1.0,)
    assert spec.residual_share is None
    assert spec.guarantee == "formal"


def test_frozen_and_hashable():
    spec = PrivacySpec(epsilon=1.0, delta=1e-5, attributes=("a", "b"), weights=[1.0, 2.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epsilon = 2.0
    assert spec.weights == (1.0, 2.0)
    assert hash(spec) == hash(PrivacySpec(epsilon=1.0, delta=1e-5, attributes=["a", "b"], weights=(1, 2)))


def test_guarantee_follows_stochastic_code():
    assert PrivacySpec(epsilon=1.0, delta=1e-5, attributes=["a"], stochastic_code="inverted").guarantee == "heuristic"


def test_weights_and_residual_share():
    spec = PrivacySpec(epsilon=1.0, delta=1e-5, attributes=["a", "b", "c"], weights=[1.0, 3.0, 4.0])
    assert spec.normalized_weights() == pytest.approx((0.125, 0.375, 0.5), rel=1e-15)
    latent = PrivacySpec(
        epsilon=1.0, delta=1e-5, attributes=["a", "b"], weights=[1.0, 1.0], scope="latent", residual_weight=2.0
    )
    assert latent.normalized_weights() == pytest.approx((0.25, 0.25), rel=1e-15)
    assert latent.residual_share == pytest.approx(0.5, rel=1e-15)


def test_noise_multiplier_comes_from_accounting():
    spec = PrivacySpec(epsilon=0.7, delta=1e-6, attributes=["a"])
    assert spec.noise_multiplier == gaussian_sigma(epsilon=0.7, delta=1e-6)
    assert PrivacySpec(epsilon=INF, delta=1e-6, attributes=["a"]).noise_multiplier == 0.0


@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=1, max_size=6))
def test_normalized_weights_sum_to_one(weights):
    names = [f"attr{i}" for i in range(len(weights))]
    spec = PrivacySpec(epsilon=1.0, delta=1e-5, attributes=names, weights=weights)
    assert math.fsum(spec.normalized_weights()) == pytest.approx(1.0, rel=1e-12)
    assert all(w > 0 for w in spec.normalized_weights())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epsilon=0.0), "epsilon must be > 0"),
        (dict(epsilon=-1.0), "epsilon must be > 0"),
        (dict(epsilon=float("nan")), "epsilon must not be NaN"),
        (dict(epsilon=True), "epsilon must be a real number"),
        (dict(delta=0.0), r"delta must be in \(0, 1\), got delta=0.0"),
        (dict(delta=1.0), r"delta must be in \(0, 1\)"),
        (dict(delta=float("nan")), "delta must not be NaN"),
        (dict(attributes=[]), "non-empty"),
        (dict(attributes="dark_skin"), "not one string"),
        (dict(attributes=["a", "a"]), "unique"),
        (dict(attributes=["a", 3]), "non-empty str"),
        (dict(attributes=["a", ""]), "non-empty str"),
        (dict(weights=[1.0, 2.0]), "one entry per attribute"),
        (dict(weights=[0.0]), "finite and > 0"),
        (dict(weights=[INF]), "finite and > 0"),
        (dict(weights=[float("nan")]), "weights must not be NaN"),
        (dict(scope="image"), "scope must be one of"),
        (dict(stochastic_code="ddim"), "stochastic_code must be one of"),
        (dict(residual_weight=0.0), "residual_weight must be finite and > 0"),
    ],
)
def test_rejects(kwargs, match):
    base = dict(epsilon=1.0, delta=1e-5, attributes=["a"])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PrivacySpec(**base)


def test_epsilon_inf_allowed():
    assert PrivacySpec(epsilon=INF, delta=1e-5, attributes=["a"]).epsilon == INF
