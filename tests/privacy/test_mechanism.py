"""Tests for dpdiffusion.privacy.mechanism: calibration math, strength mapping, clipping and noise statistics."""

import doctest
import math
import warnings

import dp_accounting
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from dp_accounting.pld import PLDAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from dpdiffusion.privacy import mechanism
from dpdiffusion.privacy.accounting import gaussian_epsilon, gaussian_sigma
from dpdiffusion.privacy.mechanism import (
    InsecurePRNGWarning,
    apply_residual_mechanism,
    apply_weighted_gaussian_mechanism,
    calibrate,
    calibrate_from_noise_multiplier,
    clip_coordinates,
    clip_l2,
    gaussian_noise_like,
    noise_multiplier_to_strength,
    strength_to_noise_multiplier,
)

INF = float("inf")


def test_doctests():
    result = doctest.testmod(mechanism)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------------

GRID = [
    (1.0, 1e-5, [0.5], None),
    (0.3, 1e-6, [1.0, 2.0], [1.0, 1.0]),
    (2.0, 1e-5, [0.25, 1.5, 3.0], [3.0, 1.0, 0.5]),
    (1.0, 1e-3, [2.71828, 3.14159], [0.1, 10.0]),
]


@pytest.mark.parametrize("epsilon,delta,bounds,weights", GRID)
def test_calibrate_matches_design_formula(epsilon, delta, bounds, weights):
    cal = calibrate(epsilon=epsilon, delta=delta, clip_bounds=bounds, weights=weights)
    m = gaussian_sigma(epsilon=epsilon, delta=delta)
    w = weights or [1.0] * len(bounds)
    rho = 1 / (2 * m**2)
    assert cal.noise_multiplier == m and cal.rho == pytest.approx(rho, rel=1e-15)
    assert (cal.epsilon, cal.delta) == (epsilon, delta)
    for c, wi, s in zip(bounds, w, cal.sigmas):
        rho_i = wi / sum(w) * rho
        exact = 2 * c / math.sqrt(2 * rho_i)  # DESIGN section 2: sigma_i = Delta_i / sqrt(2 rho_i)
        assert s == pytest.approx(exact, rel=1e-12)
        assert s >= exact  # rounded towards privacy
    # whitened, the release is one Gaussian mechanism with multiplier >= m
    whitened = sum((2 * c / s) ** 2 for c, s in zip(bounds, cal.sigmas)) ** -0.5
    assert whitened >= m
    assert gaussian_epsilon(sigma=whitened, delta=delta) <= epsilon


@pytest.mark.parametrize("epsilon,delta,bounds,weights", GRID)
def test_calibrate_against_pld_composition_of_coordinates(epsilon, delta, bounds, weights):
    # Oracle: the k coordinates are k Gaussian mechanisms (multiplier sigma_i / Delta_i) on the same input.
    cal = calibrate(epsilon=epsilon, delta=delta, clip_bounds=bounds, weights=weights)
    pld = PLDAccountant(value_discretization_interval=1e-4)
    for c, s in zip(bounds, cal.sigmas):
        pld.compose(dp_accounting.GaussianDpEvent(s / (2 * c)))
    pld_epsilon = pld.get_epsilon(delta)
    assert pld_epsilon == pytest.approx(epsilon, abs=1e-6)
    exact = dp_accounting.get_epsilon_gaussian(
        sum((2 * c / s) ** 2 for c, s in zip(bounds, cal.sigmas)) ** -0.5, delta, tol=1e-15
    )
    assert exact == pytest.approx(epsilon, rel=1e-9)


def test_calibrate_with_residual_share():
    cal = calibrate(epsilon=1.0, delta=1e-5, clip_bounds=[1.0, 2.0], weights=[1.0, 1.0], residual_clip_bound=3.0,
                    residual_weight=2.0)
    m = cal.noise_multiplier
    total = 4.0
    assert cal.sigmas[0] == pytest.approx(2 * 1.0 * m * math.sqrt(total / 1.0), rel=1e-12)
    assert cal.residual_sigma == pytest.approx(2 * 3.0 * m * math.sqrt(total / 2.0), rel=1e-12)
    whitened_sq = (2 / cal.sigmas[0]) ** 2 + (4 / cal.sigmas[1]) ** 2 + (6 / cal.residual_sigma) ** 2
    assert whitened_sq ** -0.5 == pytest.approx(m, rel=1e-12)
    assert whitened_sq ** -0.5 >= m
    assert calibrate(epsilon=1.0, delta=1e-5, clip_bounds=[1.0]).residual_sigma is None


