#!/usr/bin/env python
"""Plot the paper sweep's utility and leakage per epsilon for "clip" against "posterior_mean".

    dpdiffusion evaluate experiments --methods dpdiffusion --epsilons 0.5 1 4 --post-processing clip --out A
    dpdiffusion evaluate experiments --methods dpdiffusion --epsilons 0.5 1 4 --post-processing posterior_mean --out B
    python scripts/plot_postprocessing_sweep.py --clip A/results.json --posterior-mean B/results.json --out plot.png
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True, help="results.json of the --post-processing clip sweep.")
    parser.add_argument("--posterior-mean", required=True, help="results.json of the posterior_mean sweep.")
    parser.add_argument("--out", required=True, help="The PNG to write.")
    args = parser.parse_args(argv)

    from dpdiffusion.evaluation.plots import plot_postprocessing_sweep

    results = {}
    for name, path in (("clip", args.clip), ("posterior_mean", args.posterior_mean)):
        with open(path) as f:
            results[name] = json.load(f)
    try:
        plot_postprocessing_sweep(results, args.out)
    except ValueError as err:
        parser.error(str(err))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
