"""``dpdiffusion loop``: the data owner's privacy loop in the terminal (torch is imported only when it runs).

After each step it prints a table of the figures and the folder of the preview images (``OUT/previews/``: the
owner's, inside their trust boundary, never published), then asks for a verdict, or takes the next one from
``--verdicts`` (scripted runs). ``accept`` writes ``OUT/release/``, ``OUT/model/`` and ``OUT/loop.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

VERDICT_CHOICES = ("more_privacy", "more_utility", "accept")


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="The training images with their attribute and label columns (image folder with metadata, "
                        "save_to_disk folder or Hub dataset).")
    p.add_argument("--classifier", required=True,
                   help="Multi-label transformers AutoModelForImageClassification trained on --source (folder or Hub "
                        "id, with its image processor).")
    p.add_argument("--attributes", nargs="+", required=True, help="Protected attributes (columns of --source).")
    p.add_argument("--labels", nargs="+", required=True,
                   help="The classifier's outputs, 0/1 columns of --source named as in its id2label.")
    p.add_argument("--output-dir", required=True,
                   help="OUT: release/ (safe to publish), model/ (the unlearned classifier and its card), loop.json "
                        "and private/ and previews/ (the owner's: never publish them).")
    p.add_argument("--held-out", default=None,
                   help="Clean images the classifier was not trained on, same columns (default: a fifth of --source, "
                        "with a warning).")
    p.add_argument("--verdicts", nargs="+", choices=VERDICT_CHOICES, default=None,
                   help="Scripted verdicts, one per step, ending with accept (default: ask in the terminal).")
    p.add_argument("--epsilon", type=float, default=1.0, help="The first step's epsilon, in [0.01, 100].")
    p.add_argument("--delta", type=float, default=1e-5, help="Delta of every release, in (0, 1).")
    p.add_argument("--pilot-size", type=int, default=64, help="Rows each step releases and unlearns (>= 8).")
    p.add_argument("--num-previews", type=int, default=8, help="Preview images written per step (>= 1).")
    p.add_argument("--subject-column", default=None,
                   help="Column naming each row's person (default: one subject per row).")
    p.add_argument("--image-column", default="image", help="Image column.")
    p.add_argument("--ledger", default=None,
                   help="Privacy ledger (sqlite) charged at accept (default: a new one in OUT/private/ledger.sqlite).")
    p.add_argument("--budget-epsilon", type=float, default=10.0, help="Per-subject budget of a new ledger.")
    p.add_argument("--model", default=None, help="Pipeline folder or Hub repo id (default: the embedded default).")
    p.add_argument("--num-inference-steps", type=int, default=None, help="DDIM steps of every release.")
    p.add_argument("--unlearning-method", default=None,
                   help="Unlearning method (default: the unlearn job's, second_order).")
    p.add_argument("--attacker-epochs", type=int, default=8, help="Epochs of the attacker on the released images.")
    p.add_argument("--retrain-epochs", type=int, default=10,
                   help="Epochs of the retraining at accept, for the gap restored (0: no retraining).")
    p.add_argument("--batch-size", type=int, default=16, help="Images per batch of the accepted release.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the pilot and held-out choice (before any noise).")
    p.add_argument("--max-steps", type=int, default=50, help="Give up (nothing released) after this many steps.")
    p.set_defaults(func=cmd_loop)


def _ci(row) -> str:
    if row is None:
        return "n/a"
    return f"{row['accuracy']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def format_figures(epsilon: float, figures: dict, seconds: float | None = None) -> str:
    """A plain-text table of one step's (or the final) figures."""
    rows = [("epsilon", f"{epsilon:g}")]
    for name, row in figures["utility"]["per_label"].items():
        rows.append((f"utility: {name}", f"{_ci(row)} (original {row['original_accuracy']:.3f})"))
    for attr, row in figures["leakage_release"].items():
        rows.append((f"leakage from the release: {attr}", f"{_ci(row)} (DP bound {row['bound']:.3f}; from the "
                                                          f"labels alone {row['label_baseline']:.3f})"))
    for attr, row in figures["leakage_model"].items():
        bound = "" if row is None else f" (DP bound {row['bound']:.3f}, reference only)"
        rows.append((f"leakage from the model: {attr}", _ci(row) + bound))
    mia = figures["mia_auc"]
    rows.append(("membership-inference AUC", f"{mia['auc']:.3f} +- {mia['std_error']:.3f}"))
    gap = figures.get("gap_restored")
    if gap is not None and isinstance(gap, float) and not math.isnan(gap):
        rows.append(("gap restored", f"{gap:.3f}"))
    if seconds is not None:
        rows.append(("seconds", f"{seconds:.1f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _write_previews(folder: Path, step) -> Path:
    where = folder / f"epsilon-{step.epsilon:g}"
    where.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(step.previews):
        image.save(where / f"{k:02d}.png")
    return where


def _ask(epsilon: float) -> str:
    while True:
        answer = input(f"verdict at epsilon={epsilon:g} [more_privacy / more_utility / accept]: ").strip()
        if answer in VERDICT_CHOICES:
            return answer
        print(f"please answer one of {', '.join(VERDICT_CHOICES)}")


def cmd_loop(ns) -> int:
    from . import PrivacyLoop

    if ns.verdicts is None and not sys.stdin.isatty():
        raise ValueError("--verdicts is required when stdin is not a terminal (e.g. --verdicts more_privacy accept)")
    if ns.verdicts is not None and ns.verdicts[-1] != "accept":
        raise ValueError(f"--verdicts must end with accept (nothing is released otherwise), got {ns.verdicts}")
    if ns.verdicts is not None and "accept" in ns.verdicts[:-1]:
        raise ValueError(f"--verdicts may hold accept only at the end, got {ns.verdicts}")
    if ns.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {ns.max_steps}")
    out = Path(ns.output_dir)
    taken = [n for n in ("release", "model", "loop.json", "private") if (out / n).exists()]
    if taken:
        raise ValueError(f"--output-dir {out} already holds {taken}: use a new output folder")
    loop = PrivacyLoop(ns.model, ns.source, ns.classifier, attributes=ns.attributes, label_columns=ns.labels,
                       epsilon=ns.epsilon, delta=ns.delta, held_out=ns.held_out, pilot_size=ns.pilot_size,
                       num_previews=ns.num_previews, subject_column=ns.subject_column, image_column=ns.image_column,
                       num_inference_steps=ns.num_inference_steps, unlearning_method=ns.unlearning_method,
                       attacker_epochs=ns.attacker_epochs, retrain_epochs=ns.retrain_epochs, seed=ns.seed)
    previews = out / "previews"
    previews.mkdir(parents=True, exist_ok=True)
    os.chmod(previews, 0o700)
    verdicts = list(ns.verdicts) if ns.verdicts is not None else None
    for n in range(ns.max_steps):
        step = loop.step()
        where = _write_previews(previews, step)
        print(f"\nstep {n + 1} (pilot of {loop.pilot_size} rows; previews in {where}, not published, not charged):")
        print(format_figures(step.epsilon, step.figures, step.seconds), flush=True)
        verdict = verdicts.pop(0) if verdicts is not None else _ask(step.epsilon)
        print(f"verdict: {verdict}")
        if verdict == "accept":
            result = loop.accept(out, ledger=ns.ledger, budget_epsilon=ns.budget_epsilon, batch_size=ns.batch_size)
            print(f"\naccepted epsilon={result.epsilon:g}: final figures on the full data "
                  f"({result.figures['released']} images released, each subject charged in {result.ledger_path}):")
            print(format_figures(result.epsilon, result.figures))
            print(f"release (safe to publish): {result.release_dir}\nunlearned model: {result.model_dir}\n"
                  f"the loop's record (yours, not for publication): {result.loop_json}")
            return 0
        loop.feedback(verdict)
        if verdicts == []:
            raise ValueError("--verdicts ran out before accept")  # pragma: no cover - checked above
    print(f"no accept within --max-steps {ns.max_steps}: nothing was released", file=sys.stderr)
    return 1
