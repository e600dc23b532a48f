"""Markdown the Space shows next to a release: its privacy figures and the final report of a session.

Formatting only: every number arrives from the pipeline's report, this session's releases or the settings; nothing
here derives one, and nothing here reads the ledger (no figure of other sessions reaches a page).
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


def release_figures(r: dict, *, releases_here: Sequence[float], session_spent: float, budget: float, delta: float,
                    latency_s: Optional[float], steps: int, hints: Sequence[str]) -> str:
    """The figures table of the image shown: this release, and this session's releases composed (never the face's
    total over sessions, which would tell this session what others spent).

    Args:
        r (`dict`): the pipeline's report of the release (``PrivacyReport.to_dict()``).
        releases_here (`list[float]`): the epsilons released in this session.
        session_spent (`float`): this session's releases composed (at ``delta``).
        budget (`float`), delta (`float`): the face's budget and the ledger's delta (public settings).
        latency_s (`float`, *optional*), steps (`int`): how long the release took, with how many DDIM steps.
        hints (`list[str]`): what the next judgements would release (empty after "accept": no row).
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
        f"| releases in this session | {', '.join(fmt(e) for e in releases_here)} |",
        f"| **ε spent by this session** (its releases composed) | **{fmt(session_spent)}** at δ={delta:.0e} |",
        f"| the face's budget | every release of this face, in all sessions and both modes, stays within "
        f"ε = {fmt(budget)} together (what other sessions spent is not shown) |",
    ]
    if latency_s is not None:
        lines.append(f"| generated in | {latency_s:.2f} s ({steps} steps) |")
    if hints:  # none once the session is accepted: it releases nothing more
        lines.append(f"| next release | {'; '.join(hints)} |")
    return "\n".join(lines)


def final_report(r: dict, *, weights: Sequence[float], releases_here: int, steps: str, session_spent: float,
                 budget: float, delta: float) -> str:
    """The report shown when a session is accepted (arguments as in `release_figures`; ``steps`` is the
    judgement history as text)."""
    return "\n".join([
        "### Final report",
        f"- Accepted image: ε = **{fmt(r['epsilon'])}**, δ = {r['delta']:.0e}, protecting "
        f"{', '.join(r['attributes'])} (weights {', '.join(fmt(w, 3) for w in weights)}).",
        f"- Releases in this session: {releases_here}; judgements: {steps}.",
        f"- Everything this session released of this face is (**{fmt(session_spent)}**, {delta:.0e})-DP for "
        f"{r['neighbouring_relation']}; guarantee: {r['guarantee']}. Everything released of this face in all "
        f"sessions and both modes together stays within its budget of ε = {fmt(budget)} (the ledger refuses what "
        "would exceed it; it does not tell one session what others spent).",
        "- Accepting ends this session, not the budget: the same picture, loaded again (in any session, format, size "
        "or mode), continues on what is left.",
        "- Stored: your judgements with the protected images and this session's figures only; the original was "
        "never stored.",
    ])
