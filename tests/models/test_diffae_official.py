"""Equivalence of the converted official Diffusion Autoencoder with the official code (``phizaz/diffae``).

The fixtures of ``tests/fixtures/diffae/`` were produced by the official code (``scripts/make_diffae_fixtures.py``,
see the README there): official-format checkpoints with every tensor random, and the official encoder, DDIM sampler,
DDIM inversion and classifier outputs on fixed inputs. The tests convert the checkpoints with
``scripts/convert_diffae_checkpoint.py`` and compare the pipeline's ``encode``/``decode``/``invert`` with them.

Tolerances: float32 on CPU with the same operations in the same order; differences found are 0 (bit-identical) on the
machine that made the fixtures. The asserted bound is 1e-5 absolute on z and images (values O(1)) and 1e-4 on the
inverted codes (values up to ~3), leaving room for other BLAS kernels; the maximum differences are printed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpdiffusion import DPDiffusionPipeline
from dpdiffusion.models.diffae_conversion import CELEBA_HQ_ATTRIBUTES, configs_from_hyper_parameters, convert_models
from dpdiffusion.models.diffae_encoder import DiffAESemanticEncoder
from dpdiffusion.models.diffae_sampler import official_timesteps
from dpdiffusion.models.diffae_unet import DiffAEUNet2DModel

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "diffae"
META = json.loads((FIX / "meta.json").read_text())
SMALL = ["tiny32", "tiny16_conv_resample"]
ATOL_IMAGE, ATOL_CODE = 1e-5, 1e-4


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURES = _script("make_diffae_fixtures")  # fixed_inputs, seeded_state_dict (no official code imported)
CONVERT = _script("convert_diffae_checkpoint")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=SMALL)
def converted(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name) / "pipe"
    CONVERT.convert(FIX / name / "last.ckpt", FIX / name / "latent.ckpt", out, classifier=FIX / name / "cls.ckpt")
    pipe = DPDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    x, x_t = FIXTURES.fixed_inputs(pipe.unet.config.sample_size)
    return name, out, pipe, x, x_t, load_file(FIX / name / "official_outputs.safetensors")


def _maxdiff(a, b):
    return float((a.float() - b.float()).abs().max())


def test_fixture_metadata_names_the_official_commit_and_attributes():
    assert META["official_commit"] == "00c57d3f626f28bf9ed8aff58d90baab25de3af4"
    assert tuple(META["celeba_hq_attributes"]) == CELEBA_HQ_ATTRIBUTES  # official order and names
    assert sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file()) < 5e6  # a few MB at most


def test_converted_folder_resolves_the_diffae_classes_from_model_index(converted):
    _, out, pipe, *_ = converted
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["dpdiffusion.models.diffae_unet", "DiffAEUNet2DModel"]
    assert index["encoder"] == ["dpdiffusion.models.diffae_encoder", "DiffAESemanticEncoder"]
    assert isinstance(pipe.unet, DiffAEUNet2DModel) and isinstance(pipe.encoder, DiffAESemanticEncoder)
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: mit" in front and "converted_weights: ema_model" in front and "clip_quantile: 0.95" in front
    assert "https://github.com/phizaz/diffae" in card and "beatgans_gen_type" in card  # source, assumed enums


def test_encode_equals_the_official_encoder(converted):
    name, _, pipe, x, _, ref = converted
    z = pipe.encode((x + 1) / 2)  # the public path: images in [0, 1]
    z_exact = pipe.encode_tensor(x)
    print(f"{name}: max |z - official| = {_maxdiff(z, ref['z']):.3g} (via [0,1] images), "
          f"{_maxdiff(z_exact, ref['z']):.3g} (model range)")
    torch.testing.assert_close(z_exact, ref["z"], rtol=0, atol=ATOL_IMAGE)
    torch.testing.assert_close(z, ref["z"], rtol=0, atol=ATOL_IMAGE)


@pytest.mark.parametrize("steps", META["steps"])
def test_decode_equals_the_official_ddim_sampler(converted, steps):
    name, _, pipe, _, x_t, ref = converted
    official = ref[f"decoded_{steps}"]
    assert 0.05 < float((official.abs() < 0.999).float().mean())  # not a saturated image: the test can see errors
    images = pipe.decode(ref["z"], stochastic_code=x_t, num_inference_steps=steps, output_type="pt")
    expected = ((official + 1) / 2).clamp(0, 1)
    print(f"{name}, {steps} steps: max |decode - official| = {_maxdiff(images, expected):.3g}")
    torch.testing.assert_close(images, expected, rtol=0, atol=ATOL_IMAGE)


@pytest.mark.parametrize("steps", META["steps"])
def test_invert_equals_the_official_ddim_inversion(converted, steps):
    name, _, pipe, x, _, ref = converted
    x_t = pipe.invert(x, z=ref["z"], num_inference_steps=steps, input_range=(-1, 1))  # x: the model's range
    print(f"{name}, {steps} steps: max |invert - official| = {_maxdiff(x_t, ref[f'inverted_{steps}']):.3g}")
    torch.testing.assert_close(x_t, ref[f"inverted_{steps}"], rtol=0, atol=ATOL_CODE)


def test_the_non_ema_weights_would_not_match(converted):
    """The fixture's ``model.*`` weights differ from ``ema_model.*``: converting them must not reproduce the outputs."""
    name, _, pipe, x, _, ref = converted
    ckpt = torch.load(FIX / name / "last.ckpt", weights_only=True)
    _, online_encoder, _ = convert_models(ckpt["state_dict"], ckpt["hyper_parameters"], prefix="model.")
    with torch.no_grad():
        assert _maxdiff(online_encoder(x), ref["z"]) > 1e-2


