"""Property-based tests over the public API's arguments (Hypothesis).

The promise: every invalid value of a public argument raises ``ValueError`` whose message names that argument (and,
for ranges, states the allowed range); every valid value works. One argument at a time is drawn invalid, the others
valid, so the message can be checked to name the right argument. Never another exception type, never a silent wrong
answer.

Every example drawn is counted (``COUNTS``); the totals are printed at the end of the module (in the terminal summary,
also without ``-s``) and written to ``$DPDIFFUSION_PROPERTY_COUNTS`` when that variable names a file.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections import Counter

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from _reliability import dummy_pipe as _build_pipe
from dpdiffusion.data.images import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, images_to_tensor
from dpdiffusion.privacy import mechanism
from dpdiffusion.privacy.accounting import gaussian_epsilon, gaussian_sigma
from dpdiffusion.privacy.ledger import PrivacyLedger
from dpdiffusion.privacy.spec import PrivacySpec
from dpdiffusion.protect import ProtectConfig, protect_dataset

COUNTS: Counter = Counter()  # "invalid:<function>:<argument>" and "valid:<function>" -> examples tried
NAN = float("nan")
INF = float("inf")

SETTINGS = settings(deadline=None, max_examples=40, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])
SLOW_SETTINGS = settings(SETTINGS, max_examples=10)


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pipe():
    return _build_pipe()


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    invalid = sum(v for k, v in COUNTS.items() if k.startswith("invalid:"))
    valid = sum(v for k, v in COUNTS.items() if k.startswith("valid:"))
    lines = [f"property tests: {invalid} invalid inputs tried (each raised a ValueError naming its argument), "
             f"{valid} valid inputs tried (each worked)"]
    lines += [f"  {k}: {v}" for k, v in sorted(COUNTS.items())]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():  # shown without -s
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
    path = os.environ.get("DPDIFFUSION_PROPERTY_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump({"invalid": invalid, "valid": valid, "by_argument": dict(sorted(COUNTS.items()))}, f, indent=1)



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from threads; two OpenMP threads on a busy two-core machine spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------------- strategies
not_a_number = st.one_of(st.none(), st.text(max_size=4), st.booleans(), st.lists(st.floats(0.1, 2), max_size=2),
                         st.just(object()), st.complex_numbers(allow_nan=False, allow_infinity=False, min_magnitude=1))
bad_epsilon = st.one_of(st.floats(max_value=0.0), st.just(NAN), not_a_number)
good_epsilon = st.one_of(st.floats(min_value=1e-3, max_value=1e6), st.just(INF))
bad_delta = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(NAN), not_a_number)
good_delta = st.floats(min_value=1e-12, max_value=0.999)
bad_positive = st.one_of(st.floats(max_value=0.0), st.just(INF), st.just(NAN), not_a_number)  # finite and > 0
ATTRS = ("dark_skin", "long_hair", "smiling")
good_attributes = st.lists(st.sampled_from(ATTRS), min_size=1, max_size=3, unique=True)
bad_attribute_list = st.one_of(
    st.just([]),
    st.text(min_size=1, max_size=8),  # one string instead of a list
    st.integers(),  # not iterable
    st.lists(st.sampled_from(ATTRS), min_size=2, max_size=4).filter(lambda a: len(set(a)) < len(a)),  # duplicates
    st.lists(st.one_of(st.integers(), st.just(""), st.none()), min_size=1, max_size=2),  # not non-empty str
)


def _weights_for(attrs):
    return st.one_of(st.none(), st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=len(attrs),
                                         max_size=len(attrs)))


def _bad_weights_for(attrs):
    n = len(attrs)
    return st.one_of(
        st.lists(st.floats(min_value=0.1, max_value=10), min_size=0, max_size=5).filter(lambda w: len(w) != n),
        st.lists(st.floats(min_value=0.1, max_value=10), min_size=n, max_size=n).flatmap(
            lambda w: st.tuples(st.integers(0, n - 1), bad_positive).map(
                lambda p: [p[1] if i == p[0] else x for i, x in enumerate(w)])),
        st.integers(), st.text(min_size=1, max_size=3),
    )


def _expect_value_error(fn, argument, *, also=()):
    """``fn()`` must raise ``ValueError`` whose message names ``argument`` (or one of ``also``)."""
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert any(name in message for name in (argument, *also)), f"{argument!r} not named in: {message}"
    return message


# ------------------------------------------------------------------------------------------------- PrivacySpec
SPEC_FIELDS = ("epsilon", "delta", "attributes", "weights", "scope", "stochastic_code", "residual_weight")


@st.composite
def spec_kwargs(draw, invalid=None):
    attrs = draw(good_attributes)
    kwargs = dict(epsilon=draw(st.one_of(st.floats(min_value=5e-324, allow_infinity=True, allow_nan=False))),
                  delta=draw(st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True)),
                  attributes=attrs, weights=draw(_weights_for(attrs)),
                  scope=draw(st.sampled_from(["attributes", "latent"])),
                  stochastic_code=draw(st.sampled_from(["random", "inverted"])),
                  residual_weight=draw(st.floats(min_value=1e-3, max_value=1e3)))
    if invalid == "epsilon":
        kwargs["epsilon"] = draw(bad_epsilon)
    elif invalid == "delta":
        kwargs["delta"] = draw(bad_delta)
    elif invalid == "attributes":
        kwargs["attributes"] = draw(bad_attribute_list)
        kwargs["weights"] = None
    elif invalid == "weights":
        kwargs["weights"] = draw(_bad_weights_for(attrs))
    elif invalid == "scope":
        kwargs["scope"] = draw(st.one_of(st.text(max_size=8), st.none()).filter(lambda s: s not in ("attributes", "latent")))
    elif invalid == "stochastic_code":
        kwargs["stochastic_code"] = draw(st.one_of(st.text(max_size=8), st.none()).filter(
            lambda s: s not in ("random", "inverted")))
    elif invalid == "residual_weight":
        kwargs["residual_weight"] = draw(bad_positive)
    return kwargs


@pytest.mark.parametrize("field", SPEC_FIELDS)
@SETTINGS
@given(data=st.data())
def test_privacy_spec_rejects_each_invalid_field(field, data):
    kwargs = data.draw(spec_kwargs(invalid=field))
    COUNTS[f"invalid:PrivacySpec:{field}"] += 1
    _expect_value_error(lambda: PrivacySpec(**kwargs), field)


@SETTINGS
@given(kwargs=spec_kwargs())
def test_privacy_spec_accepts_every_valid_combination(kwargs):
    COUNTS["valid:PrivacySpec"] += 1
    spec = PrivacySpec(**kwargs)
    assert spec.attributes == tuple(kwargs["attributes"]) and spec.epsilon == kwargs["epsilon"]
    shares = spec.normalized_weights()
    total = math.fsum(shares) + (spec.residual_share or 0.0)
    assert total == pytest.approx(1.0, rel=1e-12) and all(s > 0 for s in shares)
    if math.isinf(kwargs["epsilon"]):  # the mechanism is off: no protection, whatever the code or noise source
        assert spec.guarantee == "none (epsilon = inf)"
    else:
        assert spec.guarantee == ("formal" if kwargs["stochastic_code"] == "random" else "heuristic")


# --------------------------------------------------------------------------------------------------- accounting
@SETTINGS
@given(which=st.sampled_from(["epsilon", "delta", "sensitivity"]), data=st.data())
def test_gaussian_sigma_rejects_invalid_arguments(which, data):
    kwargs = dict(epsilon=1.0, delta=1e-5, sensitivity=1.0)
    kwargs[which] = data.draw({"epsilon": bad_epsilon, "delta": bad_delta, "sensitivity": bad_positive}[which])
    COUNTS[f"invalid:gaussian_sigma:{which}"] += 1
    _expect_value_error(lambda: gaussian_sigma(**kwargs), which)


@SETTINGS
@given(which=st.sampled_from(["sigma", "delta", "sensitivity"]), data=st.data())
def test_gaussian_epsilon_rejects_invalid_arguments(which, data):
    kwargs = dict(sigma=1.0, delta=1e-5, sensitivity=1.0)
    bad_sigma = st.one_of(st.floats(max_value=0.0, exclude_max=True), st.just(NAN), not_a_number)
    kwargs[which] = data.draw({"sigma": bad_sigma, "delta": bad_delta, "sensitivity": bad_positive}[which])
    COUNTS[f"invalid:gaussian_epsilon:{which}"] += 1
    _expect_value_error(lambda: gaussian_epsilon(**kwargs), which)


@SETTINGS
@given(epsilon=st.floats(min_value=1e-6, max_value=1e14), delta=st.floats(min_value=1e-300, max_value=0.999999))
def test_gaussian_sigma_valid_range_calibrates_towards_privacy(epsilon, delta):
    COUNTS["valid:gaussian_sigma"] += 1
    try:
        sigma = gaussian_sigma(epsilon=epsilon, delta=delta)
    except ValueError as err:  # only the documented double-precision limit, naming epsilon
        assert "cannot calibrate epsilon" in str(err) and epsilon < 1e-3
        return
    assert 0.0 < sigma and gaussian_epsilon(sigma=sigma, delta=delta) <= epsilon


@SETTINGS
@given(epsilon=st.floats(min_value=1e14, allow_infinity=False))
def test_gaussian_sigma_huge_epsilon_works_or_says_the_limit(epsilon):
    """Beyond about 5e14 double precision runs out; the message once advised a *larger* epsilon."""
    try:
        sigma = gaussian_sigma(epsilon=epsilon, delta=1e-5)
    except ValueError as err:
        COUNTS["invalid:gaussian_sigma:epsilon_beyond_double"] += 1
        assert "epsilon" in str(err) and "at most" in str(err) and "inf" in str(err)
        return
    COUNTS["valid:gaussian_sigma"] += 1
    assert 0.0 < sigma and gaussian_epsilon(sigma=sigma, delta=1e-5) <= epsilon


# ---------------------------------------------------------------------------------------------------- mechanism
@SETTINGS
@given(which=st.sampled_from(["clip_bounds", "weights", "residual_clip_bound", "residual_weight"]), data=st.data())
def test_calibrate_rejects_invalid_arguments(which, data):
    kwargs = dict(epsilon=1.0, delta=1e-5, clip_bounds=[1.0, 2.0], weights=[1.0, 3.0], residual_clip_bound=None,
                  residual_weight=1.0)
    if which == "clip_bounds":
        kwargs["clip_bounds"] = data.draw(st.one_of(st.just([]), st.lists(bad_positive, min_size=1, max_size=2),
                                                    st.integers(), st.text(min_size=1, max_size=3)))
        kwargs["weights"] = None
    elif which == "weights":
        kwargs["weights"] = data.draw(_bad_weights_for(("a", "b")))
    elif which == "residual_clip_bound":
        kwargs["residual_clip_bound"] = data.draw(bad_positive.filter(lambda v: v is not None))
    else:
        kwargs["residual_clip_bound"] = 1.0
        kwargs["residual_weight"] = data.draw(bad_positive)
    COUNTS[f"invalid:calibrate:{which}"] += 1
    _expect_value_error(lambda: mechanism.calibrate(**kwargs), which)


@SETTINGS
@given(weights=st.lists(st.floats(min_value=1e-300, max_value=1e300), min_size=2, max_size=3))
def test_calibrate_any_positive_weights_are_finite_or_named(weights):
    """Extreme weight ratios once gave an infinite sigma that surfaced later as an error about `sigmas`."""
    COUNTS["valid:calibrate"] += 1
    kwargs = dict(epsilon=1.0, delta=1e-5, clip_bounds=[1.0] * len(weights), weights=weights)
    try:
        cal = mechanism.calibrate(**kwargs)
    except ValueError as err:
        assert "weights" in str(err) and max(weights) / min(weights) > 1e250
        return
    assert all(math.isfinite(s) and s > 0 for s in cal.sigmas)
    m = cal.noise_multiplier  # the whitened mechanism is exactly one Gaussian with multiplier m (rounded up)
    whitened = math.fsum((2.0 * c / s) ** 2 for c, s in zip(cal.clip_bounds, cal.sigmas))
    assert whitened <= 1.0 / (m * m) * (1 + 1e-12)


# ------------------------------------------------------------------------------------------------- images
_dtypes = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.float16])


@SETTINGS
@given(arr=hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=24)),
       as_tensor=st.booleans())
def test_images_to_tensor_any_array_works_or_names_images(arr, as_tensor):
    value = arr
    if as_tensor:
        if arr.dtype in (np.uint16,):
            return  # torch has no uint16 tensors to build from numpy here
        value = torch.from_numpy(np.ascontiguousarray(arr))
    try:
        x = images_to_tensor(value, 16)
    except ValueError as err:
        COUNTS["invalid:images_to_tensor:images"] += 1
        assert "images" in str(err), str(err)
        return
    COUNTS["valid:images_to_tensor"] += 1
    assert x.ndim == 4 and x.shape[1:] == (3, 16, 16) and x.shape[0] >= 1
    assert torch.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "La", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
         "I;16", "I;16B", "I;16L"]


@SETTINGS
@given(mode=st.sampled_from(MODES), width=st.integers(1, 48), height=st.integers(1, 48), seed=st.integers(0, 2**16))
def test_images_to_tensor_any_pil_mode_and_size(mode, width, height, seed):
    rng = np.random.default_rng(seed)
    img = PIL.Image.frombytes(mode, (width, height),
                              rng.integers(0, 256, len(PIL.Image.new(mode, (width, height)).tobytes()),
                                           dtype=np.uint8).tobytes())
    if mode == "F":  # random bytes may spell NaN/inf floats: those must be refused, never decoded to black
        arr = np.asarray(img)
        if not np.isfinite(arr).all():
            COUNTS["invalid:images_to_tensor:images"] += 1
            _expect_value_error(lambda: images_to_tensor(img, 16), "images")
            return
    if min(width, height) < MIN_IMAGE_SIDE:
        COUNTS["invalid:images_to_tensor:images"] += 1
        message = _expect_value_error(lambda: images_to_tensor(img, 16), "images")
        assert f">= {MIN_IMAGE_SIDE} px" in message
        return
    COUNTS["valid:images_to_tensor"] += 1
    x = images_to_tensor(img, 16)
    assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all() and -1 <= x.min() and x.max() <= 1


def _png_bytes(seed: int, mode: str = "RGB", size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@SETTINGS
@given(seed=st.integers(0, 100), fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
       cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_images_to_tensor_corrupt_files_name_images(seed, fmt, cut, flips):
    """A file that opens (valid header) but is truncated or damaged: ValueError naming images, never a crash."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    data = data[: max(1, int(len(data) * cut))] if cut < 1 else data
    for pos, byte in flips:
        data[int(pos * (len(data) - 1))] = byte
    try:
        img = PIL.Image.open(io.BytesIO(bytes(data)))
    except Exception:  # noqa: BLE001 - not even a header: the dataset path lists these (tests/test_guarantees.py)
        COUNTS["invalid:PIL.Image.open:file"] += 1
        return
    try:
        x = images_to_tensor(img, 16)
    except ValueError as err:
        COUNTS["invalid:images_to_tensor:images"] += 1
        assert "images" in str(err), str(err)
        return
    COUNTS["valid:images_to_tensor"] += 1
    assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all()


