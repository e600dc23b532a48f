"""`unlearn`: make a trained classifier behave as if it had been trained on revised data, without retraining."""

from __future__ import annotations

import copy
import logging
import math
import time
import os
from typing import Any, Callable, Sequence

import torch

from ..training.classifier import make_accelerator
from .baselines import finetune, retrain
from .core import (
    METHODS,
    FlatParameters,
    Objective,
    UnlearningResult,
    as_source,
    changed_gradient_sum,
    check_sources_aligned,
    describe_parameters,
    differentiable_attention,
    hessian_subsample,
    select_parameters,
)
from .data import LabelSpec, TensorSource, load_classifier, make_transform, materialise
from .first_order import first_order_step, line_search_tau, polyak_tau
from .head_exact import head_exact_update
from .second_order import CURVATURES, second_order_step
from .step_search import SEARCHED, STEP_SEARCHES, RowSubset, held_out_scale, split_pairs

logger = logging.getLogger(__name__)

__all__ = ["unlearn"]


def unlearn(
    model: torch.nn.Module | str,
    original: Any,
    revised: Any,
    *,
    method: str = "first_order",
    image_processor: Any = None,
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    image_column: str | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    tau: float | None = None,
    step_search: str = "held_out",
    holdout_fraction: float = 0.2,
    max_step_scale: float = 8.0,
    batch_size: int = 64,
    damping: float | None = None,
    damping_ratio: float = 0.1,
    curvature: str = "gauss_newton",
    cg_iters: int = 10,
    cg_tol: float = 1e-2,
    power_iters: int = 5,
    hessian_samples: int = 256,
    last_k_blocks: int | None = None,
    train_set: Any = None,
    n_train: int | None = None,
    retrain_fn: Callable | None = None,
    epochs: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    head_l2: float = 1e-3,
    head_tol: float = 1e-9,
    seed: int = 0,
    accelerator: Any = None,
    mixed_precision: str = "no",
    progress: bool = True,
    inplace: bool = False,
) -> UnlearningResult:
    """Unlearn the features changed by a revision of some training examples (Warnecke et al., NDSS 2023).

    A model was trained on a set containing the examples `original[i] = (x_i, y_i)`; these have since been
    replaced by `revised[i] = (x~_i, y_i)` (e.g. a protected image in which the skin tone was resampled). The
    returned model approximates the one retraining on the revised set would give:

    - `"first_order"`: theta~ = theta - tau * delta, delta = sum_i grad l(z~_i) - sum_i grad l(z_i); with `tau=None`
      the step search scales Polyak's step sum_i [l(z~_i) - l(z_i)] / ||delta||^2, which costs nothing beyond delta
      (`step_search="quadratic"`: the exact line-search step of the local quadratic model; see
      `dpdiffusion.unlearning.first_order`).
    - `"second_order"`: theta~ = theta - (H + lambda I)^-1 delta / n_train, H the Hessian of the mean training
      loss on a subsample of `train_set`, solved by conjugate gradients on Hessian-vector products; lambda =
      `damping_ratio` * lambda_max (power iteration) unless `damping` is given.
    - `"head_exact"`: the linear head (the layer producing the logits) is replaced by the exact minimiser of its
      own convex objective on `train_set`, mean loss + (`head_l2`/2)||theta||^2, with the rest of the network
      frozen: Newton-CG iterated until ||grad|| <= `head_tol`, i.e. retraining the head on the revised data
      (Guo et al., 2020; see `dpdiffusion.unlearning.head_exact`, which also certifies the distance to it).
    - `"finetune"`: `epochs` (default 1) of AdamW on `train_set`, starting from the model.
    - `"retrain"`: a fresh model trained on `train_set` (`retrain_fn(images, labels)`, or `type(model)(config)`
      trained for `epochs`, default 10, with `lr`, `batch_size`, `seed`).

    With `step_search="held_out"` (the default) the length of the first- or second-order update is then scaled by
    c*, chosen on a held-out `holdout_fraction` of the changed pairs: the direction is computed from the other pairs
    and c* minimises the held-out revised examples' loss (`dpdiffusion.unlearning.step_search`); on the SynthFaces
    benchmark (`scripts/benchmark_unlearning.py`) this restores more of the gap to retraining on the
    reversed-correlation split than the quadratic model's length (`step_search="quadratic"`, c = 1). With
    `step_search="training_loss"` c* minimises an estimate of the whole revised training loss instead (held-out
    revisions weighted by their share of the training set, the rest a sample of `train_set`): shorter steps that
    keep more of the accuracy on unchanged data and remove less of the changed feature (on the SynthFaces ViT,
    within a point of retraining's clean accuracy where `"held_out"` is not). A `tau` given by the caller is used
    as is.

    Gradients and Hessian-vector products are taken with the model in eval mode (batch norm uses its running
    statistics, which the approximate methods leave unchanged). Under Accelerate, example sums are sharded
    across processes and all-reduced, so the result is the same on 1 or N processes.

    First- and second-order updates run with attention made differentiable twice over (SDPA on its math backend,
    other implementations switched to eager for the update; see `core.differentiable_attention`), so they work on
    ViT, DeiT, Swin and other attention models whatever their `attn_implementation`.

    Args:
        model (`torch.nn.Module` or `str`): a trained `transformers` image classifier (not modified unless
            `inplace`), or a folder / Hub repo id loaded with `AutoModelForImageClassification` (its
            `AutoImageProcessor` is then used unless `image_processor` is given).
        original, revised: the changed examples before and after revision, aligned row by row: `(images, labels)`
            tensors/arrays, a dict, a `torch.utils.data.Dataset` or a `datasets.Dataset` (read lazily, one batch
            at a time).
        method (`str`): one of `"first_order"`, `"second_order"`, `"head_exact"`, `"finetune"`, `"retrain"`.
        image_processor (`transformers.BaseImageProcessor`, *optional*): preprocessing of PIL / uint8 images,
            applied exactly (resize, crop, normalisation); float `(N, 3, H, W)` images are taken as pixel values.
            Without one, uint8 images are scaled to [-1, 1] as they are (the project's own classifiers).
        label_column (`str`, *optional*): for `datasets.Dataset` inputs, the single-label column (class names of
            `config.label2id` or integer ids).
        label_columns (`Sequence[str]`, *optional*): for `datasets.Dataset` inputs, one 0/1 column per output,
            named as in `config.id2label` (multi-label).
        image_column (`str`, *optional*): image column of `datasets.Dataset` inputs (default: `image`/`img`/...).
        loss_fn (`Callable`, *optional*): `loss_fn(logits, labels) -> (B,)` per-example losses; defaults to the
            training loss for `model.config.problem_type`.
        tau (`float`, *optional*): first-order step on the raw gradient-difference sum, > 0 (no step search).
        step_search (`str`): `"held_out"` (scale the update's length on held-out pairs), `"training_loss"` (scale
            it on an estimate of the revised training loss; needs `train_set`) or `"quadratic"` (the length of the
            local quadratic model).
        holdout_fraction (`float`): share of the changed pairs held out by the step search, in (0, 1).
        max_step_scale (`float`): the largest scale c the step search may pick, >= 1.
        batch_size (`int`): batch size of gradient sums, HVPs and the training baselines.
        damping (`float`, *optional*): lambda >= 0 added to the Hessian.
        damping_ratio (`float`): lambda / lambda_max when `damping` is None (second order).
        cg_iters (`int`), power_iters (`int`): iteration caps of conjugate gradients and power iteration.
        cg_tol (`float`): conjugate gradients stop at this relative residual ||r|| / ||b||, in (0, 1). The default
            1e-2 is a truncated Newton step: on the SynthFaces benchmark the reversed-split accuracy is the same
            from a residual of 3e-2 (4 iterations) down to 8e-5 (9), because the step search sets the length.
        hessian_samples (`int`): rows of `train_set` on which the Hessian is estimated.
        last_k_blocks (`int`, *optional*): update only the last k blocks and the head (0: the head only).
        train_set: the full training set after revision; required by `"finetune"` and `"retrain"`, and by the
            Hessian of `"second_order"` and of the default `tau` (unless `n_train` is given, in which case the
            Hessian is estimated on `revised`).
        n_train (`int`, *optional*): training-set size; defaults to `len(train_set)`.
        retrain_fn (`Callable`, *optional*): `retrain_fn(images, labels) -> model` for `"retrain"`.
        epochs (`int`, *optional*), lr (`float`), weight_decay (`float`): recipe of the training baselines.
        head_l2 (`float`): L2 penalty of the head objective of `"head_exact"`, > 0 (makes the minimiser unique).
        head_tol (`float`): `"head_exact"` stops when the head objective's gradient norm is <= this, > 0.
        seed (`int`): seeds the Hessian subsample, power iteration and the baselines' training.
        accelerator (`accelerate.Accelerator`, *optional*): created with `mixed_precision` when omitted.
        progress (`bool`): tqdm bars on the main process.
        inplace (`bool`): update `model` itself instead of a deep copy.

    Returns:
        `UnlearningResult` with the model, wall-clock seconds and the hyperparameters used.

    Raises:
        ValueError: for an unknown `method`, label columns that do not match the model, misaligned `original`/`revised` (lengths, shapes, labels), a missing
            `train_set`, or out-of-range `tau`, `damping`, `batch_size`, `cg_iters`, `cg_tol`, `hessian_samples`,
            `last_k_blocks`, `n_train`, `epochs`, `head_l2`, `head_tol`; for `"head_exact"`, a model whose logits
            are not the output of a linear layer.
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
    if tau is not None and not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got tau={tau}")
    if step_search not in STEP_SEARCHES:
        raise ValueError(f"step_search must be one of {STEP_SEARCHES}, got step_search={step_search!r}")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got holdout_fraction={holdout_fraction}")
    if not (math.isfinite(max_step_scale) and max_step_scale >= 1):
        raise ValueError(f"max_step_scale must be a finite number >= 1, got max_step_scale={max_step_scale}")
    if damping is not None and not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got damping={damping}")
    if not damping_ratio > 0:
        raise ValueError(f"damping_ratio must be > 0, got damping_ratio={damping_ratio}")
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got curvature={curvature!r}")
    if int(cg_iters) < 1:
        raise ValueError(f"cg_iters must be >= 1, got cg_iters={cg_iters}")
    if not (math.isfinite(cg_tol) and 0 < cg_tol < 1):
        raise ValueError(f"cg_tol must be in (0, 1), got cg_tol={cg_tol}")
    if int(power_iters) < 1:
        raise ValueError(f"power_iters must be >= 1, got power_iters={power_iters}")
    if int(hessian_samples) < 1:
        raise ValueError(f"hessian_samples must be >= 1, got hessian_samples={hessian_samples}")
    if not (math.isfinite(head_l2) and head_l2 > 0):
        raise ValueError(f"head_l2 must be a finite number > 0, got head_l2={head_l2}")
    if not (math.isfinite(head_tol) and head_tol > 0):
        raise ValueError(f"head_tol must be a finite number > 0, got head_tol={head_tol}")
    if epochs is not None and int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got epochs={epochs}")

    if isinstance(model, (str, os.PathLike)):
        model, loaded_processor = load_classifier(str(model))
        image_processor = image_processor if image_processor is not None else loaded_processor
    spec = None
    if label_column is not None or label_columns:
        spec = LabelSpec.from_config(model.config, label_column=label_column, label_columns=label_columns)
    transform = make_transform(image_processor)
    read = dict(transform=transform, label_spec=spec, image_column=image_column)
    orig, rev = as_source(original, "original", **read), as_source(revised, "revised", **read)
    check_sources_aligned(orig, rev)
    n_changed = len(orig)
    train = as_source(train_set, "train_set", **read) if train_set is not None else None
    if n_train is None and train is not None:
        n_train = len(train)
    if n_train is not None and int(n_train) < n_changed:
        raise ValueError(f"n_train must be >= the number of changed examples {n_changed}, got n_train={n_train}")
    needs_train = method in ("finetune", "retrain", "head_exact")
    needs_hessian = method == "second_order" or (method == "first_order" and tau is None)
    if step_search == "training_loss" and method in ("first_order", "second_order") and train is None:
        raise ValueError("step_search='training_loss' needs train_set= (the revised training set whose loss it "
                         "estimates)")
    if needs_train and train is None:
        raise ValueError(f"method={method!r} needs train_set= (the full training set after revision)")
    if needs_hessian and n_train is None:
        raise ValueError(
            f"method={method!r}{' with tau=None' if method == 'first_order' else ''} needs train_set= "
            "(the revised training set, for the Hessian and n_train) or n_train="
        )
    if needs_hessian and train is None:
        logger.warning("no train_set given: the Hessian is estimated on the revised examples only")

    accelerator = make_accelerator(accelerator, mixed_precision)
    src_device = next(model.parameters()).device
    # retraining starts from scratch: no copy of the trained model is needed
    work = model if (inplace or method == "retrain") else copy.deepcopy(model)
    if method != "retrain":
        work.to(accelerator.device)
    trainable = select_parameters(work, last_k_blocks)
    flat = FlatParameters(work, trainable)
    result = UnlearningResult(
        model=work, method=method, seconds=0.0, n_changed=n_changed, n_train=n_train, updated_parameters=flat.numel
    )
    result.extra["updated_modules"] = describe_parameters(work, trainable, last_k_blocks)
    if spec is not None:
        result.extra["problem_type"] = spec.problem_type

    objective = Objective(work, flat, loss_fn, accelerator)  # the per-example loss of the closed-form methods
    if spec is not None:
        objective.problem_type = spec.problem_type
    if method == "head_exact":
        was_training = work.training
        work.eval()
        try:
            head, info = head_exact_update(work, objective, train, l2=head_l2, tol=head_tol, max_iters=100,
                                           batch_size=batch_size, progress=progress)
        finally:
            work.train(was_training)
        result.updated_parameters = sum(p.numel() for p in work.get_submodule(head).parameters())
        result.extra.update(info, updated_modules=head)
    elif method in ("finetune", "retrain"):
        if isinstance(train, TensorSource) and image_processor is None:
            train = (train.images, train.labels)  # as given: the trainer converts each batch
        else:
            train = materialise(train, batch_size=batch_size)
        kwargs = dict(batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, accelerator=accelerator,
                      progress=progress)
        if method == "finetune":
            result.model = finetune(work, train, trainable=None if last_k_blocks is None else trainable,
                                    epochs=epochs or 1, **kwargs)
            result.extra.update(epochs=epochs or 1, lr=lr)
        else:
            result.model = retrain(work, train, retrain_fn=retrain_fn, epochs=epochs or 10, **kwargs)
            result.updated_parameters = sum(p.numel() for p in result.model.parameters())
            result.extra.update({"recipe": "retrain_fn"} if retrain_fn is not None else {"epochs": epochs or 10, "lr": lr})
    else:
        requires = {n: p.requires_grad for n, p in work.named_parameters()}
        was_training = work.training
        attention = differentiable_attention(work)
        attention.__enter__()
        work.eval()
        for p in work.parameters():
            p.requires_grad_(False)
        try:
            theta = flat.flatten(work).to(accelerator.device)
            search = step_search in SEARCHED and not (method == "first_order" and tau is not None)
            if search and n_changed < 2:
                logger.warning("step_search=%r needs >= 2 changed pairs; using the quadratic model's length",
                               step_search)
                search = False
            sums = dict(batch_size=batch_size, progress=progress)
            if search:  # delta = delta_F + delta_V: the two parts' sums cost what the whole would
                fit_rows, held_rows = split_pairs(n_changed, holdout_fraction, seed)
                held = RowSubset(rev, held_rows)
                delta_fit, info = changed_gradient_sum(objective, theta, RowSubset(orig, fit_rows),
                                                       RowSubset(rev, fit_rows), **sums)
                held_differing: list[int] = []  # positions in `held` of the held-out pairs that are revisions
                delta_held, info_held = changed_gradient_sum(objective, theta, RowSubset(orig, held_rows), held,
                                                             differing_rows=held_differing, **sums)
                delta = delta_fit + delta_held
                differing_fit = len(fit_rows) - info["identical_pairs_skipped"]
                info = {k: v + info_held[k] for k, v in info.items()}
                if differing_fit == 0:
                    logger.warning("step_search=%r: no pair of the fit part differs; using the quadratic model's "
                                   "length", step_search)
                    search = False
                else:  # s_F counts as many revisions as s: pairs whose images differ, in all and in F
                    rescale = (n_changed - info["identical_pairs_skipped"]) / differing_fit
            else:
                delta, info = changed_gradient_sum(objective, theta, orig, rev, **sums)
            result.extra.update(info, gradient_difference_norm=float(delta.norm()))
            hess_data = train if train is not None else rev
            rows = hessian_subsample(len(hess_data), int(hessian_samples), seed) if needs_hessian else None
            if method == "first_order":
                if tau is None and search:  # the search's origin: Polyak's step, from what the sums gave for free
                    tau = polyak_tau(info["loss_sum_revised"] - info["loss_sum_original"], delta)
                    if tau is not None:
                        result.extra.update(step_origin="polyak", tau_origin=tau)
                if tau is None:
                    if search:
                        result.extra["step_origin"] = "quadratic"
                    result.extra["curvature"] = curvature
                    tau, ls_info = line_search_tau(
                        objective, theta, delta, hess_data, rows, n_train=int(n_train), curvature=curvature,
                        damping=damping or 0.0, batch_size=batch_size, seed=seed,
                    )
                    result.extra.update(ls_info)
                    result.damping = damping or 0.0
                step = first_order_step(delta, tau)
                direction = first_order_step(delta_fit, tau * rescale) if search else None
                result.tau = float(tau)
            else:
                steps, used_damping, so_info = second_order_step(
                    objective, theta, [delta, delta_fit * rescale] if search else [delta], hess_data, rows,
                    n_train=int(n_train), curvature=curvature, damping=damping, damping_ratio=damping_ratio,
                    cg_iters=int(cg_iters), cg_tol=float(cg_tol), power_iters=int(power_iters), batch_size=batch_size, seed=seed,
                    progress=progress,
                )
                step, direction = steps[0], (steps[1] if search else None)
                result.extra["curvature"] = curvature
                result.damping = used_damping
                result.extra.update(so_info)
            if search:
                against = {}
                if step_search == "training_loss":  # revisions weigh their share of the revised training set
                    revisions = n_changed - info["identical_pairs_skipped"]
                    against = dict(train=hess_data, train_rows=rows, revised_share=revisions / int(n_train))
                scale, search_info = held_out_scale(objective, theta, direction, held, batch_size=batch_size,
                                                    max_step_scale=max_step_scale, rows=held_differing, **against)
                step = scale * step
                result.extra.update(search_info)
                if method == "first_order":
                    result.extra.setdefault("tau_origin", result.tau)
                    result.tau *= scale
            result.extra["step_search"] = step_search if search else "none"
            flat.add_(work, -step)
            result.extra["update_norm"] = float(step.norm())
        finally:
            attention.__exit__(None, None, None)
            for n, p in work.named_parameters():
                p.requires_grad_(requires[n])
            work.train(was_training)
    result.model.eval().to(src_device)
    result.seconds = time.perf_counter() - start
    logger.info("unlearning (%s) of %d examples took %.2f s", method, n_changed, result.seconds)
    return result
