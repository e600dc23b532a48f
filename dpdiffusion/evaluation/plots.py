"""PNG figures of the paper experiments (matplotlib, Agg backend): every figure is drawn from the results dict
that ``run_paper_experiments`` also writes as JSON, so each plotted number can be looked up there."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["plot_privacy_utility", "plot_vs_epsilon", "plot_audit", "plot_gap_restored", "save_sample_grid",
           "epsilon_axis_value"]

_STYLE = {"dpdiffusion": ("tab:blue", "o"), "latent": ("tab:purple", "s"), "dp_pix": ("tab:red", "^"),
          "dp_pix_attribute": ("darkred", "<"),
          "pixel_gaussian": ("tab:orange", "v"), "blur": ("tab:gray", "x"), "pixelate": ("tab:brown", "+")}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def epsilon_axis_value(epsilon: float | None, finite: Sequence[float]) -> float:
    """x position of an epsilon on a log axis: ``inf`` is drawn one octave to the right of the largest finite one."""
    top = max([e for e in finite if e is not None and not math.isinf(e)] or [1.0])
    if epsilon is None or math.isinf(epsilon):
        return top * 2.0
    return float(epsilon)


def _rows_by_method(rows):
    out = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


def _eps_of(r):
    return r["epsilon"] if r.get("epsilon") is not None else r.get("matched_to_epsilon")


def _finish(fig, ax, path, title):
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return Path(path)


def plot_privacy_utility(rows: list[dict], path: str | Path, *, clean: dict | None = None) -> Path:
    """Utility (mean accuracy on unprotected attributes, clean test) against leakage (best attack accuracy on the
    protected attributes), one curve per method, points labelled by epsilon."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, rs in _rows_by_method(rows).items():
        rs = sorted(rs, key=lambda r: epsilon_axis_value(_eps_of(r), [1.0e9]))
        xs = [r["leakage_accuracy"] for r in rs]
        ys = [r["utility"]["mean_accuracy"] for r in rs]
        color, marker = _STYLE.get(method, ("black", "."))
        ax.plot(xs, ys, marker=marker, color=color, label=method)
        for r, x, y in zip(rs, xs, ys):
            e = _eps_of(r)
            ax.annotate("inf" if e is None or math.isinf(e) else f"{e:g}", (x, y), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    if clean:
        ax.scatter([clean["leakage_accuracy"]], [clean["utility_mean_accuracy"]], marker="*", s=120, color="green",
                   label="clean images", zorder=5)
    ax.set_xlabel("protected-attribute leakage (attack accuracy, lower is more private)")
    ax.set_ylabel("utility (accuracy on unprotected attributes)")
    return _finish(fig, ax, path, "Privacy-utility trade-off (labels: epsilon; obfuscations: matched quality)")


def plot_vs_epsilon(rows: list[dict], path: str | Path, *, key: str, ylabel: str, title: str,
                    bound: bool = False, reference: float | None = None, reference_label: str = "clean") -> Path:
    """A metric (``key``: a function of a row or a top-level row key) against epsilon, one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    finite = [_eps_of(r) for r in rows]
    getter = key if callable(key) else (lambda r: r[key])
    for method, rs in _rows_by_method(rows).items():
        pts = sorted((epsilon_axis_value(_eps_of(r), finite), getter(r)) for r in rs)
        color, marker = _STYLE.get(method, ("black", "."))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                label=method + (" (matched quality)" if method in ("blur", "pixelate") else ""))
    xs = sorted({epsilon_axis_value(e, finite) for e in finite})
    finite_eps = sorted({e for e in finite if e is not None and not math.isinf(e)})
    if bound and finite_eps:
        grid = np.geomspace(finite_eps[0], finite_eps[-1], 100) if len(finite_eps) > 1 else np.array(finite_eps)
        ax.plot(grid, np.exp(grid) / (1 + np.exp(grid)), "k--", lw=1, marker="_" if len(grid) == 1 else None,
                markersize=20, label="DP bound e^eps/(1+e^eps)")
    if reference is not None:
        ax.axhline(reference, color="green", ls=":", lw=1, label=reference_label)
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(["inf" if x == epsilon_axis_value(math.inf, finite) else f"{x:g}" for x in xs])
    ax.set_xlabel("epsilon (claimed; blur/pixelate: epsilon of dpdiffusion they are matched to)")
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, path, title)


def plot_audit(audit: dict, path: str | Path) -> Path:
    """Empirical epsilon lower bounds (95 % Clopper-Pearson) against the claimed epsilon, with the y = x line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    top = 1.0
    for method, per_eps in audit.items():
        best: dict = {}  # claim tested -> largest bound (a decoded row may test a smaller claim than its sweep epsilon)
        for eps, entry in per_eps.items():
            for v in entry.values():
                if isinstance(v, dict) and v.get("covered_by_claim"):
                    claim = float(v["claimed_epsilon"]) if v.get("claimed_epsilon") is not None else float(eps)
                    claim = round(claim, 6)
                    best[claim] = max(best.get(claim, 0.0), v["epsilon_lower_bound"])
        if not best:
            continue
        pts = sorted(best.items())
        top = max(top, max(p[0] for p in pts))
        color, marker = _STYLE.get(method, ("black", "."))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                label=f"{method} (best attack, own relation)")
    ours = audit.get("dpdiffusion", {})
    pts = []
    for eps, entry in ours.items():
        uncovered = [v for k, v in entry.items() if isinstance(v, dict) and v.get("covered_by_claim") is False
                     and k.startswith("image_pairs")]
        if uncovered:
            pts.append((float(eps), max(v["epsilon_lower_bound"] for v in uncovered)))
    if pts:
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=":", marker="o", color="tab:blue", alpha=0.6,
                label="dpdiffusion, image pairs (not covered: residual differs)")
    grid = np.linspace(0, top * 1.1, 10)
    ax.plot(grid, grid, "k--", lw=1, label="claimed epsilon (y = x)")
    ax.set_xlabel("claimed epsilon")
    ax.set_ylabel("empirical epsilon lower bound (95 % CP)")
    return _finish(fig, ax, path, "Empirical privacy audit")