def _classifier(name):
    sd = torch.load(FIX / name / "cls.ckpt", weights_only=True)["state_dict"]
    stats = torch.load(FIX / name / "latent.ckpt", weights_only=True)
    w, b = sd["ema_classifier.weight"].double(), sd["ema_classifier.bias"].double()
    m, s = stats["conds_mean"].double(), stats["conds_std"].double()
    return w, b, m, s, stats["conds"].double()


def _official_logits(z, w, b, m, s):
    return ((z.double() - m) / s) @ w.T + b  # ClsModel: ema_classifier(normalize(cond))


def test_attribute_coordinates_follow_the_official_logits(converted):
    """``logit - b = diag(||w'||) R^T a`` over all 40 attributes (w' = w / conds_std, R = A^T U, U the unit logit
    directions): the first stored attribute's coordinate is ``(logit - b) / ||w'||``; for any prefix of the stored
    order the logits are a function of the protected coordinates only (the residual does not move them)."""
    name, _, pipe, _, _, ref = converted
    w, b, m, s, conds = _classifier(name)
    assert _maxdiff(_official_logits(ref["z"], w, b, m, s), ref["logits"]) < 1e-4  # our formula = official outputs
    dirs = pipe.attribute_directions
    assert dirs.names == CELEBA_HQ_ATTRIBUTES
    q = dirs.directions.double()  # (d, 40)
    w_z = w / s  # (40, d)
    norms = w_z.norm(dim=1)
    r = q.T @ (w_z / norms[:, None]).T  # (40, 40) = A^T U, upper triangular
    torch.testing.assert_close(torch.tril(r, -1), torch.zeros_like(r), rtol=0, atol=1e-5)
    assert (torch.diagonal(r) > 0).all()
    for z, logits in ((ref["z"], ref["logits"]), (conds.float(), ref["conds_logits"])):
        a, _ = dirs.project(z.float(), attributes=list(CELEBA_HQ_ATTRIBUTES))  # (B, 40)
        predicted = (a.double() @ r) * norms + b  # diag(||w'||) R^T a + b
        err = _maxdiff(predicted, logits.double())
        first = _maxdiff(a[:, 0].double(), (logits[:, 0].double() - b[0]) / norms[0])
        print(f"{name}: max |logit - (||w'|| R^T a + b)| = {err:.3g}; first attribute "
              f"max |a - (logit - b)/||w'||| = {first:.3g}")
        assert err < 1e-4 * (1 + float(logits.abs().max())) and first < 1e-4
    # a prefix S: swap the residual for another image's; the official logits of S do not change
    prefix = list(CELEBA_HQ_ATTRIBUTES[:5])
    a0, _ = dirs.project(ref["z"][:1], attributes=prefix)
    _, r_other = dirs.project(conds[:1].float(), attributes=prefix)
    mixed = dirs.compose(a0, r_other, attributes=prefix)
    moved = _maxdiff(_official_logits(mixed, w, b, m, s)[:, :5], ref["logits"][:1, :5].double())
    print(f"{name}: prefix logits after swapping the residual move by {moved:.3g}")
    assert moved < 1e-4
    # clip bounds: the public quantile of the training latents' coordinates, centre = conds_mean
    torch.testing.assert_close(dirs.center.double(), m, rtol=0, atol=1e-6)
    coords = (conds - m) @ q
    torch.testing.assert_close(dirs.clip_bound_values.double(), torch.quantile(coords.abs(), 0.95, dim=0),
                               rtol=1e-5, atol=1e-6)


