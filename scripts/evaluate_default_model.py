#!/usr/bin/env python
"""Print the quality figures of a diffusion autoencoder as JSON (default: the embedded DEFAULT_MODEL).

    python scripts/evaluate_default_model.py [--model PATH_OR_REPO] [--num-images 500] [--out metrics.json]

Same as ``dpdiffusion evaluate autoencoder``; see ``dpdiffusion.evaluation.default_model`` for what each figure means.
"""

import sys

from dpdiffusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", "autoencoder", *sys.argv[1:]]))
