#!/usr/bin/env python
"""Reproduce the paper's comparison in one command (same as ``dpdiffusion evaluate experiments``).

    python scripts/run_paper_experiments.py --out paper-results            # full sweep
    python scripts/run_paper_experiments.py --quick --out paper-results-quick

``--help`` lists every option; see ``dpdiffusion.evaluation.experiments_cli``.
"""

import sys

from dpdiffusion.evaluation.experiments_cli import main

if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:
        sys.exit(f"run_paper_experiments: error: {exc}")
