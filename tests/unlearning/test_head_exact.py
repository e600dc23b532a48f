"""`method="head_exact"` equals retraining the head on the revised data, checked against scikit-learn's logistic
regression (an independent solver of the same convex problem) on the features of real transformers models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dpdiffusion.unlearning import unlearn

from test_hub_classifiers import _one_thread, tiny_convnext, tiny_vit  # noqa: F401 - the test folder is on sys.path

L2 = 1e-2


def _data(n, seed, num_labels, multi_label):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    if multi_label:
        y = (torch.rand(n, num_labels, generator=g) < 0.5).float()
    else:
        y = torch.randint(0, num_labels, (n,), generator=g)
    return x, y


def _revise(x, n_changed, seed):
    g = torch.Generator().manual_seed(seed)
    xr = x.clone()
    xr[:n_changed] = torch.rand(n_changed, 3, 32, 32, generator=g) * 2 - 1
    return xr


def _head_vector(head):
    return torch.cat([head.weight.detach().double().reshape(-1), head.bias.detach().double()]).numpy()


def _sklearn_head(features, y, c, multi_label):
    """[W b] of the L2-penalised logistic regression on `features` (bias penalised too, via a column of ones)."""
    f1 = np.hstack([features, np.ones((len(features), 1))])
    kw = dict(C=c, fit_intercept=False, tol=1e-12, max_iter=100_000)
    if multi_label:
        coefs = np.stack([LogisticRegression(**kw).fit(f1, y[:, k]).coef_[0] for k in range(y.shape[1])])
    else:
        coefs = LogisticRegression(**kw).fit(f1, y).coef_
    return np.concatenate([coefs[:, :-1].reshape(-1), coefs[:, -1]]), coefs


def _two_stage(model, x, y, n_changed):
    """Train the head on the original set, then unlearn the revision of the first `n_changed` rows exactly."""
    first = unlearn(model, (x[:n_changed], y[:n_changed]), (x[:n_changed], y[:n_changed]), method="head_exact",
                    train_set=(x, y), head_l2=L2, progress=False)
    xr = _revise(x, n_changed, seed=7)
    second = unlearn(first.model, (x[:n_changed], y[:n_changed]), (xr[:n_changed], y[:n_changed]),
                     method="head_exact", train_set=(xr, y), head_l2=L2, progress=False)
    return first, second, xr


def test_vit_head_exact_equals_head_retraining_single_label():
    model, _ = tiny_vit(num_labels=3, names=("a", "b", "c"))
    x, y = _data(120, seed=0, num_labels=3, multi_label=False)
    first, second, xr = _two_stage(model, x, y, n_changed=40)
    assert second.extra["converged"] and second.extra["head"] == "classifier"
    assert second.updated_parameters == 3 * 32 + 3
    body = {n: p for n, p in first.model.named_parameters() if not n.startswith("classifier")}
    assert all(torch.equal(p, dict(second.model.named_parameters())[n]) for n, p in body.items())  # frozen body

    with torch.no_grad():  # the features ViTForImageClassification feeds its head: the [CLS] token after layernorm
        feats = second.model.vit(pixel_values=xr).last_hidden_state[:, 0].double().numpy()
    ours = _head_vector(second.model.classifier)
    ref, coefs = _sklearn_head(feats, y.numpy(), c=1 / (len(xr) * L2), multi_label=False)
    assert np.linalg.norm(ours - ref) <= 1e-4 * np.linalg.norm(ref)
    # the update did something: the head trained on the originals is far from the exact answer
    before = _head_vector(first.model.classifier)
    assert np.linalg.norm(before - ref) > 100 * np.linalg.norm(ours - ref)
    # the certificate holds: distance to the exact minimiser <= ||grad J|| / l2 (plus sklearn's own error)
    assert np.linalg.norm(ours - ref) <= second.extra["certified_distance"] + 1e-5 * np.linalg.norm(ref)

    xt, _ = _data(200, seed=3, num_labels=3, multi_label=False)
    with torch.no_grad():
        pred = second.model(pixel_values=xt).logits.argmax(-1).numpy()
        ft = second.model.vit(pixel_values=xt).last_hidden_state[:, 0].double().numpy()
    ref_pred = (np.hstack([ft, np.ones((len(ft), 1))]) @ coefs.T).argmax(-1)
    assert (pred == ref_pred).all()


def test_convnext_head_exact_equals_head_retraining_multi_label():
    model, _ = tiny_convnext(num_labels=3)
    x, y = _data(100, seed=1, num_labels=3, multi_label=True)
    _, second, xr = _two_stage(model, x, y, n_changed=30)
    with torch.no_grad():  # ConvNextForImageClassification: pooled (layernormed) output -> classifier
        feats = second.model.convnext(pixel_values=xr).pooler_output.double().numpy()
    ours = _head_vector(second.model.classifier)
    # multi-label loss = mean over the K labels of the binary cross-entropies: per label C = 1 / (n K l2)
    ref, coefs = _sklearn_head(feats, y.numpy(), c=1 / (len(xr) * 3 * L2), multi_label=True)
    assert np.linalg.norm(ours - ref) <= 1e-4 * np.linalg.norm(ref)
    with torch.no_grad():
        logits = second.model(pixel_values=xr).logits.double().numpy()
    assert ((logits > 0) == (np.hstack([feats, np.ones((len(feats), 1))]) @ coefs.T > 0)).all()


class _SquashedHead(torch.nn.Module):
    """Logits are tanh of a linear layer: not a linear head, so head_exact must refuse it."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6))
        self.head = torch.nn.Linear(6, 2)

    def forward(self, pixel_values):
        return (torch.tanh(self.head(torch.relu(self.body(pixel_values)))),)


def test_head_exact_refuses_non_linear_heads_and_bad_arguments():
    x = torch.rand(20, 3, 8, 8) * 2 - 1
    y = torch.randint(0, 2, (20,))
    ce = lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none")  # noqa: E731
    with pytest.raises(ValueError, match="head_exact.*linear layer"):
        unlearn(_SquashedHead(), (x[:5], y[:5]), (x[:5], y[:5]), method="head_exact", train_set=(x, y),
                loss_fn=ce, progress=False)
    model, _ = tiny_vit()
    xv, yv = _data(10, seed=0, num_labels=2, multi_label=False)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="head_l2 must be a finite number > 0"):
            unlearn(model, (xv, yv), (xv, yv), method="head_exact", train_set=(xv, yv), head_l2=bad)
    with pytest.raises(ValueError, match="head_tol"):
        unlearn(model, (xv, yv), (xv, yv), method="head_exact", train_set=(xv, yv), head_tol=0.0)
    with pytest.raises(ValueError, match="needs train_set"):
        unlearn(model, (xv, yv), (xv, yv), method="head_exact")
