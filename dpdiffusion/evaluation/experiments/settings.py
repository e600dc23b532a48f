"""The settings of the paper sweep: the clean reference, the methods, and every metric of one (method, epsilon).

Decoding is the expensive part, so one set of protected images per setting feeds every metric, and the decoded
images of the diffusion settings are kept on disk (``out/.protected-cache``, 8-bit) so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..baselines import (BlurMethod, DiffusionMethod, DPPixMethod, PixelateMethod, PixelGaussianMethod,
                         counterfactual_l2_sensitivity, counterfactual_pixel_count, match_obfuscation)
from ..identity import identity_leakage
from ..leakage import dp_accuracy_bound, encode_images, latent_probe_leakage, residual_leakage
from ..metrics import load_metric
from ..quality import classifier_features, feature_frechet_distance, psnr, ssim
from ..utility import attribute_accuracies, predict_labels, train_attribute_classifier
from .common import _fingerprint, _fmt, _jsonable, _seed_for, _threads
from .data import EvaluationData

FORMAL_ORDER = ("dpdiffusion", "latent", "dp_pix", "dp_pix_attribute", "pixel_gaussian")


def _labels(values) -> np.ndarray:
    return np.asarray(values).astype(np.int64)


def _leakage(predictions, labels, **kwargs) -> dict:
    """An attacker's leakage through the ``attribute_leakage`` evaluate module (`leakage_accuracy`)."""
    return load_metric("attribute_leakage").compute(predictions=_labels(predictions), references=_labels(labels),
                                                    **kwargs)


def _utility(predictions, clean_predictions, labels, names, attributes) -> dict:
    """The utility report through the ``utility_ratio`` evaluate module (`utility_report`)."""
    return load_metric("utility_ratio").compute(predictions=_labels(predictions), references=_labels(labels),
                                                clean_predictions=_labels(clean_predictions), names=list(names),
                                                attributes=list(attributes))


@dataclass
class _Sweep:
    """What every setting of one sweep shares."""

    pipe: object
    data: EvaluationData
    out: Path
    protected: list
    unprotected: list
    delta: float
    steps: int
    epochs: int
    seed: int
    utility_augment: bool
    progress: bool
    dataset_tag: str
    clean: dict | None = None
    feature_fn: Callable | None = None


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
    resnet = {a: _leakage(pred_prot[:, names.index(a)], data.test_labels[:, names.index(a)], epsilon=eps_bound,
                          delta=delta) for a in protected}
    z_tr, z_te = encode_images(pipe, prot_train), encode_images(pipe, prot_test)
    probe = latent_probe_leakage(z_tr, data.train_labels[:, [names.index(a) for a in protected]], z_te,
                                 data.test_labels[:, [names.index(a) for a in protected]], names=protected,
                                 epsilon=eps_bound, delta=delta)
    best = {a: max([resnet[a]] + ([probe[a]] if a in probe else []), key=lambda d: d["accuracy"]) for a in protected}
    # utility: the data user's classifier (the attacker itself without augmentation) on clean test images
    acc = attribute_accuracies(pred_clean, data.test_labels, names)
    acc_prot = attribute_accuracies(pred_prot, data.test_labels, names)
    util = _utility(pred_clean, clean["utility_predictions"], data.test_labels, names, unprotected) \
        if unprotected else None
    # the same figure for a data user who trains on the released images as they are (the attacker's model)
    util_plain = util if util_model is model or not unprotected else _utility(
        predict_labels(model, data.test_images), clean["predictions"], data.test_labels, names, unprotected)
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


