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
