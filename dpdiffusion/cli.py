"""The ``dpdiffusion`` command line: ``demo | protect | unlearn | loop | evaluate | train | space``.

Errors in the user's arguments are printed as one clear line (``dpdiffusion: error: ...``) with exit status 2,
never as a stack trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import sys
import types
import typing
from pathlib import Path

# Nothing heavy at import time: `dpdiffusion --help` imports no subcommand's module (torch, diffusers, transformers,
# gradio); each subcommand's module is imported when that subcommand is parsed or run (`build_parser`).

logger = logging.getLogger("dpdiffusion")


def _parse_float(text: str) -> float:
    value = float(text)  # accepts "inf"
    if math.isnan(value):
        raise argparse.ArgumentTypeError("NaN is not allowed")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls`` (help from the field's metadata)."""
    # Not transformers' HfArgumentParser (which scripts/train_default_models.py uses): it would change this CLI's
    # contract. It parses floats with `float` (``--epsilon nan`` would pass instead of failing with one line), gives
    # bools ``nargs="?"`` and ``--no_<name>`` complements, adds ``--field_name`` spellings, and rewrites the
    # dataclass's own ``Field.type`` while parsing.
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in args if a is not type(None))
        kwargs: dict = {"help": f.metadata.get("help", "")}
        if typing.get_origin(tp) is list:
            inner = typing.get_args(tp)[0]
            kwargs.update(nargs="+", type=_parse_float if inner is float else inner)
        elif tp is bool and f.metadata.get("flag"):  # an opt-in that defaults to False: a bare --flag
            kwargs["action"] = "store_true"
        elif tp is bool:
            kwargs.update(type=_bool, metavar="{true,false}")
        elif tp is float:
            kwargs["type"] = _parse_float
        else:
            kwargs["type"] = tp
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            kwargs["default"] = f.default_factory()  # type: ignore[misc]
        else:
            kwargs["required"] = True
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def _dataclass_from(cls, ns: argparse.Namespace, **extra):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names}, **extra)


def _load_pipeline(model):
    """The pipeline loader lives with the default model (the demo and the evaluation use it too, without importing
    the CLI)."""
    from .models.default import load_pipeline

    return load_pipeline(model)


def cmd_train(ns) -> int:
    from .training.train_autoencoder import AutoencoderTrainingConfig, train_autoencoder

    model_dir = train_autoencoder(_dataclass_from(AutoencoderTrainingConfig, ns))
    print(f"pipeline saved to {model_dir}")
    return 0


def _skip_reasons(path: Path, *, shown: int = 5) -> list[str]:
    """The reasons listed in the private ``skipped.jsonl``, each with its count, most common first (a row's source
    path, when a reason quotes it, is left out; the file itself names them)."""
    import collections
    import json

    counts: collections.Counter = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            reason = str(entry.get("reason") or "no reason given")
            if entry.get("path"):
                reason = reason.replace(str(entry["path"]), "<file>")
            counts[reason] += 1
    lines = [f"{n} row(s): {reason}" for reason, n in counts.most_common(shown)]
    if len(counts) > shown:
        rest = sum(n for _, n in counts.most_common()[shown:])
        lines.append(f"{rest} row(s) for {len(counts) - shown} other reason(s)")
    return lines


def cmd_protect(ns) -> int:
    from .data.sources import source_kind

    source_kind(ns.source, name="--source")  # a slip is refused at once, before the model or the Hub is touched
    from .protect import ProtectConfig, protect_dataset, release_summary
    from .utils_accelerate import make_accelerator

    config = _dataclass_from(ProtectConfig, ns)
    accelerator = make_accelerator()
    pipe = _load_pipeline(ns.model).to(accelerator.device)
    protect_dataset(pipe, config, accelerator=accelerator, progress=not ns.no_progress)
    if not accelerator.is_main_process:
        return 0
    summary = release_summary(config)
    out, private, skipped = summary["output_dir"], summary["private_dir"], summary["skipped"]
    if summary["released"] == 0:
        reasons = private / "skipped.jsonl"
        why = (f"all {skipped} row(s) were skipped; the reasons are in {reasons} (private: it names source files):\n"
               + "".join(f"  {line}\n" for line in _skip_reasons(reasons)) if skipped
               else "the source has no rows to protect (check --source, --split, --limit)\n")
        print(f"dpdiffusion protect: error: nothing was released: {why}", file=sys.stderr, end="")
        return 1
    if summary["warning"]:  # SynthFaces: re-renderable from the generator's seed, so nothing here is protected
        print(f"{summary['released']} protected image(s) with their privacy figures written to {out} (a "
              f"demonstration: see the warning below)")
    else:
        print(f"{summary['released']} protected image(s) with their privacy figures written to {out} (safe to "
              f"publish)")
    print(f"the run's settings, resume state and {skipped} skipped row(s) are in {private} (private: do not publish)")
    if summary["warning"]:
        print(f"warning: {summary['warning']}")
    return 0


