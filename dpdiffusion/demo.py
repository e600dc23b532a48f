"""``dpdiffusion demo``: the main job on the embedded default, end to end, offline, on a laptop CPU.

Stages (each with a progress bar; every figure written comes from the code that computes it):

1. make a SynthFaces sample (ground-truth attributes);
2. protect it at several epsilons with ``DPDiffusionPipeline`` and save a before/after grid (``grid.png``)
   with the privacy report of each row;
3. feature unlearning: train a classifier on original SynthFaces (whose skin tone is correlated with smiling, so
   the model has a reason to use it), protect 30% of its training images at epsilon = 1, and unlearn them with
   the first- and second-order updates and one epoch of fine-tuning, side by side with retraining from scratch
   (two seeds); measured on clean test images and on a reversed-correlation split (skin tone the opposite of
   smiling on every face, rendered exactly with SynthFaces counterfactuals) as the share of the original ->
   retrained gap restored (``gap_restored.png``);
4. the privacy-utility evaluation (the quick sweep of ``dpdiffusion.evaluation.experiments``: every method at
   epsilon 1 and inf, leakage, utility, identity, quality, audit, plots in ``evaluation/``);
5. write ``report.md``, ``report.html`` (the same content, self-contained apart from the PNGs), ``metrics.json``
   ``unlearning.png`` and ``gap_restored.png``; the report is rendered from ``metrics.json``'s content by
   `dpdiffusion.demo_report`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from .demo_report import markdown_to_html, report_lines  # noqa: F401  (markdown_to_html: public here too)
from .models.steps import DEFAULT_NUM_INFERENCE_STEPS

logger = logging.getLogger(__name__)

DEMO_EPSILONS = (0.5, 1.0, 4.0, math.inf)


def _grid(rows: list[list[PIL.Image.Image]], labels: list[str], scale: int = 3) -> PIL.Image.Image:
    size = rows[0][0].size[0] * scale
    label_w = 150
    grid = PIL.Image.new("RGB", (label_w + size * len(rows[0]), size * len(rows)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(rows, labels)):
        draw.text((6, r * size + size // 2 - 6), label, fill="black")
        for c, img in enumerate(row):
            grid.paste(img.resize((size, size), PIL.Image.NEAREST), (label_w + c * size, r * size))
    return grid


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.4g}"


def plot_unlearning(table: dict, path: str | Path) -> Path:
    """Bar charts of a `compare_unlearning` table: wall-clock seconds and test accuracy per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in table["rows"] if table["rows"][n].get("seconds") is not None]
    fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=(9, 3.2))
    colors = ["tab:gray" if n == "retrain" else "tab:blue" for n in names]
    ax_t.bar(names, [table["rows"][n]["seconds"] for n in names], color=colors)
    ax_t.set_ylabel("seconds (one run, same machine)")
    ax_t.set_title("Unlearning time")
    acc_names = list(table["rows"])
    ax_a.bar(acc_names, [table["rows"][n]["test_accuracy"] for n in acc_names],
             color=["tab:gray" if n in ("retrain", "original") else "tab:blue" for n in acc_names])
    low = min(table["rows"][n]["test_accuracy"] for n in acc_names)
    ax_a.set_ylim(max(0.0, low - 0.05), 1.0)
    ax_a.set_ylabel("test accuracy (clean images)")
    ax_a.set_title("Accuracy after unlearning")
    for ax in (ax_t, ax_a):
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


AUDIT_NOISE_NOTE = (
    "note: the empirical privacy audit of this stage draws its noise from seeded generators on purpose: replaying "
    "the same noise on two neighbouring inputs, many thousands of times, is how it measures the mechanism's epsilon. "
    "Nothing the audit draws is released, so the warning below that such outputs 'are not private releases' is "
    "expected; the grid and every release of this demo use the OS CSPRNG."
)


