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

The card's figures are computed through the project's ``evaluate`` modules (`dpdiffusion.evaluation.metrics`): the
accuracies on a ``datasets`` split by ``evaluate.evaluator("image-classification")`` with ``classification_accuracy``
(multi-label classifiers, which the evaluator does not read: the module on the decisions), the membership-inference
AUC by ``mia_auc`` and the share of the gap by ``gap_restored``; the ``model-index`` names each module as the type.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

from .job_config import MIXED_PRECISION, UnlearnConfig  # noqa: E402,F401  (re-exported: the job's options)


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


def _evaluator_accuracy(model, processor, dataset, image_column: str, labels: torch.Tensor, device) -> float:
    """Top-1 accuracy of a single-label classifier on a ``datasets`` split, computed by
    ``evaluate.evaluator("image-classification")`` with the project's ``classification_accuracy`` module (loaded by
    path: nothing is fetched from the Hub). The evaluator reads the split one image at a time."""
    import evaluate

    from ..evaluation.metrics import load_metric

    data = dataset.select_columns([image_column]).add_column("_label", [int(v) for v in labels.tolist()])
    model.eval()
    # the model itself, not a Pipeline (evaluate 0.4.6 tests a Pipeline against transformers.TFPreTrainedModel, which
    # transformers 5 no longer has); the evaluator builds the image-classification pipeline with `processor`
    result = evaluate.evaluator("image-classification").compute(
        model_or_pipeline=model, feature_extractor=processor, data=data, metric=load_metric("classification_accuracy"),
        input_column=image_column, label_column="_label",
        label_mapping={str(name): int(i) for i, name in model.config.id2label.items()},
        device=(device.index or 0) if device.type == "cuda" else -1)
    return float(result["accuracy"])


def _module_labels(labels: torch.Tensor, problem_type: str) -> np.ndarray:
    """Labels as the evaluate modules take them: class ids, or 0/1 rows for multi-label."""
    return (labels if problem_type == "single_label_classification" else labels > 0.5).long().numpy()


def _decisions(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    return logits.argmax(-1) if problem_type == "single_label_classification" else (logits > 0)


def run_unlearn_job(config: UnlearnConfig, *, progress: bool = True) -> Path:
    """Run the job; returns the output folder.

    Raises:
        ValueError: for mismatched or unreadable inputs or out-of-range options (the message names the option).
    """
    import datasets

    from ..data.attributes import load_attribute_dataset
    from ..evaluation.metrics import load_metric
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

    def accuracy_of(m, source, dataset, image_column: str) -> float:
        """Utility on a ``datasets`` split: ``evaluate``'s image-classification evaluator (single-label), or the
        ``classification_accuracy`` module on the decisions (multi-label, which the evaluator does not read)."""
        if problem_type == "single_label_classification":
            return _evaluator_accuracy(m, processor, dataset, image_column, source.labels, device)
        decisions = _decisions(_predict(m, source, config.batch_size, device), problem_type).long().numpy()
        return load_metric("classification_accuracy").compute(
            predictions=decisions, references=_module_labels(source.labels, problem_type))["accuracy"]

    def decisions_of(m, source) -> np.ndarray:
        return _decisions(_predict(m, source, config.batch_size, device), problem_type).long().numpy()

    if problem_type != "regression":
        metrics["accuracy_revised_before"] = accuracy_of(model, rev_pairs, rev_ds, "image")
        metrics["accuracy_revised_after"] = accuracy_of(result.model, rev_pairs, rev_ds, "image")
    metrics["unlearning_seconds"] = result.seconds
    shifted_src = None
    if config.shifted_test is not None:
        if problem_type == "regression":
            raise ValueError("shifted_test needs a classifier (accuracy); this model does regression")
        shifted = load_attribute_dataset(config.shifted_test, image_column=config.image_column, attribute_columns=[])
        shifted_src = as_source(shifted, "shifted_test", transform=transform, label_spec=spec,
                                image_column=config.image_column)

        metrics["accuracy_shifted_before"] = accuracy_of(model, shifted_src, shifted, config.image_column)
        metrics["accuracy_shifted_after"] = accuracy_of(result.model, shifted_src, shifted, config.image_column)
    if config.compare_retrain and config.method != "retrain":
        retrained = unlearn(model, orig_pairs, rev_pairs, method="retrain",
                            retrain_fn=lambda x, y: train_classifier(fresh_model(), x, y, **recipe), **common)
        metrics["retrain_seconds"] = retrained.seconds
        metrics["speedup_vs_retrain"] = retrained.seconds / max(result.seconds, 1e-9)
        if problem_type != "regression":
            a = _decisions(_predict(result.model, train_set, config.batch_size, device), problem_type)
            b = _decisions(_predict(retrained.model, train_set, config.batch_size, device), problem_type)
            metrics["agreement_with_retrained"] = float((a == b).float().mean())
        if shifted_src is not None:
            metrics["accuracy_shifted_retrained"] = accuracy_of(retrained.model, shifted_src, shifted,
                                                                config.image_column)
            # the share of the gap through the ``gap_restored`` evaluate module, on the three models' decisions
            restored = load_metric("gap_restored").compute(
                predictions=decisions_of(result.model, shifted_src),
                references=_module_labels(shifted_src.labels, problem_type),
                original_predictions=decisions_of(model, shifted_src),
                retrained_predictions=decisions_of(retrained.model, shifted_src))["gap_restored"]
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
                metrics[name] = load_metric("mia_auc").compute(predictions=scores,
                                                               references=is_member.astype(np.int64))["mia_auc"]
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
