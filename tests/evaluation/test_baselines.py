"""Baselines at equal (epsilon, delta): DP-Pix (Fan 2018), pixel-space Gaussian, obfuscations, and the diffusion
methods as used by the experiments."""

from __future__ import annotations

import math

import pytest
import torch

from dpdiffusion.evaluation.baselines import (DiffusionMethod, DPPixMethod, counterfactual_l2_sensitivity, dp_pix,
                                              dp_pix_laplace_scale, gaussian_blur, laplace_noise, match_psnr,
                                              pixel_gaussian, pixel_gaussian_sigma, pixelate, quantize)
from dpdiffusion.evaluation.quality import psnr
from dpdiffusion.privacy.accounting import gaussian_sigma


def test_dp_pix_scale_is_fans():
    # Fan 2018: Laplace scale 255 m / (b^2 epsilon) for grey images; RGB pixels move 3 channels
    assert dp_pix_laplace_scale(epsilon=0.5, cell_size=16, m=16) == pytest.approx(255 * 16 / (256 * 0.5))
    assert dp_pix_laplace_scale(epsilon=1.0, cell_size=4, m=1, channels=3) == pytest.approx(3 * 255 / 16)
    assert dp_pix_laplace_scale(epsilon=math.inf, cell_size=4) == 0.0
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        dp_pix_laplace_scale(epsilon=0.0, cell_size=4)
    with pytest.raises(ValueError, match="cell_size"):
        dp_pix_laplace_scale(epsilon=1.0, cell_size=0)


def test_laplace_noise_statistics():
    n, scale = 200_000, 2.5
    x = laplace_noise((n,), scale, generator=torch.Generator().manual_seed(0))
    # mean 0 and mean |x| = scale; tolerances 6 standard errors (std of x is sqrt(2) scale, of |x| is scale)
    assert abs(float(x.mean())) < 6 * math.sqrt(2) * scale / math.sqrt(n)
    assert abs(float(x.abs().mean()) - scale) < 6 * scale / math.sqrt(n)


def test_dp_pix_noise_on_cell_means():
    x = torch.full((4000, 3, 8, 8), 0.5, dtype=torch.float64)
    eps, b = 2.0, 4
    out = dp_pix(x, epsilon=eps, cell_size=b, generator=torch.Generator().manual_seed(0))
    scale = dp_pix_laplace_scale(epsilon=eps, cell_size=b, channels=3) / 255  # in [0, 1] units
    cells = out[:, :, ::b, ::b]
    assert torch.equal(out, cells.repeat_interleave(b, 2).repeat_interleave(b, 3))  # constant within each cell
    # clipping to [0, 1] is far away for this scale (0.18 around 0.5): mean |noise| = scale within 6 s.e.
    n = cells.numel()
    assert abs(float((cells - 0.5).abs().mean()) - scale) < 6 * scale / math.sqrt(n) + 1e-3


def test_dp_pix_at_infinite_epsilon_is_pixelation():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dp_pix(x, epsilon=math.inf, cell_size=4), pixelate(x, 4))
    assert torch.equal(pixelate(x, 1), x)
    torch.testing.assert_close(pixelate(x, 4)[0, 0, :4, :4], x[0, 0, :4, :4].mean().expand(4, 4))


def test_pixel_gaussian_sigma_is_the_analytic_gaussian():
    assert pixel_gaussian_sigma(epsilon=1.0, delta=1e-5, l2_sensitivity=7.5) == gaussian_sigma(
        epsilon=1.0, delta=1e-5, sensitivity=7.5)
    assert pixel_gaussian_sigma(epsilon=math.inf, delta=1e-5, l2_sensitivity=7.5) == 0.0
    x = torch.zeros(100, 3, 16, 16, dtype=torch.float64)
    sigma = pixel_gaussian_sigma(epsilon=4.0, delta=1e-5, l2_sensitivity=0.5)
    y = pixel_gaussian(x, epsilon=4.0, delta=1e-5, l2_sensitivity=0.5, clip=False,
                       generator=torch.Generator().manual_seed(0))
    n = y.numel()
    assert abs(float(y.std()) - sigma) < 6 * sigma / math.sqrt(2 * n)
    clipped = pixel_gaussian(x, epsilon=4.0, delta=1e-5, l2_sensitivity=0.5, generator=torch.Generator().manual_seed(0))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_blur_keeps_constants_and_match_psnr_picks_the_closest():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_blur(torch.full_like(x, 0.3), 1.5), torch.full_like(x, 0.3))
    assert torch.equal(gaussian_blur(x, 0.0), x)
    param, achieved = match_psnr(x, 20.0, "blur", candidates=[0.5, 1.0, 2.0])
    values = {p: float(psnr(quantize(gaussian_blur(x, p)), x).mean()) for p in (0.5, 1.0, 2.0)}
    assert param == min(values, key=lambda p: abs(values[p] - 20.0)) and achieved == pytest.approx(values[param])
    with pytest.raises(ValueError, match="method"):
        match_psnr(x, 20.0, "jpeg")


