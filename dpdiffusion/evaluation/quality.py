r"""Image quality: PSNR, SSIM and a Frechet distance in the feature space of a SynthFaces-trained encoder.

* ``psnr``: ``10 log10(1 / MSE)`` per image, pixels in [0, 1] (scikit-image's ``peak_signal_noise_ratio``).
* ``ssim``: the structural similarity index of Wang, Bovik, Sheikh & Simoncelli 2004 (IEEE TIP 13(4), Eq. 13):
  11 x 11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1, population covariances,
  valid windows only, averaged over the map and the colour channels (the reference implementation's settings),
  computed by scikit-image's ``structural_similarity`` with those options.
* ``frechet_distance``: ``||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` between Gaussians fitted to two
  feature sets (Heusel et al. 2017). The features here are NOT Inception-v3's (its weights cannot be downloaded on
  this machine): ``FD_SynthFacesResNet`` uses the pooled penultimate features of an attribute ResNet trained on the
  clean images of the run. Its values are not comparable with published FIDs, only within one run.
"""

from __future__ import annotations

import warnings

from typing import Any, Callable

import numpy as np
import torch
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim", "frechet_distance", "gaussian_statistics", "feature_frechet_distance",
           "classifier_features", "image_quality", "FD_FEATURE_SPACE"]

FD_FEATURE_SPACE = ("FD_SynthFacesResNet: pooled penultimate features of a small ResNet attribute classifier trained "
                    "on "
                    "the run's clean training images (not Inception-v3; comparable only within a run)")


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double()
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (C, H, W), got shape {tuple(a.shape)}")
    return a, b


def psnr(a: Any, b: Any, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of two batches ``(N, C, H, W)`` (float64); identical images give ``inf``.

    Computed by ``skimage.metrics.peak_signal_noise_ratio`` image by image: ``10 log10(data_range^2 / MSE)``.

    Args:
        a (`torch.Tensor` or array): ``(N, C, H, W)`` or ``(C, H, W)`` images.
        b (`torch.Tensor` or array): images of the same shape.
        data_range (`float`, *optional*, defaults to 1.0): the pixel range (1 for [0, 1], 255 for 8-bit).

    Returns:
        `torch.Tensor`: ``(N,)`` float64 PSNR values.

    Raises:
        ValueError: if the shapes differ or are not 3-D/4-D.

    Example:
    ```py
    >>> import torch
    >>> x = torch.zeros(1, 3, 4, 4)
    >>> round(float(psnr(x, x + 0.1)), 4)  # 10 log10(1 / 0.01)
    20.0

    ```
    """
    a, b = _pair(a, b)
    with np.errstate(divide="ignore"):  # identical images: MSE = 0 -> inf, by definition
        values = [peak_signal_noise_ratio(x, y, data_range=data_range) for x, y in zip(a.numpy(), b.numpy())]
    return torch.tensor(values, dtype=torch.float64)


def ssim(a: Any, b: Any, *, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM of two batches ``(N, C, H, W)`` (Wang et al. 2004, Eq. 13); 1 for identical images.

    Computed by ``skimage.metrics.structural_similarity`` with the settings of Wang et al.'s reference code:
    Gaussian weights (``sigma``, truncated at 3.5 sigma: an 11 x 11 window for sigma 1.5), population covariances
    (``use_sample_covariance=False``), ``K1``, ``K2`` and ``data_range`` as given; the SSIM map is kept where the
    whole window lies inside the image ("valid" windows) and averaged over the map and the colour channels.

    Args:
        a (`torch.Tensor` or array): ``(N, C, H, W)`` or ``(C, H, W)`` images.
        b (`torch.Tensor` or array): images of the same shape.
        data_range (`float`, *optional*, defaults to 1.0): the pixel range.
        window_size (`int`, *optional*, defaults to 11): the window side; must be scikit-image's window for
            ``sigma`` (``2 * int(3.5 * sigma + 0.5) + 1``) and fit in the image.
        sigma (`float`, *optional*, defaults to 1.5): standard deviation of the Gaussian weights.
        k1 (`float`, *optional*, defaults to 0.01): ``C1 = (k1 * data_range)^2``.
        k2 (`float`, *optional*, defaults to 0.03): ``C2 = (k2 * data_range)^2``.

    Returns:
        `torch.Tensor`: ``(N,)`` float64 mean SSIM values.

    Raises:
        ValueError: if the shapes differ, the window does not match ``sigma``, or the images are smaller than it.

    Example:
    ```py
    >>> import torch
    >>> x = torch.rand(2, 3, 16, 16)
    >>> ssim(x, x).tolist()
    [1.0, 1.0]

    ```
    """
    a, b = _pair(a, b)
    gaussian_window = 2 * int(3.5 * sigma + 0.5) + 1  # scikit-image's (scipy.ndimage's) window for sigma
    if window_size != gaussian_window:
        raise ValueError(f"window_size must be {gaussian_window} for sigma={sigma}, got window_size={window_size}")
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"images must be at least {window_size} x {window_size} pixels, got shape {tuple(a.shape)}")
    values = [structural_similarity(x, y, data_range=data_range, channel_axis=0, gaussian_weights=True, sigma=sigma,
                                    use_sample_covariance=False, K1=k1, K2=k2)
              for x, y in zip(a.numpy(), b.numpy())]
    return torch.tensor(values, dtype=torch.float64)


