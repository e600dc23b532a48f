"""Unlearning classifiers the project did not make: tiny real transformers models (ViT with SDPA attention,
ConvNeXt, ResNet) with their own image processors, single- and multi-label, built in-process."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from dpdiffusion.unlearning import HessianOperator, find_blocks, unlearn
from dpdiffusion.unlearning.core import FlatParameters, Objective, differentiable_attention
from dpdiffusion.unlearning.data import LabelSpec, default_image_processor, make_transform


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeAccelerator:
    device = torch.device("cpu")
    process_index, num_processes, is_main_process = 0, 1, True

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_vit(num_labels=2, attn="sdpa", problem_type="single_label_classification", names=("cat", "dog")):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    id2label = {i: n for i, n in enumerate(names)}
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=num_labels, id2label=id2label,
                       label2id={n: i for i, n in id2label.items()}, problem_type=problem_type,
                       attn_implementation=attn)
    model = ViTForImageClassification(config).eval()
    # non-default processor: 32 px (not 224), ImageNet statistics (not 0.5/0.5)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return model, processor


def tiny_convnext(num_labels=3):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    torch.manual_seed(0)
    names = ["smiling", "eyeglasses", "hat"][:num_labels]
    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels,
                            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                            problem_type="multi_label_classification")
    model = ConvNextForImageClassification(config).eval()
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, image_mean=IMAGENET_MEAN,
                                       image_std=IMAGENET_STD)
    return model, processor


def tiny_resnet(num_labels=2):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], layer_type="basic",
                          num_labels=num_labels)  # no problem_type, default LABEL_i names
    return ResNetForImageClassification(config).eval(), default_image_processor(32)


def pil_images(n, seed, size=40):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_processor_is_applied_exactly():
    """Unlearning on PIL images through the processor == unlearning on the processor's own pixel values."""
    model, processor = tiny_vit()
    orig, rev = pil_images(6, 0), pil_images(6, 1)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    px = lambda ims: processor(images=ims, return_tensors="pt")["pixel_values"]  # noqa: E731
    assert px(orig).shape == (6, 3, 32, 32)
    a = unlearn(model, (orig, y), (rev, y), image_processor=processor, tau=1e-2, progress=False)
    b = unlearn(model, (px(orig), y), (px(rev), y), tau=1e-2, progress=False)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=n)
    # the plain [-1, 1] scaling would give another update: the processor really was used
    c = unlearn(model, (np.stack([np.asarray(i.resize((32, 32))) for i in orig]), y),
                (np.stack([np.asarray(i.resize((32, 32))) for i in rev]), y), tau=1e-2, progress=False)
    assert any(not torch.allclose(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))


def test_hvp_on_sdpa_vit_matches_eager():
    """Forward-over-reverse products work on SDPA attention (math backend) and equal the eager model's."""
    sdpa, _ = tiny_vit(attn="sdpa")
    eager, _ = tiny_vit(attn="eager")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    out = []
    for model in (sdpa, eager):
        names = [n for n, _ in model.named_parameters()]
        flat = FlatParameters(model, names)
        for p in model.parameters():
            p.requires_grad_(False)
        obj = Objective(model, flat, None, FakeAccelerator())
        theta = flat.flatten(model)
        v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(0))
        with differentiable_attention(model):
            for curvature in ("hessian", "gauss_newton"):
                out.append(HessianOperator(obj, theta, x, y, torch.arange(4), curvature=curvature)(v))
    torch.testing.assert_close(out[0], out[2], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out[1], out[3], rtol=1e-4, atol=1e-6)
    assert sdpa.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("method", ["first_order", "second_order"])
def test_first_and_second_order_on_sdpa_vit(method):
    model, processor = tiny_vit()
    orig, rev, rest = pil_images(8, 0), pil_images(8, 1), pil_images(8, 2)
    y = torch.tensor([0, 1] * 4)
    train = (rev + rest, torch.cat([y, y]))
    r = unlearn(model, (orig, y), (rev, y), method=method, image_processor=processor, train_set=train,
                hessian_samples=8, cg_iters=3, power_iters=2, batch_size=4, progress=False)
    assert r.extra["update_norm"] > 0 and np.isfinite(r.extra["update_norm"])
    assert r.model.config._attn_implementation == "sdpa"
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(r.model.parameters(), model.parameters()))
    assert moved > 0


def test_last_k_blocks_on_vit_names_the_subset():
    model, processor = tiny_vit()
    orig, rev = pil_images(4, 0), pil_images(4, 1)
    y = torch.tensor([0, 1, 0, 1])
    r = unlearn(model, (orig, y), (rev, y), image_processor=processor, tau=1e-2, last_k_blocks=1, progress=False)
    blocks = find_blocks(model)  # vit.layers.{i} (transformers 5) or vit.encoder.layer.{i}
    assert len(blocks) == 2 and r.extra["updated_modules"] == f"{blocks[1]}, vit.layernorm, classifier"
    p0 = dict(model.named_parameters())
    for name, p in r.model.named_parameters():
        if name.startswith(("vit.embeddings", blocks[0] + ".")):
            assert torch.equal(p, p0[name]), name


