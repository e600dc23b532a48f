r"""Identity leakage: re-identification of a protected image against a gallery of clean images.

Each protected probe image is matched to its nearest gallery image (cosine similarity of features); top-1 accuracy is
the rate at which that image shows the same person. In the experiments the gallery is the clean test set *without
the probe's own original* (``exclude_same_index=True``), so a hit means another photo of the same person was found.
The features are the semantic latent of the evaluated pipeline's encoder, which is trained to carry identity; any
feature function can be passed. ``chance_top1`` is the accuracy of a random match.

What it says: ``scope="attributes"`` keeps the residual (identity) by design, so re-identification of protected
images is expected to stay close to that of clean images; that is what the method does *not* protect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["reidentification_top1", "chance_top1", "identity_leakage"]


def _as2d(x: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    return t.reshape(len(t), -1)


def reidentification_top1(probe_features: Any, probe_ids: Any, gallery_features: Any, gallery_ids: Any, *,
                          exclude_same_index: bool = False, metric: str = "cosine") -> float:
    """Top-1 re-identification accuracy.

    Args:
        probe_features (`(P, D)`), probe_ids (`(P,)`): probes and their true identities.
        gallery_features (`(G, D)`), gallery_ids (`(G,)`): the gallery.
        exclude_same_index (`bool`): probe i is never matched to gallery item i (use when the gallery holds the
            probes' own originals, P = G).
        metric (`str`): ``"cosine"`` or ``"euclidean"``.

    Returns:
        `float`: fraction of probes whose nearest gallery item has the same identity.

    Example:
    ```py
    >>> reidentification_top1([[1, 0], [0, 1]], [0, 1], [[0.9, 0.1], [0.2, 0.8]], [0, 1])
    1.0

    ```
    """
    p, g = _as2d(probe_features), _as2d(gallery_features)
    pid = np.asarray(probe_ids).reshape(-1)
    gid = np.asarray(gallery_ids).reshape(-1)
    if len(p) != len(pid) or len(g) != len(gid) or p.shape[1] != g.shape[1]:
        raise ValueError("features and ids must align, and probe and gallery features must have the same width")
    if metric == "cosine":
        sim = torch.nn.functional.normalize(p, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    elif metric == "euclidean":
        sim = -torch.cdist(p, g)
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got metric={metric!r}")
    if exclude_same_index:
        if len(p) != len(g):
            raise ValueError("exclude_same_index needs as many probes as gallery items")
        sim.fill_diagonal_(-float("inf"))
    best = sim.argmax(1).numpy()
    return float((gid[best] == pid).mean())


def chance_top1(probe_ids: Any, gallery_ids: Any, *, exclude_same_index: bool = False) -> float:
    """Expected top-1 accuracy of a uniformly random gallery match."""
    pid = np.asarray(probe_ids).reshape(-1)
    gid = np.asarray(gallery_ids).reshape(-1)
    same = (pid[:, None] == gid[None, :]).astype(np.float64)
    size = np.full(len(pid), float(len(gid)))
    if exclude_same_index:
        same[np.arange(len(pid)), np.arange(len(pid))] = 0.0
        size -= 1
    return float((same.sum(1) / size).mean())


def identity_leakage(probe_features: Any, gallery_features: Any, identities: Any) -> dict:
    """Top-1 re-identification of protected probes against the clean gallery of the same images (own original
    excluded), with chance level. ``probe_features`` and ``gallery_features`` are aligned ``(N, D)``."""
    return {"top1": reidentification_top1(probe_features, identities, gallery_features, identities,
                                          exclude_same_index=True),
            "chance": chance_top1(identities, identities, exclude_same_index=True)}
