"""`PrivacySpec`: the validated, frozen set of privacy parameters of one release.

A spec says *what* is protected and *how strongly*; it holds no tensors and derives no noise scale beyond the
noise multiplier of the composed mechanism (`noise_multiplier`, from `dpdiffusion.privacy.accounting`). The
per-coordinate noise scales need the public clip bounds and come from `dpdiffusion.privacy.mechanism.calibrate`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

from .accounting import gaussian_sigma

__all__ = ["GUARANTEES", "NOISE_SOURCES", "PrivacySpec", "SCOPES", "STOCHASTIC_CODES", "guarantee_of"]

SCOPES = ("attributes", "latent")
STOCHASTIC_CODES = ("random", "inverted")
# "csprng": privacy noise from the OS CSPRNG (the default everywhere); "seeded": from a torch generator, reproducible
# by whoever knows or recovers the seed, so it is a test/research mode and never a private release.
NOISE_SOURCES = ("csprng", "seeded")
# the guarantee of a release, strongest first: formal (the accountant covers the whole release), heuristic (the
# decoder starts from a DDIM inversion of the input, which the accountant does not cover), none (the noise can be
# replayed), none (epsilon = inf: no noise at all, the release is the plain encode/decode of the input).
GUARANTEES = ("formal", "heuristic", "none (reproducible noise)", "none (epsilon = inf)")


def guarantee_of(*, stochastic_code: str, noise_source: str, epsilon: Optional[float] = None) -> str:
    """The guarantee of a release: ``"formal"`` only for CSPRNG noise, a random stochastic code and a finite epsilon.

    ``epsilon = inf`` turns the mechanism off (no noise): such a release protects nothing and is labelled
    ``"none (epsilon = inf)"`` whatever its noise source or stochastic code.

    Args:
        stochastic_code (`str`): ``"random"`` or ``"inverted"``.
        noise_source (`str`): ``"csprng"`` or ``"seeded"``.
        epsilon (`float`, *optional*): the release's epsilon; `None` (unknown) is treated as finite.

    Returns:
        `str`: one of `GUARANTEES`.

    Raises:
        ValueError: if an argument is not one of its allowed values.

    Example:

    ```py
    >>> from dpdiffusion.privacy.spec import guarantee_of
    >>> guarantee_of(stochastic_code="random", noise_source="csprng"), guarantee_of(stochastic_code="random", noise_source="seeded")
    ('formal', 'none (reproducible noise)')
    >>> guarantee_of(stochastic_code="random", noise_source="csprng", epsilon=float("inf"))
    'none (epsilon = inf)'

    ```
    """
    if stochastic_code not in STOCHASTIC_CODES:
        raise ValueError(f"stochastic_code must be one of {STOCHASTIC_CODES}, got stochastic_code={stochastic_code!r}")
    if noise_source not in NOISE_SOURCES:
        raise ValueError(f"noise_source must be one of {NOISE_SOURCES}, got noise_source={noise_source!r}")
    if epsilon is not None and math.isinf(epsilon) and epsilon > 0:
        return GUARANTEES[3]
    if noise_source == "seeded":
        return GUARANTEES[2]
    return GUARANTEES[0] if stochastic_code == "random" else GUARANTEES[1]


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {name}={value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN, got {name}={value}")
    return value


@dataclass(frozen=True)
class PrivacySpec:
    r"""Privacy parameters of one release: (epsilon, delta), the protected attributes and how the budget is shared.

    The guarantee (see `dpdiffusion.privacy.mechanism` for the mechanism): the release is (epsilon, delta)-DP with
    respect to *attribute-neighbours*, two images whose semantic latents differ only in the coordinates of
    `attributes` (`scope="attributes"`), or with respect to any two images (`scope="latent"`, which also noises
    the residual with a share `residual_weight` of the budget). With `stochastic_code="inverted"` the decoder
    starts from a DDIM inversion of the input, which the accountant does not cover: `guarantee` is then
    `"heuristic"`. With `noise_source="seeded"` the noise comes from a seeded generator, which anyone who knows or
    recovers the seed can replay: `guarantee` is then `"none (reproducible noise)"` (a test/research mode).

    Args:
        epsilon (`float`):
            Privacy budget of the release, > 0; `math.inf` turns the mechanism off.
        delta (`float`):
            In (0, 1); should be well below 1 / (number of people in the data).
        attributes (`Sequence[str]`):
            Names of the protected attributes, non-empty and unique (stored as a tuple).
        weights (`Sequence[float]`, *optional*):
            Budget share of each attribute, finite and > 0 (stored as a tuple); `None` means equal shares.
            In zCDP terms attribute i receives rho_i = (w_i / W) rho.
        scope (`str`, *optional*, defaults to `"attributes"`):
            `"attributes"` or `"latent"`.
        stochastic_code (`str`, *optional*, defaults to `"random"`):
            `"random"` (x_T ~ N(0, I), formal guarantee) or `"inverted"` (DDIM inversion, heuristic).
        residual_weight (`float`, *optional*, defaults to 1.0):
            Budget weight of the residual when `scope="latent"`, finite and > 0; ignored otherwise.
        noise_source (`str`, *optional*, defaults to `"csprng"`):
            `"csprng"` (the OS CSPRNG, a private release) or `"seeded"` (reproducible, not private).

    Raises:
        ValueError: if a field is out of range (the message names the field, its value and the allowed range).

    Example:

    ```py
    >>> from dpdiffusion.privacy.spec import PrivacySpec
    >>> spec = PrivacySpec(epsilon=1.0, delta=1e-5, attributes=["dark_skin", "age"], weights=[3, 1])
    >>> spec.attributes, spec.normalized_weights(), spec.guarantee
    (('dark_skin', 'age'), (0.75, 0.25), 'formal')
    >>> round(spec.noise_multiplier, 6)
    3.730632

    ```
    """

    epsilon: float
    delta: float
    attributes: tuple
    weights: Optional[tuple] = None
    scope: str = "attributes"
    stochastic_code: str = "random"
    residual_weight: float = 1.0
    noise_source: str = "csprng"

    def __post_init__(self):
        epsilon = _real("epsilon", self.epsilon)
        if not epsilon > 0.0:
            raise ValueError(f"epsilon must be > 0 (inf allowed: no privacy), got epsilon={epsilon}")
        delta = _real("delta", self.delta)
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got delta={delta}")

        attributes = self.attributes
        if isinstance(attributes, str):
            raise ValueError(
                f"attributes must be a sequence of names, not one string; use attributes=({attributes!r},)"
            )
        try:
            attributes = tuple(attributes)
        except TypeError:
            raise ValueError(f"attributes must be a non-empty sequence of str, got attributes={self.attributes!r}")
        if not attributes:
            raise ValueError("attributes must be a non-empty sequence of str, got attributes=()")
        for name in attributes:
            if not isinstance(name, str) or not name:
                raise ValueError(f"attributes must be non-empty str, got {name!r} in attributes={attributes!r}")
        if len(set(attributes)) != len(attributes):
            duplicates = sorted({name for name in attributes if attributes.count(name) > 1})
            raise ValueError(f"attributes must be unique, got duplicates {duplicates} in attributes={attributes!r}")

        weights = self.weights
        if weights is not None:
            if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
                raise ValueError(f"weights must be None or a sequence of floats, got weights={weights!r}")
            weights = tuple(_real("weights", w) for w in weights)
            if len(weights) != len(attributes):
                raise ValueError(
                    f"weights must have one entry per attribute ({len(attributes)}), got {len(weights)}: "
                    f"weights={weights}"
                )
            if not all(0.0 < w < math.inf for w in weights):
                raise ValueError(f"weights must all be finite and > 0, got weights={weights}")

        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got scope={self.scope!r}")
        if self.stochastic_code not in STOCHASTIC_CODES:
            raise ValueError(
                f"stochastic_code must be one of {STOCHASTIC_CODES}, got stochastic_code={self.stochastic_code!r}"
            )
        if self.noise_source not in NOISE_SOURCES:
            raise ValueError(f"noise_source must be one of {NOISE_SOURCES}, got noise_source={self.noise_source!r}")
        residual_weight = _real("residual_weight", self.residual_weight)
        if not 0.0 < residual_weight < math.inf:
            raise ValueError(f"residual_weight must be finite and > 0, got residual_weight={residual_weight}")

        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "delta", delta)
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "residual_weight", residual_weight)

    @property
    def guarantee(self) -> str:
        """`"formal"` when the accountant covers the whole release (CSPRNG noise, `stochastic_code="random"` and a
        finite epsilon), `"heuristic"` for an inverted stochastic code, `"none (reproducible noise)"` for seeded noise,
        `"none (epsilon = inf)"` when the mechanism is off."""
        return guarantee_of(stochastic_code=self.stochastic_code, noise_source=self.noise_source, epsilon=self.epsilon)

    @property
    def noise_multiplier(self) -> float:
        """Noise multiplier m of the composed mechanism (unit sensitivity), `gaussian_sigma(epsilon, delta)`.

        0.0 when `epsilon` is infinite (mechanism off).
        """
        return gaussian_sigma(epsilon=self.epsilon, delta=self.delta)

    def _raw_weights(self) -> tuple:
        return self.weights if self.weights is not None else (1.0,) * len(self.attributes)

    def _total_weight(self) -> float:
        total = math.fsum(self._raw_weights())
        return total + self.residual_weight if self.scope == "latent" else total

    def normalized_weights(self) -> tuple:
        """Budget share w_i / W of each attribute, in the order of `attributes`.

        W is the sum of the attribute weights, plus `residual_weight` when `scope="latent"` (the residual's share
        is then `residual_share`). With `scope="attributes"` the shares sum to 1.

        Returns:
            `tuple[float, ...]`: one share per attribute.
        """
        total = self._total_weight()
        return tuple(w / total for w in self._raw_weights())

    @property
    def residual_share(self) -> Optional[float]:
        """Budget share w_r / W of the residual when `scope="latent"`, else `None`."""
        if self.scope != "latent":
            return None
        return self.residual_weight / self._total_weight()