def cmd_demo(ns) -> int:
    from .demo import run_demo

    report = run_demo(ns.out, model=ns.model, num_images=ns.num_images, seed=ns.seed,
                      num_inference_steps=ns.num_inference_steps)
    print(f"report: {report}")
    return 0


def cmd_evaluate_experiments(ns) -> int:
    import shlex

    from .evaluation.experiments_cli import run_from_args

    argv = sys.argv[1:] if ns.argv is None else ns.argv
    run_from_args(ns, "dpdiffusion " + " ".join(shlex.quote(a) for a in argv))
    return 0


def cmd_evaluate(ns) -> int:
    import json

    from .evaluation.default_model import evaluate_autoencoder, load_or_train_judge
    from .models.default import embedded_model_name

    card_name = embedded_model_name(ns.model)
    if ns.card and card_name is None:  # before the evaluation, not after
        raise SystemExit(f"--card writes into an embedded model's card: --model must be omitted or unet2d, got "
                         f"--model {ns.model}")
    pipe = _load_pipeline(ns.model)
    judge = load_or_train_judge(ns.judge, pipe.image_size) if ns.judge else None
    metrics = evaluate_autoencoder(pipe, num_images=ns.num_images, num_inference_steps=ns.num_inference_steps,
                                   inversion_steps=ns.inversion_steps,
                                   seed=ns.seed, guidance_scale=ns.guidance_scale, classifier=judge,
                                   agreement_steps=ns.agreement_steps or ())
    text = json.dumps(metrics, indent=2)
    if ns.out:
        Path(ns.out).write_text(text + "\n")
    if ns.card:
        from .models.default import refresh_model_card

        args = [*(["--model", ns.model] if ns.model else []), "--num-images", str(ns.num_images),
                "--num-inference-steps", str(ns.num_inference_steps), "--inversion-steps", str(ns.inversion_steps),
                "--seed", str(ns.seed),
                *(["--guidance-scale", str(ns.guidance_scale)] if ns.guidance_scale is not None else []),
                *(["--agreement-steps", *map(str, ns.agreement_steps)] if ns.agreement_steps else []),
                *(["--judge", ns.judge] if ns.judge else []), "--card"]
        command = "python scripts/evaluate_default_model.py " + " ".join(args)
        card = refresh_model_card(card_name, evaluation=metrics, evaluation_command=command)
        print(f"wrote the figures into {card}", file=sys.stderr)
    print(text)
    return 0


def cmd_evaluate_push_metrics(ns) -> int:
    from .evaluation.metrics import push_metric_spaces

    out = push_metric_spaces(ns.namespace, names=ns.names, private=ns.private, dry_run_dir=ns.dry_run_dir)
    for repo_id, result in out.items():
        if ns.dry_run_dir is not None:
            print(f"wrote the metric Space {repo_id} to {result}")
        else:
            print(f"pushed the metric Space {repo_id}: {getattr(result, 'commit_url', result)}")
    return 0


def cmd_unlearn(ns) -> int:
    from .unlearning.job import UnlearnConfig, run_unlearn_job

    out = run_unlearn_job(_dataclass_from(UnlearnConfig, ns), progress=not ns.no_progress)
    print(f"unlearned model and model card written to {out}")
    return 0