def test_calibrate_epsilon_inf_is_off():
    cal = calibrate(epsilon=INF, delta=1e-5, clip_bounds=[1.0, 2.0], residual_clip_bound=1.0)
    assert cal.noise_multiplier == 0.0 and cal.rho == INF and cal.is_off
    assert cal.sigmas == (0.0, 0.0) and cal.residual_sigma == 0.0


def test_calibrate_from_noise_multiplier_consistent():
    cal = calibrate(epsilon=0.8, delta=1e-5, clip_bounds=[1.0, 0.5], weights=[2.0, 1.0])
    again = calibrate_from_noise_multiplier(noise_multiplier=cal.noise_multiplier, delta=1e-5, clip_bounds=[1.0, 0.5],
                                            weights=[2.0, 1.0])
    assert again.sigmas == cal.sigmas
    assert again.epsilon <= 0.8 and again.epsilon == pytest.approx(0.8, rel=1e-9)
    off = calibrate_from_noise_multiplier(noise_multiplier=0.0, delta=1e-5, clip_bounds=[1.0])
    assert off.epsilon == INF and off.is_off


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(clip_bounds=[]), "clip_bounds must be non-empty"),
        (dict(clip_bounds=[0.0]), "clip_bounds must all be finite and > 0"),
        (dict(clip_bounds=[INF]), "clip_bounds must all be finite and > 0"),
        (dict(weights=[1.0, 2.0]), "one entry per clip bound"),
        (dict(weights=[-1.0]), "weights must all be finite and > 0"),
        (dict(residual_clip_bound=0.0), "residual_clip_bound must be finite and > 0"),
        (dict(residual_weight=0.0), "residual_weight must be finite and > 0"),
        (dict(epsilon=0.0), "epsilon must be > 0"),
        (dict(delta=1.5), r"delta must be in \(0, 1\)"),
    ],
)
def test_calibrate_rejects(kwargs, match):
    base = dict(epsilon=1.0, delta=1e-5, clip_bounds=[1.0])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        calibrate(**base)
    with pytest.raises(ValueError, match="noise_multiplier must be finite and >= 0"):
        calibrate_from_noise_multiplier(noise_multiplier=-1.0, delta=1e-5, clip_bounds=[1.0])


# ---------------------------------------------------------------------------------------------------------------
# Strength <-> noise multiplier
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alphas_cumprod():
    return DDIMScheduler(num_train_timesteps=1000).alphas_cumprod  # (1000,) float32 tensor


def test_strength_at_integer_steps_is_the_schedule(alphas_cumprod):
    abar = alphas_cumprod.double().numpy()
    for j in [0, 1, 250, 999]:
        m = strength_to_noise_multiplier(j / 999, alphas_cumprod)
        assert m == pytest.approx(math.sqrt((1 - abar[j]) / abar[j]), rel=1e-12)
    # forward diffusion rescaled by 1/sqrt(abar) adds N(0, m^2): abar = 1 / (1 + m^2)
    assert strength_to_noise_multiplier(0.0, alphas_cumprod) > 0  # strength 0 is the first step, not "off"


def test_strength_interpolates_in_log_snr():
    abar = 1 / (1 + np.array([0.5, 1.0, 2.0]) ** 2)
    # halfway between m=1 and m=2 in log-SNR is the geometric mean sqrt(2)
    assert strength_to_noise_multiplier(0.75, abar) == pytest.approx(math.sqrt(2.0), rel=1e-14)


@settings(max_examples=50, deadline=None)
@given(strength=st.floats(min_value=0.0, max_value=1.0))
def test_strength_round_trip(strength):
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    m = strength_to_noise_multiplier(strength, abar)
    assert noise_multiplier_to_strength(m, abar) == pytest.approx(strength, abs=1e-9)


def test_strength_monotone_and_inverse(alphas_cumprod):
    strengths = np.linspace(0, 1, 201)
    ms = [strength_to_noise_multiplier(s, alphas_cumprod) for s in strengths]
    assert all(b > a for a, b in zip(ms, ms[1:]))
    for m in [0.05, 0.3, 1.0, 3.73, 50.0]:
        s = noise_multiplier_to_strength(m, alphas_cumprod)
        assert strength_to_noise_multiplier(s, alphas_cumprod) == pytest.approx(m, rel=1e-9)