def _dataset(images, table):
    import datasets

    return datasets.Dataset.from_dict({"image": images, **table}).cast_column("image", datasets.Image())


def test_single_label_by_name_or_id_from_a_dataset():
    model, processor = tiny_vit()
    orig, rev = pil_images(6, 0), pil_images(6, 1)
    names = ["cat", "dog", "dog", "cat", "dog", "cat"]
    ids = [model.config.label2id[n] for n in names]
    kw = dict(image_processor=processor, label_column="label", tau=1e-2, progress=False, batch_size=4)
    a = unlearn(model, _dataset(orig, {"label": names}), _dataset(rev, {"label": names}), **kw)
    b = unlearn(model, _dataset(orig, {"label": ids}), _dataset(rev, {"label": ids}), **kw)
    c = unlearn(model, (orig, torch.tensor(ids)), (rev, torch.tensor(ids)), image_processor=processor, tau=1e-2,
                progress=False)
    for p, q, s in zip(a.model.parameters(), b.model.parameters(), c.model.parameters()):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(p, s)
    with pytest.raises(ValueError, match="'label' holds values that are neither.*label names.*1 distinct") as info:
        unlearn(model, _dataset(orig, {"label": ["bird"] * 6}), _dataset(rev, {"label": ["bird"] * 6}), **kw)
    assert "bird" not in str(info.value)  # a cell's value is never shown (a column may hold personal data)
    with pytest.raises(ValueError, match="outside") as info:
        unlearn(model, _dataset(orig, {"label": [5] * 6}), _dataset(rev, {"label": [5] * 6}), **kw)
    assert "5" not in str(info.value)


def test_multi_label_columns_matched_by_id2label_name():
    model, processor = tiny_convnext()
    orig, rev = pil_images(5, 0), pil_images(5, 1)
    rng = np.random.default_rng(0)
    table = {c: rng.integers(0, 2, 5).tolist() for c in ("hat", "smiling", "eyeglasses")}
    kw = dict(image_processor=processor, tau=1e-2, progress=False)
    a = unlearn(model, _dataset(orig, table), _dataset(rev, table), label_columns=["hat", "smiling", "eyeglasses"],
                **kw)
    y = torch.tensor(np.stack([table["smiling"], table["eyeglasses"], table["hat"]], 1), dtype=torch.float32)
    b = unlearn(model, (orig, y), (rev, y), **kw)  # the output order of id2label
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q)
    assert a.extra["problem_type"] == "multi_label_classification"


def test_label_spec_errors_name_the_option():
    vit, _ = tiny_vit()
    with pytest.raises(ValueError, match="label_column .*--label-column"):
        LabelSpec.from_config(vit.config, label_columns=["cat"])
    convnext, _ = tiny_convnext()
    with pytest.raises(ValueError, match="multi-label.*--label-columns"):
        LabelSpec.from_config(convnext.config, label_column="smiling")
    with pytest.raises(ValueError, match="unknown: \\['beard'\\]"):
        LabelSpec.from_config(convnext.config, label_columns=["smiling", "eyeglasses", "beard"])
    with pytest.raises(ValueError, match="exactly one"):
        LabelSpec.from_config(convnext.config)
    resnet, _ = tiny_resnet()  # LABEL_0, LABEL_1, no problem_type
    spec = LabelSpec.from_config(resnet.config, label_columns=["a", "b"])
    assert spec.columns == ["a", "b"] and spec.problem_type == "multi_label_classification"
    assert LabelSpec.from_config(resnet.config, label_column="y").problem_type == "single_label_classification"


def test_label_errors_name_the_column_never_a_value():
    """The data owner's label columns may hold names or hometowns: an unusable column is reported by its name, the
    number of distinct values and their types, never a value (`unlearn --label-column name`, `--label-columns
    smiling hometown`, a regression model's non-numeric column)."""
    names = ["zoe_quartz", "yannick_ferrule", "zoe_quartz"]
    single = LabelSpec("single_label_classification", ["name"], {"cat": 0, "dog": 1})
    with pytest.raises(ValueError, match=r"'name' holds values that are neither.*2 distinct.*of type str, first at "
                                         r"row 0") as info:
        single.labels({"name": names})
    multi = LabelSpec("multi_label_classification", ["smiling", "hometown"], {})
    with pytest.raises(ValueError, match=r"'hometown' must hold -1/1, 0/1 or bool values; it holds 2 distinct") as more:
        multi.labels({"smiling": [1, 0, 1], "hometown": ["Fernhollow", "Quillmere", "Fernhollow"]})
    regression = LabelSpec("regression", ["name"], {})
    with pytest.raises(ValueError, match=r"'name' must hold numbers.*2 distinct") as third:
        regression.labels({"name": names})
    for error in (info, more, third):
        assert not any(v in str(error.value) for v in ("zoe", "yannick", "Fernhollow", "Quillmere")), error.value


