"""Exact unlearning of a linear head on frozen features (``unlearn(..., method="head_exact")``).

When only the classifier head is retrained and its loss is convex, unlearning can be exact rather than
approximate (the certified-removal setting of Guo et al., "Certified Data Removal from Machine Learning
Models", ICML 2020). With f_j the features the frozen network feeds its last linear layer and theta = (W, b)
that layer's parameters, the head's own objective on the revised training set is

    J(theta) = (1/n) sum_j l(W f_j + b; y_j) + (l2 / 2) ||theta||^2

with l the model's training loss (cross-entropy, binary cross-entropy or squared error, all convex in the logits,
hence in theta) and l2 > 0, which makes J l2-strongly convex with one minimiser theta*: the head that retraining
the head on the revised data converges to. Starting from the trained head, Newton steps

    theta <- theta - t (grad^2 J(theta))^-1 grad J(theta)

are iterated until ||grad J|| <= `tol`; each system is solved by conjugate gradients on exact Hessian-vector
products (double backward in float64), t by Armijo backtracking. Strong convexity turns the final gradient norm
into a certificate: ||theta - theta*|| <= ||grad J(theta)|| / l2, reported as `certified_distance`.

What is exact is the head: the frozen features were learnt on the original images and still carry whatever the
network learnt from them; `"first_order"` / `"second_order"` update the body too, approximately.
Memory: the features of the whole training set, n x (d + 1) float64 values.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from ..training.classifier import infer_problem_type, per_example_loss
from .core import Objective

logger = logging.getLogger(__name__)

__all__ = ["HeadObjective", "find_linear_head", "head_exact_update", "head_features", "newton_solve"]


def find_linear_head(model: torch.nn.Module, pixel_values: torch.Tensor) -> str:
    """Name of the `nn.Linear` whose output is the model's logits (found by running `pixel_values` once).

    Raises:
        ValueError: if no linear layer's output equals the logits (something non-linear follows the last layer).
    """
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out.detach()))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            out = model(pixel_values=pixel_values)
    finally:
        for h in hooks:
            h.remove()
    logits = (out.logits if hasattr(out, "logits") else out[0]).detach()
    for name in reversed(list(outputs)):
        o = outputs[name]
        if o.shape == logits.shape and torch.allclose(o, logits, rtol=1e-5, atol=1e-6):
            return name
    raise ValueError("method='head_exact' needs a model whose logits are the output of a linear layer "
                     "(nn.Linear) of its features; no linear layer of this model produces its logits")


@torch.no_grad()
def head_features(model: torch.nn.Module, head: torch.nn.Module, objective: Objective, source: Any, *,
                  batch_size: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of `head` (float64, one row per example of this process's shard) and the labels of `source`."""
    from tqdm.auto import tqdm

    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach().double().cpu()))
    feats, labels = [], []
    rows = objective.shard(len(source))
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="head features", disable=not progress, leave=False):
            x, y = objective.batch(source, rows[start:start + batch_size])
            captured.clear()
            objective.model(pixel_values=x)
            feats.append(captured[-1].reshape(x.shape[0], -1))
            labels.append(y.cpu())
    finally:
        hook.remove()
    if not feats:
        return torch.zeros(0, head.in_features, dtype=torch.float64), torch.zeros(0)
    return torch.cat(feats), torch.cat(labels)


