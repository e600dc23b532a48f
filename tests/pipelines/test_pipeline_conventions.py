"""``DPDiffusionPipeline`` behaves as diffusers' pipeline tests expect (issue 35).

diffusers' ``PipelineTesterMixin`` (``tests/pipelines/test_pipelines_common.py`` of huggingface/diffusers) is not part
of the diffusers wheel, so it cannot be imported here; ``TestDiffusersPipelineConventions`` checks the same behaviours,
written from what the mixin's tests do (diffusers 0.42), on the project's tiny components, seeded
(``secure_mode=False``, so that outputs are reproducible). Mixin test -> here:

==============================================  =====================================================================
test_pipeline_call_signature                    test_call_signature (``latents`` left out: see its docstring)
test_components_function                        test_components_function
test_save_load_local                            test_save_load_local (+ the ``.bin`` case: refused by default, with
                                                the way to load it; ``use_safetensors=False`` loads it)
test_save_load_optional_components              not applicable: no ``_optional_components``
test_dict_tuple_outputs_equivalent              test_dict_tuple_outputs_equivalent
test_inference_batch_consistent                 test_inference_batch_consistent
test_inference_batch_single_identical           test_inference_batch_single_identical
test_num_images_per_prompt                      test_num_images_per_prompt (+ the order and generator convention)
test_cfg                                        test_guidance_scale_changes_the_output_not_its_shape
test_callback_inputs                            test_callback_inputs
test_callback_cfg                               test_callback_cfg
test_progress_bar                               test_progress_bar
test_to_device / test_to_dtype                  test_to_device, test_to_dtype
test_float16_inference / test_save_load_float16  test_float16_inference, test_save_load_float16 (on the CPU: the mixin
                                                asks for an accelerator, float16 kernels run on the CPU too)
test_torch_dtype_dict                           test_dtype_dict
test_attention_slicing_forward_pass             test_attention_slicing_forward_pass (a no-op: diffusers 0.42's
                                                ``UNet2DModel`` has no ``set_attention_slice``)
test_model_cpu_offload_forward_pass (+ twice)   test_model_cpu_offload_forward_pass_twice (``device="cpu"``)
test_sequential_cpu_offload_forward_pass        not applicable here: needs an accelerator; on the CPU accelerate's hooks
                                                fail in ``set_module_tensor_to_device`` for diffusers' own
                                                ``DDPMPipeline`` too (checked with diffusers 0.42, accelerate here)
test_group_offloading_inference                 test_group_offloading_inference (onload and offload on the CPU)
test_layerwise_casting_inference                test_layerwise_casting_inference (bfloat16 compute)
test_serialization_with_variants,               test_serialization_with_variants, test_loading_with_variants,
test_loading_with_variants,                     test_loading_with_incorrect_variants_raises_error
test_loading_with_incorrect_variants_...
PipelineFromPipeTesterMixin                     test_from_pipe
test_xformers_attention, test_encode_prompt_*,  not applicable: CUDA only, no prompt / text encoder, no DDUF export of
test_save_load_dduf, device-map tests           this package's components, several accelerators
==============================================  =====================================================================

The acceptance figures of the issue follow the tester: float inputs are kept as floats, the value range is said
(never guessed), and ``num_images_per_prompt`` releases are separate charges and separate draws.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings

import numpy as np
import pytest
import torch

from dpdiffusion import DPDiffusionPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _np(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def _quiet(pipe: DPDiffusionPipeline) -> DPDiffusionPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


class TestDiffusersPipelineConventions:
    """What diffusers' ``PipelineTesterMixin`` checks, on ``DPDiffusionPipeline`` (see the module's table)."""

    pipeline_class = DPDiffusionPipeline
    params = frozenset(["image", "attributes", "weights", "epsilon", "strength", "delta", "guidance_scale"])
    batch_params = frozenset(["image"])
    # diffusers' required_optional_params less "latents" (see test_call_signature)
    required_optional_params = frozenset(["num_inference_steps", "num_images_per_prompt", "generator", "output_type",
                                          "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs"])

    def get_dummy_components(self) -> dict:
        from dpd_test_components import get_dummy_components

        return get_dummy_components()

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        image = torch.rand(1, 3, 16, 16, generator=_gen(100 + seed))  # (1, 3, H, W) in [0, 1], as diffusers' inputs
        return {"image": image, "attributes": ["dark_skin"], "epsilon": 1.0, "num_inference_steps": 2,
                "generator": _gen(seed), "output_type": "np", "secure_mode": False}

    def pipe(self) -> DPDiffusionPipeline:
        return _quiet(self.pipeline_class(**self.get_dummy_components()))

    # ------------------------------------------------------------------------------------------ signature, parts
    def test_call_signature(self):
        """Every parameter the mixin requires is an argument of ``__call__`` (with a default where optional).

        ``latents`` (diffusers: a caller-given initial noise) is left out on purpose: here it would be the stochastic
        code ``x_T``, and a code chosen by the caller can carry information about the image (an inverted code does),
        which the accountant does not cover; ``stochastic_code="random" | "inverted"`` says which code is used and the
        guarantee follows it. ``decode(z, stochastic_code=x_T)`` takes a given code for research."""
        parameters = inspect.signature(self.pipeline_class.__call__).parameters
        assert self.params <= set(parameters), self.params - set(parameters)
        optional = {k for k, p in parameters.items() if p.default is not inspect.Parameter.empty}
        assert self.required_optional_params <= optional, self.required_optional_params - optional
        assert "image" in parameters and list(parameters)[1] == "image"  # the first, positional: pipe(image, ...)

    def test_components_function(self):
        init = self.get_dummy_components()
        pipe = self.pipeline_class(**init)
        assert set(pipe.components) == set(init)
        assert all(pipe.components[k] is v for k, v in init.items())

    # ------------------------------------------------------------------------------------------ save and load
    def test_save_load_local(self, tmp_path):
        pipe = self.pipe()
        out = pipe(**self.get_dummy_inputs())[0]
        pipe.save_pretrained(tmp_path)
        loaded = _quiet(self.pipeline_class.from_pretrained(tmp_path))
        assert set(loaded.components) == set(pipe.components)
        out_loaded = loaded(**self.get_dummy_inputs())[0]
        assert np.abs(_np(out) - _np(out_loaded)).max() < 1e-4

    def test_save_load_local_pickled_weights(self, tmp_path):
        """The mixin saves with ``safe_serialization=False``: the ``.bin`` folder is refused by default with a message
        that says a ``.bin`` is there, why, and that ``use_safetensors=False`` loads it (which then works)."""
        pipe = self.pipe()
        out = pipe(**self.get_dummy_inputs())[0]
        pipe.save_pretrained(tmp_path, safe_serialization=False)
        with pytest.raises(OSError) as info:
            self.pipeline_class.from_pretrained(tmp_path)
        message = str(info.value)
        assert "diffusion_pytorch_model.bin" in message and "use_safetensors=False" in message
        assert "no .safetensors file" in message and "execute arbitrary code" in message
        loaded = _quiet(self.pipeline_class.from_pretrained(tmp_path, use_safetensors=False))
        assert np.abs(_np(out) - _np(loaded(**self.get_dummy_inputs())[0])).max() < 1e-4

    def test_serialization_with_variants(self, tmp_path):
        pipe = self.pipe()
        models = [name for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)]
        pipe.save_pretrained(tmp_path, variant="fp16", safe_serialization=False)
        for name in models:
            assert any(p.name.split(".")[1] == "fp16" for p in (tmp_path / name).iterdir() if p.suffix == ".bin"), name

    def test_loading_with_variants(self, tmp_path):
        pipe = self.pipe()
        pipe.save_pretrained(tmp_path / "bin", variant="fp16", safe_serialization=False)
        pipe.save_pretrained(tmp_path / "safe", variant="fp16")
        for folder, options in ((tmp_path / "bin", {"use_safetensors": False}), (tmp_path / "safe", {})):
            loaded = self.pipeline_class.from_pretrained(folder, variant="fp16", **options)
            for name, component in pipe.components.items():
                if isinstance(component, torch.nn.Module):
                    a, b = component.state_dict(), loaded.components[name].state_dict()
                    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def test_loading_with_incorrect_variants_raises_error(self, tmp_path):
        self.pipe().save_pretrained(tmp_path)  # no variant
        with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
            self.pipeline_class.from_pretrained(tmp_path, variant="fp16")

    def test_from_pipe(self):
        pipe = self.pipe()
        again = _quiet(self.pipeline_class.from_pipe(pipe))
        assert all(again.components[k] is v for k, v in pipe.components.items())  # shared, not copied
        a, b = pipe(**self.get_dummy_inputs())[0], again(**self.get_dummy_inputs())[0]
        assert np.array_equal(a, b)

    # ------------------------------------------------------------------------------------------ outputs and batches
    def test_dict_tuple_outputs_equivalent(self):
        pipe = self.pipe()
        as_dict = pipe(**self.get_dummy_inputs())[0]
        as_tuple = pipe(**self.get_dummy_inputs(), return_dict=False)
        assert isinstance(as_tuple, tuple) and as_tuple[1].epsilon <= 1.0  # (images, report)
        assert np.abs(_np(as_dict) - _np(as_tuple[0])).max() < 1e-4

    def test_inference_batch_consistent(self):
        """The mixin's batch: ``batch_size * [image]`` (a list of (1, 3, H, W) tensors) and one generator each."""
        pipe = self.pipe()
        for batch_size in (2, 3):
            inputs = self.get_dummy_inputs()
            inputs["image"] = batch_size * [inputs["image"]]
            inputs["generator"] = [_gen(i) for i in range(batch_size)]
            assert len(pipe(**inputs)[0]) == batch_size

    def test_inference_batch_single_identical(self):
        pipe = self.pipe()
        single = pipe(**self.get_dummy_inputs())[0]
        inputs = self.get_dummy_inputs()
        inputs["image"] = 3 * [inputs["image"]]
        inputs["generator"] = [_gen(i) for i in range(3)]
        batch = pipe(**inputs)[0]
        assert batch.shape[0] == 3
        assert np.abs(batch[0] - single[0]).max() < 1e-4
        assert np.abs(batch[1] - single[0]).max() > 1e-3  # another generator: another release

    def test_num_images_per_prompt(self):
        pipe = self.pipe()
        for batch_size in (1, 2):
            for num_images_per_prompt in (1, 2, 3):
                inputs = self.get_dummy_inputs()
                inputs["image"] = batch_size * [inputs["image"]]
                images = pipe(**inputs, num_images_per_prompt=num_images_per_prompt)[0]
                assert images.shape[0] == batch_size * num_images_per_prompt

    def test_num_images_per_prompt_order_and_generator_list(self):
        """diffusers' order (every release of image 0, then of image 1) and its generator lists: one generator per
        released image; release k depends on ``generator[k]`` only and equals the single release with it."""
        pipe = self.pipe()
        images = torch.rand(2, 3, 16, 16, generator=_gen(7))
        inputs = dict(self.get_dummy_inputs(), image=images, generator=[_gen(10 + k) for k in range(6)])
        out = pipe(**inputs, num_images_per_prompt=3)[0]  # (6, H, W, 3)
        for k in range(6):
            one = pipe(**dict(self.get_dummy_inputs(), image=images[k // 3:k // 3 + 1], generator=_gen(10 + k)))[0]
            assert np.abs(out[k] - one[0]).max() < 1e-4, k
        with pytest.raises(ValueError, match=r"a list of 6 of them .*2 image\(s\) x num_images_per_prompt=3"):
            pipe(**dict(inputs, generator=[_gen(k) for k in range(2)]), num_images_per_prompt=3)
        with pytest.raises(ValueError, match="num_images_per_prompt must be an integer >= 1"):
            pipe(**self.get_dummy_inputs(), num_images_per_prompt=0)

    def test_guidance_scale_changes_the_output_not_its_shape(self):
        pipe = self.pipe()
        plain = pipe(**dict(self.get_dummy_inputs(), guidance_scale=1.0))[0]
        guided = pipe(**dict(self.get_dummy_inputs(), guidance_scale=7.5))[0]
        assert plain.shape == guided.shape and not np.array_equal(plain, guided)

    # ------------------------------------------------------------------------------------------ callbacks
    def test_callback_inputs(self):
        pipe = self.pipe()
        assert set(pipe._callback_tensor_inputs) == {"latents", "noise_pred"}

        def subset(pipe, i, t, callback_kwargs):
            assert set(callback_kwargs) <= set(pipe._callback_tensor_inputs)
            return callback_kwargs

        def every(pipe, i, t, callback_kwargs):
            assert set(callback_kwargs) == set(pipe._callback_tensor_inputs)
            assert all(isinstance(v, torch.Tensor) for v in callback_kwargs.values())
            return callback_kwargs

        pipe(**self.get_dummy_inputs(), callback_on_step_end=subset, callback_on_step_end_tensor_inputs=["latents"])
        pipe(**self.get_dummy_inputs(), callback_on_step_end=every,
             callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)

        def zero_at_the_last_step(pipe, i, t, callback_kwargs):  # pipe.num_timesteps, read inside the callback
            if i == pipe.num_timesteps - 1:
                callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
            return callback_kwargs

        out = pipe(**self.get_dummy_inputs(), callback_on_step_end=zero_at_the_last_step,
                   callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)[0]
        assert pipe.num_timesteps == 2 and np.array_equal(out, np.full_like(out, 0.5))  # x_0 = 0 is grey

    def test_callback_cfg(self):
        """A callback reads and changes ``pipe.guidance_scale``; the next steps use it."""
        pipe = self.pipe()
        seen = []

        def increase_guidance(pipe, i, t, callback_kwargs):
            seen.append(pipe.guidance_scale)
            pipe._guidance_scale += 1.0
            return callback_kwargs

        inputs = dict(self.get_dummy_inputs(), guidance_scale=2.0, num_inference_steps=3)
        changed = pipe(**inputs, callback_on_step_end=increase_guidance,
                       callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)[0]
        assert seen == [2.0, 3.0, 4.0] and pipe.guidance_scale == inputs["guidance_scale"] + pipe.num_timesteps
        fixed = pipe(**inputs)[0]
        assert pipe.guidance_scale == 2.0 and not np.array_equal(changed, fixed)  # the new scale was used

    def test_progress_bar(self):
        pipe = self.pipeline_class(**self.get_dummy_components())  # the default progress bar
        with io.StringIO() as stderr, contextlib.redirect_stderr(stderr):
            pipe(**self.get_dummy_inputs())
            text = stderr.getvalue()
        max_steps = re.search("/(.*?) ", text).group(1)
        assert max_steps and f"{max_steps}/{max_steps}" in text
        pipe.set_progress_bar_config(disable=True)
        with io.StringIO() as stderr, contextlib.redirect_stderr(stderr):
            pipe(**self.get_dummy_inputs())
            assert stderr.getvalue() == ""

    # ------------------------------------------------------------------------------------------ devices and dtypes
    def test_to_device(self):
        pipe = self.pipe().to("cpu")
        assert all(c.device.type == "cpu" for c in pipe.components.values() if hasattr(c, "device"))
        assert np.isfinite(pipe(**self.get_dummy_inputs())[0]).all()

    def test_to_dtype(self):
        pipe = self.pipe()
        modules = [c for c in pipe.components.values() if hasattr(c, "dtype")]
        assert len(modules) == 3 and all(m.dtype == torch.float32 for m in modules)
        pipe.to(dtype=torch.float16)
        assert all(m.dtype == torch.float16 for m in modules)

    @pytest.mark.filterwarnings("ignore:.*kept in float32")
    def test_float16_inference(self):
        reference = self.pipe()(**self.get_dummy_inputs())[0]
        half = self.pipe().to(dtype=torch.float16)
        out = half(**self.get_dummy_inputs())[0]
        assert np.abs(_np(out) - _np(reference)).max() < 5e-2  # the mixin's tolerance

    def test_save_load_float16(self, tmp_path):
        pipe = self.pipe().to(dtype=torch.float16)
        out = pipe(**self.get_dummy_inputs())[0]
        pipe.save_pretrained(tmp_path)
        loaded = _quiet(self.pipeline_class.from_pretrained(tmp_path, dtype=torch.float16))
        assert all(c.dtype == torch.float16 for c in loaded.components.values() if hasattr(c, "dtype"))
        assert np.abs(_np(out) - _np(loaded(**self.get_dummy_inputs())[0])).max() < 1e-2

    def test_dtype_dict(self, tmp_path):
        self.pipe().save_pretrained(tmp_path)
        loaded = self.pipeline_class.from_pretrained(tmp_path, dtype={"unet": torch.bfloat16, "default": torch.float16})
        assert loaded.unet.dtype == torch.bfloat16
        assert loaded.encoder.dtype == loaded.attribute_directions.dtype == torch.float16

    def test_attention_slicing_forward_pass(self):
        pipe = self.pipe()
        plain = pipe(**self.get_dummy_inputs())[0]
        pipe.enable_attention_slicing(slice_size=1)
        assert np.abs(plain - pipe(**self.get_dummy_inputs())[0]).max() < 1e-3

    def test_model_cpu_offload_forward_pass_twice(self):
        """The mixin asks for an accelerator; ``device="cpu"`` runs the same hooks (the sequence
        ``model_cpu_offload_seq`` names every model that runs)."""
        plain = self.pipe()(**self.get_dummy_inputs())[0]
        pipe = self.pipe()
        assert set(pipe.model_cpu_offload_seq.split("->")) <= set(pipe.components)
        pipe.enable_model_cpu_offload(device="cpu")
        first = pipe(**self.get_dummy_inputs())[0]
        second = pipe(**self.get_dummy_inputs())[0]
        assert np.abs(first - plain).max() < 1e-4 and np.abs(second - plain).max() < 1e-4

    def test_group_offloading_inference(self):
        plain = self.pipe()(**self.get_dummy_inputs())[0]
        pipe = self.pipe()
        cpu = torch.device("cpu")
        for name in ("unet", "encoder"):
            pipe.components[name].enable_group_offload(onload_device=cpu, offload_device=cpu,
                                                       offload_type="block_level", num_blocks_per_group=1)
        assert np.abs(pipe(**self.get_dummy_inputs())[0] - plain).max() < 1e-4

    @pytest.mark.filterwarnings("ignore:.*kept in float32")
    def test_layerwise_casting_inference(self):
        pipe = self.pipe().to(dtype=torch.bfloat16)
        pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        assert np.isfinite(_np(pipe(**self.get_dummy_inputs())[0])).all()


# ---------------------------------------------------------------------------------------- the acceptance
def test_image_is_the_argument_and_images_still_works_with_a_deprecation_warning(dummy_pipe, dummy_images):
    kw = {"epsilon": 1.0, "num_inference_steps": 2, "output_type": "np", "secure_mode": False}
    new = dummy_pipe(image=dummy_images, generator=_gen(), **kw).images
    with pytest.warns(FutureWarning, match=r"`images` argument is deprecated .* 0\.3\.0\. Use `image` instead") as rec:
        old = dummy_pipe(images=dummy_images, generator=_gen(), **kw).images
    assert np.array_equal(new, old)
    assert rec[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(FutureWarning):
        assert torch.equal(dummy_pipe.encode(images=dummy_images), dummy_pipe.encode(image=dummy_images))
    with pytest.warns(FutureWarning):
        assert torch.equal(dummy_pipe.invert(images=dummy_images, num_inference_steps=2),
                           dummy_pipe.invert(dummy_images, num_inference_steps=2))
    z = dummy_pipe.encode(dummy_images)
    with pytest.warns(FutureWarning):
        a = dummy_pipe.decode(z, stochastic_code="inverted", images=dummy_images, num_inference_steps=2,
                              output_type="np", progress=False)
    assert np.array_equal(a, dummy_pipe.decode(z, stochastic_code="inverted", image=dummy_images,
                                               num_inference_steps=2, output_type="np", progress=False))
    with pytest.raises(ValueError, match="not both"):
        dummy_pipe(image=dummy_images, images=dummy_images, **kw)
    with pytest.raises(TypeError, match="unexpected keyword argument 'imgs'"):
        dummy_pipe(imgs=dummy_images, **kw)
    with pytest.raises(ValueError, match="image must be given"):
        dummy_pipe(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new name warns about nothing
        dummy_pipe(dummy_images, generator=_gen(), **kw)


def test_a_list_of_batches_is_concatenated_as_diffusers_does(dummy_pipe, dummy_images):
    kw = {"epsilon": 1.0, "num_inference_steps": 2, "output_type": "np", "secure_mode": False}
    whole = dummy_pipe(dummy_images, generator=_gen(), **kw).images
    listed = dummy_pipe([dummy_images[:1], dummy_images[1:]], generator=_gen(), **kw).images
    assert np.array_equal(whole, listed)
    arrays = [dummy_images[i:i + 1].permute(0, 2, 3, 1).numpy() for i in range(2)]  # (1, H, W, 3) each
    assert torch.equal(dummy_pipe.preprocess(arrays), dummy_pipe.preprocess(dummy_images))


def test_float_inputs_are_kept_as_floats(dummy_pipe):
    """Acceptance: a float tensor and its 8-bit-rounded twin give different latents; at the model's size the float
    values reach the encoder exactly (rescaled to [-1, 1])."""
    x = torch.rand(2, 3, 16, 16, generator=_gen(3), dtype=torch.float64).float()
    rounded = (x * 255).round() / 255
    assert torch.equal(dummy_pipe.preprocess(x), x * 2 - 1)
    z, z8 = dummy_pipe.encode(x), dummy_pipe.encode(rounded)
    gap = float((z - z8).abs().max())
    print(f"max |z(float) - z(8-bit twin)| = {gap:.3g}")
    assert gap > 1e-5
    # arrays too (channel-last float32), and a resize stays in floats: no 8-bit step anywhere
    arr = x[0].permute(1, 2, 0).numpy()
    assert torch.equal(dummy_pipe.preprocess(arr), x[:1] * 2 - 1)
    big = torch.rand(1, 3, 40, 40, generator=_gen(4))
    y = dummy_pipe.preprocess(big)
    assert not torch.equal(y, (((y + 1) / 2 * 255).round() / 255) * 2 - 1)
    # 8-bit inputs stay 8-bit
    u8 = (rounded[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert torch.equal(dummy_pipe.preprocess(u8), dummy_pipe.preprocess(rounded[:1]))


def test_input_range_is_said_not_guessed(dummy_pipe):
    """Acceptance: ``invert`` of a tensor in [-1, 1] (said so) equals ``invert`` of the same image in [0, 1] to float
    precision, also for a bright image whose values are all >= 0 (which a guess from the minimum reads wrongly)."""
    x01 = torch.rand(2, 3, 16, 16, generator=_gen(5))
    bright = 0.2 + 0.8 * x01  # in [-1, 1] and all >= 0.2: "min >= 0" would have rescaled it
    for model_range in (x01 * 2 - 1, bright):
        same_in_01 = (model_range + 1) / 2
        a = dummy_pipe.invert(model_range, num_inference_steps=3, input_range=(-1, 1))
        b = dummy_pipe.invert(same_in_01, num_inference_steps=3)
        print(f"max |invert([-1, 1]) - invert([0, 1])| = {float((a - b).abs().max()):.3g}")
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(dummy_pipe.preprocess(model_range, input_range=(-1, 1)), model_range,
                                   rtol=0, atol=1e-6)
        assert torch.equal(dummy_pipe.encode(model_range, input_range=(-1, 1)), dummy_pipe.encode(same_in_01))
    # the default is diffusers' [0, 1]: a negative value is refused with the way to say [-1, 1], never guessed
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*input_range=\(-1, 1\)"):
        dummy_pipe.invert(x01 * 2 - 1, num_inference_steps=2)
    with pytest.raises(ValueError, match="input_range must be"):
        dummy_pipe.preprocess(x01, input_range=(0, 255))
    out = dummy_pipe(bright, input_range=(-1, 1), epsilon=1.0, num_inference_steps=2, output_type="np",
                     generator=_gen(), secure_mode=False)
    ref = dummy_pipe((bright + 1) / 2, epsilon=1.0, num_inference_steps=2, output_type="np", generator=_gen(),
                     secure_mode=False)
    assert np.abs(out.images - ref.images).max() < 1e-5


def test_num_images_per_prompt_charges_each_release_and_draws_fresh_noise(dummy_pipe, dummy_images, tmp_path):
    """Acceptance: ``num_images_per_prompt=3`` with a ledger: three charges per subject, three different releases
    (fresh CSPRNG privacy noise each: the protected latents differ), the report says 3 releases per image."""
    from dpdiffusion.privacy.ledger import BudgetExceededError, PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=10.0, delta=1e-5)
    kw = {"attributes": ["dark_skin"], "epsilon": 1.0, "num_inference_steps": 2, "ledger": ledger}
    # the raw mechanism (post_processing="none"): clamping to the public bounds can make two releases coincide
    out = dummy_pipe(dummy_images, subject_ids=["ann", "bob"], num_images_per_prompt=3, output_type="latent",
                     post_processing="none", **kw)
    assert out.images.shape[0] == 6 and out.report.releases_per_image == 3 and out.guarantee == "formal"
    assert out.epsilon <= 1.0  # the figures of one release; the ledger composes the three
    assert [len(ledger.history(s)) for s in ("ann", "bob")] == [3, 3]
    z = out.images  # (6, d): rows 0-2 release ann's image, rows 3-5 bob's
    for i in (0, 3):
        assert len({tuple(z[i + j].tolist()) for j in range(3)}) == 3, i
    _, r = dummy_pipe.attribute_directions.project(z, attributes=["dark_skin"])  # the residual is not noised
    assert torch.allclose(r[0], r[1], atol=1e-5) and torch.allclose(r[3], r[5], atol=1e-5)
    # three separate charges compose exactly as three single releases do
    single = PrivacyLedger(tmp_path / "single.sqlite", budget_epsilon=10.0, delta=1e-5)
    for _ in range(3):
        dummy_pipe(dummy_images[:1], subject_ids=["ann"], output_type="latent", **dict(kw, ledger=single))
    assert ledger.spent("ann") == pytest.approx(single.spent("ann"), rel=1e-12)
    assert out.remaining_budget[:3] == [ledger.remaining("ann")] * 3
    # decoded: three different images of one input, each its own release
    images = dummy_pipe(dummy_images[:1], attributes=["dark_skin"], epsilon=1.0, num_inference_steps=2,
                        num_images_per_prompt=3, output_type="np", generator=_gen()).images
    assert images.shape[0] == 3 and len({images[k].tobytes() for k in range(3)}) == 3
    # all or nothing: a batch whose n-th release would overspend charges nothing
    tight = PrivacyLedger(tmp_path / "tight.sqlite", budget_epsilon=2.0, delta=1e-5)
    with pytest.raises(BudgetExceededError):
        dummy_pipe(dummy_images[:1], subject_ids=["cy"], num_images_per_prompt=5, output_type="latent",
                   **dict(kw, ledger=tight))
    assert tight.history("cy") == []


def test_num_images_per_prompt_with_faces_detect_is_refused(dummy_pipe):
    with pytest.raises(ValueError, match="num_images_per_prompt applies to faces='aligned' only"):
        dummy_pipe(np.zeros((64, 64, 3), dtype=np.uint8), faces="detect", num_images_per_prompt=2)


def test_custom_pipeline_files_are_the_same_re_export():
    """``pipelines/dp_diffusion/pipeline.py`` (the repository's entry) and ``dpdiffusion/custom_pipeline/pipeline.py``
    (what ``push_to_hub`` uploads) are one file that imports the package: no copy of the pipeline to keep in step."""
    from pathlib import Path

    from dpdiffusion.pipeline_hub import CUSTOM_PIPELINE_FILE

    entry = Path(__file__).resolve().parents[2] / "pipelines" / "dp_diffusion" / "pipeline.py"
    assert entry.read_bytes() == CUSTOM_PIPELINE_FILE.read_bytes()
    assert "from dpdiffusion.pipeline_dp_diffusion import DPDiffusionPipeline" in entry.read_text()
