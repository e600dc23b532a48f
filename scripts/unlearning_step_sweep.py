#!/usr/bin/env python
"""Accuracy along the first/second-order update direction: where on it the clean accuracy of retraining is kept.

The unlearning benchmark (`scripts/benchmark_unlearning.py`) reports each update at the length its step search
chose. This script trains (or loads) the same original classifier on the same SynthFaces data, computes each
update's direction with `dpdiffusion.unlearning.unlearn` exactly as the benchmark does, and then walks along it:
for every multiple f of the chosen update it reports the clean test accuracy per label, the correlated label's
accuracy on the reversed-correlation split, and the mean loss over the whole revised training set (the objective
that retraining minimises). The chosen update is that of the first `--step-search` (default `held_out`); each
further one (default `training_loss`) is run too and marked on the same line at the multiple it chose. The
reference numbers (retraining) come from the benchmark's `results.json`.

    python scripts/unlearning_step_sweep.py --arch vit --save-original runs/vit-original --out results/unlearning_vit
    python scripts/unlearning_step_sweep.py --arch vit --original runs/vit-original --out results/unlearning_vit

Writes `step_sweep.json` and `step_sweep.png` into `--out`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
from pathlib import Path

import torch

_BENCH_PATH = Path(__file__).resolve().parent / "benchmark_unlearning.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_unlearning", _BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 0.707, 1.0, 1.414],
                   help="multiples of the chosen update to evaluate (each > 0)")
    p.add_argument("--original", type=Path, default=None,
                   help="folder of an original classifier saved by --save-original (skips its training)")
    p.add_argument("--save-original", type=Path, default=None, help="save the trained original classifier here")
    p.add_argument("--out", type=Path, default=None, help="folder for step_sweep.json and step_sweep.png")
    own, rest = p.parse_known_args(argv)
    if any(not s > 0 for s in own.scales):
        p.error(f"--scales must all be > 0, got {own.scales}")
    return own, rest  # the rest are benchmark_unlearning.py's own options (--arch, --num-train, --epochs, ...)


def main(argv=None) -> dict:
    from transformers import AutoModelForImageClassification

    from dpdiffusion.training.classifier import make_accelerator, per_example_loss, predict_logits, train_classifier
    from dpdiffusion.unlearning import unlearn

    own, rest = parse_args(argv)
    bench = _benchmark()
    args = bench.parse_args(rest)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    data = bench.make_data(args)
    accelerator = make_accelerator()
    orig_pairs, rev_pairs, train_set = bench.unlearning_inputs(data)
    y = train_set[1]
    if own.original is not None:
        original = AutoModelForImageClassification.from_pretrained(own.original).eval()
    else:
        original = train_classifier(bench.fresh_model(args), torch.from_numpy(data["train_images"]), y,
                                    **bench.training_recipe(args, accelerator))
        if own.save_original is not None:
            original.save_pretrained(own.save_original)
    rev_images, rev_labels = bench.reversed_split(args)
    column = bench.LABELS.index(args.correlated_label)

    def evaluate(model) -> dict:
        clean = ((predict_logits(model, data["test_images"]) > 0).numpy() == (data["test_labels"] > 0.5)).mean(0)
        shifted = ((predict_logits(model, rev_images) > 0).numpy() == (rev_labels > 0.5)).mean(0)
        loss = per_example_loss(predict_logits(model, data["revised_images"]), y, "multi_label_classification")
        return {"clean_accuracy": float(clean.mean()), "clean_per_label": dict(zip(bench.LABELS, clean.tolist())),
                "reversed_accuracy": float(shifted[column]), "revised_training_loss": float(loss.mean())}

    theta0 = torch.nn.utils.parameters_to_vector(original.parameters()).detach().clone()
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "scales": own.scales, "original": evaluate(original), "methods": {}}
    walker = copy.deepcopy(original).eval()  # buffers (batch-norm statistics) as the original's
    for method in ("first_order", "second_order"):
        # one update per --step-search value: the first one's is walked, the others are marked on its line
        updates = {search: unlearn(original, orig_pairs, rev_pairs, method=method, train_set=train_set,
                                   seed=args.seed, accelerator=accelerator, progress=args.progress,
                                   **bench.update_options(args, method, search)) for search in args.step_search}
        result = updates[args.step_search[0]]
        direction = torch.nn.utils.parameters_to_vector(result.model.parameters()).detach() - theta0
        rows = []
        for f in own.scales:
            torch.nn.utils.vector_to_parameters(theta0 + f * direction, walker.parameters())
            rows.append({"scale": f, **evaluate(walker)})
            print(f"{method} x{f:g}: clean {rows[-1]['clean_accuracy']:.4f}, reversed "
                  f"{rows[-1]['reversed_accuracy']:.4f}, revised training loss {rows[-1]['revised_training_loss']:.5f}",
                  flush=True)
        chosen = result.summary().get("step_scale")
        others = {}  # the further --step-search values (default: training_loss): where on this line they land
        for search in args.step_search[1:]:
            other = updates[search]
            scale = other.summary().get("step_scale")
            multiple = scale / chosen if scale is not None and chosen else None
            others[search] = {"step_scale": scale, "multiple": multiple, **evaluate(other.model)}
            print(f"{method}, {search} search: x{multiple if multiple is not None else float('nan'):.3g} of the "
                  f"chosen update, clean {others[search]['clean_accuracy']:.4f}, reversed "
                  f"{others[search]['reversed_accuracy']:.4f}", flush=True)
        report["methods"][method] = {"chosen_step_scale": chosen, "rows": rows, "other_searches": others}
    print(json.dumps(report, indent=1))
    if own.out is not None:
        own.out.mkdir(parents=True, exist_ok=True)
        (own.out / "step_sweep.json").write_text(json.dumps(report, indent=1))
        _plot(report, own.out / "step_sweep.png", own.out / "results.json")
    return report


def _plot(report: dict, path: Path, benchmark_results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ref = None
    if benchmark_results.is_file():  # retraining's figures from the benchmark run with the same options
        ref = json.loads(benchmark_results.read_text()).get("table_reversed", {}).get("reference")
    for ax, key, label in ((axes[0], "clean_accuracy", "clean test accuracy (mean of labels)"),
                           (axes[1], "reversed_accuracy", "correlated label, reversed split")):
        for method, style in (("first_order", "o-"), ("second_order", "s-")):
            rows = report["methods"][method]["rows"]
            line = ax.plot([r["scale"] for r in rows], [r[key] for r in rows], style, label=method)[0]
            for search, point in report["methods"][method].get("other_searches", {}).items():
                if point.get("multiple"):
                    ax.plot([point["multiple"]], [point[key]], "P", ms=11, mfc="none", color=line.get_color(),
                            label=f"{method}: length chosen by {search}")
        ax.axhline(report["original"][key], color="tab:red", ls=":", label="original")
        if ref is not None:
            mean = ref["clean_accuracy"] if key == "clean_accuracy" else ref["reversed_accuracy"]
            ax.axhline(mean, color="black", ls="--", label="retraining (mean of seeds)")
            if key == "clean_accuracy":
                ax.axhspan(mean - 0.01, mean + 0.01, color="black", alpha=0.08, label="within 1 point")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"multiple of the update the {report['args']['step_search'][0]} step search chose")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Along the unlearning update: clean accuracy against the shortcut removed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
