"""The records and argument checks of `dpdiffusion.privacy.ledger`: a refused release, a recorded one, and the
validation of what a charge names (subject, attributes, guarantee, multiplier, neighbouring relation)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

from .spec import GUARANTEES

__all__ = ["BudgetExceededError", "Release", "UNRECORDED", "GUARANTEE_RANK", "check_subject", "check_attributes",
           "check_guarantee", "check_real", "check_multiplier", "check_relation"]

UNRECORDED = "unrecorded"  # the guarantee of releases recorded before schema version 2
# weakest last: the guarantee that qualifies a composed total is the weakest of its releases
GUARANTEE_RANK = {GUARANTEES[0]: 0, GUARANTEES[1]: 1, UNRECORDED: 2, GUARANTEES[2]: 3, GUARANTEES[3]: 4}


class BudgetExceededError(ValueError):
    """A release would push a subject's spent epsilon above the ledger's budget; nothing was recorded.

    Attributes:
        subject_id (`str`): the subject refused.
        budget_epsilon (`float`): the ledger's budget.
        delta (`float`): the ledger's delta.
        spent_epsilon (`float`): the subject's spend before the release.
        release_epsilon (`float`): the release on its own.
        epsilon_after (`float`): the total had it been recorded.
        remaining_epsilon (`float`): what is left.
    """

    def __init__(self, *, subject_id, budget_epsilon, delta, spent_epsilon, release_epsilon, epsilon_after,
                 noise_multiplier):
        self.subject_id = subject_id
        self.budget_epsilon = budget_epsilon
        self.delta = delta
        self.spent_epsilon = spent_epsilon
        self.release_epsilon = release_epsilon
        self.epsilon_after = epsilon_after
        self.noise_multiplier = noise_multiplier
        self.remaining_epsilon = max(0.0, budget_epsilon - spent_epsilon)
        super().__init__(
            f"privacy budget exceeded for subject {subject_id!r}: budget epsilon={budget_epsilon:.6g} at "
            f"delta={delta:.3g}, already spent {spent_epsilon:.6g}; this release (noise_multiplier="
            f"{noise_multiplier:.6g}, epsilon={release_epsilon:.6g} on its own) would bring the total to "
            f"{epsilon_after:.6g} (+{epsilon_after - spent_epsilon:.6g}), and only {self.remaining_epsilon:.6g} "
            "is left. Nothing was recorded."
        )


@dataclass(frozen=True)
class Release:
    """One recorded release of a subject.

    Args:
        release_id (`int`): the release's row.
        subject_id (`str`): the subject charged.
        noise_multiplier (`float`): the release's noise over its sensitivity.
        epsilon (`float`): this release alone at the ledger delta.
        spent_after (`float`): the subject's total after it.
        attributes (`tuple[str, ...]`): the attributes protected.
        scope (`str`): the noise's scope.
        note (`str` or `None`): the caller's note.
        created_at (`str`): ISO 8601 UTC.
        guarantee (`str`): one of `dpdiffusion.privacy.spec.GUARANTEES`, or "unrecorded" for releases of a ledger
            older than the column.
    """

    release_id: int
    subject_id: str
    noise_multiplier: float
    epsilon: float
    spent_after: float
    attributes: tuple
    scope: str
    note: Optional[str]
    created_at: str
    guarantee: str = UNRECORDED


def check_subject(subject_id) -> str:
    if not isinstance(subject_id, str) or not subject_id:
        raise ValueError(f"subject_id must be a non-empty str, got subject_id={subject_id!r}")
    return subject_id


def check_attributes(attributes) -> tuple:
    if isinstance(attributes, str):
        raise ValueError(f"attributes must be a sequence of names, not one string; use attributes=({attributes!r},)")
    try:
        attributes = tuple(attributes)
    except TypeError:
        raise ValueError(f"attributes must be a non-empty sequence of str, got attributes={attributes!r}")
    if not attributes or not all(isinstance(a, str) and a for a in attributes):
        raise ValueError(f"attributes must be a non-empty sequence of non-empty str, got attributes={attributes!r}")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes must be unique, got attributes={attributes!r}")
    return attributes


def check_guarantee(guarantee, *, allow_unrecorded: bool = False) -> str:
    allowed = GUARANTEES + ((UNRECORDED,) if allow_unrecorded else ())
    if guarantee not in allowed:
        raise ValueError(f"guarantee must be one of {allowed}, got guarantee={guarantee!r}")
    return guarantee


def check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {name}={value!r}")
    return float(value)


def check_multiplier(noise_multiplier) -> float:
    m = check_real("noise_multiplier", noise_multiplier)
    if math.isnan(m) or not 0.0 <= m < math.inf:
        raise ValueError(f"noise_multiplier must be finite and >= 0, got noise_multiplier={noise_multiplier}")
    return m


def check_relation(subject_id, first_scope, first_attributes, scope, attributes) -> None:
    if scope == "latent":
        return  # any two images: covers every relation
    if first_scope == "latent":
        raise ValueError(
            f"subject {subject_id!r} was first released with scope='latent' (neighbours: any two images); a "
            "scope='attributes' release is not private for that relation, so its cost cannot be composed. "
            "Use scope='latent'."
        )
    missing = sorted(set(first_attributes) - set(attributes))
    if missing:
        raise ValueError(
            f"subject {subject_id!r} was first released protecting {list(first_attributes)}; every later "
            f"release must protect at least those (a superset) so that all releases are private for the same "
            f"neighbouring relation, but this one omits {missing}"
        )
