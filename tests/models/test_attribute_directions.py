import numpy as np
import pytest
import torch

from dpdiffusion.models.attribute_directions import AttributeDirections


def _data(n=2000, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 3, generator=g) > 0.5).float()
    mix = torch.randn(3, d, generator=g)
    z = (2 * y - 1) @ mix + 0.7 * torch.randn(n, d, generator=g) + 3.0
    return z, y


def test_fit_orthonormal_and_probe_accuracy():
    z, y = _data()
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c"])
    a = dirs.directions
    assert torch.allclose(a.T @ a, torch.eye(3), atol=1e-5)
    assert dirs.names == ("a", "b", "c")
    assert all(acc > 0.9 for acc in dirs.probe_accuracy.tolist())


def test_project_compose_inverse_and_subsets():
    z, y = _data()
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c"])
    for attrs in (["a"], ["b", "c"], ["c", "a"], None):
        a, r = dirs.project(z, attributes=attrs)
        assert a.shape == (len(z), 3 if attrs is None else len(attrs))
        assert torch.allclose(dirs.compose(a, r, attributes=attrs), z, atol=1e-5)
        # the residual has no component along the projected directions (after centring)
        basis = dirs.basis(attrs)
        assert torch.allclose((r - dirs.center) @ basis, torch.zeros(len(z), basis.shape[1]), atol=1e-4)


def test_residual_is_linearly_guarded():
    """Mean-difference removal equalises the class-conditional means of the residual (LEACE condition)."""
    z, y = _data(n=4000)
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c"])
    _, r = dirs.project(z.double().float())
    for i in range(3):
        m = y[:, i] > 0.5
        gap = (r[m].mean(0) - r[~m].mean(0)).norm()
        assert gap < 1e-3, gap


def test_clip_bounds_are_public_quantiles():
    z, y = _data()
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c"], clip_quantile=0.9)
    a, _ = dirs.project(z)
    frac = (a.abs() <= dirs.clip_bound_tensor() + 1e-6).float().mean(0)
    assert torch.all((frac - 0.9).abs() < 0.01)
    assert set(dirs.clip_bounds) == {"a", "b", "c"}
    assert dirs.residual_clip_bound > 0


def test_bad_input():
    z, y = _data()
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unknown attribute"):
        dirs.project(z, attributes=["zzz"])
    with pytest.raises(ValueError, match="at least one"):
        dirs.project(z, attributes=[])
    with pytest.raises(ValueError, match="single class"):
        AttributeDirections.fit(z, torch.ones_like(y), ["a", "b", "c"])
    with pytest.raises(ValueError, match="columns"):
        AttributeDirections.fit(z, y, ["a", "b"])


def test_logistic_method_and_save_load(tmp_path):
    z, y = _data()
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c"], method="logistic")
    dirs.save_pretrained(tmp_path)
    loaded = AttributeDirections.from_pretrained(tmp_path)
    assert loaded.names == dirs.names and loaded.config.method == "logistic"
    for name in ("directions", "center", "clip_bound_values", "latent_norm_bound"):
        assert torch.equal(getattr(loaded, name), getattr(dirs, name))


