"""Tests for dpdiffusion.privacy.accounting: closed forms, dp_accounting as oracle, golden values, properties."""

import doctest
import math
import warnings

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from dpdiffusion.privacy import accounting
from dpdiffusion.privacy.accounting import (
    RdpOrderWarning,
    classical_gaussian_sigma,
    compose_noise_multipliers,
    gaussian_epsilon,
    gaussian_rdp,
    gaussian_sigma,
    gaussian_zcdp_rho,
    rdp_to_epsilon,
    zcdp_to_epsilon,
)

INF = float("inf")
EPSILONS = [0.01, 0.1, 0.5, 1.0, 2.0, 8.0, 50.0]
DELTAS = [1e-10, 1e-5, 1e-2]
ORDERS = [1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.14159, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0,
          64.0, 128.0, 256.0, 512.0, 1024.0]

# Golden values: the exact optimum of Balle & Wang 2018 (arXiv:1805.06530) Theorem 8,
# delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s) at unit sensitivity, solved by bisection in
# mpmath with 50 significant digits (200 halvings), rounded to 20 digits:
#   mp.dps = 50; delta = lambda e, s: mp.ncdf(1/(2*s) - e*s) - mp.exp(e) * mp.ncdf(-1/(2*s) - e*s)
GOLDEN_SIGMA = [  # (epsilon, delta, optimal sigma)
    (1.0, 1e-5, 3.7306316348159418322),
    (0.1, 1e-6, 36.304690426195783057),
    (4.0, 1e-8, 1.3955826839113021034),
    (0.5, 1e-3, 4.61012795072814019),
    (10.0, 1e-10, 0.68304396722748118256),
]
GOLDEN_EPSILON = [  # (sigma, delta, exact epsilon)
    (1.0, 1e-5, 4.3771780956812246277),
    (2.71828, 1e-6, 1.6117702665000503728),
    (0.5, 1e-8, 12.749246399635696849),
]


