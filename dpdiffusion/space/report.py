"""Markdown the Space shows next to a release: its privacy figures and the final report of a session.

Formatting only: every number arrives from the pipeline's report or the ledger; nothing here derives one.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence


def fmt(x: Optional[float], digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits; ``-`` for `None`, ``∞`` for infinity."""
    if x is None:
        return "-"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def release_figures(r: dict, *, releases_here: Sequence[float], releases_total: int, spent: float, left: float,
                    budget: float, delta: float, latency_s: Optional[float], steps: int, hints: Sequence[str]) -> str:
    """The figures table of the image shown.

    Args:
        r (`dict`): the pipeline's report of the release (``PrivacyReport.to_dict()``).
        releases_here (`list[float]`): the epsilons released in this session.
        releases_total (`int`): the face's releases in the ledger, in all sessions.
        spent (`float`), left (`float`), budget (`float`), delta (`float`): the ledger's figures for the face.
        latency_s (`float`, *optional*), steps (`int`): how long the release took, with how many DDIM steps.
        hints (`list[str]`): what the next judgements would release.
    """
    sigmas = ", ".join(f"{a}: {fmt(s)}" for a, s in r["sigmas"].items())
    weights = ", ".join(f"{a}: {fmt(w, 3)}" for a, w in zip(r["attributes"], r["weights"]))
    guarantee = "formal" if r["guarantee"] == "formal" else "heuristic (not covered by the accountant)"
    lines = [
        "| privacy figure | value |",
        "|---|---|",
        f"| ε of this image | **{fmt(r['epsilon'])}** |",
        f"| δ | {r['delta']:.1e} |",
        f"| guarantee | {guarantee}: ({fmt(r['epsilon'])}, {r['delta']:.0e})-DP for {r['neighbouring_relation']} |",
        "| noise source | OS CSPRNG |",
        f"| noise multiplier | {fmt(r['noise_multiplier'])} (diffusion strength {fmt(r['strength'], 3)}) |",
        f"| noise std per attribute | {sigmas} |",
        f"| budget shares | {weights} |",
        f"| releases of this face | {releases_total} in all sessions; this session: "
        f"{', '.join(fmt(e) for e in releases_here)} |",
        f"| ε spent (all releases of this face composed) | {fmt(spent)} at δ={delta:.0e} |",
        f"| **budget left** | **{fmt(left)}** of {fmt(budget)} |",
    ]
    if latency_s is not None:
        lines.append(f"| generated in | {latency_s:.2f} s ({steps} steps) |")
    lines.append(f"| next release | {'; '.join(hints)} |")
    return "\n".join(lines)


def final_report(r: dict, *, weights: Sequence[float], releases_here: int, releases_total: int, steps: str,
                 spent: float, left: float, budget: float, delta: float) -> str:
    """The report shown when a session is accepted (arguments as in `release_figures`; ``steps`` is the
    judgement history as text)."""
    return "\n".join([
        "### Final report",
        f"- Accepted image: ε = **{fmt(r['epsilon'])}**, δ = {r['delta']:.0e}, protecting "
        f"{', '.join(r['attributes'])} (weights {', '.join(fmt(w, 3) for w in weights)}).",
        f"- Releases in this session: {releases_here}; judgements: {steps}.",
        f"- Everything released of this face (all {releases_total} images, in every session, together) is "
        f"(**{fmt(spent)}**, {delta:.0e})-DP for {r['neighbouring_relation']}; guarantee: {r['guarantee']}.",
        f"- Budget: {fmt(spent)} of {fmt(budget)} spent, {fmt(left)} left. Accepting ends this session, not the "
        "budget: the same picture, uploaded again (in any session, format or size), continues from here.",
        "- Stored: your judgements with the protected images only; the original was never stored.",
    ])
