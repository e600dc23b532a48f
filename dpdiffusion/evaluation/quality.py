r"""Image quality: PSNR, SSIM and a Frechet distance in the feature space of a SynthFaces-trained encoder.

* ``psnr``: ``10 log10(1 / MSE)`` per image, pixels in [0, 1].
* ``ssim``: the structural similarity index of Wang, Bovik, Sheikh & Simoncelli 2004 (IEEE TIP 13(4), Eq. 13):
  11 x 11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1, valid windows only, averaged
  over the map and the colour channels (the reference implementation's settings).
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
import torch.nn.functional as F
from scipy import linalg

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

    Example:
    ```py
    >>> import torch
    >>> x = torch.zeros(1, 3, 4, 4)
    >>> round(float(psnr(x, x + 0.1)), 4)  # 10 log10(1 / 0.01)
    20.0

    ```
    """
    a, b = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dtype=torch.float64) -> torch.Tensor:
    t = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Any, b: Any, *, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM of two batches ``(N, C, H, W)`` (Wang et al. 2004); 1 for identical images.

    Images smaller than the window use a window of the image's size.

    Example:
    ```py
    >>> import torch
    >>> x = torch.rand(2, 3, 16, 16)
    >>> ssim(x, x).tolist()
    [1.0, 1.0]

    ```
    """
    a, b = _pair(a, b)
    n, c, h, w = a.shape
    size = min(window_size, h, w)
    win = _gaussian_window(size, sigma).to(a)[None, None].repeat(c, 1, 1, 1)  # (C, 1, s, s)

    def filt(x):
        return F.conv2d(x, win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a**2
    s_bb = filt(b * b) - mu_b**2
    s_ab = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    return (num / den).flatten(1).mean(1)


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