# ---------------------------------------------------------------- the subspace a call protects (issue 32)
def _correlated(n=3000, d=10, k=4, seed=1):
    """Labels whose mean-difference directions overlap strongly (cosines ~0.5-0.8), so the stored-order QR would
    leave a large part of a later direction outside its coordinate."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(d, generator=g)
    mix = 1.5 * shared + torch.randn(k, d, generator=g)  # (k, d)
    y = (torch.rand(n, k, generator=g) > 0.5).float()
    z = (2 * y - 1) @ mix + 0.8 * torch.randn(n, d, generator=g) - 2.0
    return z, y


def _projector(m: torch.Tensor) -> torch.Tensor:  # orthogonal projector onto span(columns of m), float64
    m = m.double()
    return m @ torch.linalg.pinv(m)


def _all_orders(names):
    import itertools

    return [list(p) for r in range(1, len(names) + 1) for p in itertools.permutations(names, r)]


def test_every_subset_and_order_protects_the_named_directions_wholly():
    """Oracle: for every subset in every order, span(basis) = span(raw directions of the subset) (projectors equal to
    1e-6), each named raw direction lies wholly in it (norm of its projection 1 to 1e-6), the basis is orthonormal and
    Gram-Schmidt in the order named, and the bounds and prior are those of the fit latents' own coordinates."""
    from dpdiffusion.privacy.postprocess import coordinate_prior

    z, y = _correlated()
    names = ["a", "b", "c", "d"]
    dirs = AttributeDirections.fit(z, y, names)
    raw = dirs.raw_directions.double()  # (d, K)
    cos = raw.T @ raw
    assert (cos - torch.eye(4)).abs().max() > 0.5  # the directions really overlap
    for order in _all_orders(names):
        idx = dirs.indices(order)
        basis = dirs.basis(order).double()  # (d, k)
        u = raw[:, idx]
        torch.testing.assert_close(basis.T @ basis, torch.eye(len(order), dtype=torch.float64), rtol=0, atol=1e-6)
        torch.testing.assert_close(_projector(basis), _projector(u), rtol=0, atol=1e-6)
        torch.testing.assert_close((basis.T @ u).norm(dim=0), torch.ones(len(order), dtype=torch.float64), rtol=0,
                                   atol=1e-6)
        gram = basis.T @ u  # (k, k) = R: upper triangular, positive diagonal (coordinate i = i-th Gram-Schmidt vector)
        torch.testing.assert_close(torch.tril(gram, -1), torch.zeros_like(gram), rtol=0, atol=1e-6)
        assert (torch.diagonal(gram) > 0).all()
        # public statistics of that basis = those of the fit latents' own coordinates in it
        a, r = dirs.project(z, attributes=order)
        torch.testing.assert_close(dirs.compose(a, r, attributes=order), z, rtol=0, atol=1e-4)
        bounds = torch.quantile(a.double().abs(), 0.95, dim=0)
        torch.testing.assert_close(dirs.clip_bound_tensor(order).double(), bounds, rtol=1e-5, atol=1e-6)
        prior = coordinate_prior(a.double().numpy(), dirs.clip_bound_tensor(order).tolist())
        for got, want in zip(dirs.prior(order), prior):
            assert len(got["centers"]) == len(want["centers"])
            np.testing.assert_allclose(got["probs"], want["probs"], atol=2.0 / len(z))  # a bin edge may move 1 point
            np.testing.assert_allclose(got["centers"], want["centers"], atol=1e-4)


def test_a_later_attribute_alone_is_its_raw_direction_not_its_stored_order_coordinate():
    """The smallest failing case of issue 32: the stored-order coordinate of the last attribute holds only part of its
    direction; protecting it alone now noises its whole raw direction, with the bound of that raw coordinate."""
    z, y = _correlated()
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c", "d"])
    u = dirs.raw_directions[:, 3].double()
    old_share = float((dirs.directions[:, 3].double() @ u) ** 2)
    assert old_share < 0.6  # what the stored order protected
    torch.testing.assert_close(dirs.basis(["d"]).double()[:, 0], u, rtol=0, atol=1e-7)
    b = (z.double() - dirs.center.double()) @ u
    torch.testing.assert_close(float(dirs.clip_bound_tensor(["d"])[0]), float(torch.quantile(b.abs(), 0.95)),
                               rtol=1e-5, atol=0)
    assert dirs.clip_bounds["d"] == float(dirs.clip_bound_tensor(["d"])[0])
    assert "raw direction of d" in dirs.describe_basis(["d"])
    assert dirs.describe_basis(["c", "a"]) == "span{raw directions of c, a}, orthonormalised (Gram-Schmidt) in this order"


def test_a_prefix_of_the_stored_order_keeps_the_stored_numbers():
    """Where the basis coincides with the stored one (a prefix, named in the stored order), the stored directions,
    bounds and prior are used as they are; recomputing them from the stored fit sample agrees to float32 rounding."""
    z, y = _correlated()
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c", "d"])
    for k in range(1, 5):
        order = ["a", "b", "c", "d"][:k]
        assert torch.equal(dirs.basis(order), dirs.directions[:, :k])
        assert torch.equal(dirs.clip_bound_tensor(order), dirs.clip_bound_values[:k])
        assert dirs.prior(order) == [dirs.config.coordinate_prior[n] for n in order]
        again = dirs._subset(list(range(k)))  # the general path on the same subset
        torch.testing.assert_close(again["basis"], dirs.directions[:, :k].double(), rtol=0, atol=1e-6)
        torch.testing.assert_close(again["bounds"], dirs.clip_bound_values[:k].double(), rtol=1e-5, atol=0)
    assert dirs.clip_bounds["a"] == float(dirs.clip_bound_values[0])


