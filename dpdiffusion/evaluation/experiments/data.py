"""Evaluation data of the paper sweep: SynthFaces or any attribute dataset, and the image pairs the audits use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["EvaluationData", "load_evaluation_data"]

@dataclass
class EvaluationData:
    """Train and test images ``(N, 3, H, W)`` in [0, 1] with labels ``(N, L)`` for ``names``.

    ``identities`` are per-image person ids (or ``None``); ``test_params`` are SynthFaces parameters of the test set
    (for counterfactual pairs) or ``None`` for real datasets.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    names: list
    train_identities: np.ndarray | None
    test_identities: np.ndarray | None
    test_params: dict | None
    source: str



def _u8_to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def load_evaluation_data(dataset: str, *, image_size: int, num_train: int, num_test: int,
                         attribute_columns: Sequence[str] | None = None, identity_column: str | None = None,
                         seed: int = 0) -> EvaluationData:
    """SynthFaces (``dataset="synthfaces"``: fresh seeds, disjoint from the default model's training seed) or any
    dataset ``load_attribute_dataset`` reads (a Hub name, an image folder with metadata, a ``save_to_disk`` folder)
    with a ``train`` split and an optional ``test`` split (else a seeded split of ``train``)."""
    from ...data.synthfaces import SYNTHFACES_ATTRIBUTES, make_synthfaces_arrays

    if dataset == "synthfaces":
        names = list(attribute_columns or SYNTHFACES_ATTRIBUTES)
        unknown = [n for n in names if n not in SYNTHFACES_ATTRIBUTES]
        if unknown:
            raise ValueError(f"attribute_columns {unknown} are not SynthFaces attributes {list(SYNTHFACES_ATTRIBUTES)}")
        tr, ptr = make_synthfaces_arrays(num_train, image_size=image_size, seed=seed + 1001)
        te, pte = make_synthfaces_arrays(num_test, image_size=image_size, seed=seed + 2002)

        def labels(p):
            return torch.stack([torch.as_tensor(p[n], dtype=torch.float32) for n in names], 1)

        return EvaluationData(_u8_to_float(tr), labels(ptr), _u8_to_float(te), labels(pte), names,
                              ptr["identity"], pte["identity"], pte,
                              f"SynthFaces (train seed {seed + 1001}, test seed {seed + 2002})")

    from ...data.attributes import dataset_to_tensors, load_attribute_dataset

    train = load_attribute_dataset(dataset, split="train", attribute_columns=attribute_columns,
                                   identity_column=identity_column)
    names = list(attribute_columns) if attribute_columns else [
        c for c in train.column_names if c not in ("image", identity_column) and train.features[c].dtype == "bool"]
    if not names:
        raise ValueError(f"no attribute columns found in {dataset!r}; pass attribute_columns")
    try:
        test = load_attribute_dataset(dataset, split="test", attribute_columns=names, identity_column=identity_column)
    except (ValueError, FileNotFoundError, KeyError):
        split = train.train_test_split(test_size=min(num_test, len(train) // 3), seed=seed)
        train, test = split["train"], split["test"]
    train = train.shuffle(seed=seed).select(range(min(num_train, len(train))))
    test = test.shuffle(seed=seed + 1).select(range(min(num_test, len(test))))
    xtr, ytr = dataset_to_tensors(train, image_size=image_size, attribute_columns=names)
    xte, yte = dataset_to_tensors(test, image_size=image_size, attribute_columns=names)
    ids = (lambda d: np.asarray(d[identity_column]) if identity_column else None)
    return EvaluationData((xtr + 1) / 2, ytr, (xte + 1) / 2, yte, names, ids(train), ids(test), None, str(dataset))



def _counterfactual_pairs(data: EvaluationData, protected: list, count: int, image_size: int):
    """(originals, counterfactuals) ``(count, 3, H, W)`` in [0, 1]: every protected attribute flipped."""
    from ...data.synthfaces import counterfactual_params, render_faces

    sub = {k: np.asarray(v)[:count] for k, v in data.test_params.items()}
    flipped = sub
    for a in protected:
        flipped = counterfactual_params(flipped, a)
    return (_u8_to_float(render_faces(sub, image_size=image_size)),
            _u8_to_float(render_faces(flipped, image_size=image_size)))


def _opposite_pairs(data: EvaluationData, protected: list, count: int):
    """For real datasets: pairs of test images whose protected labels all differ (the closest analogue)."""
    idx = [data.names.index(a) for a in protected]
    y = data.test_labels[:, idx]
    firsts, seconds = [], []
    for i in range(len(y)):
        j = int(torch.nonzero((y != y[i]).all(1)).flatten()[0]) if (y != y[i]).all(1).any() else None
        if j is not None:
            firsts.append(i)
            seconds.append(j)
        if len(firsts) == count:
            break
    return data.test_images[firsts], data.test_images[seconds]

