"""Feature unlearning: exact curvature products, solvers, a known-answer unlearning problem, and the API."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dpdiffusion.evaluation.unlearning_metrics import parameter_distance, prediction_agreement
from dpdiffusion.training.classifier import build_classifier, per_example_loss
from dpdiffusion.unlearning import (
    HessianOperator,
    UnlearningResult,
    conjugate_gradient,
    find_blocks,
    power_iteration,
    select_parameters,
    unlearn,
)
from dpdiffusion.unlearning.core import FlatParameters, Objective, changed_gradient_sum
from dpdiffusion.unlearning.step_search import scale_grid, split_pairs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread, and two threads stall badly on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# Tiny models and a data set with a known answer
# ----------------------------------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """A transformers-like classifier on (B, 3, 4, 4) float images: `config`, `pixel_values=`, `.logits`."""

    def __init__(self, num_labels=2, hidden=None, problem_type="multi_label_classification", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(problem_type=problem_type, num_labels=num_labels)
        d = 48
        self.layers = nn.ModuleList([nn.Linear(d, hidden), nn.Linear(hidden, hidden)] if hidden else [])
        self.classifier = nn.Linear(hidden or d, num_labels)

    def forward(self, pixel_values, output_hidden_states=False):
        h = pixel_values.flatten(1)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return SimpleNamespace(logits=self.classifier(h), hidden_states=(h[:, :, None, None],))


class FakeAccelerator:
    """One process of a simulated multi-process run: shards rows, `reduce` is left to the test."""

    def __init__(self, process_index=0, num_processes=1):
        self.device = torch.device("cpu")
        self.process_index, self.num_processes = process_index, num_processes
        self.is_main_process = process_index == 0

    def autocast(self):
        return contextlib.nullcontext()

    def reduce(self, tensor, reduction="sum"):
        return tensor


def known_answer_data(n=240, n_changed=60, seed=0):
    """Labels depend on channel 0 (the utility feature) and, in the original data only, on channel 1 (a
    'sensitive' feature that duplicates the label); the revision replaces channel 1 of the changed rows by noise.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 4, 4, generator=g)
    y = torch.stack([(x[:, 0].mean((1, 2)) > 0), (x[:, 2, 0, 0] > 0)], dim=1).float()
    x[:, 1] += 2.0 * (2 * y[:, :1, None] - 1)  # sensitive feature carries label 0
    revised = x.clone()
    revised[:n_changed, 1] = torch.randn(n_changed, 4, 4, generator=g)
    return x, revised, y, n_changed


