"""Every promise of the README (and of the reliability/security issue), stated as a test.

Each test's docstring quotes the promise it checks. Promises whose heavy checks live elsewhere say where; those are
not repeated here:

- Bad input everywhere, by Hypothesis: ``tests/reliability/test_properties.py`` (counts printed at its end).
- SIGKILL at random points + resume; ledger killed during charges: ``tests/reliability/test_kill_resume.py``.
- Two and more *processes* charging one ledger: ``tests/privacy/test_ledger.py::test_concurrent_processes_cannot_overspend``.
- The Space's own handlers, limits and feedback dataset: ``tests/spaces/test_app.py``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import struct
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from dpdiffusion.privacy.accounting import compose_noise_multipliers, gaussian_epsilon, gaussian_sigma

ROOT = Path(__file__).resolve().parents[1]
ATTRS = ["dark_skin", "long_hair"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from threads, and two OpenMP threads on a busy two-core machine spin against each
    other (a 0.5 s protect run took 10 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- the Python API
def test_promise_images_of_any_mode_and_size_arrays_or_tensors(dummy_pipe):
    """README: "`images` may be PIL images of any mode and size, numpy arrays or tensors in [0, 1]"."""
    rng = np.random.default_rng(0)
    inputs = [PIL.Image.new(mode, (23, 17)) for mode in
              ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "La", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
               "I;16", "I;16B")]
    inputs += [PIL.Image.new("RGB", (8, 300)), PIL.Image.new("L", (1000, 999))]
    inputs += [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.integers(0, 65536, (20, 20), dtype=np.uint16),
               rng.random((3, 16, 16)), rng.random((16, 16, 4)).astype(np.float32), torch.rand(3, 40, 20)]
    x = dummy_pipe.preprocess(inputs)
    assert x.shape == (len(inputs), 3, 16, 16) and torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    out = dummy_pipe(inputs[:3], attributes=ATTRS, epsilon=1.0, num_inference_steps=1, output_type="np",
                     generator=_gen())
    assert out.images.shape == (3, 16, 16, 3)


def test_promise_usage_returns_images_with_their_privacy_figures(dummy_pipe, dummy_images):
    """README: `out = pipe(images, attributes=..., epsilon=1.0, delta=1e-5, ...)`;
    `out.images, out.epsilon, out.delta, out.sigmas, out.guarantee`."""
    out = dummy_pipe(dummy_images, attributes=["dark_skin"], epsilon=1.0, delta=1e-5, num_inference_steps=2,
                     generator=_gen(), output_type="pil")
    assert len(out.images) == 2 and all(isinstance(im, PIL.Image.Image) for im in out.images)
    assert (out.epsilon, out.delta, out.guarantee) == (1.0, 1e-5, "formal")
    assert set(out.sigmas) == {"dark_skin"} and out.sigmas["dark_skin"] > 0


def test_promise_stages_are_public_and_are_the_release(dummy_pipe, dummy_images):
    """README: "The stages are public: `pipe.encode`, `pipe.attribute_directions.project` / `compose` / `names` /
    `clip_bounds`, `pipe.apply_privacy_noise`, `pipe.decode`" - and composing them gives the release itself."""
    dirs = dummy_pipe.attribute_directions
    assert set(ATTRS) <= set(dirs.names) and set(dirs.clip_bounds) == set(dirs.names)
    z = dummy_pipe.encode(dummy_images)  # (B, d)
    a, r = dirs.project(z, attributes=ATTRS)
    assert torch.allclose(dirs.compose(a, r, attributes=ATTRS), z, atol=1e-6)
    # seeded mode (a test of the plumbing, not a release): the same generator draws x_T first, then the noise
    g = _gen(5)
    x_t = randn_tensor(dummy_images.shape, generator=g)
    z_noisy, report = dummy_pipe.apply_privacy_noise(z, attributes=ATTRS, epsilon=1.0, delta=1e-5, generator=g,
                                                     secure_mode=False)
    by_stages = dummy_pipe.decode(z_noisy, stochastic_code=x_t, num_inference_steps=2, output_type="np")
    out = dummy_pipe(dummy_images, attributes=ATTRS, epsilon=1.0, delta=1e-5, num_inference_steps=2,
                     generator=_gen(5), output_type="np", secure_mode=False)
    np.testing.assert_array_equal(out.images, by_stages)
    assert out.sigmas == report.sigmas and out.noise_source == report.noise_source == "seeded"


