"""The sweep's empirical privacy audits: every formal method at every audited epsilon, on its own relation.

``dpdiffusion`` is audited (a) on attribute-neighbours built in the latent (worst case at the clip bounds, and with
the protected coordinates of counterfactual images), in the latent and through the decoder, and (b) on real
counterfactual image pairs, which also differ in the residual: the guarantee does not cover (b). The pixel baselines
are audited with the exact likelihood-ratio attack on their own neighbouring relation.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch

from .. import audit as audit_lib
from ..baselines import DP_METHODS, DPPixMethod, PixelGaussianMethod, dp_pix, pixel_gaussian, quantize
from ..leakage import encode_images
from .common import _fmt, _seed_for
from .data import EvaluationData, _counterfactual_pairs, _opposite_pairs

logger = logging.getLogger(__name__)

_SIDE_CHANNEL_NOTE = (
    "the released latent at full float precision, after the clamp to +-C: the residual, recomputed "
    "from each neighbour's latent, differs by float rounding, which an exact threshold can read "
    "at the clamp's point masses (a floating-point side channel, outside the guarantee's model, "
    "like the sampler's; it does not reach the 8-bit decoded image, audited above). Publish "
    "images, or latents snapped to a grid, not raw float latents.")
_RESIDUAL_NOTE = (
    "the pair's residuals differ deterministically and are not noised with scope='attributes': "
    "a projection on the residual difference separates them up to the trials' resolution "
    "(max_certifiable_epsilon). This is leakage around the mechanism, outside its relation.")


def _strongest(results):
    best = None
    for res in results:
        if best is None or res.epsilon_lower_bound > best.epsilon_lower_bound:
            best = res
    return best


def _audit_dpdiffusion_formal(pipe, z0s, z1s, *, protected, num_trials, decoded_trials, num_inference_steps, s,
                              kw) -> dict:
    """(a) attribute-neighbours in the latent: covered by the claim."""
    dirs = pipe.attribute_directions
    entry: dict = {}
    za, zb = audit_lib.formal_neighbours(pipe, z0s[0], attributes=protected)
    entry["formal_worst_case_latent"] = audit_lib.audit_latent_release(
        pipe, za, zb, num_trials=num_trials, seed=s, **kw).to_dict()
    cfs = []
    for i in range(len(z0s)):
        a1, _ = dirs.project(z1s[i:i + 1], attributes=protected)
        za, zb = audit_lib.formal_neighbours(pipe, z0s[i], attributes=protected, target=a1[0])
        cfs.append(audit_lib.audit_latent_release(pipe, za, zb, num_trials=num_trials, seed=s + i, **kw))
    entry["formal_counterfactual_coordinates_latent"] = _strongest(cfs).to_dict()
    if decoded_trials:
        za, zb = audit_lib.formal_neighbours(pipe, z0s[0], attributes=protected)
        dkw, note = _decoded_claim(kw, decoded_trials)
        entry["formal_worst_case_decoded"] = {**audit_lib.audit_decoded_release(
            pipe, za, zb, num_trials=decoded_trials, num_inference_steps=num_inference_steps, seed=s, **dkw).to_dict(),
            **note}
    for key in list(entry):
        entry[key]["covered_by_claim"] = True
    return entry


def _audit_dpdiffusion_uncovered(pipe, z0s, z1s, *, protected, num_trials, decoded_trials, num_inference_steps, s,
                                 kw) -> dict:
    """The float side channel of the clamped latent and (b) real image pairs: outside the claim."""
    dirs = pipe.attribute_directions
    entry: dict = {}
    za, zb = audit_lib.formal_neighbours(pipe, z0s[0], attributes=protected)
    entry["float_side_channel_clamped_latent"] = {**audit_lib.audit_latent_release(
        pipe, za, zb, num_trials=num_trials, seed=s + 400, post_processing="clip", **kw).to_dict(),
        "covered_by_claim": False, "note": _SIDE_CHANNEL_NOTE}
    lrs, projs, shift = [], [], []
    for i in range(len(z0s)):
        lrs.append(audit_lib.audit_latent_release(pipe, z0s[i:i + 1], z1s[i:i + 1], num_trials=num_trials,
                                                  seed=s + 100 + i, **kw))
        projs.append(audit_lib.audit_latent_release(pipe, z0s[i:i + 1], z1s[i:i + 1], num_trials=num_trials,
                                                    seed=s + 200 + i, statistic="residual", **kw))
        a0, r0 = dirs.project(z0s[i:i + 1], attributes=protected)
        a1, r1 = dirs.project(z1s[i:i + 1], attributes=protected)
        shift.append(float((r1 - r0).norm() / (z1s[i] - z0s[i]).norm().clamp_min(1e-12)))
    entry["image_pairs_protected_coordinates_latent"] = {**_strongest(lrs).to_dict(), "covered_by_claim": False}
    entry["image_pairs_full_latent"] = {**_strongest(projs).to_dict(), "covered_by_claim": False,
                                        "residual_share_of_latent_difference": float(np.mean(shift)),
                                        "note": _RESIDUAL_NOTE}
    if decoded_trials:
        dkw, note = _decoded_claim(kw, decoded_trials)
        entry["image_pairs_full_decoded"] = {**audit_lib.audit_decoded_release(
            pipe, z0s[:1], z1s[:1], num_trials=decoded_trials, num_inference_steps=num_inference_steps,
            seed=s + 300, statistic="residual", **dkw).to_dict(), "covered_by_claim": False, **note}
    return entry


def _audit_latent_scope(pipe, z0s, z1s, *, num_trials, s, kw) -> dict:
    """``scope="latent"`` on image pairs (its relation: any two images), the farthest pair included."""
    pairs = [(z0s[i:i + 1], z1s[i:i + 1]) for i in range(len(z0s))]
    far = torch.cdist(z0s, z1s)
    i, j = divmod(int(far.argmax()), far.shape[1])
    pairs.append((z0s[i:i + 1], z1s[j:j + 1]))
    best = _strongest(audit_lib.audit_latent_release(pipe, za, zb, scope="latent", num_trials=num_trials,
                                                     seed=s + k, **kw) for k, (za, zb) in enumerate(pairs))
    return {"image_pairs_latent": {**best.to_dict(), "covered_by_claim": True}}


def _decoded_claim(kw: dict, decoded_trials: int) -> tuple[dict, dict]:
    """Decoding is expensive, so the decoded audits have few trials: above the largest claim those can refute
    (`largest_refutable_claim`), the decoded release is audited at that claim instead, and the row says so."""
    top = audit_lib.max_certifiable_epsilon(decoded_trials, delta=kw["delta"], alpha=kw["alpha"])
    claim = audit_lib.largest_refutable_claim(decoded_trials, delta=kw["delta"], alpha=kw["alpha"])
    if claim <= 0 or kw["epsilon"] <= claim:
        return kw, {}
    note = (f"{decoded_trials} decoded trials per world certify at most epsilon = {top:.2f}, too few to refute "
            f"epsilon = {_fmt(kw['epsilon'])}: the decoded release is audited at epsilon = {claim:g}, the largest "
            f"claim they can refute (a factor {audit_lib.REFUTATION_FACTOR:g}); the latent audits above cover "
            f"epsilon = {_fmt(kw['epsilon'])}")
    return {**kw, "epsilon": claim}, {"requested_epsilon": kw["epsilon"], "note": note}


def warn_unrefutable(epsilons: Sequence[float], *, delta: float, num_trials: int, decoded_trials: int,
                     alpha: float = 0.05) -> list[str]:
    """Log (and return) a warning for each configured audit whose trial count cannot certify twice its claim."""
    msgs = []
    finite = [e for e in epsilons if not math.isinf(e)]
    for label, n in (("audit_trials", num_trials), ("audit_decoded_trials", decoded_trials)):
        if not finite or not n:
            continue
        top = audit_lib.max_certifiable_epsilon(n, delta=delta, alpha=alpha) if n >= 4 else 0.0
        weak = [e for e in finite if top < audit_lib.REFUTATION_FACTOR * e]
        if not weak:
            continue
        needed = audit_lib.trials_needed(audit_lib.REFUTATION_FACTOR * max(weak), delta=delta, alpha=alpha)
        claim = audit_lib.largest_refutable_claim(n, delta=delta, alpha=alpha) if n >= 4 else 0.0
        what = (f"the decoded release is audited at epsilon = {claim:g}, the largest claim they can refute, instead"
                if label == "audit_decoded_trials" and claim > 0 else "those audits cannot fail")
        msgs.append(f"{label}={n} certifies at most epsilon = {top:.3g} (95 %), less than "
                    f"{audit_lib.REFUTATION_FACTOR:g} x the claims {[_fmt(e) for e in weak]}: {what} "
                    f"({needed} trials per world would refute epsilon = {_fmt(max(weak))})")
    for msg in msgs:
        logger.warning(msg)
    return msgs


def run_audits(pipe, data: EvaluationData, methods: dict, *, protected: list, epsilons: Sequence[float],
               delta: float, num_trials: int, decoded_trials: int, num_pairs: int, num_inference_steps: int,
               seed: int = 0, progress: bool = True) -> dict:
    """Audit every formal method at every epsilon in ``epsilons`` on its own neighbouring relation.

    Every latent and pixel audit runs ``num_trials`` trials per world, the decoded ones ``decoded_trials``; each
    row carries its resolution (``max_certifiable_epsilon``) and ``can_refute_claim``, and a configuration whose
    trials cannot certify twice a claim is logged as a warning (`warn_unrefutable`). Decoded audits above the
    largest claim their trials can refute run at that claim instead (``requested_epsilon`` and ``note`` say so).

    ``dpdiffusion`` is audited (a) on attribute-neighbours built in the latent (worst case at the clip bounds, and
    with the protected coordinates of counterfactual images), in the latent and through the decoder, and (b) on real
    counterfactual image pairs, which also differ in the residual: the guarantee does not cover (b).
    """
    from tqdm.auto import tqdm

    if data.test_params is not None:
        x0, x1 = _counterfactual_pairs(data, protected, num_pairs, pipe.image_size)
    else:
        x0, x1 = _opposite_pairs(data, protected, num_pairs)
    z0s, z1s = encode_images(pipe, x0), encode_images(pipe, x1)
    warn_unrefutable(epsilons, delta=delta, num_trials=num_trials, decoded_trials=decoded_trials)
    out: dict = {}
    finite = [e for e in epsilons if not math.isinf(e)]
    jobs = [(m, e) for m in methods if m in DP_METHODS for e in finite]
    for name, eps in tqdm(jobs, desc="audit", disable=not progress):
        kw = dict(attributes=protected, epsilon=eps, delta=delta, alpha=0.05)
        s = _seed_for("audit", name, eps, seed)
        sizes = dict(protected=protected, num_trials=num_trials, decoded_trials=decoded_trials,
                     num_inference_steps=num_inference_steps, s=s, kw=kw)
        if name == "dpdiffusion":
            entry = {**_audit_dpdiffusion_formal(pipe, z0s, z1s, **sizes),
                     **_audit_dpdiffusion_uncovered(pipe, z0s, z1s, **sizes)}
        elif name == "latent":
            entry = _audit_latent_scope(pipe, z0s, z1s, num_trials=num_trials, s=s, kw=kw)
        elif name in ("dp_pix", "dp_pix_attribute"):
            entry = {"m_neighbours": {**_audit_dp_pix(methods[name], data.test_images[0], eps, num_trials, s)
                                      .to_dict(), "covered_by_claim": True}}
        elif name == "pixel_gaussian":
            entry = {"l2_neighbours": {**_audit_pixel_gaussian(methods[name], x0[0], x1[0], eps, delta, num_trials,
                                                               s).to_dict(), "covered_by_claim": True}}
        else:
            entry = {}
        out.setdefault(name, {})[_fmt(eps)] = entry
    return out


def _audit_dp_pix(method: DPPixMethod, x: torch.Tensor, epsilon: float, num_trials: int, seed: int, *,
                  claimed_epsilon: float | None = None):
    """m = method.m pixels, filling cells in raster order, moved to the far end of [0, 255] in every channel (the
    largest move of the cell means the relation allows); the attack is the exact Laplace log-likelihood ratio on the
    released 8-bit means of the cells touched. The released image is audited, not the raw float output: with raw
    floats the statistic's flat tails vary in the last bits with the low bits of ``mu + noise``, which reveal ``mu``
    (the floating-point attack on the textbook Laplace sampler of Mironov 2012) and certify epsilon far above the
    claim; the 8-bit rounding of the release removes that channel. The claim audited is ``claimed_epsilon``
    (default ``epsilon``; a larger ``epsilon`` than claimed is a broken mechanism, the audit's positive control)."""
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

    claim = epsilon if claimed_epsilon is None else claimed_epsilon
    return audit_lib.audit_mechanism(mechanism, statistic, num_trials=num_trials, delta=0.0, claimed_epsilon=claim,
                                     seed=seed, batch_size=2048)


def _audit_pixel_gaussian(method: PixelGaussianMethod, x: torch.Tensor, x_cf: torch.Tensor, epsilon: float,
                          delta: float, num_trials: int, seed: int, *, claimed_epsilon: float | None = None):
    """x and x + t (x_cf - x) at L2 distance min(||x_cf - x||, Delta) (a valid image pair of the relation); the
    attack is the Gaussian likelihood ratio on the unclipped output (clipping is post-processing). The claim audited
    is ``claimed_epsilon`` (default ``epsilon``)."""
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
                                     claimed_epsilon=epsilon if claimed_epsilon is None else claimed_epsilon,
                                     seed=seed, batch_size=1024)
