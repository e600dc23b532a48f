"""``dpdiffusion unlearn``: unlearn a published classifier against a protected dataset and publish the result.

Inputs: a ``transformers`` image classifier (folder or Hub repo id), the ORIGINAL training images (any dataset that
``load_attribute_dataset`` reads, with the label columns), and the REVISED images written by ``dpdiffusion protect``
(an image folder whose ``metadata.jsonl`` has, per image, the ``index`` of its original row and the privacy figures of
its release). Row ``index`` of the original and the revised image form one changed pair; the labels are the
original row's. Output: the unlearned model (safetensors) with a model card rendered from
``model_cards/unlearned_classifier.md`` in ``output_dir`` and, with ``push_to_hub``, the same folder uploaded.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class UnlearnConfig:
    """Options of ``dpdiffusion unlearn``."""

    classifier: str = field(metadata={"help": "transformers image classifier: folder or Hub repo id."})
    original: str = field(metadata={"help": "Original training images (image folder with metadata, save_to_disk folder or Hub dataset)."})
    revised: str = field(metadata={"help": "Output folder of `dpdiffusion protect` on those images."})
    label_columns: list[str] = field(metadata={"help": "The classifier's label columns in the original dataset, in its label order."})
    output_dir: str = field(metadata={"help": "Where the unlearned model and its model card are written."})
    method: str = field(default="second_order", metadata={"help": "first_order, second_order, finetune or retrain."})
    image_column: str = field(default="image", metadata={"help": "Image column of the original dataset."})
    image_size: int = field(default=32, metadata={"help": "Input size of the classifier in pixels."})
    epochs: int = field(default=10, metadata={"help": "Epochs of finetune/retrain (and of --compare-retrain)."})
    compare_retrain: bool = field(default=False, metadata={"help": "Also retrain from scratch to measure the cost ratio and closeness."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the result to this Hub repo id (needs a token)."})
    seed: int = field(default=0, metadata={"help": "Seed."})


def _revised_records(folder: Path) -> list[dict]:
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise ValueError(f"revised={str(folder)!r} has no metadata.jsonl; pass the output folder of `dpdiffusion protect`")
    records = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    if not records or any("index" not in r or "file_name" not in r for r in records):
        raise ValueError(f"{meta} must hold one record with 'index' and 'file_name' per protected image")
    return sorted(records, key=lambda r: int(r["index"]))


def run_unlearn_job(config: UnlearnConfig, *, progress: bool = True) -> Path:
    """Run the job; returns the output folder. Raises ``ValueError`` for mismatched or unreadable inputs."""
    import PIL.Image
    from transformers import AutoModelForImageClassification

    from ..data.attributes import dataset_to_tensors, load_attribute_dataset
    from ..data.images import images_to_tensor
    from ..hub import push_unlearned_model
    from ..training.classifier import predict_logits, train_classifier
    from ..utils_accelerate import make_accelerator
    from . import unlearn
    from .core import METHODS

    if config.method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got method={config.method!r}")
    model = AutoModelForImageClassification.from_pretrained(config.classifier, use_safetensors=True)
    if model.config.num_labels != len(config.label_columns):
        raise ValueError(f"label_columns has {len(config.label_columns)} names but the classifier has "
                         f"{model.config.num_labels} labels")
    original = load_attribute_dataset(config.original, image_column=config.image_column,
                                      attribute_columns=config.label_columns)
    images, labels = dataset_to_tensors(original, image_size=config.image_size, image_column=config.image_column,
                                        attribute_columns=config.label_columns)
    revised_dir = Path(config.revised)
    records = _revised_records(revised_dir)
    idx = torch.tensor([int(r["index"]) for r in records])
    if int(idx.max()) >= len(images):
        raise ValueError(f"revised row index {int(idx.max())} is outside the original dataset ({len(images)} rows): "
                         "the two datasets do not match")
    revised_imgs = images_to_tensor([PIL.Image.open(revised_dir / r["file_name"]) for r in records],
                                    config.image_size)
    orig_pairs = (images[idx], labels[idx])
    rev_pairs = (revised_imgs, labels[idx])
    train_images = images.clone()
    train_images[idx] = revised_imgs
    train_set = (train_images, labels)
    first = records[0]
    privacy = {k: first.get(k) for k in ("epsilon", "delta", "guarantee", "neighbouring_relation", "attributes")}

    def fresh_model():
        return type(model)(model.config)

    # under `accelerate launch` every process computes its share of the gradient sums and HVPs (summed with
    # accelerator.reduce), so all processes hold the same update; only the main one writes and pushes
    accelerator = make_accelerator()
    progress = progress and accelerator.is_main_process
    recipe = dict(epochs=config.epochs, batch_size=64, lr=3e-3, seed=config.seed, progress=progress)
    result = unlearn(model, orig_pairs, rev_pairs, method=config.method, train_set=train_set, seed=config.seed,
                     epochs=config.epochs, progress=progress, accelerator=accelerator,
                     retrain_fn=lambda x, y: train_classifier(fresh_model(), x, y, **recipe))
    before = (predict_logits(model, rev_pairs[0]) > 0) == (rev_pairs[1] > 0.5)
    after = (predict_logits(result.model, rev_pairs[0]) > 0) == (rev_pairs[1] > 0.5)
    metrics = {"accuracy on the revised images, before": float(before.float().mean()),
               "accuracy on the revised images, after": float(after.float().mean()),
               "changed pairs": int(len(idx))}
    retrain_seconds = None
    if config.compare_retrain and config.method != "retrain":
        retrained = unlearn(model, orig_pairs, rev_pairs, method="retrain", train_set=train_set, seed=config.seed,
                            progress=progress, accelerator=accelerator,
                            retrain_fn=lambda x, y: train_classifier(fresh_model(), x, y, **recipe))
        retrain_seconds = retrained.seconds
        agree = (predict_logits(result.model, images) > 0) == (predict_logits(retrained.model, images) > 0)
        metrics["agreement with the retrained model (training images)"] = float(agree.float().mean())
    command = "dpdiffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = Path(config.output_dir)
    kwargs = dict(result=result, privacy=privacy, metrics=metrics, command=command,
                  cost={"seconds": result.seconds, "retrain_seconds": retrain_seconds})
    if accelerator.is_main_process:
        push_unlearned_model(result.model, config.push_to_hub or f"local/{out.name}", dry_run_dir=out, **kwargs)
        if config.push_to_hub:
            push_unlearned_model(result.model, config.push_to_hub, **kwargs)
    accelerator.wait_for_everyone()
    return out