def cmd_space(ns) -> int:
    """Serve the Space (the app ships inside the package), or write (``--export``) and upload (``--push``) a
    complete Space repository."""
    if ns.export is None and ns.push is None:
        from .space.app import main as serve

        argv = [a for flag, value in (("--port", ns.port), ("--host", ns.host), ("--model", ns.model),
                                      ("--budget-epsilon", ns.budget_epsilon)) if value is not None
                for a in (flag, str(value))] + (["--new-ledger"] if ns.new_ledger else []) + (
            ["--allow-domain-mismatch"] if ns.allow_domain_mismatch else [])
        serve(argv)
        return 0
    if (any(v is not None for v in (ns.port, ns.host, ns.model, ns.budget_epsilon)) or ns.new_ledger
            or ns.allow_domain_mismatch):
        raise ValueError("--port, --host, --model, --budget-epsilon, --new-ledger and --allow-domain-mismatch serve "
                         "the app; they do not go with --export or --push (set the Space's variables, e.g. "
                         "DPDIFFUSION_SPACE_MODEL, instead)")
    import tempfile

    from .space.export import export_space, push_space

    model_repo = None if ns.model_repo in ("", "none") else ns.model_repo
    if ns.export is not None:
        folder = export_space(ns.export, model_repo=model_repo, overwrite=ns.overwrite)
        print(f"wrote the Space repository to {folder}")
        if ns.push is not None:
            info = push_space(folder, ns.push, private=ns.private)
            print(f"pushed it to the Space {ns.push}: {getattr(info, 'commit_url', info)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_space(Path(tmp) / "space", model_repo=model_repo)
        info = push_space(folder, ns.push, private=ns.private)
    print(f"pushed the Space repository to {ns.push}: {getattr(info, 'commit_url', info)}")
    return 0


_MODEL_HELP = ("Pipeline folder or Hub repo id, or unet2d for the embedded former default (default: the embedded "
               "default).")

# reStructuredText markup of docstrings and help strings, and what the terminal shows instead
_RST_MARKUP = (
    (re.compile(r"(^|(?<=\s))\.\.\s+(\w+)::\s*"), lambda m: m.group(2).capitalize() + ": "),  # .. note:: -> Note:
    (re.compile(r":[\w.:-]+:`~?([^`]+)`"), r"\1"),  # :class:`~a.B` -> a.B
    (re.compile(r"``([^`]+)``"), r"\1"),  # ``code`` -> code
    (re.compile(r"`([^`]+)`_{0,2}"), r"'\1'"),  # `interpreted text` (or a link) -> 'text'
)


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup, for a terminal."""
    for pattern, replacement in _RST_MARKUP:
        text = pattern.sub(replacement, text)
    return text


class _PlainHelpFormatter(argparse.HelpFormatter):
    """Help as plain text: descriptions and help strings written as reStructuredText lose their markup."""

    def _format_text(self, text):
        return super()._format_text(plain_text(text))

    def _expand_help(self, action):
        return plain_text(super()._expand_help(action))


class _LazyParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose arguments are added by ``populate(parser)`` on first use (parsing, help or usage),
    so that ``dpdiffusion --help`` imports no subcommand's module (and with them torch, diffusers, transformers or
    gradio): a subcommand's module is imported only when that subcommand is asked for."""

    def __init__(self, *args, populate=None, **kwargs):
        kwargs.setdefault("formatter_class", _PlainHelpFormatter)
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populated(self) -> _LazyParser:
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        return super(_LazyParser, self.populated()).parse_known_args(args, namespace)

    def format_usage(self):
        return super(_LazyParser, self.populated()).format_usage()

    def format_help(self):
        return super(_LazyParser, self.populated()).format_help()


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from .models.steps import DEFAULT_NUM_INFERENCE_STEPS

    p.add_argument("--out", default="demo-out", help="Output folder (report.md, plots, metrics.json).")
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--num-images", type=int, default=16, help="SynthFaces images in the before/after grid.")
    p.add_argument("--num-inference-steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS,
                   help=f"DDIM steps (default {DEFAULT_NUM_INFERENCE_STEPS}, as every random-code release).")
    p.add_argument("--seed", type=int, default=0, help="Seed.")
    p.set_defaults(func=cmd_demo)


def _add_protect_arguments(p: argparse.ArgumentParser) -> None:
    from .protect import ProtectConfig

    add_dataclass_arguments(p, ProtectConfig)
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    p.set_defaults(func=cmd_protect)


def _add_unlearn_arguments(p: argparse.ArgumentParser) -> None:
    from .unlearning.job_config import UnlearnConfig

    add_dataclass_arguments(p, UnlearnConfig)
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    p.set_defaults(func=cmd_unlearn)


def _add_loop_arguments(p: argparse.ArgumentParser) -> None:
    from .loop.cli import add_loop_arguments

    add_loop_arguments(p)


def _add_experiments_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluation.experiments_cli import add_arguments as add_experiment_arguments

    add_experiment_arguments(p)
    p.set_defaults(func=cmd_evaluate_experiments)


def _add_autoencoder_arguments(p: argparse.ArgumentParser) -> None:
    from .models.steps import DEFAULT_INVERSION_STEPS, DEFAULT_NUM_INFERENCE_STEPS

    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--num-images", type=int, default=500, help="Held-out SynthFaces images.")
    p.add_argument("--num-inference-steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS,
                   help=f"DDIM steps of random-code decoding at which its targets are checked (default "
                        f"{DEFAULT_NUM_INFERENCE_STEPS}, the entry points' default for random codes).")
    p.add_argument("--inversion-steps", type=int, default=DEFAULT_INVERSION_STEPS,
                   help=f"DDIM steps of the inversion round trip (default {DEFAULT_INVERSION_STEPS}, the entry points' "
                        "default for stochastic_code='inverted').")
    p.add_argument("--seed", type=int, default=12345, help="Seed of the held-out set (differs from training's).")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="Semantic guidance of random-code decoding (default: the pipeline's own; none for the DiffAE "
                        "architecture, DEFAULT_GUIDANCE_SCALE otherwise).")
    p.add_argument("--agreement-steps", type=int, nargs="*", default=None,
                   help="Further DDIM step counts at which random-code decoding is also judged (agreement, PSNR, CPU "
                        "seconds per image; e.g. 5 20); the targets are checked at --num-inference-steps only.")
    p.add_argument("--judge", default=None,
                   help="Folder of the independent attribute classifier: loaded when it holds one, else trained and "
                        "saved there (default: trained afresh, not saved).")
    p.add_argument("--out", default=None, help="Also write the JSON here.")
    p.add_argument("--card", action="store_true",
                   help="Also write the figures, with this command, into the model card of the embedded model named "
                        "by --model (the default or unet2d).")
    p.set_defaults(func=cmd_evaluate)


