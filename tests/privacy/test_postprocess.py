"""Posterior-mean post-processing against closed forms, and its use in the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from dpdiffusion.privacy.postprocess import coordinate_prior, posterior_mean


def test_two_point_prior_matches_the_closed_form():
    # prior P(c = +C) = p, P(c = -C) = 1 - p: E[c | x] = C tanh(x C / sigma^2 + atanh(2p - 1))
    C, p, sigma = 1.7, 0.3, 2.71828
    prior = [{"centers": [-C, C], "probs": [1 - p, p]}]
    x = torch.linspace(-20, 20, 81, dtype=torch.float64)[:, None]
    got = posterior_mean(x, sigmas=[sigma], prior=prior)[:, 0]
    want = C * torch.tanh(x[:, 0] * C / sigma**2 + math.atanh(2 * p - 1))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fine_gaussian_prior_matches_the_gaussian_conjugate_posterior():
    # a prior N(0, tau^2) on a fine grid (far inside the bound): E[c | x] = x tau^2 / (tau^2 + sigma^2)
    tau, sigma = 0.8, 1.3
    centers = np.linspace(-8 * tau, 8 * tau, 4001)
    probs = stats.norm.pdf(centers, scale=tau)
    prior = [{"centers": centers.tolist(), "probs": (probs / probs.sum()).tolist()}]
    x = torch.tensor([[-3.0], [-0.5], [0.0], [1.0], [4.0]], dtype=torch.float64)
    got = posterior_mean(x, sigmas=[sigma], prior=prior)[:, 0]
    assert torch.allclose(got, x[:, 0] * tau**2 / (tau**2 + sigma**2), atol=1e-6)


def test_histogram_posterior_matches_scipy_densities():
    # an oracle that shares no code: Bayes' rule with scipy's normal density, in plain (not log) space
    rng = np.random.default_rng(0)
    coords = rng.normal(0.3, 1.0, size=(5000, 1))
    prior = coordinate_prior(coords, [1.5], num_bins=16)[0]
    c, p = np.array(prior["centers"]), np.array(prior["probs"])
    assert abs(p.sum() - 1) < 1e-12 and np.all(np.abs(c) <= 1.5)
    sigma = 2.0
    for x in (-6.0, -1.0, 0.4, 2.5, 9.0):
        num = float(np.sum(p * c * stats.norm.pdf(x, loc=c, scale=sigma)))
        den = float(np.sum(p * stats.norm.pdf(x, loc=c, scale=sigma)))
        got = float(posterior_mean(torch.tensor([[x]]), sigmas=[sigma], prior=[prior]))
        assert got == pytest.approx(num / den, rel=1e-6)


def test_posterior_mean_stays_in_bounds_is_monotone_and_shrinks_with_the_noise():
    rng = np.random.default_rng(1)
    prior = coordinate_prior(rng.normal(0, 2.0, size=(4000, 1)), [1.0])
    x = torch.linspace(-50, 50, 1001)[:, None]
    for sigma in (0.1, 1.0, 30.0):
        y = posterior_mean(x, sigmas=[sigma], prior=prior)[:, 0]
        assert torch.all(y.abs() <= 1.0) and torch.all(torch.diff(y) >= -1e-6)
    # large noise: every release lands near the prior mean, not on a bound (what "clip" does 91 % of the time)
    far = posterior_mean(torch.tensor([[40.0]]), sigmas=[97.0], prior=prior)
    assert abs(float(far)) < 0.5


def test_bad_arguments():
    prior = [{"centers": [0.0], "probs": [1.0]}]
    with pytest.raises(ValueError, match="sigmas"):
        posterior_mean(torch.zeros(1, 1), sigmas=[0.0], prior=prior)
    with pytest.raises(ValueError, match="one sigma and one prior"):
        posterior_mean(torch.zeros(1, 2), sigmas=[1.0], prior=prior)
    with pytest.raises(ValueError, match="num_bins"):
        coordinate_prior([[0.0]], [1.0], num_bins=1)


def test_pipeline_posterior_mean_is_post_processing_of_the_same_release(dummy_pipe, dummy_images):
    """Seeded (so the same noise is drawn twice): "posterior_mean" is a function of the "none" output and public
    values, the residual is untouched, and a model without a stored prior is refused before any noise."""
    dirs = dummy_pipe.attribute_directions
    names = ["dark_skin", "long_hair"]
    z = dummy_pipe.encode(dummy_images)
    kw = dict(attributes=names, epsilon=1.0, secure_mode=False)
    raw, report = dummy_pipe.apply_privacy_noise(z, generator=torch.Generator().manual_seed(0), post_processing="none",
                                                 **kw)
    pm, _ = dummy_pipe.apply_privacy_noise(z, generator=torch.Generator().manual_seed(0),
                                           post_processing="posterior_mean", **kw)
    a_raw, r_raw = dirs.project(raw, attributes=names)
    a_pm, r_pm = dirs.project(pm, attributes=names)
    sigmas = [report.sigmas[n] for n in names]
    assert torch.allclose(a_pm, posterior_mean(a_raw, sigmas=sigmas, prior=dirs.prior(names)), atol=1e-5)
    assert torch.allclose(r_pm, r_raw, atol=1e-5)
    out = dummy_pipe(dummy_images, attributes=names, epsilon=1.0, num_inference_steps=1, output_type="np",
                     post_processing="posterior_mean")
    assert out.guarantee == "formal"
    # a model fitted before priors and raw directions were stored (the fixture is per test)
    dirs.register_to_config(coordinate_prior=None, fit_sample_size=0)
    with pytest.raises(ValueError, match="coordinate prior"):
        dummy_pipe(dummy_images, attributes=names, epsilon=1.0, num_inference_steps=1, post_processing="posterior_mean")


def test_default_post_processing_is_clip(dummy_pipe, dummy_images):
    """The default (measured better on the paper sweep's utility than "posterior_mean", README) is exactly "clip"
    (same seeded noise), for apply_privacy_noise and the whole release."""
    names = ["dark_skin", "long_hair"]
    z = dummy_pipe.encode(dummy_images)
    kw = dict(attributes=names, epsilon=1.0, secure_mode=False)

    def release(post=None):
        extra = {} if post is None else {"post_processing": post}
        return dummy_pipe.apply_privacy_noise(z, generator=torch.Generator().manual_seed(0), **kw, **extra)[0]

    assert torch.equal(release(), release("clip"))
    assert not torch.equal(release(), release("posterior_mean"))
    out = dummy_pipe(dummy_images, attributes=names, epsilon=1.0, num_inference_steps=1, output_type="np",
                     generator=torch.Generator().manual_seed(0), secure_mode=False)
    clip = dummy_pipe(dummy_images, attributes=names, epsilon=1.0, num_inference_steps=1, output_type="np",
                      generator=torch.Generator().manual_seed(0), secure_mode=False, post_processing="clip")
    np.testing.assert_array_equal(out.images, clip.images)


def test_the_prior_is_saved_with_the_directions(dummy_pipe, tmp_path):
    from dpdiffusion.models.attribute_directions import AttributeDirections

    dirs = dummy_pipe.attribute_directions
    dirs.save_pretrained(tmp_path / "dirs")
    again = AttributeDirections.from_pretrained(tmp_path / "dirs")
    assert again.prior(["dark_skin"]) == dirs.prior(["dark_skin"])
    assert again.prior(["smiling", "dark_skin"]) == dirs.prior(["smiling", "dark_skin"])  # recomputed: the same
    assert all(abs(sum(p["probs"]) - 1) < 1e-9 for p in again.prior())


def test_fit_coordinate_prior_refuses_data_that_is_not_the_fit_set(dummy_pipe, tmp_path):
    """The tiny model's directions were fitted on random latents, not on SynthFaces: the script must notice (its
    check that the stored bounds are the quantile of the re-encoded fit set) and write nothing."""
    import subprocess
    import sys
    from pathlib import Path

    dummy_pipe.save_pretrained(tmp_path / "model")
    before = (tmp_path / "model" / "attribute_directions" / "config.json").read_bytes()
    script = Path(__file__).resolve().parents[2] / "scripts" / "fit_coordinate_prior.py"
    res = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "model"), "--num-images", "200"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "not the fit set" in res.stderr
    assert (tmp_path / "model" / "attribute_directions" / "config.json").read_bytes() == before