def test_images_to_tensor_huge_and_empty():
    side = math.isqrt(MAX_IMAGE_PIXELS) + 1
    huge = PIL.Image.new("1", (side, side))  # 1 bit per pixel (2 MB here); refused before any conversion
    for bad in (huge, [], torch.zeros(0, 3, 16, 16), np.zeros((0, 16, 16, 3), np.uint8)):
        COUNTS["invalid:images_to_tensor:images"] += 1
        _expect_value_error(lambda: images_to_tensor(bad, 16), "images")


# --------------------------------------------------------------------------------------------------- pipeline
CALL_FIELDS = ("epsilon", "delta", "attributes", "weights", "strength", "scope", "stochastic_code",
               "num_inference_steps", "output_type", "generator", "secure_mode", "subject_ids")
IMAGES = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@st.composite
def call_kwargs(draw, invalid=None):
    attrs = draw(good_attributes)
    kwargs = dict(attributes=attrs, weights=draw(_weights_for(attrs)), epsilon=draw(good_epsilon),
                  delta=draw(good_delta), scope=draw(st.sampled_from(["attributes", "latent"])),
                  stochastic_code=draw(st.sampled_from(["random", "inverted"])), num_inference_steps=1,
                  output_type=draw(st.sampled_from(["np", "pt", "pil"])), secure_mode=draw(st.booleans()),
                  generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31))))
    if invalid == "epsilon":
        kwargs["epsilon"] = draw(bad_epsilon.filter(lambda e: e is not None))  # None means the default 1.0
    elif invalid == "delta":
        kwargs["delta"] = draw(bad_delta)
    elif invalid == "attributes":
        kwargs["attributes"] = draw(st.one_of(bad_attribute_list, st.lists(
            st.text(min_size=1, max_size=6).filter(lambda a: a not in ATTRS), min_size=1, max_size=2)))
        kwargs["weights"] = None
    elif invalid == "weights":
        kwargs["weights"] = draw(_bad_weights_for(attrs))
    elif invalid == "strength":
        kwargs["epsilon"] = None
        kwargs["strength"] = draw(st.one_of(st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0,
                                            exclude_min=True), st.just(NAN), not_a_number.filter(lambda v: v is not None)))
    elif invalid == "scope":
        kwargs["scope"] = draw(st.text(max_size=8).filter(lambda s: s not in ("attributes", "latent")))
    elif invalid == "stochastic_code":
        kwargs["stochastic_code"] = draw(st.text(max_size=8).filter(lambda s: s not in ("random", "inverted")))
    elif invalid == "num_inference_steps":
        kwargs["num_inference_steps"] = draw(st.one_of(st.integers(max_value=0), st.floats(), st.booleans(),
                                                       st.text(max_size=3)))  # None: the stochastic code's default
    elif invalid == "output_type":
        kwargs["output_type"] = draw(st.one_of(st.text(max_size=5), st.none()).filter(
            lambda s: s not in ("pil", "np", "pt")))
    elif invalid == "generator":
        kwargs["generator"] = draw(st.one_of(st.integers(), st.text(max_size=3),
                                             st.lists(st.integers(0, 5).map(lambda s: torch.Generator().manual_seed(s)),
                                                      min_size=3, max_size=4)))
    elif invalid == "secure_mode":
        kwargs["secure_mode"] = draw(st.one_of(st.text(max_size=3), st.integers(), st.none()))
    elif invalid == "subject_ids":
        kwargs["subject_ids"] = draw(st.lists(st.text(min_size=1, max_size=3), max_size=4).filter(lambda s: len(s) != 2))
    return kwargs