def _add_push_metrics_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluation.metrics import METRIC_NAMES

    p.add_argument("--namespace", required=True, help="Hub user or organisation that receives the metric Spaces "
                                                      "(NAMESPACE/attribute_leakage, ...).")
    p.add_argument("--names", nargs="+", choices=METRIC_NAMES, default=None,
                   help="The modules to push (default: all of them).")
    p.add_argument("--private", action="store_true", default=None, help="Create the Spaces as private.")
    p.add_argument("--dry-run-dir", default=None,
                   help="Write each Space's folder (module script, app.py, README.md, requirements.txt) here and "
                        "upload nothing.")
    p.set_defaults(func=cmd_evaluate_push_metrics)


def _add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    evaluate_sub = p.add_subparsers(dest="evaluation", required=True)
    evaluate_sub.add_parser("experiments", populate=_add_experiments_arguments,
                            help="Every method at every epsilon: leakage, utility, identity, quality, audit; writes "
                                 "results.md/.json and plots.")
    evaluate_sub.add_parser("autoencoder", populate=_add_autoencoder_arguments,
                            help="Inversion PSNR, attribute keeping from z, probe accuracy (JSON).")
    evaluate_sub.add_parser("push-metrics", populate=_add_push_metrics_arguments,
                            help="Publish the project's evaluate modules (leakage with the DP bound, utility ratio, "
                                 "audit, membership-inference AUC, gap restored, accuracy) as metric Spaces.")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .training.config import AutoencoderTrainingConfig

    add_dataclass_arguments(p, AutoencoderTrainingConfig)
    p.set_defaults(func=cmd_train)


