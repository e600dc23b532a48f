#!/usr/bin/env python
"""Export the EMA weights of a training checkpoint as a pipeline folder (for evaluating a run that still trains).

    python scripts/export_checkpoint.py --output_dir runs/diffae-default [--checkpoint PATH] [--model_dir PATH]

Then ``python scripts/evaluate_default_model.py --model <printed folder>``. The run itself is not touched.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="The training run's --output_dir.")
    parser.add_argument("--checkpoint", default=None, help="A checkpoints/step-N folder (default: the newest).")
    parser.add_argument("--model_dir", default=None, help="Where the pipeline goes (default: output_dir/export-step-N).")
    args = parser.parse_args(argv)

    from dpdiffusion.training.train_autoencoder import export_checkpoint

    try:
        path = export_checkpoint(args.output_dir, checkpoint=args.checkpoint, model_dir=args.model_dir)
    except ValueError as err:
        parser.error(str(err))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