@pytest.mark.parametrize("field", CALL_FIELDS)
@SETTINGS
@given(data=st.data())
def test_pipeline_call_rejects_each_invalid_argument(pipe, field, data):
    kwargs = data.draw(call_kwargs(invalid=field))
    COUNTS[f"invalid:DPDiffusionPipeline.__call__:{field}"] += 1
    # "unknown attribute(s) [...]" names the argument by its singular
    also = {"attributes": ("attribute",), "subject_ids": ("ids",), "strength": ("epsilon",)}.get(field, ())
    if field == "strength":  # a float strength out of range says so; epsilon and strength together are refused
        also = ()
    _expect_value_error(lambda: pipe(IMAGES, **kwargs), field, also=also)


@SLOW_SETTINGS
@given(kwargs=call_kwargs())
def test_pipeline_call_every_valid_combination_works(pipe, kwargs):
    COUNTS["valid:DPDiffusionPipeline.__call__"] += 1
    out = pipe(IMAGES, **kwargs)
    images = out.images
    if kwargs["output_type"] == "pil":
        assert len(images) == 2 and all(im.size == (16, 16) and im.mode == "RGB" for im in images)
    else:
        arr = images.numpy() if isinstance(images, torch.Tensor) else images
        assert arr.shape[0] == 2 and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1
    eps, delta = kwargs["epsilon"], kwargs["delta"]
    assert out.delta == delta and out.epsilon == eps
    assert set(out.sigmas) == set(kwargs["attributes"])
    secure = kwargs.get("secure_mode", True)
    assert out.noise_source == ("csprng" if secure else "seeded")
    if math.isinf(eps):  # no noise at all: no protection, whatever the code or noise source
        assert out.guarantee == "none (epsilon = inf)"
    elif not secure:  # seeded noise can be replayed: never a formal (or heuristic) guarantee
        assert out.guarantee == "none (reproducible noise)"
    else:
        assert out.guarantee == ("formal" if kwargs["stochastic_code"] == "random" else "heuristic")
    if math.isinf(eps):
        assert out.noise_multiplier == 0.0 and all(s == 0.0 for s in out.sigmas.values())
    else:  # rounded towards privacy: the reported multiplier never gives more than the requested epsilon
        assert gaussian_epsilon(sigma=out.noise_multiplier, delta=delta) <= eps
        assert all(math.isfinite(s) and s > 0 for s in out.sigmas.values())
    assert 0.0 <= out.strength <= 1.0


