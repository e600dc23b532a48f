"""Identity leakage: top-1 re-identification and chance level on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from dpdiffusion.evaluation.identity import chance_top1, identity_leakage, reidentification_top1


def test_reidentification_top1_known_cases():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    gids = np.array([0, 1, 2])
    probes = np.array([[0.9, 0.05], [0.1, 2.0], [1.0, 1.1], [1.0, 0.0]])
    pids = np.array([0, 1, 2, 2])
    assert reidentification_top1(probes, pids, gallery, gids) == 0.75
    assert reidentification_top1(probes, pids, gallery, gids, metric="euclidean") == 0.75
    with pytest.raises(ValueError, match="metric"):
        reidentification_top1(probes, pids, gallery, gids, metric="l1")


def test_exclude_same_index_forces_another_photo():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ids = np.array([0, 0, 1, 1])
    assert reidentification_top1(feats, ids, feats, ids) == 1.0  # trivially itself
    assert reidentification_top1(feats, ids, feats, ids, exclude_same_index=True) == 1.0  # the other photo
    swapped = np.array([0, 1, 0, 1])
    assert reidentification_top1(feats, swapped, feats, swapped, exclude_same_index=True) == 0.0


def test_chance_top1_closed_form():
    ids = np.repeat(np.arange(10), 5)  # 10 people x 5 photos
    assert chance_top1(ids, ids) == pytest.approx(0.1)
    assert chance_top1(ids, ids, exclude_same_index=True) == pytest.approx(4 / 49)
    out = identity_leakage(np.eye(50), np.eye(50), ids)
    assert out["chance"] == pytest.approx(4 / 49)
