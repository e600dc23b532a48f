"""Utility: accuracies, the report against clean training, a tiny classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpdiffusion.evaluation.utility import (attribute_accuracies, attribute_utility, predict_labels,
                                            train_attribute_classifier, utility_report)


def test_attribute_accuracies_and_report():
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    p = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    acc = attribute_accuracies(p, y, ["a", "b"])
    assert acc == {"a": 0.75, "b": 0.75}
    rep = utility_report(acc, {"a": 1.0, "b": 0.8}, ["a", "b"])
    assert rep["per_attribute"]["b"]["ratio"] == pytest.approx(0.75 / 0.8)
    assert rep["min_ratio"] == pytest.approx(0.75)
    assert rep["mean_accuracy"] == pytest.approx(0.75) and rep["mean_clean_accuracy"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="must both be"):
        attribute_accuracies(p, y, ["a"])


def _toy(n, seed):
    """Label 0: a bright left half; label 1: a bright top half."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 2, generator=g) > 0.5).float()
    x = 0.2 * torch.rand(n, 3, 16, 16, generator=g)
    x[:, :, :, :8] += 0.7 * y[:, 0, None, None, None]
    x[:, :, :8, :] += 0.1 + 0.6 * y[:, 1, None, None, None]
    return x.clamp(0, 1), y


def test_classifier_learns_and_utility_compares_with_clean():
    x, y = _toy(96, 0)
    xt, yt = _toy(64, 1)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    rep = attribute_utility(noisy, y, xt, yt, names=["left", "top"], attributes=["left", "top"], train_clean=x,
                            epochs=3)
    assert rep["per_attribute"]["left"]["clean_accuracy"] > 0.8
    assert 0 < rep["min_ratio"] <= 1.5
    model = train_attribute_classifier(x[:8], y[:8], names=["left", "top"], epochs=1)
    assert predict_labels(model, xt).shape == (64, 2)


def test_train_attribute_classifier_checks_shapes():
    with pytest.raises(ValueError, match="columns"):
        train_attribute_classifier(torch.rand(4, 3, 16, 16), torch.zeros(4, 2), names=["a"], epochs=1)


def test_small_images_are_enlarged_for_the_classifier_and_its_features():
    """At <= 32 px the evaluation classifier sees its input enlarged 2x (its stem quarters the resolution); the
    factor travels in the config and is applied by predict_labels and the FD features alike."""
    from dpdiffusion.evaluation.quality import classifier_features
    from dpdiffusion.evaluation.utility import default_enlarge, enlarge_for

    assert default_enlarge(16) == default_enlarge(32) == 2 and default_enlarge(64) == 1
    x, y = _toy(16, 0)
    model = train_attribute_classifier(x, y, names=["left", "top"], epochs=1)
    assert model.config.input_enlarge == 2
    big = enlarge_for(model, x)
    assert big.shape == (16, 3, 32, 32) and torch.equal(big[:, :, ::2, ::2], x)
    logits_seen = (model(pixel_values=big * 2 - 1).logits > 0).long()
    assert torch.equal(predict_labels(model, x), logits_seen)
    assert classifier_features(model, x * 2 - 1).shape[0] == 16
    plain = train_attribute_classifier(x, y, names=["left", "top"], epochs=1, enlarge=1)
    assert plain.config.input_enlarge == 1 and torch.equal(enlarge_for(plain, x), x)
    with pytest.raises(ValueError, match="enlarge"):
        train_attribute_classifier(x, y, names=["left", "top"], epochs=1, enlarge=0)