def test_doctests():
    result = doctest.testmod(accounting, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------------------------------
# Closed forms at odd values
# ---------------------------------------------------------------------------------------------------------------


def test_gaussian_rdp_closed_form_at_odd_values():
    alpha, m = 3.14159, 2.71828
    assert gaussian_rdp(orders=alpha, noise_multiplier=m) == pytest.approx(alpha / (2 * m**2), rel=1e-15)
    out = gaussian_rdp(orders=[alpha, 7.389], noise_multiplier=m)
    np.testing.assert_allclose(out, [alpha / (2 * m**2), 7.389 / (2 * m**2)], rtol=1e-15)
    assert gaussian_zcdp_rho(m) == pytest.approx(1 / (2 * m**2), rel=1e-15)


def test_gaussian_rdp_edges():
    assert np.all(np.isinf(gaussian_rdp(orders=[2.0, 3.0], noise_multiplier=0.0)))
    assert np.all(gaussian_rdp(orders=[2.0, 3.0], noise_multiplier=INF) == 0.0)
    assert gaussian_zcdp_rho(0.0) == INF and gaussian_zcdp_rho(INF) == 0.0


def test_compose_noise_multipliers_closed_form():
    m1, m2 = 2.71828, 3.14159
    assert compose_noise_multipliers([m1, m2]) == pytest.approx((m1**-2 + m2**-2) ** -0.5, rel=1e-14)
    # rounded towards privacy: never larger than the exact value
    assert compose_noise_multipliers([m1, m2]) <= (m1**-2 + m2**-2) ** -0.5
    assert compose_noise_multipliers([m1]) == m1  # a single release is exact
    assert compose_noise_multipliers([m1, INF, INF]) == m1
    assert compose_noise_multipliers([]) == INF
    assert compose_noise_multipliers([m1, 0.0]) == 0.0
    assert compose_noise_multipliers([2.0] * 9) == pytest.approx(2.0 / 3.0, rel=1e-14)


def test_rdp_to_epsilon_closed_forms_at_one_order():
    alpha, r, delta = 3.14159, 0.271828, 1e-5
    eps, order = rdp_to_epsilon(orders=[alpha], rdp=[r], delta=delta, method="paper")
    assert order == alpha
    assert eps == pytest.approx(r + math.log(1 / delta) / (alpha - 1), rel=1e-15)
    eps, _ = rdp_to_epsilon(orders=[alpha], rdp=[r], delta=delta, method="tight")
    expected = r + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
    assert eps == pytest.approx(expected, rel=1e-15)


def test_zcdp_paper_closed_form():
    rho, delta = 0.271828, 1e-5
    assert zcdp_to_epsilon(rho, delta, method="paper") == pytest.approx(
        rho + 2 * math.sqrt(rho * math.log(1 / delta)), rel=1e-15
    )
    assert zcdp_to_epsilon(0.0, delta) == 0.0 and zcdp_to_epsilon(INF, delta) == INF


def test_classical_formula_closed_form_and_warning():
    # Dwork & Roth 2014, Theorem A.1
    assert classical_gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=2.0) == pytest.approx(
        math.sqrt(2 * math.log(1.25e5)) * 2.0 / 0.5, rel=1e-15
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classical_gaussian_sigma(epsilon=1.0, delta=1e-5)  # valid at 1 (continuity): no warning
    with pytest.warns(UserWarning, match="epsilon <= 1"):
        classical_gaussian_sigma(epsilon=2.0, delta=1e-5)
    assert classical_gaussian_sigma(epsilon=INF, delta=1e-5) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Golden values and the exact optimum
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon,delta,optimum", GOLDEN_SIGMA)
def test_gaussian_sigma_golden_values(epsilon, delta, optimum):
    sigma = gaussian_sigma(epsilon=epsilon, delta=delta)
    assert sigma == pytest.approx(optimum, rel=1e-9)  # within 1e-9 of the optimum (far inside 0.1%)
    assert sigma >= optimum * (1 - 1e-15)  # rounded towards privacy


@pytest.mark.parametrize("sigma,delta,exact", GOLDEN_EPSILON)
def test_gaussian_epsilon_golden_values(sigma, delta, exact):
    epsilon = gaussian_epsilon(sigma=sigma, delta=delta)
    assert epsilon == pytest.approx(exact, rel=1e-9)
    assert epsilon >= exact * (1 - 1e-15)  # rounded up


def test_golden_values_against_mpmath():
    import mpmath as mp  # a declared test dependency: never skipped

    mp.mp.dps = 50

    def log_delta(e, s):
        e, s = mp.mpf(e), mp.mpf(s)
        return mp.log(mp.ncdf(1 / (2 * s) - e * s) - mp.exp(e) * mp.ncdf(-1 / (2 * s) - e * s))

    for epsilon, delta, _ in GOLDEN_SIGMA:
        sigma = gaussian_sigma(epsilon=epsilon, delta=delta)
        assert log_delta(epsilon, sigma) <= mp.log(delta)  # the returned sigma is (epsilon, delta)-DP, exactly
        assert log_delta(epsilon, sigma * (1 - 1e-9)) > mp.log(delta)  # and 1e-9 less would not be


def test_analytic_beats_classical():
    # Balle & Wang 2018, Section 3: the classical calibration is loose; at eps=1, delta=1e-5 by about 23%.
    ratio = gaussian_sigma(epsilon=1.0, delta=1e-5) / classical_gaussian_sigma(epsilon=1.0, delta=1e-5)
    assert ratio < 1
    assert ratio == pytest.approx(3.7306316348159418 / 4.8448052620233, rel=1e-9)
    for epsilon in [0.01, 0.1, 0.5, 0.99]:
        for delta in DELTAS:
            assert gaussian_sigma(epsilon=epsilon, delta=delta) < classical_gaussian_sigma(epsilon=epsilon, delta=delta)


# ---------------------------------------------------------------------------------------------------------------
# dp_accounting as the oracle
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("delta", DELTAS)
def test_sigma_matches_dp_accounting(epsilon, delta):
    expected = dp_accounting.get_sigma_gaussian(epsilon, delta, tol=1e-15)
    assert gaussian_sigma(epsilon=epsilon, delta=delta) == pytest.approx(expected, rel=1e-9)
    assert gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=2.5) == pytest.approx(2.5 * expected, rel=1e-9)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.71828, 10.0, 100.0])
@pytest.mark.parametrize("delta", DELTAS)
def test_epsilon_matches_dp_accounting(sigma, delta):
    expected = dp_accounting.get_epsilon_gaussian(sigma, delta, tol=1e-15)
    assert gaussian_epsilon(sigma=sigma, delta=delta) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("multipliers", [[1.5], [3.73], [2.0, 3.0, 5.0], [1.7, 8.0]])