def test_promise_noise_only_on_clipped_protected_coordinates_residual_unchanged(dummy_pipe):
    """README: "a~_i = clip(a_i, -C_i, C_i) + N(0, sigma_i^2) with public clip bounds C_i"; with scope="attributes"
    the residual r is released unchanged. Statistics on n draws: mean within 6 sigma/sqrt(n), standard deviation
    within 6 sigma/sqrt(2n)."""
    dirs, n = dummy_pipe.attribute_directions, 4000
    z0 = torch.randn(1, dirs.center.shape[0], generator=_gen(1)) * 3  # some coordinates beyond their clip bound
    z = z0.repeat(n, 1)
    a, r = dirs.project(z, attributes=ATTRS)
    z_noisy, report = dummy_pipe.apply_privacy_noise(z, attributes=ATTRS, epsilon=2.0, delta=1e-5, generator=_gen(2),
                                                     post_processing="none")
    a_noisy, r_noisy = dirs.project(z_noisy, attributes=ATTRS)
    assert torch.allclose(r_noisy, r, atol=1e-5)  # the residual is untouched
    bounds = dirs.clip_bound_tensor(ATTRS)  # the bounds of this set's basis (dirs.clip_bounds: each one alone)
    assert report.clip_bounds == dict(zip(ATTRS, bounds.tolist()))
    noise = (a_noisy - torch.clamp(a, -bounds, bounds)).double()
    for i, name in enumerate(ATTRS):
        sigma = report.sigmas[name]
        assert abs(noise[:, i].mean().item()) <= 6 * sigma / math.sqrt(n)
        assert abs(noise[:, i].std().item() - sigma) <= 6 * sigma / math.sqrt(2 * n)


def test_promise_clip_bounds_are_public_and_never_depend_on_the_input(dummy_pipe, dummy_images, tmp_path):
    """README: "public clip bounds C_i fixed when the directions were fitted". Oracle: the bounds as stored in the
    saved model's safetensors file (read with safetensors, not through the model), and the mechanism's behaviour:
    latents far beyond the bounds on either side are released at +-C_i (plus the calibrated noise), whatever the
    images protected before."""
    from safetensors.torch import load_file

    dummy_pipe.attribute_directions.save_pretrained(tmp_path / "dirs")
    stored = load_file(next((tmp_path / "dirs").glob("*.safetensors")))["clip_bound_values"].double()
    dirs = dummy_pipe.attribute_directions
    idx = [list(dirs.config.attribute_names).index(n) for n in ATTRS]
    expected = stored[idx]  # (k,)
    for images in (dummy_images, torch.zeros(1, 3, 16, 16), torch.ones(2, 3, 16, 16)):
        dummy_pipe(images, attributes=ATTRS, epsilon=0.5, num_inference_steps=1, output_type="np", generator=_gen())
    n = 2000
    basis = dirs.basis(ATTRS).double()  # (d, k)
    for sign in (+1.0, -1.0):
        z = (dirs.center.double() + sign * 1e3 * basis.sum(1)).float().repeat(n, 1)  # a_i = +-1000 >> C_i
        z_noisy, report = dummy_pipe.apply_privacy_noise(z, attributes=ATTRS, epsilon=50.0, post_processing="none")
        a = dirs.project(z_noisy, attributes=ATTRS)[0].double()
        sigmas = torch.tensor([report.sigmas[name] for name in ATTRS], dtype=torch.float64)
        assert torch.all((a.mean(0) - sign * expected).abs() <= 6 * sigmas / math.sqrt(n) + 1e-4)
    assert dirs.clip_bound_tensor(ATTRS).double().equal(expected)