def test_evaluate_autoencoder_reports_agreement_and_the_judges_accuracy(dummy_pipe):
    from dpdiffusion.evaluation.default_model import evaluate_autoencoder
    from dpdiffusion.evaluation.default_model import train_attribute_classifier as train_judge

    size = dummy_pipe.image_size
    judge = train_judge(size, num_images=64, epochs=1, progress=False)
    assert set(judge[1]) == {"dark_skin", "long_hair", "smiling", "eyeglasses", "wearing_hat"}
    out = evaluate_autoencoder(dummy_pipe, num_images=20, num_inference_steps=2, batch_size=10, progress=False,
                               classifier=judge)
    for key in ("attribute_agreement", "judge_accuracy_on_originals", "judge_accuracy_on_reconstructions",
                "probe_accuracy"):
        assert set(out[key]) == set(judge[1]) and all(0 <= v <= 1 for v in out[key].values()), key
    assert out["independent_classifier_accuracy"] == judge[1]
    assert out["all_targets_met"] in (True, False) and out["num_images"] == 20
    met = (out["inversion_psnr_db"] >= 30.0 and out["random_code_psnr_db"] >= 20.0
           and min(out["attribute_agreement"].values()) >= 0.95 and min(out["probe_accuracy"].values()) >= 0.95)
    assert out["all_targets_met"] == met == all(out["targets_met"].values())
    assert out["attribute_agreement_by_steps"] == {"2": out["attribute_agreement"]}
    assert out["random_code_psnr_db_by_steps"] == {"2": out["random_code_psnr_db"]}
    assert 0 < out["random_code_psnr_db"] < out["inversion_psnr_db"] + 60
    assert out["guidance_scale"] == dummy_pipe._guidance(None, "random")
    with pytest.raises(ValueError, match="num_images"):
        evaluate_autoencoder(dummy_pipe, num_images=5, classifier=judge)
    # further step counts: judged on the same codes; the main count's figures are unchanged by them
    more = evaluate_autoencoder(dummy_pipe, num_images=20, num_inference_steps=2, batch_size=10, progress=False,
                                classifier=judge, agreement_steps=[3, 1, 2])
    assert list(more["attribute_agreement_by_steps"]) == ["1", "2", "3"]
    assert more["attribute_agreement_by_steps"]["2"] == more["attribute_agreement"] == out["attribute_agreement"]
    assert more["inversion_psnr_db"] == out["inversion_psnr_db"]
    assert more["random_code_psnr_db_by_steps"]["2"] == out["random_code_psnr_db"]
    assert set(more["decode_cpu_seconds_per_image_by_steps"]) == {"1", "2", "3"}
    with pytest.raises(ValueError, match="agreement_steps"):
        evaluate_autoencoder(dummy_pipe, num_images=20, classifier=judge, agreement_steps=[0])


def test_flip_colour_augment_is_seeded_bounded_and_label_preserving():
    from dpdiffusion.evaluation.utility import flip_colour_augment

    x = torch.rand(64, 3, 8, 8) * 2 - 1
    a = flip_colour_augment(x, torch.Generator().manual_seed(3))
    b = flip_colour_augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x)
    # a batch of one constant grey image: flips change nothing, jitter moves its brightness within +-30 %
    grey = torch.zeros(256, 3, 4, 4)
    g = (flip_colour_augment(grey, torch.Generator().manual_seed(0)) + 1) / 2
    assert 0.5 * 0.7 - 1e-6 <= float(g.min()) and float(g.max()) <= 0.5 * 1.3 + 1e-6
    assert float(g.std()) > 0.02  # per-image factors differ
    # the horizontal flip happens to about half the images, and only a flip
    ramp = torch.linspace(-1, 1, 8).expand(400, 3, 8, 8).contiguous()
    out = flip_colour_augment(ramp, torch.Generator().manual_seed(1), strength=0.0)
    flipped = torch.isclose(out, ramp.flip(-1), atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, ramp, atol=1e-6).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250
    with pytest.raises(ValueError, match="B, 3, H, W"):
        flip_colour_augment(torch.rand(3, 8, 8), torch.Generator())


def test_augmented_classifier_still_learns_is_seeded_and_records_its_recipe():
    x, y = _toy(256, 0)
    xt, yt = _toy(128, 1)
    plain = train_attribute_classifier(x, y, names=["left", "top"], epochs=4, enlarge=1)
    aug = train_attribute_classifier(x, y, names=["left", "top"], epochs=4, enlarge=1, augment=True)
    assert plain.config.train_augment == "none" and aug.config.train_augment == "flip_colour"
    acc = attribute_accuracies(predict_labels(aug, xt), yt.numpy(), ["left", "top"])
    assert min(acc.values()) > 0.8
    # training is seeded: the same recipe gives the same weights
    again = train_attribute_classifier(x, y, names=["left", "top"], epochs=4, enlarge=1, augment=True)
    assert all(torch.equal(p, q) for p, q in zip(aug.state_dict().values(), again.state_dict().values()))


def test_judge_is_saved_once_and_loaded_after(tmp_path, monkeypatch):
    from dpdiffusion.evaluation import default_model

    calls = []
    real = default_model.train_attribute_classifier

    def small(size, progress=True):
        calls.append(size)
        return real(size, num_images=64, epochs=1, progress=False)

    monkeypatch.setattr(default_model, "train_attribute_classifier", small)
    model, acc = default_model.load_or_train_judge(str(tmp_path / "judge"), 16)
    again, acc2 = default_model.load_or_train_judge(str(tmp_path / "judge"), 16)
    assert calls == [16] and acc2 == acc
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    from dpdiffusion.evaluation.utility import predict_labels

    assert torch.equal(predict_labels(model, x), predict_labels(again, x))
    with pytest.raises(ValueError, match="trained for 16 px inputs, not 24 px"):
        default_model.load_or_train_judge(str(tmp_path / "judge"), 24)
