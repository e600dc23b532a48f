"""``dpdiffusion unlearn``: unlearn a published classifier against a protected dataset and publish the result.

Inputs: any ``transformers`` image classifier (folder or Hub repo id) with its ``AutoImageProcessor``, the ORIGINAL
training images (any dataset that ``load_attribute_dataset`` reads, with the label column(s)), and the REVISED
images written by ``dpdiffusion protect`` (an image folder whose ``metadata.jsonl`` has, per image, the ``index`` of
its original row and the privacy figures of its release). Row ``index`` of the original and the revised image form
one changed pair; the labels are the original row's.

Both datasets are read through ``datasets`` one batch at a time (Arrow memory-mapped; each image file is opened,
decoded and closed inside its batch), so memory and open files stay bounded whatever the number of images; only
``--method finetune/retrain`` and ``--compare-retrain`` hold the preprocessed training set in memory, as training
needs it. Under ``accelerate launch`` each process takes its share of every sum; only the main process writes.

Output: a complete Hub model folder in ``output_dir`` -- ``config.json``, ``model.safetensors``,
``preprocessor_config.json``, ``README.md`` (model card with ``base_model``, ``datasets``, ``license``, tags and a
``model-index`` holding only figures this run computed) and ``unlearning.json`` -- written to a temporary folder
and moved into place when complete; with ``push_to_hub``, the same folder uploaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class UnlearnConfig:
    """Options of ``dpdiffusion unlearn``."""

    classifier: str = field(metadata={"help": "transformers AutoModelForImageClassification: folder or Hub repo id "
                                              "(its AutoImageProcessor is used for preprocessing)."})
    original: str = field(metadata={"help": "Original training images (image folder with metadata, save_to_disk folder or Hub dataset)."})
    revised: str = field(metadata={"help": "Output folder of `dpdiffusion protect` on those images."})
    output_dir: str = field(metadata={"help": "Where the unlearned model, its processor and model card are written."})
    label_columns: list[str] | None = field(default=None, metadata={
        "help": "Multi-label: one 0/1 column per output of the classifier, named as in its id2label."})
    label_column: str | None = field(default=None, metadata={
        "help": "Single-label: the column of class names (the classifier's label2id) or integer ids."})
    method: str = field(default="second_order", metadata={
        "help": "first_order, second_order, head_exact (exact retraining of the linear head on frozen features), "
                "finetune or retrain."})
    head_l2: float = field(default=1e-3, metadata={"help": "L2 penalty of the head objective of --method head_exact (> 0)."})
    image_column: str = field(default="image", metadata={"help": "Image column of the original dataset."})
    image_size: int | None = field(default=None, metadata={
        "help": "Input size for a classifier WITHOUT an image processor (then: centre crop, bicubic resize, [-1, 1]); "
                "ignored when the classifier has a preprocessor_config.json."})
    last_k_blocks: int | None = field(default=None, metadata={
        "help": "Update only the classifier head and the last k blocks (0: the head only); default: all parameters."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (Accelerate autocast)."})
    batch_size: int = field(default=32, metadata={"help": "Images per batch of gradient sums and HVPs."})
    hessian_samples: int = field(default=256, metadata={"help": "Training rows on which the Hessian is estimated."})
    step_search: str = field(default="held_out", metadata={
        "help": "first/second order: held_out (the update's length chosen on a fifth of the changed pairs, held out), "
                "training_loss (chosen on an estimate of the revised training loss: shorter, keeps more accuracy on "
                "unchanged data, removes less) or quadratic (the local quadratic model's length)."})
    epochs: int = field(default=10, metadata={"help": "Epochs of finetune/retrain (and of --compare-retrain)."})
    retrain_lr: float = field(default=3e-3, metadata={
        "help": "AdamW learning rate of --method retrain and --compare-retrain (cosine decay; > 0)."})
    retrain_weight_decay: float = field(default=1e-4, metadata={
        "help": "AdamW weight decay of the retraining (>= 0)."})
    retrain_warmup_ratio: float = field(default=0.0, metadata={
        "help": "Share of the retraining steps spent on a linear warm-up, in [0, 1) (a ViT trained from scratch "
                "wants one: the ViT benchmark uses lr 1e-3, weight decay 0.05, warm-up 0.1)."})
    compare_retrain: bool = field(default=False, metadata={
        "help": "Also retrain from scratch: agreement with it, cost ratio, and (with --held-out) membership inference."})
    held_out: str | None = field(default=None, metadata={
        "help": "Held-out images with the same label column(s), never trained on: the non-members of the "
                "membership-inference AUC (with --compare-retrain)."})
    shifted_test: str | None = field(default=None, metadata={
        "help": "Held-out images with the same label column(s) on which the correlation to unlearn is reversed "
                "(e.g. dpdiffusion.evaluation.unlearning_shift.reversed_correlation_split rendered to a folder): "
                "accuracy there before and after; with --compare-retrain, the retrained model's and the share of "
                "the gap restored."})
    dataset_ids: list[str] | None = field(default=None, metadata={
        "help": "Hub dataset ids listed under `datasets` in the card (default: --original/--revised if they are Hub ids)."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the result to this Hub repo id (needs a token)."})
    seed: int = field(default=0, metadata={"help": "Seed."})


def _read_revised_records(folder: Path) -> tuple[list[int], list[str], dict]:
    """(indices, file paths, privacy figures of the first record), read line by line, sorted by index."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise ValueError(f"revised={str(folder)!r} has no metadata.jsonl; pass the output folder of `dpdiffusion protect`")
    index, files, first = [], [], None
    with meta.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "index" not in rec or "file_name" not in rec:
                raise ValueError(f"{meta} line {n + 1} must have 'index' and 'file_name' (one record per protected image)")
            if first is None:
                first = {k: rec.get(k) for k in ("epsilon", "delta", "guarantee", "neighbouring_relation", "attributes")}
            index.append(int(rec["index"]))
            files.append(str(folder / rec["file_name"]))
    if first is None:
        raise ValueError(f"{meta} holds no records; pass the output folder of `dpdiffusion protect`")
    order = np.argsort(np.asarray(index), kind="stable")
    index = [index[i] for i in order]
    if len(set(index)) != len(index):
        raise ValueError(f"{meta} lists some original row index more than once")
    return index, [files[i] for i in order], first


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(os.path.expanduser(name)) and name.count("/") <= 1 and not name.startswith((".", "/", "~"))


