"""Tiny data and models for the privacy loop's tests: a few SynthFaces, a small ResNet trained on them for one epoch
(seconds on a CPU), the embedded default pipeline run with 2 inference steps."""

from __future__ import annotations

import numpy as np
import torch

LABELS = ["smiling", "eyeglasses", "wearing_hat"]
ATTRIBUTES = ["dark_skin"]


def make_loop_data(folder, *, num_train: int = 40, num_held_out: int = 16, seed: int = 0):
    """``(train, held_out, classifier_folder)``: SynthFaces splits (32 px) and a multi-label ResNet folder with its
    image processor, trained on ``train`` only."""
    from dpdiffusion.data.synthfaces import make_synthfaces
    from dpdiffusion.training.classifier import build_classifier, train_classifier
    from dpdiffusion.unlearning.data import default_image_processor

    ds = make_synthfaces(num_train + num_held_out, image_size=32, seed=seed)
    train, held = ds.select(range(num_train)), ds.select(range(num_train, num_train + num_held_out))
    images = np.stack([np.asarray(im.convert("RGB")) for im in train["image"]])
    labels = torch.tensor(np.stack([np.asarray(train[c]) for c in LABELS], 1).astype(np.float32))
    model = build_classifier(len(LABELS), image_size=32, label_names=LABELS, hidden_sizes=(8, 16), embedding_size=8,
                             seed=seed)
    model = train_classifier(model, images, labels, epochs=1, batch_size=16, lr=3e-3, seed=seed, progress=False)
    path = folder / "classifier"
    model.save_pretrained(path)
    default_image_processor(32).save_pretrained(path)
    return train, held, path


def make_loop(folder, **kwargs):
    """A `PrivacyLoop` on `make_loop_data` with the embedded default pipeline (2 DDIM steps) and a small pilot."""
    from dpdiffusion import PrivacyLoop
    from dpdiffusion.models.default import load_pipeline

    train, held, classifier = make_loop_data(folder)
    pipe = load_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    options = dict(attributes=ATTRIBUTES, label_columns=LABELS, held_out=held, pilot_size=16, num_previews=4,
                   num_inference_steps=2, attacker_epochs=1, retrain_epochs=1, unlearning_method="first_order")
    options.update(kwargs)
    return PrivacyLoop(pipe, train, str(classifier), **options)
