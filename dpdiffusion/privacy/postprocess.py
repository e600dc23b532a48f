r"""Post-processing of released coordinates with public information only (the guarantee is unchanged).

By the post-processing property of differential privacy (Dwork & Roth 2014, Proposition 2.1), any function of the
released a~ and of public values keeps the (epsilon, delta) guarantee of the release. Two such functions:

- ``clip`` (`dpdiffusion.privacy.mechanism.postprocess_to_bounds`): a~_i -> clip(a~_i, -C_i, C_i).
- ``posterior_mean`` (`posterior_mean`): a~_i -> E[clip(a_i) | a~_i], the posterior mean of the clipped coordinate
  under a *public prior* of clipped coordinates (a histogram fitted once, on the training latents the directions
  were fitted on, and stored with them; never data of the image being protected) and the Gaussian likelihood of the
  calibrated noise:

      E[c | a~] = sum_b p_b c_b phi((a~ - c_b) / sigma) / sum_b p_b phi((a~ - c_b) / sigma),

  with bins b of centre c_b (the mean of the clipped training coordinates in the bin) and mass p_b, and sigma the
  noise standard deviation of the coordinate (public: it is calibrated from epsilon, delta and the public bounds).
  It is the estimate of clip(a) with the least mean squared error under the prior, and it always lies in
  [-C_i, C_i]. With large noise it shrinks towards the prior's mean (a typical value) instead of landing on a bound.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["coordinate_prior", "posterior_mean"]


def coordinate_prior(coordinates, clip_bounds: Sequence[float], *, num_bins: int = 64) -> list[dict]:
    r"""A histogram prior of clipped coordinates, one per column, for `posterior_mean`.

    Args:
        coordinates (array-like): (N, k) coordinates of the *fit set* (training latents), never of an image to protect.
        clip_bounds (`Sequence[float]`): the k public bounds C_i > 0.
        num_bins (`int`, *optional*, defaults to 64): bins over [-C_i, C_i]; values clipped to a bound fall in the
            edge bin, whose centre is then pulled towards that bound.

    Returns:
        `list[dict]`: per column ``{"centers": [...], "probs": [...]}`` over the non-empty bins (centres: the mean of
        the clipped values in the bin; probs sum to 1).

    Raises:
        ValueError: on mismatched shapes, non-positive bounds or ``num_bins < 2``.

    Example:

    ```py
    >>> from dpdiffusion.privacy.postprocess import coordinate_prior
    >>> prior = coordinate_prior([[-3.0], [0.1], [0.2], [5.0]], [1.0], num_bins=2)
    >>> prior[0]["centers"], prior[0]["probs"]
    ([-1.0, 0.43333333333333335], [0.25, 0.75])

    ```
    """
    a = np.asarray(coordinates, dtype=np.float64)
    bounds = np.asarray(clip_bounds, dtype=np.float64).reshape(-1)
    if a.ndim != 2 or a.shape[1] != bounds.size or a.shape[0] < 1:
        raise ValueError(f"coordinates must be (N, k) with k = {bounds.size} clip bounds, got shape {a.shape}")
    if not np.all(np.isfinite(bounds)) or np.any(bounds <= 0):
        raise ValueError(f"clip_bounds must be finite and > 0, got {bounds.tolist()}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got num_bins={num_bins!r}")
    out = []
    for i, c in enumerate(bounds):
        x = np.clip(a[:, i], -c, c)  # (N,)
        idx = np.minimum(((x + c) / (2 * c) * num_bins).astype(np.int64), num_bins - 1)
        counts = np.bincount(idx, minlength=num_bins)
        sums = np.bincount(idx, weights=x, minlength=num_bins)
        keep = counts > 0
        out.append({"centers": (sums[keep] / counts[keep]).tolist(), "probs": (counts[keep] / x.size).tolist()})
    return out


def posterior_mean(a_noisy: torch.Tensor, *, sigmas: Sequence[float], prior: Sequence[dict]) -> torch.Tensor:
    r"""E[clip(a_i) | a~_i] under the public histogram ``prior`` and N(0, sigma_i^2) noise (module docstring).

    Post-processing of the release: it reads only a~, the calibrated sigmas and the fit-time prior, so the
    (epsilon, delta) guarantee is unchanged. Computed in float64 with a log-sum-exp.

    Args:
        a_noisy (`torch.Tensor`): (..., k) released coordinates.
        sigmas (`Sequence[float]`): the k noise standard deviations (> 0).
        prior (`Sequence[dict]`): k entries ``{"centers", "probs"}`` (`coordinate_prior`).

    Returns:
        `torch.Tensor`: (..., k), same dtype and device as ``a_noisy``; each value inside the hull of its centres.

    Raises:
        ValueError: on mismatched lengths or a sigma that is not finite and > 0.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.postprocess import posterior_mean
    >>> prior = [{"centers": [-1.0, 1.0], "probs": [0.5, 0.5]}]     # two-point prior: E = tanh(a~ / sigma^2)
    >>> round(float(posterior_mean(torch.tensor([[0.5]]), sigmas=[1.0], prior=prior)), 6)
    0.462117

    ```
    """
    if not isinstance(a_noisy, torch.Tensor) or not a_noisy.is_floating_point() or a_noisy.ndim < 1:
        raise ValueError("a_noisy must be a floating-point torch.Tensor (..., k)")
    k = a_noisy.shape[-1]
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) != k or len(prior) != k:
        raise ValueError(f"need one sigma and one prior per coordinate ({k}), got {len(sigmas)} and {len(prior)}")
    if not all(0.0 < s < math.inf for s in sigmas):
        raise ValueError(f"sigmas must be finite and > 0, got sigmas={sigmas}")
    x = a_noisy.detach().to("cpu", torch.float64)  # (..., k)
    out = torch.empty_like(x)
    for i in range(k):
        centers = torch.tensor(prior[i]["centers"], dtype=torch.float64)  # (B,)
        probs = torch.tensor(prior[i]["probs"], dtype=torch.float64)  # (B,)
        if centers.numel() == 0 or centers.shape != probs.shape or torch.any(probs < 0) or probs.sum() <= 0:
            raise ValueError(f"prior[{i}] must hold matching non-empty centers and non-negative probs")
        logw = torch.log(probs) - (x[..., i, None] - centers) ** 2 / (2.0 * sigmas[i] ** 2)  # (..., B)
        out[..., i] = (torch.softmax(logw, dim=-1) * centers).sum(-1)
    return out.to(device=a_noisy.device, dtype=a_noisy.dtype)