def test_composed_epsilon_matches_pld_accountant(multipliers):
    pld = PLDAccountant(value_discretization_interval=1e-4)
    for m in multipliers:
        pld.compose(dp_accounting.GaussianDpEvent(m))
    for delta in [1e-5, 1e-2]:
        expected = pld.get_epsilon(delta)
        exact = gaussian_epsilon(sigma=compose_noise_multipliers(multipliers), delta=delta)
        # PLD is pessimistic: it may only be above the exact value, by far less than its discretisation interval.
        assert exact <= expected + 1e-12
        assert expected - exact <= 1e-6


@pytest.mark.parametrize("m", [0.7, 2.71828, 9.0])
def test_rdp_matches_rdp_accountant(m):
    accountant = RdpAccountant(orders=ORDERS)
    accountant.compose(dp_accounting.GaussianDpEvent(m))
    np.testing.assert_allclose(gaussian_rdp(orders=ORDERS, noise_multiplier=m), accountant.rdp, rtol=1e-9)
    for delta in DELTAS:
        expected_eps, expected_order = accountant.get_epsilon_and_optimal_order(delta)
        eps, order = rdp_to_epsilon(orders=ORDERS, rdp=accountant.rdp, delta=delta, method="tight")
        assert eps == pytest.approx(expected_eps, rel=1e-9)
        assert order == expected_order
        paper, _ = rdp_to_epsilon(orders=ORDERS, rdp=accountant.rdp, delta=delta, method="paper")
        exact = gaussian_epsilon(sigma=m, delta=delta)
        assert exact <= eps <= paper  # exact analytic <= tight RDP conversion <= classical conversion


def test_composed_rdp_matches_rdp_accountant():
    multipliers = [2.0, 3.14159, 7.0]
    accountant = RdpAccountant(orders=ORDERS)
    for m in multipliers:
        accountant.compose(dp_accounting.GaussianDpEvent(m))
    composed = gaussian_rdp(orders=ORDERS, noise_multiplier=compose_noise_multipliers(multipliers))
    np.testing.assert_allclose(composed, accountant.rdp, rtol=1e-9)


@pytest.mark.parametrize("rho", [0.01, 0.125, 1.0])
def test_zcdp_tight_against_rdp_accountant(rho):
    orders = np.linspace(1.02, 400.0, 20000)
    accountant = RdpAccountant(orders=orders)
    accountant.compose(dp_accounting.ZCDpEvent(rho))
    on_grid = accountant.get_epsilon(1e-5)
    tight = zcdp_to_epsilon(rho, 1e-5)
    assert tight <= on_grid + 1e-12  # continuous minimisation is at least as good as the grid
    assert tight == pytest.approx(on_grid, rel=1e-4)
    assert tight < zcdp_to_epsilon(rho, 1e-5, method="paper")
    m = 1 / math.sqrt(2 * rho)
    assert gaussian_epsilon(sigma=m, delta=1e-5) <= tight  # the analytic value is the exact optimum