def test_strength_edges(alphas_cumprod):
    m_first = strength_to_noise_multiplier(0.0, alphas_cumprod)
    m_last = strength_to_noise_multiplier(1.0, alphas_cumprod)
    assert noise_multiplier_to_strength(0.0, alphas_cumprod) == 0.0  # mechanism off
    assert noise_multiplier_to_strength(m_first / 2, alphas_cumprod) == 0.0  # clipped to the first step
    assert noise_multiplier_to_strength(m_last, alphas_cumprod) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="exceeds what the schedule can express"):
        noise_multiplier_to_strength(m_last * 1.01, alphas_cumprod)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        strength_to_noise_multiplier(1.5, alphas_cumprod)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        noise_multiplier_to_strength(-1.0, alphas_cumprod)
    with pytest.raises(ValueError, match="non-increasing"):
        strength_to_noise_multiplier(0.5, [0.1, 0.5, 0.9])
    # zero terminal SNR: the last step is pure noise
    assert strength_to_noise_multiplier(1.0, [0.9, 0.5, 0.0]) == INF
    assert strength_to_noise_multiplier(0.9, [0.9, 0.5, 0.0]) == INF


# ---------------------------------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------------------------------

floats32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.lists(floats32, min_size=3, max_size=3), min_size=1, max_size=8),
       bounds=st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=3, max_size=3))
def test_clip_coordinates_never_exceeds_bounds(values, bounds):
    a = torch.tensor(values, dtype=torch.float32)
    out = clip_coordinates(a, bounds)
    b = torch.tensor(bounds, dtype=torch.float64)
    assert torch.all(out.double().abs() <= b)  # against the exact (float64) public bounds
    inside = a.double().abs() <= b
    assert torch.equal(out[inside], a[inside])