def _clean_reference(sw: _Sweep, log) -> tuple[dict, dict]:
    """The clean classifier, its features and the clean latents (``clean``), and their summary for the report."""
    data, protected, unprotected = sw.data, sw.protected, sw.unprotected
    t0 = time.monotonic()
    with _threads(1):
        clean_model = train_attribute_classifier(data.train_images, data.train_labels, names=data.names,
                                                 epochs=sw.epochs, seed=sw.seed, progress=sw.progress)
    feature_fn = (lambda imgs: classifier_features(clean_model, imgs * 2 - 1))  # noqa: E731
    pred = predict_labels(clean_model, data.test_images)
    clean = {"accuracy": attribute_accuracies(pred, data.test_labels, data.names), "predictions": pred,
             "test_features": feature_fn(data.test_images),
             "test_latents": encode_images(sw.pipe, data.test_images)}
    clean["utility_accuracy"], clean["utility_predictions"] = clean["accuracy"], pred
    if sw.utility_augment and unprotected:  # the reference of the utility ratio uses the utility classifier's recipe
        with _threads(1):
            clean_util = train_attribute_classifier(data.train_images, data.train_labels, names=data.names,
                                                    epochs=sw.epochs, seed=sw.seed, progress=sw.progress, augment=True)
        clean["utility_predictions"] = predict_labels(clean_util, data.test_images)
        clean["utility_accuracy"] = attribute_accuracies(clean["utility_predictions"], data.test_labels, data.names)
    clean_leak = {a: _leakage(pred[:, data.names.index(a)], data.test_labels[:, data.names.index(a)])
                  for a in protected}
    summary = {
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
    sw.clean, sw.feature_fn = clean, feature_fn
    return clean, summary


def _residual_leakage(sw: _Sweep, log) -> dict:
    data = sw.data
    resid = residual_leakage(sw.pipe, data.train_images, data.train_labels, data.test_images, data.test_labels,
                             attributes=sw.protected, names=data.names)
    log(f"clean reference: accuracy {json.dumps({k: round(v, 3) for k, v in sw.clean['accuracy'].items()})}; "
        f"residual probes {json.dumps(_jsonable(resid))}")
    return resid


def _build_methods(pipe, methods: list, protected: list, *, delta: float, steps: int, batch_size: int,
                   dp_pix_cell_size: int, dp_pix_m: int, pixel_l2_sensitivity: float | None,
                   post_processing: str | None = None) -> dict:
    """The formal methods of the sweep, by name (blur and pixelate are built per epsilon, matched in quality)."""
    from ...data.synthfaces import SYNTHFACES_ATTRIBUTES

    size = pipe.image_size
    cf_attrs = [a for a in protected if a in SYNTHFACES_ATTRIBUTES] or ["dark_skin", "long_hair"]
    objs: dict = {}
    if "dpdiffusion" in methods:
        objs["dpdiffusion"] = DiffusionMethod(pipe, name="dpdiffusion", scope="attributes", attributes=protected,
                                              delta=delta, num_inference_steps=steps, batch_size=batch_size,
                                              post_processing=post_processing)
    if "latent" in methods:
        objs["latent"] = DiffusionMethod(pipe, name="latent", scope="latent", attributes=protected, delta=delta,
                                         num_inference_steps=steps, batch_size=batch_size,
                                         post_processing=post_processing)
    if "dp_pix" in methods:
        objs["dp_pix"] = DPPixMethod(name="dp_pix", neighbouring_relation=(
            f"m-neighbours: images differing in at most m={dp_pix_m} pixels (Fan 2018)"), cell_size=dp_pix_cell_size,
            m=dp_pix_m)
    if "dp_pix_attribute" in methods:
        m_attr = counterfactual_pixel_count(cf_attrs, image_size=size)
        objs["dp_pix_attribute"] = DPPixMethod(name="dp_pix_attribute", neighbouring_relation=(
            f"m-neighbours with m={m_attr} pixels: 95% of SynthFaces counterfactual flips of {cf_attrs} change at "
            f"most that many (Fan 2018's relation at attribute level)"), cell_size=dp_pix_cell_size, m=m_attr)
    if "pixel_gaussian" in methods:
        if pixel_l2_sensitivity is None:
            pixel_l2_sensitivity = counterfactual_l2_sensitivity(cf_attrs, image_size=size)
        objs["pixel_gaussian"] = PixelGaussianMethod(name="pixel_gaussian", neighbouring_relation=(
            f"images at L2 distance <= {pixel_l2_sensitivity:.3f} (pixels in [0, 1]; the 95% quantile of SynthFaces "
            f"counterfactual distances with {protected} flipped)"), l2_sensitivity=pixel_l2_sensitivity, delta=delta)
    return objs


def _evaluate(sw: _Sweep, prot: torch.Tensor, epsilon: float | None) -> dict:
    ntr = len(sw.data.train_images)
    res = _evaluate_setting(sw.pipe, sw.data, prot[:ntr], prot[ntr:], protected=sw.protected,
                            unprotected=sw.unprotected, epsilon=epsilon, delta=sw.delta, clean=sw.clean,
                            epochs=sw.epochs, seed=sw.seed, feature_fn=sw.feature_fn,
                            utility_augment=sw.utility_augment)
    res["_samples"] = prot[ntr:ntr + 8]
    return res


def _protect_cached(sw: _Sweep, method, key: tuple, eps: float, all_images: torch.Tensor) -> torch.Tensor:
    """Protected images of one setting; the diffusion ones are read from / written to the on-disk cache."""
    g = torch.Generator().manual_seed(_seed_for(key[0] if key[0] != "diffusion" else "diffusion", eps, sw.seed))
    stored = None
    if key[0] in ("dpdiffusion", "latent", "diffusion"):  # decoding is the expensive part: keep it on disk
        stored = sw.out / ".protected-cache" / (
            f"{key[0]}_{_fmt(eps)}_{_fingerprint(sw.pipe)}_{sw.dataset_tag}_{len(sw.data.train_images)}_"
            f"{len(sw.data.test_images)}_{sw.steps}_{sw.delta:g}_{sw.seed}.pt")
    if stored is not None and stored.exists():
        return torch.load(stored).float() / 255  # (N, 3, H, W) uint8 -> [0, 1]
    prot = method.protect(all_images, epsilon=eps, generator=g, progress=sw.progress)
    if stored is not None:
        stored.parent.mkdir(exist_ok=True)
        torch.save(torch.round(prot * 255).to(torch.uint8), stored.with_suffix(".tmp"))
        stored.with_suffix(".tmp").replace(stored)
    return prot


def _formal_rows(sw: _Sweep, objs: dict, epsilons: list, all_images, cache: dict, samples: dict, bar) -> list:
    """One row per formal method and epsilon (epsilon = inf of both diffusion scopes is one release: run once)."""
    rows = []
    for name, eps in [(m, e) for m in FORMAL_ORDER if m in objs for e in epsilons]:
        t0 = time.monotonic()
        method = objs[name]
        key = ("diffusion", "inf") if name in ("dpdiffusion", "latent") and math.isinf(eps) else (name, eps)
        if key not in cache:
            cache[key] = _evaluate(sw, _protect_cached(sw, method, key, eps, all_images), eps)
        res = dict(cache[key])
        samples[(name, eps)] = res.pop("_samples")
        row = {"method": name, "epsilon": eps, "delta": method.describe(eps).get("delta", sw.delta),
               "description": method.describe(eps), **res,
               "leakage_bound": dp_accuracy_bound(eps, delta=sw.delta), "seconds": round(time.monotonic() - t0, 1)}
        rows.append(row)
        bar.update(1)
        bar.set_postfix_str(f"{name} eps={_fmt(eps)} leak={row['leakage_accuracy']:.3f}")
    return rows


def _obfuscation_rows(sw: _Sweep, obfus: list, epsilons: list, rows: list, match_metric: str, all_images,
                      cache: dict, samples: dict, bar) -> tuple[list, str, list]:
    """Blur and pixelate at the image quality of dpdiffusion at each epsilon (FD by default: see match_obfuscation).

    Returns the rows, the matched quality key and the settings that no strength matches (`match_obfuscation`: the
    nearest leaves the images unchanged), which get no row: they would be the clean images under the method's name.
    """
    data, clean = sw.data, sw.clean
    quality_key = {"fd": "fd_synthfaces_resnet", "psnr": "psnr_db"}[match_metric]
    ours = {r["epsilon"]: r["quality"][quality_key] for r in rows if r["method"] == "dpdiffusion"}
    out, unmatched = [], []
    for name in obfus:
        for eps in epsilons:
            t0 = time.monotonic()
            target = ours.get(eps)
            if target is None:
                param, achieved = (1.5, None) if name == "blur" else (4, None)
            else:  # FD: the protocol of the table's FD column, test images vs clean test features
                match = match_obfuscation(data.test_images, target, name, metric=match_metric,
                                          feature_fn=sw.feature_fn if match_metric == "fd" else None,
                                          reference_features=clean["test_features"] if match_metric == "fd" else None)
                if not match.matched:
                    unmatched.append({"method": name, "matched_to_epsilon": eps, "matched_metric": quality_key,
                                      "matched_target": target, "nearest_parameter": match.nearest_parameter,
                                      "nearest_achieved": match.achieved, "reason": match.reason})
                    bar.update(1)
                    continue
                param, achieved = match.parameter, match.achieved
            cls = BlurMethod if name == "blur" else PixelateMethod
            kwargs = {"sigma": param} if name == "blur" else {"cell_size": int(param)}
            method = cls(name=name, neighbouring_relation="none (no formal guarantee)", formal=False,
                         parameters={**kwargs, "matched_metric": quality_key, "matched_target": target,
                                     "matched_achieved": achieved},
                         **kwargs)
            key = (name, param)
            if key not in cache:
                cache[key] = _evaluate(sw, method.protect(all_images), None)
            res = dict(cache[key])
            samples[(name, eps)] = res.pop("_samples")
            out.append({"method": name, "epsilon": None, "matched_to_epsilon": eps, "delta": None,
                        "description": method.describe(math.inf), **res, "leakage_bound": None,
                        "seconds": round(time.monotonic() - t0, 1)})
            bar.update(1)
    return out, quality_key, unmatched
