"""Where the Space runs: the torch device, ZeroGPU, and persistent storage.

On Hugging Face Spaces the same files run on CPU hardware, on a dedicated GPU and on ZeroGPU (a GPU lent per
request). `select_device` picks CUDA when torch sees a GPU (or on ZeroGPU, whose GPU only appears inside a
``spaces.GPU`` call), else the CPU; ``$DPDIFFUSION_SPACE_DEVICE`` overrides it. `gpu_task` wraps the handlers that
generate images with ``spaces.GPU`` on ZeroGPU hardware when the ``spaces`` package is installed (the Space builder
installs it there), and leaves them unchanged everywhere else. `persistent_storage` is ``/data`` when the Space has
persistent storage attached (a writable ``/data``), so that the ledger survives restarts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional

logger = logging.getLogger(__name__)

ENV_DEVICE = "DPDIFFUSION_SPACE_DEVICE"
ENV_ZERO_GPU = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU hardware
ENV_GPU_DURATION = "DPDIFFUSION_SPACE_GPU_SECONDS"
PERSISTENT_STORAGE = Path("/data")  # where Hugging Face mounts a Space's persistent storage
DEFAULT_GPU_SECONDS = 60

__all__ = ["ENV_DEVICE", "ENV_ZERO_GPU", "PERSISTENT_STORAGE", "gpu_task", "on_zero_gpu", "persistent_storage",
           "select_device"]


def on_zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU hardware (``$SPACES_ZERO_GPU`` is set to a true value)."""
    return os.environ.get(ENV_ZERO_GPU, "").strip().lower() in ("1", "true", "yes")


def select_device(requested: Optional[str] = None) -> str:
    """The torch device the Space's pipeline runs on.

    Args:
        requested (`str`, *optional*): ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; default ``$DPDIFFUSION_SPACE_DEVICE``,
            else ``"cuda"`` when torch sees a GPU or the Space runs on ZeroGPU, else ``"cpu"``.

    Returns:
        `str`: the device name.

    Raises:
        ValueError: a device that is neither CPU nor CUDA, or CUDA asked for where torch sees no GPU (outside
            ZeroGPU).
    """
    import torch

    name = "argument device" if requested else ENV_DEVICE
    requested = requested or os.environ.get(ENV_DEVICE) or None
    if requested is None:
        return "cuda" if on_zero_gpu() or torch.cuda.is_available() else "cpu"
    device = str(requested).strip().lower()
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    if device.startswith("cuda") and not on_zero_gpu() and not torch.cuda.is_available():
        raise ValueError(f"{name}={requested!r} but torch sees no CUDA device (torch {torch.__version__})")
    return device


def gpu_task(fn: Callable, *, duration: Optional[int] = None) -> Callable:
    """``spaces.GPU(duration=...)(fn)`` on ZeroGPU hardware with the ``spaces`` package installed, else ``fn``.

    Args:
        fn (`Callable`): a Gradio event handler that generates images.
        duration (`int`, *optional*): the longest GPU time a call may take, in seconds
            (``$DPDIFFUSION_SPACE_GPU_SECONDS`` or 60).
    """
    if not on_zero_gpu():
        return fn
    try:
        import spaces
    except ImportError:
        logger.warning("%s is set but the `spaces` package is not installed: handlers run without spaces.GPU",
                       ENV_ZERO_GPU)
        return fn
    seconds = int(duration or os.environ.get(ENV_GPU_DURATION) or DEFAULT_GPU_SECONDS)
    return spaces.GPU(duration=seconds)(fn)


def persistent_storage() -> Optional[Path]:
    """``/data`` when it exists and is writable (a Space with persistent storage), else `None`."""
    if PERSISTENT_STORAGE.is_dir() and os.access(PERSISTENT_STORAGE, os.W_OK):
        return PERSISTENT_STORAGE
    return None
