"""`EpsilonController`: turn a person's "more privacy" / "more detail" judgements into the next epsilon.

A pure, immutable state machine (no torch, no I/O), so that the Space's behaviour is testable on floats alone.

A judgement of the image released at epsilon e says on which side of the person's acceptable epsilon e lies:

- ``"more_privacy"``: e is too large (the image reveals too much), so e becomes the upper bracket;
- ``"more_detail"``: e is too small (the image is too degraded), so e becomes the lower bracket;
- ``"accept"``: e is acceptable; the search ends.

Epsilon acts multiplicatively on the noise (sigma ~ 1 / epsilon over most of the range), so the search runs in
log-epsilon: until both sides are bracketed it takes a multiplicative step (``e * step_factor`` or
``e / step_factor``); once bracketed it bisects in log space (the geometric mean of the brackets). A judgement
that contradicts an earlier bracket (people change their minds) drops that bracket and the search moves on.
Proposals are clamped to ``[min_epsilon, max_epsilon]`` and rounded to ``significant_digits`` so that the
epsilons a person sees are readable; the exact epsilon used is the one proposed.

Example:

>>> c = EpsilonController(epsilon=1.0)
>>> c = c.propose("more_privacy"); c.epsilon, c.upper          # only an upper bound: step down
(0.5, 1.0)
>>> c = c.propose("more_detail"); c.epsilon, c.lower, c.upper  # bracketed: bisect in log-epsilon
(0.7071, 0.5, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

__all__ = ["EpsilonController", "VERDICTS"]

VERDICTS = ("more_privacy", "more_detail", "accept")


def _round_sig(x: float, digits: int) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


@dataclass(frozen=True)
class EpsilonController:
    r"""Bisection in log-epsilon on the interval between rejected-as-too-revealing and rejected-as-too-noisy.

    Args:
        epsilon (`float`): epsilon of the image being judged, finite and > 0.
        lower (`float`, *optional*): largest epsilon judged too noisy ("more detail"), if any.
        upper (`float`, *optional*): smallest epsilon judged too revealing ("more privacy"), if any.
        step_factor (`float`, *optional*, defaults to 2.0): multiplicative step while a side is unbracketed, > 1.
        min_epsilon (`float`), max_epsilon (`float`): the range proposals are clamped to, 0 < min < max < inf.
        significant_digits (`int`, *optional*, defaults to 4): rounding of proposals, >= 1.
        history (`tuple`): ``(epsilon, verdict)`` of every judgement so far, oldest first.

    Raises:
        ValueError: on out-of-range arguments (the message names the argument, value and range).
    """

    epsilon: float
    lower: Optional[float] = None
    upper: Optional[float] = None
    step_factor: float = 2.0
    min_epsilon: float = 0.01
    max_epsilon: float = 100.0
    significant_digits: int = 4
    history: Tuple[Tuple[float, str], ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not 0.0 < self.min_epsilon < self.max_epsilon < math.inf:
            raise ValueError(f"need 0 < min_epsilon < max_epsilon < inf, got min_epsilon={self.min_epsilon}, "
                             f"max_epsilon={self.max_epsilon}")
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not self.min_epsilon <= e <= self.max_epsilon:
            raise ValueError(f"epsilon must be a number in [{self.min_epsilon}, {self.max_epsilon}], got epsilon={e!r}")
        if not 1.0 < self.step_factor < math.inf:
            raise ValueError(f"step_factor must be > 1 and finite, got step_factor={self.step_factor}")
        if isinstance(self.significant_digits, bool) or not isinstance(self.significant_digits, int) \
                or self.significant_digits < 1:
            raise ValueError(
                f"significant_digits must be an int >= 1, got significant_digits={self.significant_digits!r}")
        if self.lower is not None and self.upper is not None and not self.lower < self.upper:
            raise ValueError(f"need lower < upper, got lower={self.lower}, upper={self.upper}")

    @property
    def bracketed(self) -> bool:
        """Whether both a too-noisy and a too-revealing epsilon are known."""
        return self.lower is not None and self.upper is not None

    def propose(self, verdict: str) -> "EpsilonController":
        """The controller after judging the image at ``self.epsilon``; its ``epsilon`` is the next one to release.

        Args:
            verdict (`str`): ``"more_privacy"``, ``"more_detail"`` or ``"accept"`` (which keeps epsilon).

        Returns:
            `EpsilonController`: a new controller (this one is unchanged). Its epsilon equals this one's when the
            search cannot move (at ``min_epsilon`` / ``max_epsilon``, or converged to the rounding); check
            ``moved`` on the pair.

        Raises:
            ValueError: for an unknown verdict.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got verdict={verdict!r}")
        e = float(self.epsilon)
        history = self.history + ((e, verdict),)
        if verdict == "accept":
            return replace(self, history=history)
        lower, upper = self.lower, self.upper
        if verdict == "more_privacy":
            upper = e
            if lower is not None and lower >= e:  # contradicts an earlier "more detail": forget it
                lower = None
        else:
            lower = e
            if upper is not None and upper <= e:
                upper = None
        if lower is not None and upper is not None:
            proposal = math.sqrt(lower * upper)
        elif upper is not None:
            proposal = upper / self.step_factor
        else:
            proposal = lower * self.step_factor
        proposal = _round_sig(min(max(proposal, self.min_epsilon), self.max_epsilon), self.significant_digits)
        proposal = min(max(proposal, self.min_epsilon), self.max_epsilon)
        return replace(self, epsilon=proposal, lower=lower, upper=upper, history=history)

    def moved(self, other: "EpsilonController") -> bool:
        """Whether ``other`` (a proposal from this controller) releases at a different epsilon."""
        return other.epsilon != self.epsilon
