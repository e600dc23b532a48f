"""Fast pipeline tests on tiny real components (diffusers style)."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from dpdiffusion import DPDiffusionPipeline, DPDiffusionPipelineOutput


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _call(pipe, images, **kw):
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("output_type", "np")
    kw.setdefault("generator", _g())
    return pipe(images, **kw)


def test_output_carries_privacy_figures(dummy_pipe, dummy_images):
    out = _call(dummy_pipe, dummy_images, attributes=["dark_skin"], epsilon=1.0, delta=1e-5)
    assert isinstance(out, DPDiffusionPipelineOutput)
    assert out.images.shape == (2, 16, 16, 3)
    assert out.epsilon <= 1.0 and out.delta == 1e-5 and out.guarantee == "formal"
    assert set(out.sigmas) == {"dark_skin"} and out.sigmas["dark_skin"] > 0
    assert out.noise_multiplier > 0 and 0 < out.strength < 1
    assert out.attributes == ("dark_skin",)
    assert "attribute-neighbours" in out.report.neighbouring_relation


def test_epsilon_inf_equals_plain_encode_decode_bit_for_bit(dummy_pipe, dummy_images):
    out = _call(dummy_pipe, dummy_images, epsilon=math.inf)
    plain = dummy_pipe.decode(dummy_pipe.encode(dummy_images), stochastic_code="random", num_inference_steps=2,
                              generator=_g(), output_type="np", progress=False)
    assert np.array_equal(out.images, plain)
    assert out.sigmas == {"dark_skin": 0.0, "long_hair": 0.0} and out.noise_multiplier == 0


def test_distance_to_plain_grows_as_epsilon_shrinks(dummy_pipe, dummy_images):
    z = dummy_pipe.encode(dummy_images)
    dists = []
    for eps in (8.0, 1.0, 0.1):
        zs = [dummy_pipe.apply_privacy_noise(z, epsilon=eps, generator=_g(s))[0] for s in range(20)]
        dists.append(float(torch.stack([(zz - z).norm(dim=1).mean() for zz in zs]).mean()))
    assert dists[0] < dists[1] < dists[2]


def test_apply_privacy_noise_only_moves_protected_coordinates(dummy_pipe, dummy_images):
    dirs = dummy_pipe.attribute_directions
    z = dummy_pipe.encode(dummy_images)
    z2, report = dummy_pipe.apply_privacy_noise(z, attributes=["dark_skin"], epsilon=1.0, generator=_g())
    _, r1 = dirs.project(z, attributes=["dark_skin"])
    _, r2 = dirs.project(z2, attributes=["dark_skin"])
    assert torch.allclose(r1, r2, atol=1e-5)
    assert report.sigmas["dark_skin"] > 0


def test_latent_scope_noises_residual_too(dummy_pipe, dummy_images):
    z = dummy_pipe.encode(dummy_images)
    z2, report = dummy_pipe.apply_privacy_noise(z, attributes=["dark_skin"], epsilon=1.0, scope="latent",
                                                generator=_g())
    _, r1 = dummy_pipe.attribute_directions.project(z, attributes=["dark_skin"])
    _, r2 = dummy_pipe.attribute_directions.project(z2, attributes=["dark_skin"])
    assert not torch.allclose(r1, r2) and report.residual_sigma > 0
    assert report.neighbouring_relation.startswith("any two images")


def test_same_generator_same_output_other_seed_differs(dummy_pipe, dummy_images):
    a = _call(dummy_pipe, dummy_images, epsilon=1.0, generator=_g(3)).images
    b = _call(dummy_pipe, dummy_images, epsilon=1.0, generator=_g(3)).images
    c = _call(dummy_pipe, dummy_images, epsilon=1.0, generator=_g(4)).images
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_strength_path_reports_exact_epsilon(dummy_pipe, dummy_images):
    from dpdiffusion.privacy.accounting import gaussian_epsilon

    out = _call(dummy_pipe, dummy_images, strength=0.5)
    assert out.epsilon == pytest.approx(gaussian_epsilon(sigma=out.noise_multiplier, delta=1e-5), rel=1e-6)
    assert out.strength == pytest.approx(0.5, abs=1e-3)


def test_inverted_code_is_heuristic(dummy_pipe, dummy_images):
    out = _call(dummy_pipe, dummy_images, stochastic_code="inverted")
    assert out.guarantee == "heuristic"


def test_inputs_of_any_mode_and_size(dummy_pipe):
    rng = np.random.default_rng(0)
    imgs = [PIL.Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)),
            PIL.Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), mode="L"),
            PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), mode="RGBA"),
            PIL.Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16))]
    out = _call(dummy_pipe, imgs, output_type="pil")
    assert len(out.images) == 4 and all(im.size == (16, 16) and im.mode == "RGB" for im in out.images)


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilon": 0.0}, "epsilon"), ({"epsilon": -1.0}, "epsilon"), ({"epsilon": float("nan")}, "epsilon"),
    ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"attributes": ["nope"]}, "unknown attribute"),
    ({"weights": [1.0, -1.0]}, "weights"), ({"weights": [1.0]}, "weights"), ({"scope": "pixels"}, "scope"),
    ({"stochastic_code": "zeros"}, "stochastic_code"), ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"output_type": "jpeg"}, "output_type"), ({"epsilon": 1.0, "strength": 0.5}, "either"),
    ({"strength": 1.5}, "strength"),
])
def test_bad_arguments_raise_value_error(dummy_pipe, dummy_images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(dummy_pipe, dummy_images, **kwargs)


def test_bad_images_raise_value_error(dummy_pipe):
    with pytest.raises(ValueError, match="empty"):
        _call(dummy_pipe, [])
    with pytest.raises(ValueError, match="px"):
        _call(dummy_pipe, PIL.Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _call(dummy_pipe, torch.full((1, 3, 16, 16), 2.0))
    with pytest.raises(ValueError, match="unsupported type"):
        _call(dummy_pipe, ["not an image"])


def test_save_load_round_trip(dummy_pipe, dummy_images, tmp_path):
    dummy_pipe.save_pretrained(tmp_path)
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    again = DPDiffusionPipeline.from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    for name in ("unet", "encoder", "attribute_directions"):
        sa, sb = getattr(dummy_pipe, name).state_dict(), getattr(again, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    a = _call(dummy_pipe, dummy_images, epsilon=2.0).images
    b = _call(again, dummy_images, epsilon=2.0).images
    assert np.allclose(a, b, atol=1e-5)  # same weights; kernels may differ in the last float bits
    assert again.attribute_directions.clip_bounds == dummy_pipe.attribute_directions.clip_bounds


def test_custom_pipeline_entry_loads(dummy_pipe, tmp_path):
    from pathlib import Path

    from diffusers import DiffusionPipeline

    dummy_pipe.save_pretrained(tmp_path)
    entry = Path(__file__).resolve().parents[2] / "pipelines" / "dp_diffusion"
    pipe = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(entry), trust_remote_code=True)
    assert type(pipe).__name__ == "DPDiffusionPipeline"
    assert hasattr(pipe, "apply_privacy_noise")


def test_ledger_charges_and_refuses(dummy_pipe, dummy_images, tmp_path):
    from dpdiffusion.privacy.ledger import BudgetExceededError, PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=2.0, delta=1e-5)
    out = _call(dummy_pipe, dummy_images, epsilon=1.0, ledger=ledger, subject_ids=["a", "b"])
    assert all(0 < r < 2.0 for r in out.remaining_budget)
    before = ledger.spent("a")
    with pytest.raises(BudgetExceededError):
        _call(dummy_pipe, dummy_images, epsilon=2.0, ledger=ledger, subject_ids=["a", "b"])  # 1 (+) 2 > 2
    assert ledger.spent("a") == before
    with pytest.raises(ValueError, match="subject_ids"):
        _call(dummy_pipe, dummy_images, epsilon=1.0, ledger=ledger, subject_ids=["a"])


def test_post_processing_keeps_released_coordinates_in_public_bounds(dummy_pipe, dummy_images):
    dirs = dummy_pipe.attribute_directions
    z = dummy_pipe.encode(dummy_images)
    names = ["dark_skin", "long_hair"]
    bounds = dirs.clip_bound_tensor(names)
    z_clip, _ = dummy_pipe.apply_privacy_noise(z, attributes=names, epsilon=0.5, generator=_g())
    z_raw, _ = dummy_pipe.apply_privacy_noise(z, attributes=names, epsilon=0.5, generator=_g(), post_processing="none")
    a_clip, _ = dirs.project(z_clip, attributes=names)
    a_raw, _ = dirs.project(z_raw, attributes=names)
    assert torch.all(a_clip.abs() <= bounds * (1 + 1e-5))
    assert torch.any(a_raw.abs() > bounds)  # at epsilon 0.5 the raw noise is many times C
    assert torch.allclose(a_clip, torch.maximum(torch.minimum(a_raw, bounds), -bounds), atol=1e-5)
    with pytest.raises(ValueError, match="post_processing"):
        dummy_pipe.apply_privacy_noise(z, epsilon=1.0, post_processing="round")
