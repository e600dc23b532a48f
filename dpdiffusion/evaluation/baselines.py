r"""Protection methods compared in the paper's experiments, each with its neighbouring relation stated.

All methods map images ``(N, 3, H, W)`` in [0, 1] to protected images of the same shape in [0, 1], rounded to 8 bits
(what a release writes to disk). Formal methods take ``(epsilon, delta)``; obfuscations take a strength parameter and
are compared at *matched image quality* (`match_quality`: by default the Frechet distance in the features of the
run's clean attribute classifier; PSNR cannot be matched when the diffusion release redraws background and pose).

| method            | released                                   | neighbouring relation                             |
|-------------------|--------------------------------------------|---------------------------------------------------|
| ``dpdiffusion``   | decode(A (clip(a) + N(0, s^2)) + r)        | attribute-neighbours (same residual r)            |
| ``latent``        | decode(z with a and r clipped and noised)  | any two images (image-level, in the latent)       |
| ``dp_pix``        | b x b cell means + Laplace(255 m c/(b^2 e))| images differing in at most m pixels (Fan 2018)   |
| ``dp_pix_attribute`` | the same with m covering an attribute flip | images differing in at most m pixels, m large   |
| ``pixel_gaussian``| clip(x + N(0, s^2 I), 0, 1)                | images at L2 distance <= Delta in [0, 1] pixels   |
| ``blur``          | Gaussian blur                              | none (no guarantee)                               |
| ``pixelate``      | b x b cell means                           | none (no guarantee)                               |

**DP-Pix** (Fan, "Image pixelization with differential privacy", DBSec 2018, Section 3 and Theorem 1): the image is
pixelised into cells of ``b x b`` pixels and Laplace noise is added to each cell mean. Two images are m-neighbours
when they differ in at most ``m`` pixels. A pixel value lies in [0, 255], so changing m pixels moves the vector of
cell means by at most ``255 m / b^2`` in L1 (all m pixels in one cell); for RGB images a changed pixel can move its
3 channels, so the L1 sensitivity is ``255 m c / b^2`` with ``c = 3``. The Laplace scale is sensitivity / epsilon
(`dp_pix_laplace_scale`); the release is (epsilon, 0)-DP for m-neighbours, hence (epsilon, delta)-DP for any delta.
``dp_pix`` uses m = 1 (the weakest relation, the least noise: the setting most favourable to DP-Pix, which then
protects single pixels, not the attributes). ``dp_pix_attribute`` uses the m that covers flipping the protected
attributes: the 95 % quantile of the number of pixels that differ between SynthFaces faces and their counterfactuals
(`counterfactual_pixel_count`), the relation comparable to attribute-neighbours.

**Pixel-space Gaussian**: ``x + N(0, sigma^2 I)`` with ``sigma = gaussian_sigma(epsilon, delta, sensitivity=Delta)``
(analytic Gaussian mechanism, Balle & Wang 2018), then clipping to [0, 1] (post-processing). The relation is "two
images at L2 distance at most Delta" (pixels in [0, 1]). By default Delta is the 95 % quantile of the L2 distance
between SynthFaces faces and their counterfactuals with every protected attribute flipped
(`counterfactual_l2_sensitivity`): the pixel-space analogue of attribute-neighbours, public and fixed before use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..privacy.accounting import gaussian_sigma
from .quality import psnr

logger = logging.getLogger(__name__)

__all__ = [
    "DP_METHODS",
    "OBFUSCATIONS",
    "ALL_METHODS",
    "ProtectionMethod",
    "DiffusionMethod",
    "DPPixMethod",
    "PixelGaussianMethod",
    "BlurMethod",
    "PixelateMethod",
    "dp_pix_laplace_scale",
    "dp_pix",
    "pixel_gaussian_sigma",
    "pixel_gaussian",
    "pixelate",
    "gaussian_blur",
    "counterfactual_l2_sensitivity",
    "counterfactual_pixel_count",
    "match_psnr",
    "match_quality",
    "QualityMatch",
    "match_obfuscation",
    "quantize",
    "laplace_noise",
]

DP_METHODS = ("dpdiffusion", "latent", "dp_pix", "dp_pix_attribute", "pixel_gaussian")
OBFUSCATIONS = ("blur", "pixelate")
ALL_METHODS = DP_METHODS + OBFUSCATIONS


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be > 0 (inf allowed), got epsilon={epsilon!r}")
    return float(epsilon)


def _check_images(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got "
                         f"{getattr(x, 'shape', type(x))}")
    return x


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round images in [0, 1] to 8-bit levels (what a released PNG holds)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def laplace_noise(shape, scale: float, *, generator: torch.Generator | None = None,
                  dtype=torch.float64) -> torch.Tensor:
    """Laplace(0, scale) noise by inverse CDF from ``torch.rand`` (reproducible from ``generator``)."""
    u = torch.rand(shape, generator=generator, dtype=dtype) - 0.5  # U(-1/2, 1/2)
    return -scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())


# ---------------------------------------------------------------------------------------------------------------
# Pure mechanisms
# ---------------------------------------------------------------------------------------------------------------


def dp_pix_laplace_scale(*, epsilon: float, cell_size: int, m: int = 1, channels: int = 1) -> float:
    """Laplace scale of DP-Pix: L1 sensitivity ``255 m channels / cell_size^2`` over epsilon (Fan 2018, Thm. 1).

    Example:
    ```py
    >>> dp_pix_laplace_scale(epsilon=1.0, cell_size=4, m=16)  # 255 * 16 / (16 * 1)
    255.0

    ```
    """
    epsilon = _check_epsilon(epsilon)
    if int(cell_size) != cell_size or cell_size < 1:
        raise ValueError(f"cell_size must be an integer >= 1, got cell_size={cell_size!r}")
    if int(m) != m or m < 1:
        raise ValueError(f"m must be an integer >= 1, got m={m!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got channels={channels!r}")
    return 0.0 if math.isinf(epsilon) else 255.0 * m * channels / (cell_size**2 * epsilon)


def pixelate(x: torch.Tensor, cell_size: int) -> torch.Tensor:
    """Replace each ``cell_size x cell_size`` cell by its mean (edge cells of a non-divisible size are smaller)."""
    _check_images(x)
    if cell_size <= 1:
        return x.clone()
    means = F.avg_pool2d(x, cell_size, stride=cell_size, ceil_mode=True, count_include_pad=False)
    return means.repeat_interleave(cell_size, 2).repeat_interleave(cell_size, 3)[..., : x.shape[2], : x.shape[3]]


def dp_pix(x: torch.Tensor, *, epsilon: float, cell_size: int = 4, m: int = 1,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """DP-Pix on images ``(N, 3, H, W)`` in [0, 1]: cell means on the 0..255 scale plus Laplace noise, clipped.

    Returns images in [0, 1] (not yet quantised); (epsilon, 0)-DP for m-neighbours (see the module docstring).
    """
    _check_images(x)
    scale = dp_pix_laplace_scale(epsilon=epsilon, cell_size=cell_size, m=m, channels=3)
    means = F.avg_pool2d(x.double() * 255.0, cell_size, stride=cell_size, ceil_mode=True, count_include_pad=False)
    if scale > 0:
        means = means + laplace_noise(means.shape, scale, generator=generator)
    means = means.clamp(0, 255) / 255.0
    out = means.repeat_interleave(cell_size, 2).repeat_interleave(cell_size, 3)[..., : x.shape[2], : x.shape[3]]
    return out.to(x.dtype)


def pixel_gaussian_sigma(*, epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """Noise std of the pixel-space Gaussian mechanism: ``gaussian_sigma(epsilon, delta, sensitivity=Delta)``."""
    epsilon = _check_epsilon(epsilon)
    if math.isinf(epsilon):
        return 0.0
    return gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=l2_sensitivity)


def pixel_gaussian(x: torch.Tensor, *, epsilon: float, delta: float, l2_sensitivity: float,
                   generator: torch.Generator | None = None, clip: bool = True) -> torch.Tensor:
    """``clip(x + N(0, sigma^2 I), 0, 1)`` with ``sigma = pixel_gaussian_sigma(...)``; pixels in [0, 1]."""
    _check_images(x)
    sigma = pixel_gaussian_sigma(epsilon=epsilon, delta=delta, l2_sensitivity=l2_sensitivity)
    if sigma == 0:
        return x.clone()
    y = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return y.clamp(0, 1) if clip else y


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels (reflect padding; ``sigma=0``: identity)."""
    _check_images(x)
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def counterfactual_l2_sensitivity(attributes: Sequence[str], *, image_size: int = 32, num_images: int = 1000,
                                  quantile: float = 0.95, seed: int = 4242) -> float:
    """The ``quantile`` of ``||x - x'||_2`` (pixels in [0, 1]) over SynthFaces faces x and their counterfactuals x'
    with every attribute in ``attributes`` flipped; a public constant (its own seed, never the evaluated images)."""
    from ..data.synthfaces import counterfactual_params, make_synthfaces_arrays, render_faces

    images, params = make_synthfaces_arrays(num_images, image_size=image_size, seed=seed)
    flipped = params
    for a in attributes:
        flipped = counterfactual_params(flipped, a)
    other = render_faces(flipped, image_size=image_size)
    diff = (images.astype(np.float64) - other.astype(np.float64)) / 255.0
    dist = np.linalg.norm(diff.reshape(num_images, -1), axis=1)
    return float(np.quantile(dist, quantile))


