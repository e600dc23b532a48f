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
        # raw mechanism output: with the default clamp to the public bounds the distance saturates at small epsilon
        zs = [dummy_pipe.apply_privacy_noise(z, epsilon=eps, post_processing="none")[0] for _ in range(20)]
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


def test_seeded_mode_same_generator_same_output_other_seed_differs_and_says_so(dummy_pipe, dummy_images):
    a = _call(dummy_pipe, dummy_images, epsilon=1.0, generator=_g(3), secure_mode=False)
    b = _call(dummy_pipe, dummy_images, epsilon=1.0, generator=_g(3), secure_mode=False)
    c = _call(dummy_pipe, dummy_images, epsilon=1.0, generator=_g(4), secure_mode=False)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert (a.noise_source, a.guarantee) == ("seeded", "none (reproducible noise)")
    assert (a.report.noise_source, a.report.guarantee) == ("seeded", "none (reproducible noise)")


def test_default_release_is_csprng_formal_and_not_reproducible_from_its_generator(dummy_pipe, dummy_images):
    """The attacker's view: same input, same generator (x_T is the same), so only the privacy noise can differ.
    Epsilon 50: at small epsilon most noisy coordinates are clamped to a public bound, so two independent releases of
    a small batch coincide with a few per cent probability."""
    a = _call(dummy_pipe, dummy_images, epsilon=50.0, generator=_g(3))
    b = _call(dummy_pipe, dummy_images, epsilon=50.0, generator=_g(3))
    replay = _call(dummy_pipe, dummy_images, epsilon=50.0, generator=_g(3), secure_mode=False)
    assert (a.noise_source, a.guarantee) == ("csprng", "formal")
    assert not np.array_equal(a.images, b.images) and not np.array_equal(a.images, replay.images)


@pytest.mark.parametrize("code, secure, guarantee", [
    ("random", True, "formal"), ("inverted", True, "heuristic"),
    ("random", False, "none (reproducible noise)"), ("inverted", False, "none (reproducible noise)")])
def test_guarantee_follows_code_and_noise_source(dummy_pipe, dummy_images, code, secure, guarantee):
    out = _call(dummy_pipe, dummy_images, stochastic_code=code, secure_mode=secure)
    assert out.guarantee == out.report.guarantee == guarantee
    assert out.noise_source == ("csprng" if secure else "seeded")


def test_latent_scope_with_negligible_noise_returns_z(dummy_pipe):
    """Regression: scope="latent" dropped the offset A A^T c of the residual (z = c moved by 0.118)."""
    dirs = dummy_pipe.attribute_directions
    names = ["dark_skin"]
    d = dirs.center.shape[0]
    small = 0.05 * torch.randn(3, d, generator=_g(5))  # well inside every public bound
    z = dirs.center[None] + small  # (3, d)
    for scope in ("attributes", "latent"):
        z2, report = dummy_pipe.apply_privacy_noise(z, attributes=names, epsilon=1e10, delta=1e-5, scope=scope,
                                                    post_processing="none")
        # 8 noise stds: far below the 0.118 shift of the bug, so what remains is the noise, not a moved latent
        tol = 8 * max(*report.sigmas.values(), report.residual_sigma or 0.0)
        assert tol < 0.03 and (z2 - z).abs().max() < tol, scope
    # "clip": the posterior mean under the binned prior moves a coordinate to a bin's centre (up to C / 64)
    zc, report = dummy_pipe.apply_privacy_noise(dirs.center[None].clone(), attributes=names, epsilon=1e10,
                                                scope="latent", post_processing="clip")
    assert (zc - dirs.center[None]).abs().max() < 8 * max(*report.sigmas.values(), report.residual_sigma)


