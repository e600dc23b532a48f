"""``PrivacyLoop.accept``: one fresh release of the whole dataset, charged once, the classifier unlearned, the results
written and ready to push.

Order of the work (everything is built in ``OUT/.accept-partial`` and moved into place at the end, so a failed
accept leaves no half-written ``release/`` or ``model/``):

1. the subjects are charged in the ledger, all or nothing (`PrivacyLedger.charge_many`): a subject whose budget
   cannot afford the release is refused before any image is released. A failure after this point leaves the charge
   (the conservative side: the budget may be spent on a release that did not happen, never the reverse);
2. the dataset is protected by `dpdiffusion.protect.protect_dataset` (OS CSPRNG noise, fresh: nothing of the
   previews is reused) into ``release/``, keeping only the label columns;
3. the classifier is unlearned by the unlearn job (`dpdiffusion.unlearning.job.run_unlearn_job`) on the (original,
   released) pairs into ``model/``, retrained for comparison when ``retrain_epochs`` > 0 (the share of the gap
   restored on the held-out rows whose protected attribute disagrees with the first label, and membership
   inference against the held-out rows);
4. the final figures on the full data (`dpdiffusion.loop.figures.measure_figures`), ``loop.json`` and the card's
   section on the loop (the epsilons visited with their verdicts and the final figures; no pilot figure: those come
   from the previews' noise).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["LoopResult", "check_output_dir", "loop_card_section", "run_accept"]

_OUTPUTS = ("release", "model", "loop.json", "private")


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def loop_card_section(history: list[dict], final: dict, *, epsilon: float, delta: float) -> str:
    """The markdown section of a card on the loop: each step's epsilon and verdict, then the final figures (measured
    on the full data after the release; no pilot figure)."""
    lines = ["", "", "## The privacy loop", "",
             "The data owner chose epsilon by looking at previews of their own data (never published, never charged) "
             "and at the model's figures on a pilot subset; the accepted release drew fresh noise. The choice of "
             "epsilon is itself data-dependent and is not covered by the DP guarantee.", "",
             "| step | epsilon | verdict |", "|---|---|---|"]
    lines += [f"| {i + 1} | {_fmt(s['epsilon'])} | {s['verdict']} |" for i, s in enumerate(history)]
    lines += ["", f"Final figures at epsilon = {_fmt(epsilon)}, delta = {delta:g} (full data):", "",
              "| figure | value |", "|---|---|"]
    for name, row in final["utility"]["per_label"].items():
        lines.append(f"| accuracy on held-out clean images: {name} | {row['accuracy']:.4f} "
                     f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}] (original {row['original_accuracy']:.4f}) |")
    for kind, label, note in (("leakage_release", "attacker on the released images", ""),
                              ("leakage_model", "probe of the unlearned model's features",
                               ", for reference: the model has no DP guarantee")):
        for attr, row in final[kind].items():
            if row is not None:
                base = (f"; from the published labels alone {row['label_baseline']:.4f}"
                        if "label_baseline" in row else "")
                lines.append(f"| {label}: {attr} | {row['accuracy']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
                             f" (DP bound {row['bound']:.4f}{note}{base}) |")
    mia = final["mia_auc"]
    lines.append(f"| membership-inference AUC | {mia['auc']:.4f} +- {mia['std_error']:.4f} |")
    if final.get("gap_restored") is not None:
        lines.append(f"| share of the original-to-retrained gap restored | {final['gap_restored']:.4f} |")
    return "\n".join(lines) + "\n"


@dataclass
class LoopResult:
    """What ``accept`` wrote. ``figures`` are the final figures; ``history`` every step (epsilon, figures, verdict).

    Only ``release_dir`` and ``model_dir`` are for publication (`push_to_hub`); ``loop_json`` and ``private_dir`` are
    the owner's."""

    output_dir: Path
    epsilon: float
    delta: float
    figures: dict
    history: list = field(repr=False)
    ledger_path: str | None = None

    @property
    def release_dir(self) -> Path:
        return self.output_dir / "release"

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    @property
    def loop_json(self) -> Path:
        return self.output_dir / "loop.json"

    @property
    def private_dir(self) -> Path:
        return self.output_dir / "private"

    def dataset_card(self, model_repo: str | None = None) -> str:
        """The release's dataset card: front matter with the privacy figures, the loop's history, final figures."""
        first = json.loads((self.release_dir / "metadata.jsonl").open().readline())
        privacy = {k: first.get(k) for k in ("epsilon", "delta", "guarantee", "neighbouring_relation", "attributes",
                                            "noise_source")}
        front = {"tags": ["differential-privacy", "dpdiffusion", "image-classification"], "privacy": privacy}
        body = ["# Protected release", "",
                f"Images released with (epsilon = {_fmt(self.epsilon)}, delta = {self.delta:g})-DP noise on the "
                f"protected attributes {privacy['attributes']} of a diffusion autoencoder's semantic latent "
                f"(`dpdiffusion`), {privacy['guarantee']} guarantee for {privacy['neighbouring_relation']}. "
                "Each image's record in metadata.jsonl carries its privacy figures.",
                *(["", f"The classifier unlearned on this release: [{model_repo}](https://huggingface.co/{model_repo})."]
                  if model_repo else [])]
        steps = [s for s in self.history]
        return ("---\n" + _front_matter(front) + "---\n\n"
                + "\n".join(body) + "\n"
                + loop_card_section(steps, self.figures, epsilon=self.epsilon, delta=self.delta))

    def push_to_hub(self, dataset_repo: str, model_repo: str, *, token: str | None = None, private: bool = True,
                    endpoint: str | None = None) -> dict:
        """Push the release (with a dataset card) and the unlearned model (its card naming ``dataset_repo``).

        Only ``release/`` and ``model/`` travel; ``loop.json`` and ``private/`` stay with the owner.

        Returns:
            `dict`: ``{"dataset": CommitInfo, "model": CommitInfo}``.

        Raises:
            ValueError: for a repo id that is not ``namespace/name`` or ``name``.
        """
        from huggingface_hub import HfApi, ModelCard

        for name, repo in (("dataset_repo", dataset_repo), ("model_repo", model_repo)):
            if not isinstance(repo, str) or not repo.strip() or repo.count("/") > 1:
                raise ValueError(f"{name} must be 'namespace/name' or 'name', got {name}={repo!r}")
        api = HfApi(token=token, **({"endpoint": endpoint} if endpoint else {}))
        out = {}
        with tempfile.TemporaryDirectory() as tmp:
            ds = Path(tmp) / "dataset"
            shutil.copytree(self.release_dir, ds)
            (ds / "README.md").write_text(self.dataset_card(model_repo))
            md = Path(tmp) / "model"
            shutil.copytree(self.model_dir, md)
            card = ModelCard.load(md / "README.md")
            card.data.datasets = [dataset_repo]
            card.save(md / "README.md")
            api.create_repo(dataset_repo, repo_type="dataset", private=private, exist_ok=True)
            out["dataset"] = api.upload_folder(repo_id=dataset_repo, folder_path=str(ds), repo_type="dataset",
                                               commit_message=f"Release at epsilon={_fmt(self.epsilon)}")
            api.create_repo(model_repo, repo_type="model", private=private, exist_ok=True)
            out["model"] = api.upload_folder(repo_id=model_repo, folder_path=str(md), repo_type="model",
                                             commit_message="Upload the classifier unlearned on the release")
        return out


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _released(release: Path) -> list[dict]:
    with (release / "metadata.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


def check_output_dir(output_dir) -> Path:
    """Refuse an output folder that already holds a result (``release/``, ``model/``, ``loop.json``, ``private/``).

    Raises:
        ValueError: naming ``output_dir`` and what it holds.
    """
    out = Path(output_dir)
    taken = [n for n in _OUTPUTS if (out / n).exists()]
    if taken:
        raise ValueError(f"output_dir={str(out)!r} already holds {taken}: use a new output_dir")
    return out


def run_accept(loop, output_dir, *, ledger: Any = None, budget_epsilon: float = 10.0, batch_size: int = 16,
               model_repo: str | None = None, dataset_repo: str | None = None) -> LoopResult:
    """See `PrivacyLoop.accept` and the module docstring."""
    import PIL.Image

    from ..privacy.ledger import PrivacyLedger
    from ..protect import ProtectConfig, _make_private_dir, protect_dataset
    from ..unlearning.data import load_classifier
    from ..unlearning.job import UnlearnConfig, run_unlearn_job
    from .figures import measure_figures, reversed_rows

    start = time.perf_counter()
    out = check_output_dir(output_dir)
    eps = loop.epsilon
    spec = loop.pipe.privacy_spec(attributes=loop.attributes, epsilon=eps, delta=loop.delta)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".accept-partial"
    shutil.rmtree(stage, ignore_errors=True)
    private = stage / "private"
    _make_private_dir(stage)
    _make_private_dir(private)
    try:
        if isinstance(ledger, PrivacyLedger):
            book, ledger_path = ledger, ledger.path
        else:
            where = Path(ledger) if ledger is not None else private / "ledger.sqlite"
            book = PrivacyLedger(where, budget_epsilon=budget_epsilon, delta=loop.delta)
            ledger_path = str(where if ledger is not None else out / "private" / "ledger.sqlite")
        subjects = loop.subject_ids()
        # 1. charge every subject once per released image, all or nothing, before anything is released
        book.charge_many(subjects, noise_multiplier=spec.noise_multiplier, attributes=spec.attributes,
                         scope=spec.scope, guarantee=spec.guarantee, note="dpdiffusion loop accept")
        if loop.dataset_path is None:
            source = private / "source"
            loop.dataset.save_to_disk(str(source))
        else:
            source = Path(loop.dataset_path)
        held = private / "held_out"
        loop.held_out.save_to_disk(str(held))
        rows = reversed_rows(loop._held_attributes[:, 0], loop._held_labels[:, 0])
        reversed_dir = private / "reversed"
        if len(rows):
            loop.held_out.select(rows).save_to_disk(str(reversed_dir))
        classifier = loop.classifier_path
        if classifier is None:
            classifier = str(private / "classifier")
            loop.classifier.save_pretrained(classifier)
            loop.image_processor.save_pretrained(classifier)

        # 2. the release: fresh CSPRNG noise, the label columns only
        config = ProtectConfig(source=str(source), output_dir=str(stage / "release"),
                               private_dir=str(private / "protect"), keep_columns=list(loop.label_columns),
                               attributes=list(loop.attributes), epsilon=eps, delta=loop.delta,
                               num_inference_steps=loop.num_inference_steps, batch_size=batch_size,
                               image_column=loop.image_column)
        protect_dataset(loop.pipe, config, progress=loop.progress)
        records = _released(stage / "release")
        if not records:
            raise ValueError("no row of the dataset could be released (see the private skipped.jsonl)")

        # 3. unlearning on the (original, released) pairs, with the project's unlearn job
        job = UnlearnConfig(classifier=classifier, original=str(source), revised=str(stage / "release"),
                            output_dir=str(stage / "model"), label_columns=list(loop.label_columns),
                            method=loop.unlearning_method, image_column=loop.image_column,
                            compare_retrain=loop.retrain_epochs > 0, epochs=max(loop.retrain_epochs, 1),
                            held_out=str(held), shifted_test=str(reversed_dir) if len(rows) else None,
                            dataset_ids=[dataset_repo] if dataset_repo else None, push_to_hub=None, seed=loop.seed)
        run_unlearn_job(job, progress=loop.progress)
        job_metrics = json.loads((stage / "model" / "unlearning.json").read_text())["metrics"]

        # 4. the final figures on the full data
        unlearned, _ = load_classifier(str(stage / "model"))
        index = np.asarray([r["index"] for r in records])
        released = [PIL.Image.open(stage / "release" / r["file_name"]).convert("RGB") for r in records]
        originals_ds = loop.dataset.select(index)
        originals = [im.convert("RGB") for im in originals_ds[loop.image_column]]
        figures = measure_figures(
            unlearned, loop.classifier, label_names=loop.label_columns, attributes=loop.attributes, epsilon=eps,
            delta=loop.delta, released_images=loop._unit_images(released),
            released_attributes=loop._columns(originals_ds, loop.attributes),
            released_labels=loop._columns(originals_ds, loop.label_columns), held_out_pixels=loop._held_pixels,
            held_out_labels=loop._held_labels, held_out_attributes=loop._held_attributes,
            member_pixels=loop._pixels(originals), member_labels=loop._columns(originals_ds, loop.label_columns),
            attacker_epochs=loop.attacker_epochs, seed=loop.seed)
        figures["gap_restored"] = job_metrics.get("gap_restored_shifted")
        figures["unlearn_job"] = job_metrics
        figures["released"] = len(records)
        history = [s.to_dict() for s in loop.history]
        public_history = [{"epsilon": s["epsilon"], "verdict": s["verdict"]} for s in history]
        seconds = time.perf_counter() - start
        record = {**loop.record(), "accepted_epsilon": eps, "privacy": loop.pipe.report_for(spec).to_dict(),
                  "released": len(records), "subjects": len(set(subjects)), "ledger": ledger_path,
                  "final": figures, "accept_seconds": seconds}
        _private_write(stage / "loop.json", json.dumps(record, indent=2, default=str) + "\n")
        card = stage / "model" / "README.md"
        card.write_text(card.read_text() + loop_card_section(public_history, figures, epsilon=eps, delta=loop.delta))
        for name in _OUTPUTS:
            os.replace(stage / name, out / name)
        stage.rmdir()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return LoopResult(output_dir=out, epsilon=eps, delta=loop.delta, figures=figures, history=public_history,
                      ledger_path=ledger_path)


def _front_matter(front: dict) -> str:
    """YAML block style for a mapping of scalars, lists and one level of mappings (each scalar written as JSON, which
    YAML reads as the same value): no PyYAML needed in the exported Space."""
    lines = []
    for key, value in front.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {json.dumps(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(v)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