def counterfactual_pixel_count(attributes: Sequence[str], *, image_size: int = 32, num_images: int = 1000,
                               quantile: float = 0.95, seed: int = 4242) -> int:
    """The ``quantile`` of the number of pixels (RGB triples) that differ between SynthFaces faces and their
    counterfactuals with every attribute in ``attributes`` flipped: DP-Pix's m for an attribute-level relation."""
    from ..data.synthfaces import counterfactual_params, make_synthfaces_arrays, render_faces

    images, params = make_synthfaces_arrays(num_images, image_size=image_size, seed=seed)
    flipped = params
    for a in attributes:
        flipped = counterfactual_params(flipped, a)
    other = render_faces(flipped, image_size=image_size)
    changed = (images != other).any(axis=-1).reshape(num_images, -1).sum(1)
    return max(1, int(np.ceil(np.quantile(changed, quantile))))


def _obfuscation(method: str):
    if method == "blur":
        return gaussian_blur, [0.25 * i for i in range(1, 25)]
    if method == "pixelate":
        return (lambda x, p: pixelate(x, int(p))), None
    raise ValueError(f"method must be 'blur' or 'pixelate', got method={method!r}")


def match_quality(images: torch.Tensor, target: float, method: str, *, metric: str = "psnr",
                  feature_fn=None, reference_features=None, candidates: Sequence[float] | None = None
                  ) -> tuple[float, float]:
    """The strength of ``method`` (``"blur"``: sigma in pixels; ``"pixelate"``: cell size) whose quality on
    ``images`` is closest to ``target``. Returns ``(parameter, achieved value)``; the nearest setting may leave the
    images unchanged (pixelate's cell size 1): `match_obfuscation` says when no setting matches.

    Args:
        metric (`str`): ``"psnr"`` (mean PSNR in dB against ``images``) or ``"fd"`` (Frechet distance of
            ``feature_fn`` features of the obfuscated images to ``reference_features``; needs both).
    """
    best = _nearest_setting(images, target, method, metric=metric, feature_fn=feature_fn,
                            reference_features=reference_features, candidates=candidates)
    return best[0], best[1]