def test_promise_calibration_is_exact_rounded_towards_privacy_and_matches_pld(dummy_pipe):
    """README: sensitivity 2 C_i; "rho_i = w_i / sum(w) * rho, which makes the release one Gaussian mechanism with
    noise multiplier 1/sqrt(2 rho), calibrated exactly from (epsilon, delta) with the analytic Gaussian mechanism,
    rounded towards privacy, and checked against dp-accounting's PLD accountant"."""
    import dp_accounting  # a declared test dependency (the `test` extra): never skipped
    from dp_accounting.pld import PLDAccountant

    for epsilon, delta, weights in ((1.0, 1e-5, [3.0, 1.0]), (0.3, 1e-7, [1.0, 1.0]), (4.0, 1e-3, [0.2, 5.0])):
        out = dummy_pipe(torch.rand(1, 3, 16, 16, generator=_gen()), attributes=ATTRS, weights=weights,
                         epsilon=epsilon, delta=delta, num_inference_steps=1, output_type="np", generator=_gen())
        m = out.noise_multiplier
        assert m == gaussian_sigma(epsilon=epsilon, delta=delta)
        assert gaussian_epsilon(sigma=m, delta=delta) <= epsilon  # towards privacy
        bounds = out.report.clip_bounds
        whitened = math.fsum((2 * bounds[name] / out.sigmas[name]) ** 2 for name in ATTRS)  # sum (Delta_i/sigma_i)^2
        assert whitened <= 1 / m**2 and whitened == pytest.approx(1 / m**2, rel=1e-12)
        shares = [w / sum(weights) for w in weights]
        for name, share in zip(ATTRS, shares):  # sigma_i = Delta_i / sqrt(2 rho_i), rho = 1 / (2 m^2)
            assert out.sigmas[name] == pytest.approx(2 * bounds[name] / math.sqrt(2 * share / (2 * m**2)), rel=1e-12)
        pld = PLDAccountant(value_discretization_interval=1e-4)
        pld.compose(dp_accounting.GaussianDpEvent(m))
        assert pld.get_epsilon(delta) == pytest.approx(epsilon, abs=2e-3)


def test_promise_every_output_reports_its_figures(dummy_pipe, dummy_images):
    """README: "Every output reports epsilon, delta, the noise multiplier, each sigma_i, the equivalent diffusion
    strength and `guarantee="formal"`"; "`stochastic_code="inverted"` ... is reported as `guarantee="heuristic"`";
    "`scope="latent"` also clips and noises r"."""
    out = dummy_pipe(dummy_images, attributes=ATTRS, epsilon=1.0, num_inference_steps=1, output_type="np",
                     generator=_gen())
    report = out.report.to_dict()
    for key in ("epsilon", "delta", "noise_multiplier", "sigmas", "strength", "guarantee", "clip_bounds",
                "neighbouring_relation"):
        assert key in report
    assert out.guarantee == "formal" and 0 < out.strength <= 1 and set(out.sigmas) == set(ATTRS)
    inverted = dummy_pipe(dummy_images, attributes=ATTRS, epsilon=1.0, stochastic_code="inverted",
                          num_inference_steps=1, output_type="np", generator=_gen())
    assert inverted.guarantee == "heuristic"
    latent = dummy_pipe(dummy_images, attributes=ATTRS, epsilon=1.0, scope="latent", num_inference_steps=1,
                        output_type="np", generator=_gen())
    assert latent.report.residual_sigma > 0 and "any two images" in latent.report.neighbouring_relation
    # the residual now carries part of the budget, so each attribute gets more noise
    assert all(latent.sigmas[n] > out.sigmas[n] for n in ATTRS)


def test_promise_epsilon_inf_is_plain_encode_decode_bit_for_bit(dummy_pipe, dummy_images):
    """README: "With `epsilon=inf` the mechanism is off and the output equals plain encode/decode bit for bit"."""
    out = dummy_pipe(dummy_images, attributes=ATTRS, epsilon=math.inf, num_inference_steps=2, output_type="np",
                     generator=_gen(3))
    plain = dummy_pipe.decode(dummy_pipe.encode(dummy_images), num_inference_steps=2, generator=_gen(3),
                              output_type="np")
    np.testing.assert_array_equal(out.images, plain)
    assert out.noise_multiplier == 0.0 and out.strength == 0.0
    # issue 31: a release without noise protects nothing and says so (it used to be labelled "formal")
    assert out.guarantee == "none (epsilon = inf)" and out.report.guarantee == "none (epsilon = inf)"
    seeded = dummy_pipe(dummy_images, attributes=ATTRS, epsilon=math.inf, num_inference_steps=2, output_type="np",
                        generator=_gen(3), secure_mode=False)
    assert seeded.guarantee == "none (epsilon = inf)"