def _predict(model, source, batch_size: int, device) -> torch.Tensor:
    outs = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(source), batch_size):
            x, _ = source.batch(torch.arange(start, min(start + batch_size, len(source))))
            outs.append(model(pixel_values=x.to(device)).logits.float().cpu())
    return torch.cat(outs)


def _correct(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    if problem_type == "single_label_classification":
        return (logits.argmax(-1) == labels).float()
    if problem_type == "regression":
        raise ValueError("accuracy is undefined for regression")
    return ((logits > 0) == (labels > 0.5)).float()


def _decisions(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    return logits.argmax(-1) if problem_type == "single_label_classification" else (logits > 0)


def run_unlearn_job(config: UnlearnConfig, *, progress: bool = True) -> Path:
    """Run the job; returns the output folder.

    Raises:
        ValueError: for mismatched or unreadable inputs or out-of-range options (the message names the option).
    """
    import datasets

    from ..data.attributes import load_attribute_dataset
    from ..evaluation.unlearning_metrics import roc_auc
    from ..evaluation.unlearning_shift import gap_restored
    from ..hub import push_unlearned_model, write_unlearned_model
    from ..training.classifier import per_example_loss, train_classifier
    from ..utils_accelerate import make_accelerator
    from . import unlearn
    from .core import METHODS, as_source
    from .data import DatasetSource, LabelSpec, RevisedTrainSource, default_image_processor, load_classifier, make_transform

    start = time.perf_counter()
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got method={config.method!r}")
    if config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {config.mixed_precision!r}")
    if config.last_k_blocks is not None and config.last_k_blocks < 0:
        raise ValueError(f"last_k_blocks must be >= 0, got last_k_blocks={config.last_k_blocks}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={config.batch_size}")
    if not config.retrain_lr > 0:
        raise ValueError(f"retrain_lr must be > 0, got retrain_lr={config.retrain_lr}")
    if not config.retrain_weight_decay >= 0:
        raise ValueError(f"retrain_weight_decay must be >= 0, got retrain_weight_decay={config.retrain_weight_decay}")
    if not 0 <= config.retrain_warmup_ratio < 1:
        raise ValueError(f"retrain_warmup_ratio must be in [0, 1), got retrain_warmup_ratio={config.retrain_warmup_ratio}")
    if config.image_size is not None and config.image_size < 1:
        raise ValueError(f"image_size must be >= 1, got image_size={config.image_size}")
    model, processor = load_classifier(config.classifier)
    processor_source = "the classifier's own"
    if processor is None:
        if config.image_size is None:
            raise ValueError(
                f"classifier={config.classifier!r} has no image processor (preprocessor_config.json): pass "
                "--image-size N to scale images to N px in [-1, 1], or add the processor the model was trained with"
            )
        processor = default_image_processor(config.image_size)
        processor_source = f"dpdiffusion default ({config.image_size} px, [-1, 1]): the classifier had none"
    elif config.image_size is not None:
        logger.warning("--image-size %d ignored: the classifier's image processor decides the input size",
                       config.image_size)
    spec = LabelSpec.from_config(model.config, label_column=config.label_column, label_columns=config.label_columns)
    if model.config.problem_type is None:
        model.config.problem_type = spec.problem_type
    transform = make_transform(processor)

    # label values are read (and checked) by the LabelSpec; the loader only finds the columns
    original = load_attribute_dataset(config.original, image_column=config.image_column, attribute_columns=[])
    orig_all = as_source(original, "original", transform=transform, label_spec=spec, image_column=config.image_column)
    revised_dir = Path(config.revised)
    idx, files, privacy = _read_revised_records(revised_dir)
    if idx[-1] >= len(orig_all) or idx[0] < 0:
        raise ValueError(f"revised row index {idx[-1]} is outside the original dataset ({len(orig_all)} rows): "
                         "the two datasets do not match")
    rev_ds = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image())
    changed_labels = orig_all.labels[torch.tensor(idx)]
    orig_pairs = DatasetSource(original, config.image_column, changed_labels, transform, rows=idx)
    rev_pairs = DatasetSource(rev_ds, "image", changed_labels, transform)
    train_set = RevisedTrainSource(orig_all, rev_pairs, idx)

    def fresh_model():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return type(model)(model.config)

    # under `accelerate launch` every process computes its share of the gradient sums and HVPs (summed with
    # accelerator.reduce), so all processes hold the same update; only the main one writes and pushes
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    progress = progress and accelerator.is_main_process
    recipe = dict(epochs=config.epochs, batch_size=64, lr=config.retrain_lr, weight_decay=config.retrain_weight_decay,
                  warmup_ratio=config.retrain_warmup_ratio, seed=config.seed, progress=progress, accelerator=accelerator)
    common = dict(train_set=train_set, seed=config.seed, progress=progress, accelerator=accelerator,
                  image_processor=processor, batch_size=config.batch_size)
    result = unlearn(model, orig_pairs, rev_pairs, method=config.method, epochs=config.epochs,
                     last_k_blocks=config.last_k_blocks, hessian_samples=config.hessian_samples, head_l2=config.head_l2,
                     step_search=config.step_search,
                     retrain_fn=lambda x, y: train_classifier(fresh_model(), x, y, **recipe), **common)
    device = next(result.model.parameters()).device
    problem_type = spec.problem_type
    metrics: dict = {"changed_pairs": len(idx), "training_rows": len(orig_all)}
    if problem_type != "regression":
        y_rev = rev_pairs.labels
        metrics["accuracy_revised_before"] = float(_correct(_predict(model, rev_pairs, config.batch_size, device),
                                                            y_rev, problem_type).mean())
        metrics["accuracy_revised_after"] = float(_correct(_predict(result.model, rev_pairs, config.batch_size, device),
                                                           y_rev, problem_type).mean())
    metrics["unlearning_seconds"] = result.seconds
    shifted_accuracy = None
    if config.shifted_test is not None:
        if problem_type == "regression":
            raise ValueError("shifted_test needs a classifier (accuracy); this model does regression")
        shifted = load_attribute_dataset(config.shifted_test, image_column=config.image_column, attribute_columns=[])
        shifted_src = as_source(shifted, "shifted_test", transform=transform, label_spec=spec,
                                image_column=config.image_column)

        def shifted_accuracy(m):
            logits = _predict(m, shifted_src, config.batch_size, device)
            return float(_correct(logits, shifted_src.labels, problem_type).mean())

        metrics["accuracy_shifted_before"] = shifted_accuracy(model)
        metrics["accuracy_shifted_after"] = shifted_accuracy(result.model)
    if config.compare_retrain and config.method != "retrain":
        retrained = unlearn(model, orig_pairs, rev_pairs, method="retrain",
                            retrain_fn=lambda x, y: train_classifier(fresh_model(), x, y, **recipe), **common)
        metrics["retrain_seconds"] = retrained.seconds
        metrics["speedup_vs_retrain"] = retrained.seconds / max(result.seconds, 1e-9)
        if problem_type != "regression":
            a = _decisions(_predict(result.model, train_set, config.batch_size, device), problem_type)
            b = _decisions(_predict(retrained.model, train_set, config.batch_size, device), problem_type)
            metrics["agreement_with_retrained"] = float((a == b).float().mean())
        if shifted_accuracy is not None:
            metrics["accuracy_shifted_retrained"] = shifted_accuracy(retrained.model)
            restored = gap_restored(metrics["accuracy_shifted_after"], original=metrics["accuracy_shifted_before"],
                                    retrained=metrics["accuracy_shifted_retrained"])
            if math.isfinite(restored):  # no gap, no share of it
                metrics["gap_restored_shifted"] = restored
        if config.held_out is not None:
            held = load_attribute_dataset(config.held_out, image_column=config.image_column, attribute_columns=[])
            held_src = as_source(held, "held_out", transform=transform, label_spec=spec,
                                 image_column=config.image_column)

            def losses(m, source):
                return per_example_loss(_predict(m, source, config.batch_size, device), source.labels, problem_type)

            is_member = np.r_[np.ones(len(orig_pairs)), np.zeros(len(held_src))]
            for name, m in (("mia_auc", result.model), ("mia_auc_retrained", retrained.model)):
                scores = -torch.cat([losses(m, orig_pairs), losses(m, held_src)]).numpy()
                metrics[name] = roc_auc(scores, is_member)
        else:
            logger.warning("no --held-out images: the membership-inference AUC is not computed")
    metrics["wall_seconds"] = time.perf_counter() - start

    command = "dpdiffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    dataset_ids = config.dataset_ids or [d for d in (config.original, config.revised) if _is_hub_id(d)]
    card_info = dict(
        base_model=config.classifier if _is_hub_id(config.classifier) else None,
        base_model_path=config.classifier, datasets=dataset_ids, processor_source=processor_source,
        label_kind=problem_type, label_columns=spec.columns,
    )
    out = Path(config.output_dir)
    kwargs = dict(result=result, privacy=privacy, metrics=metrics, command=command,
                  cost={"seconds": result.seconds, "retrain_seconds": metrics.get("retrain_seconds")},
                  image_processor=processor, card_info=card_info)
    if accelerator.is_main_process:
        write_unlearned_model(result.model, out, repo_id=config.push_to_hub, **kwargs)
        if config.push_to_hub:
            push_unlearned_model(result.model, config.push_to_hub, folder=out, **kwargs)
    accelerator.wait_for_everyone()
    return out