@contextlib.contextmanager
def _explain_audit_noise():
    """Print `AUDIT_NOISE_NOTE` once, right before the seeded-noise warning (`InsecurePRNGWarning`) is shown."""
    from .privacy.noise import InsecurePRNGWarning

    explained = False
    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            nonlocal explained
            if issubclass(category, InsecurePRNGWarning) and not explained:
                explained = True
                print("\n" + AUDIT_NOISE_NOTE, flush=True)  # on its own line, after any progress bar
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def run_demo(out: str | Path, *, model: str | None = None, num_images: int = 16, seed: int = 0,
             num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS, epsilons=DEMO_EPSILONS, delta: float = 1e-5,
             attributes=("dark_skin", "long_hair"), unlearning_options: dict | None = None,
             evaluation_options: dict | None = None) -> Path:
    """Run the demo and return the path of ``report.md``.

    Args:
        unlearning_options (`dict`, *optional*): keyword arguments of `run_unlearning_stage` (sizes, epochs).
        evaluation_options (`dict`, *optional*): keyword arguments of
            `dpdiffusion.evaluation.experiments.run_paper_experiments` (default: its ``quick=True`` sweep).
    """
    from .models.default import load_pipeline as _load_pipeline
    from .data.synthfaces import make_synthfaces_arrays

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got num_images={num_images}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stage_seconds: dict[str, float] = {}
    pipe = _load_pipeline(model)
    print(f"[1/5] SynthFaces: {num_images} faces at {pipe.image_size} px (seed {seed + 999})")
    images, params = make_synthfaces_arrays(num_images, image_size=pipe.image_size, seed=seed + 999)
    originals = [PIL.Image.fromarray(im) for im in images]

    t0 = time.monotonic()
    print(f"[2/5] protecting {list(attributes)} at epsilon in {[_fmt(e) for e in epsilons]}")
    rows, labels, releases = _protect_stage(pipe, originals, attributes=attributes, epsilons=epsilons, delta=delta,
                                            num_inference_steps=num_inference_steps, seed=seed)
    grid_path = out / "grid.png"
    _grid(rows, labels).save(grid_path)
    stage_seconds["protect"] = time.monotonic() - t0

    t0 = time.monotonic()
    print("[3/5] feature unlearning against retraining")
    unlearning = run_unlearning_stage(pipe, seed=seed, **{"num_inference_steps": min(num_inference_steps, 10),
                                                          **(unlearning_options or {})})
    print(unlearning["table_md"])
    plot_unlearning(unlearning["table"], out / "unlearning.png")
    from .evaluation.plots import plot_gap_restored

    plot_gap_restored(unlearning["table_reversed"], out / "gap_restored.png")
    stage_seconds["unlearning"] = time.monotonic() - t0

    t0 = time.monotonic()
    print("[4/5] privacy-utility evaluation (quick sweep)")
    with _explain_audit_noise():
        evaluation = run_evaluation_stage(pipe, out, seed=seed, **(evaluation_options or {}))
    stage_seconds["evaluation"] = time.monotonic() - t0

    print("[5/5] writing the report")
    evaluation_summary = None
    if evaluation is not None:
        evaluation_summary = {k: evaluation[k] for k in ("claims", "clean", "rows", "unmatched_obfuscations", "audit",
                                                         "files", "config") if k in evaluation}
    metrics = {
        "model": model or "DEFAULT_MODEL",
        "num_images": num_images,
        "num_inference_steps": num_inference_steps,
        "attributes": list(attributes),
        "releases": releases,
        "unlearning": {k: v for k, v in unlearning.items() if k not in ("table_md", "table_reversed_md")},
        "evaluation": evaluation_summary,
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "torch_threads": torch.get_num_threads(),
        "seconds": round(time.monotonic() - started, 1),
    }
    lines = report_lines(metrics, out)
    _atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    _atomic_write(out / "report.md", "\n".join(lines) + "\n")
    _atomic_write(out / "report.html", markdown_to_html(lines))
    print(f"wrote {out / 'metrics.json'}, {grid_path}, {out / 'unlearning.png'}, {out / 'gap_restored.png'} and "
          f"{out / 'evaluation'}/")
    print(f"done in {metrics['seconds']:.0f} s. Report: {out / 'report.md'} (HTML: {out / 'report.html'})")
    return out / "report.md"


