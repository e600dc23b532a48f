"""Second-order feature unlearning (Warnecke et al., NDSS 2023, Sec. 4.2, the influence-function update).

    theta~ = theta* - (H + lambda I)^-1 delta / n_train

    theta*     the trained parameters (only the selected ones, see `last_k_blocks`)
    delta      sum_i grad l(z~_i) - sum_i grad l(z_i) over the n_changed revised pairs
    H          Hessian at theta* of the training objective L(theta) = (1/n_train) sum_j l(z_j; theta), estimated
               on a fixed random subsample of `hessian_samples` rows of the revised training set
    lambda     damping; `H + lambda I` is the Hessian of the paper's summed loss divided by n_train, so this is
               the paper's `H^-1 delta` with the Hessian of the sum

The linear system is solved by conjugate gradients with curvature-vector products only (never forming H):
`torch.func.jvp(torch.func.grad(L))` (forward-over-reverse) on `functional_call` of the model for the exact
Hessian, or J^T H_f J v for the generalised Gauss-Newton matrix (`curvature="gauss_newton"`, the default of
`unlearn`: positive semi-definite, so CG is well posed on a non-convex network, and equal to H at an
interpolating minimum). Forward-mode AD has no rule for the fused attention kernels, so `unlearn` computes these
products inside `core.differentiable_attention` (SDPA on its math backend, other attention implementations
switched to eager, all restored afterwards). Trained networks have a few large curvature eigenvalues and a bulk near 0, so the
undamped influence step is dominated by nearly flat directions and overshoots: the single step leaves the region
where the quadratic model holds. The damping is therefore scaled to the spectrum: lambda = `damping_ratio` *
lambda_max, lambda_max from power iteration. This bounds the condition number of `C + lambda I` by
1 + 1/damping_ratio (CG converges in about a dozen iterations) and caps the step along flat directions at
1/lambda times the gradient. The default ratio 0.1 comes from the SynthFaces benchmark
(`scripts/benchmark_unlearning.py`): ratios of 0.01-0.03 overshot (test accuracy and membership-inference AUC
fell well below the retrained model's), 0.3 and above under-corrected. With the exact Hessian, CG stops early
if it meets non-positive curvature (Steihaug's rule) and returns the iterate so far. With
`unlearn(..., step_search="held_out")` (the default) the solution is then scaled by the factor that minimises the
loss of held-out revised pairs (`dpdiffusion.unlearning.step_search`; one more CG solve for the direction of the
other pairs).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from .core import Objective

logger = logging.getLogger(__name__)

CURVATURES = ("hessian", "gauss_newton")

__all__ = ["CURVATURES", "HessianOperator", "conjugate_gradient", "power_iteration", "second_order_step"]


class HessianOperator:
    """v -> (C + damping I) v, C the curvature of the mean loss over `rows` of `(images, labels)` at `theta`.

    Called as `HessianOperator(objective, theta, images, labels, rows)` or `HessianOperator(objective, theta,
    source, rows)` with a batch source (`dpdiffusion.unlearning.core.as_source`).

    `curvature="hessian"`: C = H, the exact Hessian (forward-over-reverse `jvp(grad)`).
    `curvature="gauss_newton"`: C = G = sum_j J_j^T H_f,j J_j / m, the generalised Gauss-Newton matrix (J the
    Jacobian of the logits, H_f the Hessian of the loss w.r.t. the logits). G is positive semi-definite for
    convex losses (cross-entropy, BCE, squared error) and equals H minus the terms weighted by the residuals,
    which vanish at an interpolating minimum; it keeps conjugate gradients well posed on non-convex networks.

    Batches are converted once and cached on the device; each process handles its shard of `rows`, and the
    partial products are summed across processes before dividing by `len(rows)`.
    """

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor,
        images: Any,
        labels: Any,
        rows: torch.Tensor | None = None,
        *,
        batch_size: int = 64,
        damping: float = 0.0,
        curvature: str = "hessian",
    ):
        self.objective, self.theta, self.damping = objective, theta, float(damping)
        if rows is None:  # HessianOperator(objective, theta, source, rows)
            source, rows = images, labels
            fetch = lambda r: objective.batch(source, r)  # noqa: E731
        else:
            fetch = lambda r: objective.batch(images, labels, r)  # noqa: E731
        self.count = len(rows)
        local = rows[objective.accelerator.process_index :: objective.accelerator.num_processes]
        self.batches = [fetch(local[s : s + batch_size]) for s in range(0, len(local), batch_size)]
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got curvature={curvature!r}")
        self.curvature = curvature
        self.calls = 0

        def loss_sum(th, x, y):
            return objective._losses(th, x, y).sum()

        self._grad = torch.func.grad(loss_sum)
        # theta is fixed: for Gauss-Newton, each batch's logits and pullback J^T are kept after the first product
        # (one forward per batch instead of one per product)
        self._pullbacks: list = []

    def _pullback(self, i: int):
        if not self._pullbacks:
            objective = self.objective
            for x, _ in self.batches:
                logits, vjp_fn = torch.func.vjp(lambda th, x=x: objective._logits(th, x), self.theta)
                self._pullbacks.append((logits.detach(), vjp_fn))
        return self._pullbacks[i]

    def _hvp_batch(self, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # exact Hessian: forward-over-reverse, d/dt grad L(theta + t v) at t = 0
        return torch.func.jvp(lambda th: self._grad(th, x, y), (self.theta,), (v,))[1]

    def _ggn_batch(self, v: torch.Tensor, i: int) -> torch.Tensor:
        # Gauss-Newton: J^T H_f J v with f the logits and H_f the Hessian of the loss w.r.t. the logits
        objective = self.objective
        x, y = self.batches[i]
        logits, pullback = self._pullback(i)
        _, jv = torch.func.jvp(lambda th: objective._logits(th, x), (self.theta,), (v,))  # (B, L)
        loss_of_logits = torch.func.grad(lambda z: objective._loss_of_logits(z, y).sum())
        h_jv = torch.func.jvp(loss_of_logits, (logits,), (jv.detach(),))[1]  # H_f J v, (B, L)
        return pullback(h_jv)[0]

    def hvp_undamped(self, v: torch.Tensor) -> torch.Tensor:
        """(1/m) sum_j C_j v over the rows, C = Hessian or Gauss-Newton matrix of l(z_j), all-reduced."""
        self.calls += 1
        v = v.to(self.theta.dtype)
        out = torch.zeros_like(self.theta)
        for i, (x, y) in enumerate(self.batches):
            out += self._hvp_batch(v, x, y) if self.curvature == "hessian" else self._ggn_batch(v, i)
        return self.objective.reduce_sum(out) / self.count

    def quadratic_form(self, v: torch.Tensor) -> float:
        """v^T (C + damping I) v without forming C v: for Gauss-Newton (1/m) sum_j (J_j v)^T H_f,j (J_j v), one
        forward-mode pass per batch and no backward pass; for the exact Hessian v^T H v from one product."""
        if self.curvature == "hessian":
            return float(torch.dot(v, self(v)))
        self.calls += 1
        objective = self.objective
        v = v.to(self.theta.dtype)
        total = torch.zeros((), device=self.theta.device, dtype=torch.float64)
        for x, y in self.batches:
            logits, jv = torch.func.jvp(lambda th: objective._logits(th, x), (self.theta,), (v,))  # (B, L)
            loss_of_logits = torch.func.grad(lambda z: objective._loss_of_logits(z, y).sum())
            h_jv = torch.func.jvp(loss_of_logits, (logits.detach(),), (jv.detach(),))[1]  # H_f J v
            total += torch.sum(jv.detach().double() * h_jv.double())
        quad = float(self.objective.reduce_sum(total)) / self.count
        return quad + self.damping * float(torch.dot(v, v))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        hv = self.hvp_undamped(v)
        return hv + self.damping * v if self.damping else hv


def power_iteration(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[float, torch.Tensor]:
    """Dominant eigenvalue (largest in magnitude, with its sign) of a symmetric operator by power iteration.

    Stops when the Rayleigh quotient changes by less than `tol` (relative) between iterations.

    Returns:
        `(eigenvalue, unit eigenvector)`.
    """
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed)).to(device)
    v /= v.norm()
    eig = 0.0
    for _ in range(max(1, iters)):
        w = matvec(v)
        new = float(torch.dot(v, w))
        norm = w.norm()
        if norm == 0:
            return 0.0, v
        v = w / norm
        if eig != 0.0 and abs(new - eig) <= tol * abs(eig):
            eig = new
            break
        eig = new
    return eig, v


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    max_iters: int = 50,
    tol: float = 1e-4,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Solve A x = b for a symmetric positive-definite A given only `matvec(v) = A v`.

    Starts from x = 0 and stops when ||r|| <= tol ||b|| or after `max_iters` products. If it meets a direction
    p with p^T A p <= 0 (A not positive definite there) it stops and returns the current iterate (Steihaug); if
    that happens at the first step it returns the steepest-descent step b (b^T b) / |b^T A b|.

    Returns:
        `(x, info)` with `info = {"iterations", "relative_residual", "negative_curvature"}`.
    """
    from tqdm.auto import tqdm

    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = torch.dot(r, r)
    b_norm = float(b.norm())
    info = {"iterations": 0, "relative_residual": 1.0, "negative_curvature": False}
    if b_norm == 0.0:
        info["relative_residual"] = 0.0
        return x, info
    for it in tqdm(range(max_iters), desc="conjugate gradients", disable=not progress, leave=False):
        ap = matvec(p)
        pap = torch.dot(p, ap)
        if pap <= 0:
            info["negative_curvature"] = True
            if it == 0:
                x = b * (rs / pap.abs().clamp_min(1e-30))
            break
        alpha = rs / pap
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = torch.dot(r, r)
        info["iterations"] = it + 1
        info["relative_residual"] = math.sqrt(float(rs_new)) / b_norm
        if info["relative_residual"] <= tol:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, info


