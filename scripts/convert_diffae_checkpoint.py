"""Convert the official Diffusion Autoencoder checkpoints (``phizaz/diffae``) into a ``DPDiffusionPipeline`` folder.

    python scripts/convert_diffae_checkpoint.py --checkpoint checkpoints/ffhq256_autoenc/last.ckpt \
        --latent-stats checkpoints/ffhq256_autoenc/latent.pkl \
        --classifier checkpoints/ffhq256_autoenc_cls/last.ckpt --output ffhq256-dp

The folder holds ``model_index.json`` (``DiffAEUNet2DModel``, ``DiffAESemanticEncoder``, ``DDIMScheduler``,
``AttributeDirections``), safetensors weights and a model card (``README.md``: source, licence, what was converted,
assumptions, the clip quantile, the training domain). Load it with ``DPDiffusionPipeline.from_pretrained(OUTPUT)``.
The pipeline declares what the checkpoint was trained on (``pipe.training_domain``: FFHQ, CelebA-HQ, ... at its
resolution; ``--domain``, by default read from the checkpoint), so photos of real people are not refused with it.

The official files are PyTorch pickles; they are read with ``torch.load(weights_only=True)`` (tensors and plain
containers only, no code execution). Should a file hold other objects, ``--allow-pickle`` loads it fully: only for
files you trust (unpickling can run code).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

logger = logging.getLogger("convert_diffae_checkpoint")

CARD = """---
library_name: dpdiffusion
license: mit
tags: [diffusion-autoencoder, differential-privacy, faces, dpdiffusion]
base_model_source: https://github.com/phizaz/diffae
converted_weights: ema_model
clip_quantile: {clip_quantile}
attributes: {attributes}
training_domain: {training_domain}
---

# {name}: official Diffusion Autoencoder weights for `DPDiffusionPipeline`

Converted from the official checkpoints of *Diffusion Autoencoders: Toward a Meaningful and Decodable
Representation* (Preechakul et al., CVPR 2022; code and weights: https://github.com/phizaz/diffae, MIT licence,
Copyright (c) 2021 VISTEC). The weights keep the original licence; check the terms of the training data (FFHQ:
CC BY-NC-SA 4.0 for the dataset; CelebA-HQ attributes: non-commercial research) before any use.

## Training domain
{domain_text}

## What was converted
- `unet` (`DiffAEUNet2DModel`) and `encoder` (`DiffAESemanticEncoder`): the **EMA** weights (`ema_model.*`) of
  `{checkpoint}`, as the official renderer uses them; the non-EMA weights (`model.*`) were ignored.{latent_net}
- architecture from its `hyper_parameters`: `{arch}`.
- enum-valued fields are not stored in the checkpoint; assumed official defaults: `{enums}`.
- `scheduler`: `DDIMScheduler` with the official linear betas (T = {T}); decoding and inversion run the official
  respaced DDIM sampler (`dpdiffusion.models.diffae_sampler`: `space_timesteps(T, "ddimN")`, eta 0, x0 clipped to
  [-1, 1]; `num_inference_steps` must be a step count the official grid allows, e.g. a divisor of T).
  The official code renders with fp16 autocast on CUDA; this pipeline computes in the dtype it is loaded in.