def train_to_optimum(model, x, y, weight_decay, steps=60):
    """Minimise mean BCE + weight_decay/2 ||theta||^2 to high precision (L-BFGS, full batch)."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = per_example_loss(model(pixel_values=x).logits, y, "multi_label_classification").mean()
        loss = loss + 0.5 * weight_decay * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return model.eval()


@pytest.fixture(scope="module")
def convex_problem():
    x, revised, y, k = known_answer_data()
    wd = 1e-2
    original = train_to_optimum(TinyNet(seed=0), x, y, wd)
    retrained = train_to_optimum(TinyNet(seed=0), revised, y, wd)
    return SimpleNamespace(x=x, revised=revised, y=y, k=k, wd=wd, original=original, retrained=retrained)


# ----------------------------------------------------------------------------------------------------------------
# Curvature products and solvers
# ----------------------------------------------------------------------------------------------------------------
def _objective(model, accelerator=None):
    names = [n for n, _ in model.named_parameters()]
    flat = FlatParameters(model, names)
    for p in model.parameters():
        p.requires_grad_(False)
    return Objective(model.eval(), flat, None, accelerator or FakeAccelerator()), flat


def _full_loss_fn(model, flat, x, y):
    def f(theta):
        out = torch.func.functional_call(model, flat.unflatten(theta), (), {"pixel_values": x})
        return per_example_loss(out.logits, y, "multi_label_classification").mean()

    return f


def test_hvp_matches_full_hessian_on_tiny_mlp():
    torch.manual_seed(0)
    model = TinyNet(hidden=5)
    x, y = torch.randn(16, 3, 4, 4), (torch.rand(16, 2) > 0.5).float()
    obj, flat = _objective(model)
    theta = flat.flatten(model)
    full_h = torch.autograd.functional.hessian(_full_loss_fn(model, flat, x, y), theta, vectorize=True)  # (P, P)
    op = HessianOperator(obj, theta, x, y, torch.arange(16), batch_size=5, curvature="hessian")
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op(v), full_h @ v, rtol=1e-4, atol=1e-6)
    op.damping = 0.3
    torch.testing.assert_close(op(v), full_h @ v + 0.3 * v, rtol=1e-4, atol=1e-6)
    assert op.quadratic_form(v) == pytest.approx(float(v @ full_h @ v) + 0.3 * float(v @ v), rel=1e-4)


def _explicit_ggn(model, flat, theta, x):
    """J^T H_f J / B from the explicit Jacobian of the logits, H_f of the BCE averaged over the L=2 labels."""

    def logits(th):
        return torch.func.functional_call(model, flat.unflatten(th), (), {"pixel_values": x}).logits

    jac = torch.autograd.functional.jacobian(logits, theta).reshape(2 * len(x), -1)  # (B*L, P)
    p = torch.sigmoid(logits(theta)).reshape(-1)
    return jac.T @ torch.diag(p * (1 - p) / 2) @ jac / len(x)


def test_gauss_newton_product_matches_explicit_jacobian_form():
    torch.manual_seed(0)
    model = TinyNet(hidden=4)
    x, y = torch.randn(6, 3, 4, 4), (torch.rand(6, 2) > 0.5).float()
    obj, flat = _objective(model)
    theta = flat.flatten(model)
    ggn = _explicit_ggn(model, flat, theta, x)
    op = HessianOperator(obj, theta, x, y, torch.arange(6), batch_size=4, curvature="gauss_newton", damping=0.2)
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(2))
    # v^T (G + damping I) v by forward mode alone, before any product has built the reverse-mode graphs
    assert op.quadratic_form(v) == pytest.approx(float(v @ ggn @ v) + 0.2 * float(v @ v), rel=1e-4)
    assert op._pullbacks == []
    torch.testing.assert_close(op(v), ggn @ v + 0.2 * v, rtol=1e-4, atol=1e-6)


def test_gauss_newton_equals_hessian_for_a_linear_model():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(10, 3, 4, 4), (torch.rand(10, 2) > 0.5).float()
    obj, flat = _objective(model)
    theta = flat.flatten(model)
    v = torch.randn(theta.numel())
    h = HessianOperator(obj, theta, x, y, torch.arange(10), curvature="hessian")(v)
    g = HessianOperator(obj, theta, x, y, torch.arange(10), curvature="gauss_newton")(v)
    torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-7)


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: a @ v, b, max_iters=100, tol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)
    assert info["relative_residual"] <= 1e-10 and not info["negative_curvature"]
    assert info["iterations"] <= 12 + 2  # exact in n steps up to rounding


def test_conjugate_gradient_stops_on_negative_curvature():
    a = torch.diag(torch.tensor([2.0, -1.0]))
    x, info = conjugate_gradient(lambda v: a @ v, torch.tensor([0.0, 1.0]), max_iters=10)
    assert info["negative_curvature"] and torch.isfinite(x).all()


def test_power_iteration_finds_top_eigenvalue():
    a = torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5]))
    eig, vec = power_iteration(lambda v: a @ v, 4, iters=200, tol=1e-9, seed=0)
    assert eig == pytest.approx(5.0, rel=1e-4)
    assert abs(float(vec[0])) == pytest.approx(1.0, abs=1e-3)


def test_gradient_sums_are_sharded_and_add_up():
    torch.manual_seed(0)
    model = TinyNet(hidden=3)
    x, revised, y, k = known_answer_data(n=20, n_changed=7)
    orig, rev = (x[:k], y[:k]), (revised[:k], y[:k])
    obj, flat = _objective(model)
    theta = flat.flatten(model)
    full, _ = changed_gradient_sum(obj, theta, orig, rev, batch_size=3, progress=False)
    parts = []
    for rank in range(2):
        o = Objective(model, flat, None, FakeAccelerator(rank, 2))
        parts.append(changed_gradient_sum(o, theta, orig, rev, batch_size=2, progress=False)[0])
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-5, atol=1e-6)
    # and the sum is sum grad l(z~) - sum grad l(z)
    f_rev, f_orig = _full_loss_fn(model, flat, *rev), _full_loss_fn(model, flat, *orig)
    expected = k * (torch.func.grad(f_rev)(theta) - torch.func.grad(f_orig)(theta))
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-6)


def test_gradient_sums_buffer_differing_pairs_and_skip_identical_ones():
    """Identical pairs interleaved with changed ones, small batches: the sum is that of the changed pairs alone."""
    torch.manual_seed(0)
    model = TinyNet(hidden=3)
    x, revised, y, _ = known_answer_data(n=23, n_changed=23)
    same = torch.tensor([i % 3 == 1 for i in range(23)])
    revised[same] = x[same]
    obj, flat = _objective(model)
    theta = flat.flatten(model)
    full, info = changed_gradient_sum(obj, theta, (x, y), (revised, y), batch_size=4, progress=False)
    d = ~same
    f_rev, f_orig = _full_loss_fn(model, flat, revised[d], y[d]), _full_loss_fn(model, flat, x[d], y[d])
    expected = int(d.sum()) * (torch.func.grad(f_rev)(theta) - torch.func.grad(f_orig)(theta))
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-6)
    assert info["identical_pairs_skipped"] == int(same.sum())
    with torch.no_grad():  # a caller's no_grad does not break the backward passes
        again, _ = changed_gradient_sum(obj, theta, (x, y), (revised, y), batch_size=7, progress=False)
    torch.testing.assert_close(again, full, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Known answer: unlearning moves towards retraining
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["first_order", "second_order"])
def test_unlearning_moves_towards_retrained_model(convex_problem, method):
    p = convex_problem
    kwargs = dict(train_set=(p.revised, p.y), progress=False, damping=p.wd, hessian_samples=10_000, cg_iters=30,
                  cg_tol=1e-6, batch_size=len(p.x), step_search="quadratic")  # the closed forms themselves
    result = unlearn(p.original, (p.x[: p.k], p.y[: p.k]), (p.revised[: p.k], p.y[: p.k]), method=method, **kwargs)
    before = parameter_distance(p.original, p.retrained)
    after = parameter_distance(result.model, p.retrained)
    # the influence-function step is exact to first order in the change: most of the distance goes
    assert after < (0.3 if method == "second_order" else 0.95) * before
    probe = torch.randn(400, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    probe[:, 1] *= 3
    assert prediction_agreement(result.model, p.retrained, probe) >= prediction_agreement(p.original, p.retrained, probe)
    # the revised examples' sensitive channel loses weight for label 0, as it does in the retrained model
    w = lambda m: m.classifier.weight[0].reshape(3, 4, 4)[1].sum().item()  # noqa: E731
    assert w(p.retrained) < w(p.original) and w(result.model) < w(p.original)
    assert result.n_changed == p.k and result.n_train == len(p.x) and result.seconds > 0
    assert result.method == method and isinstance(result, UnlearningResult)


def test_second_order_default_damping_from_spectrum(convex_problem):
    p = convex_problem
    r = unlearn(p.original, (p.x[: p.k], p.y[: p.k]), (p.revised[: p.k], p.y[: p.k]), method="second_order",
                train_set=(p.revised, p.y), progress=False, damping_ratio=0.05, cg_iters=5, batch_size=len(p.x))
    assert r.damping == pytest.approx(0.05 * r.extra["lambda_max"], rel=1e-6)
    assert r.extra["lambda_max"] > 0 and r.extra["cg_iterations"] >= 1


def test_original_model_is_not_modified(convex_problem):
    p = convex_problem
    before = {n: t.clone() for n, t in p.original.state_dict().items()}
    unlearn(p.original, (p.x[: p.k], p.y[: p.k]), (p.revised[: p.k], p.y[: p.k]), tau=1e-3, progress=False)
    assert all(torch.equal(before[n], t) for n, t in p.original.state_dict().items())


def test_explicit_tau_is_the_paper_update(convex_problem):
    p = convex_problem
    orig, rev = (p.x[: p.k], p.y[: p.k]), (p.revised[: p.k], p.y[: p.k])
    r = unlearn(p.original, orig, rev, tau=0.01, progress=False)
    model = TinyNet(seed=0)
    model.load_state_dict(p.original.state_dict())
    obj, flat = _objective(model)
    theta = flat.flatten(model)
    delta = p.k * (torch.func.grad(_full_loss_fn(model, flat, *rev))(theta)
                   - torch.func.grad(_full_loss_fn(model, flat, *orig))(theta))
    torch.testing.assert_close(FlatParameters(r.model, flat.names).flatten(r.model), theta - 0.01 * delta,
                               rtol=1e-5, atol=1e-6)
    assert r.tau == 0.01


# ----------------------------------------------------------------------------------------------------------------
# ResNet: last_k_blocks, determinism, baselines
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_resnet_setup():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 16, 16, 3), dtype=torch.uint8, generator=g)
    labels = (torch.rand(48, 2, generator=g) > 0.5).float()
    revised = images.clone()
    revised[:12, ..., 0] = 255 - revised[:12, ..., 0]
    model = build_classifier(2, image_size=16, hidden_sizes=(4, 8), embedding_size=4, seed=0)
    return SimpleNamespace(model=model, images=images, revised=revised, labels=labels)


def test_find_blocks_and_select_parameters_on_resnet(tiny_resnet_setup):
    model = tiny_resnet_setup.model
    assert find_blocks(model) == ["resnet.encoder.stages.0", "resnet.encoder.stages.1"]
    assert select_parameters(model, 0) == ["classifier.1.weight", "classifier.1.bias"]
    last1 = select_parameters(model, 1)
    assert all(n.startswith(("resnet.encoder.stages.1.", "classifier.")) for n in last1)
    assert len(select_parameters(model, None)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="last_k_blocks"):
        select_parameters(model, 3)


@pytest.mark.parametrize("method", ["first_order", "second_order"])
def test_resnet_last_k_blocks_deterministic(tiny_resnet_setup, method):
    s = tiny_resnet_setup
    orig, rev = (s.images[:12], s.labels[:12]), (s.revised[:12], s.labels[:12])
    train = (torch.cat([s.revised[:12], s.images[12:]]), s.labels)
    kw = dict(method=method, train_set=train, last_k_blocks=1, hessian_samples=16, cg_iters=3, power_iters=3,
              batch_size=8, progress=False, seed=0)
    a = unlearn(s.model, orig, rev, **kw)
    b = unlearn(s.model, orig, rev, **kw)
    updated = set(select_parameters(s.model, 1))
    pa, pb, p0 = dict(a.model.named_parameters()), dict(b.model.named_parameters()), dict(s.model.named_parameters())
    for name in p0:
        assert torch.equal(pa[name], pb[name]), name  # same seed -> identical
        if name not in updated:
            assert torch.equal(pa[name], p0[name]), name  # frozen outside the last block + head
    assert any(not torch.equal(pa[n], p0[n]) for n in updated)
    assert a.updated_parameters == sum(p0[n].numel() for n in updated)


def test_finetune_and_retrain_baselines(tiny_resnet_setup):
    s = tiny_resnet_setup
    orig, rev = (s.images[:12], s.labels[:12]), (s.revised[:12], s.labels[:12])
    train = (torch.cat([s.revised[:12], s.images[12:]]), s.labels)
    ft = unlearn(s.model, orig, rev, method="finetune", train_set=train, epochs=1, batch_size=16, progress=False)
    assert parameter_distance(ft.model, s.model) > 0
    calls = []

    def retrain_fn(images, labels):
        calls.append(len(images))
        return build_classifier(2, image_size=16, hidden_sizes=(4, 8), embedding_size=4, seed=1)

    rt = unlearn(s.model, orig, rev, method="retrain", train_set=train, retrain_fn=retrain_fn, progress=False)
    assert calls == [48] and rt.method == "retrain"
    rt2 = unlearn(s.model, orig, rev, method="retrain", train_set=train, epochs=1, batch_size=16, progress=False)
    assert type(rt2.model) is type(s.model)


def test_accepts_torch_datasets(convex_problem):
    p = convex_problem
    ds_o = torch.utils.data.TensorDataset(p.x[: p.k], p.y[: p.k])
    ds_r = [{"pixel_values": p.revised[i], "labels": p.y[i]} for i in range(p.k)]
    a = unlearn(p.original, ds_o, ds_r, tau=1e-3, progress=False)
    b = unlearn(p.original, (p.x[: p.k], p.y[: p.k]), (p.revised[: p.k], p.y[: p.k]), tau=1e-3, progress=False)
    assert parameter_distance(a.model, b.model) == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Held-out step search
# ----------------------------------------------------------------------------------------------------------------
def test_split_pairs_and_grid():
    fit, held = split_pairs(60, 0.2, seed=3)
    assert len(held) == 12 and len(fit) == 48 and set(fit.tolist()).isdisjoint(held.tolist())
    assert sorted(fit.tolist() + held.tolist()) == list(range(60))
    assert torch.equal(split_pairs(60, 0.2, seed=3)[1], held) and not torch.equal(split_pairs(60, 0.2, seed=4)[1], held)
    assert len(split_pairs(2, 0.01, seed=0)[1]) == 1 and len(split_pairs(2, 0.99, seed=0)[0]) == 1
    grid = scale_grid(8.0)
    assert grid[0] == 0.125 and grid[-1] == pytest.approx(8.0) and 1.0 in grid
    assert all(b / a == pytest.approx(2**0.5) for a, b in zip(grid, grid[1:]))


def test_held_out_first_order_step_is_a_local_minimiser_of_the_held_out_loss(convex_problem):
    p = convex_problem
    pairs = dict(original=(p.x[: p.k], p.y[: p.k]), revised=(p.revised[: p.k], p.y[: p.k]))
    kw = dict(train_set=(p.revised, p.y), progress=False, batch_size=len(p.x), hessian_samples=10_000, seed=1)
    r = unlearn(p.original, **pairs, method="first_order", **kw)
    q = unlearn(p.original, **pairs, method="first_order", step_search="quadratic", **kw)
    c = r.extra["step_scale"]
    assert r.extra["step_search"] == "held_out" and q.extra["step_search"] == "none"
    # the origin is Polyak's step sum(l~ - l) / ||delta||^2, computed here from the losses and gradients themselves
    model = TinyNet(seed=0)
    model.load_state_dict(p.original.state_dict())
    obj, flat = _objective(model)
    theta = flat.flatten(model)
    f_rev, f_orig = (_full_loss_fn(model, flat, p.revised[: p.k], p.y[: p.k]),
                     _full_loss_fn(model, flat, p.x[: p.k], p.y[: p.k]))
    delta = p.k * (torch.func.grad(f_rev)(theta) - torch.func.grad(f_orig)(theta))
    polyak = p.k * float(f_rev(theta) - f_orig(theta)) / float(delta @ delta)
    assert r.extra["step_origin"] == "polyak" and "hessian_vector_products" not in r.extra
    assert r.extra["tau_origin"] == pytest.approx(polyak, rel=1e-4) and r.tau == pytest.approx(c * polyak, rel=1e-4)
    assert "curvature_along_update" in q.extra and q.tau != pytest.approx(polyak, rel=1e-2)
    # the update applied is the full-delta step of length c* (the held-out pairs are unlearned too)
    same = unlearn(p.original, **pairs, method="first_order", tau=r.tau, **kw)
    assert parameter_distance(r.model, same.model) < 1e-6
    # oracle: the held-out loss of the fit-pairs' direction, brute force, at c* and its grid neighbours
    fit, held = split_pairs(p.k, 0.2, seed=1)

    def held_loss(scale):
        m = unlearn(p.original, (p.x[fit], p.y[fit]), (p.revised[fit], p.y[fit]), method="first_order",
                    tau=r.extra["tau_origin"] * scale * p.k / len(fit), **kw).model
        with torch.no_grad():
            return per_example_loss(m(pixel_values=p.revised[held]).logits, p.y[held], "multi_label_classification").mean()

    assert float(held_loss(c)) == pytest.approx(r.extra["held_out_loss"], rel=1e-4)
    for neighbour in (c * 2**0.5, c / 2**0.5):
        if 0.125 - 1e-9 <= neighbour <= 8.0 + 1e-9:
            assert held_loss(c) <= held_loss(neighbour) + 1e-7


def test_held_out_search_leaves_out_pairs_that_did_not_change(convex_problem):
    """Half the pairs are no-op revisions: the held-out loss is that of the changed held-out pairs only, and the
    fit direction is rescaled by the counts of changed pairs (oracle: brute force over those rows)."""
    p = convex_problem
    revised = p.revised[: p.k].clone()
    noop = torch.arange(p.k) % 2 == 0
    revised[noop] = p.x[: p.k][noop]
    pairs = dict(original=(p.x[: p.k], p.y[: p.k]), revised=(revised, p.y[: p.k]))
    train = torch.cat([revised, p.x[p.k :]])
    kw = dict(train_set=(train, p.y), progress=False, batch_size=len(p.x), hessian_samples=10_000, seed=2)
    r = unlearn(p.original, **pairs, method="first_order", **kw)
    fit, held = split_pairs(p.k, 0.2, seed=2)
    fit_changed, held_changed = fit[~noop[fit]], held[~noop[held]]
    assert r.extra["held_out_pairs"] == len(held_changed) < len(held)
    rescale = int((~noop).sum()) / len(fit_changed)

    def held_loss(scale, rows):
        m = unlearn(p.original, (p.x[fit], p.y[fit]), (revised[fit], p.y[fit]), method="first_order",
                    tau=r.extra["tau_origin"] * scale * rescale, **kw).model
        with torch.no_grad():
            return float(per_example_loss(m(pixel_values=revised[rows]).logits, p.y[rows],
                                          "multi_label_classification").mean())

    c = r.extra["step_scale"]
    assert held_loss(c, held_changed) == pytest.approx(r.extra["held_out_loss"], rel=1e-4)
    assert held_loss(1.0, held_changed) == pytest.approx(r.extra["held_out_loss_at_1"], rel=1e-4)
    assert held_loss(1.0, held) != pytest.approx(r.extra["held_out_loss_at_1"], rel=1e-3)  # the no-ops are out
    for neighbour in (c * 2**0.5, c / 2**0.5):
        if 0.125 - 1e-9 <= neighbour <= 8.0 + 1e-9:
            assert held_loss(c, held_changed) <= held_loss(neighbour, held_changed) + 1e-7


def test_training_loss_search_minimises_the_revised_training_loss_estimate(convex_problem):
    """step_search="training_loss": c* minimises w * (held-out revisions' loss) + (1 - w) * (mean loss of the Hessian's
    subsample of train_set), w = revisions / n_train, along the fit pairs' direction. Oracle: the direction, Polyak's
    origin and both losses computed here by autograd on the raw tensors, then compared along the grid."""
    from dpdiffusion.unlearning.core import hessian_subsample

    p = convex_problem
    revised = p.revised[: p.k].clone()
    noop = torch.arange(p.k) % 3 == 0
    revised[noop] = p.x[: p.k][noop]
    train = torch.cat([revised, p.x[p.k :]])
    pairs = dict(original=(p.x[: p.k], p.y[: p.k]), revised=(revised, p.y[: p.k]))
    kw = dict(train_set=(train, p.y), progress=False, batch_size=len(p.x), hessian_samples=24, seed=5)
    r = unlearn(p.original, **pairs, method="first_order", step_search="training_loss", **kw)
    h = unlearn(p.original, **pairs, method="first_order", **kw)
    assert r.extra["step_search"] == "training_loss" and h.extra["step_search"] == "held_out"
    assert "held_out_loss" not in r.extra and r.extra["training_rows"] == 24

    model = TinyNet(seed=0)
    model.load_state_dict(p.original.state_dict())
    _, flat = _objective(model)
    theta = flat.flatten(model)
    changed = torch.nonzero(~noop).flatten()
    w = len(changed) / len(train)
    assert r.extra["revised_share"] == pytest.approx(w)

    def grad_sum(rows):
        g = lambda x: torch.func.grad(_full_loss_fn(model, flat, x[rows], p.y[rows]))(theta)  # noqa: E731
        return len(rows) * (g(revised) - g(p.x))

    delta = grad_sum(changed)
    gain = len(changed) * float(_full_loss_fn(model, flat, revised[changed], p.y[changed])(theta)
                                - _full_loss_fn(model, flat, p.x[changed], p.y[changed])(theta))
    polyak = gain / float(delta @ delta)
    fit, held = split_pairs(p.k, 0.2, seed=5)
    fit_changed, held_changed = fit[~noop[fit]], held[~noop[held]]
    direction = polyak * len(changed) / len(fit_changed) * grad_sum(fit_changed)
    sample = hessian_subsample(len(train), 24, 5)

    def objective(c):
        th = theta - c * direction
        return float(w * _full_loss_fn(model, flat, revised[held_changed], p.y[held_changed])(th)
                     + (1 - w) * _full_loss_fn(model, flat, train[sample], p.y[sample])(th))

    c = r.extra["step_scale"]
    assert objective(c) == pytest.approx(r.extra["training_loss_estimate"], rel=1e-4)
    assert objective(1.0) == pytest.approx(r.extra["training_loss_estimate_at_1"], rel=1e-4)
    for neighbour in (c * 2**0.5, c / 2**0.5):
        if 0.125 - 1e-9 <= neighbour <= 8.0 + 1e-9:
            assert objective(c) <= objective(neighbour) + 1e-7
    # the update applied is c* times the full step; the unchanged rows pull it shorter than the held-out search's
    assert r.tau == pytest.approx(c * polyak, rel=1e-4) and c <= h.extra["step_scale"]
    same = unlearn(p.original, **pairs, method="first_order", tau=r.tau, **kw)
    assert parameter_distance(r.model, same.model) < 1e-6
    with pytest.raises(ValueError, match="training_loss' needs train_set"):
        unlearn(p.original, **pairs, method="second_order", step_search="training_loss", n_train=len(train),
                progress=False)


def test_polyak_origin_falls_back_to_the_quadratic_model_when_revisions_lower_the_loss(convex_problem):
    """Swapped roles: the 'revisions' are the images the model was trained on, so the loss falls and no Polyak
    step exists; the origin is then the quadratic model's tau (one curvature pass)."""
    from dpdiffusion.unlearning.first_order import polyak_tau

    p = convex_problem
    r = unlearn(p.original, (p.revised[: p.k], p.y[: p.k]), (p.x[: p.k], p.y[: p.k]), method="first_order",
                train_set=(p.x, p.y), progress=False, batch_size=len(p.x), hessian_samples=10_000)
    assert r.extra["loss_sum_revised"] < r.extra["loss_sum_original"]
    assert r.extra["step_origin"] == "quadratic" and r.extra["curvature_along_update"] > 0
    assert polyak_tau(-1.0, torch.ones(3)) is None and polyak_tau(1.0, torch.zeros(3)) is None
    assert polyak_tau(2.0, torch.tensor([1.0, 1.0])) == 1.0