def second_order_step(
    objective: Objective,
    theta: torch.Tensor,
    deltas: list[torch.Tensor],
    hessian_data: Any,
    rows: torch.Tensor,
    *,
    n_train: int,
    curvature: str,
    damping: float | None,
    damping_ratio: float,
    cg_iters: int,
    power_iters: int,
    cg_tol: float = 1e-4,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[list[torch.Tensor], float, dict]:
    """The steps s with theta~ = theta - s, s = (H + lambda I)^-1 delta / n_train, one per gradient difference in
    `deltas` (one operator, one damping; see the module docstring). The info is that of the first solve.

    Returns:
        `(steps, damping_used, info)`.
    """
    show = progress and objective.accelerator.is_main_process
    op = HessianOperator(objective, theta, hessian_data, rows, batch_size=batch_size, curvature=curvature)
    lam_max, _ = power_iteration(op, theta.numel(), iters=power_iters, seed=seed, device=theta.device)
    if damping is None:
        damping = damping_ratio * abs(lam_max)
        if damping <= 0:
            damping = 1e-3
    op.damping = float(damping)
    solves = [conjugate_gradient(op, delta / n_train, max_iters=cg_iters, tol=cg_tol, progress=show) for delta in deltas]
    cg_info = solves[0][1]
    info = {
        "lambda_max": float(lam_max),
        "cg_iterations": cg_info["iterations"],
        "cg_relative_residual": cg_info["relative_residual"],
        "cg_negative_curvature": cg_info["negative_curvature"],
        "hessian_vector_products": op.calls,
        "hessian_samples": int(len(rows)),
    }
    return [step for step, _ in solves], float(damping), info
