"""The reversed-correlation split and the gap-restored comparison: exact counterfactual rendering, known values,
tiny models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dpdiffusion.data.synthfaces import render_faces, sample_face_params
from dpdiffusion.evaluation.plots import plot_gap_restored
from dpdiffusion.evaluation.unlearning_shift import (
    compare_on_reversed_split,
    gap_restored,
    label_accuracy,
    retrain_agreement_floor,
    reversed_correlation_split,
)
from dpdiffusion.training.classifier import build_classifier

TINY = dict(image_size=16, hidden_sizes=(4, 8), embedding_size=4)
NAMES = ["smiling", "eyeglasses", "wearing_hat"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConstantClassifier(torch.nn.Module):
    """Predicts the same logits for every image (multi-label)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.config = SimpleNamespace(problem_type="multi_label_classification")

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.logits.expand(len(pixel_values), -1))


def test_reversed_split_is_an_exact_counterfactual_of_a_plain_draw():
    images, labels, params = reversed_correlation_split(40, image_size=16, seed=5)
    plain = sample_face_params(40, seed=5)
    assert np.array_equal(params["dark_skin"], ~plain["smiling"])  # the shortcut is wrong on every face
    for k, v in plain.items():  # every other parameter is the plain draw's
        if k != "dark_skin":
            assert np.array_equal(params[k], v), k
    assert np.array_equal(labels, np.stack([plain[a] for a in NAMES], 1).astype(np.float32))
    same = plain["dark_skin"] == params["dark_skin"]
    assert 0 < same.sum() < 40
    plain_images = render_faces(plain, image_size=16)
    assert np.array_equal(images[same], plain_images[same])  # untouched faces render identically
    assert all(not np.array_equal(a, b) for a, b in zip(images[~same], plain_images[~same]))
    assert images.shape == (40, 16, 16, 3) and images.dtype == np.uint8


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_images=1), "num_images must be an integer >= 2"), (dict(num_images=4, spurious="smiling"),
     "spurious and label must differ"), (dict(num_images=4, label="age"), "label must be one of"),
     (dict(num_images=4, label_names=("smiling", "beard")), "label_names must be one of")],
)
def test_reversed_split_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reversed_correlation_split(**kwargs)


def test_gap_restored_known_values():
    assert gap_restored(0.95, original=0.75, retrained=0.95) == pytest.approx(1.0)
    assert gap_restored(0.75, original=0.75, retrained=0.95) == 0.0
    assert gap_restored(0.8, original=0.75, retrained=0.95) == pytest.approx(0.25)
    assert gap_restored(0.7, original=0.75, retrained=0.95) == pytest.approx(-0.25)
    assert math.isnan(gap_restored(0.9, original=0.8, retrained=0.8))


def test_label_accuracy_of_a_constant_classifier_is_the_label_rate():
    _, labels, _ = reversed_correlation_split(50, image_size=16, seed=1)
    images = np.zeros((50, 16, 16, 3), np.uint8)
    always_smiling = ConstantClassifier([3.0, -3.0, -3.0])
    assert label_accuracy(always_smiling, images, labels, column=0) == pytest.approx(labels[:, 0].mean())
    assert label_accuracy(always_smiling, images, labels, column=1) == pytest.approx(1 - labels[:, 1].mean())
    with pytest.raises(ValueError, match=r"column must be in \[0, 2\]"):
        label_accuracy(always_smiling, images, labels, column=3)


def test_agreement_floor_of_identical_and_opposite_models():
    images = np.zeros((10, 16, 16, 3), np.uint8)
    a, b = ConstantClassifier([1.0, 1.0, 1.0]), ConstantClassifier([-1.0, -1.0, 1.0])
    assert retrain_agreement_floor([a, a], images) == 1.0
    assert retrain_agreement_floor([a, b], images) == pytest.approx(1 / 3)
    assert retrain_agreement_floor([a, a, b], images) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    with pytest.raises(ValueError, match="retrained must hold >= 2 models"):
        retrain_agreement_floor([a], images)