def test_cg_tol_stops_conjugate_gradients_at_the_residual(convex_problem):
    p = convex_problem
    pairs = dict(original=(p.x[: p.k], p.y[: p.k]), revised=(p.revised[: p.k], p.y[: p.k]))
    kw = dict(train_set=(p.revised, p.y), progress=False, batch_size=len(p.x), hessian_samples=10_000, cg_iters=50,
              damping_ratio=0.01, method="second_order", step_search="quadratic")
    loose, tight = unlearn(p.original, **pairs, cg_tol=0.3, **kw), unlearn(p.original, **pairs, cg_tol=1e-6, **kw)
    assert loose.extra["cg_relative_residual"] <= 0.3 and tight.extra["cg_relative_residual"] <= 1e-6
    assert loose.extra["cg_iterations"] < tight.extra["cg_iterations"]
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="cg_tol"):
            unlearn(p.original, **pairs, cg_tol=bad, **kw)


def test_held_out_second_order_scales_the_full_solve(convex_problem):
    p = convex_problem
    pairs = dict(original=(p.x[: p.k], p.y[: p.k]), revised=(p.revised[: p.k], p.y[: p.k]))
    kw = dict(train_set=(p.revised, p.y), progress=False, batch_size=len(p.x), hessian_samples=10_000, cg_iters=30,
              damping=p.wd, method="second_order")
    r = unlearn(p.original, **pairs, **kw)
    q = unlearn(p.original, **pairs, step_search="quadratic", **kw)
    assert r.extra["update_norm"] == pytest.approx(r.extra["step_scale"] * q.extra["update_norm"], rel=1e-4)
    assert r.extra["step_scales_tried"] >= 2 and r.extra["held_out_pairs"] == round(0.2 * p.k)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, match",
    [
        (lambda o, r, t: (o, (r[0][:-1], r[1][:-1]), t), "same length"),
        (lambda o, r, t: (o, (r[0][:, :, :2], r[1]), t), "same shape"),
        (lambda o, r, t: (o, (r[0], 1 - r[1]), t), "labels"),
        (lambda o, r, t: (o, ("nonsense", r[1]), t), "revised"),
    ],
)
def test_misaligned_inputs_raise(convex_problem, change, match):
    p = convex_problem
    o, r, t = change((p.x[:5], p.y[:5]), (p.revised[:5], p.y[:5]), (p.revised, p.y))
    with pytest.raises(ValueError, match=match):
        unlearn(p.original, o, r, train_set=t, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="newton"), "method"),
        (dict(tau=-1.0), "tau"),
        (dict(tau=float("nan")), "tau"),
        (dict(damping=-0.1), "damping"),
        (dict(batch_size=0), "batch_size"),
        (dict(cg_iters=0), "cg_iters"),
        (dict(hessian_samples=0), "hessian_samples"),
        (dict(curvature="fisher"), "curvature"),
        (dict(step_search="grid"), "step_search must be one of"),
        (dict(holdout_fraction=1.0), r"holdout_fraction must be in \(0, 1\)"),
        (dict(max_step_scale=0.5), "max_step_scale must be a finite number >= 1"),
        (dict(method="finetune", train_set=None), "train_set"),
        (dict(method="retrain", train_set=None), "train_set"),
        (dict(method="second_order", train_set=None), "train_set"),
        (dict(method="second_order", n_train=2), "n_train"),
    ],
)
def test_bad_arguments_raise(convex_problem, kwargs, match):
    p = convex_problem
    kwargs = {"train_set": (p.revised, p.y), **kwargs}
    with pytest.raises(ValueError, match=match):
        unlearn(p.original, (p.x[:5], p.y[:5]), (p.revised[:5], p.y[:5]), progress=False, **kwargs)