def _nearest_setting(images, target, method, *, metric, feature_fn, reference_features, candidates):
    """``(parameter, achieved value, released images)`` of the candidate closest to ``target``."""
    fn, default = _obfuscation(method)
    candidates = candidates or default or list(range(1, max(2, images.shape[-1] // 2) + 1))
    if metric == "psnr":
        def measure(x):
            return float(psnr(x, images).mean())
    elif metric == "fd":
        if feature_fn is None or reference_features is None:
            raise ValueError("metric='fd' needs feature_fn and reference_features")
        from .quality import feature_frechet_distance

        def measure(x):
            return feature_frechet_distance(feature_fn(x), reference_features)
    else:
        raise ValueError(f"metric must be 'psnr' or 'fd', got metric={metric!r}")
    best = None
    for p in candidates:
        released = quantize(fn(images, p))
        value = measure(released)
        if best is None or abs(value - target) < abs(best[1] - target):
            best = (float(p), value, released)
    return best


_PARAMETER_NAMES = {"blur": "sigma", "pixelate": "cell size"}


@dataclass(frozen=True)
class QualityMatch:
    """An obfuscation's strength matched to a target image quality, or the statement that no setting matches.

    Attributes:
        method (`str`): ``"blur"`` or ``"pixelate"``.
        metric (`str`): ``"psnr"`` or ``"fd"``.
        target (`float`): the quality to match (e.g. dpdiffusion's at one epsilon).
        parameter (`float` or `None`): the matched strength; `None` when no setting matches.
        achieved (`float`): the quality of the nearest setting (of the matched one when there is one).
        nearest_parameter (`float`): the nearest setting, matched or not.
        reason (`str` or `None`): why no setting matches.
    """

    method: str
    metric: str
    target: float
    parameter: float | None
    achieved: float
    nearest_parameter: float
    reason: str | None = None

    @property
    def matched(self) -> bool:
        return self.parameter is not None


def match_obfuscation(images: torch.Tensor, target: float, method: str, *, metric: str = "psnr", feature_fn=None,
                      reference_features=None, candidates: Sequence[float] | None = None) -> QualityMatch:
    """`match_quality`, with the case it cannot handle said out loud: when the setting nearest to ``target`` leaves
    the released (8-bit) images identical to ``images`` (pixelate with cell size 1, a blur too small to change a
    pixel level), every setting that does anything is further from the target, so *no setting matches*; the result
    then has ``parameter=None`` and a ``reason``, and must not be listed as a protection (it would be the clean
    images under the method's name).

    Args: as `match_quality`.

    Returns:
        `QualityMatch`.

    Raises:
        ValueError: for an unknown ``method`` or ``metric``, or ``metric="fd"`` without its features.
    """
    param, achieved, released = _nearest_setting(images, target, method, metric=metric, feature_fn=feature_fn,
                                                 reference_features=reference_features, candidates=candidates)
    if torch.equal(released, quantize(images)):
        name = _PARAMETER_NAMES[method]
        unit = "dB PSNR" if metric == "psnr" else "FD"
        reason = (f"no {method} setting matches: the nearest ({name} {param:g}, {achieved:.3g} {unit} against the "
                  f"target {target:.3g}) leaves the images unchanged, and every {name} that changes them is further "
                  f"from the target")
        return QualityMatch(method, metric, float(target), None, achieved, param, reason)
    return QualityMatch(method, metric, float(target), param, achieved, param)


def match_psnr(images: torch.Tensor, target_psnr_db: float, method: str, *, candidates: Sequence[float] | None = None
               ) -> tuple[float, float]:
    """``match_quality(..., metric="psnr")``: the strength whose mean PSNR is closest to ``target_psnr_db``."""
    return match_quality(images, target_psnr_db, method, metric="psnr", candidates=candidates)


# ---------------------------------------------------------------------------------------------------------------
# Method objects used by the experiments
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ProtectionMethod:
    """A protection method: ``protect(images, epsilon=..., generator=...)`` and ``describe(epsilon)``."""

    name: str
    neighbouring_relation: str
    formal: bool = True
    parameters: dict = field(default_factory=dict)

    def describe(self, epsilon: float) -> dict:
        """The method at ``epsilon``: its guarantee is ``"formal"`` only for a formal method at a finite epsilon;
        epsilon = inf adds no noise and is ``"none (epsilon = inf)"``, as `dpdiffusion.privacy.spec.guarantee_of`
        labels the pipeline's releases."""
        if not self.formal:
            guarantee = "none"
        else:
            guarantee = "none (epsilon = inf)" if math.isinf(epsilon) else "formal"
        return {"method": self.name, "epsilon": epsilon if self.formal else None,
                "guarantee": guarantee,
                "neighbouring_relation": self.neighbouring_relation, "parameters": dict(self.parameters)}

    def protect(self, images: torch.Tensor, *, epsilon: float, generator: torch.Generator | None = None,
                progress: bool = False) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class DPPixMethod(ProtectionMethod):
    cell_size: int = 4
    m: int = 1

    def __post_init__(self):
        self.parameters = {"cell_size": self.cell_size, "m": self.m,
                           "l1_sensitivity_0_255": 255.0 * self.m * 3 / self.cell_size**2}

    def describe(self, epsilon: float) -> dict:
        out = super().describe(epsilon)
        out["delta"] = 0.0
        if not math.isinf(epsilon):
            out["parameters"]["laplace_scale_0_255"] = dp_pix_laplace_scale(
                epsilon=epsilon, cell_size=self.cell_size, m=self.m, channels=3)
        return out

    def protect(self, images, *, epsilon, generator=None, progress=False):
        return quantize(dp_pix(images, epsilon=epsilon, cell_size=self.cell_size, m=self.m, generator=generator))


@dataclass
class PixelGaussianMethod(ProtectionMethod):
    l2_sensitivity: float = 1.0
    delta: float = 1e-5

    def __post_init__(self):
        self.parameters = {"l2_sensitivity": self.l2_sensitivity, "delta": self.delta}

    def describe(self, epsilon: float) -> dict:
        out = super().describe(epsilon)
        out["delta"] = self.delta
        out["parameters"]["noise_std"] = pixel_gaussian_sigma(epsilon=epsilon, delta=self.delta,
                                                              l2_sensitivity=self.l2_sensitivity)
        return out

    def protect(self, images, *, epsilon, generator=None, progress=False):
        return quantize(pixel_gaussian(images, epsilon=epsilon, delta=self.delta,
                                       l2_sensitivity=self.l2_sensitivity, generator=generator))


@dataclass
class BlurMethod(ProtectionMethod):
    sigma: float = 1.0

    def protect(self, images, *, epsilon=math.inf, generator=None, progress=False):
        return quantize(gaussian_blur(images, self.sigma))


@dataclass
class PixelateMethod(ProtectionMethod):
    cell_size: int = 4

    def protect(self, images, *, epsilon=math.inf, generator=None, progress=False):
        return quantize(pixelate(images, int(self.cell_size)))


class DiffusionMethod(ProtectionMethod):
    """``DPDiffusionPipeline`` as a protection method: encode, ``apply_privacy_noise``, decode with a random x_T.

    The generator draws x_T; the privacy noise comes from the OS CSPRNG as in a default release (``secure_mode=False``
    draws it from the generator after x_T, in the order ``DPDiffusionPipeline.__call__`` uses: for tests).
    """

    def __init__(self, pipe, *, name: str = "dpdiffusion", scope: str = "attributes",
                 attributes: Sequence[str] = ("dark_skin", "long_hair"), delta: float = 1e-5,
                 num_inference_steps: int = 10, batch_size: int = 128, secure_mode: bool = True,
                 post_processing: str | None = None):
        spec = pipe.privacy_spec(attributes=list(attributes), epsilon=1.0, delta=delta, scope=scope,
                                 secure_mode=secure_mode)
        relation = pipe.report_for(spec).neighbouring_relation
        super().__init__(name=name, neighbouring_relation=relation, formal=True,
                         parameters={"scope": scope, "attributes": list(attributes), "delta": delta,
                                     "num_inference_steps": num_inference_steps, "stochastic_code": "random",
                                     "noise_source": spec.noise_source,
                                     "post_processing": pipe._check_post_processing(post_processing, spec)})
        self.pipe, self.scope, self.attributes, self.delta = pipe, scope, list(attributes), delta
        self.num_inference_steps, self.batch_size, self.secure_mode = num_inference_steps, batch_size, secure_mode
        self.post_processing = post_processing  # None: the pipeline's default ("clip")

    def describe(self, epsilon: float) -> dict:
        out = super().describe(epsilon)
        report = self.pipe.report_for(self.pipe.privacy_spec(attributes=self.attributes, epsilon=epsilon,
                                                             delta=self.delta, scope=self.scope,
                                                             secure_mode=self.secure_mode))
        out.update(delta=report.delta, guarantee=report.guarantee)
        out["parameters"].update(noise_multiplier=report.noise_multiplier, sigmas=report.sigmas,
                                 residual_sigma=report.residual_sigma, strength=report.strength)
        return out

    @torch.no_grad()
    def protect(self, images, *, epsilon, generator=None, progress=False):
        from tqdm.auto import tqdm

        _check_images(images)
        pipe, out = self.pipe, []
        size = pipe.image_size
        bar = tqdm(total=len(images), desc=f"{self.name} eps={epsilon:g}", disable=not progress, leave=False)
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size]
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = x.to(pipe.device, pipe.unet.dtype) * 2 - 1  # (B, 3, H, W) in [-1, 1]
            z = pipe.encode_tensor(x)
            x_t = torch.randn(x.shape, generator=generator).to(pipe.device, pipe.unet.dtype)
            z_noisy, _ = pipe.apply_privacy_noise(z, attributes=self.attributes, epsilon=epsilon, delta=self.delta,
                                                  scope=self.scope, generator=generator, secure_mode=self.secure_mode,
                                                  post_processing=self.post_processing)
            img = pipe.decode(z_noisy, stochastic_code=x_t, num_inference_steps=self.num_inference_steps,
                              output_type="pt", progress=False)
            out.append(quantize(img.float().cpu()))
            bar.update(len(x))
        bar.close()
        return torch.cat(out)