def test_compare_on_reversed_split_rows_and_reference(tmp_path):
    rev_x, rev_y, _ = reversed_correlation_split(24, image_size=16, seed=2)
    clean_x, clean_y, _ = reversed_correlation_split(24, spurious="long_hair", image_size=16, seed=3)
    models = [build_classifier(3, seed=s, label_names=NAMES, **TINY).eval() for s in range(3)]
    original, r0, r1 = models
    r0_result = SimpleNamespace(model=r0, seconds=10.0)
    fast = SimpleNamespace(model=r1, seconds=0.5)  # "a method" that happens to land on the second retrained model
    table = compare_on_reversed_split(
        {"fast": fast}, [r0_result, r1], original=original, clean=(clean_x, clean_y), reversed_split=(rev_x, rev_y),
        column=0, members=(clean_x[:8], clean_y[:8]), non_members=(rev_x[:8], rev_y[:8]),
    )
    rows, ref = table["rows"], table["reference"]
    assert list(rows) == ["original", "fast", "retrain"]
    accs = [label_accuracy(m, rev_x, rev_y, column=0) for m in (r0, r1)]
    assert ref["reversed_accuracy"] == pytest.approx(np.mean(accs)) and ref["retrain_seeds"] == 2
    assert rows["original"]["reversed_accuracy"] == label_accuracy(original, rev_x, rev_y, column=0)
    # clean accuracy of every retraining seed (all outputs: predictions > 0 against the labels, counted here)
    clean = [float(((m(pixel_values=torch.from_numpy(clean_x).permute(0, 3, 1, 2).float() / 127.5 - 1).logits > 0)
                    == torch.from_numpy(clean_y).bool()).float().mean()) for m in (r0, r1)]
    assert ref["clean_accuracies"] == pytest.approx(clean) and ref["clean_accuracy"] == pytest.approx(np.mean(clean))
    # the retrain row IS the reference: the seeds' means, 100 % of the gap by definition
    assert rows["retrain"]["clean_accuracy"] == pytest.approx(ref["clean_accuracy"])
    assert rows["retrain"]["reversed_accuracy"] == pytest.approx(ref["reversed_accuracy"])
    assert rows["retrain"]["mia_auc"] == pytest.approx(ref["mia_auc"])
    assert len(ref["gap_restored_seeds"]) == 2
    if np.mean(accs) != rows["original"]["reversed_accuracy"]:
        assert rows["original"]["gap_restored"] == 0.0
        assert rows["retrain"]["gap_restored"] == 1.0
        # the seeds straddle their own mean: their shares of the gap (the spread) average to exactly 1, and the
        # method that landed on the second seed restores that seed's share
        assert np.mean(ref["gap_restored_seeds"]) == pytest.approx(1.0)
        assert rows["fast"]["gap_restored"] == pytest.approx(ref["gap_restored_seeds"][1])
    else:
        assert math.isnan(rows["retrain"]["gap_restored"]) and all(map(math.isnan, ref["gap_restored_seeds"]))
    assert rows["retrain"]["speedup_vs_retrain"] == 1.0 and rows["fast"]["speedup_vs_retrain"] == 20.0
    assert rows["fast"]["gap_restored_per_second"] == pytest.approx(rows["fast"]["gap_restored"] / 0.5)
    # the retrain row's agreement is the floor (the seeds with each other)
    assert rows["retrain"]["agreement_with_retrained"] == pytest.approx(ref["agreement_floor"])
    assert rows["fast"]["agreement_with_retrained"] == pytest.approx((1 + ref["agreement_floor"]) / 2)
    assert rows["original"]["seconds"] is None and rows["original"]["gap_restored_per_second"] is None
    png = plot_gap_restored(table, tmp_path / "gap.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="retrained must hold >= 2 models"):
        compare_on_reversed_split({}, [r0], original=original, clean=(clean_x, clean_y),
                                  reversed_split=(rev_x, rev_y), column=0, members=(clean_x, clean_y),
                                  non_members=(rev_x, rev_y))