def test_promise_bad_arguments_name_the_argument_and_range(dummy_pipe, dummy_images):
    """Issue: "epsilon <= 0 or NaN, delta outside (0, 1), unknown attribute, weights that are negative or do not match,
    empty batch, grayscale/RGBA/16-bit/huge/tiny images ... Each gets a clear error naming the argument and the
    allowed range" (a sample; Hypothesis tries thousands in tests/reliability/test_properties.py)."""
    cases = [
        (dict(epsilon=0.0), "epsilon must be > 0"), (dict(epsilon=-1.0), "epsilon must be > 0"),
        (dict(epsilon=float("nan")), "epsilon must not be NaN"), (dict(delta=0.0), r"delta must be in \(0, 1\)"),
        (dict(delta=1.0), r"delta must be in \(0, 1\)"), (dict(delta=float("nan")), "delta must not be NaN"),
        (dict(attributes=["no_such"]), r"unknown attribute\(s\) \['no_such'\]"),
        (dict(attributes="dark_skin"), "attributes must be a sequence of names, not one string"),
        (dict(weights=[1.0, -2.0]), "weights must all be finite and > 0"),
        (dict(weights=[1.0]), r"weights must have one entry per attribute \(2\)"),
        (dict(epsilon=1e-9), "epsilon must be >= "),  # beyond the model's noise schedule
        (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
    ]
    for kwargs, match in cases:
        call = dict(attributes=ATTRS, epsilon=1.0, num_inference_steps=1, output_type="np", **{})
        call.update(kwargs)
        with pytest.raises(ValueError, match=match):
            dummy_pipe(dummy_images, **call)
    for images, match in ((torch.zeros(0, 3, 16, 16), "empty batch"), ([], "non-empty"),
                          (PIL.Image.new("RGB", (7, 30)), r"images\[0\] is 7x30 px; each side must be >= 8"),
                          (PIL.Image.new("1", (4097, 4097)), "at most"),
                          (torch.full((1, 3, 16, 16), 1.5), r"in \[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            dummy_pipe(images, attributes=ATTRS, num_inference_steps=1)


# ------------------------------------------------------------------------------------------------------ ledger
def test_promise_ledger_composes_exactly_and_refuses_overspend_charging_nothing(dummy_pipe, dummy_images, tmp_path):
    """README: "Repeated releases of one subject compose exactly ... in a `PrivacyLedger` ..., which refuses a release
    that would exceed the subject's budget and charges nothing then"."""
    from dpdiffusion.privacy.ledger import BudgetExceededError, PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=1.5, delta=1e-5)  # two releases at 1 fit
    kw = dict(attributes=ATTRS, delta=1e-5, num_inference_steps=1, output_type="np", ledger=ledger)
    dummy_pipe(dummy_images, epsilon=1.0, subject_ids=["ann", "bob"], generator=_gen(), **kw)
    dummy_pipe(dummy_images[:1], epsilon=1.0, subject_ids=["ann"], generator=_gen(), **kw)
    m = gaussian_sigma(epsilon=1.0, delta=1e-5)
    assert ledger.spent("ann") == gaussian_epsilon(sigma=compose_noise_multipliers([m, m]), delta=1e-5) < 1.5
    before = (ledger.history("ann"), ledger.history("bob"))
    with pytest.raises(BudgetExceededError, match="Nothing was recorded"):  # ann cannot afford it, bob could
        dummy_pipe(dummy_images, epsilon=1.0, subject_ids=["bob", "ann"], generator=_gen(), **kw)
    assert (ledger.history("ann"), ledger.history("bob")) == before


def test_promise_ledger_safe_under_concurrency(tmp_path):
    """README: "`PrivacyLedger` (sqlite, crash-safe, safe under concurrent processes)". Threads of one process race
    here; separate processes race in tests/privacy/test_ledger.py and are SIGKILLed in
    tests/reliability/test_kill_resume.py."""
    from dpdiffusion.privacy.ledger import BudgetExceededError, PrivacyLedger

    m, fits = 20.0, 12
    budget = gaussian_epsilon(sigma=compose_noise_multipliers([m] * fits), delta=1e-5)
    path = tmp_path / "ledger.sqlite"
    PrivacyLedger(path, budget_epsilon=budget, delta=1e-5)
    ok, start = [], threading.Barrier(4)

    def worker():
        ledger = PrivacyLedger(path)
        start.wait()
        for _ in range(6):
            try:
                ledger.charge("carol", noise_multiplier=m, attributes=["dark_skin"])
                ok.append(1)
            except BudgetExceededError:
                pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(ok) == fits == len(PrivacyLedger(path).history("carol"))  # 24 attempts, exactly 12 fit
    assert PrivacyLedger(path).spent("carol") <= budget
    for other in ("tests/privacy/test_ledger.py", "tests/reliability/test_kill_resume.py"):
        assert (ROOT / other).is_file()


# ------------------------------------------------------------------------------------------------- secure mode
def test_promise_secure_mode_draws_from_the_os_csprng_with_the_right_statistics(dummy_pipe):
    """README: "The privacy noise comes from the OS CSPRNG unless you pass `secure_mode=False`". Secure noise has the
    calibrated distribution (n draws: mean within 6 sigma/sqrt(n), std within 6 sigma/sqrt(2n)), ignores the
    generator (two equal seeds give different noise) and raises no insecure-PRNG warning; the default is secure;
    only `secure_mode=False` makes the noise follow the generator."""
    from dpdiffusion.privacy.mechanism import InsecurePRNGWarning

    dirs, n = dummy_pipe.attribute_directions, 4000
    z = dirs.center.reshape(1, -1).repeat(n, 1)  # a = 0: inside every clip bound
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecurePRNGWarning)
        z1, report = dummy_pipe.apply_privacy_noise(z, attributes=ATTRS, epsilon=1.0, generator=_gen(0),
                                                    secure_mode=True, post_processing="none")
        z2, _ = dummy_pipe.apply_privacy_noise(z, attributes=ATTRS, epsilon=1.0, generator=_gen(0), secure_mode=True,
                                               post_processing="none")
    noise = dirs.project(z1, attributes=ATTRS)[0].double()
    for i, name in enumerate(ATTRS):
        sigma = report.sigmas[name]
        assert abs(noise[:, i].mean().item()) <= 6 * sigma / math.sqrt(n)
        assert abs(noise[:, i].std().item() - sigma) <= 6 * sigma / math.sqrt(2 * n)
    assert not torch.equal(z1, z2)
    d1, r1 = dummy_pipe.apply_privacy_noise(z[:4], attributes=ATTRS, epsilon=1.0, generator=_gen(0))  # the default
    d2, _ = dummy_pipe.apply_privacy_noise(z[:4], attributes=ATTRS, epsilon=1.0, generator=_gen(0))
    assert not torch.equal(d1, d2) and r1.noise_source == "csprng" and r1.guarantee == "formal"
    t1, _ = dummy_pipe.apply_privacy_noise(z[:4], attributes=ATTRS, epsilon=1.0, generator=_gen(0), secure_mode=False)
    t2, r2 = dummy_pipe.apply_privacy_noise(z[:4], attributes=ATTRS, epsilon=1.0, generator=_gen(0), secure_mode=False)
    assert torch.equal(t1, t2) and r2.noise_source == "seeded" and r2.guarantee == "none (reproducible noise)"


# --------------------------------------------------------------------------------------------- protect (datasets)
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no pixel data (cheap to make, costly to decode)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_promise_protect_writes_figures_and_lists_every_unreadable_file(dummy_pipe, tmp_path):
    """README: "`protect` streams any image folder (with an optional metadata file), writes an image folder whose
    `metadata.jsonl` holds each image's privacy figures, ... lists unreadable files in `skipped.jsonl`"; issue:
    "truncated or non-image files in a dataset folder ... skipped and listed in a report file, never a crash"."""
    from dpdiffusion.protect import ProtectConfig, protect_dataset

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    good = {
        "rgb.png": PIL.Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)),
        "gray.png": PIL.Image.fromarray(rng.integers(0, 256, (18, 18), dtype=np.uint8)),
        "rgba.png": PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), mode="RGBA"),
        "sixteen_bit.png": PIL.Image.fromarray(rng.integers(0, 65536, (16, 20), dtype=np.uint16)),
        "palette.png": PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P"),
        "cmyk.jpg": PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("CMYK"),
    }
    for name, img in good.items():
        img.save(src / name)
    ok_png = (src / "rgb.png").read_bytes()
    bad = {
        "tiny.png": None, "truncated.png": ok_png[: len(ok_png) // 2], "not_an_image.png": b"hello\n" * 10,
        "empty.jpg": b"", "huge.png": _png_header_only(5000, 5000), "bomb.png": _png_header_only(30000, 30000),
    }
    PIL.Image.new("RGB", (4, 4)).save(src / "tiny.png")
    for name, data in bad.items():
        if data is not None:
            (src / name).write_bytes(data)
    names = sorted([*good, *bad])
    (src / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "label": n.split(".")[0]}) + "\n"
                                                for n in names))
    out = protect_dataset(dummy_pipe, ProtectConfig(source=str(src), output_dir=str(tmp_path / "out"),
                                                    attributes=ATTRS, epsilon=2.0, num_inference_steps=1,
                                                    batch_size=4, keep_columns=["label"]), progress=False)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    skipped = [json.loads(line) for line in (tmp_path / "out-private" / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["label"] for r in records) == sorted(n.split(".")[0] for n in good)
    assert sorted(Path(s["path"]).name for s in skipped) == sorted(bad)  # every bad file listed, by name
    assert all(s["reason"] for s in skipped)
    assert len(records) + len(skipped) == len(names)
    for r in records:
        assert r["epsilon"] == 2.0 and r["delta"] == 1e-5 and r["guarantee"] == "formal"
        assert r["noise_source"] == "csprng"
        assert set(r["sigmas"]) == set(ATTRS) and r["noise_multiplier"] == gaussian_sigma(epsilon=2.0, delta=1e-5)
        assert PIL.Image.open(out / r["file_name"]).size == (16, 16)


def test_promise_protect_data_parallel_workers_write_the_same_output(dummy_pipe, tmp_path):
    """README: "`protect` ... runs data-parallel under `accelerate launch`": two workers (rank 1 then rank 0, each
    taking rows i % 2 == rank) write exactly the files of one process (batch size 1: same batches; with
    `--insecure-seed`, so that the two runs can be compared byte for byte)."""
    from dpdiffusion.protect import ProtectConfig, protect_dataset

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / f"{i}.png")

    class Worker:  # what protect_dataset uses of an accelerate.Accelerator
        def __init__(self, rank):
            self.process_index, self.num_processes = rank, 2

        def wait_for_everyone(self):
            pass

    def cfg(out):
        return ProtectConfig(source=str(src), output_dir=str(out), attributes=ATTRS, epsilon=1.0,
                             num_inference_steps=1, batch_size=1, insecure_seed=0)

    one = protect_dataset(dummy_pipe, cfg(tmp_path / "one"), progress=False)
    for rank in (1, 0):
        two = protect_dataset(dummy_pipe, cfg(tmp_path / "two"), accelerator=Worker(rank), progress=False)

    def files(out):
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
                if p.is_file() and ".parts" not in p.parts}

    assert files(one) == files(two) and len([k for k in files(one) if k.startswith("images/")]) == 5