def test_resnet_with_default_processor_equals_legacy_scaling():
    """The processor written for a classifier without one reproduces the project's [-1, 1] convention."""
    model, processor = tiny_resnet()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    legacy = make_transform(None)(imgs)
    via = make_transform(processor)([PIL.Image.fromarray(i) for i in imgs])
    torch.testing.assert_close(via, legacy, rtol=0, atol=1e-6)
    y = torch.tensor([0, 1, 1, 0])  # single-label (problem_type unset: inferred from the integer labels)
    rev = pil_images(4, 5, size=32)
    r = unlearn(model, ([PIL.Image.fromarray(i) for i in imgs], y), (rev, y), method="second_order",
                image_processor=processor, train_set=(rev, y), hessian_samples=4, cg_iters=2, power_iters=2,
                progress=False)
    assert r.extra["update_norm"] > 0 and r.damping > 0


def _other_architectures():
    import transformers as T

    return {
        "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, num_labels=2)),
        "swin": lambda: T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=2)),
        "efficientnet": lambda: T.EfficientNetForImageClassification(T.EfficientNetConfig(
            image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=2)),
        "mobilenet_v2": lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
            image_size=32, depth_multiplier=0.1, num_labels=2)),
    }


@pytest.mark.parametrize("arch", ["deit", "swin", "efficientnet", "mobilenet_v2"])
def test_first_and_second_order_run_on_other_hub_architectures(arch):
    torch.manual_seed(0)
    model = _other_architectures()[arch]().eval()
    g = torch.Generator().manual_seed(0)
    x, xr = torch.randn(6, 3, 32, 32, generator=g), torch.randn(6, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    for method in ("first_order", "second_order"):
        r = unlearn(model, (x, y), (xr, y), method=method, train_set=(xr, y), hessian_samples=6, cg_iters=2,
                    power_iters=2, progress=False)
        assert np.isfinite(r.extra["update_norm"]), (arch, method)
        if arch != "efficientnet":  # the untrained tiny EfficientNet outputs constant logits: nothing to unlearn
            assert r.extra["update_norm"] > 0, (arch, method)


def test_differentiable_attention_switches_fused_implementations_and_restores():
    from types import SimpleNamespace

    class TimmLikeAttention(torch.nn.Module):
        fused_attn = True

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(_attn_implementation="flash_attention_2")
            self.attn = TimmLikeAttention()
            self.calls = []

        def set_attn_implementation(self, impl):
            self.calls.append(impl)
            self.config._attn_implementation = impl

    model = Model()
    with differentiable_attention(model):
        assert model.config._attn_implementation == "eager" and model.attn.fused_attn is False
        q = torch.randn(1, 2, 4, 8, requires_grad=True)
        out = torch.func.jvp(lambda t: torch.nn.functional.scaled_dot_product_attention(t, t, t), (q,), (q,))
        assert torch.isfinite(out[1]).all()
    assert model.calls == ["eager", "flash_attention_2"] and model.attn.fused_attn is True


def test_unlearn_by_folder_uses_the_saved_processor_and_finetune_preprocesses(tmp_path):
    model, processor = tiny_vit()
    model.save_pretrained(tmp_path / "vit")
    processor.save_pretrained(tmp_path / "vit")
    orig, rev = pil_images(4, 0), pil_images(4, 1)
    y = torch.tensor([0, 1, 1, 0])
    a = unlearn(str(tmp_path / "vit"), (orig, y), (rev, y), tau=1e-2, progress=False)
    b = unlearn(model, (orig, y), (rev, y), image_processor=processor, tau=1e-2, progress=False)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q)
    ft = unlearn(model, (orig, y), (rev, y), method="finetune", image_processor=processor, train_set=(rev, y),
                 epochs=1, batch_size=4, progress=False)
    assert any(not torch.equal(p, q) for p, q in zip(ft.model.parameters(), model.parameters()))


def test_revised_train_source_substitutes_the_changed_rows():
    from dpdiffusion.unlearning.data import RevisedTrainSource, TensorSource

    t = make_transform(None)
    orig = TensorSource(torch.zeros(6, 3, 4, 4), torch.arange(6), t)
    rev = TensorSource(torch.ones(2, 3, 4, 4) * torch.tensor([1.0, 2.0])[:, None, None, None], torch.tensor([1, 4]), t)
    train = RevisedTrainSource(orig, rev, [1, 4])
    x, y = train.batch(torch.tensor([0, 1, 4, 5]))
    assert x[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 0.0] and y.tolist() == [0, 1, 4, 5] and len(train) == 6