@SETTINGS
@given(epsilon=st.floats(min_value=1e-300, max_value=1e-4), delta=good_delta)
def test_pipeline_epsilon_below_the_schedule_names_the_smallest_epsilon(pipe, epsilon, delta):
    """An epsilon whose noise lies beyond the model's schedule once failed inside the report with a message about
    `noise_multiplier`; it is now refused up front, naming epsilon and the smallest one this model accepts."""
    smallest = None
    try:
        spec = pipe.privacy_spec(attributes=["dark_skin"], epsilon=epsilon, delta=delta)
    except ValueError as err:
        COUNTS["invalid:DPDiffusionPipeline.privacy_spec:epsilon"] += 1
        message = str(err)
        assert "epsilon" in message
        if "epsilon must be >=" in message:
            smallest = float(message.split("epsilon must be >= ")[1].split(" ")[0])
    else:
        COUNTS["valid:DPDiffusionPipeline.privacy_spec"] += 1
        pipe.report_for(spec)  # and the report can be made
        return
    if smallest is not None:  # the bound it states is one that works
        assume(smallest <= 1e6)
        pipe.report_for(pipe.privacy_spec(attributes=["dark_skin"], epsilon=smallest, delta=delta))


def test_pipeline_empty_batch_and_bad_images(pipe):
    for bad in ([], None, torch.zeros(0, 3, 16, 16), "face.png", [PIL.Image.new("RGB", (4, 4))],
                torch.full((1, 3, 16, 16), 2.0), np.full((16, 16, 3), NAN, np.float32)):
        COUNTS["invalid:DPDiffusionPipeline.__call__:images"] += 1
        # the argument is `image` (diffusers' name); per-image messages say "images[i]", which names it too
        _expect_value_error(lambda: pipe(bad, attributes=["dark_skin"], num_inference_steps=1), "image")


