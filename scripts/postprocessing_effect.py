"""How the post-processing of the released coordinates changes them: "clip" vs "posterior_mean", per epsilon.

For held-out SynthFaces (seed 99, disjoint from the default model's fit set), the share of released protected
coordinates that land on a public bound, and the mean squared error of the released coordinate against the input's
clipped coordinate, over C^2 (averaged over the protected attributes). Both post-processings use public values only;
the guarantee is the same.

    python scripts/postprocessing_effect.py --num-images 256 --epsilons 0.5 1 4 8
"""

from __future__ import annotations

import argparse
import json

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="Pipeline folder or repo id (default: embedded).")
    parser.add_argument("--num-images", type=int, default=256, help="Held-out SynthFaces images (>= 1).")
    parser.add_argument("--seed", type=int, default=99, help="Seed of the held-out images.")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 4.0, 8.0], help="Epsilons (> 0).")
    parser.add_argument("--attributes", nargs="+", default=["dark_skin", "long_hair"], help="Protected attributes.")
    args = parser.parse_args(argv)
    if args.num_images < 1 or any(not e > 0 for e in args.epsilons):
        parser.error("--num-images must be >= 1 and every --epsilons value > 0")

    from dpdiffusion.data.synthfaces import make_synthfaces_arrays
    from dpdiffusion.models.default import load_pipeline

    pipe = load_pipeline(None if args.model == "default" else args.model)
    pipe.set_progress_bar_config(disable=True)
    images, _ = make_synthfaces_arrays(args.num_images, image_size=pipe.image_size, seed=args.seed)
    z = pipe.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)  # (N, d)
    dirs, names = pipe.attribute_directions, list(args.attributes)
    bounds = dirs.clip_bound_tensor(names)  # (k,)
    truth = dirs.project(z, attributes=names)[0].clamp(-bounds, bounds)  # (N, k)
    rows = []
    for eps in args.epsilons:
        for post in ("clip", "posterior_mean"):
            released, _ = pipe.apply_privacy_noise(z, attributes=names, epsilon=eps, post_processing=post)
            a = dirs.project(released, attributes=names)[0]
            rows.append({"epsilon": eps, "post_processing": post,
                         "share_at_a_bound": float((a.abs() >= bounds * (1 - 1e-3)).double().mean()),
                         "mse_over_c2": float(((a - truth) ** 2 / bounds ** 2).mean())})
    print(json.dumps(rows, indent=1))
    print("\n| epsilon | post-processing | share of coordinates on a bound | MSE / C^2 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['epsilon']:g} | {r['post_processing']} | {r['share_at_a_bound']:.2f} | {r['mse_over_c2']:.3f} |")
    return {"rows": rows}


if __name__ == "__main__":
    main()