def test_strength_edges(dummy_pipe, dummy_images):
    from dpdiffusion.privacy.accounting import gaussian_epsilon

    out = _call(dummy_pipe, dummy_images, strength=0.0)
    assert 0 < out.epsilon < math.inf and out.strength == pytest.approx(0.0, abs=1e-3)
    # a strength whose noise needs no epsilon at that delta: a clear error naming strength, with the range that works
    with pytest.raises(ValueError, match=r"strength must be in \[0, "):
        dummy_pipe.privacy_spec(strength=0.99, delta=1e-2)
    import re

    try:
        dummy_pipe.privacy_spec(strength=0.99, delta=1e-2)
    except ValueError as exc:
        largest = float(re.search(r"\[0, ([0-9.e-]+)\]", str(exc)).group(1))
    spec = dummy_pipe.privacy_spec(strength=largest * 0.999, delta=1e-2)  # just inside works ...
    assert spec.epsilon > 0
    with pytest.raises(ValueError, match="strength must be in"):  # ... and just outside does not: the range is tight
        dummy_pipe.privacy_spec(strength=min(1.0, largest * 1.001), delta=1e-2)
    m = dummy_pipe.calibrate(spec).noise_multiplier
    assert gaussian_epsilon(sigma=m, delta=1e-2) == pytest.approx(spec.epsilon, rel=1e-9)


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
    a = _call(dummy_pipe, dummy_images, epsilon=2.0, secure_mode=False).images
    b = _call(again, dummy_images, epsilon=2.0, secure_mode=False).images
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
    assert [r.guarantee for r in ledger.history("a")] == ["formal"] and ledger.guarantee("a") == "formal"
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
    # seeded, so that both calls add the same noise
    z_clip, _ = dummy_pipe.apply_privacy_noise(z, attributes=names, epsilon=0.5, generator=_g(), secure_mode=False,
                                               post_processing="clip")
    z_raw, _ = dummy_pipe.apply_privacy_noise(z, attributes=names, epsilon=0.5, generator=_g(), secure_mode=False,
                                              post_processing="none")
    a_clip, _ = dirs.project(z_clip, attributes=names)
    a_raw, _ = dirs.project(z_raw, attributes=names)
    assert torch.all(a_clip.abs() <= bounds * (1 + 1e-5))
    assert torch.any(a_raw.abs() > bounds)  # at epsilon 0.5 the raw noise is many times C
    assert torch.allclose(a_clip, torch.maximum(torch.minimum(a_raw, bounds), -bounds), atol=1e-5)
    with pytest.raises(ValueError, match="post_processing"):
        dummy_pipe.apply_privacy_noise(z, epsilon=1.0, post_processing="round")


# ----------------------------------------------------------------------- behaves like every diffusers pipeline
def test_callback_on_step_end_sees_every_step_and_can_replace_and_stop(dummy_pipe, dummy_images):
    seen = []

    def record(pipe, i, t, kwargs):
        assert set(kwargs) == {"latents", "noise_pred"} and kwargs["latents"].shape == dummy_images.shape
        seen.append((i, int(t)))
        return kwargs

    _call(dummy_pipe, dummy_images, num_inference_steps=4, callback_on_step_end=record,
          callback_on_step_end_tensor_inputs=["latents", "noise_pred"])
    assert seen == [(i, int(t)) for i, t in enumerate(dummy_pipe.scheduler.timesteps)] and len(seen) == 4

    def grey_at_the_end(pipe, i, t, kwargs):  # a returned sample replaces the pipeline's
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 3 else kwargs

    out = _call(dummy_pipe, dummy_images, num_inference_steps=4, callback_on_step_end=grey_at_the_end)
    assert np.array_equal(out.images, np.full_like(out.images, 0.5))

    calls = []

    def stop_after_first(pipe, i, t, kwargs):
        calls.append(i)
        pipe._interrupt = True
        return kwargs

    _call(dummy_pipe, dummy_images, num_inference_steps=4, callback_on_step_end=stop_after_first)
    assert calls == [0]
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        _call(dummy_pipe, dummy_images, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["x0"])


