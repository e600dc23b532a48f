"""Store the public coordinate prior of a pipeline's attribute directions (for ``post_processing="posterior_mean"``).

`AttributeDirections.fit` stores it for every model fitted from now on; this script adds it to a model fitted
before, from the *same fit set* (SynthFaces with the training seed and size), without changing the directions, the
centre or the clip bounds: it re-encodes the fit set, projects it with the stored directions, checks that the stored
clip bounds are the configured quantile of these coordinates (so the data really is the fit set), and writes the
histogram of the clipped coordinates into ``attribute_directions/config.json``.

    python scripts/fit_coordinate_prior.py --model unet2d --num-images 10000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="Pipeline folder, or default / unet2d for an embedded model "
                                                             "(default: the embedded default).")
    parser.add_argument("--num-images", type=int, default=10000, help="Size of the SynthFaces fit set.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the SynthFaces fit set.")
    parser.add_argument("--num-bins", type=int, default=64, help="Histogram bins over [-C, C].")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="Largest relative difference between the stored bounds and the refitted quantile.")
    args = parser.parse_args(argv)
    if args.num_images < 100:
        parser.error(f"--num-images must be >= 100, got {args.num_images}")

    from dpdiffusion.data.synthfaces import make_synthfaces_arrays
    from dpdiffusion.models.default import EMBEDDED_MODELS, embedded_model_name, load_pipeline
    from dpdiffusion.privacy.postprocess import coordinate_prior
    from dpdiffusion.training.train_autoencoder import encode_all

    torch.set_num_threads(min(2, torch.get_num_threads()))
    name = embedded_model_name(args.model)
    folder = EMBEDDED_MODELS[name][0] if name is not None else args.model  # the folder its prior is written to
    pipe = load_pipeline(folder)
    dirs = pipe.attribute_directions
    images, _ = make_synthfaces_arrays(args.num_images, image_size=pipe.image_size, seed=args.seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    z = encode_all(pipe.encoder, x).double()  # (N, d)
    a = (z - dirs.center.double()) @ dirs.directions.double()  # (N, K), all stored attributes
    refit = torch.quantile(a.abs(), dirs.config.clip_quantile, dim=0)
    stored = dirs.clip_bound_values.double()
    rel = float(((refit - stored).abs() / stored).max())
    if rel > args.tolerance:
        sys.exit(f"the data is not the fit set of these directions: the {dirs.config.clip_quantile} quantile of "
                 f"|a| differs from the stored clip bounds by {rel:.3g} (relative) > --tolerance {args.tolerance}")
    prior = coordinate_prior(a.numpy(), stored.tolist(), num_bins=args.num_bins)
    config_file = pathlib.Path(folder) / "attribute_directions" / "config.json"
    config = json.loads(config_file.read_text())
    config["coordinate_prior"] = dict(zip(dirs.names, prior))  # only the prior is added; weights stay as they are
    tmp = config_file.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(config_file)
    summary = {"model": str(folder), "num_images": args.num_images, "seed": args.seed, "num_bins": args.num_bins,
               "bounds_max_relative_difference": rel,
               "clipped_fraction": {n: float((a[:, i].abs() >= stored[i]).double().mean())
                                    for i, n in enumerate(dirs.names)}}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