def test_promise_protect_resumes_without_redoing_or_losing_work(dummy_pipe, tmp_path, monkeypatch):
    """README: "`protect` ... resumes after a crash without redoing or losing work" (random SIGKILLs of real processes:
    tests/reliability/test_kill_resume.py; here one crash in-process, and the work done before it is not redone).
    Seeded (`insecure_seed`), so that the resumed output can be compared with an uninterrupted run byte for byte;
    the default (CSPRNG) mode: test_promise_protect_resume_never_releases_a_row_twice."""
    import dpdiffusion.protect as protect

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / f"{i}.png")

    def cfg(out):
        return protect.ProtectConfig(source=str(src), output_dir=str(out), attributes=ATTRS, epsilon=1.0,
                                     num_inference_steps=1, batch_size=2, insecure_seed=0)

    reference = protect.protect_dataset(dummy_pipe, cfg(tmp_path / "reference"), progress=False)
    real_write, written = protect._atomic_write_bytes, []

    def crash_on_fifth_image(path, data):
        if path.suffix == ".png":
            if len(written) == 4:
                raise KeyboardInterrupt("crash")
            written.append(path.name)
        real_write(path, data)

    monkeypatch.setattr(protect, "_atomic_write_bytes", crash_on_fifth_image)
    with pytest.raises(KeyboardInterrupt):
        protect.protect_dataset(dummy_pipe, cfg(tmp_path / "out"), progress=False)
    monkeypatch.setattr(protect, "_atomic_write_bytes", real_write)
    calls = []
    real_call = type(dummy_pipe).__call__
    monkeypatch.setattr(type(dummy_pipe), "__call__", lambda self, images, **kw: calls.append(len(images)) or
                        real_call(self, images, **kw))
    out = protect.protect_dataset(dummy_pipe, cfg(tmp_path / "out"), progress=False)
    assert calls == [2]  # only the last batch: the two batches done before the crash are not redone

    def files(out):
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".parts" not in p.parts}

    assert files(out) == files(reference)