- `attribute_directions`: {directions}
- public centre and clip bounds from `{latent_stats}` (`conds`: the semantic latents of {n_conds} training images):
  centre = `conds_mean`, clip bound C_i = the {clip_quantile} quantile of |a_i| over `conds` (a_i: coordinate i of
  the protected subset's basis), fixed at conversion time and public; never computed from an image being protected.

## Privacy: what is protected and what is not
The mechanism is unchanged: the released attribute coordinates are clipped to [-C_i, C_i] and noised by the calibrated
Gaussian mechanism (`DPDiffusionPipeline`); the guarantee is for attribute-neighbours in this model's latent space
(latents that differ only inside the span of the protected attributes' raw directions, orthonormalised in the order
named at release time; every release's report states that basis).
- Protected: the subspace spanned by the directions of the attributes named at release time, each of them wholly
  (with `scope="latent"`, the whole latent).
- Not protected: the residual (identity, pose, expression, ...), non-linear read-outs of an attribute from it, and,
  with `stochastic_code="inverted"`, everything the inverted code carries (`guarantee="heuristic"`).
{subset_note}
"""

SUBSET_NOTE = (
    "Directions are the official classifier's logit directions in z-space, stored as they are (`raw_directions`). "
    "Every call orthonormalises the raw directions of the attributes it protects, in the order it names them (QR), "
    "so any subset, in any order, is protected wholly: the official logits of the protected set are an invertible "
    "affine function of the protected coordinates (`logit - b = diag(||w'||) R^T a`) and do not depend on the "
    "residual; an attribute protected alone has the coordinate `(logit - b) / ||w'||`. The clip bounds and prior of "
    "each subset's basis are recomputed from the training latents' raw coordinates stored with the directions "
    "({n_sample} rows of `conds`, public, fixed at conversion time).")


def _load(path: Path, allow_pickle: bool = False) -> dict:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds objects other than tensors and plain containers ({err}); pass "
                         f"--allow-pickle (allow_pickle=True) only if you trust the file") from None


def convert(checkpoint: Path, latent_stats: Path, output: Path, *, classifier: Path | None = None,
            attributes: list[str] | None = None, clip_quantile: float = 0.95, name: str | None = None,
            allow_pickle: bool = False, fit_sample_size: int | None = None, domain: str = "auto") -> Path:
    """Convert and save; returns ``output``. See the module docstring.

    ``domain``: the training set the checkpoint was trained on (a key of
    ``dpdiffusion.models.training_domain.OFFICIAL_DIFFAE_DOMAINS``: ``ffhq``, ``celeba-hq``, ...), declared in the
    pipeline's ``model_index.json`` and card at the checkpoint's resolution; ``"auto"`` reads it from the
    checkpoint's ``data_name`` / ``name`` (``ffhqlmdb256`` / ``ffhq256_autoenc``: FFHQ) and declares it ``unknown``,
    with a warning, when they name no known set."""
    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.models.training_domain import (OFFICIAL_DIFFAE_DOMAINS, TrainingDomain, official_diffae_domain,
                                                    official_domain_key)
    from dpdiffusion.models.diffae_conversion import (ASSUMED_ENUM_DEFAULTS, CELEBA_HQ_ATTRIBUTES,
                                                      attribute_directions_from_classifier,
                                                      attribute_directions_from_latents,
                                                      configs_from_hyper_parameters, convert_models)

    if domain != "auto" and domain not in OFFICIAL_DIFFAE_DOMAINS:  # before reading anything
        raise ValueError(f"--domain must be 'auto' or one of {sorted(OFFICIAL_DIFFAE_DOMAINS)}, got {domain!r}")
    ckpt = _load(checkpoint, allow_pickle)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"--checkpoint must be an official Lightning checkpoint with 'state_dict' and "
                         f"'hyper_parameters', got keys {sorted(ckpt)} in {checkpoint}")
    hparams = dict(ckpt["hyper_parameters"])
    unet, encoder, scheduler = convert_models(ckpt["state_dict"], hparams)
    key = official_domain_key(hparams) if domain == "auto" else domain
    if key is None:
        logger.warning("the checkpoint's data_name=%r and name=%r name no known training set; the pipeline declares "
                       "its training domain 'unknown' (pass --domain %s)", hparams.get("data_name"),
                       hparams.get("name"), "|".join(sorted(OFFICIAL_DIFFAE_DOMAINS)))
    trained_on = (official_diffae_domain(key, unet.config.sample_size) if key is not None
                  else TrainingDomain.from_config(None))
    stats = _load(latent_stats, allow_pickle)
    missing = [k for k in ("conds", "conds_mean", "conds_std") if k not in stats]
    if missing:
        raise ValueError(f"--latent-stats must hold conds, conds_mean and conds_std, missing {missing}")
    conds = stats["conds"].float()
    if classifier is not None:
        cls_sd = _load(classifier, allow_pickle)
        cls_sd = cls_sd.get("state_dict", cls_sd)
        if "ema_classifier.weight" not in cls_sd:
            raise ValueError(f"--classifier must hold ema_classifier.weight/bias, got keys {sorted(cls_sd)[:8]}")
        mean = cls_sd.get("conds_mean", stats["conds_mean"]).reshape(-1)
        std = cls_sd.get("conds_std", stats["conds_std"]).reshape(-1)
        if not (torch.allclose(mean, stats["conds_mean"].reshape(-1)) and
                torch.allclose(std, stats["conds_std"].reshape(-1))):
            logger.warning("the classifier's conds_mean/conds_std differ from --latent-stats; using the classifier's")
        dirs = attribute_directions_from_classifier(
            cls_sd["ema_classifier.weight"], cls_sd["ema_classifier.bias"], mean, std, conds,
            attribute_names=CELEBA_HQ_ATTRIBUTES, attribute_order=attributes, clip_quantile=clip_quantile,
            fit_sample_size=fit_sample_size)
        directions = (f"{len(dirs.names)} CelebA-HQ attributes of the official linear classifier `{classifier}` "
                      f"(`ema_classifier` over latents normalised by `conds_mean`/`conds_std`), names and order as "
                      f"stored in `attributes`.")
        subset_note = SUBSET_NOTE.format(n_sample=dirs.config.fit_sample_size)
    else:
        if attributes:
            raise ValueError("--attributes needs --classifier")
        if fit_sample_size is not None:
            raise ValueError("--fit-sample-size needs --classifier")
        dirs = attribute_directions_from_latents(conds, stats["conds_mean"], clip_quantile=clip_quantile)
        directions = "no classifier given: one placeholder direction (`pc_1`, the first principal axis of `conds`)."
        subset_note = ""
    pipe = DPDiffusionPipeline(unet=unet, encoder=encoder, scheduler=scheduler, attribute_directions=dirs,
                               training_domain=trained_on if trained_on.known else None)
    output.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(output, safe_serialization=True)
    unet_cfg, enc_cfg, _ = configs_from_hyper_parameters(hparams)
    arch_keys = ("img_size", "net_ch", "net_ch_mult", "net_attn", "net_beatgans_attn_head",
                 "net_beatgans_embed_channels", "style_ch", "net_enc_channel_mult", "net_enc_pool",
                 "net_num_res_blocks", "net_enc_num_res_blocks", "net_beatgans_resnet_two_cond",
                 "net_resblock_updown", "T", "beta_scheduler")
    card = CARD.format(
        name=name or hparams.get("name") or output.name, clip_quantile=clip_quantile,
        attributes=json.dumps(list(dirs.names)), checkpoint=checkpoint.name, latent_stats=latent_stats.name,
        arch=json.dumps({k: hparams.get(k) for k in arch_keys if k in hparams}),
        enums=json.dumps(ASSUMED_ENUM_DEFAULTS),
        T=scheduler.config.num_train_timesteps, directions=directions, n_conds=conds.shape[0], subset_note=subset_note,
        training_domain=json.dumps(trained_on.to_dict() if trained_on.known else None),
        domain_text=(f"**{trained_on.summary()}** (`pipe.training_domain`): {trained_on.description}"
                     if trained_on.known else "Not declared: the checkpoint names no known training set (convert it "
                     "again with `--domain`); `pipe.training_domain.name` is `unknown`."),
        latent_net=(" The latent DPM (`latent_net.*`) was not converted."
                    if any(k.startswith("ema_model.latent_net.") for k in ckpt["state_dict"]) else ""))
    (output / "README.md").write_text(card)
    (output / "conversion.json").write_text(json.dumps({
        "source": "https://github.com/phizaz/diffae", "checkpoint": checkpoint.name, "latent_stats": latent_stats.name,
        "classifier": classifier.name if classifier else None, "weights": "ema_model", "clip_quantile": clip_quantile,
        "attributes": list(dirs.names), "assumed_enum_defaults": ASSUMED_ENUM_DEFAULTS, "unet": unet_cfg,
        "training_domain": trained_on.to_dict() if trained_on.known else None,
        "encoder": enc_cfg}, indent=1, default=list))
    return output


def main(argv=None) -> int:
    from dpdiffusion.models.training_domain import OFFICIAL_DIFFAE_DOMAINS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="official last.ckpt (Lightning)")
    parser.add_argument("--latent-stats", type=Path, required=True,
                        help="official latent.ckpt / latent.pkl: conds, conds_mean, conds_std of the training set")
    parser.add_argument("--classifier", type=Path, default=None,
                        help="official *_autoenc_cls checkpoint (ema_classifier over normalised latents)")
    parser.add_argument("--attributes", default=None,
                        help="comma-separated CelebA-HQ names to keep, in this stored order; default: all 40 in the "
                             "official order (any subset of them can be protected at release time, in any order)")
    parser.add_argument("--clip-quantile", type=float, default=0.95,
                        help="quantile of |a_i| over the training latents used as the public clip bound (0, 1]")
    parser.add_argument("--fit-sample-size", type=int, default=None,
                        help="rows of the training latents whose raw attribute coordinates are stored for the clip "
                             "bounds and prior of every protected subset (default: all; evenly spaced otherwise)")
    parser.add_argument("--domain", default="auto",
                        choices=["auto", *OFFICIAL_DIFFAE_DOMAINS],
                        help="the checkpoint's training set, declared in the pipeline (pipe.training_domain) and its "
                             "card; auto (default): from the checkpoint's data_name/name (ffhq256_autoenc: ffhq)")
    parser.add_argument("--output", type=Path, required=True, help="pipeline folder to write")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load the official files with full unpickling (only for files you trust)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    attributes = [a.strip() for a in args.attributes.split(",")] if args.attributes else None
    try:
        out = convert(args.checkpoint, args.latent_stats, args.output, classifier=args.classifier,
                      attributes=attributes, clip_quantile=args.clip_quantile, allow_pickle=args.allow_pickle,
                      fit_sample_size=args.fit_sample_size, domain=args.domain)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