def _protect_stage(pipe, originals, *, attributes, epsilons, delta, num_inference_steps, seed):
    """Release ``originals`` at each epsilon (same stochastic code x_T for every row): the grid rows, their
    labels and the privacy reports."""
    rows, labels, releases = [originals], ["original"], []
    for eps in epsilons:
        result = pipe(originals, attributes=list(attributes), epsilon=eps, delta=delta,
                      num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed),
                      output_type="pil")
        rows.append(result.images)
        labels.append("epsilon=inf: none" if math.isinf(result.epsilon) else f"epsilon={_fmt(result.epsilon)}")
        releases.append(result.report.to_dict())
    return rows, labels, releases


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_unlearning_stage(pipe, *, seed: int = 0, num_train: int = 2000, num_test: int = 500, frac_changed: float = 0.3,
                         epochs: int = 8, epsilon: float = 1.0, num_inference_steps: int = 10) -> dict:
    """Train on originals, protect a fraction with ``pipe``, unlearn (first/second order) vs retrain."""
    from .data.synthfaces import counterfactual_params, render_faces, sample_face_params
    from .evaluation.unlearning_metrics import compare_unlearning, format_table
    from .evaluation.unlearning_shift import compare_on_reversed_split, reversed_correlation_split
    from .training.classifier import build_classifier, train_classifier
    from .unlearning import unlearn

    labels_names = ("smiling", "eyeglasses", "wearing_hat")
    rng = np.random.default_rng(seed)
    size = pipe.image_size
    params = sample_face_params(num_train + num_test, seed=seed + 2024)
    train_p = {k: v[:num_train] for k, v in params.items()}
    test_p = {k: v[num_train:] for k, v in params.items()}
    agree = rng.random(num_train) < 0.9  # dataset bias: skin tone agrees with smiling on 90% of training images
    train_p = counterfactual_params(train_p, "dark_skin",
                                    value=np.where(agree, train_p["smiling"], ~train_p["smiling"]))
    train_images, test_images = render_faces(train_p, image_size=size), render_faces(test_p, image_size=size)
    lab = lambda p: torch.from_numpy(np.stack([p[a] for a in labels_names], 1).astype(np.float32))  # noqa: E731
    y, y_test = lab(train_p), lab(test_p)
    recipe = dict(epochs=epochs, batch_size=64, lr=3e-3, seed=seed, progress=True)

    def fresh(init_seed=seed):
        return build_classifier(len(labels_names), image_size=size, seed=init_seed, label_names=list(labels_names))

    original = train_classifier(fresh(), torch.from_numpy(train_images), y, **recipe)
    changed = np.sort(rng.permutation(num_train)[: int(round(frac_changed * num_train))])
    protected = []
    for i in range(0, len(changed), 64):
        batch = [PIL.Image.fromarray(im) for im in train_images[changed[i:i + 64]]]
        out = pipe(batch, attributes=["dark_skin", "long_hair"], epsilon=epsilon, num_inference_steps=num_inference_steps,
                   generator=torch.Generator().manual_seed(seed + i), output_type="np")
        protected.append((out.images * 255).round().astype(np.uint8))
        report = out.report
    revised = train_images.copy()
    revised[changed] = np.concatenate(protected)
    orig_pairs = (torch.from_numpy(train_images[changed]), y[changed])
    rev_pairs = (torch.from_numpy(revised[changed]), y[changed])
    common = dict(train_set=(torch.from_numpy(revised), y), seed=seed, progress=True)
    retrained = unlearn(original, orig_pairs, rev_pairs, method="retrain",
                        retrain_fn=lambda x, t: train_classifier(fresh(), x, t, **recipe), **common)
    other_seed = seed + 1  # another initialisation and data order: the noise floor of retraining itself
    retrained_2 = unlearn(original, orig_pairs, rev_pairs, method="retrain", retrain_fn=lambda x, t: train_classifier(
        fresh(other_seed), x, t, **{**recipe, "seed": other_seed}), **common)
    results = {"finetune": unlearn(original, orig_pairs, rev_pairs, method="finetune", epochs=1, **common)}
    results.update({m: unlearn(original, orig_pairs, rev_pairs, method=m, **common)
                    for m in ("first_order", "second_order")})
    rev_images, rev_labels, _ = reversed_correlation_split(num_test, label_names=labels_names, image_size=size,
                                                           seed=seed + 4048)
    table_reversed = compare_on_reversed_split(
        results, [retrained, retrained_2], original=original, clean=(test_images, y_test),
        reversed_split=(rev_images, rev_labels), column=0, members=(train_images[changed], y[changed]),
        non_members=(test_images, y_test), seed=seed)
    table = compare_unlearning(results, retrained, original=original, test=(test_images, y_test),
                               members=(train_images[changed], y[changed]), non_members=(test_images, y_test),
                               probe=(test_images, test_p["dark_skin"].astype(np.int64)), seed=seed)
    setup = (f"{num_train} SynthFaces training images (skin tone agrees with smiling on 90% of them), "
             f"{len(changed)} ({frac_changed:.0%}) replaced by their protected versions (dark_skin, long_hair; "
             f"epsilon={_fmt(report.epsilon)}, delta={report.delta:g}, {report.guarantee}); a ResNet classifier of "
             f"smiling/eyeglasses/wearing_hat; {num_test} clean test images.")
    reversed_setup = (f"{num_test} fresh SynthFaces whose skin tone is the opposite of smiling on every face (the "
                      "same face parameters with dark_skin flipped where it agreed: exact counterfactual renders), so "
                      "the shortcut the original model learnt is always wrong; `reversed_accuracy` is the smiling "
                      "accuracy there, `gap_restored` the share of the gap between the original model and "
                      "retraining (the mean of the retraining seeds) that a method restores.")
    return {"setup": setup, "table": table, "table_md": format_table(table), "privacy": report.to_dict(),
            "reversed_setup": reversed_setup, "table_reversed": table_reversed,
            "table_reversed_md": format_table(table_reversed),
            "scale": {"num_train": num_train, "epochs": epochs, "num_changed": len(changed)}}


def run_evaluation_stage(pipe, out: Path, *, seed: int = 0, **options) -> dict | None:
    """The quick privacy-utility sweep of ``dpdiffusion.evaluation.experiments`` (None if it is unavailable)."""
    from .evaluation.experiments import run_paper_experiments

    return run_paper_experiments(pipe=pipe, out=out / "evaluation", seed=seed, **{"quick": True, **options})
