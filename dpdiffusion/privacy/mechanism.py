r"""The weighted Gaussian mechanism on semantic latents (tensor layer of the privacy code).

**What is released.** A semantic latent z in R^d is split by the public attribute directions A (d x k,
orthonormal columns) into protected coordinates a = A^T z in R^k and a residual r = z - A a. For each protected
coordinate i with public clip bound C_i > 0 (fixed when the directions were fitted, never computed from the input)
the mechanism releases

    a~_i = clip(a_i, -C_i, C_i) + N(0, sigma_i^2)          independently for i = 1..k,

(`apply_weighted_gaussian_mechanism`) and, with `scope="attributes"`, the residual r unchanged. With
`scope="latent"` it also releases r~ = clip_l2(r, C_r) + P n, n ~ N(0, sigma_r^2 I_d), P = I - A A^T
(`apply_residual_mechanism`). The image decoded from z~ = A a~ + r (or A a~ + r~) with a fresh x_T is
post-processing of the release.

**Neighbouring relation and bound.** `scope="attributes"`: *attribute-neighbours*, two inputs whose latents
differ only in the protected coordinates (same r), i.e. anywhere inside span(A). Any orthonormal basis of that
subspace works; the pipeline's is the QR of the protected attributes' own raw directions in the order named
(`dpdiffusion.models.attribute_directions`), so each named direction lies wholly in span(A). Each clipped coordinate moves by at most Delta_i = 2 C_i, so the
whitened difference (a_c - a_c') / sigma has L2 norm at most sqrt(sum_i (2 C_i / sigma_i)^2). `scope="latent"`:
any two images; the residual additionally moves by at most Delta_r = 2 C_r in L2 inside the range of P, where the
noise is isotropic.

**Calibration** (`calibrate`, in `dpdiffusion.privacy.calibration`). With weights w_i > 0 (and w_r for the residual), W = sum of all weights and
m = `gaussian_sigma(epsilon, delta)` (unit sensitivity, Balle & Wang 2018 Theorem 8), rho = 1 / (2 m^2) and

    rho_i = (w_i / W) rho,        sigma_i = Delta_i / sqrt(2 rho_i) = 2 C_i m sqrt(W / w_i).

Then sum_i (Delta_i / sigma_i)^2 (+ (Delta_r / sigma_r)^2) = sum_i w_i / (W m^2) = 1 / m^2: after whitening, the
release is *one* Gaussian mechanism with L2 sensitivity 1 and noise multiplier m, hence (epsilon, delta)-DP for the
relation above (Balle & Wang 2018 Theorem 8; equivalently (1/m)-GDP, Dong, Roth & Su 2019, and rho-zCDP, Bun &
Steinke 2016 Proposition 1.6 with Lemma 1.7 for the split). Sigmas are rounded up (relative 1e-14, and again to the
next representable value when cast to the tensor dtype) so that rounding never weakens the guarantee.

**What is protected.** Inference about the clipped protected coordinates of one input (e.g. "does this face have
dark skin"), to the extent the attribute lives in those coordinates. **What is not protected.** The residual r
(identity, pose, expression) with `scope="attributes"`; information about the attribute that leaks into r because
the probe direction is imperfect; the input's membership in a dataset; anything about x_T when the stochastic code
is a DDIM inversion of the input (`stochastic_code="inverted"`, guarantee "heuristic"); anything at all when the
noise was drawn from a seeded generator (`secure_mode=False`, guarantee "none (reproducible noise)"): whoever knows
the seed subtracts the noise. The guarantee is for the ideal real-valued Gaussian mechanism; the noise is drawn in
float64 from the OS CSPRNG and rounded to the tensor's dtype, which is not a proof against floating-point attacks
(Mironov 2012; see `dpdiffusion.privacy.noise`).

**Noise source.** The OS CSPRNG by default (`secure_mode=True`); `secure_mode=False` uses the caller's generator
(reproducible, a test/research mode, `dpdiffusion.privacy.noise`).

**Off switch.** epsilon = inf gives m = 0 and all sigmas 0; the mechanism is then *off*: the input is returned
bit for bit (no clipping), and no random numbers are drawn.

**Diffusion view** (`dpdiffusion.privacy.strength`). The forward process q(a_t | a_0) = N(sqrt(abar_t) a_0, (1 - abar_t) I) rescaled by
1 / sqrt(abar_t) is a_0 + N(0, (1 - abar_t) / abar_t): a noise multiplier m is the diffusion time where
abar_t = 1 / (1 + m^2). `strength_to_noise_multiplier` and `noise_multiplier_to_strength` map between m and a
strength in [0, 1] on a scheduler's `alphas_cumprod`. The noise added is always exactly sigma_i; the strength is
only the equivalent diffusion time, reported next to epsilon.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

# The layers below the mechanism, re-exported here where they lived before (public names unchanged).
from .calibration import (  # noqa: F401
    NoiseCalibration,
    _positive_float,
    _positive_floats,
    _real_float,
    calibrate,
    calibrate_from_noise_multiplier,
)
from .clipping import _bounds_tensor, _check_float_tensor, clip_coordinates, clip_l2  # noqa: F401
from .noise import InsecurePRNGWarning, _std_tensor, gaussian_noise_like  # noqa: F401
from .strength import noise_multiplier_to_strength, strength_to_noise_multiplier  # noqa: F401

__all__ = [
    "InsecurePRNGWarning",
    "NoiseCalibration",
    "apply_residual_mechanism",
    "apply_weighted_gaussian_mechanism",
    "calibrate",
    "calibrate_from_noise_multiplier",
    "clip_coordinates",
    "clip_l2",
    "gaussian_noise_like",
    "noise_multiplier_to_strength",
    "postprocess_to_bounds",
    "strength_to_noise_multiplier",
]


def apply_weighted_gaussian_mechanism(
    a: torch.Tensor,
    *,
    clip_bounds: Sequence[float],
    sigmas: Sequence[float],
    generator: Optional[torch.Generator] = None,
    secure_mode: bool = True,
) -> torch.Tensor:
    r"""Release a~_i = clip(a_i, -C_i, C_i) + N(0, sigma_i^2) for the protected coordinates (module docstring).

    If every sigma is 0 (epsilon = inf) the mechanism is off: a copy of `a`, bit for bit, is returned (no
    clipping) and nothing is drawn from `generator`. Sigmas must otherwise all be > 0 (a zero sigma on a
    coordinate would release it exactly).

    Args:
        a (`torch.Tensor`): (B, k) protected coordinates (any leading shape (..., k) works).
        clip_bounds (`Sequence[float]`): k public bounds C_i > 0.
        sigmas (`Sequence[float]`): k noise standard deviations, e.g. `NoiseCalibration.sigmas`.
        generator (`torch.Generator`, *optional*): randomness when `secure_mode=False`.
        secure_mode (`bool`, *optional*, defaults to `True`): draw from the OS CSPRNG; `False` only for
            reproducible (non-private) noise from `generator`.

    Returns:
        `torch.Tensor`: (..., k), same dtype and device as `a`.

    Raises:
        ValueError: if shapes or values are invalid.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import apply_weighted_gaussian_mechanism
    >>> a = torch.tensor([[5.0, -0.1]])
    >>> out = apply_weighted_gaussian_mechanism(a, clip_bounds=[1.0, 1.0], sigmas=[0.0, 0.0])
    >>> torch.equal(out, a)
    True

    ```
    """
    _check_float_tensor("a", a)
    sigmas_f = tuple(float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas))
    if len(sigmas_f) != a.shape[-1]:
        raise ValueError(f"sigmas must have one entry per coordinate ({a.shape[-1]}), got {len(sigmas_f)}")
    if not all(0.0 <= s < math.inf for s in sigmas_f):
        raise ValueError(f"sigmas must be finite and >= 0, got sigmas={sigmas_f}")
    bounds = _bounds_tensor(clip_bounds, a)
    if all(s == 0.0 for s in sigmas_f):
        return a.clone()  # mechanism off (epsilon = inf): bit for bit, no clipping, nothing drawn
    if any(s == 0.0 for s in sigmas_f):
        raise ValueError(f"sigmas must be all 0 (mechanism off) or all > 0, got sigmas={sigmas_f}")
    clipped = torch.maximum(torch.minimum(a, bounds), -bounds)  # (..., k)
    return clipped + gaussian_noise_like(clipped, sigmas_f, generator=generator, secure_mode=secure_mode)


def _check_basis(basis: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(basis, torch.Tensor) or basis.ndim != 2 or basis.shape[0] != like.shape[-1]:
        raise ValueError(
            f"protected_basis must be a (d, k) tensor with d={like.shape[-1]}, got "
            f"{tuple(basis.shape) if isinstance(basis, torch.Tensor) else type(basis).__name__}"
        )
    basis = basis.to(device=like.device, dtype=like.dtype)
    k = basis.shape[1]
    gram = (basis.T.to(torch.float64) @ basis.to(torch.float64)).cpu()
    tol = 1000.0 * torch.finfo(like.dtype).eps * max(1, k)
    if (gram - torch.eye(k, dtype=torch.float64)).abs().max() > tol:
        raise ValueError("protected_basis must have orthonormal columns (A^T A = I)")
    return basis


def apply_residual_mechanism(
    r: torch.Tensor,
    *,
    clip_bound: float,
    sigma: float,
    protected_basis: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    secure_mode: bool = True,
) -> torch.Tensor:
    r"""Release r~ = clip_l2(P r, C_r) + P n, n ~ N(0, sigma^2 I), P = I - A A^T (scope "latent").

    `r` is first projected onto the orthogonal complement of the protected directions A (a no-op up to rounding
    for the residual of `AttributeDirections.project`), so that the released residual lives where the noise is
    isotropic; sensitivity 2 C_r in L2. Without `protected_basis`, P = I. If `sigma` is 0 (epsilon = inf) the
    mechanism is off and a copy of `r` is returned bit for bit.

    Args:
        r (`torch.Tensor`): (B, d) residuals.
        clip_bound (`float`): public L2 bound C_r > 0.
        sigma (`float`): noise standard deviation, e.g. `NoiseCalibration.residual_sigma`.
        protected_basis (`torch.Tensor`, *optional*): (d, k) orthonormal protected directions A.
        generator (`torch.Generator`, *optional*): randomness when `secure_mode=False`.
        secure_mode (`bool`, *optional*, defaults to `True`): draw from the OS CSPRNG; `False` only for
            reproducible (non-private) noise from `generator`.

    Returns:
        `torch.Tensor`: (B, d), same dtype and device as `r`.

    Raises:
        ValueError: if shapes or values are invalid.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import apply_residual_mechanism
    >>> r = torch.tensor([[0.0, 3.0, 4.0]])
    >>> out = apply_residual_mechanism(r, clip_bound=1.0, sigma=0.0)
    >>> torch.equal(out, r)
    True

    ```
    """
    _check_float_tensor("r", r)
    clip_bound = _positive_float("clip_bound", clip_bound)
    sigma = float(sigma)
    if not 0.0 <= sigma < math.inf:
        raise ValueError(f"sigma must be finite and >= 0, got sigma={sigma}")
    basis = _check_basis(protected_basis, r) if protected_basis is not None else None
    if sigma == 0.0:
        return r.clone()  # mechanism off
    if basis is not None:
        r = r - (r @ basis) @ basis.T  # (B, d), onto the complement
    clipped = clip_l2(r, clip_bound)  # (B, d)
    noise = gaussian_noise_like(clipped, sigma, generator=generator, secure_mode=secure_mode)  # (B, d)
    if basis is not None:
        noise = noise - (noise @ basis) @ basis.T
    return clipped + noise


def postprocess_to_bounds(a_noisy: torch.Tensor, clip_bounds) -> torch.Tensor:
    r"""Clamp released coordinates back into the public range [-C_i, C_i] (post-processing, no privacy cost).

    The noise needed at small epsilon is many times the clip bound, so a~ alone would lie far outside the latent
    distribution the decoder was trained on. Mapping a~ to clip(a~, -C, C) uses only the released value and public
    bounds, so by the post-processing property of differential privacy (Dwork & Roth 2014, Proposition 2.1) the
    (epsilon, delta) guarantee of the release is unchanged. Large noise then yields a confidently drawn but random
    attribute instead of an off-distribution latent.

    Args:
        a_noisy (`torch.Tensor`): (..., k) released coordinates.
        clip_bounds (`Sequence[float]`): the k public bounds C_i.

    Returns:
        `torch.Tensor`: (..., k), same dtype and device.

    Example:

    ```py
    >>> import torch
    >>> from dpdiffusion.privacy.mechanism import postprocess_to_bounds
    >>> postprocess_to_bounds(torch.tensor([[12.0, -0.5]]), [1.0, 2.0])
    tensor([[ 1.0000, -0.5000]])

    ```
    """
    return clip_coordinates(a_noisy, clip_bounds)
