"""dpdiffusion.evaluation.

The project's figures are also ``evaluate`` modules, loadable offline by path:
``evaluate.load(dpdiffusion.evaluation.metric_path("attribute_leakage"))`` (see `dpdiffusion.evaluation.metrics`).
"""

from .metrics import METRIC_NAMES, load_metric, metric_path

__all__ = ["METRIC_NAMES", "load_metric", "metric_path"]
