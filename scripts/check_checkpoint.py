#!/usr/bin/env python
"""Quick figures of a training checkpoint, without fitting directions: does the decoder read z?

    python scripts/check_checkpoint.py --output_dir runs/diffae-default [--checkpoint PATH] [--num-images 32]

Prints JSON: the random-code PSNR (decoding from z alone, what epsilon = inf releases) at each of ``--steps``, the
inversion round trip at the last of them, and, at each timestep of ``--timesteps``, the network's error on its
training target and how much it moves when z is swapped between images (mean square; near 0: z is ignored there).
Held-out SynthFaces (``--seed``, default 99), the checkpoint's EMA weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="The training run's --output_dir.")
    parser.add_argument("--checkpoint", default=None, help="A checkpoints/step-N folder (default: the newest).")
    parser.add_argument("--num-images", type=int, default=32, help="Held-out images (>= 2).")
    parser.add_argument("--seed", type=int, default=99, help="Seed of the held-out images and codes.")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25], help="DDIM step counts.")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[10, 300, 700, 999], help="Timesteps probed.")
    args = parser.parse_args(argv)
    if args.num_images < 2:
        parser.error(f"--num-images must be >= 2, got {args.num_images}")

    import torch
    import torch.nn.functional as F

    from dpdiffusion.data.synthfaces import make_synthfaces_arrays
    from dpdiffusion.evaluation.default_model import psnr
    from dpdiffusion.models.diffae import _is_official, ddim_decode, ddim_invert
    from dpdiffusion.training.train_autoencoder import (AutoencoderTrainingConfig, _build_model, _latest_checkpoint,
                                                         _target)

    out = Path(args.output_dir)
    config = AutoencoderTrainingConfig(**json.loads((out / "training_config.json").read_text()))
    ckpt = Path(args.checkpoint) if args.checkpoint else _latest_checkpoint(out / "checkpoints")
    if ckpt is None:
        parser.error(f"no complete checkpoint under {out / 'checkpoints'}")
    from dpdiffusion.data.synthfaces import SYNTHFACES_ATTRIBUTES

    model, sched = _build_model(config, len(config.attribute_columns or SYNTHFACES_ATTRIBUTES))
    model.load_state_dict(torch.load(ckpt / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=True))
    model.eval()
    images, _ = make_synthfaces_arrays(args.num_images, image_size=config.image_size, seed=args.seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
    g = torch.Generator().manual_seed(args.seed)
    to01 = lambda t: ((t + 1) / 2).clamp(0, 1)  # noqa: E731
    result = {"checkpoint": str(ckpt), "prediction_type": config.prediction_type, "random_code_psnr_db": {},
              "target_mse": {}, "z_swap_effect": {}}
    with torch.no_grad():
        cond = model.encoder.condition(model.encoder(x))
        noise = torch.randn(x.shape, generator=g)
        for k in args.steps:
            rec = ddim_decode(model.unet, sched, noise, cond, k)
            result["random_code_psnr_db"][str(k)] = float(psnr(to01(rec), to01(x)).mean())
        x_t = ddim_invert(model.unet, sched, x, cond, args.steps[-1])
        result["inversion_psnr_db"] = float(psnr(to01(ddim_decode(model.unet, sched, x_t, cond, args.steps[-1])),
                                                 to01(x)).mean())
        ac = sched.alphas_cumprod
        for t in args.timesteps:
            eps = torch.randn(x.shape, generator=g)
            tt = torch.full((len(x),), t)
            a = ac[t]
            xt = a.sqrt() * x + (1 - a).sqrt() * eps

            def net(c):
                return (model.unet(xt, tt, cond=c) if _is_official(model.unet)
                        else model.unet(xt, tt, class_labels=c)).sample

            pred = net(cond)
            result["target_mse"][str(t)] = float(F.mse_loss(pred, _target(config.prediction_type, x, eps, tt, ac)))
            result["z_swap_effect"][str(t)] = float((pred - net(cond.roll(1, 0))).pow(2).mean())
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
