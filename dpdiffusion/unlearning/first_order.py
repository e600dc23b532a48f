"""First-order feature unlearning (Warnecke et al., NDSS 2023, Sec. 4.1).

    theta~ = theta* - tau * delta,     delta = sum_i grad l(z~_i; theta*) - sum_i grad l(z_i; theta*)

Replacing the n_changed examples z_i by z~_i changes the training objective
L(theta) = (1/n_train) sum_j l(z_j; theta) into L~ = L + (1/n_train) sum_i [l(z~_i) - l(z_i)], whose gradient at
theta* (a stationary point of L) is g = delta / n_train. The update is one gradient step on L~ from theta*.

Choice of tau (`tau=None`): the exact line search along -g of the local quadratic model of L~,

    L~(theta* - t g) ~ L~(theta*) - t g^T g + t^2/2 g^T (H + lambda I) g
    =>  t* = g^T g / g^T (H + lambda I) g,      tau = t* / n_train,

i.e. the inverse of the curvature of the training loss along the update direction (a Rayleigh quotient of the
Hessian H of L, estimated on a random subsample of the revised training set). With the Gauss-Newton curvature
(the default) g^T G g = (1/m) sum_j (J_j g)^T H_f,j (J_j g) takes one forward-mode pass over `hessian_samples`
rows and no backward pass (`HessianOperator.quadratic_form`); with the exact Hessian one Hessian-vector product.
No hyperparameter. If the curvature along g is not positive
(non-convex direction), tau falls back to 1 / (n_train * |lambda_max|), the largest stable gradient-descent step,
with lambda_max from a few power iterations. A `tau` given by the caller is used as is (the paper's units).

That is the length of `step_search="quadratic"`. With `unlearn(..., step_search="held_out")` (the default) the
length is instead chosen on held-out revised pairs (`dpdiffusion.unlearning.step_search`), on a grid of scales c of
an origin tau_0 that needs no curvature at all, Polyak's step (Polyak 1987) for L~ with the pre-revision value
L(theta*) as the target:

    t_P = (L~(theta*) - L(theta*)) / ||g||^2,      L~(theta*) - L(theta*) = (1/n_train) sum_i [l(z~_i) - l(z_i)]
    =>  tau_0 = t_P / n_train = sum_i [l(z~_i) - l(z_i)] / ||delta||^2      (`polyak_tau`; n_train cancels)

For a convex objective whose minimum is the target value, t_P is the step that guarantees the largest decrease of
the distance to the minimiser; the assumption is that the revised set can be fitted as well as the original one
was. Both sums come out of the gradient pass that gives delta, so the origin is free. If the revisions did not
raise the loss (sum <= 0), the origin falls back to the quadratic model's tau. `UnlearningResult.tau` is the scaled
value, `extra["tau_origin"]` the origin and `extra["step_origin"]` which one it was. On the SynthFaces benchmark the
Polyak origin is 2.4 times the quadratic model's length and the search keeps it (c = 1).
"""

from __future__ import annotations

import logging

import torch

from .core import Objective
from .second_order import HessianOperator, power_iteration

logger = logging.getLogger(__name__)

__all__ = ["first_order_step", "line_search_tau", "polyak_tau"]


def polyak_tau(loss_increase: float, delta: torch.Tensor) -> float | None:
    """tau_0 = sum_i [l(z~_i) - l(z_i)] / ||delta||^2, Polyak's step towards the pre-revision loss (module docstring).

    Returns:
        `None` when the revisions did not raise the summed loss or delta is 0 (no Polyak step exists).
    """
    norm2 = float(delta.double().pow(2).sum())
    if not (loss_increase > 0 and norm2 > 0):
        return None
    return float(loss_increase) / norm2


def line_search_tau(
    objective: Objective,
    theta: torch.Tensor,
    delta: torch.Tensor,
    hessian_data,
    rows: torch.Tensor,
    *,
    n_train: int,
    curvature: str,
    damping: float,
    batch_size: int,
    seed: int,
) -> tuple[float, dict]:
    """tau = g^T g / (n_train g^T (H + damping I) g) with g = delta / n_train (see the module docstring)."""
    op = HessianOperator(
        objective, theta, hessian_data, rows, batch_size=batch_size, damping=damping, curvature=curvature
    )
    g = delta / n_train
    gg = float(torch.dot(g, g))
    if gg == 0.0:
        return 0.0, {"curvature_along_update": 0.0, "hessian_vector_products": 0}
    curvature = op.quadratic_form(g) / gg
    info = {"curvature_along_update": curvature, "hessian_samples": int(len(rows))}
    if curvature <= 0.0:
        op.damping = 0.0
        lam_max, _ = power_iteration(op, theta.numel(), iters=10, seed=seed, device=theta.device)
        logger.warning(
            "non-positive curvature %.3g along the first-order update; tau falls back to 1/(n_train*|lambda_max|)",
            curvature,
        )
        curvature = abs(lam_max) if lam_max != 0 else 1.0
        info["lambda_max"] = lam_max
    info["hessian_vector_products"] = op.calls
    return 1.0 / (n_train * curvature), info


def first_order_step(delta: torch.Tensor, tau: float) -> torch.Tensor:
    """The step s with theta~ = theta - s: s = tau * delta."""
    return tau * delta
