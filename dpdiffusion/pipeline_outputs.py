"""What ``DPDiffusionPipeline`` returns: the images and the privacy figures that hold for them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

__all__ = ["DPDiffusionPipelineOutput", "PrivacyReport"]


@dataclass
class PrivacyReport:
    """The privacy figures of one release (shared by every image of a call).

    Attributes:
        epsilon (`float`): the epsilon of the (epsilon, delta)-DP guarantee of one release (of one image).
        delta (`float`): its delta.
        noise_multiplier (`float`): noise of the composed Gaussian mechanism over its unit sensitivity.
        sigmas (`dict[str, float]`): noise standard deviation added to each protected coordinate.
        residual_sigma (`float | None`): noise std on the residual (``scope="latent"`` only).
        strength (`float`): the equivalent forward-diffusion time in [0, 1] of that noise.
        attributes (`tuple[str]`): the protected attributes.
        weights (`tuple[float]`): their shares of the budget.
        clip_bounds (`dict[str, float]`): each protected coordinate's clip bound.
        scope (`str`): the noise's scope.
        guarantee (`str`): ``"formal"``, ``"heuristic"`` or ``"none (reproducible noise)"``.
        neighbouring_relation (`str`): the relation the guarantee is stated for.
        noise_source (`str`): ``"csprng"`` (the OS CSPRNG) or ``"seeded"`` (replayable from the generator).
        releases_per_image (`int`): how many independent releases of each input the call made
            (``num_images_per_prompt``). The figures above hold for each release; the releases of one subject
            compose (each is its own charge in a ``PrivacyLedger``, which accounts the composition), so releasing
            several images of one input costs more than ``epsilon``.
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    sigmas: dict
    residual_sigma: float | None
    strength: float
    attributes: tuple
    weights: tuple
    clip_bounds: dict
    scope: str
    guarantee: str
    neighbouring_relation: str
    noise_source: str = "csprng"
    releases_per_image: int = 1

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class DPDiffusionPipelineOutput(BaseOutput):
    """Output of ``DPDiffusionPipeline``: the images and the privacy figures that hold for them.

    Attributes:
        images (`list[PIL.Image.Image]` or `np.ndarray` or `torch.Tensor`): the protected images.
        epsilon, delta, noise_multiplier, sigmas, strength, attributes, guarantee, noise_source: see
            ``PrivacyReport``; ``guarantee == "formal"`` only for CSPRNG noise and a random stochastic code.
        report (`PrivacyReport`): everything above plus clip bounds, weights, scope and neighbouring relation.
        remaining_budget (`list[float] | None`): when a ledger was used, one entry per released image (in the
            order of ``images``): the epsilon its subject has left after the whole call.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    epsilon: float
    delta: float
    noise_multiplier: float
    sigmas: dict
    strength: float
    attributes: tuple
    guarantee: str
    noise_source: str = "csprng"
    report: PrivacyReport | None = None
    remaining_budget: list | None = None
