"""One place that builds the `accelerate.Accelerator` of dpdiffusion's jobs (protect, unlearn, training)."""

from __future__ import annotations

import os


def make_accelerator(**kwargs):
    """An `accelerate.Accelerator` that also runs data-parallel on machines without CUDA.

    Accelerate only forms a multi-process CPU group (gloo) when the `Accelerator` is built with ``cpu=True``; its
    ``launch --cpu`` flag, however, starts a single process. So on a CPU-only machine launch with
    ``accelerate launch --multi_gpu --num_processes N`` (accelerate's torchrun launcher) and this function sets
    ``cpu=True`` whenever several processes were launched and CUDA is absent. Single-process runs and GPU runs get
    accelerate's defaults.
    """
    import torch
    from accelerate import Accelerator

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)
