"""How the post-processing of the released coordinates changes a release: "clip" vs "posterior_mean", per epsilon.

For held-out SynthFaces (seed 99, disjoint from the default model's fit set): the share of released protected
coordinates on a public bound, their mean squared error against the input's clipped coordinate over C^2, utility
(the independent judge's agreement with the original on the unprotected attributes) and leakage (the better of the
judge and a latent probe on the protected attributes, with the DP bound); see
``dpdiffusion.evaluation.postprocessing``. Both post-processings use public values only; the guarantee is the same.

    python scripts/postprocessing_effect.py --num-images 256 --epsilons 0.5 1 4 8 --judge runs/judge32 \\
        --out results/postprocessing_effect.json --plot docs/postprocessing_effect.png
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="Pipeline folder or repo id (default: embedded).")
    parser.add_argument("--num-images", type=int, default=256, help="Held-out SynthFaces images (>= 8).")
    parser.add_argument("--seed", type=int, default=99, help="Seed of the held-out images and stochastic codes.")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 4.0, 8.0], help="Epsilons (> 0).")
    parser.add_argument("--attributes", nargs="+", default=["dark_skin", "long_hair"], help="Protected attributes.")
    parser.add_argument("--num-inference-steps", type=int, default=10, help="DDIM steps of every decoding.")
    parser.add_argument("--judge", default=None, help="Folder of the independent classifier (loaded if there, else "
                                                      "trained and saved there; default: trained, not saved).")
    parser.add_argument("--out", default=None, help="Write the rows (and this command) as JSON here.")
    parser.add_argument("--plot", default=None, help="Write the utility/leakage plot (PNG) here.")
    args = parser.parse_args(argv)

    import torch

    from dpdiffusion.evaluation.default_model import load_or_train_judge
    from dpdiffusion.evaluation.postprocessing import postprocessing_effect
    from dpdiffusion.models.default import load_pipeline

    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = load_pipeline(None if args.model == "default" else args.model)
    pipe.set_progress_bar_config(disable=True)
    judge, judge_accuracy = load_or_train_judge(args.judge, pipe.image_size)
    try:
        rows = postprocessing_effect(pipe, judge, epsilons=args.epsilons, attributes=args.attributes,
                                     num_images=args.num_images, seed=args.seed,
                                     num_inference_steps=args.num_inference_steps)
    except ValueError as err:
        parser.error(str(err))
    result = {"command": "python scripts/postprocessing_effect.py " + " ".join(shlex.quote(a) for a in
                                                                                (argv or sys.argv[1:])),
              "model": args.model, "judge_accuracy": judge_accuracy, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    if args.plot:
        from dpdiffusion.evaluation.plots import plot_postprocessing_effect

        plot_postprocessing_effect(rows, args.plot)
    print("| epsilon | post-processing | on a bound | MSE / C^2 | utility: agreement, unprotected (min) | "
          "leakage: best attack (max) | DP bound |\n|---|---|---|---|---|---|---|")
    for r in rows:
        bound = max(v["bound"] for v in r["leakage"].values())
        print(f"| {r['epsilon']:g} | {r['post_processing']} | {r['share_at_a_bound']:.2f} | {r['mse_over_c2']:.3f} | "
              f"{r['utility_agreement_min']:.3f} | {r['leakage_best']:.3f} | {bound:.3f} |")
    return result


if __name__ == "__main__":
    main()
