#!/usr/bin/env python
"""Benchmarks that print ratios measured in one run (one JSON, then a short table).

    python scripts/benchmark.py                       # all sections on the embedded default
    python scripts/benchmark.py --sections pipeline protect_memory data_parallel unlearning

Sections:
* ``pipeline``: wall time of ``pipe(...)`` over the floor of its network evaluations (the same encoder + UNet
  forward passes timed alone, on the same batch), and images/s.
* ``protect_memory``: peak resident memory of ``dpdiffusion protect`` (a subprocess each) on growing numbers of
  SynthFaces images (``--memory-sizes``, default 1,000 and 10,000; pass
  ``--memory-sizes 1000 10000 100000`` for the 100k point, which takes long on a CPU; 1 DDIM step per image);
  streaming means the ratio stays near 1.
* ``data_parallel``: ``protect`` throughput with 1 single-thread process, 2 single-thread processes
  (``accelerate launch --num_processes 2``) and 1 process using 2 threads, on the same images.
* ``unlearning``: ``scripts/benchmark_unlearning.py``'s speed-ups of first/second-order unlearning over retraining.
* ``diffae``: the official Diffusion Autoencoder architecture as converted by ``scripts/convert_diffae_checkpoint.py``
  (``--diffae-config ffhq256``: the official FFHQ256 model, 168 M parameters; ``tiny32``: the test fixture), with
  weights seeded from parameter names (speed does not depend on their values): wall time of ``pipe(...)`` over the
  floor of its network evaluations (one encoder pass and one UNet call per official DDIM step), and images/s.
* ``faces``: photos in the wild (``pipe(photos, faces="detect")``): time of face detection + FFHQ alignment +
  paste-back on scikit-image's ``data.astronaut()`` (512 px, one face) over the time of protecting that one face
  (``--steps`` DDIM steps), target <= 10 %; also a 2048 px copy of the photo, with the default ``min_face_size``
  and with ``min_face_size=160`` (detection time follows the photo's pixels over ``min_face_size`` squared).

Every figure is measured by this script in this run; nothing is copied from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"



def _interleaved_times(floor, full, repeats: int) -> tuple[list, list]:
    """Wall times of ``floor()`` and ``full()``, each warmed up once, then run interleaved ``repeats`` times (so that
    a busy machine slows both alike); the callers report the best of each."""
    floor()
    full()  # warm-up
    t_floor, t_full = [], []
    for _ in range(repeats):
        s = time.perf_counter(); floor(); t_floor.append(time.perf_counter() - s)  # noqa: E702
        s = time.perf_counter(); full(); t_full.append(time.perf_counter() - s)  # noqa: E702
    return t_floor, t_full

def bench_pipeline(pipe, *, batch_size: int, steps: int, repeats: int = 3) -> dict:
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays
    from dpdiffusion.models.diffae import _is_official, ddim_pairs

    official = _is_official(pipe.unet)
    images, _ = make_synthfaces_arrays(batch_size, image_size=pipe.image_size, seed=31337)
    pil = [__import__("PIL.Image").Image.fromarray(im) for im in images]
    pipe.set_progress_bar_config(disable=True)
    x = pipe.preprocess(pil)
    pairs = ddim_pairs(pipe.scheduler, steps)

    # the network evaluations the pipeline makes: one encoder pass, then per DDIM step one UNet call, on a doubled
    # batch when semantic guidance is on (conditional and centre-latent branches batched together)
    guided = pipe._guidance(None, None) != 1.0

    def floor():
        with torch.no_grad():
            z = pipe.encoder(x)
            cond = pipe.encoder.condition(z)
            xt = torch.randn_like(x)
            if guided:
                xt, cond = torch.cat([xt, xt]), torch.cat([cond, cond])
            for t, _, _ in pairs:  # the DiffAE architecture takes its condition as ``cond`` (same count of calls)
                timestep = torch.full((xt.shape[0],), t, dtype=torch.long)
                pipe.unet(xt, timestep, cond=cond) if official else pipe.unet(xt, timestep, class_labels=cond)

    def full():
        pipe(pil, attributes=["dark_skin"], epsilon=1.0, num_inference_steps=steps,
             generator=torch.Generator().manual_seed(0), output_type="pil")

    t_floor, t_full = _interleaved_times(floor, full, repeats)
    return {"batch_size": batch_size, "num_inference_steps": steps, "semantic_guidance": guided, "floor_s": min(t_floor),
            "pipeline_s": min(t_full), "pipeline_over_floor": min(t_full) / min(t_floor),
            "images_per_s": batch_size / min(t_full)}


def diffae_pipeline(config: str = "ffhq256"):
    """A converted-format ``DPDiffusionPipeline`` of the official DiffAE architecture with seeded random weights."""
    import importlib.util

    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.models.diffae_conversion import (attribute_directions_from_latents,
                                                      configs_from_hyper_parameters, convert_models)
    from dpdiffusion.models.diffae_encoder import DiffAESemanticEncoder
    from dpdiffusion.models.diffae_unet import DiffAEUNet2DModel

    fixtures = ROOT / "tests" / "fixtures" / "diffae"
    if config == "ffhq256":
        hparams = json.loads((fixtures / "ffhq256" / "hyper_parameters.json").read_text())
    elif config == "tiny32":
        hparams = torch.load(fixtures / "tiny32" / "last.ckpt", weights_only=True)["hyper_parameters"]
    else:
        raise ValueError(f"diffae config must be 'ffhq256' or 'tiny32', got config={config!r}")
    spec = importlib.util.spec_from_file_location("make_diffae_fixtures", ROOT / "scripts" / "make_diffae_fixtures.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    unet_cfg, enc_cfg, _ = configs_from_hyper_parameters(hparams)
    shapes = {k: tuple(v.shape) for k, v in DiffAEUNet2DModel(**unet_cfg).state_dict().items()}
    shapes.update({f"encoder.{k}": tuple(v.shape) for k, v in DiffAESemanticEncoder(**enc_cfg).state_dict().items()})
    state = {f"ema_model.{k}": v for k, v in make.seeded_state_dict(shapes).items()}
    unet, encoder, scheduler = convert_models(state, hparams)
    conds = torch.randn(512, encoder.config.latent_dim, generator=torch.Generator().manual_seed(0))
    dirs = attribute_directions_from_latents(conds, conds.mean(0))
    return DPDiffusionPipeline(unet=unet, encoder=encoder, scheduler=scheduler, attribute_directions=dirs)


def bench_diffae(pipe, *, batch_size: int, steps: int, repeats: int = 2) -> dict:
    from dpdiffusion.models.diffae_sampler import official_timesteps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, pipe.image_size, pipe.image_size, generator=g)
    x = pipe.preprocess(images)
    grid = official_timesteps(pipe.scheduler.config.num_train_timesteps, steps)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def floor():
        with torch.no_grad():
            z = pipe.encoder(x)
            xt = torch.randn_like(x)
            for t in grid:
                pipe.unet(xt, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), cond=z)
        sync()

    def full():
        pipe(images, attributes=["pc_1"], epsilon=1.0, num_inference_steps=steps,
             generator=torch.Generator(device).manual_seed(0), output_type="np")
        sync()

    t_floor, t_full = _interleaved_times(floor, full, repeats)
    return {"image_size": pipe.image_size, "parameters": sum(p.numel() for p in pipe.unet.parameters()) +
            sum(p.numel() for p in pipe.encoder.parameters()), "device": device, "batch_size": batch_size,
            "num_inference_steps": steps, "floor_s": min(t_floor), "pipeline_s": min(t_full),
            "pipeline_over_floor": min(t_full) / min(t_floor), "images_per_s": batch_size / min(t_full)}


def _make_dataset(n: int, folder: Path) -> Path:
    from dpdiffusion.data.synthfaces import make_synthfaces

    path = folder / f"synthfaces-{n}"
    if not path.exists():
        make_synthfaces(n, seed=7).save_to_disk(str(path))
    return path


def _run_protect(source: Path, out: Path, *, steps: int, batch_size: int, threads: int, processes: int = 1,
                 model: str | None = None, limit: int | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = ["protect", "--source", str(source), "--output-dir", str(out), "--num-inference-steps", str(steps),
            "--batch-size", str(batch_size), "--no-progress"]
    if model:
        args += ["--model", model]
    if limit:
        args += ["--limit", str(limit)]
    measure = [sys.executable, str(ROOT / "scripts" / "_maxrss.py")]
    if processes == 1:
        cmd = measure + [sys.executable, "-m", "dpdiffusion.cli", *args]
    else:
        # --multi_gpu selects accelerate's torchrun launcher (``--cpu`` starts one process); without CUDA the
        # processes form a CPU (gloo) group, see dpdiffusion.utils_accelerate
        cmd = measure + [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                         str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "-m", "dpdiffusion.cli", *args]
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"protect failed ({res.returncode}):\n{res.stderr[-3000:]}")
    peak_kib = int(res.stdout.strip().splitlines()[-1].split()[-1])
    done = len((out / "metadata.jsonl").read_text().splitlines())
    return {"seconds": seconds, "images": done, "images_per_s": done / seconds, "peak_rss_mib": peak_kib / 1024}


def bench_protect_memory(sizes, *, workdir: Path, model: str | None) -> dict:
    out = {}
    for n in sizes:
        src = _make_dataset(n, workdir)
        out[str(n)] = _run_protect(src, workdir / f"protect-mem-{n}", steps=1, batch_size=64, threads=2,
                                   model=model)
    first, last = out[str(sizes[0])], out[str(sizes[-1])]
    out["peak_rss_ratio_largest_over_smallest"] = last["peak_rss_mib"] / first["peak_rss_mib"]
    return out


def bench_data_parallel(n: int, *, steps: int, workdir: Path, model: str | None) -> dict:
    src = _make_dataset(n, workdir)
    one = _run_protect(src, workdir / "dp-1x1", steps=steps, batch_size=16, threads=1, model=model)
    two = _run_protect(src, workdir / "dp-2x1", steps=steps, batch_size=16, threads=1, processes=2, model=model)
    both = _run_protect(src, workdir / "dp-1x2", steps=steps, batch_size=16, threads=2, model=model)
    return {"images": n, "num_inference_steps": steps, "one_process_one_thread": one,
            "two_processes_one_thread_each": two, "one_process_two_threads": both,
            "speedup_2proc_over_1proc": two["images_per_s"] / one["images_per_s"],
            "speedup_2proc_over_1proc_2threads": two["images_per_s"] / both["images_per_s"]}


def bench_unlearning(extra_args: list[str]) -> dict:
    script = ROOT / "scripts" / "benchmark_unlearning.py"
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, str(script), "--out", tmp, *extra_args], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"benchmark_unlearning failed:\n{res.stderr[-3000:]}")
        return json.loads((Path(tmp) / "results.json").read_text())


def bench_faces(pipe, *, steps: int, repeats: int = 3) -> dict:
    import numpy as np
    import PIL.Image
    from skimage import data

    from dpdiffusion.faces import align_face, find_faces, paste_face
    from dpdiffusion.faces.detect import default_detector

    pipe.set_progress_bar_config(disable=True)
    default_detector()  # load the models once, outside the timings
    photo = data.astronaut()
    big = np.asarray(PIL.Image.fromarray(photo).resize((2048, 2048), PIL.Image.BICUBIC))
    # name -> (photo, min_face_size): the default, and a large photo searched only for faces >= 160 px (8 % of it)
    photos = {"astronaut_512px": (photo, None), "astronaut_2048px": (big, None),
              "astronaut_2048px_min_face_160": (big, 160)}
    out = {"num_inference_steps": steps}
    crop = None
    for name, (img, min_face) in photos.items():
        kw = {} if min_face is None else {"min_face_size": min_face}
        t_det, t_align, t_paste = [], [], []
        for _ in range(repeats):
            s = time.perf_counter(); faces = find_faces(img, **kw); t_det.append(time.perf_counter() - s)
            s = time.perf_counter(); aligned = [align_face(img, f.landmarks, pipe.image_size) for f in faces]
            t_align.append(time.perf_counter() - s)
            s = time.perf_counter()
            pasted = img
            for a in aligned:
                pasted, _ = paste_face(pasted, 255 - a.crop, a.quad)
            t_paste.append(time.perf_counter() - s)
        crop = aligned[0].crop if crop is None else crop
        out[name] = {"faces": len(faces), "detect_s": min(t_det), "align_s": min(t_align), "paste_s": min(t_paste),
                     "overhead_s": min(t_det) + min(t_align) + min(t_paste)}

    def protect():
        pipe(crop[None], epsilon=1.0, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
             output_type="np")

    protect()  # warm-up
    t_protect = []
    for _ in range(repeats):
        s = time.perf_counter(); protect(); t_protect.append(time.perf_counter() - s)
    out["protect_one_face_s"] = min(t_protect)
    for name in photos:
        out[name]["overhead_over_protect"] = out[name]["overhead_s"] / out["protect_one_face_s"]
    return out


def main(argv=None) -> int:
    from dpdiffusion.models.steps import DEFAULT_NUM_INFERENCE_STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Pipeline folder or Hub id (default: the embedded one).")
    parser.add_argument("--sections", nargs="+", default=["pipeline", "protect_memory", "data_parallel", "unlearning",
                                                        "faces"],
                        help="Which sections to run.")
    parser.add_argument("--batch-size", type=int, default=16, help="Batch of the pipeline section.")
    parser.add_argument("--steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS,
                        help="DDIM steps of the pipeline and data-parallel sections (default: the entry points').")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 10000],
                        help="Dataset sizes of the protect memory section (1 DDIM step per image).")
    parser.add_argument("--parallel-images", type=int, default=128, help="Images of the data-parallel section.")
    parser.add_argument("--unlearning-args", nargs=argparse.REMAINDER, default=[],
                        help="Arguments passed to scripts/benchmark_unlearning.py.")
    parser.add_argument("--diffae-config", default="ffhq256", choices=["ffhq256", "tiny32"],
                        help="Architecture of the diffae section (official FFHQ256 or the tiny test fixture).")
    parser.add_argument("--diffae-batch-size", type=int, default=1, help="Batch of the diffae section.")
    parser.add_argument("--diffae-steps", type=int, default=10, help="Official DDIM steps of the diffae section.")
    parser.add_argument("--faces-repeats", type=int, default=3, help="Repeats (best of N) of the faces section.")
    parser.add_argument("--out", default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)

    from dpdiffusion.models.default import load_pipeline as _load_pipeline

    result = {"device": _device_name(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "pipeline" in args.sections:
            result["pipeline"] = bench_pipeline(_load_pipeline(args.model), batch_size=args.batch_size,
                                                steps=args.steps)
        if "protect_memory" in args.sections:
            result["protect_memory"] = bench_protect_memory(args.memory_sizes, workdir=work, model=args.model)
        if "data_parallel" in args.sections:
            result["data_parallel"] = bench_data_parallel(args.parallel_images, steps=args.steps, workdir=work,
                                                          model=args.model)
        if "unlearning" in args.sections:
            result["unlearning"] = bench_unlearning(args.unlearning_args)
        if "diffae" in args.sections:
            result["diffae"] = {"config": args.diffae_config, **bench_diffae(
                diffae_pipeline(args.diffae_config), batch_size=args.diffae_batch_size, steps=args.diffae_steps)}
        if "faces" in args.sections:
            result["faces"] = bench_faces(_load_pipeline(args.model), steps=args.steps,
                                          repeats=args.faces_repeats)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print("\n| figure | value | target |\n|---|---|---|")
    if "pipeline" in result:
        p = result["pipeline"]
        print(f"| pipeline time / UNet+encoder floor | {p['pipeline_over_floor']:.3f} | <= 1.15 |")
        print(f"| images/s ({p['num_inference_steps']} steps, batch {p['batch_size']}) | {p['images_per_s']:.2f} | |")
    if "protect_memory" in result:
        m = result["protect_memory"]
        sizes = [k for k in m if k.isdigit()]
        for k in sizes:
            print(f"| protect peak RSS, {k} images | {m[k]['peak_rss_mib']:.0f} MiB | flat |")
        print(f"| peak RSS ratio {sizes[-1]} / {sizes[0]} | {m['peak_rss_ratio_largest_over_smallest']:.3f} | ~1 |")
    if "data_parallel" in result:
        d = result["data_parallel"]
        print(f"| 2 single-thread processes / 1 single-thread process | {d['speedup_2proc_over_1proc']:.2f}x | >= 1.6x |")
        print(f"| 2 single-thread processes / 1 process with 2 threads | {d['speedup_2proc_over_1proc_2threads']:.2f}x | |")
    if "diffae" in result:
        d = result["diffae"]
        print(f"| DiffAE {d['config']} ({d['image_size']} px, {d['parameters'] / 1e6:.2f} M params, {d['device']}): "
              f"pipeline time / encoder+UNet floor | {d['pipeline_over_floor']:.3f} | <= 1.15 |")
        print(f"| DiffAE {d['config']} images/s ({d['num_inference_steps']} steps, batch {d['batch_size']}) | "
              f"{d['images_per_s']:.3f} | |")
    if "unlearning" in result:
        rows = result["unlearning"]["table"]["rows"]
        ref = rows["retrain"]
        for name, target in (("first_order", ">= 50x"), ("second_order", ">= 10x"), ("finetune", "")):
            if name in rows:
                row = rows[name]
                print(f"| {name}: speed-up vs retrain | {row['speedup_vs_retrain']:.1f}x | {target} |")
                print(f"| {name}: test accuracy - retrain's | {row['test_accuracy'] - ref['test_accuracy']:+.4f} | "
                      f"within 0.01 |")
    if "faces" in result:
        f = result["faces"]
        for name in ("astronaut_512px", "astronaut_2048px", "astronaut_2048px_min_face_160"):
            r = f[name]
            print(f"| faces, {name}: detect + align + paste / protect one face ({f['num_inference_steps']} steps) | "
                  f"{100 * r['overhead_over_protect']:.1f} % ({r['overhead_s'] * 1e3:.0f} ms / "
                  f"{f['protect_one_face_s'] * 1e3:.0f} ms) | <= 10 % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
