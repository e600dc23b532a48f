"""Quality of a diffusion autoencoder (``dpdiffusion evaluate autoencoder`` / ``scripts/evaluate_default_model.py``).

Four figures on held-out SynthFaces (a seed the training never used):

* ``inversion_psnr_db``: DDIM inversion then deterministic decoding with the image's own latent, PSNR in dB
  (images in [0, 1]); the fidelity of ``stochastic_code="inverted"``.
* ``attribute_agreement``: decode from ``z`` alone with a *random* stochastic code (the formal-guarantee path) and
  ask an independent attribute classifier (a ResNet trained here on 16,000 other SynthFaces images, enlarged 2x)
  whether each attribute is the same on the original and the reconstruction. The judge's accuracy on the originals
  and on the reconstructions (against the ground truth) is reported next to the agreement.
* ``random_code_psnr_db``: PSNR of the same random-code decoding against the original: what a release at
  epsilon = inf looks like (``pipe(images, epsilon=inf)`` is exactly this decoding), i.e. how much of the image's
  look ``z`` carries.
* ``probe_accuracy``: accuracy of a logistic probe of each attribute on ``z`` (fitted on one half, tested on the
  other half of the held-out latents).

Random-code decoding uses the pipeline's own default guidance (``pipe._guidance(None, "random")``: none for the
DiffAE architecture) unless ``guidance_scale`` is given. ``decode_cpu_seconds_per_image_by_steps`` is the CPU time of
this process per image for one random-code decoding (CPU time rather than wall time: it does not count the time the
process waited for another one on a shared machine).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data.synthfaces import SYNTHFACES_ATTRIBUTES, make_synthfaces_arrays
from ..models.steps import DEFAULT_INVERSION_STEPS, DEFAULT_NUM_INFERENCE_STEPS
from ..models.diffae import ddim_decode, ddim_invert
from .probes import probe_accuracy


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two batches in [0, 1] ``(B, C, H, W)``."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def train_attribute_classifier(image_size: int, *, num_images: int = 16000, epochs: int = 6, seed: int = 777,
                               progress: bool = True):
    """The independent judge: a multi-label attribute classifier trained on SynthFaces of its own seed, on images
    enlarged as `dpdiffusion.evaluation.utility.default_enlarge` says (2x at 32 px) so that glasses and mouths
    survive the ResNet stem; returns (model, accuracy on 1,000 further images).

    Its accuracy bounds what agreement can show: two images with the same attribute are judged alike with
    probability about acc^2 + (1 - acc)^2 when its errors are independent (0.83 at the 0.91 of a 4,000-image judge
    on 32 px eyeglasses, 0.99 at 0.995).
    """
    from .utility import predict_labels
    from .utility import train_attribute_classifier as train_evaluation_classifier

    images, params = make_synthfaces_arrays(num_images + 1000, image_size=image_size, seed=seed)
    labels = torch.stack([torch.as_tensor(params[a], dtype=torch.float32) for a in SYNTHFACES_ATTRIBUTES], 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    model = train_evaluation_classifier(x[:num_images], labels[:num_images], names=list(SYNTHFACES_ATTRIBUTES),
                                        epochs=epochs, lr=3e-3, seed=seed, progress=progress)
    pred = predict_labels(model, x[num_images:]).bool()
    acc = (pred == (labels[num_images:] > 0.5)).double().mean(0)
    return model, dict(zip(SYNTHFACES_ATTRIBUTES, acc.tolist()))


def load_or_train_judge(path: str | None, image_size: int, *, progress: bool = True):
    """The judge of ``train_attribute_classifier``, loaded from ``path`` when it holds one (``save_pretrained`` plus
    ``judge_accuracy.json``) and trained and saved there otherwise; ``path=None`` trains without saving. Reusing one
    judge makes the figures of several models (or step counts) comparable and saves its training time."""
    import json
    from pathlib import Path

    record = Path(path) / "judge_accuracy.json" if path is not None else None
    if record is not None and record.is_file():
        from transformers import AutoModelForImageClassification

        saved = json.loads(record.read_text())
        if saved["image_size"] != image_size:
            raise ValueError(f"the judge at {path} was trained for {saved['image_size']} px inputs, not "
                             f"{image_size} px images")
        return AutoModelForImageClassification.from_pretrained(path).eval(), saved["accuracy"]
    model, acc = train_attribute_classifier(image_size, progress=progress)
    if record is not None:
        model.save_pretrained(path)
        record.write_text(json.dumps({"image_size": image_size, "accuracy": acc}, indent=2))
    return model, acc


def _extra_steps(agreement_steps: Sequence[int], num_inference_steps: int) -> list[int]:
    """The further DDIM step counts to judge, validated, without repeats or ``num_inference_steps`` itself."""
    extra = []
    for k in agreement_steps:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"agreement_steps must be integers >= 1, got agreement_steps={list(agreement_steps)}")
        if k != num_inference_steps and k not in extra:
            extra.append(k)
    return extra


TARGETS = {"inversion_psnr_db": 30.0, "random_code_psnr_db": 20.0, "attribute_agreement": 0.95,
           "probe_accuracy": 0.95}


@torch.no_grad()
def evaluate_autoencoder(pipe, *, num_images: int = 500, num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                         inversion_steps: int = DEFAULT_INVERSION_STEPS, seed: int = 12345,
                         batch_size: int = 100, progress: bool = True, guidance_scale: float | None = None,
                         classifier=None, agreement_steps: Sequence[int] = ()) -> dict:
    """Compute the figures above for ``pipe`` (a ``DPDiffusionPipeline``); returns a JSON-able dict.

    ``agreement_steps`` lists further DDIM step counts at which random-code decoding is judged too (same images,
    same stochastic codes), reported in the ``*_by_steps`` figures; the targets (``TARGETS``) are checked at
    ``num_inference_steps`` only. The inversion round trip (invert, then decode the inverted code) walks
    ``inversion_steps`` (default ``DEFAULT_INVERSION_STEPS``, what ``stochastic_code="inverted"`` uses by default).
    """
    if num_images < 20:
        raise ValueError(f"num_images must be >= 20, got num_images={num_images}")
    for name, value in (("num_inference_steps", num_inference_steps), ("inversion_steps", inversion_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
    extra = _extra_steps(agreement_steps, num_inference_steps)
    steps = sorted([num_inference_steps, *extra])
    started = time.monotonic()
    size = pipe.image_size
    images, params = make_synthfaces_arrays(num_images, image_size=size, seed=seed)
    names = [a for a in SYNTHFACES_ATTRIBUTES if a in params]
    labels = torch.stack([torch.as_tensor(params[a], dtype=torch.float32) for a in names], 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(seed)
    scale = pipe._guidance(guidance_scale, "random")
    center = pipe.encoder.condition(pipe.attribute_directions.center[None].to(pipe.device))
    zs, inv = [], []
    rnd = {k: [] for k in steps}
    cpu_seconds = dict.fromkeys(steps, 0.0)
    for i in tqdm(range(0, num_images, batch_size), desc="evaluate autoencoder", disable=not progress):
        xb = x[i:i + batch_size].to(pipe.device)
        z = pipe.encode_tensor(xb)
        cond = pipe.encoder.condition(z)
        x_t = ddim_invert(pipe.unet, pipe.scheduler, xb, cond, inversion_steps)
        inv.append(ddim_decode(pipe.unet, pipe.scheduler, x_t, cond, inversion_steps).cpu())
        noise = torch.randn(xb.shape, generator=g).to(pipe.device)
        for k in steps:
            t0 = time.process_time()
            rnd[k].append(ddim_decode(pipe.unet, pipe.scheduler, noise, cond, k, guidance_scale=scale,
                                      guidance_cond=center).cpu())
            cpu_seconds[k] += time.process_time() - t0
        zs.append(z.cpu())
    z, inv = torch.cat(zs), torch.cat(inv)
    rnd = {k: torch.cat(v) for k, v in rnd.items()}
    to01 = lambda t: ((t + 1) / 2).clamp(0, 1)  # noqa: E731
    psnrs = psnr(to01(inv), to01(x))
    rnd_psnr = {str(k): float(psnr(to01(v), to01(x)).mean()) for k, v in rnd.items()}

    from .utility import predict_labels

    with torch.enable_grad():  # this function runs under no_grad; the independent classifier trains here
        clf, clf_acc = classifier or train_attribute_classifier(size, progress=progress)
    pred_orig = predict_labels(clf, to01(x)).bool()
    preds = {k: predict_labels(clf, to01(v)).bool() for k, v in rnd.items()}

    def agreement_with(pred: torch.Tensor) -> dict:  # per attribute, the judge's columns
        return dict(zip(SYNTHFACES_ATTRIBUTES, (pred_orig == pred).double().mean(0).tolist()))

    by_steps = {str(k): agreement_with(p) for k, p in preds.items()}
    agreement = by_steps[str(num_inference_steps)]
    truth = labels > 0.5
    judged_orig = (pred_orig == truth).double().mean(0).tolist()
    judged_rec = (preds[num_inference_steps] == truth).double().mean(0).tolist()
    half = num_images // 2
    probes = {a: probe_accuracy(z[:half], labels[:half, j], z[half:], labels[half:, j]) for j, a in enumerate(names)}
    figures = {"inversion_psnr_db": float(psnrs.mean()), "random_code_psnr_db": rnd_psnr[str(num_inference_steps)],
               "attribute_agreement": min(agreement.values()), "probe_accuracy": min(probes.values())}
    return {
        "num_images": num_images,
        "num_inference_steps": num_inference_steps,
        "inversion_steps": inversion_steps,
        "guidance_scale": scale,
        "image_size": size,
        "unet_class": type(pipe.unet).__name__,
        "inversion_psnr_db": figures["inversion_psnr_db"],
        "inversion_psnr_db_min": float(psnrs.min()),
        "random_code_psnr_db": figures["random_code_psnr_db"],
        "random_code_psnr_db_by_steps": rnd_psnr,
        "attribute_agreement": agreement,
        "attribute_agreement_by_steps": by_steps,
        "decode_cpu_seconds_per_image_by_steps": {str(k): cpu_seconds[k] / num_images for k in steps},
        "independent_classifier_accuracy": clf_acc,
        "judge_accuracy_on_originals": dict(zip(names, judged_orig)),
        "judge_accuracy_on_reconstructions": dict(zip(names, judged_rec)),
        "probe_accuracy": probes,
        "seconds": round(time.monotonic() - started, 1),
        "targets": dict(TARGETS),
        "targets_met": {k: bool(figures[k] >= v) for k, v in TARGETS.items()},
        "all_targets_met": bool(all(figures[k] >= v for k, v in TARGETS.items())
                                and not math.isnan(figures["inversion_psnr_db"])),
    }
