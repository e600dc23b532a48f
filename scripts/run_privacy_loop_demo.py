"""The privacy loop's scripted run (issue 34): SynthFaces with skin tone correlated with smiling, a ResNet trained on
them, then ``dpdiffusion loop --verdicts more_privacy more_utility accept``, and the checks on what it wrote.

1. ``--num-train`` SynthFaces training images whose ``dark_skin`` agrees with ``smiling`` on ``--correlation`` of them
   (exact counterfactual renders), and ``--num-held-out`` clean held-out images (no correlation imposed);
2. a small transformers ``ResNetForImageClassification`` (`dpdiffusion.training.classifier.build_classifier`) of
   smiling / eyeglasses / wearing_hat trained on the training images, saved with its image processor;
3. ``dpdiffusion loop`` as a subprocess (protect ``dark_skin``), its output printed as it comes;
4. checks: ``OUT/release`` loads with ``datasets``, ``OUT/model`` with ``pipeline("image-classification")``, the
   ledger holds exactly one charge per subject at the accepted epsilon, and the final utility equals an independent
   recomputation on the held-out clean images (the model's own forward pass, thresholded at 0) within 0.01.

Writes ``OUT/../demo_summary.json`` (every step's epsilon, figures and seconds, the final figures, the checks).

    python scripts/run_privacy_loop_demo.py --work-dir loop-demo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LABELS = ["smiling", "eyeglasses", "wearing_hat"]


def make_data(work: Path, *, num_train: int, num_held_out: int, correlation: float, seed: int):
    import datasets
    import PIL.Image

    from dpdiffusion.data.synthfaces import (
        SYNTHFACES_ATTRIBUTES,
        counterfactual_params,
        render_faces,
        sample_face_params,
    )

    params = sample_face_params(num_train + num_held_out, seed=seed)
    train_p = {k: v[:num_train] for k, v in params.items()}
    held_p = {k: v[num_train:] for k, v in params.items()}
    agree = np.random.default_rng(seed).random(num_train) < correlation
    train_p = counterfactual_params(train_p, "dark_skin", value=np.where(agree, train_p["smiling"], ~train_p["smiling"]))

    def dataset(p):
        images = render_faces(p, image_size=32)
        features = datasets.Features({"image": datasets.Image(),
                                      **{a: datasets.Value("bool") for a in SYNTHFACES_ATTRIBUTES}})
        return datasets.Dataset.from_dict({"image": [PIL.Image.fromarray(im) for im in images],
                                           **{a: [bool(v) for v in p[a]] for a in SYNTHFACES_ATTRIBUTES}},
                                          features=features), images

    train, train_images = dataset(train_p)
    held, _ = dataset(held_p)
    train.save_to_disk(str(work / "train"))
    held.save_to_disk(str(work / "held_out"))
    agreement = float(np.mean(np.asarray(train["dark_skin"]) == np.asarray(train["smiling"])))
    return train, held, train_images, agreement


def train_resnet(work: Path, train, images, *, epochs: int, seed: int) -> Path:
    import torch

    from dpdiffusion.training.classifier import build_classifier, train_classifier
    from dpdiffusion.unlearning.data import default_image_processor

    labels = torch.tensor(np.stack([np.asarray(train[c]) for c in LABELS], 1).astype(np.float32))
    model = build_classifier(len(LABELS), image_size=32, label_names=LABELS, seed=seed)
    model = train_classifier(model, images, labels, epochs=epochs, batch_size=64, lr=3e-3, seed=seed, progress=True)
    folder = work / "classifier"
    model.save_pretrained(folder)
    default_image_processor(32).save_pretrained(folder)
    return folder


def check_outputs(out: Path, held) -> dict:
    import datasets
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        pipeline,
    )

    from dpdiffusion import PrivacyLedger

    record = json.loads((out / "loop.json").read_text())
    release = datasets.load_dataset("imagefolder", data_dir=str(out / "release"), split="train")
    classify = pipeline("image-classification", model=str(out / "model"))
    first = classify(held[0]["image"], top_k=len(LABELS))
    ledger = PrivacyLedger(record["ledger"])
    subjects = ledger.subjects()
    charges = {len(ledger.history(s)) for s in subjects}
    spent = [ledger.spent(s) for s in subjects]
    model = AutoModelForImageClassification.from_pretrained(out / "model").eval()
    processor = AutoImageProcessor.from_pretrained(out / "model")
    decided = []
    with torch.no_grad():
        for i in range(0, len(held), 256):
            x = processor(images=[im.convert("RGB") for im in held[i:i + 256]["image"]], return_tensors="pt")
            decided.append((model(pixel_values=x["pixel_values"]).logits > 0).numpy())
    decided = np.concatenate(decided)
    recomputed = {name: float((decided[:, j] == np.asarray(held[name]).astype(bool)).mean())
                  for j, name in enumerate(LABELS)}
    reported = {name: record["final"]["utility"]["per_label"][name]["accuracy"] for name in LABELS}
    return {
        "release_rows": len(release), "release_columns": release.column_names,
        "pipeline_labels": sorted(s["label"] for s in first),
        "ledger_subjects": len(subjects), "charges_per_subject": sorted(charges),
        "spent_epsilon_range": [min(spent), max(spent)], "accepted_epsilon": record["accepted_epsilon"],
        "utility_reported": reported, "utility_recomputed": recomputed,
        "utility_max_difference": max(abs(reported[n] - recomputed[n]) for n in LABELS),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", required=True, help="Folder for the data, the classifier and OUT/ (must be new).")
    p.add_argument("--num-train", type=int, default=2000, help="Training images (the dataset released).")
    p.add_argument("--num-held-out", type=int, default=500, help="Clean held-out images.")
    p.add_argument("--correlation", type=float, default=0.9, help="Share of training faces whose skin tone agrees with smiling.")
    p.add_argument("--classifier-epochs", type=int, default=8, help="Epochs of the ResNet's training.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data and the training.")
    p.add_argument("--loop-args", nargs=argparse.REMAINDER, default=[],
                   help="Extra arguments of dpdiffusion loop (e.g. --pilot-size 64 --retrain-epochs 10).")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=False)
    t0 = time.perf_counter()
    train, held, images, agreement = make_data(work, num_train=args.num_train, num_held_out=args.num_held_out,
                                               correlation=args.correlation, seed=args.seed)
    print(f"data: {len(train)} training images (skin tone agrees with smiling on {agreement:.1%}), {len(held)} held out",
          flush=True)
    t1 = time.perf_counter()
    classifier = train_resnet(work, train, images, epochs=args.classifier_epochs, seed=args.seed)
    t2 = time.perf_counter()
    out = work / "OUT"
    command = [sys.executable, "-m", "dpdiffusion.cli", "loop", "--source", str(work / "train"), "--classifier",
               str(classifier), "--held-out", str(work / "held_out"), "--attributes", "dark_skin", "--labels", *LABELS,
               "--output-dir", str(out), "--verdicts", "more_privacy", "more_utility", "accept", *args.loop_args]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    t3 = time.perf_counter()
    checks = check_outputs(out, held)
    record = json.loads((out / "loop.json").read_text())
    summary = {"num_train": len(train), "num_held_out": len(held), "agreement": agreement,
               "seconds": {"data": t1 - t0, "classifier": t2 - t1, "loop_cli": t3 - t2,
                           "accept": record["accept_seconds"]},
               "steps": [{"epsilon": s["epsilon"], "verdict": s["verdict"], "seconds": s["seconds"],
                          "figures": s["figures"]} for s in record["steps"]],
               "final": record["final"], "checks": checks}
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(checks, indent=2))
    return summary


if __name__ == "__main__":
    main()