def test_bad_loss_fn_shape_raises(convex_problem):
    p = convex_problem
    with pytest.raises(ValueError, match="loss_fn"):
        unlearn(p.original, (p.x[:5], p.y[:5]), (p.revised[:5], p.y[:5]), tau=0.1, progress=False,
                loss_fn=lambda logits, labels: (logits - labels).pow(2).mean())


def test_identical_pairs_contribute_nothing(convex_problem):
    p = convex_problem
    same = (p.x[: p.k], p.y[: p.k])
    r = unlearn(p.original, same, same, tau=0.5, progress=False)
    assert r.extra["identical_pairs_skipped"] == p.k and r.extra["update_norm"] == 0.0
    assert parameter_distance(r.model, p.original) == 0.0


# ----------------------------------------------------------------------------------------------------------------
# The benchmark script, end to end on tiny data
# ----------------------------------------------------------------------------------------------------------------
def test_benchmark_script_writes_results(tmp_path):
    import json

    module = _script_module()
    report = module.main(["--num-train", "120", "--num-test", "60", "--epochs", "1", "--finetune-epochs", "1",
                          "--image-size", "16", "--hessian-samples", "32", "--cg-iters", "2", "--power-iters", "2",
                          "--num-threads", "0", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = saved["table"]["rows"]
    methods = ["original", "finetune", "first_order", "second_order", "first_order (training_loss)",
               "second_order (training_loss)", "head_exact", "retrain"]
    assert list(rows) == methods
    for name, search in (("second_order", "held_out"), ("second_order (training_loss)", "training_loss")):
        assert saved["unlearning"][name]["step_search"] == report["checks"][name]["step_search"] == search
    assert rows["retrain"]["agreement_with_retrained"] == 1.0 and saved["n_changed"] == 36
    assert (tmp_path / "table.md").read_text().startswith("| method |")
    assert report["checks"]["first_order"]["speedup_target"] == 50
    clean = saved["table_reversed"]["reference"]["clean_accuracies"]
    assert report["checks"]["retrain_clean_spread"] == pytest.approx(max(clean) - min(clean))
    assert "test_accuracy_within_1pt_of_retrain_mean" in report["checks"]["second_order"]
    rev = saved["table_reversed"]
    assert list(rev["rows"]) == methods
    assert rev["reference"]["retrain_seeds"] == 3 and len(rev["reference"]["reversed_accuracies"]) == 3
    assert len(rev["reference"]["clean_accuracies"]) == 3
    assert set(saved["checks"]["second_order"]["reversed_split"]) >= {"gap_ok", "more_gap_per_second_than_finetune"}
    assert (tmp_path / "table_reversed.md").read_text().startswith("| method |")
    assert (tmp_path / "gap_restored.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        module.parse_args(["--frac-changed", "0"])
    with pytest.raises(SystemExit):
        module.parse_args(["--retrain-seeds", "1"])
    with pytest.raises(SystemExit):
        module.parse_args(["--step-search", "held_out", "held_out"])
    assert module.update_options(module.parse_args(["--step-search", "quadratic"]), "first_order")["step_search"] == \
        "quadratic"


def _script_module(name: str = "benchmark_unlearning"):
    """scripts/NAME.py, imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def test_benchmark_vit_row_targets_and_arguments():
    module = _script_module()
    assert module.SPEEDUP_TARGETS["vit"] == {"first_order": 20, "second_order": 5}
    args = module.parse_args(["--arch", "vit", "--memory-scaling", "1000", "10000"])
    assert args.arch == "vit" and args.memory_scaling == [1000, 10000]
    vit = module.build_vit(3, image_size=16, seed=0, label_names=["a", "b", "c"])
    assert vit.config._attn_implementation == "sdpa" and vit.config.problem_type == "multi_label_classification"
    # each architecture's recipe fills only what the command line left out
    assert (args.epochs, args.lr, args.weight_decay, args.warmup_ratio) == (100, 1e-3, 0.05, 0.1)
    resnet = module.parse_args([])
    assert (resnet.epochs, resnet.lr, resnet.weight_decay, resnet.warmup_ratio) == (20, 3e-3, 1e-4, 0.0)
    given = module.parse_args(["--arch", "vit", "--epochs", "7", "--warmup-ratio", "0"])
    assert (given.epochs, given.warmup_ratio, given.lr) == (7, 0.0, 1e-3)
    for bad in (["--memory-scaling", "5"], ["--warmup-ratio", "1"], ["--epochs", "0"]):
        with pytest.raises(SystemExit):
            module.parse_args(bad)


@pytest.mark.slow
def test_benchmark_memory_scaling_runs_the_job(tmp_path):
    module = _script_module()
    report = module.main(["--arch", "vit", "--skip-comparison", "--memory-scaling", "20", "40", "--image-size", "16",
                          "--hessian-samples", "8", "--out", str(tmp_path)])
    rows = report["memory_scaling"]["rows"]
    assert set(rows) == {20, 40} and all(r["peak_rss_mib"] > 0 for r in rows.values())


def test_step_sweep_script_walks_the_update(tmp_path):
    """scripts/unlearning_step_sweep.py on tiny data: at multiple 1 it reproduces the update `unlearn` returns (its
    clean accuracy computed here by hand), at multiple 0+ it approaches the original, and bad scales are refused."""
    import json

    module = _script_module("unlearning_step_sweep")
    tiny = ["--num-train", "120", "--num-test", "60", "--epochs", "1", "--image-size", "16", "--hessian-samples", "16",
            "--cg-iters", "2", "--power-iters", "2", "--num-threads", "0"]
    report = module.main(["--scales", "1e-9", "1", "--save-original", str(tmp_path / "orig"), "--out", str(tmp_path),
                          *tiny])
    saved = json.loads((tmp_path / "step_sweep.json").read_text())
    assert (tmp_path / "step_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert set(saved["methods"]) == {"first_order", "second_order"}
    for entry in saved["methods"].values():  # the training_loss search, on the same line
        point = entry["other_searches"]["training_loss"]
        assert point["multiple"] == pytest.approx(point["step_scale"] / entry["chosen_step_scale"])
    near_zero = saved["methods"]["first_order"]["rows"][0]
    assert near_zero["clean_accuracy"] == pytest.approx(saved["original"]["clean_accuracy"])
    assert near_zero["revised_training_loss"] == pytest.approx(saved["original"]["revised_training_loss"], rel=1e-4)
    # the same update by hand: the benchmark's data and options, unlearn, accuracy counted here
    from transformers import AutoModelForImageClassification

    from dpdiffusion.training.classifier import make_accelerator, predict_logits
    from dpdiffusion.unlearning import unlearn

    bench = _script_module()
    args = bench.parse_args(tiny)
    data = bench.make_data(args)
    original = AutoModelForImageClassification.from_pretrained(tmp_path / "orig").eval()
    y, ch = torch.from_numpy(data["train_labels"]), data["changed"]
    res = unlearn(original, (torch.from_numpy(data["train_images"][ch]), y[ch]),
                  (torch.from_numpy(data["revised_images"][ch]), y[ch]), method="first_order",
                  train_set=(torch.from_numpy(data["revised_images"]), y), seed=0, accelerator=make_accelerator(),
                  progress=False, hessian_samples=16, batch_size=256)
    pred = predict_logits(res.model, data["test_images"]).numpy() > 0
    by_hand = float((pred == (data["test_labels"] > 0.5)).mean())
    assert report["methods"]["first_order"]["rows"][1]["clean_accuracy"] == pytest.approx(by_hand)
    with pytest.raises(SystemExit):
        module.parse_args(["--scales", "0"])