FIVE = ("5_o_Clock_Shadow", "Eyeglasses", "Male", "Pale_Skin", "Young")  # Young: the last of the official order


def _corr(x, y):
    return float(torch.corrcoef(torch.stack([x.double(), y.double()]))[0, 1])


def test_every_attribute_alone_is_its_official_logit(converted):
    """Issue 32: converted with all 40 attributes in the official order, *every* attribute protected alone has the
    coordinate ``(logit - b) / ||w'||`` (affine in the official logit, correlation >= 0.9999), not only the first."""
    name, _, pipe, _, _, _ = converted
    w, b, m, s, conds = _classifier(name)
    dirs = pipe.attribute_directions
    logits = _official_logits(conds, w, b, m, s)  # (N, 40)
    norms = (w / s).norm(dim=1)
    worst = 1.0
    for i, attr in enumerate(CELEBA_HQ_ATTRIBUTES):
        a, _ = dirs.project(conds.float(), attributes=[attr])
        assert _maxdiff(a[:, 0].double(), (logits[:, i] - b[i]) / norms[i]) < 1e-4, attr
        worst = min(worst, _corr(a[:, 0], logits[:, i]))
    print(f"{name}: smallest correlation of an attribute's coordinate with its official logit: {worst:.7f}")
    assert worst >= 0.9999


@pytest.mark.parametrize("order", [[a] for a in FIVE] + [[a, b] for a in FIVE for b in FIVE if a != b])
def test_any_subset_in_any_order_holds_its_official_logits(converted, order):
    """For S alone or a pair in either order (not a prefix of the stored order): ``logit_S - b_S = diag(||w'||) R^T a``
    with R = A_S^T U_S upper triangular, so the official logits of S follow the protected coordinates only; swapping
    the residual for another image's leaves them unchanged."""
    name, _, pipe, _, _, ref = converted
    w, b, m, s, conds = _classifier(name)
    dirs = pipe.attribute_directions
    rows = [CELEBA_HQ_ATTRIBUTES.index(a) for a in order]
    w_z = (w / s)[rows]  # (k, d)
    norms = w_z.norm(dim=1)
    r = dirs.basis(order).double().T @ (w_z / norms[:, None]).T  # (k, k)
    torch.testing.assert_close(torch.tril(r, -1), torch.zeros_like(r), rtol=0, atol=1e-6)
    a, _ = dirs.project(conds.float(), attributes=order)
    predicted = (a.double() @ r) * norms + b[rows]
    assert _maxdiff(predicted, _official_logits(conds, w, b, m, s)[:, rows]) < 1e-4
    a0, _ = dirs.project(ref["z"][:1], attributes=order)
    _, r_other = dirs.project(conds[:1].float(), attributes=order)
    mixed = dirs.compose(a0, r_other, attributes=order)
    assert _maxdiff(_official_logits(mixed, w, b, m, s)[:, rows], ref["logits"][:1, rows].double()) < 1e-4


def _release_correlations(pipe, order, classifier, *, draws=8, seed=0):
    """At epsilon = 1 (seeded noise, latent level; the official logit is linear in z): the correlation of each named
    attribute's official logit of the release with that of the original, over ``draws`` releases of every training
    latent."""
    w, b, m, s, conds = classifier
    z = conds.float().repeat(draws, 1)  # (draws * N, d)
    released, report = pipe.apply_privacy_noise(z, attributes=order, epsilon=1.0, secure_mode=False,
                                                generator=torch.Generator().manual_seed(seed))
    before, after = _official_logits(z, w, b, m, s), _official_logits(released, w, b, m, s)
    return [_corr(after[:, CELEBA_HQ_ATTRIBUTES.index(a)], before[:, CELEBA_HQ_ATTRIBUTES.index(a)])
            for a in order], report


