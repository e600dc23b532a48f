"""Image quality of protected images: PSNR, SSIM and (given features) a Frechet distance."""

import datasets
import evaluate
import numpy as np

from dpdiffusion.evaluation.quality import feature_frechet_distance, psnr, ssim

_DESCRIPTION = """
PSNR (dB) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of protected images against
their originals, pixels in [0, 1], images as (C, H, W) nested lists. With `prediction_features` and
`reference_features` also the Frechet distance between Gaussians fitted to the two feature sets. In dpdiffusion the
features come from a SynthFaces-trained ResNet (FD_SynthFacesResNet), not Inception-v3: values are comparable only
within one experiment, never with published FIDs.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list`): protected images, each (C, H, W) in [0, 1].
    references (`list`): original images, each (C, H, W) in [0, 1].
    prediction_features (`array (N, D)`, *optional*), reference_features (`array (M, D)`, *optional*).
    data_range (`float`, *optional*, defaults to 1.0).
Returns:
    psnr_db (mean over images; identical images count as 100 dB), ssim (mean), and frechet_distance if features given.
Examples:
    >>> import evaluate, numpy as np
    >>> from dpdiffusion.evaluation.metrics import metric_path
    >>> q = evaluate.load(metric_path("image_quality"))
    >>> x = np.zeros((1, 3, 16, 16), dtype=np.float32)
    >>> r = q.compute(predictions=x + 0.1, references=x)
    >>> round(r["psnr_db"], 3)
    20.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ImageQuality(evaluate.Metric):
    def _info(self):
        image = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32"))))
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": image, "references": image}),
        )

    def _compute(self, predictions, references, prediction_features=None, reference_features=None, data_range=1.0):
        p = np.asarray(predictions, dtype=np.float64)
        r = np.asarray(references, dtype=np.float64)
        values = psnr(p, r, data_range=data_range)
        values[values.isinf()] = 100.0
        out = {"psnr_db": float(values.mean()), "ssim": float(ssim(p, r, data_range=data_range).mean())}
        if prediction_features is not None and reference_features is not None:
            out["frechet_distance"] = feature_frechet_distance(prediction_features, reference_features)
        return out
