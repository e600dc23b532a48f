r"""Sources of Gaussian privacy noise: the OS CSPRNG (default) or, explicitly, a seeded torch generator.

`gaussian_noise_like(x, std)` draws from the OS CSPRNG (`os.urandom`) unless the caller passes
`secure_mode=False`, in which case diffusers' `randn_tensor` draws from the caller's `generator`: reproducible, and
therefore replayable by whoever knows or recovers the seed (a test/research mode; every output made so reports
`noise_source="seeded"` and no formal guarantee).

**Floating point.** The CSPRNG sampler draws 53-bit uniforms, transforms them with Box-Muller in float64 and sums four
normals / 2, as opacus' secure mode does against the attack on a single Box-Muller draw (Holohan & Braghin 2021).
The noise is then rounded to the tensor's dtype (float32 for the models here) and added in that dtype. This does
*not* make the release immune to floating-point attacks in the sense of Mironov (2012): the set of representable
outputs depends on the input, and only an exact discrete sampler (e.g. the discrete Gaussian, Canonne, Kamath &
Steinke 2020) with a proof for the rounded arithmetic would. The guarantee is stated for the ideal real-valued
Gaussian mechanism.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["InsecurePRNGWarning", "gaussian_noise_like"]

# One-time warning that torch's PRNG is not a CSPRNG (set to True to silence, e.g. in tests).
_INSECURE_PRNG_WARNED = False


class InsecurePRNGWarning(UserWarning):
    """Noise was drawn from torch's PRNG, which is not a cryptographically secure generator."""


def _secure_standard_normal(numel: int) -> np.ndarray:
    """`numel` N(0, 1) draws in float64 from the OS CSPRNG.

    53-bit uniforms from `os.urandom`, Box-Muller; each output is (g1 + g2 + g3 + g4) / 2 of four independent
    normals, the mitigation opacus uses in secure mode against floating-point attacks on a single draw (Holohan &
    Braghin 2021).
    """
    pairs = (4 * numel + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64) >> np.uint64(11)  # 53 random bits each
    uniforms = (raw.astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1]
    u1, u2 = uniforms[0::2], uniforms[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    normals = np.concatenate([radius * np.cos(2.0 * np.pi * u2), radius * np.sin(2.0 * np.pi * u2)])
    return normals[: 4 * numel].reshape(4, numel).sum(axis=0) / 2.0


def _std_tensor(std, like: torch.Tensor) -> torch.Tensor:
    std64 = torch.as_tensor(std, dtype=torch.float64).detach().to("cpu")
    if torch.isnan(std64).any() or (std64 < 0).any() or torch.isinf(std64).any():
        raise ValueError(f"std must be finite and >= 0, got std={std64.tolist()}")
    # Round up when casting to the tensor dtype: the noise is never smaller than asked.
    cast = std64.to(like.dtype)
    low = cast.to(torch.float64) < std64
    if low.any():
        cast = torch.where(low, torch.nextafter(cast, torch.tensor(math.inf, dtype=like.dtype)), cast)
    return cast.to(like.device)


def _warn_insecure_prng() -> None:
    global _INSECURE_PRNG_WARNED
    if not _INSECURE_PRNG_WARNED:
        _INSECURE_PRNG_WARNED = True
        warnings.warn(
            "privacy noise drawn from a seeded torch generator (secure_mode=False), which is not a "
            "cryptographically secure generator: whoever knows or recovers the seed can subtract the noise, so "
            "these outputs are not private releases (noise_source='seeded'). Leave secure_mode=True (the default) "
            "for real releases (this warning is shown once per process).",
            InsecurePRNGWarning,
            stacklevel=3,
        )


def gaussian_noise_like(
    x: torch.Tensor,
    std: Union[float, Sequence[float], torch.Tensor],
    *,
    generator: Optional[torch.Generator] = None,
    secure_mode: bool = True,
) -> torch.Tensor:
    r"""Gaussian noise N(0, std^2) with the shape, dtype and device of `x`.

    By default (`secure_mode=True`) the noise comes from `os.urandom` (53-bit uniforms, Box-Muller in float64, sum
    of four normals / 2, as opacus' secure mode): `generator` is ignored and nothing is reproducible.
    `secure_mode=False` draws with diffusers' `randn_tensor(x.shape, generator=generator, ...)` (reproducible from
    the generator: a test/research mode) and warns once per process. If all of `std` is 0, zeros are returned and
    nothing is drawn.

    Args:
        x (`torch.Tensor`): reference tensor (..., k).
        std (`float`, sequence or `torch.Tensor`): standard deviation, finite and >= 0, broadcastable to `x`
            (e.g. one per coordinate of the last dimension). Rounded up to `x`'s dtype.
        generator (`torch.Generator`, *optional*): source of randomness when `secure_mode=False`.
        secure_mode (`bool`, *optional*, defaults to `True`): draw from the OS CSPRNG; `False` only for
            reproducible (non-private) noise.

    Returns:
        `torch.Tensor`: noise shaped like `x`.

    Example:

    ```py
    >>> import torch, warnings
    >>> from dpdiffusion.privacy.mechanism import gaussian_noise_like
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     n = gaussian_noise_like(torch.zeros(2, 3), [1.0, 2.0, 3.0])
    >>> n.shape, n.dtype
    (torch.Size([2, 3]), torch.float32)

    ```
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
    std_t = _std_tensor(std, x)
    if not (std_t != 0).any():
        return torch.zeros_like(x)
    if secure_mode:
        normals = torch.from_numpy(_secure_standard_normal(x.numel())).reshape(x.shape)
        noise = normals.to(device=x.device, dtype=x.dtype)
    else:
        _warn_insecure_prng()
        noise = randn_tensor(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return noise * std_t