def test_the_release_no_longer_follows_the_official_logit(converted):
    """Issue 32: at epsilon = 1 the official logit of the release no longer follows the original's (|correlation| <=
    0.2) for the five attributes alone and in pairs in either order; the report names the basis. The same model seen
    as directions saved without raw directions (the stored-order basis) shows the issue: Young alone kept ~0.76."""
    import warnings

    from dpdiffusion.models.attribute_directions import AttributeDirections, PartialProtectionWarning

    name, _, pipe, _, _, _ = converted
    classifier = _classifier(name)
    orders = [[a] for a in FIVE] + [[a, b] for a in FIVE for b in FIVE if a != b]
    worst = {}
    for order in orders:
        corrs, report = _release_correlations(pipe, order, classifier)
        worst["+".join(order)] = max(abs(c) for c in corrs)
        described = pipe.attribute_directions.describe_basis(order)
        assert report.neighbouring_relation.startswith(f"attribute-neighbours on {described}")
        assert report.clip_bounds == dict(zip(order, pipe.attribute_directions.clip_bound_tensor(order).tolist()))
    print(f"{name}: largest |correlation| of a protected official logit with the original at epsilon 1: "
          f"{max(worst.values()):.3f} ({max(worst, key=worst.get)})")
    assert max(worst.values()) <= 0.2, worst
    legacy_dirs = AttributeDirections.from_config({**pipe.attribute_directions.config, "fit_sample_size": 0})
    legacy_dirs.load_state_dict(pipe.attribute_directions.state_dict(), strict=False)
    legacy = DPDiffusionPipeline(unet=pipe.unet, encoder=pipe.encoder, scheduler=pipe.scheduler,
                                 attribute_directions=legacy_dirs)
    # the stored-order basis alone leaves most of Young's direction in the residual (the issue: ~0.76)...
    with pytest.warns(PartialProtectionWarning):
        basis = legacy_dirs.basis(["Young"])
    u = pipe.attribute_directions.raw_directions[:, [CELEBA_HQ_ATTRIBUTES.index("Young")]]
    share = float(torch.linalg.norm(basis.T @ u))
    print(f"{name}: stored-order basis, share of Young's direction in its coordinate: {share:.3f}")
    assert share < 0.5
    # ... so a release of Young alone on such directions is refused (issue 32 review: a warning while the report
    # still names Young as protected was not enough), and the prefix it offers protects Young wholly
    with pytest.raises(ValueError, match=r"cannot be wholly protected.*the smallest prefix"):
        _release_correlations(legacy, ["Young"], classifier)
    corrs, report = _release_correlations(legacy, list(legacy_dirs.names), classifier, draws=2)
    assert abs(corrs[CELEBA_HQ_ATTRIBUTES.index("Young")]) <= 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _release_correlations(legacy, ["5_o_Clock_Shadow"], classifier)  # the first stored attribute: covered, no warning


def test_attribute_order_puts_the_protected_attribute_first(tmp_path):
    """``--attributes Male,Smiling``: Male's coordinate is exactly its official logit direction."""
    name = "tiny32"
    out = CONVERT.convert(FIX / name / "last.ckpt", FIX / name / "latent.ckpt", tmp_path / "p",
                          classifier=FIX / name / "cls.ckpt", attributes=["Male", "Smiling"])
    dirs = DPDiffusionPipeline.from_pretrained(out).attribute_directions
    w, b, m, s, conds = _classifier(name)
    i = CELEBA_HQ_ATTRIBUTES.index("Male")
    a, _ = dirs.project(conds.float(), attributes=["Male"])
    logits = _official_logits(conds, w, b, m, s)[:, i]
    assert dirs.names == ("Male", "Smiling")
    assert _maxdiff(a[:, 0].double(), (logits - b[i]) / (w[i] / s).norm()) < 1e-4


def test_generic_diffusion_pipeline_loader_resolves_the_classes(converted):
    from diffusers import DiffusionPipeline

    _, out, *_ = converted
    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=str(ROOT / "pipelines" / "dp_diffusion"),
                                             trust_remote_code=True, use_safetensors=True)
    assert type(pipe).__name__ == "DPDiffusionPipeline" and isinstance(pipe.unet, DiffAEUNet2DModel)


def test_bad_attribute_order_and_missing_files_raise(tmp_path):
    name = "tiny32"
    with pytest.raises(ValueError, match="attribute_order"):
        CONVERT.convert(FIX / name / "last.ckpt", FIX / name / "latent.ckpt", tmp_path / "p",
                        classifier=FIX / name / "cls.ckpt", attributes=["Male", "Not_An_Attribute"])
    with pytest.raises(ValueError, match="hyper_parameters"):
        CONVERT.convert(FIX / name / "latent.ckpt", FIX / name / "latent.ckpt", tmp_path / "q")