def test_promise_attribute_datasets_become_booleans(tmp_path):
    """README: "`load_attribute_dataset(...)` loads ... a local image folder with a metadata file (CelebA's schema:
    `file_name` plus attribute columns valued -1/1 or 0/1) ... and converts the attributes to booleans"."""
    from dpdiffusion.data.attributes import load_attribute_dataset

    for i in range(3):
        PIL.Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i}.png")
    (tmp_path / "metadata.csv").write_text("file_name,Smiling,Male\n0.png,-1,1\n1.png,1,0\n2.png,1,1\n")
    ds = load_attribute_dataset(str(tmp_path), attribute_columns=["Smiling", "Male"])
    assert ds["Smiling"] == [False, True, True] and ds["Male"] == [True, False, True]


# ---------------------------------------------------------------------------------------------------- command line
@pytest.fixture
def tiny_model_dir(tmp_path, dummy_components):
    from dpdiffusion import DPDiffusionPipeline

    DPDiffusionPipeline(**dummy_components).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_promise_cli_bad_input_is_one_clear_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    """dpdiffusion/cli.py: "Errors in the user's arguments are printed as one clear line ... with exit status 2, never
    as a stack trace" (in-process here; tests/cli/test_cli.py runs the console script as a subprocess)."""
    from dpdiffusion.cli import main

    base = ["protect", "--model", str(tiny_model_dir), "--source", str(tmp_path), "--output-dir",
            str(tmp_path / "out"), "--no-progress"]
    for args, needle in ((["--epsilon", "0"], "epsilon must be > 0"), (["--epsilon", "nan"], "NaN"),
                         (["--delta", "1"], "delta must be in (0, 1)"), (["--attributes", "nope"], "unknown attribute"),
                         (["--attributes", "dark_skin", "--weights", "-1"], "weights must all be finite and > 0"),
                         (["--batch-size", "0"], "batch_size must be an integer >= 1"),
                         (["--num-inference-steps", "0"], "num_inference_steps must be an integer >= 1")):
        with pytest.raises(SystemExit) as info:
            main(base + args)
        err = capsys.readouterr().err
        assert info.value.code == 2, (args, err)
        assert needle in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------------------- security
