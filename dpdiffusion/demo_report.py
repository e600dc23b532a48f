"""The report of ``dpdiffusion demo``: Markdown built from the run's figures (``metrics.json``), and its HTML page.

Everything here is rendering: `report_lines` reads the dict that ``dpdiffusion demo`` writes to ``metrics.json``
(the releases' privacy reports, the unlearning tables, the evaluation summary) and says what each figure means
where a reader could misread it:

- a release at epsilon = inf adds no noise: it is labelled "no protection", never with a guarantee;
- in the reversed-split table retraining is the reference (the mean over its seeds, 100 % of the gap by
  definition); the seeds' own spread is stated beside it;
- when the demo's small unlearning run is outside the regime of the speed-up claims, one line says why and names
  the benchmark command that measures them;
- an obfuscation whose matched setting would be the clean images is reported as "no setting matches".

`markdown_to_html` renders the Markdown with markdown-it-py (CommonMark + GFM tables).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

__all__ = [
    "BENCHMARK_COMMAND",
    "BENCHMARK_SPEEDUP_TARGETS",
    "REPORT_STYLE",
    "benchmark_note",
    "epsilon_label",
    "guarantee_label",
    "markdown_to_html",
    "report_lines",
    "seed_spread_note",
]

# The ResNet speed-up targets over retraining of scripts/benchmark_unlearning.py (its SPEEDUP_TARGETS["resnet"];
# tests/test_demo_report_render.py checks that the two agree) and the command that measures them.
BENCHMARK_SPEEDUP_TARGETS = {"first_order": 50.0, "second_order": 10.0}
BENCHMARK_COMMAND = ("python scripts/benchmark_unlearning.py --num-train 5000 --frac-changed 0.3 --epochs 20 "
                     "--out bench-out")

REPORT_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse;margin:1em 0;font-size:85%;display:block;overflow-x:auto;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}tbody tr:nth-child(even){background:#fafafa}"
    "code{background:#f3f3f3;padding:0 3px}img{max-width:100%}"
)


def markdown_to_html(markdown: str | list[str], title: str = "dpdiffusion demo report") -> str:
    """The report's Markdown as one self-contained HTML page (images stay links to the PNGs beside it).

    Rendered by markdown-it-py (CommonMark with GFM tables); raw HTML in the text is escaped, not passed through.

    Args:
        markdown (`str` or `list[str]`): the Markdown text, or its lines (an item may hold several lines, e.g. a
            whole table).
        title (`str`): the page title.
    """
    from markdown_it import MarkdownIt

    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{REPORT_STYLE}</style></head><body>\n{body}</body></html>\n")


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.4g}"


def _cell(text: str) -> str:
    """A table cell: a literal ``|`` would end the cell."""
    return str(text).replace("|", "\\|")


def epsilon_label(epsilon: float) -> str:
    """``"inf (no noise: no protection)"`` for epsilon = inf, else the number."""
    return "inf (no noise: no protection)" if math.isinf(epsilon) else _fmt(epsilon)


def guarantee_label(guarantee: str) -> str:
    """A release's guarantee as the report says it: epsilon = inf reads as no protection."""
    if guarantee == "none (epsilon = inf)":
        return "none: epsilon = inf adds no noise (the plain encode/decode), no protection"
    return guarantee


def seed_spread_note(reference: dict) -> str:
    """One sentence: the retraining seeds' own spread around the 100 % reference."""
    seeds = reference.get("gap_restored_seeds") or []
    n = reference.get("retrain_seeds", len(seeds))
    if not seeds or not all(math.isfinite(g) for g in seeds):
        return ("There is no gap to restore at this size (the original model is as accurate on the reversed split "
                "as retraining), so `gap_restored` is undefined (nan).")
    shares = ", ".join(f"{g:.0%}" for g in seeds)
    accs = ", ".join(f"{a:.4f}" for a in reference.get("reversed_accuracies", []))
    return (f"Retraining is the reference: the `retrain` row is the mean of its {n} seeds and restores 100% of the "
            f"gap by definition. The seeds one by one restore {shares} of it (reversed accuracy {accs}): that spread, "
            f"{min(seeds):.0%} to {max(seeds):.0%}, is retraining's own noise, and a method inside it is as close to "
            "retraining as another retraining seed is.")


def benchmark_note(table_reversed: dict, scale: dict | None = None) -> str | None:
    """One line when the demo's unlearning run is not in the regime of the speed-up claims (`None` when it is).

    Args:
        table_reversed (`dict`): the `compare_on_reversed_split` table of the run.
        scale (`dict`, *optional*): ``num_train`` and ``epochs`` of the run's training, for the sentence.
    """
    rows = table_reversed["rows"]
    short = {m: rows[m].get("speedup_vs_retrain") for m, target in BENCHMARK_SPEEDUP_TARGETS.items()
             if m in rows and (rows[m].get("speedup_vs_retrain") or 0.0) < target}
    if not short:
        return None
    retrain_seconds = rows.get("retrain", {}).get("seconds")
    size = ""
    if scale:
        size = f" on {scale['num_train']:,} images for {scale['epochs']} epoch{'s' * (scale['epochs'] != 1)}"
    took = f" ({retrain_seconds:.0f} s here)" if retrain_seconds else ""
    measured = ", ".join(f"{m} {'-' if v is None else f'{v:.3g}x'}" for m, v in short.items())
    targets = " and ".join(f"{m} >= {t:g}x" for m, t in BENCHMARK_SPEEDUP_TARGETS.items())
    return (f"**This small run is not the unlearning benchmark**: retraining{size} is cheap{took}, while the updates' "
            "costs (per-pair gradients, the Hessian estimate, the step search on held-out pairs, a first call's "
            f"one-time set-up) do not shrink with it, so the speed-ups here ({measured}) say nothing about the claims "
            f"({targets} over retraining on 5,000 images and 20 epochs), which `{BENCHMARK_COMMAND}` measures.")


