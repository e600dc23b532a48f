"""``DPDiffusionPipeline``: differentially private release of faces through a diffusion autoencoder.

What is released for each input image ``x``: a decoded image ``x~ = Dec(z~, x_T)`` with ``z~ = A_S a~ + r`` where
``a = A_S^T (Enc(x) - c)`` are the protected attribute coordinates, ``a~_i = clip(a_i, -C_i, C_i) + N(0, sigma_i^2)``,
and ``r`` is the residual (identity, pose, expression, ...). ``A_S`` is the QR of the named attributes' own raw
directions in the order named (``AttributeDirections``), so each named direction lies wholly in the noised subspace. With ``stochastic_code="random"`` the code ``x_T`` is drawn
independently of ``x``, so ``x~`` is post-processing of ``(a~, r)`` and the whole release is
(epsilon, delta)-DP for *attribute-neighbours* (two images whose latents differ only in the protected coordinates);
see ``dpdiffusion.privacy.mechanism`` for the statement, the calibration and what is not protected. With
``scope="latent"`` the residual is clipped and noised too, which covers any two images (image-level DP in the latent).
With ``stochastic_code="inverted"`` ``x_T`` comes from DDIM inversion of ``x`` and the output says
``guarantee="heuristic"``: ``x_T`` carries information about ``x`` that the accountant does not cover.

Noise source: the privacy noise comes from the OS CSPRNG unless the caller passes ``secure_mode=False``; then the
``generator`` drives the privacy noise too (reproducible, for tests and research), and every output says
``noise_source="seeded"`` and ``guarantee="none (reproducible noise)"``: whoever knows the seed can subtract the noise.
The stochastic code ``x_T`` always follows the ``generator`` (it is not privacy noise).

The pipeline is plumbing: it never derives a privacy number itself; all of them come from ``dpdiffusion.privacy``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .data.images import check_input_range, images_to_tensor
from .models.attribute_directions import AttributeDirections
from .models.diffae import ddim_invert
from .models.diffae_encoder import DiffAESemanticEncoder
from .models.diffae_unet import DiffAEUNet2DModel
from .models.semantic_encoder import SemanticEncoder
from .models.steps import resolve_num_inference_steps
from .models.training_domain import TrainingDomain, check_photo_domain
from .pipeline_hub import CUSTOM_PIPELINE_FILE, CUSTOM_PIPELINE_NAME, PipelineHubMixin  # noqa: F401
from .pipeline_hub import _download_repo, _from_hub_folder, check_safetensors_weights
from .pipeline_outputs import DPDiffusionPipelineOutput, PrivacyReport
from .pipeline_sampling import (DEFAULT_GUIDANCE_SCALE, DEFAULT_INVERSION_STEPS,  # noqa: F401
                                DEFAULT_NUM_INFERENCE_STEPS, DDIMSamplingMixin)
from .privacy import mechanism
from .privacy.accounting import gaussian_epsilon
from .privacy.postprocess import posterior_mean
from .privacy.spec import PrivacySpec
from .utils_deprecation import renamed_argument

logger = logging.getLogger(__name__)

DEFAULT_PROTECTED = ("dark_skin", "long_hair")


class DPDiffusionPipeline(DDIMSamplingMixin, PipelineHubMixin, DiffusionPipeline):
    r"""Protect sensitive attributes of face images with calibrated noise in a diffusion autoencoder's latent.

    Args:
        unet (`UNet2DModel` or `DiffAEUNet2DModel`): the conditional decoder (``class_embed_type="identity"``), or the
            official DiffAE architecture (converted by ``scripts/convert_diffae_checkpoint.py``), which decodes and
            inverts with the official sampler (``dpdiffusion.models.diffae_sampler``).
        encoder (`SemanticEncoder` or `DiffAESemanticEncoder`): ``x -> z`` and ``z -> condition``.
        scheduler (`DDIMScheduler`): the noise schedule; decoding and inversion share its grid.
        attribute_directions (`AttributeDirections`): directions, centre and public clip bounds.
        training_domain (`dict` or `TrainingDomain`, *optional*): what the model was trained on (name, resolution,
            synthetic, description; ``dpdiffusion.models.training_domain``), saved in ``model_index.json`` and read
            back by ``from_pretrained``; `None` (a folder that does not declare it) reads as ``"unknown"``. A
            synthetic domain makes ``faces="detect"`` refuse photos unless ``allow_domain_mismatch=True``.
    """

    model_cpu_offload_seq = "encoder->unet"

    def __init__(self, unet: UNet2DModel | DiffAEUNet2DModel, encoder: SemanticEncoder | DiffAESemanticEncoder,
                 scheduler: DDIMScheduler, attribute_directions: AttributeDirections,
                 training_domain: dict | TrainingDomain | None = None):
        super().__init__()
        self.register_modules(unet=unet, encoder=encoder, scheduler=scheduler,
                              attribute_directions=attribute_directions)
        declared = None if training_domain is None else TrainingDomain.from_config(training_domain).to_dict()
        self.register_to_config(training_domain=declared)  # model_index.json; None: not declared ("unknown")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``DiffusionPipeline.from_pretrained`` that loads safetensors weights only unless told otherwise.

        Pickled ``.bin`` weights can execute code when loaded; pass ``use_safetensors=False`` explicitly to allow
        them for a checkpoint you trust. A folder (or Hub repository) that holds only ``.bin`` weights is refused by
        default with an ``OSError`` that names the component, its ``.bin`` files and ``use_safetensors=False``.

        A Hub repo id is fetched with ``huggingface_hub.snapshot_download`` (configs, safetensors weights, the
        component files) and loaded from there: diffusers' own download refuses components of libraries other than
        diffusers/transformers. The components of a repository written by `push_to_hub` are this package's classes
        (their files there only re-export them), so they load without remote code.
        """
        kwargs.setdefault("use_safetensors", True)
        path = pretrained_model_name_or_path
        downloaded = not os.path.isdir(str(path))
        if downloaded:  # a Hub repo id: fetch the repository's files, then load them locally
            path = _download_repo(str(path), kwargs)
        check_safetensors_weights(Path(path), kwargs, downloaded=downloaded)  # a .bin only: say so, and how to load
        pipe = _from_hub_folder(cls, Path(path), kwargs)
        if pipe is not None:
            return pipe
        return super().from_pretrained(path, **kwargs)

    # ------------------------------------------------------------------ stages (public)
    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def training_domain(self) -> TrainingDomain:
        """What the model was trained on (``name``, ``resolution``, ``synthetic``, ``description``), as its
        ``model_index.json`` declares it; ``name="unknown"`` for a folder that does not."""
        return TrainingDomain.from_config(self.config.get("training_domain"))

    def preprocess(self, image: Any = None, *, input_range=(0.0, 1.0), **kwargs) -> torch.Tensor:
        """Any supported image input -> ``(B, 3, H, W)`` in [-1, 1] at the model's resolution, on the pipeline's
        device and dtype.

        Args:
            image: what diffusers' ``VaeImageProcessor.preprocess`` takes: PIL images, numpy arrays, torch tensors, or
                lists of any of these (batches included: a list of ``(1, 3, H, W)`` tensors is concatenated).
                ``images=`` is its deprecated name.
            input_range (`tuple`, defaults to `(0, 1)`): the range of float arrays and tensors: ``(0, 1)``, diffusers'
                convention, or ``(-1, 1)``, the model's range. Never guessed from the values; a value outside the
                range is refused. 8-bit inputs (PIL, uint8) are 0..255 and uint16 arrays 0..65535 whatever it says.

        Float inputs stay floats (no 8-bit rounding); see ``dpdiffusion.data.images.images_to_tensor``.
        """
        image = renamed_argument(image, kwargs, old="images", new="image", where="preprocess", stacklevel=4)
        if image is None:
            raise ValueError("image must be given: PIL image(s), array(s) or tensor(s)")
        x = images_to_tensor(image, self.image_size, input_range=input_range)
        return x.to(device=self._execution_device, dtype=self.unet.dtype)

    @torch.no_grad()
    def encode(self, image: Any = None, *, input_range=(0.0, 1.0), **kwargs) -> torch.Tensor:
        """Semantic latents ``(B, d)`` of ``image`` (anything ``preprocess`` takes; float arrays and tensors in
        ``input_range``, by default [0, 1]). ``images=`` is its deprecated name. A tensor already preprocessed (in
        [-1, 1], at the model's size) goes to ``encode_tensor`` as it is."""
        image = renamed_argument(image, kwargs, old="images", new="image", where="encode")
        return self.encode_tensor(self.preprocess(image, input_range=input_range))

    @torch.no_grad()
    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic latents ``(B, d)`` of a model-range tensor ``(B, 3, H, W)``: values in [-1, 1] by contract (no
        conversion, no check: this is the model's own input)."""
        return self.encoder(x)

    def _default_attributes(self) -> list[str]:
        names = self.attribute_directions.names
        chosen = [a for a in DEFAULT_PROTECTED if a in names]
        return chosen or [names[0]]

    def privacy_spec(self, *, attributes=None, weights=None, epsilon=None, strength=None, delta=1e-5,
                     scope="attributes", stochastic_code="random", secure_mode: bool = True) -> PrivacySpec:
        """Validate the privacy arguments and resolve ``strength`` to epsilon; returns the ``PrivacySpec``.

        Raises:
            ValueError: naming the argument and its allowed range; in particular an epsilon so small that its noise
            lies beyond the model's noise schedule (no diffusion strength to report) is refused with the smallest
            epsilon this model accepts at that delta, and a strength whose noise is too small to give a finite
            epsilon > 0 at that delta ... is refused naming ``strength`` with the range that works.
        """
        if not isinstance(secure_mode, (bool, np.bool_)):
            raise ValueError(f"secure_mode must be True or False, got secure_mode={secure_mode!r}")
        if attributes is not None:
            if isinstance(attributes, str):
                raise ValueError(f"attributes must be a sequence of names, not one string; use attributes=[{attributes!r}]")
            if not isinstance(attributes, Iterable):
                raise ValueError(f"attributes must be a non-empty sequence of str, got attributes={attributes!r}")
        if weights is not None and (isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable)):
            raise ValueError(f"weights must be None or a sequence of positive floats, got weights={weights!r}")
        attributes = list(attributes) if attributes is not None else self._default_attributes()
        directions = self.attribute_directions
        named = directions.indices(attributes)  # unknown names -> ValueError
        if scope == "attributes" and not directions.covers(attributes):
            # directions saved without raw directions: only a prefix of the stored order is wholly protected. A
            # release that would report an attribute as protected while part of its direction stays in the
            # residual is refused; the smallest prefix that covers the named attributes is offered instead.
            prefix = list(directions.names[:max(named) + 1])
            raise ValueError(
                f"attributes={attributes} cannot be wholly protected by this model: its attribute directions were "
                f"saved without raw directions, so only a prefix of the stored order {list(directions.names)} lies "
                f"wholly in the noised subspace. Protect attributes={prefix} (the smallest prefix that covers them), or "
                "upgrade the model (convert it again with scripts/convert_diffae_checkpoint.py; "
                "scripts/add_raw_directions.py for a model fitted on SynthFaces)")
        if epsilon is not None and strength is not None:
            raise ValueError("pass either epsilon or strength, not both")
        if strength is not None:
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
                raise ValueError(f"strength must be a number in [0, 1], got strength={strength!r}")
            epsilon = self._epsilon_from_strength(float(strength), attributes, weights, delta, scope)
        if epsilon is None:
            epsilon = 1.0
        spec = PrivacySpec(epsilon=epsilon, delta=delta, attributes=tuple(attributes),
                           weights=None if weights is None else tuple(weights), scope=scope,
                           stochastic_code=stochastic_code, noise_source="csprng" if secure_mode else "seeded")
        # the report states the noise as a diffusion strength too: noise beyond the schedule's end has none
        noise_multiplier = spec.noise_multiplier  # raises, naming epsilon, beyond double precision
        try:
            mechanism.noise_multiplier_to_strength(noise_multiplier, self.scheduler.alphas_cumprod)
        except ValueError:
            largest = mechanism.strength_to_noise_multiplier(1.0, self.scheduler.alphas_cumprod)
            smallest = gaussian_epsilon(sigma=largest * (1.0 - 1e-4), delta=spec.delta)  # printed bound works
            raise ValueError(
                f"epsilon must be >= {smallest:.6g} at delta={spec.delta:g} for this model (its noise schedule "
                f"reaches at most noise multiplier {largest:.6g}), or inf; got epsilon={spec.epsilon}"
            ) from None
        return spec

    def _check_post_processing(self, post_processing, spec: PrivacySpec) -> str:
        """A known post-processing, and for ``"posterior_mean"`` a stored prior of every protected attribute; returns
        the one to apply (``None``: the default, ``"clip"``)."""
        if post_processing is None:
            return "clip"
        if post_processing not in ("clip", "posterior_mean", "none"):
            raise ValueError("post_processing must be 'clip', 'posterior_mean' or 'none', got "
                             f"post_processing={post_processing!r}")
        if post_processing == "posterior_mean":
            self.attribute_directions.prior(spec.attributes)  # none stored -> ValueError before any noise or charge
        return post_processing

    def _bounds(self, attributes, scope):
        bounds = self.attribute_directions.clip_bound_tensor(attributes).tolist()
        residual = self.attribute_directions.residual_clip_bound if scope == "latent" else None
        return bounds, residual

    def _epsilon_from_strength(self, strength, attributes, weights, delta, scope) -> float:
        bounds, residual = self._bounds(attributes, scope)
        alphas = self.scheduler.alphas_cumprod
        m = mechanism.strength_to_noise_multiplier(strength, alphas)
        epsilon = mechanism.calibrate_from_noise_multiplier(
            noise_multiplier=m, delta=delta, clip_bounds=bounds, weights=weights, residual_clip_bound=residual).epsilon
        if not epsilon > 0.0:  # so much noise that no epsilon > 0 is needed at this delta: no mechanism to state
            largest = self._largest_strength(delta)
            raise ValueError(
                f"strength must be in [0, {largest:.6g}] for delta={delta:g} on this model: strength={strength!r} "
                f"gives noise multiplier {m:.6g}, so much noise that the release is (0, {delta:g})-DP and no "
                "epsilon > 0 can be stated; use a smaller strength (or a smaller delta)")
        return epsilon

    def _largest_strength(self, delta) -> float:
        """The largest strength whose noise still gives epsilon > 0 at ``delta`` (bisection on the monotone map)."""
        alphas = self.scheduler.alphas_cumprod
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if gaussian_epsilon(sigma=mechanism.strength_to_noise_multiplier(mid, alphas), delta=delta) > 0.0:
                lo = mid
            else:
                hi = mid
        return lo

    def calibrate(self, spec: PrivacySpec):
        """The ``NoiseCalibration`` (noise multiplier, sigmas) of ``spec`` on this model's public clip bounds."""
        bounds, residual = self._bounds(list(spec.attributes), spec.scope)
        return mechanism.calibrate(epsilon=spec.epsilon, delta=spec.delta, clip_bounds=bounds, weights=spec.weights,
                                   residual_clip_bound=residual, residual_weight=spec.residual_weight)

    def report_for(self, spec: PrivacySpec, calibration=None) -> PrivacyReport:
        """The ``PrivacyReport`` of a release under ``spec``."""
        cal = calibration or self.calibrate(spec)
        names = list(spec.attributes)
        strength = (0.0 if cal.noise_multiplier == 0 else
                    mechanism.noise_multiplier_to_strength(cal.noise_multiplier, self.scheduler.alphas_cumprod))
        dirs = self.attribute_directions
        relation = ("any two images (image-level, in the semantic latent)" if spec.scope == "latent" else
                    f"attribute-neighbours on {dirs.describe_basis(names)}: latents that differ only inside that "
                    "subspace (the same residual)")
        bounds = dirs.clip_bound_tensor(names).tolist()  # the bounds of this subset's basis, as calibrated
        return PrivacyReport(
            epsilon=float(cal.epsilon), delta=float(spec.delta), noise_multiplier=float(cal.noise_multiplier),
            sigmas=dict(zip(names, map(float, cal.sigmas))),
            residual_sigma=None if cal.residual_sigma is None else float(cal.residual_sigma),
            strength=float(strength), attributes=tuple(names), weights=tuple(spec.normalized_weights()),
            clip_bounds=dict(zip(names, map(float, bounds))), scope=spec.scope,
            guarantee=spec.guarantee, neighbouring_relation=relation, noise_source=spec.noise_source)

    @torch.no_grad()
    def apply_privacy_noise(self, z: torch.Tensor, *, attributes=None, weights=None, epsilon=None, strength=None,
                            delta: float = 1e-5, scope: str = "attributes", generator=None, secure_mode: bool = True,
                            post_processing: str = "clip", spec: PrivacySpec | None = None):
        """Apply the weighted Gaussian mechanism to latents ``z`` (B, d).

        The noise comes from the OS CSPRNG; ``secure_mode=False`` draws it from ``generator`` instead (reproducible,
        reported as ``noise_source="seeded"``, not a private release). With ``spec`` its ``noise_source`` decides.

        Returns:
            `tuple[torch.Tensor, PrivacyReport]`: the noisy latents ``z~`` (B, d) and the report. With
            ``epsilon=inf`` the latents are returned unchanged (the same tensor values, bit for bit).

        ``post_processing="clip"`` (default) clamps the released coordinates back to ``[-C_i, C_i]`` (and the noisy
        residual back to its norm bound with ``scope="latent"``): post-processing of the release, so the guarantee is
        unchanged, and the decoder sees in-distribution latents. ``"posterior_mean"`` replaces each released
        coordinate by its posterior mean E[clip(a) | a~] under the public fit-time prior stored with the directions
        (`dpdiffusion.privacy.postprocess`; the residual as with ``"clip"``): post-processing too. It is not the
        default: measured on both embedded models it keeps the judge's agreement on unprotected attributes higher
        (``scripts/postprocessing_effect.py``) but the paper sweep's utility lower (a classifier trained on the
        releases; the posterior mean of a two-mode coordinate lies between the modes, where the decoder draws
        off-distribution faces), see the README. ``"none"`` returns the raw mechanism output (for audits).

        The protected subspace is the span of the named attributes' raw directions, orthonormalised in the order named
        (``AttributeDirections.basis``): every named direction lies wholly in it, whatever the stored order. Weight i
        is the budget share of coordinate i, the i-th Gram-Schmidt vector (the i-th named attribute's direction less
        its part along the attributes named before it); the guarantee covers the whole subspace whatever the order
        (one Gaussian mechanism with per-coordinate sensitivity 2 C_i on the clipped coordinates; neighbours differ
        only inside the span). The report's ``neighbouring_relation`` names that basis and ``clip_bounds`` its bounds.
        """
        spec = spec or self.privacy_spec(attributes=attributes, weights=weights, epsilon=epsilon, strength=strength,
                                         delta=delta, scope=scope, secure_mode=secure_mode)
        secure = spec.noise_source == "csprng"
        post_processing = self._check_post_processing(post_processing, spec)
        cal = self.calibrate(spec)
        report = self.report_for(spec, cal)
        if math.isinf(spec.epsilon):
            return z, report
        names = list(spec.attributes)
        dirs = self.attribute_directions
        a, r = dirs.project(z, attributes=names)  # (B, k), (B, d)
        # python floats: the mechanism rounds sigma up and bounds down for the tensor's dtype (towards privacy)
        bounds = dirs.clip_bound_tensor(names).tolist()
        a_noisy = mechanism.apply_weighted_gaussian_mechanism(a, clip_bounds=bounds, sigmas=list(cal.sigmas),
                                                              generator=generator, secure_mode=secure)
        if post_processing == "posterior_mean":  # public prior and calibrated sigmas only: post-processing
            a_noisy = posterior_mean(a_noisy, sigmas=list(cal.sigmas), prior=dirs.prior(names))
        if post_processing in ("clip", "posterior_mean"):
            a_noisy = mechanism.postprocess_to_bounds(a_noisy, bounds)
        if spec.scope == "latent":
            basis = dirs.basis(names).to(device=z.device, dtype=z.dtype)
            # r = z - A A^T (z - c), so r - c = (I - A A^T)(z - c): the centred residual, in the complement of A,
            # whose norm the public bound C_r bounds; the mechanism releases it and c is added back (public)
            center = dirs.center.to(device=z.device, dtype=z.dtype)  # (d,)
            r = center + mechanism.apply_residual_mechanism(
                r - center, clip_bound=dirs.residual_clip_bound, sigma=float(cal.residual_sigma), protected_basis=basis,
                generator=generator, secure_mode=secure)
            if post_processing in ("clip", "posterior_mean"):
                r = center + mechanism.clip_l2(r - center, dirs.residual_clip_bound)
        return dirs.compose(a_noisy, r, attributes=names), report

    # ------------------------------------------------------------------ the whole release
    def check_inputs(self, num_inference_steps, output_type, ledger, subject_ids, batch_size, generator=None,
                     secure_mode=False, num_images_per_prompt=1):
        if not isinstance(secure_mode, (bool, np.bool_)):
            raise ValueError(f"secure_mode must be True or False, got secure_mode={secure_mode!r}")
        if (isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, (int, np.integer))
                or num_images_per_prompt < 1):
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got "
                             f"num_images_per_prompt={num_images_per_prompt!r}")
        if isinstance(generator, list):
            n = batch_size * num_images_per_prompt  # diffusers: one generator per released image
            if len(generator) not in (1, n) or not all(isinstance(g, torch.Generator) for g in generator):
                per = "image" if num_images_per_prompt == 1 else (
                    f"released image: {batch_size} image(s) x num_images_per_prompt={num_images_per_prompt}")
                raise ValueError(f"generator must be a torch.Generator or a list of {n} of them (one per {per}), "
                                 f"got a list of {len(generator)}: {[type(g).__name__ for g in generator]}")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be None, a torch.Generator or a list of them, got generator={generator!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got num_inference_steps={num_inference_steps!r}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got output_type={output_type!r}")
        if ledger is not None and subject_ids is None:
            raise ValueError("subject_ids must be given with a ledger (one id per image)")
        if subject_ids is not None and len(subject_ids) != batch_size:
            raise ValueError(f"subject_ids has {len(subject_ids)} ids for {batch_size} images; pass one per image")

    @torch.no_grad()
    def __call__(
        self,
        image: Any = None,
        *,
        attributes: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        epsilon: float | None = None,
        strength: float | None = None,
        delta: float = 1e-5,
        scope: str = "attributes",
        stochastic_code: str = "random",
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        ledger=None,
        subject_ids: Sequence[str] | None = None,
        secure_mode: bool = True,
        guidance_scale: float | None = None,
        post_processing: str = "clip",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        faces: str = "aligned",
        min_face_size: int | None = None,
        min_confidence: float | None = None,
        num_images_per_prompt: int = 1,
        input_range=(0.0, 1.0),
        allow_domain_mismatch: bool = False,
        **kwargs,
    ):
        r"""Release protected versions of ``image``.

        Args:
            image: what diffusers' image processor takes: PIL image(s) of any mode and size, numpy array(s), torch
                tensor(s) ``(B, C, H, W)`` / ``(C, H, W)``, or a list of any of these (a list of ``(1, 3, H, W)``
                tensors is concatenated). 8-bit inputs stay 8-bit; float inputs stay floats (see ``preprocess``).
                ``images=`` is its deprecated name (a ``FutureWarning``; removed in 0.3.0).
            input_range (`tuple`, defaults to `(0, 1)`): the value range of float arrays and tensors: ``(0, 1)``
                (diffusers' convention for image tensors) or ``(-1, 1)`` (the model's range). Never guessed.
            num_images_per_prompt (`int`, defaults to 1): independent releases of each input (diffusers' name): fresh
                privacy noise (OS CSPRNG by default) and a fresh stochastic code for each. The output holds
                ``B * num_images_per_prompt`` images in diffusers' order (every release of image 0, then of image
                1, ...). Each release is a separate charge to its subject in ``ledger`` (``remaining_budget`` has one
                entry per released image); ``report.releases_per_image`` says how many. ``epsilon`` and ``delta``
                hold for *one* release: the releases of one subject compose, which the ledger accounts.
            attributes (`list[str]`): attributes to protect (default: ``dark_skin`` and ``long_hair``): the span of
                their raw directions, orthonormalised in this order, is noised (``apply_privacy_noise``).
            weights (`list[float]`): positive budget shares of the attributes (default: equal); weight i goes to the
                i-th orthonormalised coordinate.
            epsilon (`float`): target epsilon (> 0; ``float("inf")`` disables the mechanism). Default 1.0.
            strength (`float`): alternatively, the noise as a diffusion time in [0, 1]; epsilon is then computed.
            delta (`float`): target delta in (0, 1).
            scope (`str`): ``"attributes"`` or ``"latent"``.
            stochastic_code (`str`): ``"random"`` (formal guarantee) or ``"inverted"`` (heuristic, higher fidelity).
            num_inference_steps (`int`, *optional*): DDIM steps; default ``DEFAULT_NUM_INFERENCE_STEPS`` (5) with a
                random code, ``DEFAULT_INVERSION_STEPS`` (25) with ``"inverted"`` (inversion and decoding then walk
                the same grid); measured on the embedded default, see ``dpdiffusion.models.steps``.
            generator: ``torch.Generator`` for ``x_T`` (and for the privacy noise only with ``secure_mode=False``), or
                a list of ``B * num_images_per_prompt`` of them, one per released image (diffusers' convention; row
                ``k`` of the output then depends on ``generator[k]`` only).
            output_type (`str`): ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (the protected semantic latents
                z~ (B, d), not decoded, with the same figures: for research; the release meant for people is the 8-bit
                image, see the README on float latents).
            ledger (`PrivacyLedger`): charge each release to ``subject_ids`` and refuse overspending.
            subject_ids (`list[str]`): one subject id per image (required with ``ledger``).
            secure_mode (`bool`, defaults to `True`): draw the privacy noise from the OS CSPRNG. ``False`` draws it
                from ``generator`` (reproducible: ``noise_source="seeded"``, ``guarantee="none (reproducible
                noise)"``; for tests and research, never for a release).
            guidance_scale (`float`): semantic guidance of the decoder (see ``decode``); post-processing.
            post_processing (`str`, defaults to `"clip"`): ``"clip"``, ``"posterior_mean"`` or ``"none"``, see
                ``apply_privacy_noise`` (post-processing of the released coordinates: the guarantee is unchanged).
            callback_on_step_end, callback_on_step_end_tensor_inputs: see ``decode`` (diffusers' semantics).
            faces (`str`, defaults to `"aligned"`): ``"aligned"``: every input is an aligned face crop (resized to
                the model's size). ``"detect"``: every input is a photo of any size; each face is detected,
                FFHQ-aligned to the model's input, protected (its own ledger subject, ``f"{id}/face{j}"``) and
                pasted back through the inverse alignment with a feathered mask; pixels outside the pasted faces are
                unchanged. Returns a ``dpdiffusion.faces.FacesOutput`` (``images``: the whole photos at their input
                size; ``faces``: per photo, each face's box and privacy figures). A photo with no face raises a
                ``ValueError`` naming its index, before anything is released or charged. Needs the ``faces`` extra.
            min_face_size (`int`, *optional*), min_confidence (`float`, *optional*): with ``faces="detect"``, the
                smallest face (detector box side, px; default 48) and detector score (default 0.5) protected.
            allow_domain_mismatch (`bool`, defaults to `False`): with ``faces="detect"`` and a model trained only on
                synthetic faces (``pipe.training_domain.synthetic``, e.g. the embedded default), photos are refused
                with a ``ValueError`` that says what the model is and how to make a real-face pipeline; ``True`` runs
                it anyway, to test the plumbing (every face comes back as a synthetic one).

        Returns:
            `DPDiffusionPipelineOutput` (or a tuple ``(images, report)`` when ``return_dict=False``).

        During the decode a ``callback_on_step_end`` may read ``pipe.num_timesteps``, ``pipe.guidance_scale`` and
        ``pipe.interrupt`` (diffusers' properties).

        Raises:
            ValueError: for any invalid argument, ``BudgetExceededError`` (a ``ValueError``) when a subject's
                budget would be exceeded, and ``DomainMismatchError`` (a ``ValueError``) for ``faces="detect"`` with
                a synthetic-domain model without ``allow_domain_mismatch=True``; nothing is charged or released then.
        """
        from .faces.photos import DEFAULT_MIN_CONFIDENCE, DEFAULT_MIN_FACE_SIZE, check_faces_mode

        image = renamed_argument(image, kwargs, old="images", new="image", where="DPDiffusionPipeline.__call__")
        if image is None:
            raise ValueError("image must be given: PIL image(s), array(s) or tensor(s) to protect")
        if check_faces_mode(faces) == "detect":  # photos in the wild: detect, align, protect each face, paste back
            from .faces.photos import protect_photos

            # a model that knows only synthetic faces would paste one over every real face: refused unless asked for
            check_photo_domain(self.training_domain, allow_domain_mismatch=allow_domain_mismatch)
            if num_images_per_prompt != 1:
                raise ValueError("num_images_per_prompt applies to faces='aligned' only (a photo holds one release of "
                                 f"each face); got num_images_per_prompt={num_images_per_prompt!r} with "
                                 "faces='detect': call again for another release")
            if check_input_range(input_range) != (0.0, 1.0):
                raise ValueError("input_range applies to faces='aligned' only: photos are taken as 8-bit images or "
                                 f"floats in [0, 1]; got input_range={input_range!r} with faces='detect'")
            return protect_photos(
                self, image, subject_ids=subject_ids, output_type=output_type, return_dict=return_dict,
                min_face_size=DEFAULT_MIN_FACE_SIZE if min_face_size is None else min_face_size,
                min_confidence=DEFAULT_MIN_CONFIDENCE if min_confidence is None else min_confidence,
                attributes=attributes, weights=weights, epsilon=epsilon, strength=strength, delta=delta, scope=scope,
                stochastic_code=stochastic_code, num_inference_steps=num_inference_steps, generator=generator,
                ledger=ledger, secure_mode=secure_mode, guidance_scale=guidance_scale, post_processing=post_processing,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        if min_face_size is not None or min_confidence is not None:
            raise ValueError("min_face_size and min_confidence apply to faces='detect' only")
        # 1. check inputs and resolve the privacy spec (all validation before any work or charge)
        spec = self.privacy_spec(attributes=attributes, weights=weights, epsilon=epsilon, strength=strength,
                                 delta=delta, scope=scope, stochastic_code=stochastic_code, secure_mode=secure_mode)
        x0 = self.preprocess(image, input_range=input_range)  # (B, 3, H, W)
        batch_size, n = x0.shape[0], num_images_per_prompt
        num_inference_steps = resolve_num_inference_steps(num_inference_steps, stochastic_code)
        self.check_inputs(num_inference_steps, output_type, ledger, subject_ids, batch_size, generator, secure_mode,
                          num_images_per_prompt=n)
        n = int(n)  # validated: an integer >= 1
        self._guidance(guidance_scale, stochastic_code)  # validate before anything is charged
        self._check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self._check_scheduler()
        post_processing = self._check_post_processing(post_processing, spec)  # before any charge
        cal = self.calibrate(spec)
        # 2. charge the ledger: one charge per release (n per subject), all affordable or nothing is charged
        remaining = None
        if ledger is not None:
            remaining = ledger.charge_many([s for s in subject_ids for _ in range(n)],
                                           noise_multiplier=cal.noise_multiplier, attributes=list(spec.attributes),
                                           scope=spec.scope, guarantee=spec.guarantee)
        # 3. encode; release j of image i is row i * n + j (diffusers' order for num_images_per_prompt)
        z = self.encode_tensor(x0)  # (B, d)
        # 4. stochastic code x_T (drawn first, so that epsilon=inf equals decode(encode(x)) with the same generator)
        if stochastic_code == "random":
            x_t = randn_tensor((batch_size * n, *x0.shape[1:]), generator=generator, device=x0.device,
                               dtype=self.unet.dtype)  # (B * n, 3, H, W)
        else:
            x_t = ddim_invert(self.unet, self.scheduler, x0, self.encoder.condition(z), num_inference_steps)
            x_t = x_t.repeat_interleave(n, dim=0)  # deterministic: the same code for every release of an image
        # 5. the privacy mechanism on the semantic latent: fresh noise for every release
        z_noisy, report = self.apply_privacy_noise(z.repeat_interleave(n, dim=0), spec=spec, generator=generator,
                                                   post_processing=post_processing)  # (B * n, d)
        report = dataclasses.replace(report, releases_per_image=n)
        # 6. deterministic DDIM decode with a progress bar (or the protected latents themselves)
        if output_type == "latent":
            out = z_noisy
        else:
            out = self.decode(z_noisy, stochastic_code=x_t, num_inference_steps=num_inference_steps,
                              output_type=output_type, guidance_scale=self._guidance(guidance_scale, stochastic_code),
                              callback_on_step_end=callback_on_step_end,
                              callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        self.maybe_free_model_hooks()
        if not return_dict:
            return out, report
        return DPDiffusionPipelineOutput(
            images=out, epsilon=report.epsilon, delta=report.delta, noise_multiplier=report.noise_multiplier,
            sigmas=report.sigmas, strength=report.strength, attributes=report.attributes, guarantee=report.guarantee,
            noise_source=report.noise_source, report=report, remaining_budget=remaining)
