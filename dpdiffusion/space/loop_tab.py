"""The Space's "Dataset and model" tab: the privacy loop (`dpdiffusion.loop.PrivacyLoop`) on the embedded default.

The data are SynthFaces (synthetic faces of no real person) whose skin tone agrees with smiling on 90 % of the
training images, and the classifier a small ResNet of smiling / eyeglasses / wearing_hat trained on them on first use
(cached in the tab's work folder). The tab shows a grid of preview releases of the pilot, a plot of utility and
leakage against epsilon built from the steps seen so far with the current point marked, the figures, and the three
buttons; on accept, the final figures and the download of the release and of the unlearned model (zip files).

Pure functions (`plot_steps`, `step_markdown`, `final_markdown`, `LoopTab`'s handlers) carry the logic; `build_loop_tab`
lays out the components inside the caller's `gr.Blocks` (e.g. under ``gr.Tab("Dataset and model")``) and
`build_loop_demo` is a page holding only this tab.

Privacy: the previews and pilot figures are shown to the person driving the tab (the data owner of this synthetic
set) and not charged; only accept releases, into a fresh folder of the work folder, charged in the tab's own ledger.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "LoopTab",
    "build_loop_demo",
    "build_loop_tab",
    "final_markdown",
    "make_default_loop",
    "plot_steps",
    "step_markdown",
]

LABELS = ("smiling", "eyeglasses", "wearing_hat")
PROTECTED = ("dark_skin",)


def make_default_loop(work_dir, *, num_train: int = 256, num_held_out: int = 128, pilot_size: int = 32,
                      correlation: float = 0.9, classifier_epochs: int = 4, seed: int = 0, pipe: Any = None,
                      **loop_kwargs):
    """A `PrivacyLoop` on SynthFaces (skin tone agreeing with smiling on ``correlation`` of the training faces) and a
    ResNet trained on them, cached in ``work_dir/classifier`` (trained on first use)."""
    import datasets
    import PIL.Image
    import torch

    from ..data.synthfaces import (
        counterfactual_params,
        render_faces,
        sample_face_params,
    )
    from ..loop import PrivacyLoop
    from ..models.default import load_pipeline
    from ..training.classifier import build_classifier, train_classifier
    from ..unlearning.data import default_image_processor

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    params = sample_face_params(num_train + num_held_out, seed=seed)
    train_p = {k: v[:num_train] for k, v in params.items()}
    held_p = {k: v[num_train:] for k, v in params.items()}
    agree = np.random.default_rng(seed).random(num_train) < correlation
    train_p = counterfactual_params(train_p, "dark_skin", value=np.where(agree, train_p["smiling"], ~train_p["smiling"]))
    columns = (*PROTECTED, *LABELS)
    features = datasets.Features({"image": datasets.Image(), **{c: datasets.Value("bool") for c in columns}})

    def dataset(p):
        images = render_faces(p, image_size=32)
        return datasets.Dataset.from_dict({"image": [PIL.Image.fromarray(im) for im in images],
                                           **{c: [bool(v) for v in p[c]] for c in columns}}, features=features), images

    train, train_images = dataset(train_p)
    held, _ = dataset(held_p)
    classifier = work / "classifier"
    if not (classifier / "model.safetensors").is_file():
        labels = torch.tensor(np.stack([train_p[c] for c in LABELS], 1).astype(np.float32))
        model = build_classifier(len(LABELS), image_size=32, label_names=list(LABELS), seed=seed)
        model = train_classifier(model, train_images, labels, epochs=classifier_epochs, batch_size=64, lr=3e-3,
                                 seed=seed, progress=False)
        tmp = work / ".classifier.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        default_image_processor(32).save_pretrained(tmp)
        tmp.replace(classifier)
    if pipe is None:
        pipe = load_pipeline(None)
        pipe.set_progress_bar_config(disable=True)
    options = dict(attributes=list(PROTECTED), label_columns=list(LABELS), held_out=held, pilot_size=pilot_size,
                   num_previews=8, seed=seed)
    options.update(loop_kwargs)
    return PrivacyLoop(pipe, train, str(classifier), **options)


def _mean_utility(figures: dict) -> tuple[float, float, float]:
    rows = list(figures["utility"]["per_label"].values())
    return (float(np.mean([r["accuracy"] for r in rows])), float(np.mean([r["ci_low"] for r in rows])),
            float(np.mean([r["ci_high"] for r in rows])))


def plot_steps(steps: dict, current: float | None):
    """Utility (mean accuracy over the labels, held-out clean images) and leakage (the attacker's accuracy on the
    released images, with the DP bound) against epsilon, one point per step seen; the current step ringed.

    Returns:
        `matplotlib.figure.Figure`
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    eps = sorted(steps)
    if eps:
        util = [_mean_utility(steps[e].figures) for e in eps]
        attr = next(iter(steps[eps[0]].figures["leakage_release"]))
        leak = [steps[e].figures["leakage_release"][attr] for e in eps]
        ax.errorbar(eps, [u[0] for u in util], yerr=[[u[0] - u[1] for u in util], [u[2] - u[0] for u in util]],
                    marker="o", capsize=3, label="utility (mean accuracy)")
        ax.errorbar(eps, [r["accuracy"] for r in leak], yerr=[[r["accuracy"] - r["ci_low"] for r in leak],
                                                              [r["ci_high"] - r["accuracy"] for r in leak]],
                    marker="s", capsize=3, label=f"leakage of {attr} (attacker on the release)")
        ax.plot(eps, [r["bound"] for r in leak], ls="--", color="gray", label="DP bound on any attacker")
        if current in steps:
            ax.scatter([current], [_mean_utility(steps[current].figures)[0]], s=160, facecolors="none",
                       edgecolors="red", linewidths=2, zorder=5, label="current step")
            ax.scatter([current], [steps[current].figures["leakage_release"][attr]["accuracy"]], s=160,
                       facecolors="none", edgecolors="red", linewidths=2, zorder=5)
        ax.set_xscale("log")
    ax.set_xlabel("epsilon")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def step_markdown(step) -> str:
    """The figures of one step, as a markdown table (each with its 95 % interval)."""
    f = step.figures
    lines = [f"**epsilon = {step.epsilon:g}** (pilot: previews not charged; {step.seconds:.0f} s)", "",
             "| figure | value |", "|---|---|"]
    for name, r in f["utility"]["per_label"].items():
        lines.append(f"| utility: {name} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                     f"(original {r['original_accuracy']:.3f}) |")
    for attr, r in f["leakage_release"].items():
        lines.append(f"| leakage from the release: {attr} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, "
                     f"{r['ci_high']:.3f}] (DP bound {r['bound']:.3f}; from the labels alone "
                     f"{r['label_baseline']:.3f}) |")
    for attr, r in f["leakage_model"].items():
        if r is not None:
            lines.append(f"| leakage from the model: {attr} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, "
                         f"{r['ci_high']:.3f}] |")
    lines.append(f"| membership-inference AUC | {f['mia_auc']['auc']:.3f} ± {f['mia_auc']['std_error']:.3f} |")
    return "\n".join(lines)


def final_markdown(result) -> str:
    """The final figures of an accepted loop (full data)."""
    f = result.figures
    lines = [f"**Accepted epsilon = {result.epsilon:g}**: {f['released']} images released with fresh noise, each "
             "charged once.", "", "| figure (full data) | value |", "|---|---|"]
    for name, r in f["utility"]["per_label"].items():
        lines.append(f"| utility: {name} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |")
    for attr, r in f["leakage_release"].items():
        lines.append(f"| leakage from the release: {attr} | {r['accuracy']:.3f} (DP bound {r['bound']:.3f}; from "
                     f"the labels alone {r['label_baseline']:.3f}) |")
    lines.append(f"| membership-inference AUC | {f['mia_auc']['auc']:.3f} ± {f['mia_auc']['std_error']:.3f} |")
    if isinstance(f.get("gap_restored"), float):
        lines.append(f"| share of the gap to retraining restored | {f['gap_restored']:.3f} |")
    return "\n".join(lines)


class LoopTab:
    """The tab's logic: one `PrivacyLoop`, made on first use by ``make_loop()``; handlers return what the page shows.

    Args:
        make_loop (`Callable[[], PrivacyLoop]`): builds the loop (trains the classifier on first use).
        work_dir (`str` or `Path`): where accepted results go (one new folder per accept).
    """

    def __init__(self, make_loop: Callable[[], Any], work_dir):
        self._make_loop = make_loop
        self.work_dir = Path(work_dir)
        self.loop = None
        self.result = None
        self._lock = threading.Lock()

    def _view(self, step):
        return (list(step.previews), plot_steps(self.loop.steps, step.epsilon), step_markdown(step))

    def start(self):
        """The first step (the loop is made on first use)."""
        with self._lock:
            if self.loop is None:
                self.loop = self._make_loop()
            return self._view(self.loop.step())

    def judge(self, verdict: str):
        """``"more_privacy"`` or ``"more_utility"``: the next step."""
        if verdict not in ("more_privacy", "more_utility"):
            raise ValueError(f"verdict must be 'more_privacy' or 'more_utility', got verdict={verdict!r}")
        with self._lock:
            if self.loop is None:
                self.loop = self._make_loop()
            if self.result is not None:
                raise ValueError("this loop was accepted; reload the page to start another")
            return self._view(self.loop.feedback(verdict))

    def accept(self):
        """Accept the current epsilon: (final figures markdown, [release zip, model zip])."""
        with self._lock:
            if self.loop is None:
                raise ValueError("start the loop before accepting")
            if self.result is None:
                n = sum(1 for _ in self.work_dir.glob("accepted-*")) if self.work_dir.exists() else 0
                out = self.work_dir / f"accepted-{n}"
                self.result = self.loop.accept(out)
                for name in ("release", "model"):
                    shutil.make_archive(str(out / name), "zip", root_dir=out / name)
            out = self.result.output_dir
            return final_markdown(self.result), [str(out / "release.zip"), str(out / "model.zip")]


def build_loop_tab(tab: LoopTab) -> dict:
    """Lay out the tab's components inside the current `gr.Blocks` context and wire them to ``tab``.

    Returns:
        `dict` of the components (by name), for tests.
    """
    import gradio as gr

    gr.Markdown("### Dataset and model\nSynthFaces (synthetic, no real person) whose skin tone agrees with smiling on "
                "90 % of the training faces, and a ResNet trained on them. Each step releases a pilot subset at "
                "epsilon (previews: yours, not charged), unlearns the classifier on it and shows the consequence. "
                "**Accept** releases the whole dataset once with fresh noise.", elem_id="dp-loop-intro")
    start_btn = gr.Button("Start (trains the classifier on first use)", elem_id="dp-loop-start", variant="primary")
    with gr.Row():
        gallery = gr.Gallery(label="Preview releases (pilot)", columns=4, height=260, elem_id="dp-loop-previews")
        plot = gr.Plot(label="Utility and leakage against epsilon", elem_id="dp-loop-plot")
    figures = gr.Markdown(elem_id="dp-loop-figures")
    with gr.Row():
        more_privacy = gr.Button("More privacy", elem_id="dp-loop-more-privacy")
        more_utility = gr.Button("More utility", elem_id="dp-loop-more-utility")
        accept = gr.Button("Accept", elem_id="dp-loop-accept", variant="primary")
    final = gr.Markdown(elem_id="dp-loop-final")
    files = gr.File(label="Release and unlearned model", file_count="multiple", elem_id="dp-loop-files")
    view = [gallery, plot, figures]

    def safe(fn):
        def run(*args):
            try:
                return fn(*args)
            except ValueError as exc:
                raise gr.Error(str(exc)) from None
        return run

    start_btn.click(safe(tab.start), [], view, api_name="loop_start", concurrency_id="release")
    more_privacy.click(safe(lambda: tab.judge("more_privacy")), [], view, api_name="loop_more_privacy",
                       concurrency_id="release")
    more_utility.click(safe(lambda: tab.judge("more_utility")), [], view, api_name="loop_more_utility",
                       concurrency_id="release")
    accept.click(safe(tab.accept), [], [final, files], api_name="loop_accept", concurrency_id="release")
    return {"start": start_btn, "gallery": gallery, "plot": plot, "figures": figures, "more_privacy": more_privacy,
            "more_utility": more_utility, "accept": accept, "final": final, "files": files}


def build_loop_demo(work_dir, *, make_loop: Callable[[], Any] | None = None):
    """A page holding only the "Dataset and model" tab (``make_loop`` default: `make_default_loop` in ``work_dir``).

    Returns:
        `gr.Blocks` (queued); its ``loop_tab`` attribute is the `LoopTab` behind it.
    """
    import gradio as gr

    work = Path(work_dir)
    tab = LoopTab(make_loop or (lambda: make_default_loop(work)), work)
    with gr.Blocks(title="dpdiffusion: the privacy loop", analytics_enabled=False) as demo:
        with gr.Tab("Dataset and model"):
            build_loop_tab(tab)
    demo.queue(max_size=16)
    demo.loop_tab = tab
    return demo