# ----------------------------------------------------------------------------------------------------- ledger
@SETTINGS
@given(which=st.sampled_from(["budget_epsilon", "delta", "path"]), data=st.data())
def test_ledger_constructor_rejects_invalid_arguments(tmp_path_factory, which, data):
    kwargs = dict(path=str(tmp_path_factory.mktemp("ledger") / "l.sqlite"), budget_epsilon=1.0, delta=1e-5)
    kwargs[which] = data.draw({
        "budget_epsilon": bad_positive.filter(lambda v: v is not None),
        "delta": bad_delta.filter(lambda v: v is not None),
        "path": st.one_of(st.just(":memory:"), st.just(""), st.integers(), st.none(), st.just(object()),
                          st.sampled_from(["/", "/nonexistent-folder/l.sqlite"])),
    }[which])
    COUNTS[f"invalid:PrivacyLedger:{which}"] += 1
    _expect_value_error(lambda: PrivacyLedger(**kwargs), which)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    return PrivacyLedger(tmp_path_factory.mktemp("ledger") / "ledger.sqlite", budget_epsilon=2.0, delta=1e-5)


@SETTINGS
@given(which=st.sampled_from(["noise_multiplier", "attributes", "scope", "subject_id", "note"]), data=st.data())
def test_ledger_charge_rejects_invalid_arguments_and_records_nothing(ledger, which, data):
    kwargs = dict(subject_id="s-invalid", noise_multiplier=10.0, attributes=["a"], scope="attributes", note=None)
    kwargs[which] = data.draw({
        "noise_multiplier": st.one_of(st.floats(max_value=0.0, exclude_max=True), st.just(INF), st.just(NAN),
                                      not_a_number),
        "attributes": bad_attribute_list,
        "scope": st.one_of(st.text(max_size=6), st.none()).filter(lambda s: s not in ("attributes", "latent")),
        "subject_id": st.one_of(st.just(""), st.integers(), st.none(), st.lists(st.text(), max_size=1)),
        "note": st.one_of(st.integers(), st.floats(), st.lists(st.text(), max_size=1)),
    }[which])
    COUNTS[f"invalid:PrivacyLedger.charge:{which}"] += 1
    subject = kwargs.pop("subject_id")
    _expect_value_error(lambda: ledger.charge(subject, **kwargs), which)
    assert ledger.history("s-invalid") == []


