"""The small transformers ResNet classifier: construction, save/load, deterministic Accelerate training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification, ResNetForImageClassification

from dpdiffusion.training.classifier import (
    build_classifier,
    per_example_loss,
    predict_logits,
    to_pixel_values,
    train_classifier,
)

TINY = dict(hidden_sizes=(4, 8), embedding_size=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread, and two threads stall badly on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n=64, size=16, seed=0, single_label=False):
    """Labels read off the images: mean red > mean blue, and top half brighter than bottom half."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    x = images.float()
    y0 = x[..., 0].mean((1, 2)) > x[..., 2].mean((1, 2))
    y1 = x[:, : size // 2].mean((1, 2, 3)) > x[:, size // 2 :].mean((1, 2, 3))
    if single_label:
        return images, (2 * y0.long() + y1.long())
    return images, torch.stack([y0, y1], dim=1).float()


def test_build_classifier_config_and_shapes():
    model = build_classifier(3, image_size=32, seed=0, label_names=["a", "b", "c"])
    assert isinstance(model, ResNetForImageClassification) and not model.training
    assert model.config.num_labels == 3 and model.config.problem_type == "multi_label_classification"
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert sum(p.numel() for p in model.parameters()) < 100_000
    out = model(pixel_values=torch.zeros(2, 3, 32, 32), output_hidden_states=True)
    assert out.logits.shape == (2, 3) and out.hidden_states[-1].shape == (2, 64, 2, 2)
    big = build_classifier(2, image_size=64, seed=0)
    assert big(pixel_values=torch.zeros(1, 3, 64, 64), output_hidden_states=True).hidden_states[-1].shape[-1] == 2


def test_build_classifier_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = build_classifier(2, seed=0, **TINY), build_classifier(2, seed=0, **TINY)
    c = build_classifier(2, seed=1, **TINY)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_labels=0), "num_labels"), (dict(num_labels=2, image_size=8), "image_size"),
     (dict(num_labels=2, problem_type="ranking"), "problem_type"), (dict(num_labels=2, label_names=["a"]), "label_names")],
)
def test_build_classifier_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_classifier(**kwargs)


def test_to_pixel_values_layouts():
    hwc = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    hwc[..., 0] = 255
    x = to_pixel_values(hwc)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert float(x[:, 0].min()) == 1.0 and float(x[:, 1].max()) == -1.0
    assert torch.equal(to_pixel_values(torch.from_numpy(hwc).permute(0, 3, 1, 2)), x)
    f = torch.rand(2, 3, 8, 8)
    assert torch.equal(to_pixel_values(f), f)
    with pytest.raises(ValueError, match="images"):
        to_pixel_values(np.zeros((8, 8, 3), dtype=np.uint8))


def test_train_classifier_is_deterministic_and_learns():
    images, labels = _data()
    kw = dict(epochs=3, batch_size=16, lr=1e-2, seed=0, progress=False)
    init = build_classifier(2, image_size=16, seed=0, **TINY)
    loss0 = per_example_loss(predict_logits(init, images), labels, "multi_label_classification").mean()
    a = train_classifier(build_classifier(2, image_size=16, seed=0, **TINY), images, labels, **kw)
    b = train_classifier(build_classifier(2, image_size=16, seed=0, **TINY), images, labels, **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    loss = per_example_loss(predict_logits(a, images), labels, "multi_label_classification").mean()
    assert loss < loss0 and not a.training
    c = train_classifier(build_classifier(2, image_size=16, seed=0, **TINY), images, labels, **{**kw, "seed": 1})
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_train_single_label():
    images, labels = _data(single_label=True)
    model = build_classifier(4, image_size=16, problem_type="single_label_classification", seed=0, **TINY)
    model = train_classifier(model, images.numpy(), labels.numpy(), epochs=1, batch_size=32, lr=1e-2, seed=0,
                             progress=False)
    assert predict_logits(model, images).shape == (64, 4)


def test_warmup_ratio_holds_the_first_steps_at_a_linear_ramp():
    """Against a hand-run AdamW: 2 full-batch steps with warmup_ratio=0.5 are one step at lr 0 (the moments still
    see its gradient), then one at the full lr (the cosine is at its start); without warm-up the result differs."""
    images, labels = _data(n=16)
    lr, wd = 1e-2, 1e-4
    kw = dict(epochs=2, batch_size=16, lr=lr, seed=0, weight_decay=wd, progress=False)
    warm = train_classifier(build_classifier(2, image_size=16, seed=0, **TINY), images, labels, warmup_ratio=0.5, **kw)
    cold = train_classifier(build_classifier(2, image_size=16, seed=0, **TINY), images, labels, **kw)
    oracle = build_classifier(2, image_size=16, seed=0, **TINY).train()
    opt = torch.optim.AdamW(oracle.parameters(), lr=lr, weight_decay=wd)
    x = to_pixel_values(images)
    for step_lr in (0.0, lr):
        opt.param_groups[0]["lr"] = step_lr
        loss = torch.nn.functional.binary_cross_entropy_with_logits(oracle(pixel_values=x).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, p), q, c in zip(warm.named_parameters(), oracle.parameters(), cold.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert any(not torch.allclose(p, c, atol=1e-5) for p, c in zip(warm.parameters(), cold.parameters()))


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"),
     (dict(warmup_ratio=1.0), "warmup_ratio"), (dict(warmup_ratio=-0.1), "warmup_ratio")],
)
def test_train_classifier_bad_arguments(kwargs, match):
    images, labels = _data(n=8)
    kw = dict(epochs=1, batch_size=4, lr=1e-3, seed=0, progress=False) | kwargs
    with pytest.raises(ValueError, match=match):
        train_classifier(build_classifier(2, image_size=16, **TINY), images, labels, **kw)
    with pytest.raises(ValueError, match="same length"):
        train_classifier(build_classifier(2, image_size=16, **TINY), images, labels[:5], epochs=1, batch_size=4,
                         lr=1e-3, seed=0, progress=False)


def test_save_pretrained_round_trip(tmp_path):
    model = build_classifier(2, image_size=16, seed=3, label_names=["smiling", "hat"], **TINY)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, ResNetForImageClassification)
    assert loaded.config.id2label == {0: "smiling", 1: "hat"}
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(pixel_values=x).logits, model(pixel_values=x).logits)
