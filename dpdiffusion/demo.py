"""``dpdiffusion demo``: the main job on the embedded default, end to end, offline, on a laptop CPU.

Stages (each with a progress bar; every figure written comes from the code that computes it):

1. make a SynthFaces sample (ground-truth attributes);
2. protect it at several epsilons with ``DPDiffusionPipeline`` and save a before/after grid (``grid.png``)
   with the privacy report of each row;
3. feature unlearning: train a classifier on original SynthFaces (whose skin tone is correlated with smiling, so
   the model has a reason to use it), protect 30% of its training images at epsilon = 1, and unlearn them with
   the first- and second-order updates, side by side with retraining from scratch;
4. the privacy-utility evaluation (a small sweep, ``dpdiffusion.evaluation.experiments``) when available;
5. write ``report.md``, ``report.html`` and ``metrics.json``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

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


def run_demo(out: str | Path, *, model: str | None = None, num_images: int = 16, seed: int = 0,
             num_inference_steps: int = 25, epsilons=DEMO_EPSILONS, delta: float = 1e-5,
             attributes=("dark_skin", "long_hair")) -> Path:
    """Run the demo and return the path of ``report.md``."""
    from .cli import _load_pipeline
    from .data.synthfaces import make_synthfaces_arrays

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got num_images={num_images}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pipe = _load_pipeline(model)
    print(f"[1/5] SynthFaces: {num_images} faces at {pipe.image_size} px (seed {seed + 999})")
    images, params = make_synthfaces_arrays(num_images, image_size=pipe.image_size, seed=seed + 999)
    originals = [PIL.Image.fromarray(im) for im in images]

    print(f"[2/5] protecting {list(attributes)} at epsilon in {[_fmt(e) for e in epsilons]}")
    rows, labels, releases = [originals], ["original"], []
    for eps in epsilons:
        result = pipe(originals, attributes=list(attributes), epsilon=eps, delta=delta,
                      num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed),
                      output_type="pil")
        rows.append(result.images)
        labels.append(f"epsilon={_fmt(result.epsilon)}")
        releases.append(result.report.to_dict())
    grid_path = out / "grid.png"
    _grid(rows, labels).save(grid_path)

    print("[3/5] feature unlearning against retraining")
    unlearning = run_unlearning_stage(pipe, seed=seed, num_inference_steps=min(num_inference_steps, 10))
    print(unlearning["table_md"])

    print("[4/5] privacy-utility evaluation (quick sweep)")
    evaluation = run_evaluation_stage(pipe, out, seed=seed)

    print("[5/5] writing the report")
    metrics = {
        "model": model or "DEFAULT_MODEL",
        "num_images": num_images,
        "num_inference_steps": num_inference_steps,
        "attributes": list(attributes),
        "releases": releases,
        "unlearning": {k: v for k, v in unlearning.items() if k != "table_md"},
        "evaluation": evaluation,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    lines = [
        "# dpdiffusion demo report",
        "",
        f"Protected attributes: {', '.join(attributes)}; {num_images} SynthFaces images; "
        f"{num_inference_steps} DDIM steps; {metrics['seconds']} s in all.",
        "",
        "![before/after grid](grid.png)",
        "",
        "| epsilon | delta | noise multiplier | sigma per attribute | strength | guarantee |",
        "|---|---|---|---|---|---|",
    ]
    for rel in releases:
        sig = ", ".join(f"{k}: {_fmt(v)}" for k, v in rel["sigmas"].items())
        lines.append(f"| {_fmt(rel['epsilon'])} | {rel['delta']:g} | {_fmt(rel['noise_multiplier'])} | {sig} | "
                     f"{rel['strength']:.3f} | {rel['guarantee']} |")
    lines += ["", "Neighbouring relation: " + releases[0]["neighbouring_relation"] + ".", ""]
    lines += ["## Feature unlearning", "", unlearning["setup"], "", unlearning["table_md"], ""]
    if evaluation and evaluation.get("table_md"):
        lines += ["## Privacy-utility evaluation", "", evaluation["table_md"], ""]
    (out / "report.md").write_text("\n".join(lines))
    body = "\n".join(f"<p>{html.escape(line)}</p>" for line in lines if line and not line.startswith(("|", "!")))
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
                    + "</tr>" for line in lines if line.startswith("|") and "---" not in line)
    (out / "report.html").write_text(f"<html><body>{body}<img src='grid.png'><table border=1>{table}</table>"
                                     "</body></html>")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'metrics.json'} and {grid_path}")
    return out / "report.md"


def run_unlearning_stage(pipe, *, seed: int = 0, num_train: int = 2000, num_test: int = 500, frac_changed: float = 0.3,
                         epochs: int = 8, epsilon: float = 1.0, num_inference_steps: int = 10) -> dict:
    """Train on originals, protect a fraction with ``pipe``, unlearn (first/second order) vs retrain."""
    from .data.synthfaces import counterfactual_params, render_faces, sample_face_params
    from .evaluation.unlearning_metrics import compare_unlearning, format_table
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

    def fresh():
        return build_classifier(len(labels_names), image_size=size, seed=seed, label_names=list(labels_names))

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
    results = {m: unlearn(original, orig_pairs, rev_pairs, method=m, **common) for m in ("first_order", "second_order")}
    table = compare_unlearning(results, retrained, original=original, test=(test_images, y_test),
                               members=(train_images[changed], y[changed]), non_members=(test_images, y_test),
                               probe=(test_images, test_p["dark_skin"].astype(np.int64)), seed=seed)
    setup = (f"{num_train} SynthFaces training images (skin tone agrees with smiling on 90% of them), "
             f"{len(changed)} ({frac_changed:.0%}) replaced by their protected versions (dark_skin, long_hair; "
             f"epsilon={_fmt(report.epsilon)}, delta={report.delta:g}, {report.guarantee}); a ResNet classifier of "
             f"smiling/eyeglasses/wearing_hat; {num_test} clean test images.")
    return {"setup": setup, "table": table, "table_md": format_table(table), "privacy": report.to_dict()}


def run_evaluation_stage(pipe, out: Path, *, seed: int = 0) -> dict | None:
    """The quick privacy-utility sweep of ``dpdiffusion.evaluation.experiments`` (None if it is unavailable)."""
    try:
        from .evaluation.experiments import run_paper_experiments
    except ImportError:  # pragma: no cover - the evaluation module is optional at this stage
        logger.warning("dpdiffusion.evaluation.experiments is not available; skipping the evaluation stage")
        return None
    return run_paper_experiments(pipe=pipe, out=out / "evaluation", quick=True, seed=seed)
