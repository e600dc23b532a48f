"""Image quality: closed forms for PSNR, SSIM and the Frechet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpdiffusion.evaluation.quality import (feature_frechet_distance, frechet_distance, gaussian_statistics, psnr,
                                            ssim)


def test_psnr_closed_form():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    d = 0.0371
    torch.testing.assert_close(psnr(x, x + d), torch.full((3,), 10 * math.log10(1 / d**2), dtype=torch.float64))
    assert psnr(x * 255, x * 255 + 2.0, data_range=255.0)[0] == pytest.approx(10 * math.log10(255**2 / 4.0))
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_ssim_constant_images_closed_form():
    # constant images: variances and covariance vanish, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    m1, m2, c1 = 0.3, 0.7, 0.01**2
    a, b = torch.full((1, 3, 16, 16), m1), torch.full((1, 3, 16, 16), m2)
    assert float(ssim(a, b)[0]) == pytest.approx((2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1), rel=1e-6)


def test_ssim_is_symmetric_bounded_and_decreases_with_noise():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 32, 32, generator=g)
    n = torch.randn(1, 3, 32, 32, generator=g)
    s1, s2 = ssim(x, (x + 0.05 * n).clamp(0, 1)), ssim(x, (x + 0.3 * n).clamp(0, 1))
    assert float(ssim(x, x + 0.05 * n)) == pytest.approx(float(ssim(x + 0.05 * n, x)), rel=1e-12)
    assert 1.0 > float(s1) > float(s2) > -1.0


def test_quality_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    expected = 5.0 + sum(a + b - 2 * math.sqrt(a * b) for a, b in [(1, 4), (4, 1), (9, 1)])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_feature_frechet_distance_of_shifted_features():
    f = np.random.default_rng(0).normal(size=(500, 4))
    assert feature_frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert feature_frechet_distance(f, f + 2.0) == pytest.approx(16.0, rel=1e-6)  # ||shift||^2, same covariance
    mu, cov = gaussian_statistics(f)
    assert mu.shape == (4,) and cov.shape == (4, 4)


def test_ssim_rejects_images_smaller_than_the_window_and_a_window_that_does_not_match_sigma():
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16))
    with pytest.raises(ValueError, match="window_size must be 11 for sigma=1.5"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), window_size=7)


def test_ssim_of_a_single_window_equals_eq_13_by_hand():
    # an 11 x 11 image has one valid window: SSIM is Eq. 13 with Gaussian-weighted moments over the whole image
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(1, 1, 11, 11, generator=g, dtype=torch.float64), torch.rand(1, 1, 11, 11, generator=g,
                                                                                 dtype=torch.float64)
    t = torch.arange(11, dtype=torch.float64) - 5
    w = torch.exp(-0.5 * (t / 1.5) ** 2)
    w = (w[:, None] * w[None, :]) / w.sum() ** 2
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    s_aa, s_bb = (w * a * a).sum() - mu_a**2, (w * b * b).sum() - mu_b**2
    s_ab = (w * a * b).sum() - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    assert float(ssim(a, b)[0]) == pytest.approx(float(expected), rel=1e-12)