def test_clip_bounds_round_down_to_the_dtype():
    out = clip_coordinates(torch.tensor([[5.0, -5.0]], dtype=torch.bfloat16), [0.1, 0.1])  # 0.1 not representable
    assert torch.all(out.double().abs() <= 0.1)
    assert torch.all(out.double().abs() > 0.099)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.lists(floats32, min_size=5, max_size=5), min_size=1, max_size=6),
       bound=st.floats(min_value=1e-3, max_value=1e3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_clip_l2_never_exceeds_bound(values, bound, dtype):
    r = torch.tensor(values, dtype=torch.float32).clamp(-6e4, 6e4).to(dtype)
    out = clip_l2(r, bound)
    assert out.dtype == dtype
    assert torch.all(torch.linalg.vector_norm(out.double(), dim=-1) <= bound)
    inside = torch.linalg.vector_norm(r.double(), dim=-1) <= bound
    assert torch.equal(out[inside], r[inside])


def test_clip_rejects_nan_and_bad_bounds():
    with pytest.raises(ValueError, match="NaN"):
        clip_coordinates(torch.tensor([[float("nan")]]), [1.0])
    with pytest.raises(ValueError, match="one entry per coordinate"):
        clip_coordinates(torch.zeros(2, 3), [1.0, 1.0])
    with pytest.raises(ValueError, match="bound must be finite and > 0"):
        clip_l2(torch.zeros(2, 3), 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------------------------


def _assert_gaussian_columns(samples: torch.Tensor, mean, std):
    """Column means and standard deviations within 6 standard errors (mean: s/sqrt(n); std: s/sqrt(2n))."""
    x = samples.double()
    n = x.shape[0]
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64)
    assert torch.all((x.mean(0) - mean).abs() <= 6 * std / math.sqrt(n))
    assert torch.all((x.std(0) - std).abs() <= 6 * std / math.sqrt(2 * n))


def test_noise_statistics_per_coordinate():
    sigmas = [0.5, 2.0, 7.0]
    noise = gaussian_noise_like(torch.zeros(40_000, 3), sigmas, generator=torch.Generator().manual_seed(0))
    _assert_gaussian_columns(noise, 0.0, sigmas)


def test_secure_mode_statistics_and_no_reproducibility():
    sigmas = [1.0, 3.0]
    noise = gaussian_noise_like(torch.zeros(20_000, 2), sigmas, secure_mode=True)
    _assert_gaussian_columns(noise, 0.0, sigmas)
    # fourth moment of a Gaussian: E x^4 = 3 sigma^4 (the sum-of-four construction keeps it Gaussian)
    kurtosis = (noise.double() ** 4).mean(0) / (noise.double() ** 2).mean(0) ** 2
    assert torch.all((kurtosis - 3).abs() < 0.25)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = gaussian_noise_like(torch.zeros(8), 1.0, generator=g1, secure_mode=True)
    b = gaussian_noise_like(torch.zeros(8), 1.0, generator=g2, secure_mode=True)
    assert not torch.equal(a, b)  # the generator is ignored


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("secure_mode", [False, True])
def test_noise_preserves_dtype_and_device(dtype, secure_mode):
    x = torch.zeros(4, 3, dtype=dtype)
    noise = gaussian_noise_like(x, [1.0, 2.0, 3.0], generator=torch.Generator().manual_seed(0), secure_mode=secure_mode)
    assert noise.dtype == dtype and noise.device == x.device and noise.shape == x.shape
    out = apply_weighted_gaussian_mechanism(x, clip_bounds=[1.0] * 3, sigmas=[1.0] * 3, secure_mode=secure_mode,
                                            generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.device == x.device


def test_std_is_rounded_up_to_the_dtype():
    std = 0.1  # not representable in bfloat16
    cast = mechanism._std_tensor(std, torch.zeros(1, dtype=torch.bfloat16))
    assert cast.dtype == torch.bfloat16 and float(cast) >= std


def test_seeded_mode_same_generator_same_noise_other_seed_different():
    a = torch.randn(16, 4, generator=torch.Generator().manual_seed(123))
    kwargs = dict(clip_bounds=[1.0] * 4, sigmas=[0.5] * 4, secure_mode=False)
    out1 = apply_weighted_gaussian_mechanism(a, generator=torch.Generator().manual_seed(7), **kwargs)
    out2 = apply_weighted_gaussian_mechanism(a, generator=torch.Generator().manual_seed(7), **kwargs)
    out3 = apply_weighted_gaussian_mechanism(a, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)


def test_default_noise_cannot_be_replayed_from_the_generator():
    """The attacker's view: they know the code, the input and the generator's seed and replay the seeded draw; by
    default the noise comes from the OS CSPRNG, so neither the replay nor a second default call reproduces it."""
    a = torch.zeros(64, 4)
    kwargs = dict(clip_bounds=[1.0] * 4, sigmas=[0.5] * 4)
    released = apply_weighted_gaussian_mechanism(a, generator=torch.Generator().manual_seed(7), **kwargs)
    replayed = apply_weighted_gaussian_mechanism(a, generator=torch.Generator().manual_seed(7), secure_mode=False,
                                                 **kwargs)
    again = apply_weighted_gaussian_mechanism(a, generator=torch.Generator().manual_seed(7), **kwargs)
    assert not torch.equal(released, replayed) and not torch.equal(released, again)
    # what the attacker recovers by subtracting the replayed noise is uncorrelated with the truth (a = 0):
    # its spread is the sum of two independent noises, sqrt(2) sigma, not 0
    residual = (released - replayed).double()
    assert abs(residual.std().item() - 0.5 * math.sqrt(2)) < 6 * 0.5 * math.sqrt(2) / math.sqrt(2 * residual.numel())


def test_insecure_prng_warns_once(monkeypatch):
    from dpdiffusion.privacy import noise

    monkeypatch.setattr(noise, "_INSECURE_PRNG_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gaussian_noise_like(torch.zeros(3), 1.0)
        assert not caught  # the default (CSPRNG) never warns
        gaussian_noise_like(torch.zeros(3), 1.0, secure_mode=False)
        gaussian_noise_like(torch.zeros(3), 1.0, secure_mode=False)
    assert [type(w.message) for w in caught] == [InsecurePRNGWarning]
    assert "secure_mode=True" in str(caught[0].message)


# ---------------------------------------------------------------------------------------------------------------
# The weighted mechanism and the residual mechanism
# ---------------------------------------------------------------------------------------------------------------


def test_weighted_mechanism_statistics_on_zero_signal():
    cal = calibrate(epsilon=1.0, delta=1e-5, clip_bounds=[0.5, 2.0], weights=[3.0, 1.0])
    out = apply_weighted_gaussian_mechanism(torch.zeros(40_000, 2, dtype=torch.float64), clip_bounds=cal.clip_bounds,
                                            sigmas=cal.sigmas, generator=torch.Generator().manual_seed(1))
    _assert_gaussian_columns(out, 0.0, cal.sigmas)


def test_weighted_mechanism_clips_before_noise():
    bounds, sigmas = [0.5, 2.0], [0.1, 0.3]
    a = torch.tensor([[100.0, -100.0]], dtype=torch.float64).expand(40_000, 2)
    out = apply_weighted_gaussian_mechanism(a, clip_bounds=bounds, sigmas=sigmas,
                                            generator=torch.Generator().manual_seed(2))
    _assert_gaussian_columns(out, [0.5, -2.0], sigmas)


def test_epsilon_inf_is_off_bit_for_bit():
    a = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 100  # far outside the bounds
    cal = calibrate(epsilon=INF, delta=1e-5, clip_bounds=[1.0, 1.0, 1.0], residual_clip_bound=1.0)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = apply_weighted_gaussian_mechanism(a, clip_bounds=cal.clip_bounds, sigmas=cal.sigmas, generator=g)
    assert torch.equal(out, a) and out is not a  # no clipping, no noise, a copy
    assert torch.equal(g.get_state(), state)  # nothing drawn from the caller's generator
    r = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)) * 100
    out_r = apply_residual_mechanism(r, clip_bound=1.0, sigma=cal.residual_sigma, generator=g)
    assert torch.equal(out_r, r)
    assert torch.equal(g.get_state(), state)


def test_weighted_mechanism_rejects():
    a = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="all 0 .* or all > 0"):
        apply_weighted_gaussian_mechanism(a, clip_bounds=[1.0, 1.0], sigmas=[0.0, 1.0])
    with pytest.raises(ValueError, match="sigmas must have one entry per coordinate"):
        apply_weighted_gaussian_mechanism(a, clip_bounds=[1.0, 1.0], sigmas=[1.0])
    with pytest.raises(ValueError, match="clip_bounds must have one entry per coordinate"):
        apply_weighted_gaussian_mechanism(a, clip_bounds=[1.0], sigmas=[1.0, 1.0])
    with pytest.raises(ValueError, match="sigmas must be finite and >= 0"):
        apply_weighted_gaussian_mechanism(a, clip_bounds=[1.0, 1.0], sigmas=[-1.0, 1.0])
    with pytest.raises(ValueError, match="floating-point"):
        apply_weighted_gaussian_mechanism(torch.zeros(2, 2, dtype=torch.long), clip_bounds=[1.0, 1.0],
                                          sigmas=[1.0, 1.0])