@pytest.fixture
def pickle_only_model(tmp_path, dummy_components):
    from dpdiffusion import DPDiffusionPipeline

    DPDiffusionPipeline(**dummy_components).save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert not list((tmp_path / "bin").rglob("*.safetensors")) and list((tmp_path / "bin").rglob("*.bin"))
    return tmp_path / "bin"


def test_promise_our_loaders_read_safetensors_only(pickle_only_model):
    """Issue: "model loading uses safetensors only": the CLI and the Space refuse a model stored only as pickles."""
    from dpdiffusion.models.default import load_pipeline as _load_pipeline

    with pytest.raises(OSError, match="safetensors"):
        _load_pipeline(str(pickle_only_model))
    if importlib.util.find_spec("gradio") is not None:
        with pytest.raises(OSError, match="safetensors"):
            _space_module().load_pipeline(str(pickle_only_model))


def test_promise_from_pretrained_refuses_pickle_weights_by_default(pickle_only_model):
    """Issue: "model loading uses safetensors only" - also for a user's plain `DPDiffusionPipeline.from_pretrained`."""
    from dpdiffusion import DPDiffusionPipeline

    with pytest.raises((OSError, ValueError)):
        DPDiffusionPipeline.from_pretrained(str(pickle_only_model))


def test_promise_custom_pipeline_needs_trust_remote_code(tmp_path, dummy_components):
    """README: loads as a diffusers custom pipeline with `trust_remote_code=True`; issue: "no `trust_remote_code`
    unless the user asks" - without it diffusers refuses to run the pipeline's code."""
    from diffusers import DiffusionPipeline

    from dpdiffusion import DPDiffusionPipeline

    DPDiffusionPipeline(**dummy_components).save_pretrained(tmp_path / "model")
    custom = str(ROOT / "pipelines" / "dp_diffusion")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(str(tmp_path / "model"), custom_pipeline=custom)
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "model"), custom_pipeline=custom, trust_remote_code=True)
    assert type(pipe).__name__ == "DPDiffusionPipeline"
    for path in [*ROOT.glob("dpdiffusion/**/*.py"), ROOT / "spaces" / "app.py"]:
        assert "trust_remote_code=True" not in path.read_text(), f"{path} turns remote code on by itself"


