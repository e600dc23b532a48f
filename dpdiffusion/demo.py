"""``dpdiffusion demo``: the main job on the embedded default, end to end, offline, on a laptop CPU.

Stages (each with a progress bar; every figure written comes from the code that computes it):

1. make a SynthFaces sample (ground-truth attributes);
2. protect it at several epsilons with ``DPDiffusionPipeline`` and save a before/after grid (``grid.png``)
   with the privacy report of each row;
3. write ``report.md``, ``report.html`` and ``metrics.json``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

logger = logging.getLogger(__name__)

DEMO_EPSILONS = (0.5, 1.0, 4.0, math.inf)


def _grid(rows: list[list[PIL.Image.Image]], labels: list[str], scale: int = 3) -> PIL.Image.Image:
    size = rows[0][0].size[0] * scale
    label_w = 150
    grid = PIL.Image.new("RGB", (label_w + size * len(rows[0]), size * len(rows)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(rows, labels)):
        draw.text((6, r * size + size // 2 - 6), label, fill="black")
        for c, img in enumerate(row):
            grid.paste(img.resize((size, size), PIL.Image.NEAREST), (label_w + c * size, r * size))
    return grid


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.4g}"


def run_demo(out: str | Path, *, model: str | None = None, num_images: int = 16, seed: int = 0,
             num_inference_steps: int = 25, epsilons=DEMO_EPSILONS, delta: float = 1e-5,
             attributes=("dark_skin", "long_hair")) -> Path:
    """Run the demo and return the path of ``report.md``."""
    from .cli import _load_pipeline
    from .data.synthfaces import make_synthfaces_arrays

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got num_images={num_images}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pipe = _load_pipeline(model)
    print(f"[1/3] SynthFaces: {num_images} faces at {pipe.image_size} px (seed {seed + 999})")
    images, params = make_synthfaces_arrays(num_images, image_size=pipe.image_size, seed=seed + 999)
    originals = [PIL.Image.fromarray(im) for im in images]

    print(f"[2/3] protecting {list(attributes)} at epsilon in {[_fmt(e) for e in epsilons]}")
    rows, labels, releases = [originals], ["original"], []
    for eps in epsilons:
        result = pipe(originals, attributes=list(attributes), epsilon=eps, delta=delta,
                      num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed),
                      output_type="pil")
        rows.append(result.images)
        labels.append(f"epsilon={_fmt(result.epsilon)}")
        releases.append(result.report.to_dict())
    grid_path = out / "grid.png"
    _grid(rows, labels).save(grid_path)

    print("[3/3] writing the report")
    metrics = {
        "model": model or "DEFAULT_MODEL",
        "num_images": num_images,
        "num_inference_steps": num_inference_steps,
        "attributes": list(attributes),
        "releases": releases,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    lines = [
        "# dpdiffusion demo report",
        "",
        f"Protected attributes: {', '.join(attributes)}; {num_images} SynthFaces images; "
        f"{num_inference_steps} DDIM steps; {metrics['seconds']} s in all.",
        "",
        "![before/after grid](grid.png)",
        "",
        "| epsilon | delta | noise multiplier | sigma per attribute | strength | guarantee |",
        "|---|---|---|---|---|---|",
    ]
    for rel in releases:
        sig = ", ".join(f"{k}: {_fmt(v)}" for k, v in rel["sigmas"].items())
        lines.append(f"| {_fmt(rel['epsilon'])} | {rel['delta']:g} | {_fmt(rel['noise_multiplier'])} | {sig} | "
                     f"{rel['strength']:.3f} | {rel['guarantee']} |")
    lines += ["", "Neighbouring relation: " + releases[0]["neighbouring_relation"] + ".", ""]
    (out / "report.md").write_text("\n".join(lines))
    body = "\n".join(f"<p>{html.escape(line)}</p>" for line in lines if line and not line.startswith(("|", "!")))
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
                    + "</tr>" for line in lines if line.startswith("|") and "---" not in line)
    (out / "report.html").write_text(f"<html><body>{body}<img src='grid.png'><table border=1>{table}</table>"
                                     "</body></html>")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'metrics.json'} and {grid_path}")
    return out / "report.md"