_UNLEARNING_STYLE = {"first_order": ("tab:blue", "o"), "second_order": ("tab:purple", "s"),
                     "head_exact": ("tab:green", "D"), "finetune": ("tab:orange", "^"), "retrain": ("black", "*")}


def plot_gap_restored(table: dict, path: str | Path, *, title: str = "Feature unlearning on the reversed split") -> Path:
    """Share of the original -> retrained gap restored (reversed-correlation split) against wall-clock seconds,
    one point per method of a `compare_on_reversed_split` table (log-scaled time axis; retraining at 1, the band
    around it the retraining seeds' own spread, `reference["gap_restored_seeds"]`)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, row in table["rows"].items():
        if row.get("seconds") is None or row.get("gap_restored") is None or not math.isfinite(row["gap_restored"]):
            continue
        # a variant "first_order (training_loss)" takes its method's colour, with a plus marker
        base = name.split(" (")[0]
        color, marker = _UNLEARNING_STYLE.get(base, ("tab:gray", "x"))
        if base != name:
            marker = "P"
        ax.scatter([row["seconds"]], [row["gap_restored"]], color=color, marker=marker, s=70, label=name, zorder=3)
        ax.annotate(f"{row['gap_restored']:.0%}, {row['seconds']:.1f} s", (row["seconds"], row["gap_restored"]),
                    fontsize=7, textcoords="offset points", xytext=(5, -10))
    ax.axhline(1.0, color="black", ls=":", lw=1, label="retraining (mean over seeds)")
    seeds = [g for g in table.get("reference", {}).get("gap_restored_seeds", []) if math.isfinite(g)]
    if len(seeds) >= 2:  # the spread of retraining itself: each seed against the seeds' mean
        ax.axhspan(min(seeds), max(seeds), color="black", alpha=0.08, lw=0,
                   label=f"retraining seeds ({min(seeds):.0%} to {max(seeds):.0%})")
    ax.axhline(0.0, color="tab:red", ls=":", lw=1, label="original model")
    ax.set_xscale("log")
    ax.set_xlabel("seconds (one run, same machine)")
    ax.set_ylabel("share of the original -> retrained gap restored")
    return _finish(fig, ax, path, title)


def save_sample_grid(rows: list[tuple[str, torch.Tensor]], path: str | Path, *, scale: int = 3) -> Path:
    """A labelled grid: one row per ``(label, images (K, 3, H, W) in [0, 1])``."""
    import PIL.Image
    import PIL.ImageDraw

    k = max(len(imgs) for _, imgs in rows)
    h, w = rows[0][1].shape[-2:]
    label_w = 190
    grid = PIL.Image.new("RGB", (label_w + k * w * scale, len(rows) * h * scale), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for i, (label, imgs) in enumerate(rows):
        draw.text((4, i * h * scale + h * scale // 2 - 6), label, fill="black")
        arr = (imgs.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for j, a in enumerate(arr):
            tile = PIL.Image.fromarray(a).resize((w * scale, h * scale), PIL.Image.NEAREST)
            grid.paste(tile, (label_w + j * w * scale, i * h * scale))
    grid.save(path)
    return Path(path)


def plot_postprocessing_effect(rows: list[dict], path: str | Path) -> Path:
    """Utility (judge agreement on the unprotected attributes, min) and leakage (best attack accuracy on the
    protected attributes, with the DP bound) against epsilon, one line per post-processing
    (`dpdiffusion.evaluation.postprocessing.postprocessing_effect` rows)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"clip": ("tab:red", "s"), "posterior_mean": ("tab:blue", "o")}
    for post in dict.fromkeys(r["post_processing"] for r in rows):
        rs = sorted((r for r in rows if r["post_processing"] == post), key=lambda r: r["epsilon"])
        color, marker = styles.get(post, ("black", "."))
        eps = [r["epsilon"] for r in rs]
        axes[0].plot(eps, [r["utility_agreement_min"] for r in rs], marker=marker, color=color, label=post)
        axes[1].plot(eps, [r["leakage_best"] for r in rs], marker=marker, color=color, label=post)
    eps = sorted({r["epsilon"] for r in rows})
    bound = [max(max(v["bound"] for v in r["leakage"].values()) for r in rows if r["epsilon"] == e) for e in eps]
    axes[1].plot(eps, bound, "k--", lw=1, marker="_", markersize=12,
                 label="DP bound at the attribute's prior (max over attributes)")
    return _finish_epsilon_panels(fig, axes, eps, path, ("utility: agreement on unprotected attributes (min)",
                                                        "leakage: best attack accuracy (protected)"),
                                  "Post-processing of the released coordinates: clip vs posterior mean")