def _space_module():
    name = "dpdiffusion_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "spaces" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_promise_space_uploads_are_size_limited_and_never_stored(dummy_pipe, tmp_path, monkeypatch):
    """Issue: "uploads in the Space are size-limited and never stored; the feedback dataset never holds an original
    image". One upload goes through protect, two judgements and accept; afterwards no file anywhere under the Space's
    folder or the temp folder holds the original (its PNG bytes, its pixels at any stored size)."""
    pytest.importorskip("gradio")
    import base64
    import tempfile

    from dpdiffusion.privacy.ledger import PrivacyLedger

    app = _space_module()
    for size in (app.MAX_UPLOAD_BYTES + 1024,):
        payload = base64.b64encode(b"\x89PNG" + b"\x00" * size).decode()
        with pytest.raises(ValueError, match="larger than the limit"):
            app.decode_original("data:image/png;base64," + payload)
    huge = "data:image/png;base64," + base64.b64encode(_png_header_only(5000, 5000)).decode()
    with pytest.raises(ValueError, match="megapixels"):
        app.decode_original(huge)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    original = np.random.default_rng(7).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    url = app.image_to_data_url(original)
    png = base64.b64decode(url.split(",", 1)[1])
    config = app.SpaceConfig(budget_epsilon=5.0, num_inference_steps=1)
    space_dir = tmp_path / "space"
    space_dir.mkdir()
    space = app.DPSpace(dummy_pipe, ledger=PrivacyLedger(space_dir / "ledger.sqlite", budget_epsilon=5.0,
                                                          delta=config.delta),
                        feedback=app.FeedbackLog(space_dir / "feedback"), config=config, model_name="dummy")
    view = space.protect(url, ATTRS, None, 1.0, None)
    view = space.feedback("more_privacy", view.session)
    space.feedback("accept", view.session)
    stored = [p for p in [*space_dir.rglob("*"), *(tmp_path / "tmp").rglob("*")] if p.is_file()]
    assert len([p for p in stored if p.suffix == ".png"]) == 2  # the two judged *protected* images
    small = {s: np.asarray(PIL.Image.fromarray(original).resize((s, s), PIL.Image.BICUBIC)) for s in (16, 32, 48)}
    for p in stored:
        data = p.read_bytes()
        assert png not in data and original.tobytes() not in data, p
        if p.suffix == ".png":
            pixels = np.asarray(PIL.Image.open(p).convert("RGB"))
            same_size = small.get(pixels.shape[0])
            assert same_size is None or not np.array_equal(pixels, same_size), p


# ------------------------------------------------------------------------------------------------------ unlearning
def test_promise_unlearning_refuses_mismatched_pairs():
    """Issue: "mismatched dataset pairs for unlearning" get a clear error naming the arguments: `original[i]` and
    `revised[i]` must be the same example (same count, image shape and label)."""
    from dpdiffusion.unlearning import unlearn

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    cases = [((x[:3], y[:3]), "same length"), ((torch.rand(4, 3, 9, 9), y), "same shape"),
             ((x, y.flip(0)), "equal row by row"), ((x, y[:3]), "4 images but 3 labels")]
    for revised, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            unlearn(model, (x, y), revised, method="first_order", tau=0.1, n_train=10, progress=False)
        assert "revised" in str(info.value)
