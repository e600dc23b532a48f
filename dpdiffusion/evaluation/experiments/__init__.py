r"""The paper's experiments in one call: every method at every epsilon, every metric, the audit, the report.

``run_paper_experiments`` (also ``scripts/run_paper_experiments.py`` and ``dpdiffusion evaluate experiments``) protects a
training and a test set of a ``datasets`` dataset (SynthFaces by default, any CelebA-schema dataset when given) with
each method at each epsilon and measures, from one set of protected images per setting (decoding is the expensive
part, so every metric reuses it):

* **leakage** of each protected attribute: a ResNet trained and tested on protected images, and a logistic probe on
  the re-encoded semantic latent; the better attack counts (``dpdiffusion.evaluation.leakage``);
* **utility** of each unprotected attribute: the same ResNet (one multi-label model) tested on *clean* test images,
  against the same recipe trained on clean images (``dpdiffusion.evaluation.utility``);
* **identity leakage**: re-identification top-1 of protected test images against the clean test gallery
  (``dpdiffusion.evaluation.identity``);
* **image quality**: PSNR, SSIM, and a Frechet distance in the features of the clean attribute ResNet
  (``dpdiffusion.evaluation.quality``);
* the **empirical epsilon audit** (``dpdiffusion.evaluation.audit``) of each formal method on its own relation, and of
  ``dpdiffusion`` on real counterfactual image pairs (not covered by the guarantee: it measures leakage around it).

Decoded images of each diffusion setting are kept in ``out/.protected-cache`` (8-bit, named by the weights' hash
and the settings), so an interrupted sweep resumes without decoding again. Outputs in ``out``: ``results.json``
(every figure), ``results.md`` (table, claims and figures, each with the command
that made it), and PNGs (``privacy_utility.png``, ``leakage_vs_epsilon.png``, ``utility_vs_epsilon.png``,
``audit.png``, ``samples_dpdiffusion.png``, ``samples_methods.png``).

The package: ``data`` (datasets and audit pairs), ``settings`` (the clean reference, the methods, every metric of one
setting), ``audits`` (the empirical privacy audits), ``report`` (claims, tables, files) and ``sweep``
(``run_paper_experiments``).
"""

from .audits import _audit_dp_pix, _audit_pixel_gaussian, run_audits, warn_unrefutable
from .common import _DEFAULTS, AUDIT_EPSILONS, PAPER_EPSILONS, QUICK_EPSILONS, _fmt, _jsonable, _seed_for
from .data import EvaluationData, load_evaluation_data
from .report import check_claims, render_markdown, write_outputs
from .settings import _evaluate_setting
from .sweep import run_paper_experiments

__all__ = ["PAPER_EPSILONS", "QUICK_EPSILONS", "AUDIT_EPSILONS", "run_paper_experiments", "load_evaluation_data",
           "EvaluationData", "run_audits", "warn_unrefutable", "check_claims", "render_markdown", "write_outputs"]