@SETTINGS
@given(multipliers=st.lists(st.floats(min_value=0.5, max_value=1e3), min_size=1, max_size=4),
       subject=st.text(min_size=1, max_size=8))
def test_ledger_valid_charges_compose_exactly_or_are_refused_whole(ledger, multipliers, subject):
    from dpdiffusion.privacy.accounting import compose_noise_multipliers
    from dpdiffusion.privacy.ledger import BudgetExceededError

    COUNTS["valid:PrivacyLedger.charge"] += 1
    subject = f"valid-{subject}"
    accepted = [r.noise_multiplier for r in ledger.history(subject)]
    for m in multipliers:
        before = ledger.history(subject)
        try:
            remaining = ledger.charge(subject, noise_multiplier=m, attributes=["a"])
        except BudgetExceededError:
            assert ledger.history(subject) == before  # refused: nothing recorded
            continue
        accepted.append(m)
        spent = gaussian_epsilon(sigma=compose_noise_multipliers(accepted), delta=1e-5)
        assert ledger.spent(subject) == spent <= 2.0
        assert remaining == max(0.0, 2.0 - spent)


# ---------------------------------------------------------------------------------------------------- protect
PROTECT_FIELDS = ("epsilon", "delta", "attributes", "weights", "scope", "stochastic_code", "num_inference_steps",
                  "batch_size", "insecure_seed", "limit", "source", "output_dir", "image_column", "split")


