"""End-to-end tests on the embedded default model (marked slow; they run in CI)."""

import math

import numpy as np
import pytest
import torch

from dpdiffusion.models.default import DEFAULT_MODEL, default_model_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not default_model_available(), reason="embedded default model not installed")]


@pytest.fixture(scope="module")
def pipe():
    from dpdiffusion import DPDiffusionPipeline

    p = DPDiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def heldout(pipe):
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    images, params = make_synthfaces_arrays(24, image_size=pipe.image_size, seed=4242)  # seed unused in training
    return images, params


def test_default_loads_offline_with_public_parts(pipe):
    assert {"dark_skin", "long_hair"} <= set(pipe.attribute_directions.names)
    assert all(c > 0 for c in pipe.attribute_directions.clip_bounds.values())
    assert not list(__import__("pathlib").Path(DEFAULT_MODEL).rglob("*.bin"))


def test_inversion_round_trip_psnr_on_heldout(pipe, heldout):
    from dpdiffusion.evaluation.default_model import psnr
    from dpdiffusion.models.diffae import ddim_decode, ddim_invert

    images, _ = heldout
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        cond = pipe.encoder.condition(pipe.encode_tensor(x))
        rec = ddim_decode(pipe.unet, pipe.scheduler, ddim_invert(pipe.unet, pipe.scheduler, x, cond, 50), cond, 50)
    value = psnr((rec + 1) / 2, (x + 1) / 2).mean().item()
    assert value >= 28.0, value


def test_release_reports_exact_figures_and_inf_is_plain(pipe, heldout):
    from dpdiffusion.privacy.accounting import gaussian_epsilon

    images, _ = heldout
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = pipe(list(images[:4]), attributes=["dark_skin"], epsilon=1.0, num_inference_steps=10, generator=g(),
               output_type="np")
    assert out.epsilon <= 1.0
    assert gaussian_epsilon(sigma=out.noise_multiplier, delta=1e-5) <= 1.0 + 1e-9
    assert out.images.shape == (4, pipe.image_size, pipe.image_size, 3)
    plain = pipe(list(images[:4]), epsilon=math.inf, num_inference_steps=10, generator=g(), output_type="np")
    ref = pipe.decode(pipe.encode(list(images[:4])), num_inference_steps=10, generator=g(), output_type="np",
                      progress=False)
    assert np.array_equal(plain.images, ref)