def test_output_type_latent_returns_the_protected_latents(dummy_pipe, dummy_images):
    out = _call(dummy_pipe, dummy_images, epsilon=math.inf, output_type="latent")
    assert torch.equal(out.images, dummy_pipe.encode(dummy_images))  # mechanism off: the latents themselves
    noisy = _call(dummy_pipe, dummy_images, epsilon=1.0, output_type="latent")
    assert noisy.images.shape == out.images.shape and noisy.guarantee == "formal" and noisy.sigmas["dark_skin"] > 0
    assert not torch.equal(noisy.images, out.images)


def test_the_registered_scheduler_step_is_what_runs(dummy_components, dummy_images):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    class CountingDDIM(DDIMScheduler):
        calls = 0

        def step(self, *args, **kwargs):
            CountingDDIM.calls += 1
            return super().step(*args, **kwargs)

    components = dict(dummy_components)
    components["scheduler"] = CountingDDIM.from_config(dummy_components["scheduler"].config)
    pipe = DPDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    _call(pipe, dummy_images, num_inference_steps=3)
    assert CountingDDIM.calls == 3
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="scheduler must be a DDIMScheduler"):
        _call(pipe, dummy_images)


def test_model_cpu_offload_runs_and_gives_the_same_output(dummy_images):
    from dpd_test_components import get_dummy_components

    plain = DPDiffusionPipeline(**get_dummy_components())
    plain.set_progress_bar_config(disable=True)
    ref = _call(plain, dummy_images, secure_mode=False).images
    offloaded = DPDiffusionPipeline(**get_dummy_components())  # the same weights (seeded), with accelerate's hooks
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert str(offloaded._execution_device).startswith("cpu")
    got = _call(offloaded, dummy_images, secure_mode=False).images
    assert np.array_equal(got, ref)


def test_step_count_defaults_follow_the_stochastic_code(dummy_pipe, dummy_images, monkeypatch):
    """No step count: a random code decodes on DEFAULT_NUM_INFERENCE_STEPS (5); "inverted" inverts and decodes on
    DEFAULT_INVERSION_STEPS (25), the same grid for both; a given count is used for both as it is."""
    import dpdiffusion.pipeline_dp_diffusion as module
    from dpdiffusion.models.steps import DEFAULT_INVERSION_STEPS, DEFAULT_NUM_INFERENCE_STEPS

    assert (DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_INVERSION_STEPS) == (5, 25)
    seen = []
    real_invert, real_denoise, real_pipe_invert = module.ddim_invert, dummy_pipe._denoise, dummy_pipe.invert
    monkeypatch.setattr(module, "ddim_invert", lambda u, s, x, c, n: seen.append(("invert", n)) or real_invert(u, s, x, c, n))
    monkeypatch.setattr(dummy_pipe, "invert", lambda im, z=None, *, num_inference_steps=5, **kw: seen.append(
        ("invert", num_inference_steps)) or real_pipe_invert(im, z, num_inference_steps=num_inference_steps, **kw))
    monkeypatch.setattr(dummy_pipe, "_denoise", lambda x_t, c, gc, scale, n, **kw: seen.append(("decode", n))
                        or real_denoise(x_t, c, gc, scale, n, **kw))
    dummy_pipe(dummy_images, epsilon=1.0, output_type="np")
    assert seen == [("decode", 5)]
    seen.clear()
    out = dummy_pipe(dummy_images, epsilon=1.0, stochastic_code="inverted", output_type="np")
    assert seen == [("invert", 25), ("decode", 25)] and out.guarantee == "heuristic"
    seen.clear()
    dummy_pipe(dummy_images, epsilon=1.0, stochastic_code="inverted", num_inference_steps=3, output_type="np")
    assert seen == [("invert", 3), ("decode", 3)]
    seen.clear()
    z = dummy_pipe.encode(dummy_images)
    dummy_pipe.decode(z, output_type="np", progress=False)
    dummy_pipe.decode(z, stochastic_code="inverted", image=dummy_images, output_type="np", progress=False)
    assert seen == [("decode", 5), ("invert", 25), ("decode", 25)]
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1, got num_inference_steps=0"):
        dummy_pipe.decode(z, num_inference_steps=0, output_type="np")