def _finish_epsilon_panels(fig, axes, eps, path, ylabels, title) -> Path:
    """Log epsilon axes ticked at ``eps``, labels, legends, title; save to ``path`` and close."""
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(eps)
        ax.set_xticklabels([f"{e:g}" for e in eps])
        ax.set_xlabel("epsilon")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return Path(path)


def plot_postprocessing_sweep(results: dict, path: str | Path, *, method: str = "dpdiffusion") -> Path:
    """The paper sweep's utility / clean (worst attribute and mean) and leakage (best attack, with the DP bound)
    against epsilon for ``method``, one line per post-processing; ``results`` maps a post-processing name to the
    ``results.json`` of a ``dpdiffusion evaluate experiments --post-processing NAME`` run."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"clip": ("tab:red", "s"), "posterior_mean": ("tab:blue", "o")}
    eps_all = set()
    for post, res in results.items():
        rs = sorted((r for r in res["rows"] if r["method"] == method and r.get("epsilon") is not None
                     and not math.isinf(float(r["epsilon"]))), key=lambda r: r["epsilon"])
        if not rs:
            raise ValueError(f"results[{post!r}] has no finite-epsilon rows of method {method!r}")
        color, marker = styles.get(post, ("black", "."))
        eps = [r["epsilon"] for r in rs]
        eps_all.update(eps)
        axes[0].plot(eps, [r["utility"]["min_ratio"] for r in rs], marker=marker, color=color,
                     label=f"{post}: worst attribute")
        axes[0].plot(eps, [r["utility"]["mean_ratio"] for r in rs], marker=marker, color=color, ls=":",
                     label=f"{post}: mean")
        axes[1].plot(eps, [r["leakage_accuracy"] for r in rs], marker=marker, color=color, label=post)
    eps = sorted(eps_all)
    grid = np.geomspace(eps[0], eps[-1], 100) if len(eps) > 1 else np.array(eps)
    axes[1].plot(grid, np.exp(grid) / (1 + np.exp(grid)), "k--", lw=1, label="DP bound e^eps/(1+e^eps)")
    return _finish_epsilon_panels(fig, axes, eps, path, ("utility / clean (classifier trained on releases, clean test)",
                                                        "leakage: best attack accuracy (protected)"),
                                  "Paper sweep by post-processing of the released coordinates")