def test_fit_sample_is_saved_and_a_subsample_is_evenly_spaced(tmp_path):
    z, y = _correlated(n=1000)
    dirs = AttributeDirections.fit(z, y, ["a", "b", "c", "d"], fit_sample_size=100)
    assert dirs.config.fit_sample_size == 100 and dirs.fit_raw_coordinates.shape == (100, 4)
    rows = torch.linspace(0, 999, 100, dtype=torch.float64).round().long()
    expect = (z.double()[rows] - dirs.center.double()) @ dirs.raw_directions.double()
    torch.testing.assert_close(dirs.fit_raw_coordinates.double(), expect, rtol=0, atol=1e-4)
    dirs.save_pretrained(tmp_path)
    loaded = AttributeDirections.from_pretrained(tmp_path)
    for name in ("raw_directions", "fit_raw_coordinates", "directions", "clip_bound_values"):
        assert torch.equal(getattr(loaded, name), getattr(dirs, name))
    assert torch.equal(loaded.basis(["c", "a"]), dirs.basis(["c", "a"]))
    assert torch.equal(loaded.clip_bound_tensor(["c", "a"]), dirs.clip_bound_tensor(["c", "a"]))
    with pytest.raises(ValueError, match="fit_sample_size"):
        AttributeDirections.fit(z, y, ["a", "b", "c", "d"], fit_sample_size=0)
    with pytest.raises(ValueError, match="fit_sample_size"):
        AttributeDirections.fit(z, y, ["a", "b", "c", "d"], fit_sample_size=1001)


def test_dependent_raw_directions_are_refused():
    z, _ = _correlated(n=500)
    raw = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="linearly independent"):
        AttributeDirections.from_raw_directions(torch.cat([raw, raw[:, :1] * 2], 1), z, ["a", "b", "c"])
    with pytest.raises(ValueError, match="non-zero"):
        AttributeDirections.from_raw_directions(torch.cat([raw, torch.zeros(10, 1)], 1), z, ["a", "b", "c"])


def _legacy_folder(dirs, path):
    """Save ``dirs`` as a model saved before raw directions were stored: no raw buffers, no fit_sample_size key."""
    import json

    from safetensors.torch import load_file, save_file

    dirs.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    del config["fit_sample_size"]
    (path / "config.json").write_text(json.dumps(config))
    weights = load_file(path / "diffusion_pytorch_model.safetensors")
    save_file({k: v for k, v in weights.items() if k not in ("raw_directions", "fit_raw_coordinates")},
              path / "diffusion_pytorch_model.safetensors")
    return path