def test_rdp_edge_of_grid_warns():
    orders = [2.0, 3.0, 4.0]
    with pytest.warns(RdpOrderWarning, match="edge of the grid"):
        rdp_to_epsilon(orders=orders, rdp=gaussian_rdp(orders=orders, noise_multiplier=5.0), delta=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rdp_to_epsilon(orders=ORDERS, rdp=gaussian_rdp(orders=ORDERS, noise_multiplier=2.0), delta=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------------

epsilons = st.floats(min_value=1e-2, max_value=200.0, allow_nan=False)
deltas = st.floats(min_value=1e-12, max_value=0.5, allow_nan=False)
sensitivities = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(epsilon=epsilons, delta=deltas, sensitivity=sensitivities)
def test_round_trip_never_exceeds_target(epsilon, delta, sensitivity):
    sigma = gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
    recovered = gaussian_epsilon(sigma=sigma, delta=delta, sensitivity=sensitivity)
    assert recovered <= epsilon
    assert recovered >= epsilon * (1 - 1e-6)


@settings(max_examples=40, deadline=None)
@given(sigma=st.floats(min_value=0.05, max_value=1e3), delta=deltas)
def test_round_trip_sigma_epsilon_sigma(sigma, delta):
    epsilon = gaussian_epsilon(sigma=sigma, delta=delta)
    if epsilon == 0.0:  # (0, delta)-DP already
        return
    assert gaussian_sigma(epsilon=epsilon, delta=delta) <= sigma * (1 + 1e-9)
    assert gaussian_sigma(epsilon=epsilon, delta=delta) == pytest.approx(sigma, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(e1=epsilons, e2=epsilons, delta=deltas)
def test_sigma_monotone_in_epsilon(e1, e2, delta):
    lo, hi = sorted([e1, e2])
    assert gaussian_sigma(epsilon=lo, delta=delta) >= gaussian_sigma(epsilon=hi, delta=delta)


@settings(max_examples=40, deadline=None)
@given(epsilon=epsilons, d1=deltas, d2=deltas)
def test_sigma_monotone_in_delta(epsilon, d1, d2):
    lo, hi = sorted([d1, d2])
    assert gaussian_sigma(epsilon=epsilon, delta=lo) >= gaussian_sigma(epsilon=epsilon, delta=hi)


@settings(max_examples=40, deadline=None)
@given(s1=st.floats(min_value=0.05, max_value=1e3), s2=st.floats(min_value=0.05, max_value=1e3), delta=deltas)
def test_epsilon_monotone_in_sigma(s1, s2, delta):
    lo, hi = sorted([s1, s2])
    assert gaussian_epsilon(sigma=lo, delta=delta) >= gaussian_epsilon(sigma=hi, delta=delta)


@settings(max_examples=40, deadline=None)
@given(multipliers=st.lists(st.floats(min_value=0.1, max_value=100.0), min_size=1, max_size=8))
def test_composition_order_invariant_and_tighter(multipliers):
    composed = compose_noise_multipliers(multipliers)
    assert composed == pytest.approx(compose_noise_multipliers(list(reversed(multipliers))), rel=1e-14)
    assert composed <= min(multipliers)  # composing never reduces the privacy loss
    # composing equal multipliers k times is m / sqrt(k)
    k = len(multipliers)
    assert compose_noise_multipliers([multipliers[0]] * k) == pytest.approx(multipliers[0] / math.sqrt(k), rel=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# Edges and validation
# ---------------------------------------------------------------------------------------------------------------


def test_exact_answers_at_the_edges():
    assert gaussian_sigma(epsilon=INF, delta=1e-5) == 0.0
    assert gaussian_epsilon(sigma=0.0, delta=1e-5) == INF
    assert gaussian_epsilon(sigma=INF, delta=1e-5) == 0.0
    assert gaussian_epsilon(sigma=1e6, delta=0.5) == 0.0  # (0, delta)-DP


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epsilon=0.0, delta=1e-5), "epsilon must be > 0"),
        (dict(epsilon=-1.0, delta=1e-5), "epsilon must be > 0"),
        (dict(epsilon=float("nan"), delta=1e-5), "epsilon must not be NaN"),
        (dict(epsilon=1.0, delta=0.0), r"delta must be in \(0, 1\), got delta=0.0"),
        (dict(epsilon=1.0, delta=1.0), r"delta must be in \(0, 1\)"),
        (dict(epsilon=1.0, delta=float("nan")), "delta must not be NaN"),
        (dict(epsilon=1.0, delta=1e-5, sensitivity=0.0), "sensitivity must be finite and > 0"),
        (dict(epsilon=1.0, delta=1e-5, sensitivity=INF), "sensitivity must be finite and > 0"),
        (dict(epsilon="1", delta=1e-5), "epsilon must be a real number"),
    ],
)
def test_gaussian_sigma_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_sigma(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sigma=-1.0, delta=1e-5), "sigma must be >= 0"),
        (dict(sigma=float("nan"), delta=1e-5), "sigma must not be NaN"),
        (dict(sigma=1.0, delta=2.0), r"delta must be in \(0, 1\)"),
        (dict(sigma=1.0, delta=1e-5, sensitivity=-2.0), "sensitivity"),
    ],
)
def test_gaussian_epsilon_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_epsilon(**kwargs)


def test_rdp_helpers_reject():
    with pytest.raises(ValueError, match="orders must be finite and > 1"):
        gaussian_rdp(orders=[1.0, 2.0], noise_multiplier=1.0)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        gaussian_rdp(orders=[2.0], noise_multiplier=-1.0)
    with pytest.raises(ValueError, match="same length"):
        rdp_to_epsilon(orders=[2.0, 3.0], rdp=[1.0], delta=1e-5)
    with pytest.raises(ValueError, match="rdp must be >= 0"):
        rdp_to_epsilon(orders=[2.0], rdp=[-1.0], delta=1e-5)
    with pytest.raises(ValueError, match="method"):
        rdp_to_epsilon(orders=[2.0], rdp=[1.0], delta=1e-5, method="loose")
    with pytest.raises(ValueError, match="multipliers"):
        compose_noise_multipliers([1.0, -2.0])
    with pytest.raises(ValueError, match="rho must be >= 0"):
        zcdp_to_epsilon(-0.1, 1e-5)
