r"""The paper's experiments in one call: every method at every epsilon, every metric, the audit, the report.

``run_paper_experiments`` (also ``scripts/run_paper_experiments.py`` and ``dpdiffusion evaluate experiments``) protects a
training and a test set of a ``datasets`` dataset (SynthFaces by default, any CelebA-schema dataset when given) with
each method at each epsilon and measures, from one set of protected images per setting (decoding is the expensive
part, so every metric reuses it):

* **leakage** of each protected attribute: a ResNet trained and tested on protected images, and a logistic probe on
  the re-encoded semantic latent; the better attack counts (``dpdiffusion.evaluation.leakage``);
* **utility** of each unprotected attribute: the same ResNet (one multi-label model) tested on *clean* test images,
  against the same recipe trained on clean images (``dpdiffusion.evaluation.utility``);
* **identity leakage**: re-identification top-1 of protected test images against the clean test gallery
  (``dpdiffusion.evaluation.identity``);
* **image quality**: PSNR, SSIM, and a Frechet distance in the features of the clean attribute ResNet
  (``dpdiffusion.evaluation.quality``);
* the **empirical epsilon audit** (``dpdiffusion.evaluation.audit``) of each formal method on its own relation, and of
  ``dpdiffusion`` on real counterfactual image pairs (not covered by the guarantee: it measures leakage around it).

Decoded images of each diffusion setting are kept in ``out/.protected-cache`` (8-bit, named by the weights' hash
and the settings), so an interrupted sweep resumes without decoding again. Outputs in ``out``: ``results.json``
(every figure), ``results.md`` (table, claims and figures, each with the command
that made it), and PNGs (``privacy_utility.png``, ``leakage_vs_epsilon.png``, ``utility_vs_epsilon.png``,
``audit.png``, ``samples_dpdiffusion.png``, ``samples_methods.png``).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import audit as audit_lib
from .baselines import (ALL_METHODS, DP_METHODS, BlurMethod, DiffusionMethod, DPPixMethod, PixelateMethod,
                        PixelGaussianMethod, counterfactual_l2_sensitivity, counterfactual_pixel_count, dp_pix,
                        match_quality, pixel_gaussian, quantize)
from .identity import identity_leakage
from .leakage import (dp_accuracy_bound, encode_images, latent_probe_leakage, leakage_accuracy, residual_leakage)
from .quality import FD_FEATURE_SPACE, classifier_features, feature_frechet_distance, psnr, ssim
from .utility import attribute_accuracies, predict_labels, train_attribute_classifier, utility_report

logger = logging.getLogger(__name__)

__all__ = ["PAPER_EPSILONS", "QUICK_EPSILONS", "run_paper_experiments", "load_evaluation_data", "EvaluationData"]

PAPER_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
QUICK_EPSILONS = (1.0, math.inf)
AUDIT_EPSILONS = (0.5, 1.0, 4.0)

# Sizes of the full sweep (about 20 minutes on 2 CPU cores for the embedded 32 px default) and of --quick.
_DEFAULTS = {
    False: dict(num_train=1000, num_test=400, num_inference_steps=5, classifier_epochs=15, audit_trials=20000,
                audit_decoded_trials=100, audit_pairs=8),
    True: dict(num_train=400, num_test=200, num_inference_steps=5, classifier_epochs=12, audit_trials=4000,
               audit_decoded_trials=0, audit_pairs=4),
}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:g}"


def _seed_for(*parts) -> int:
    import zlib

    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def _fingerprint(pipe) -> str:
    """A short hash of the pipeline's weights and directions (names the on-disk cache of decoded images)."""
    import hashlib

    h = hashlib.sha1()
    for module in (pipe.unet, pipe.encoder, pipe.attribute_directions):
        for t in module.state_dict().values():
            h.update(t.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:10]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationData:
    """Train and test images ``(N, 3, H, W)`` in [0, 1] with labels ``(N, L)`` for ``names``.

    ``identities`` are per-image person ids (or ``None``); ``test_params`` are SynthFaces parameters of the test set
    (for counterfactual pairs) or ``None`` for real datasets.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    names: list
    train_identities: np.ndarray | None
    test_identities: np.ndarray | None
    test_params: dict | None
    source: str


class _threads:
    """Run a block with ``n`` torch threads (restored after). The small classifiers train faster on one thread
    than on two contending ones; the UNet decoder keeps every thread."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(min(self.n, self.old))

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _u8_to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def load_evaluation_data(dataset: str, *, image_size: int, num_train: int, num_test: int,
                         attribute_columns: Sequence[str] | None = None, identity_column: str | None = None,
                         seed: int = 0) -> EvaluationData:
    """SynthFaces (``dataset="synthfaces"``: fresh seeds, disjoint from the default model's training seed) or any
    dataset ``load_attribute_dataset`` reads (a Hub name, an image folder with metadata, a ``save_to_disk`` folder)
    with a ``train`` split and an optional ``test`` split (else a seeded split of ``train``)."""
    from ..data.synthfaces import SYNTHFACES_ATTRIBUTES, make_synthfaces_arrays

    if dataset == "synthfaces":
        names = list(attribute_columns or SYNTHFACES_ATTRIBUTES)
        unknown = [n for n in names if n not in SYNTHFACES_ATTRIBUTES]
        if unknown:
            raise ValueError(f"attribute_columns {unknown} are not SynthFaces attributes {list(SYNTHFACES_ATTRIBUTES)}")
        tr, ptr = make_synthfaces_arrays(num_train, image_size=image_size, seed=seed + 1001)
        te, pte = make_synthfaces_arrays(num_test, image_size=image_size, seed=seed + 2002)

        def labels(p):
            return torch.stack([torch.as_tensor(p[n], dtype=torch.float32) for n in names], 1)

        return EvaluationData(_u8_to_float(tr), labels(ptr), _u8_to_float(te), labels(pte), names,
                              ptr["identity"], pte["identity"], pte,
                              f"SynthFaces (train seed {seed + 1001}, test seed {seed + 2002})")

    from ..data.attributes import dataset_to_tensors, load_attribute_dataset

    train = load_attribute_dataset(dataset, split="train", attribute_columns=attribute_columns,
                                   identity_column=identity_column)
    names = list(attribute_columns) if attribute_columns else [
        c for c in train.column_names if c not in ("image", identity_column) and train.features[c].dtype == "bool"]
    if not names:
        raise ValueError(f"no attribute columns found in {dataset!r}; pass attribute_columns")
    try:
        test = load_attribute_dataset(dataset, split="test", attribute_columns=names, identity_column=identity_column)
    except (ValueError, FileNotFoundError, KeyError):
        split = train.train_test_split(test_size=min(num_test, len(train) // 3), seed=seed)
        train, test = split["train"], split["test"]
    train = train.shuffle(seed=seed).select(range(min(num_train, len(train))))
    test = test.shuffle(seed=seed + 1).select(range(min(num_test, len(test))))
    xtr, ytr = dataset_to_tensors(train, image_size=image_size, attribute_columns=names)
    xte, yte = dataset_to_tensors(test, image_size=image_size, attribute_columns=names)
    ids = (lambda d: np.asarray(d[identity_column]) if identity_column else None)
    return EvaluationData((xtr + 1) / 2, ytr, (xte + 1) / 2, yte, names, ids(train), ids(test), None, str(dataset))


# ---------------------------------------------------------------------------------------------------------------
# One setting
# ---------------------------------------------------------------------------------------------------------------


def _evaluate_setting(pipe, data: EvaluationData, prot_train: torch.Tensor, prot_test: torch.Tensor, *,
                      protected: list, unprotected: list, epsilon: float | None, delta: float, clean: dict,
                      epochs: int, seed: int, feature_fn, utility_augment: bool = True) -> dict:
    names = data.names
    with _threads(1):
        # the attacker trains and tests on protected images as released (no augmentation: the strongest fit)
        model = train_attribute_classifier(prot_train, data.train_labels, names=names, epochs=epochs, seed=seed)
        # the data user's classifier is tested on clean images: it trains with flips and colour jitter
        util_model = model if not (utility_augment and unprotected) else train_attribute_classifier(
            prot_train, data.train_labels, names=names, epochs=epochs, seed=seed, augment=True)
    pred_prot = predict_labels(model, prot_test)
    pred_clean = predict_labels(util_model, data.test_images)
    # leakage: attacker trained and tested on protected images
    eps_bound = None if epsilon is None else epsilon
    resnet = {a: leakage_accuracy(pred_prot[:, names.index(a)], data.test_labels[:, names.index(a)],
                                  epsilon=eps_bound, delta=delta) for a in protected}
    z_tr, z_te = encode_images(pipe, prot_train), encode_images(pipe, prot_test)
    probe = latent_probe_leakage(z_tr, data.train_labels[:, [names.index(a) for a in protected]], z_te,
                                 data.test_labels[:, [names.index(a) for a in protected]], names=protected,
                                 epsilon=eps_bound, delta=delta)
    best = {a: max([resnet[a]] + ([probe[a]] if a in probe else []), key=lambda d: d["accuracy"]) for a in protected}
    # utility: the data user's classifier (the attacker itself without augmentation) on clean test images
    acc = attribute_accuracies(pred_clean, data.test_labels, names)
    acc_prot = attribute_accuracies(pred_prot, data.test_labels, names)
    util = utility_report(acc, clean["utility_accuracy"], unprotected) if unprotected else None
    # the same figure for a data user who trains on the released images as they are (the attacker's model)
    util_plain = util if util_model is model or not unprotected else utility_report(
        attribute_accuracies(predict_labels(model, data.test_images), data.test_labels, names), clean["accuracy"],
        unprotected)
    # identity and quality
    ident = None
    if data.test_identities is not None:
        ident = identity_leakage(z_te, clean["test_latents"], data.test_identities)
    p = psnr(prot_test, data.test_images)
    quality = {"psnr_db": float(torch.where(torch.isinf(p), torch.full_like(p, 100.0), p).mean()),
               "ssim": float(ssim(prot_test, data.test_images).mean()),
               "fd_synthfaces_resnet": feature_frechet_distance(feature_fn(prot_test), clean["test_features"])}
    return {
        "leakage": {"resnet": resnet, "latent_probe": probe, "best": best},
        "leakage_accuracy": float(max(v["accuracy"] for v in best.values())) if best else None,
        "utility": util,
        "utility_without_augmentation": util_plain,
        "accuracy_on_clean_test": acc,
        "accuracy_on_protected_test": acc_prot,
        "identity": ident,
        "quality": quality,
    }


# ---------------------------------------------------------------------------------------------------------------
# Audits
# ---------------------------------------------------------------------------------------------------------------


def _counterfactual_pairs(data: EvaluationData, protected: list, count: int, image_size: int):
    """(originals, counterfactuals) ``(count, 3, H, W)`` in [0, 1]: every protected attribute flipped."""
    from ..data.synthfaces import counterfactual_params, render_faces

    sub = {k: np.asarray(v)[:count] for k, v in data.test_params.items()}
    flipped = sub
    for a in protected:
        flipped = counterfactual_params(flipped, a)
    return (_u8_to_float(render_faces(sub, image_size=image_size)),
            _u8_to_float(render_faces(flipped, image_size=image_size)))


def _opposite_pairs(data: EvaluationData, protected: list, count: int):
    """For real datasets: pairs of test images whose protected labels all differ (the closest analogue)."""
    idx = [data.names.index(a) for a in protected]
    y = data.test_labels[:, idx]
    firsts, seconds = [], []
    for i in range(len(y)):
        j = int(torch.nonzero((y != y[i]).all(1)).flatten()[0]) if (y != y[i]).all(1).any() else None
        if j is not None:
            firsts.append(i)
            seconds.append(j)
        if len(firsts) == count:
            break
    return data.test_images[firsts], data.test_images[seconds]


def run_audits(pipe, data: EvaluationData, methods: dict, *, protected: list, epsilons: Sequence[float],
               delta: float, num_trials: int, decoded_trials: int, num_pairs: int, num_inference_steps: int,
               seed: int = 0, progress: bool = True) -> dict:
    """Audit every formal method at every epsilon in ``epsilons`` on its own neighbouring relation.

    ``dpdiffusion`` is audited (a) on attribute-neighbours built in the latent (worst case at the clip bounds, and
    with the protected coordinates of counterfactual images), in the latent and through the decoder, and (b) on real
    counterfactual image pairs, which also differ in the residual: the guarantee does not cover (b).
    """
    from tqdm.auto import tqdm

    size = pipe.image_size
    if data.test_params is not None:
        x0, x1 = _counterfactual_pairs(data, protected, num_pairs, size)
    else:
        x0, x1 = _opposite_pairs(data, protected, num_pairs)
    z0s, z1s = encode_images(pipe, x0), encode_images(pipe, x1)
    dirs = pipe.attribute_directions
    out: dict = {}
    finite = [e for e in epsilons if not math.isinf(e)]
    jobs = [(m, e) for m in methods if m in DP_METHODS for e in finite]
    bar = tqdm(jobs, desc="audit", disable=not progress)
    for name, eps in bar:
        kw = dict(attributes=protected, epsilon=eps, delta=delta, alpha=0.05)
        entry: dict = {}
        s = _seed_for("audit", name, eps, seed)
        if name == "dpdiffusion":
            za, zb = audit_lib.formal_neighbours(pipe, z0s[0], attributes=protected)
            entry["formal_worst_case_latent"] = audit_lib.audit_latent_release(
                pipe, za, zb, num_trials=num_trials, seed=s, **kw).to_dict()
            best_cf = None
            for i in range(len(z0s)):
                a1, _ = dirs.project(z1s[i:i + 1], attributes=protected)
                za, zb = audit_lib.formal_neighbours(pipe, z0s[i], attributes=protected, target=a1[0])
                res = audit_lib.audit_latent_release(pipe, za, zb, num_trials=num_trials // 2, seed=s + i, **kw)
                if best_cf is None or res.epsilon_lower_bound > best_cf.epsilon_lower_bound:
                    best_cf = res
            entry["formal_counterfactual_coordinates_latent"] = best_cf.to_dict()
            if decoded_trials:
                za, zb = audit_lib.formal_neighbours(pipe, z0s[0], attributes=protected)
                entry["formal_worst_case_decoded"] = audit_lib.audit_decoded_release(
                    pipe, za, zb, num_trials=decoded_trials, num_inference_steps=num_inference_steps, seed=s,
                    **kw).to_dict()
            for key in list(entry):
                entry[key]["covered_by_claim"] = True
            za, zb = audit_lib.formal_neighbours(pipe, z0s[0], attributes=protected)
            entry["float_side_channel_clamped_latent"] = {**audit_lib.audit_latent_release(
                pipe, za, zb, num_trials=num_trials // 2, seed=s + 400, post_processing="clip", **kw).to_dict(),
                "covered_by_claim": False,
                "note": "the released latent at full float precision, after the clamp to +-C: the residual, recomputed "
                        "from each neighbour's latent, differs by float rounding, which an exact threshold can read "
                        "at the clamp's point masses (a floating-point side channel, outside the guarantee's model, "
                        "like the sampler's; it does not reach the 8-bit decoded image, audited above). Publish "
                        "images, or latents snapped to a grid, not raw float latents."}
            # (b) real image pairs: the residual differs too
            lr, proj, shift = None, None, []
            for i in range(len(z0s)):
                r_lr = audit_lib.audit_latent_release(pipe, z0s[i:i + 1], z1s[i:i + 1], num_trials=num_trials // 2,
                                                      seed=s + 100 + i, **kw)
                r_pr = audit_lib.audit_latent_release(pipe, z0s[i:i + 1], z1s[i:i + 1], num_trials=num_trials // 2,
                                                      seed=s + 200 + i, statistic="residual", **kw)
                lr = r_lr if lr is None or r_lr.epsilon_lower_bound > lr.epsilon_lower_bound else lr
                proj = r_pr if proj is None or r_pr.epsilon_lower_bound > proj.epsilon_lower_bound else proj
                a0, r0 = dirs.project(z0s[i:i + 1], attributes=protected)
                a1, r1 = dirs.project(z1s[i:i + 1], attributes=protected)
                shift.append(float((r1 - r0).norm() / (z1s[i] - z0s[i]).norm().clamp_min(1e-12)))
            entry["image_pairs_protected_coordinates_latent"] = {**lr.to_dict(), "covered_by_claim": False}
            entry["image_pairs_full_latent"] = {
                **proj.to_dict(), "covered_by_claim": False,
                "residual_share_of_latent_difference": float(np.mean(shift)),
                "note": "the pair's residuals differ deterministically and are not noised with scope='attributes': "
                        "a projection on the residual difference separates them up to the trials' resolution "
                        "(max_certifiable_epsilon). This is leakage around the mechanism, outside its relation."}
            if decoded_trials:
                entry["image_pairs_full_decoded"] = {**audit_lib.audit_decoded_release(
                    pipe, z0s[:1], z1s[:1], num_trials=decoded_trials, num_inference_steps=num_inference_steps,
                    seed=s + 300, statistic="residual", **kw).to_dict(), "covered_by_claim": False}
        elif name == "latent":
            best = None
            pairs = [(z0s[i:i + 1], z1s[i:i + 1]) for i in range(len(z0s))]
            far = torch.cdist(z0s, z1s)
            i, j = divmod(int(far.argmax()), far.shape[1])
            pairs.append((z0s[i:i + 1], z1s[j:j + 1]))
            for k, (za, zb) in enumerate(pairs):
                res = audit_lib.audit_latent_release(pipe, za, zb, scope="latent", num_trials=num_trials // 2,
                                                     seed=s + k, **kw)
                best = res if best is None or res.epsilon_lower_bound > best.epsilon_lower_bound else best
            entry["image_pairs_latent"] = {**best.to_dict(), "covered_by_claim": True}
        elif name in ("dp_pix", "dp_pix_attribute"):
            entry["m_neighbours"] = {**_audit_dp_pix(methods[name], data.test_images[0], eps, num_trials, s)
                                     .to_dict(), "covered_by_claim": True}
        elif name == "pixel_gaussian":
            entry["l2_neighbours"] = {**_audit_pixel_gaussian(methods[name], x0[0], x1[0], eps, delta, num_trials, s)
                                      .to_dict(), "covered_by_claim": True}
        out.setdefault(name, {})[_fmt(eps)] = entry
    return out


def _audit_dp_pix(method: DPPixMethod, x: torch.Tensor, epsilon: float, num_trials: int, seed: int):
    """m = method.m pixels, filling cells in raster order, moved to the far end of [0, 255] in every channel (the
    largest move of the cell means the relation allows); the attack is the exact Laplace log-likelihood ratio on the
    released 8-bit means of the cells touched. The released image is audited, not the raw float output: with raw
    floats the statistic's flat tails vary in the last bits with the low bits of ``mu + noise``, which reveal ``mu``
    (the floating-point attack on the textbook Laplace sampler of Mironov 2012) and certify epsilon far above the
    claim; the 8-bit rounding of the release removes that channel."""
    b, m = method.cell_size, method.m
    h, w = x.shape[-2:]
    x0 = x.clone()[None].double()
    x1 = x0.clone()
    cells, left = [], m
    for cy in range(0, h, b):
        for cx in range(0, w, b):
            if left <= 0:
                break
            block = x1[0, :, cy:cy + b, cx:cx + b].reshape(3, -1)
            k = min(left, block.shape[1])
            block[:, :k] = torch.where(block[:, :k] < 0.5, 1.0, 0.0).to(block)
            x1[0, :, cy:cy + b, cx:cx + b] = block.reshape(3, *x1[0, :, cy:cy + b, cx:cx + b].shape[1:])
            cells.append((cy, cx))
            left -= k
    ys = torch.tensor([c[0] for c in cells])
    xs = torch.tensor([c[1] for c in cells])

    def means(img):  # (n, 3, len(cells)) noise-free cell means on the 0..255 scale
        pooled = torch.nn.functional.avg_pool2d(img * 255.0, b, stride=b, ceil_mode=True, count_include_pad=False)
        return pooled[:, :, ys // b, xs // b]

    mu0, mu1 = means(x0)[0], means(x1)[0]
    scale = method.describe(epsilon)["parameters"]["laplace_scale_0_255"]

    def mechanism(world, n, g):
        src = (x0, x1)[world].expand(n, -1, -1, -1)
        out = quantize(dp_pix(src, epsilon=epsilon, cell_size=b, m=m, generator=g))
        return torch.round(out[:, :, ys, xs].double() * 255)  # the released 8-bit values

    def statistic(y):
        return ((y - mu0).abs() - (y - mu1).abs()).flatten(1).sum(1) / scale

    return audit_lib.audit_mechanism(mechanism, statistic, num_trials=num_trials, delta=0.0, claimed_epsilon=epsilon,
                                     seed=seed, batch_size=2048)


def _audit_pixel_gaussian(method: PixelGaussianMethod, x: torch.Tensor, x_cf: torch.Tensor, epsilon: float,
                          delta: float, num_trials: int, seed: int):
    """x and x + t (x_cf - x) at L2 distance min(||x_cf - x||, Delta) (a valid image pair of the relation); the
    attack is the Gaussian likelihood ratio on the unclipped output (clipping is post-processing)."""
    diff = (x_cf - x).double()
    t = min(1.0, method.l2_sensitivity / float(diff.norm().clamp_min(1e-12)))
    x0, x1 = x[None].double(), (x.double() + t * diff)[None]
    d = (x1 - x0).flatten()
    mid = ((x0 + x1) / 2).flatten()

    def mechanism(world, n, g):
        src = (x0, x1)[world].expand(n, -1, -1, -1)
        return pixel_gaussian(src, epsilon=epsilon, delta=delta, l2_sensitivity=method.l2_sensitivity, generator=g,
                              clip=False)

    def statistic(y):
        return (y.flatten(1) - mid) @ d

    return audit_lib.audit_mechanism(mechanism, statistic, num_trials=num_trials, delta=delta,
                                     claimed_epsilon=epsilon, seed=seed, batch_size=1024)


# ---------------------------------------------------------------------------------------------------------------
# The whole sweep
# ---------------------------------------------------------------------------------------------------------------


def run_paper_experiments(
    out: str | Path = "paper-results",
    *,
    pipe=None,
    model: str | None = None,
    dataset: str = "synthfaces",
    attribute_columns: Sequence[str] | None = None,
    protected_attributes: Sequence[str] | None = None,
    identity_column: str | None = None,
    epsilons: Sequence[float] | None = None,
    methods: Sequence[str] = ALL_METHODS,
    num_train: int | None = None,
    num_test: int | None = None,
    num_inference_steps: int | None = None,
    delta: float = 1e-5,
    classifier_epochs: int | None = None,
    audit_epsilons: Sequence[float] = AUDIT_EPSILONS,
    audit_trials: int | None = None,
    audit_decoded_trials: int | None = None,
    audit_pairs: int | None = None,
    dp_pix_cell_size: int = 4,
    dp_pix_m: int = 1,
    pixel_l2_sensitivity: float | None = None,
    match_metric: str = "fd",
    batch_size: int = 128,
    utility_augment: bool = True,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Run the sweep and write ``results.json``, ``results.md`` and the PNG figures to ``out``.

    Args:
        out (`str` or `Path`): output folder (created).
        pipe (`DPDiffusionPipeline`, *optional*): the pipeline to evaluate; else loaded from ``model``.
        model (`str`, *optional*): pipeline folder or Hub repo id (default: the embedded ``DEFAULT_MODEL``).
        dataset (`str`): ``"synthfaces"`` or a dataset name/folder that ``load_attribute_dataset`` reads.
        attribute_columns (`list[str]`, *optional*): label columns (default: SynthFaces' five, or every bool column).
        protected_attributes (`list[str]`, *optional*): attributes to protect; must have directions in the pipeline
            (default: the pipeline's defaults, ``dark_skin`` and ``long_hair`` on SynthFaces).
        identity_column (`str`, *optional*): person ids of a real dataset (for re-identification).
        epsilons (`list[float]`): the sweep (default ``PAPER_EPSILONS``; ``QUICK_EPSILONS`` with ``quick``).
        methods (`list[str]`): any of ``ALL_METHODS``.
        num_train, num_test (`int`): images per split (defaults 1000/400; 400/200 with ``quick``).
        num_inference_steps (`int`): DDIM steps of the decoder (default 5, for time on a CPU; more steps decode
            closer to the data and cost proportionally more).
        delta (`float`): delta of every (epsilon, delta) claim.
        classifier_epochs (`int`): epochs of every attacker/utility ResNet.
        audit_epsilons (`list[float]`): epsilons audited (those also in ``epsilons`` or not: audits are cheap).
        audit_trials (`int`): trials per world of each latent/pixel audit.
        audit_decoded_trials (`int`): trials per world of the audits through the decoder (0 skips them).
        audit_pairs (`int`): counterfactual pairs in the image-pair audits.
        dp_pix_cell_size (`int`), dp_pix_m (`int`): DP-Pix's cell size b and neighbourhood m.
        pixel_l2_sensitivity (`float`, *optional*): Delta of the pixel Gaussian (default: SynthFaces counterfactual
            95 % quantile, `counterfactual_l2_sensitivity`).
        match_metric (`str`): quality the obfuscations are matched on, ``"fd"`` (default) or ``"psnr"``.
        utility_augment (`bool`): the utility classifiers (clean reference included) train with flips and colour
            jitter (`flip_colour_augment`, the default); the leakage attackers never do.
        quick (`bool`): the small sweep of ``dpdiffusion demo`` (about 2-3 minutes on 2 cores).
        seed (`int`): seeds data (disjoint from the default model's training seed), noise and classifiers.
        progress (`bool`): progress bars.
        command (`str`, *optional*): the command line recorded beside every figure (default: ``sys.argv``).

    Returns:
        `dict`: the results (the content of ``results.json``, with ``inf`` as a float): ``command``, ``config``,
        ``clean``, ``residual_leakage``, ``rows`` (one per method and epsilon), ``audit``, ``claims`` (the paper's
        claims at epsilon = 1, checked), ``table_md`` (the Markdown table), ``seconds`` and ``files``.

    Raises:
        ValueError: for unknown methods, attributes or bad sizes.
    """
    from tqdm.auto import tqdm

    started = time.monotonic()
    defaults = _DEFAULTS[bool(quick)]
    num_train = num_train or defaults["num_train"]
    num_test = num_test or defaults["num_test"]
    steps = num_inference_steps or defaults["num_inference_steps"]
    epochs = classifier_epochs or defaults["classifier_epochs"]
    audit_trials = audit_trials or defaults["audit_trials"]
    decoded_trials = defaults["audit_decoded_trials"] if audit_decoded_trials is None else audit_decoded_trials
    audit_pairs = audit_pairs or defaults["audit_pairs"]
    epsilons = [float(e) for e in (epsilons or (QUICK_EPSILONS if quick else PAPER_EPSILONS))]
    if any(math.isnan(e) or e <= 0 for e in epsilons):
        raise ValueError(f"epsilons must be > 0 (inf allowed), got epsilons={epsilons}")
    methods = list(methods)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(ALL_METHODS)}")
    if match_metric not in ("fd", "psnr"):
        raise ValueError(f"match_metric must be 'fd' or 'psnr', got match_metric={match_metric!r}")
    if num_train < 20 or num_test < 20:
        raise ValueError(f"num_train and num_test must be >= 20, got {num_train} and {num_test}")
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    if pipe is None:
        from ..models.default import load_pipeline as _load_pipeline

        pipe = _load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.image_size
    protected = list(protected_attributes or pipe._default_attributes())
    pipe.attribute_directions.indices(protected)  # unknown -> ValueError

    log = (lambda msg: print(msg, flush=True)) if progress else logger.info
    data = load_evaluation_data(dataset, image_size=size, num_train=num_train, num_test=num_test,
                                attribute_columns=attribute_columns, identity_column=identity_column, seed=seed)
    missing = [a for a in protected if a not in data.names]
    if missing:
        raise ValueError(f"protected attributes {missing} are not label columns {data.names}")
    unprotected = [n for n in data.names if n not in protected]
    log(f"data: {data.source}; {len(data.train_images)} train / {len(data.test_images)} test at {size} px; "
        f"protected {protected}, utility on {unprotected}")

    # 1. clean reference: classifier, features, latents
    t0 = time.monotonic()
    with _threads(1):
        clean_model = train_attribute_classifier(data.train_images, data.train_labels, names=data.names,
                                                 epochs=epochs, seed=seed, progress=progress)
    feature_fn = (lambda imgs: classifier_features(clean_model, imgs * 2 - 1))  # noqa: E731
    pred = predict_labels(clean_model, data.test_images)
    clean = {"accuracy": attribute_accuracies(pred, data.test_labels, data.names),
             "test_features": feature_fn(data.test_images),
             "test_latents": encode_images(pipe, data.test_images)}
    clean["utility_accuracy"] = clean["accuracy"]
    if utility_augment and unprotected:  # the reference of the utility ratio uses the utility classifier's recipe
        with _threads(1):
            clean_util = train_attribute_classifier(data.train_images, data.train_labels, names=data.names,
                                                    epochs=epochs, seed=seed, progress=progress, augment=True)
        clean["utility_accuracy"] = attribute_accuracies(predict_labels(clean_util, data.test_images),
                                                         data.test_labels, data.names)
    clean_leak = {a: leakage_accuracy(pred[:, data.names.index(a)], data.test_labels[:, data.names.index(a)])
                  for a in protected}
    clean_summary = {
        "accuracy": clean["accuracy"],
        "leakage": clean_leak,
        "leakage_accuracy": max(v["accuracy"] for v in clean_leak.values()),
        "utility_accuracy": clean["utility_accuracy"],
        "utility_mean_accuracy": float(np.mean([clean["utility_accuracy"][a] for a in unprotected]))
        if unprotected else None,
        "identity": identity_leakage(clean["test_latents"], clean["test_latents"], data.test_identities)
        if data.test_identities is not None else None,
        "fd_train_vs_test": feature_frechet_distance(feature_fn(data.train_images), clean["test_features"]),
        "seconds": round(time.monotonic() - t0, 1),
    }
    resid = residual_leakage(pipe, data.train_images, data.train_labels, data.test_images, data.test_labels,
                             attributes=protected, names=data.names)
    log(f"clean reference: accuracy {json.dumps({k: round(v, 3) for k, v in clean['accuracy'].items()})}; "
        f"residual probes {json.dumps(_jsonable(resid))}")

    # 2. methods
    objs: dict = {}
    if "dpdiffusion" in methods:
        objs["dpdiffusion"] = DiffusionMethod(pipe, name="dpdiffusion", scope="attributes", attributes=protected,
                                              delta=delta, num_inference_steps=steps, batch_size=batch_size)
    if "latent" in methods:
        objs["latent"] = DiffusionMethod(pipe, name="latent", scope="latent", attributes=protected, delta=delta,
                                         num_inference_steps=steps, batch_size=batch_size)
    if "dp_pix" in methods:
        objs["dp_pix"] = DPPixMethod(name="dp_pix", neighbouring_relation=(
            f"m-neighbours: images differing in at most m={dp_pix_m} pixels (Fan 2018)"), cell_size=dp_pix_cell_size,
            m=dp_pix_m)
    if "dp_pix_attribute" in methods:
        from ..data.synthfaces import SYNTHFACES_ATTRIBUTES

        cf_attrs = [a for a in protected if a in SYNTHFACES_ATTRIBUTES] or ["dark_skin", "long_hair"]
        m_attr = counterfactual_pixel_count(cf_attrs, image_size=size)
        objs["dp_pix_attribute"] = DPPixMethod(name="dp_pix_attribute", neighbouring_relation=(
            f"m-neighbours with m={m_attr} pixels: 95% of SynthFaces counterfactual flips of {cf_attrs} change at "
            f"most that many (Fan 2018's relation at attribute level)"), cell_size=dp_pix_cell_size, m=m_attr)
    if "pixel_gaussian" in methods:
        if pixel_l2_sensitivity is None:
            from ..data.synthfaces import SYNTHFACES_ATTRIBUTES

            cf_attrs = [a for a in protected if a in SYNTHFACES_ATTRIBUTES] or ["dark_skin", "long_hair"]
            pixel_l2_sensitivity = counterfactual_l2_sensitivity(cf_attrs, image_size=size)
        objs["pixel_gaussian"] = PixelGaussianMethod(name="pixel_gaussian", neighbouring_relation=(
            f"images at L2 distance <= {pixel_l2_sensitivity:.3f} (pixels in [0, 1]; the 95% quantile of SynthFaces "
            f"counterfactual distances with {protected} flipped)"), l2_sensitivity=pixel_l2_sensitivity, delta=delta)

    all_images = torch.cat([data.train_images, data.test_images])
    dataset_tag = "".join(c if c.isalnum() else "-" for c in str(dataset))[-40:] + "-" + "-".join(protected)
    ntr = len(data.train_images)
    rows: list = []
    samples: dict = {"original": data.test_images[:8]}
    settings = [(m, e) for m in ("dpdiffusion", "latent", "dp_pix", "dp_pix_attribute", "pixel_gaussian") if m in objs
                for e in epsilons]
    obfus = [m for m in ("blur", "pixelate") if m in methods]
    bar = tqdm(total=len(settings) + len(obfus) * len(epsilons), desc="sweep", disable=not progress)
    cache: dict = {}
    for name, eps in settings:
        t0 = time.monotonic()
        method = objs[name]
        key = ("diffusion", "inf") if name in ("dpdiffusion", "latent") and math.isinf(eps) else (name, eps)
        if key not in cache:
            g = torch.Generator().manual_seed(_seed_for(name if key[0] != "diffusion" else "diffusion", eps, seed))
            stored = None
            if key[0] in ("dpdiffusion", "latent", "diffusion"):  # decoding is the expensive part: keep it on disk
                stored = out / ".protected-cache" / (
                    f"{key[0]}_{_fmt(eps)}_{_fingerprint(pipe)}_{dataset_tag}_{ntr}_{len(data.test_images)}_"
                    f"{steps}_{delta:g}_{seed}.pt")
            if stored is not None and stored.exists():
                prot = torch.load(stored).float() / 255  # (N, 3, H, W) uint8 -> [0, 1]
            else:
                prot = method.protect(all_images, epsilon=eps, generator=g, progress=progress)
                if stored is not None:
                    stored.parent.mkdir(exist_ok=True)
                    torch.save(torch.round(prot * 255).to(torch.uint8), stored.with_suffix(".tmp"))
                    stored.with_suffix(".tmp").replace(stored)
            cache[key] = _evaluate_setting(pipe, data, prot[:ntr], prot[ntr:], protected=protected,
                                           unprotected=unprotected, epsilon=eps, delta=delta, clean=clean,
                                           epochs=epochs, seed=seed, feature_fn=feature_fn,
                                           utility_augment=utility_augment)
            cache[key]["_samples"] = prot[ntr:ntr + 8]
        res = dict(cache[key])
        samples[(name, eps)] = res.pop("_samples")
        row = {"method": name, "epsilon": eps, "delta": method.describe(eps).get("delta", delta),
               "description": method.describe(eps), **res,
               "leakage_bound": dp_accuracy_bound(eps, delta=delta), "seconds": round(time.monotonic() - t0, 1)}
        rows.append(row)
        bar.update(1)
        bar.set_postfix_str(f"{name} eps={_fmt(eps)} leak={row['leakage_accuracy']:.3f}")

    # 3. obfuscations at the image quality of dpdiffusion at each epsilon (FD by default: see match_quality)
    quality_key = {"fd": "fd_synthfaces_resnet", "psnr": "psnr_db"}[match_metric]
    ours = {r["epsilon"]: r["quality"][quality_key] for r in rows if r["method"] == "dpdiffusion"}
    for name in obfus:
        for eps in epsilons:
            t0 = time.monotonic()
            target = ours.get(eps)
            if target is None:
                param, achieved = (1.5, None) if name == "blur" else (4, None)
            elif match_metric == "fd":  # the protocol of the table's FD column: test images vs clean test features
                param, achieved = match_quality(data.test_images, target, name, metric="fd", feature_fn=feature_fn,
                                                reference_features=clean["test_features"])
            else:
                param, achieved = match_quality(data.test_images, target, name, metric="psnr")
            cls = BlurMethod if name == "blur" else PixelateMethod
            kwargs = {"sigma": param} if name == "blur" else {"cell_size": int(param)}
            method = cls(name=name, neighbouring_relation="none (no formal guarantee)", formal=False,
                         parameters={**kwargs, "matched_metric": quality_key, "matched_target": target,
                                     "matched_achieved": achieved},
                         **kwargs)
            key = (name, param)
            if key not in cache:
                prot = method.protect(all_images)
                cache[key] = _evaluate_setting(pipe, data, prot[:ntr], prot[ntr:], protected=protected,
                                               unprotected=unprotected, epsilon=None, delta=delta, clean=clean,
                                               epochs=epochs, seed=seed, feature_fn=feature_fn,
                                               utility_augment=utility_augment)
                cache[key]["_samples"] = prot[ntr:ntr + 8]
            res = dict(cache[key])
            samples[(name, eps)] = res.pop("_samples")
            rows.append({"method": name, "epsilon": None, "matched_to_epsilon": eps, "delta": None,
                         "description": method.describe(math.inf), **res, "leakage_bound": None,
                         "seconds": round(time.monotonic() - t0, 1)})
            bar.update(1)
    bar.close()

    # 4. audits
    audit = run_audits(pipe, data, objs, protected=protected, epsilons=list(audit_epsilons), delta=delta,
                       num_trials=audit_trials, decoded_trials=decoded_trials, num_pairs=audit_pairs,
                       num_inference_steps=steps, seed=seed, progress=progress) if audit_epsilons else {}

    results = {
        "command": command,
        "config": {"dataset": dataset, "source": data.source, "names": data.names, "protected": protected,
                   "unprotected": unprotected, "epsilons": epsilons, "methods": methods, "num_train": num_train,
                   "num_test": num_test, "num_inference_steps": steps, "delta": delta, "classifier_epochs": epochs,
                   "utility_augment": bool(utility_augment),
                   "audit_epsilons": list(audit_epsilons), "audit_trials": audit_trials,
                   "audit_decoded_trials": decoded_trials, "audit_pairs": audit_pairs, "quick": bool(quick),
                   "seed": seed, "image_size": size, "model": model or "DEFAULT_MODEL",
                   "fd_feature_space": FD_FEATURE_SPACE, "obfuscations_matched_on": quality_key,
                   "identity_features": "semantic latent of the evaluated pipeline's encoder (cosine, top-1)",
                   "python": platform.python_version(), "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads()},
        "clean": clean_summary,
        "residual_leakage": resid,
        "rows": rows,
        "audit": audit,
    }
    results["claims"] = check_claims(results)
    results["table_md"] = "\n".join(_table(results))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["files"] = write_outputs(results, samples, out)
    log(f"wrote {out / 'results.md'} and {out / 'results.json'} ({results['seconds']} s)")
    return results


# ---------------------------------------------------------------------------------------------------------------
# Claims, table, report
# ---------------------------------------------------------------------------------------------------------------


def _row(rows, method, eps):
    for r in rows:
        if r["method"] == method and r["epsilon"] == eps:
            return r
    return None


def check_claims(results: dict, *, epsilon: float = 1.0) -> dict:
    """The paper's claims at ``epsilon`` checked against the results (``None`` where a needed row is missing)."""
    rows, clean = results["rows"], results["clean"]
    ours = _row(rows, "dpdiffusion", epsilon)
    claims: dict = {"epsilon": epsilon}
    if ours is not None and ours["utility"] is not None:
        claims["utility_ratio_min"] = ours["utility"]["min_ratio"]
        claims["utility_ratio_mean"] = ours["utility"]["mean_ratio"]
        claims["utility_at_least_90pct_of_clean"] = bool(ours["utility"]["min_ratio"] >= 0.9)
        plain = ours.get("utility_without_augmentation")
        if plain is not None and plain != ours["utility"]:
            claims["utility_ratio_min_without_augmentation"] = plain["min_ratio"]
            claims["utility_ratio_mean_without_augmentation"] = plain["mean_ratio"]
    if ours is not None:
        bound = dp_accuracy_bound(epsilon, delta=ours["delta"] or 0.0)
        leak = {a: v["accuracy"] for a, v in ours["leakage"]["best"].items()}
        within = {a: ours["leakage"]["best"][a]["within_bound"] for a in leak}
        claims["leakage_bound_balanced"] = bound
        claims["leakage_accuracy"] = leak
        claims["leakage_within_bound"] = bool(all(within.values()))
        if not all(within.values()):
            resid = results.get("residual_leakage", {})
            claims["leakage_explanation"] = (
                "attack accuracy above the bound for " + ", ".join(a for a, w in within.items() if not w)
                + ": the guarantee covers attribute-neighbours (same residual); a non-linear probe reads the attribute "
                "from the untouched residual of clean latents at "
                + ", ".join(f"{a}: {v['residual_mlp_probe']:.1%} (linear {v['residual_linear_probe']:.1%})"
                            for a, v in resid.items())
                + ", i.e. the attribute leaks around the mechanism through r, not through the noised coordinates.")
    for base in ("dp_pix", "dp_pix_attribute", "pixel_gaussian"):
        other = _row(rows, base, epsilon)
        if ours is not None and other is not None and ours["utility"] and other["utility"]:
            gap = 100.0 * (ours["utility"]["mean_accuracy"] - other["utility"]["mean_accuracy"])
            claims[f"utility_gain_vs_{base}_points"] = gap
            claims[f"beats_{base}_by_15_points"] = bool(gap >= 15.0)
    worst = []
    for method, per_eps in results.get("audit", {}).items():
        for eps, entry in per_eps.items():
            for kind, v in entry.items():
                if isinstance(v, dict) and v.get("covered_by_claim"):
                    worst.append({"method": method, "epsilon": float(eps), "audit": kind,
                                  "epsilon_lower_bound": v["epsilon_lower_bound"], "exceeds": v["exceeds_claim"]})
    if worst:
        claims["audit_never_exceeds_claim"] = bool(not any(w["exceeds"] for w in worst))
        claims["audit_max_ratio_lower_bound_to_claim"] = max(w["epsilon_lower_bound"] / w["epsilon"] for w in worst)
        claims["audit_exceeding"] = [w for w in worst if w["exceeds"]]
    return claims


def _table(results: dict) -> list[str]:
    protected = results["config"]["protected"]
    lines = [
        "| method | epsilon | neighbouring relation | leakage: best attack acc. (" + ", ".join(protected)
        + ") | DP bound | utility: mean acc. (clean test) | utility / clean (min) | re-id top-1 | PSNR dB | SSIM "
        "| FD* |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    c = results["clean"]
    cid = c["identity"]["top1"] if c["identity"] else None
    lines.append(f"| clean images | - | - | {c['leakage_accuracy']:.3f} | - | "
                 f"{_f(c['utility_mean_accuracy'])} | 1.000 | {_f(cid)} | inf | 1.000 | 0 |")
    for r in results["rows"]:
        eps = (_fmt(r["epsilon"]) if r["epsilon"] is not None else
               f"none (quality of eps={_fmt(r['matched_to_epsilon'])})")
        leak = ", ".join(f"{v['accuracy']:.3f}" for v in r["leakage"]["best"].values())
        rel = r["description"]["neighbouring_relation"]
        rel = rel if len(rel) < 60 else rel[:57] + "..."
        u = r["utility"]
        lines.append(
            f"| {r['method']} | {eps} | {rel} | {leak} | {_f(r['leakage_bound'])} | "
            f"{_f(u['mean_accuracy'] if u else None)} | {_f(u['mean_ratio'] if u else None)} "
            f"({_f(u['min_ratio'] if u else None)}) | {_f(r['identity']['top1'] if r['identity'] else None)} | "
            f"{r['quality']['psnr_db']:.2f} | {r['quality']['ssim']:.3f} | "
            f"{r['quality']['fd_synthfaces_resnet']:.2f} |")
    return lines


def _f(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def _audit_table(audit: dict) -> list[str]:
    lines = ["| method | claimed epsilon | audit (relation) | covered by the claim | eps lower bound (95% CP) | "
             "point estimate | trials/world | max certifiable |", "|---|---|---|---|---|---|---|---|"]
    for method, per_eps in audit.items():
        for eps, entry in per_eps.items():
            for kind, v in entry.items():
                lines.append(f"| {method} | {eps} | {kind} | {'yes' if v['covered_by_claim'] else 'no'} | "
                             f"{v['epsilon_lower_bound']:.3f} | {_f(v['epsilon_point'])} | {v['trials_per_world']} | "
                             f"{v['max_certifiable_epsilon']:.2f} |")
    return lines


def write_outputs(results: dict, samples: dict, out: Path) -> dict:
    """Write ``results.json``, ``results.md`` and the PNGs; returns their paths."""
    from . import plots

    cmd = results["command"]
    rows = results["rows"]
    files = {}
    files["privacy_utility"] = plots.plot_privacy_utility(
        [r for r in rows if r["utility"]], out / "privacy_utility.png", clean=results["clean"]
        if results["clean"]["utility_mean_accuracy"] is not None else None)
    files["leakage_vs_epsilon"] = plots.plot_vs_epsilon(
        rows, out / "leakage_vs_epsilon.png", key="leakage_accuracy", bound=True,
        reference=results["clean"]["leakage_accuracy"], reference_label="clean images",
        ylabel="best attack accuracy on protected attributes", title="Protected-attribute leakage vs epsilon")
    if any(r["utility"] for r in rows):
        files["utility_vs_epsilon"] = plots.plot_vs_epsilon(
            [r for r in rows if r["utility"]], out / "utility_vs_epsilon.png",
            key=lambda r: r["utility"]["mean_accuracy"], reference=results["clean"]["utility_mean_accuracy"],
            ylabel="mean accuracy on unprotected attributes (clean test)", title="Utility vs epsilon")
    if results["audit"]:
        files["audit"] = plots.plot_audit(results["audit"], out / "audit.png")
    ours = [(f"dpdiffusion eps={_fmt(e)}", s) for (m, e), s in
            ((k, v) for k, v in samples.items() if isinstance(k, tuple)) if m == "dpdiffusion"]
    if ours:
        files["samples_dpdiffusion"] = plots.save_sample_grid([("original", samples["original"])] + ours,
                                                              out / "samples_dpdiffusion.png")
    ref = 1.0 if any(isinstance(k, tuple) and k[1] == 1.0 for k in samples) else None
    if ref is None:
        finite = [k[1] for k in samples if isinstance(k, tuple) and not math.isinf(k[1])]
        ref = min(finite) if finite else math.inf
    per_method = [(f"{m} eps={_fmt(e)}" if m not in ("blur", "pixelate") else f"{m} (quality of eps={_fmt(e)})", s)
                  for (m, e), s in ((k, v) for k, v in samples.items() if isinstance(k, tuple)) if e == ref]
    files["samples_methods"] = plots.save_sample_grid([("original", samples["original"])] + per_method,
                                                      out / "samples_methods.png")
    files = {k: str(v) for k, v in files.items()}
    files["results_json"] = str(out / "results.json")
    files["results_md"] = str(out / "results.md")
    results["files"] = files
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results) + "\n")
    return files


def render_markdown(results: dict) -> str:
    """The Markdown report: table, claims, audit and figures, each figure with the command that produced it."""
    cfg, cmd = results["config"], results["command"]
    claims = results.get("claims", {})
    lines = [
        "# dpdiffusion: privacy-utility experiments",
        "",
        f"Produced by: `{cmd}`",
        "",
        f"Data: {cfg['source']}; {cfg['num_train']} train / {cfg['num_test']} test images at {cfg['image_size']} px. "
        f"Protected: {', '.join(cfg['protected'])}; utility measured on {', '.join(cfg['unprotected'])}. "
        f"delta = {cfg['delta']:g}; {cfg['num_inference_steps']} DDIM steps; classifiers: small ResNet, "
        f"{cfg['classifier_epochs']} epochs; {results.get('seconds', '?')} s in all.",
        "",
        "Leakage: the better of a ResNet trained and tested on protected images and a logistic probe on the "
        "re-encoded latent (accuracy on the protected test set; majority baseline about 0.5). DP bound: "
        "(e^eps + delta)/(1 + e^eps), the best any attacker can do on a balanced attribute when flipping it is a "
        "neighbour under the method's relation. Utility: a ResNet trained on protected images"
        + (" with flips and colour jitter (as is the clean reference)" if cfg.get("utility_augment") else
           " (the attacker itself)")
        + ", tested on clean images. Re-id: top-1 against the clean test gallery (own original excluded), "
        "features = the pipeline's semantic latent. *FD: " + cfg["fd_feature_space"] + ".",
        "",
        *_table(results),
        "",
        "## Claims at epsilon = 1",
        "",
    ]
    for k, v in claims.items():
        lines.append(f"- `{k}`: {json.dumps(_jsonable(v))}")
    lines += ["", "## Leakage around the mechanism (residual probes on clean latents)", "",
              "| attribute | linear probe on r | MLP probe on r | linear probe on a | linear probe on z |",
              "|---|---|---|---|---|"]
    for a, v in results.get("residual_leakage", {}).items():
        lines.append(f"| {a} | {v['residual_linear_probe']:.3f} | {v['residual_mlp_probe']:.3f} | "
                     f"{v['coordinates_linear_probe']:.3f} | {v['latent_linear_probe']:.3f} |")
    if results.get("audit"):
        lines += ["", "## Empirical privacy audit", "",
                  "Threshold tests on the released output; threshold chosen on one half of the trials, bound "
                  "(two-sided 95% Clopper-Pearson per error rate) on the other half. Rows 'covered by the claim: yes' "
                  "use the method's own neighbouring relation and must stay below the claimed epsilon.", "",
                  *_audit_table(results["audit"])]
    lines += ["", "## Figures", ""]
    captions = {"privacy_utility": "Privacy-utility trade-off", "leakage_vs_epsilon": "Leakage vs epsilon",
                "utility_vs_epsilon": "Utility vs epsilon", "audit": "Empirical epsilon lower bounds",
                "samples_dpdiffusion": "dpdiffusion samples at each epsilon",
                "samples_methods": "All methods at the reference epsilon"}
    for key, caption in captions.items():
        path = results.get("files", {}).get(key)
        if path:
            lines += [f"![{caption}]({Path(path).name})", "", f"{caption}. Command: `{cmd}`", ""]
    return "\n".join(lines)