def gaussian_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased) of ``features`` ``(N, D)``."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu_1: Any, sigma_1: Any, mu_2: Any, sigma_2: Any) -> float:
    """Frechet distance between N(mu_1, sigma_1) and N(mu_2, sigma_2) (Dowson & Landau 1982).

    Example:
    ```py
    >>> import numpy as np
    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)), 6)  # 2 + 2 * (1 + 4 - 2 * 2)
    4.0

    ```
    """
    mu_1, mu_2 = np.atleast_1d(np.asarray(mu_1, np.float64)), np.atleast_1d(np.asarray(mu_2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma_1, np.float64)), np.atleast_2d(np.asarray(sigma_2, np.float64))
    if mu_1.shape != mu_2.shape or s1.shape != s2.shape or s1.shape != (len(mu_1), len(mu_1)):
        raise ValueError(f"shapes do not match: mu {mu_1.shape}, {mu_2.shape}; sigma {s1.shape}, {s2.shape}")
    with warnings.catch_warnings():  # a singular product (few samples) is handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu_1 - mu_2
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)))


def feature_frechet_distance(features_1: Any, features_2: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N1, D)`` and ``(N2, D)``."""
    return frechet_distance(*gaussian_statistics(features_1), *gaussian_statistics(features_2))


@torch.no_grad()
def classifier_features(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Pooled penultimate features ``(N, D)`` of a ``transformers`` ResNet classifier on images in [-1, 1] (enlarged
    by the model's ``config.input_enlarge`` first, as its classifications are)."""
    from .utility import enlarge_for

    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = enlarge_for(model, images[start:start + batch_size].to(device).float())
        pooled = model.resnet(pixel_values=x).pooler_output  # (B, D, 1, 1)
        out.append(pooled.flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def image_quality(protected: torch.Tensor, original: torch.Tensor, *,
                  feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  reference_features: torch.Tensor | None = None) -> dict:
    """PSNR and SSIM of ``protected`` against ``original`` (both ``(N, 3, H, W)`` in [0, 1]) and, with a feature
    function, the Frechet distance of the protected images' features to ``reference_features`` (default: the
    originals' features). Returns means (and PSNR's finite-mean convention: identical images count as 100 dB)."""
    p = psnr(protected, original)
    p = torch.where(torch.isinf(p), torch.full_like(p, 100.0), p)
    out = {"psnr_db": float(p.mean()), "ssim": float(ssim(protected, original).mean())}
    if feature_fn is not None:
        ref = reference_features if reference_features is not None else feature_fn(original * 2 - 1)
        out["fd_synthfaces_resnet"] = feature_frechet_distance(feature_fn(protected * 2 - 1), ref)
    return out