def _orthonormal_basis(d, k, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q  # (d, k)


def test_residual_mechanism_noise_lives_in_the_complement():
    d, k, n, sigma = 6, 2, 30_000, 1.5
    basis = _orthonormal_basis(d, k)
    out = apply_residual_mechanism(torch.zeros(n, d, dtype=torch.float64), clip_bound=1.0, sigma=sigma,
                                   protected_basis=basis, generator=torch.Generator().manual_seed(4))
    assert (out @ basis).abs().max() < 1e-12  # no component along the protected directions
    # isotropic in the complement: coordinates along an orthonormal basis of it are N(0, sigma^2)
    u, _, _ = torch.linalg.svd(torch.eye(d, dtype=torch.float64) - basis @ basis.T)
    coords = out @ u[:, : d - k]  # (n, d - k)
    _assert_gaussian_columns(coords, 0.0, [sigma] * (d - k))


def test_residual_mechanism_clips_and_projects():
    d, k = 5, 2
    basis = _orthonormal_basis(d, k, seed=1)
    r = torch.randn(64, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 10
    out = apply_residual_mechanism(r, clip_bound=0.5, sigma=1e-12, protected_basis=basis,
                                   generator=torch.Generator().manual_seed(6))
    assert torch.all(torch.linalg.vector_norm(out, dim=-1) <= 0.5 + 1e-9)
    projected = r - (r @ basis) @ basis.T
    expected = clip_l2(projected, 0.5)
    assert torch.allclose(out, expected, atol=1e-9)


def test_residual_mechanism_rejects_bad_basis():
    r = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="orthonormal"):
        apply_residual_mechanism(r, clip_bound=1.0, sigma=1.0, protected_basis=torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"\(d, k\) tensor with d=4"):
        apply_residual_mechanism(r, clip_bound=1.0, sigma=1.0, protected_basis=torch.eye(3)[:, :1])
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        apply_residual_mechanism(r, clip_bound=1.0, sigma=-1.0)