def test_directions_saved_without_raw_directions_load_and_warn_where_they_fall_short(tmp_path):
    """Backward compatibility: an old folder loads and keeps the stored-order basis; a prefix of the stored order (in
    any order) is covered and silent; any other subset warns (PartialProtectionWarning) and says so in words."""
    import warnings

    from dpdiffusion.models.attribute_directions import PartialProtectionWarning

    z, y = _correlated()
    fitted = AttributeDirections.fit(z, y, ["a", "b", "c", "d"])
    old = AttributeDirections.from_pretrained(_legacy_folder(fitted, tmp_path / "old"))
    assert not old.has_raw_directions and old.config.fit_sample_size == 0
    assert torch.equal(old.directions, fitted.directions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(old.basis(["b", "a"]), fitted.directions[:, [1, 0]])  # a prefix as a set: covered
        assert old.covers(["b", "a"]) and "prefix of the stored order" in old.describe_basis(["b", "a"])
    with pytest.warns(PartialProtectionWarning, match="add_raw_directions"):
        basis = old.basis(["d"])
    assert torch.equal(basis, fitted.directions[:, [3]])
    assert not old.covers(["d"]) and "only part of its direction" in old.describe_basis(["d"])
    assert old.clip_bounds == {n: float(c) for n, c in zip(old.names, fitted.clip_bound_values.tolist())}


@pytest.mark.parametrize("model", ["default", "unet2d"])
def test_embedded_directions_store_raw_directions_consistent_with_their_stored_order(model):
    """The embedded models' raw directions (scripts/add_raw_directions.py, from their SynthFaces fit set): their QR in
    the stored order is the stored basis, the stored fit sample reproduces the stored bounds, and the default pair
    keeps its stored numbers exactly."""
    from dpdiffusion.models.attribute_directions import _positive_qr
    from dpdiffusion.models.default import EMBEDDED_MODELS, default_model_available

    if not default_model_available(model):
        pytest.skip(f"embedded {model} model not installed")
    dirs = AttributeDirections.from_pretrained(f"{EMBEDDED_MODELS[model][0]}/attribute_directions")
    assert dirs.has_raw_directions and dirs.config.fit_sample_size == 10000
    q, r = _positive_qr(dirs.raw_directions.double())
    torch.testing.assert_close(q, dirs.directions.double(), rtol=0, atol=1e-6)
    coords = torch.linalg.solve_triangular(r, dirs.fit_raw_coordinates.double(), upper=True, left=False)
    torch.testing.assert_close(torch.quantile(coords.abs(), 0.95, dim=0), dirs.clip_bound_values.double(),
                               rtol=1e-5, atol=0)
    assert torch.equal(dirs.clip_bound_tensor(["dark_skin", "long_hair"]), dirs.clip_bound_values[:2])
    for name in dirs.names:  # each attribute alone: its own raw direction
        torch.testing.assert_close(dirs.basis([name])[:, 0], dirs.raw_directions[:, dirs.names.index(name)],
                                   rtol=0, atol=1e-7)


def _add_raw_directions_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "add_raw_directions.py"
    spec = importlib.util.spec_from_file_location("add_raw_directions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_add_raw_directions(folder, *extra):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "add_raw_directions.py"
    return subprocess.run([sys.executable, str(script), "--model", str(folder), *extra], capture_output=True,
                          text=True, timeout=300)


def test_add_raw_directions_recovers_what_fit_stores(dummy_components, tmp_path):
    """End to end: directions fitted on a SynthFaces fit set and saved the old way (no raw directions); the script
    re-encodes the fit set and stores the raw directions and coordinates that `fit` stores now, leaving every stored
    buffer as it was."""
    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.data.synthfaces import SYNTHFACES_ATTRIBUTES, make_synthfaces_arrays
    from dpdiffusion.training.train_autoencoder import encode_all

    images, params = make_synthfaces_arrays(300, image_size=16, seed=3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.stack([torch.as_tensor(params[n], dtype=torch.float32) for n in SYNTHFACES_ATTRIBUTES], 1)
    fitted = AttributeDirections.fit(encode_all(dummy_components["encoder"], x), labels, list(SYNTHFACES_ATTRIBUTES))
    pipe = DPDiffusionPipeline(**dict(dummy_components, attribute_directions=fitted))
    pipe.save_pretrained(tmp_path / "model")
    _legacy_folder(fitted, tmp_path / "model" / "attribute_directions")
    res = _run_add_raw_directions(tmp_path / "model", "--num-images", "300", "--seed", "3")
    assert res.returncode == 0, res.stderr
    again = AttributeDirections.from_pretrained(tmp_path / "model" / "attribute_directions")
    assert again.has_raw_directions and again.config.fit_sample_size == 300
    for name in ("directions", "center", "clip_bound_values", "probe_accuracy", "latent_norm_bound"):
        assert torch.equal(getattr(again, name), getattr(fitted, name))
    assert again.config.coordinate_prior == fitted.config.coordinate_prior
    torch.testing.assert_close(again.raw_directions, fitted.raw_directions, rtol=0, atol=1e-5)
    torch.testing.assert_close(again.fit_raw_coordinates, fitted.fit_raw_coordinates, rtol=0, atol=1e-4)
    torch.testing.assert_close(again.clip_bound_tensor(["wearing_hat", "smiling"]),
                               fitted.clip_bound_tensor(["wearing_hat", "smiling"]), rtol=1e-5, atol=0)
    with pytest.raises(SystemExit, match="already stores raw directions"):
        _add_raw_directions_module().main(["--model", str(tmp_path / "model")])


def test_add_raw_directions_refuses_data_that_is_not_the_fit_set(dummy_pipe, tmp_path):
    """The dummy directions were fitted on random latents: the bounds check fails and nothing is written."""
    dummy_pipe.save_pretrained(tmp_path / "model")
    _legacy_folder(dummy_pipe.attribute_directions, tmp_path / "model" / "attribute_directions")
    before = {p.name: p.read_bytes() for p in (tmp_path / "model" / "attribute_directions").iterdir()}
    with pytest.raises(SystemExit, match="not the fit set"):
        _add_raw_directions_module().main(["--model", str(tmp_path / "model"), "--num-images", "200"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "model" / "attribute_directions").iterdir()} == before
