"""Command line of the paper experiments: every method at every epsilon, all metrics, the audit, in one command.

Used by ``dpdiffusion evaluate experiments`` and ``scripts/run_paper_experiments.py`` (same options).

Examples::

    # the full sweep on SynthFaces with the embedded default model (about 20 minutes on 2 CPU cores)
    python scripts/run_paper_experiments.py --out paper-results

    # the small sweep that `dpdiffusion demo` runs (about 2-3 minutes)
    python scripts/run_paper_experiments.py --quick --out paper-results-quick

    # CelebA (or any dataset with CelebA's schema) with a pipeline trained on it
    python scripts/run_paper_experiments.py --dataset /data/celeba --model my-celeba-pipeline \\
        --attribute-columns Male Smiling Eyeglasses Wearing_Hat --protected-attributes Male

Writes results.md (table, claims, audit, figures with this command beside each), results.json and PNG plots.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys


def _epsilon(text: str) -> float:
    value = float(text)
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"epsilon must be > 0 or inf, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the sweep's options to ``p`` (shared by the script and ``dpdiffusion evaluate experiments``)."""
    from .baselines import ALL_METHODS

    p.add_argument("--dataset", default="synthfaces",
                   help="'synthfaces', or a Hub dataset name / image folder with metadata / save_to_disk folder with "
                        "CelebA-style boolean (or -1/1) attribute columns.")
    p.add_argument("--attribute-columns", nargs="+", default=None,
                   help="Label columns to evaluate (default: SynthFaces' five, or every boolean column).")
    p.add_argument("--protected-attributes", nargs="+", default=None,
                   help="Attributes to protect; the pipeline needs directions for them (default: the pipeline's).")
    p.add_argument("--identity-column", default=None, help="Person-id column of a real dataset (re-identification).")
    p.add_argument("--model", default=None, help="Pipeline folder or Hub repo id (default: the embedded model).")
    p.add_argument("--epsilons", nargs="+", type=_epsilon, default=None,
                   help="Epsilons of the sweep ('inf' allowed; default 0.5 1 2 4 8 inf, or 1 inf with --quick).")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=list(ALL_METHODS),
                   help="Methods to compare.")
    p.add_argument("--num-train", type=int, default=None, help="Training images per setting (default 1000; 400 quick).")
    p.add_argument("--num-test", type=int, default=None, help="Test images per setting (default 400; 200 quick).")
    p.add_argument("--num-inference-steps", type=int, default=None, help="DDIM steps (default 5).")
    p.add_argument("--delta", type=float, default=1e-5, help="delta of every (epsilon, delta) claim.")
    p.add_argument("--classifier-epochs", type=int, default=None, help="Epochs of every classifier.")
    p.add_argument("--audit-epsilons", nargs="*", type=_epsilon, default=[0.5, 1.0, 4.0],
                   help="Epsilons to audit (none: skip the audit).")
    p.add_argument("--audit-trials", type=int, default=None,
                   help="Trials per world of the latent/pixel audits (default 24000: they certify epsilon up to 8.09, "
                        "twice the largest default audited epsilon).")
    p.add_argument("--audit-decoded-trials", type=int, default=None,
                   help="Trials per world of the audits through the decoder (0 skips them; default 100, which certify "
                        "up to 2.57: claims above 1.28 are audited at 1.28).")
    p.add_argument("--pixel-l2-sensitivity", type=float, default=None,
                   help="L2 sensitivity Delta of the pixel Gaussian (default: the 95%% quantile of SynthFaces "
                        "counterfactual distances).")
    p.add_argument("--match-metric", choices=["fd", "psnr"], default="fd",
                   help="Image quality on which blur/pixelate are matched to dpdiffusion at each epsilon.")
    p.add_argument("--dp-pix-cell-size", type=int, default=4, help="DP-Pix cell size b in pixels.")
    p.add_argument("--dp-pix-m", type=int, default=1, help="DP-Pix neighbourhood m (pixels that may differ).")
    p.add_argument("--no-utility-augment", action="store_true",
                   help="Train the utility classifiers on the released images as they are (default: with flips and "
                        "colour jitter, as a data user would); the leakage attackers never augment.")
    p.add_argument("--post-processing", choices=["clip", "posterior_mean"], default=None,
                   help="Post-processing of the released coordinates of dpdiffusion and latent (default: the "
                        "pipeline's, clip).")
    p.add_argument("--out", default="paper-results", help="Output folder.")
    p.add_argument("--quick", action="store_true", help="The small sweep of `dpdiffusion demo` (minutes).")
    p.add_argument("--seed", type=int, default=0, help="Seed of data, noise and classifiers.")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch threads (default: torch's; 1 is faster on a machine shared with other jobs).")
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_paper_experiments.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_arguments(p)


def run_from_args(args: argparse.Namespace, command: str) -> dict:
    """Run the sweep that the parsed ``args`` describe; ``command`` is printed beside every figure."""
    if args.num_threads is not None:
        import torch

        torch.set_num_threads(max(1, args.num_threads))
    from .experiments import run_paper_experiments

    results = run_paper_experiments(
        args.out, model=args.model, dataset=args.dataset, attribute_columns=args.attribute_columns,
        protected_attributes=args.protected_attributes, identity_column=args.identity_column, epsilons=args.epsilons,
        methods=args.methods, num_train=args.num_train, num_test=args.num_test,
        num_inference_steps=args.num_inference_steps, delta=args.delta, classifier_epochs=args.classifier_epochs,
        audit_epsilons=args.audit_epsilons, audit_trials=args.audit_trials,
        audit_decoded_trials=args.audit_decoded_trials, dp_pix_cell_size=args.dp_pix_cell_size,
        dp_pix_m=args.dp_pix_m, pixel_l2_sensitivity=args.pixel_l2_sensitivity, match_metric=args.match_metric,
        quick=args.quick, seed=args.seed, utility_augment=not args.no_utility_augment,
        post_processing=args.post_processing,
        progress=not args.no_progress, command=command)
    print(f"results: {results['files']['results_md']}")
    return results


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    command = "python scripts/run_paper_experiments.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return run_from_args(args, command)