def _add_space_arguments(p: argparse.ArgumentParser) -> None:
    from .space.export import DEFAULT_PIPELINE_REPO

    p.add_argument("--port", type=int, default=None, help="Port (default: Gradio's).")
    p.add_argument("--host", default=None, help="Interface to bind (default: Gradio's).")
    p.add_argument("--model", default=None, help="Pipeline folder or Hub repo id to serve (default: "
                                                 "$DPDIFFUSION_SPACE_MODEL or the embedded default).")
    p.add_argument("--budget-epsilon", type=float, default=None, help="Per-face epsilon budget of a new ledger.")
    p.add_argument("--new-ledger", action="store_true",
                   help="Start a new ledger and subject secret where one or both have gone missing or the secret is "
                        "not the ledger's (the old files are moved aside; every face then starts with a fresh budget). "
                        "Without it such a Space refuses to start; with both present and matching it changes nothing "
                        "($DPDIFFUSION_SPACE_NEW_LEDGER=1 does the same).")
    p.add_argument("--allow-domain-mismatch", action="store_true",
                   help="Run the photo mode with a model trained only on synthetic faces (the embedded default), "
                        "only to test the plumbing: every face comes back as a cartoon. Without it such a Space "
                        "refuses photos, saying how to serve real faces.")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="Write a complete, ready-to-push Space repository to DIR (app.py, README.md with the Space "
                        "YAML, requirements.txt and the package with its default model) instead of serving.")
    p.add_argument("--push", metavar="REPO_ID", default=None,
                   help="Upload the Space repository (the --export folder, else a temporary one) to the Space "
                        "REPO_ID, creating it with the Gradio SDK (needs HF_TOKEN or a saved login).")
    p.add_argument("--model-repo", default=DEFAULT_PIPELINE_REPO,
                   help="Pipeline repository named in the Space card's models: ('none' to leave it out).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing non-empty --export folder.")
    p.add_argument("--private", action="store_true", default=None, help="Create the Space as private.")
    p.set_defaults(func=cmd_space)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser. It imports no subcommand's module: each subcommand's arguments are added when that
    subcommand is parsed or its help is shown (`_LazyParser`)."""
    parser = _LazyParser(prog="dpdiffusion", description=__doc__.splitlines()[0],
                         epilog="Run 'dpdiffusion COMMAND --help' for the options of a command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at INFO level.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", populate=_add_demo_arguments,
                   help="The main job on the embedded default: protect, unlearn, evaluate, report.")
    sub.add_parser("protect", populate=_add_protect_arguments,
                   help="Protect a whole dataset (resumable, streaming, data-parallel).",
                   description="Protect a whole dataset. --output-dir receives only what is safe to publish (the "
                               "protected images, their privacy figures and the --keep-columns columns); the "
                               "owner's bookkeeping (settings, resume state, skipped rows with their source paths) "
                               "goes to --private-dir. Exit status 1 when no row was released.")
    sub.add_parser("unlearn", populate=_add_unlearn_arguments,
                   help="Unlearn any transformers image classifier (with its image processor) against a protected "
                        "dataset; write/push it as a complete Hub model with its card.")
    sub.add_parser("loop", populate=_add_loop_arguments,
                   help="The data owner's privacy loop: previews and the model's figures at epsilon, a verdict after "
                        "each step, then one release, the unlearned model and loop.json.")
    sub.add_parser("evaluate", populate=_add_evaluate_arguments,
                   help="Evaluate: 'experiments' (privacy-utility sweep vs baselines, the paper's table) or "
                        "'autoencoder' (inversion PSNR, attribute keeping, probes).")
    sub.add_parser("train", populate=_add_train_arguments,
                   help="Train a diffusion autoencoder and fit attribute directions (Accelerate).")
    sub.add_parser("space", populate=_add_space_arguments,
                   help="Run the interactive Gradio app, or write (--export) / upload (--push) a Space.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    ns.argv = argv
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return ns.func(ns)
    except (ValueError, OSError) as exc:  # OSError: unreadable files, .bin-only weights, an offline Hub id
        parser.exit(2, f"dpdiffusion {ns.command}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted; rerun the same command to resume\n")


if __name__ == "__main__":
    sys.exit(main())