def test_convert_script_end_to_end(tmp_path):
    name = "tiny16_conv_resample"
    cmd = [sys.executable, str(ROOT / "scripts" / "convert_diffae_checkpoint.py"),
           "--checkpoint", str(FIX / name / "last.ckpt"), "--latent-stats", str(FIX / name / "latent.ckpt"),
           "--classifier", str(FIX / name / "cls.ckpt"), "--output", str(tmp_path / "out"), "--fit-sample-size", "128"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {"model_index.json", "README.md", "conversion.json", "unet", "encoder", "scheduler",
            "attribute_directions"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert json.loads((tmp_path / "out" / "conversion.json").read_text())["weights"] == "ema_model"
    dirs_config = json.loads((tmp_path / "out" / "attribute_directions" / "config.json").read_text())
    assert dirs_config["fit_sample_size"] == 128  # evenly spaced rows of the 256 training latents
    card = (tmp_path / "out" / "README.md").read_text()
    assert "any subset, in any order, is protected wholly" in card and "(128 rows of `conds`" in card


def test_convert_script_reports_bad_arguments(tmp_path, capsys):
    name = "tiny16_conv_resample"
    code = CONVERT.main(["--checkpoint", str(FIX / name / "last.ckpt"),
                         "--latent-stats", str(FIX / name / "latent.ckpt"), "--classifier", str(FIX / name / "cls.ckpt"), "--output", str(tmp_path / "bad"),
                         "--clip-quantile", "1.5"])
    assert code == 2 and "clip_quantile must be in (0, 1]" in capsys.readouterr().err


def test_official_grid_and_bad_configurations_raise():
    assert official_timesteps(1000, 10) == list(range(0, 1000, 100))
    assert official_timesteps(1000, 3) == [0, 334, 668]  # not DDIMScheduler's [0, 333, 666]
    for bad in (0, 1, 400):
        with pytest.raises(ValueError, match="num_inference_steps"):
            official_timesteps(1000, bad)
    hp = json.loads((FIX / "ffhq256" / "hyper_parameters.json").read_text())
    for field, value in (("beta_scheduler", "cosine"), ("net_beatgans_resnet_two_cond", False),
                         ("net_enc_use_time", True), ("style_ch", 256)):
        with pytest.raises(ValueError, match=field):
            configs_from_hyper_parameters({**hp, field: value})


def test_diffusers_ddim_scheduler_is_close_but_not_the_official_sampler(converted):
    """Why ``diffae_sampler`` exists: ``DDIMScheduler`` (clip_sample, use_clipped_model_output) on the same grid
    differs only by its float32 ``alphas_cumprod`` when N divides T; the official N = 3 grid it cannot express."""
    from diffusers import DDIMScheduler

    name, _, pipe, _, x_t, ref = converted
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(10)
    x = x_t
    with torch.no_grad():
        for t in sched.timesteps:
            eps = pipe.unet(x, t.expand(x.shape[0]), cond=ref["z"]).sample
            x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    diff = _maxdiff(x, ref["decoded_10"])
    print(f"{name}: DDIMScheduler, 10 steps: max |x0 - official| = {diff:.3g}")
    assert diff < 1e-3
    sched.set_timesteps(3)
    assert sched.timesteps.tolist() != official_timesteps(1000, 3)[::-1]


def test_privacy_oracles_on_a_converted_pipeline(converted):
    """epsilon = inf is plain encode/decode bit for bit; finite epsilon reports its figures; the formal latent audit
    and the decoded-release audit stay below the claim."""
    from dpdiffusion.evaluation.audit import audit_decoded_release, audit_latent_release, formal_neighbours

    name, _, pipe, x, _, _ = converted
    images = (x + 1) / 2
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    attrs = ["Male", "Smiling"]
    out = pipe(images, attributes=attrs, epsilon=math.inf, num_inference_steps=2, output_type="np", generator=g())
    plain = pipe.decode(pipe.encode(images), num_inference_steps=2, generator=g(), output_type="np")
    assert (out.images == plain).all()
    inverted = pipe(images, attributes=attrs, epsilon=math.inf, stochastic_code="inverted", num_inference_steps=3,
                    output_type="pt")  # __call__ inverts with the official ddim_reverse_sample_loop too
    z = pipe.encode(images)
    x_t = pipe.invert(x, z=z, num_inference_steps=3, input_range=(-1, 1))  # x: the model's range, said so
    by_stages = pipe.decode(z, stochastic_code=x_t, num_inference_steps=3, output_type="pt")
    assert inverted.guarantee == "none (epsilon = inf)" and torch.equal(inverted.images, by_stages)
    noisy = pipe(images, attributes=attrs, epsilon=1.0, num_inference_steps=2, output_type="np", generator=g())
    assert noisy.guarantee == "formal" and set(noisy.sigmas) == set(attrs) and noisy.epsilon <= 1.0
    assert not (noisy.images == plain).all()
    z0, z1 = formal_neighbours(pipe, pipe.encode(images[:1]), attributes=attrs)
    res = audit_latent_release(pipe, z0, z1, attributes=attrs, epsilon=2.0, num_trials=4000)
    assert res.epsilon_lower_bound <= 2.0
    dec = audit_decoded_release(pipe, z0, z1, attributes=attrs, epsilon=2.0, num_trials=40, num_inference_steps=2,
                                batch_size=40)
    assert dec.epsilon_lower_bound <= 2.0
    print(f"{name}: latent audit eps_lb={res.epsilon_lower_bound:.3f}, decoded eps_lb={dec.epsilon_lower_bound:.3f}")


@pytest.mark.slow
def test_ffhq256_official_configuration_equals_the_official_code():
    """The official FFHQ256 architecture (``ffhq256_autoenc``) with weights drawn by ``seeded_state_dict`` from each
    parameter's name (the generator drew the same ones for the official model), 2 DDIM steps, batch 1."""
    hp = json.loads((FIX / "ffhq256" / "hyper_parameters.json").read_text())
    ref = load_file(FIX / "ffhq256" / "official_outputs.safetensors")
    steps = META["ffhq256_steps"]
    unet_cfg, enc_cfg, _ = configs_from_hyper_parameters(hp)
    shapes = {k: tuple(v.shape) for k, v in DiffAEUNet2DModel(**unet_cfg).state_dict().items()}
    shapes.update({f"encoder.{k}": tuple(v.shape) for k, v in DiffAESemanticEncoder(**enc_cfg).state_dict().items()})
    state = {f"ema_model.{k}": v for k, v in FIXTURES.seeded_state_dict(shapes).items()}
    unet, encoder, scheduler = convert_models(state, hp)
    del state
    pipe = DPDiffusionPipeline(unet=unet, encoder=encoder, scheduler=scheduler,
                               attribute_directions=CONVERT_DIRS(encoder.config.latent_dim))
    pipe.set_progress_bar_config(disable=True)
    x, x_t = FIXTURES.fixed_inputs(256, batch=1)
    z = pipe.encode_tensor(x)
    images = pipe.decode(ref["z"], stochastic_code=x_t, num_inference_steps=steps, output_type="pt")
    inverted = pipe.invert(x, z=ref["z"], num_inference_steps=steps, input_range=(-1, 1))
    diffs = (_maxdiff(z, ref["z"]), _maxdiff(images, ((ref[f"decoded_{steps}"] + 1) / 2).clamp(0, 1)),
             _maxdiff(inverted, ref[f"inverted_{steps}"]))
    print(f"ffhq256, {steps} steps: max |z|, |decode|, |invert| differences = {diffs}")
    assert diffs[0] < 1e-4 and diffs[1] < 1e-4 and diffs[2] < 1e-3


def CONVERT_DIRS(d):  # placeholder directions for the FFHQ256 pipeline (no classifier in that fixture)
    from dpdiffusion.models.attribute_directions import AttributeDirections

    return AttributeDirections(attribute_names=["pc_1"], latent_dim=d)


def test_semantic_guidance_is_off_by_default_and_optional(converted):
    """The official renderer has no guidance: the default for a DiffAE UNet is 1 (the official sampler exactly);
    an explicit scale > 1 guides towards ``z`` relative to the public centre latent (post-processing)."""
    _, _, pipe, _, x_t, ref = converted
    kw = dict(stochastic_code=x_t, num_inference_steps=3, output_type="pt")
    default = pipe.decode(ref["z"], **kw)
    assert torch.equal(default, pipe.decode(ref["z"], guidance_scale=1.0, **kw))
    guided = pipe.decode(ref["z"], guidance_scale=3.0, **kw)
    assert torch.isfinite(guided).all() and not torch.equal(guided, default)
