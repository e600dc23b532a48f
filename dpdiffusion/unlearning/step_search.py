"""Step length of the closed-form updates chosen on a held-out part of the revised pairs (`step_search="held_out"`).

The first- and second-order updates give a direction s (s = tau delta, or s = (H + lambda I)^-1 delta / n_train)
whose length the local quadratic model of the training loss fixes. On SynthFaces that length under-corrects:
the line search along s of the exact revised training loss agrees with the quadratic model, but the retrained
model sits further along s (retraining from scratch learns features without the shortcut, beyond the local
minimum). The length is therefore treated as a hyperparameter and chosen the way hyperparameters are: on data the
update did not see.

    1. Split the n_changed pairs at random into a fit part F (1 - holdout_fraction) and a held-out part V.
    2. Compute the direction from F alone, rescaled to the full count of revisions:
       s_F = (m / m_F) * s(delta_F), m and m_F the numbers of pairs whose images differ in all and in F.
    3. For scales c on a geometric grid 2^(k/2) from 1/8 up to `max_step_scale`, evaluate the mean loss of the
       held-out revisions, (1/|V'|) sum_{i in V'} l(z~_i; theta - c s_F), V' the pairs of V whose revised image
       differs from the original, with forward passes only; walking from c = 1 towards lower loss and stopping
       at the first rise.
    4. Return the minimiser c*; the update applied is theta - c* s(delta), with delta over all pairs.

The origin c = 1 is the second order's damped Newton step, and for the first order Polyak's step
tau_0 = sum_i [l(z~_i) - l(z_i)] / ||delta||^2 (`first_order.polyak_tau`: free, from the sums that give delta), or the
quadratic model's tau when the revisions did not raise the loss.

Why V' and not V: a pair whose revised image equals the original is not a revision. Its two terms of delta cancel
(it is skipped there), and its loss along s measures how much the update disturbs data that did not change, which
the training objective weighs over the whole training set; counting it in the held-out loss gives that
disturbance a weight set by how many revisions happened to be no-ops (on the SynthFaces benchmark, where half the
resampled skin tones equal the old one, it shortened the chosen length from 2 to 1.41 times the quadratic model's:
78.8 % of the gap to retraining restored by the first order instead of 86.9 %; `scripts/benchmark_unlearning.py`).

Because delta_F + delta_V = delta, the gradient sums cost nothing extra; step 3 costs a few forward passes on |V'|
images, and for the second order one more conjugate-gradient solve (s(delta_F) next to s(delta), with the same
operator and damping). c* never reaches 0: the changed originals' influence is always
removed, if only by 1/8 of the origin (the search may say that no step helps the held-out pairs,
which on a handful of pairs is noise). If no held-out pair differs, c* = 1 (the origin).

`step_search="training_loss"` keeps steps 1, 2 and 4 and changes what step 3 minimises: instead of the held-out
revisions' loss alone, an estimate of the whole revised training loss, which is what retraining minimises,

    J(c) = w * (1/|V'|) sum_{i in V'} l(z~_i; theta - c s_F) + (1 - w) * (1/|S|) sum_{j in S} l(z_j; theta - c s_F),

w = m / n_train the share of the revised training set that the revisions are, S the Hessian's subsample of
`train_set` (`hessian_samples` rows of the revised training set). The revisions push towards long steps, the
examples that did not change (on which the trained model's loss is already low) towards short ones. `train_set`
does not say which of its rows are revisions, so S contains them in proportion w and the revisions weigh about
w (2 - w) rather than w: the estimate leans, by that much, towards removing more. Where the revisions are a small
share of the training set this keeps more of the model's accuracy on data that did not change at the price of
removing less of the changed feature: on the SynthFaces ViT benchmark (`scripts/benchmark_unlearning.py --arch
vit`, which reports both searches) `held_out` overshoots into the opposite of the shortcut, costing clean
accuracy, where `training_loss` stays within a point of retraining.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

logger = logging.getLogger(__name__)

STEP_SEARCHES = ("held_out", "training_loss", "quadratic")
SEARCHED = ("held_out", "training_loss")  # the searches that split the pairs

__all__ = ["STEP_SEARCHES", "SEARCHED", "RowSubset", "split_pairs", "scale_grid", "held_out_scale"]


class RowSubset:
    """A view of the rows `rows` of a batch source (`core.as_source`): `batch(r)` reads `source.batch(rows[r])`."""

    def __init__(self, source: Any, rows: torch.Tensor):
        self.source, self.rows = source, rows
        self.labels = source.labels[rows]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, r: torch.Tensor):
        return self.source.batch(self.rows[r])


def split_pairs(n_changed: int, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted `(fit_rows, held_rows)`: a random `holdout_fraction` of `range(n_changed)` held out (>= 1 row each).

    Raises:
        ValueError: if `n_changed` < 2 (nothing to hold out) or `holdout_fraction` is not in (0, 1).
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got holdout_fraction={holdout_fraction}")
    if n_changed < 2:
        raise ValueError(f"step_search='held_out' needs >= 2 changed pairs, got {n_changed}")
    k = min(n_changed - 1, max(1, int(round(holdout_fraction * n_changed))))
    perm = torch.randperm(n_changed, generator=torch.Generator().manual_seed(seed + 7919))
    return perm[k:].sort().values, perm[:k].sort().values


def scale_grid(max_step_scale: float) -> list[float]:
    """The powers 2^(k/2) from 1/8 up to `max_step_scale` (at least up to 1), ascending.

    >>> [round(c, 3) for c in scale_grid(2.0)]
    [0.125, 0.177, 0.25, 0.354, 0.5, 0.707, 1.0, 1.414, 2.0]
    """
    top = max(1.0, float(max_step_scale))
    n = int(math.floor(2 * math.log2(top) + 1e-9))
    return [2.0 ** (k / 2) for k in range(-6, n + 1)]


@torch.no_grad()
def held_out_scale(objective: Any, theta: torch.Tensor, direction: torch.Tensor, held: Any, *, batch_size: int,
                   max_step_scale: float, rows: Any = None, train: Any = None, train_rows: Any = None,
                   revised_share: float | None = None) -> tuple[float, dict]:
    """c* = argmin_c mean loss of the `held` revised examples at `theta - c * direction` (see the module docstring).

    `rows`: this process's rows of `held` to use (in `unlearn`, the held-out pairs whose images differ, as
    `core.changed_gradient_sum` found them); default: this process's shard of all of them. Unimodal search on
    `scale_grid`: start at c = 1, walk up by sqrt(2) while the held-out loss falls; if the first step up does not
    lower it, walk down instead (at most to 1/8). The held-out batches are read once; the loss is summed over this
    process's rows and all-reduced.

    With `train` (`step_search="training_loss"`), the objective is J(c) = `revised_share` * (held-out loss) +
    (1 - `revised_share`) * (mean loss of the rows `train_rows` of `train`, this process's shard of them).

    Returns:
        `(c*, info)` with the chosen scale, the objective there and at c = 1 (`held_out_loss[_at_1]`, or with
        `train` `training_loss_estimate[_at_1]`), the number of scales tried and of held-out pairs used (and, with
        `train`, of training rows, and `revised_share`).

    Raises:
        ValueError: if `train` is given without `train_rows` or without `revised_share` in [0, 1].
    """
    rows = objective.shard(len(held)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    parts = [(held, rows)]
    if train is not None:
        if train_rows is None or revised_share is None or not 0 <= revised_share <= 1:
            raise ValueError(f"train= needs train_rows= and revised_share= in [0, 1], got revised_share={revised_share}")
        train_rows = torch.as_tensor(train_rows, dtype=torch.long)
        parts.append((train, train_rows[objective.shard(len(train_rows))]))
    counts, batches = [], []
    for source, r in parts:
        batches.append([objective.batch(source, r[s : s + batch_size]) for s in range(0, len(r), batch_size)])
        counts.append(int(round(float(objective.reduce_sum(torch.tensor([float(len(r))], device=theta.device))))))
    count = counts[0]
    grid = scale_grid(max_step_scale)
    if count == 0:
        logger.warning("held-out step search: no held-out pair differs from its original; using scale 1")
        return 1.0, {"step_scale": 1.0, "held_out_pairs": 0, "step_scales_tried": 0}
    weights = [1.0] if train is None else [float(revised_share), 1.0 - float(revised_share)]
    cache: dict[int, float] = {}

    def loss(i: int) -> float:
        if i not in cache:
            th = theta - grid[i] * direction
            value = 0.0
            for part, n, weight in zip(batches, counts, weights):
                total = torch.zeros(1, device=theta.device, dtype=torch.float64)
                for x, y in part:
                    total += objective._losses(th, x, y).sum().double()
                value += weight * float(objective.reduce_sum(total)) / n
            cache[i] = value
        return cache[i]

    best = grid.index(1.0)
    for step in (1, -1):  # up first; down only if the first step up did not help
        i = best
        while 0 <= i + step < len(grid) and loss(i + step) < loss(i):
            i += step
        if i != best:
            best = i
            break
    if best == len(grid) - 1:
        logger.warning("held-out step search: the best scale is the largest allowed (%g); raise max_step_scale",
                       grid[best])
    key = "held_out_loss" if train is None else "training_loss_estimate"  # what was minimised
    info = {"step_scale": grid[best], "held_out_pairs": count, key: loss(best), f"{key}_at_1": loss(grid.index(1.0)),
            "step_scales_tried": len(cache)}
    if train is not None:
        info.update(training_rows=counts[1], revised_share=float(revised_share))
    return grid[best], info
