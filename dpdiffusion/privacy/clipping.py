r"""Clipping to the public bounds, rounded towards privacy (tensor layer).

Bounds are cast to the tensor's dtype rounding *down*, and L2 clipping re-checks the norm after the cast, so a
clipped value never exceeds its public bound.
"""

from __future__ import annotations

import torch

from .calibration import _positive_float, _positive_floats

__all__ = ["clip_coordinates", "clip_l2"]


def _bounds_tensor(bounds, like: torch.Tensor) -> torch.Tensor:
    bounds = _positive_floats("clip_bounds", bounds)
    if len(bounds) != like.shape[-1]:
        raise ValueError(
            f"clip_bounds must have one entry per coordinate (last dimension {like.shape[-1]}), got {len(bounds)}"
        )
    bounds64 = torch.tensor(bounds, dtype=torch.float64)
    cast = bounds64.to(like.dtype)
    high = cast.to(torch.float64) > bounds64
    if high.any():  # round down when casting: clipping is never looser than the public bound
        cast = torch.where(high, torch.nextafter(cast, torch.zeros_like(cast)), cast)
    return cast.to(like.device)


def _check_float_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; the mechanism cannot clip NaN")


def clip_coordinates(a: torch.Tensor, clip_bounds) -> torch.Tensor:
    r"""Clamp each coordinate a[..., i] to [-C_i, C_i].

    The bounds are cast to `a`'s dtype rounding down (towards privacy): a bound that is not representable in that
    dtype is replaced by the largest representable value below it.

    Args:
        a (`torch.Tensor`): (..., k) coordinates.
        clip_bounds (`Sequence[float]`): k public bounds C_i > 0.

    Returns:
        `torch.Tensor`: (..., k), same dtype and device.

    Raises:
        ValueError: if the bounds do not match or `a` contains NaN.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import clip_coordinates
    >>> clip_coordinates(torch.tensor([[3.0, -0.5]]), [1.0, 0.25])
    tensor([[ 1.0000, -0.2500]])

    ```
    """
    _check_float_tensor("a", a)
    bounds = _bounds_tensor(clip_bounds, a)
    return torch.maximum(torch.minimum(a, bounds), -bounds)


def clip_l2(r: torch.Tensor, bound: float) -> torch.Tensor:
    r"""Scale each row r[..., :] to L2 norm at most `bound` (rows inside the ball are unchanged).

    Computed in float64 and, if rounding to `r`'s dtype pushed a norm above the bound, scaled down once more by a
    few ulp, so the returned norms never exceed `bound` (measured in float64).

    Args:
        r (`torch.Tensor`): (..., d).
        bound (`float`): C > 0.

    Returns:
        `torch.Tensor`: (..., d), same dtype and device.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import clip_l2
    >>> clip_l2(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])

    ```
    """
    _check_float_tensor("r", r)
    bound = _positive_float("bound", bound)
    r64 = r.to(torch.float64)
    norms = torch.linalg.vector_norm(r64, dim=-1, keepdim=True)  # (..., 1)
    scale = torch.where(norms > bound, bound / norms.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    out = (r64 * scale).to(r.dtype)
    over = torch.linalg.vector_norm(out.to(torch.float64), dim=-1, keepdim=True) > bound
    if over.any():
        eps = torch.finfo(r.dtype).eps
        out = torch.where(over, (r64 * scale * (1.0 - 4.0 * eps)).to(r.dtype), out)
    return out
