"""Shared pieces of the paper sweep: the epsilon grids, default sizes, formatting and seeding helpers."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...models.steps import DEFAULT_NUM_INFERENCE_STEPS

PAPER_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
QUICK_EPSILONS = (1.0, math.inf)
AUDIT_EPSILONS = (0.5, 1.0, 4.0)

# Sizes of the full sweep (about 20 minutes on 2 CPU cores for the embedded 32 px default) and of --quick; DDIM steps:
# the entry points' default.
# Audit trials: 24,000 per world certify up to epsilon 8.09 (`max_certifiable_epsilon`), twice the largest of
# AUDIT_EPSILONS (trials_needed(8.0, delta=1e-5) = 21,997), so every latent and pixel audit can refute its claim.
# Decoded audits cost a decode per trial: 100 certify up to 2.57, so claims above 1.28 are audited at 1.28.
_DEFAULTS = {
    False: dict(num_train=1000, num_test=400, num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS, classifier_epochs=15,
                audit_trials=24000, audit_decoded_trials=100, audit_pairs=8),
    True: dict(num_train=400, num_test=200, num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS, classifier_epochs=12,
               audit_trials=24000, audit_decoded_trials=0, audit_pairs=4),
}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:g}"


def _seed_for(*parts) -> int:
    import zlib

    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def _fingerprint(pipe) -> str:
    """A short hash of the pipeline's weights and directions (names the on-disk cache of decoded images)."""
    import hashlib

    h = hashlib.sha1()
    for module in (pipe.unet, pipe.encoder, pipe.attribute_directions):
        for t in module.state_dict().values():
            h.update(t.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:10]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj



def _f(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


class _threads:
    """Run a block with ``n`` torch threads (restored after). The small classifiers train faster on one thread
    than on two contending ones; the UNet decoder keeps every thread."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(min(self.n, self.old))

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)