def _renamed(table: dict, names: dict) -> dict:
    return {**table, "rows": {names.get(k, k): v for k, v in table["rows"].items()}}


def _release_table(releases: list[dict]) -> list[str]:
    lines = ["| epsilon | delta | noise multiplier | sigma per attribute | strength | noise source | guarantee |",
             "|---|---|---|---|---|---|---|"]
    for rel in releases:
        sig = ", ".join(f"{k}: {_fmt(v)}" for k, v in rel["sigmas"].items())
        lines.append(f"| {epsilon_label(rel['epsilon'])} | {rel['delta']:g} | {_fmt(rel['noise_multiplier'])} | "
                     f"{_cell(sig)} | {rel['strength']:.3f} | {_cell(rel['noise_source'])} | "
                     f"{_cell(guarantee_label(rel['guarantee']))} |")
    return lines


def _evaluation_lines(evaluation: dict, out: Path) -> list[str]:
    from .evaluation.experiments.report import _table, unmatched_notes

    lines = ["## Privacy-utility evaluation (quick sweep)", "", *_table(evaluation), ""]
    for note in unmatched_notes(evaluation):
        lines += [note, ""]
    files = evaluation.get("files", {})
    for key, caption in (("privacy_utility", "privacy-utility trade-off"),
                         ("leakage_vs_epsilon", "protected-attribute leakage vs epsilon"),
                         ("audit", "empirical privacy audit"),
                         ("samples_methods", "samples of every method")):
        if key in files:
            lines += [f"![{caption}]({Path(files[key]).relative_to(out).as_posix()})", ""]
    if "results_md" in files:
        lines += ["Full evaluation report (claims checked, audit details, commands): "
                  f"[evaluation/results.md]({Path(files['results_md']).relative_to(out).as_posix()}).", ""]
    return lines


def report_lines(metrics: dict, out: str | Path) -> list[str]:
    """The Markdown lines of ``report.md``, from the dict ``dpdiffusion demo`` writes to ``metrics.json``.

    Args:
        metrics (`dict`): ``releases`` (privacy reports), ``unlearning`` (``setup``, ``table``,
            ``reversed_setup``, ``table_reversed``, optionally ``scale``), ``evaluation`` (the sweep's summary or
            `None`), ``attributes``, ``num_images``, ``num_inference_steps``, ``seconds``, ``stage_seconds``,
            ``torch_threads``.
        out (`str` or `Path`): the report's folder (figure links are relative to it).
    """
    from .evaluation.unlearning_metrics import format_table

    out = Path(out)
    releases, unlearning = metrics["releases"], metrics["unlearning"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["stage_seconds"].items())
    lines = [
        "# dpdiffusion demo report",
        "",
        f"Protected attributes: {', '.join(metrics['attributes'])}; {metrics['num_images']} SynthFaces images; "
        f"{metrics['num_inference_steps']} DDIM steps; {metrics['seconds']} s in all ({stages}; "
        f"{metrics['torch_threads']} torch threads). Produced by `dpdiffusion demo`; every figure below is computed "
        "by this run.",
        "",
        "## Protected releases",
        "",
        "![before/after grid](grid.png)",
        "",
        "Rows: the originals, then the same faces released at each epsilon (the same stochastic code x_T for every "
        "row; the privacy noise of each release is fresh, from the OS CSPRNG). epsilon = inf switches the mechanism "
        "off: that row shows what the model makes of a face without any protection.",
        "",
        *_release_table(releases),
        "",
        "Neighbouring relation: " + releases[0]["neighbouring_relation"] + ".",
        "",
    ]
    rev = unlearning["table_reversed"]
    ref = rev["reference"]
    n_seeds = ref["retrain_seeds"]
    lines += ["## Feature unlearning", "", unlearning["setup"], "", format_table(unlearning["table"]), "",
              "![unlearning time and accuracy](unlearning.png)", ""]
    note = benchmark_note(rev, unlearning.get("scale"))
    if note:
        lines += [note, ""]
    lines += ["### Where it matters: the reversed-correlation split", "",
              f"{unlearning['reversed_setup']} Reference: retraining, mean over {n_seeds} seeds "
              f"(smiling accuracy {ref['reversed_accuracy']:.4f}; agreement between the retrained models "
              f"{ref['agreement_floor']:.4f}, the noise floor; their membership-inference AUC {ref['mia_auc']:.4f}).",
              "", format_table(_renamed(rev, {"retrain": f"retrain (mean of {n_seeds} seeds)"})), "",
              seed_spread_note(ref), "",
              "![gap restored against seconds](gap_restored.png)", ""]
    evaluation = metrics.get("evaluation")
    if evaluation and evaluation.get("rows") is not None:
        lines += _evaluation_lines(evaluation, out)
    return lines