@pytest.mark.parametrize("field", PROTECT_FIELDS)
@SETTINGS
@given(data=st.data())
def test_protect_config_rejects_each_invalid_field_before_writing(pipe, tmp_path_factory, field, data):
    root = tmp_path_factory.mktemp("protect")
    attrs = data.draw(good_attributes)
    kwargs = dict(source=str(root / "src"), output_dir=str(root / "out"), attributes=attrs,
                  weights=data.draw(_weights_for(attrs)), epsilon=data.draw(good_epsilon), delta=data.draw(good_delta),
                  num_inference_steps=2, batch_size=2)
    bad = {
        "epsilon": bad_epsilon.filter(lambda e: e is not None),
        "delta": bad_delta,
        "attributes": st.one_of(bad_attribute_list, st.lists(st.text(min_size=1, max_size=6).filter(
            lambda a: a not in ATTRS), min_size=1, max_size=2)),
        "weights": _bad_weights_for(attrs),
        "scope": st.text(max_size=6).filter(lambda s: s not in ("attributes", "latent")),
        "stochastic_code": st.text(max_size=6).filter(lambda s: s not in ("random", "inverted")),
        "num_inference_steps": st.one_of(st.integers(max_value=0), st.floats(), st.booleans()),  # None: the default
        "batch_size": st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.none()),
        "insecure_seed": st.one_of(st.floats(), st.text(max_size=3), st.booleans()),  # None: the CSPRNG default
        "limit": st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3)),
        "source": st.one_of(st.just(""), st.none(), st.integers()),
        "output_dir": st.one_of(st.just(""), st.none(), st.integers()),
        "image_column": st.one_of(st.just(""), st.none(), st.integers()),
        "split": st.one_of(st.just(""), st.none(), st.integers()),
    }[field]
    kwargs[field] = data.draw(bad)
    if field == "attributes":
        kwargs["weights"] = None
    COUNTS[f"invalid:protect_dataset:{field}"] += 1
    also = {"attributes": ("attribute",)}.get(field, ())
    _expect_value_error(lambda: protect_dataset(pipe, ProtectConfig(**kwargs), progress=False), field, also=also)
    assert not (root / "out").exists()  # nothing written