def test_match_quality_on_frechet_distance_grows_with_blur():
    from dpdiffusion.evaluation.baselines import match_quality
    from dpdiffusion.evaluation.quality import feature_frechet_distance

    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def features(imgs):  # a fixed, blur-sensitive feature map: local contrast statistics
        return torch.stack([imgs.std((2, 3)).mean(1), (imgs[..., 1:] - imgs[..., :-1]).abs().mean((1, 2, 3))], 1)

    ref = features(x)
    fds = {p: feature_frechet_distance(features(quantize(gaussian_blur(x, p))), ref) for p in (0.5, 1.0, 2.0)}
    assert fds[0.5] < fds[1.0] < fds[2.0]
    param, achieved = match_quality(x, fds[1.0], "blur", metric="fd", feature_fn=features, reference_features=ref,
                                    candidates=[0.5, 1.0, 2.0])
    assert param == 1.0 and achieved == pytest.approx(fds[1.0])
    with pytest.raises(ValueError, match="needs feature_fn"):
        match_quality(x, 1.0, "blur", metric="fd")


def test_quantize_rounds_to_8_bits():
    x = torch.tensor([0.0, 0.5, 1.2, -0.1]).reshape(1, 1, 2, 2)
    assert torch.equal(quantize(x) * 255, torch.round(quantize(x) * 255))
    assert quantize(x).max() == 1 and quantize(x).min() == 0


def test_counterfactual_l2_sensitivity_is_public_and_deterministic():
    a = counterfactual_l2_sensitivity(["dark_skin"], image_size=16, num_images=40)
    assert a == counterfactual_l2_sensitivity(["dark_skin"], image_size=16, num_images=40)
    assert 0 < a < math.sqrt(3 * 16 * 16)


def test_dp_pix_method_describes_its_relation():
    m = DPPixMethod(name="dp_pix", neighbouring_relation="m-neighbours", cell_size=4, m=2)
    d = m.describe(1.0)
    assert d["delta"] == 0.0 and d["guarantee"] == "formal"
    assert d["parameters"]["laplace_scale_0_255"] == pytest.approx(255 * 2 * 3 / 16)
    out = m.protect(torch.rand(2, 3, 16, 16), epsilon=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, quantize(out))


def test_diffusion_method_reproduces_the_pipeline_call(dummy_pipe):
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    attrs = ["dark_skin", "long_hair"]
    method = DiffusionMethod(dummy_pipe, attributes=attrs, num_inference_steps=2, batch_size=8, secure_mode=False)
    for eps in (1.0, math.inf):
        got = method.protect(images, epsilon=eps, generator=torch.Generator().manual_seed(0))
        ref = dummy_pipe(images, attributes=attrs, epsilon=eps, num_inference_steps=2, output_type="pt",
                         generator=torch.Generator().manual_seed(0), secure_mode=False).images
        # same draws in the same order; the input conversion may differ in the last float bit, which can move a
        # pixel across an 8-bit rounding boundary
        diff = (got - quantize(ref)).abs()
        assert float(diff.max()) <= 1 / 255 + 1e-6 and float((diff > 0).float().mean()) < 0.01
    d = method.describe(1.0)
    assert d["guarantee"] == "none (reproducible noise)" and d["parameters"]["noise_source"] == "seeded"
    assert DiffusionMethod(dummy_pipe, attributes=attrs).describe(1.0)["guarantee"] == "formal"  # the default
    assert d["neighbouring_relation"].startswith("attribute-neighbours")
    assert set(d["parameters"]["sigmas"]) == set(attrs)
    latent = DiffusionMethod(dummy_pipe, name="latent", scope="latent", attributes=attrs, num_inference_steps=2)
    assert latent.describe(1.0)["parameters"]["residual_sigma"] > 0


def test_attribute_level_dp_pix_covers_a_counterfactual_flip():
    from dpdiffusion.data.synthfaces import counterfactual_params, make_synthfaces_arrays, render_faces
    from dpdiffusion.evaluation.baselines import counterfactual_pixel_count

    m = counterfactual_pixel_count(["dark_skin"], image_size=16, num_images=40, seed=7)
    images, params = make_synthfaces_arrays(40, image_size=16, seed=7)
    changed = (images != render_faces(counterfactual_params(params, "dark_skin"), image_size=16)).any(-1)
    assert (changed.reshape(40, -1).sum(1) <= m).mean() >= 0.95


def test_diffusion_method_passes_its_post_processing_to_the_pipeline(dummy_pipe):
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    attrs = ["dark_skin"]
    for post in ("clip", "posterior_mean"):
        method = DiffusionMethod(dummy_pipe, attributes=attrs, num_inference_steps=2, secure_mode=False,
                                 post_processing=post)
        assert method.describe(1.0)["parameters"]["post_processing"] == post
        got = method.protect(images, epsilon=1.0, generator=torch.Generator().manual_seed(0))
        ref = dummy_pipe(images, attributes=attrs, epsilon=1.0, num_inference_steps=2, output_type="pt",
                         generator=torch.Generator().manual_seed(0), secure_mode=False, post_processing=post).images
        assert float((got - quantize(ref)).abs().max()) <= 1 / 255 + 1e-6, post
    assert DiffusionMethod(dummy_pipe, attributes=attrs).describe(1.0)["parameters"]["post_processing"] == "clip"
    with pytest.raises(ValueError, match="post_processing must be"):
        DiffusionMethod(dummy_pipe, attributes=attrs, post_processing="round")