class HeadObjective:
    """J(theta) = (1/n) sum_j l(W f_j + b; y_j) + (l2/2)||theta||^2 over the rows of this process, in float64.

    `theta` is `[W.flatten(), b]` (no `b` when the head has no bias); sums over rows are all-reduced with
    `reduce` before dividing by `n` (all processes' rows together).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, loss_of_logits: Callable, *, num_outputs: int,
                 bias: bool, l2: float, n: int, reduce: Callable = lambda t: t, chunk: int = 8192):
        self.features, self.labels, self.loss_of_logits = features, labels, loss_of_logits
        self.k, self.d, self.bias, self.l2, self.n = num_outputs, features.shape[1], bias, float(l2), int(n)
        self.reduce, self.chunk = reduce, chunk
        self.numel = self.k * self.d + (self.k if bias else 0)

    def logits(self, theta: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        w = theta[: self.k * self.d].view(self.k, self.d)
        out = f @ w.T
        return out + theta[self.k * self.d:] if self.bias else out

    def _data_sum(self, theta: torch.Tensor) -> torch.Tensor:
        total = theta.new_zeros(())
        for s in range(0, self.features.shape[0], self.chunk):
            z = self.logits(theta, self.features[s:s + self.chunk])
            total = total + self.loss_of_logits(z, self.labels[s:s + self.chunk]).double().sum()
        return total

    def value(self, theta: torch.Tensor) -> float:
        with torch.no_grad():
            data = self.reduce(self._data_sum(theta))
        return float(data / self.n + 0.5 * self.l2 * theta.dot(theta))

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        th = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self._data_sum(th), th)
        return self.reduce(g) / self.n + self.l2 * theta

    def hvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        th = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self._data_sum(th), th, create_graph=True)
        (hv,) = torch.autograd.grad(g.dot(v), th)
        return self.reduce(hv) / self.n + self.l2 * v


def _cg(hvp: Callable, b: torch.Tensor, *, rtol: float, max_iters: int) -> tuple[torch.Tensor, int]:
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r.dot(r)
    stop = (rtol * b.norm()) ** 2
    for i in range(1, max_iters + 1):
        hp = hvp(p)
        alpha = rr / p.dot(hp)
        x, r = x + alpha * p, r - alpha * hp
        rr_new = r.dot(r)
        if rr_new <= stop:
            return x, i
        p, rr = r + (rr_new / rr) * p, rr_new
    return x, max_iters


def newton_solve(obj: HeadObjective, theta: torch.Tensor, *, tol: float, max_iters: int,
                 progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Minimise `obj` from `theta` by damped Newton-CG until ||grad|| <= tol (or `max_iters` Newton steps)."""
    from tqdm.auto import tqdm

    theta = theta.double().clone()
    g = obj.gradient(theta)
    f = obj.value(theta)
    gnorm0 = gnorm = float(g.norm())
    steps = cg_total = 0
    bar = tqdm(total=max_iters, desc="head Newton", disable=not progress, leave=False)
    while gnorm > tol and steps < max_iters:
        # inexact Newton (Eisenstat-Walker forcing term): superlinear far away, quadratic near the optimum
        d, used = _cg(lambda v: obj.hvp(theta, v), -g, rtol=min(0.1, math.sqrt(gnorm)), max_iters=4 * obj.numel)
        cg_total += used
        t, slope = 1.0, float(g.dot(d))
        while True:  # Armijo backtracking
            cand = theta + t * d
            f_cand = obj.value(cand)
            if f_cand <= f + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        theta, f = cand, f_cand
        g = obj.gradient(theta)
        gnorm = float(g.norm())
        steps += 1
        bar.update(1)
        bar.set_postfix(grad_norm=f"{gnorm:.2e}")
    bar.close()
    converged = gnorm <= tol
    if not converged:
        logger.warning("head_exact: Newton stopped after %d steps at ||grad J|| = %.3g > tol = %.3g", steps, gnorm, tol)
    return theta, {"newton_steps": steps, "cg_iterations": cg_total, "initial_grad_norm": gnorm0,
                   "grad_norm": gnorm, "converged": converged, "certified_distance": gnorm / obj.l2,
                   "objective": f}


def head_exact_update(model: torch.nn.Module, objective: Objective, train: Any, *, l2: float, tol: float,
                      max_iters: int, batch_size: int, progress: bool = False) -> tuple[str, dict]:
    """Replace `model`'s linear head (in place) by the minimiser of its own objective on `train`.

    Returns the head's module name and diagnostics (Newton steps, final gradient norm, `certified_distance`).
    """
    x0, _ = objective.batch(train, torch.arange(min(2, len(train))))
    name = find_linear_head(model, x0)
    head = model.get_submodule(name)
    feats, labels = head_features(model, head, objective, train, batch_size=batch_size, progress=progress)
    if objective.loss_fn is not None:
        loss_of_logits = objective.loss_fn  # the caller's loss, which must be convex in the logits
    else:
        problem_type = objective.problem_type or infer_problem_type(model.config, labels)
        loss_of_logits = lambda z, y: per_example_loss(z, y, problem_type)  # noqa: E731  (in float64)
    obj = HeadObjective(feats, labels, loss_of_logits, num_outputs=head.out_features, bias=head.bias is not None,
                        l2=l2, n=len(train), reduce=objective.reduce_sum)
    theta0 = head.weight.detach().double().cpu().reshape(-1)
    if head.bias is not None:
        theta0 = torch.cat([theta0, head.bias.detach().double().cpu()])
    theta, info = newton_solve(obj, theta0, tol=tol, max_iters=max_iters, progress=progress)
    with torch.no_grad():
        k, d = head.out_features, head.in_features
        head.weight.copy_(theta[: k * d].view(k, d).to(head.weight))
        if head.bias is not None:
            head.bias.copy_(theta[k * d:].to(head.bias))
    info.update(head=name, l2=float(l2), update_norm=float((theta - theta0).norm()))
    return name, info
