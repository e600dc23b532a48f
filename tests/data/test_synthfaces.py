"""SynthFaces: determinism, shapes, attribute statistics, identity structure, counterfactual pairs, Dataset."""

from __future__ import annotations

import io
import itertools
import math
import time

import datasets
import numpy as np
import pytest
from PIL import Image

from dpdiffusion.data.synthfaces import (
    DEFAULT_PROTECTED_ATTRIBUTES,
    IDENTITY_ATTRIBUTES,
    IMAGE_ATTRIBUTES,
    SYNTHFACES_ATTRIBUTES,
    counterfactual_params,
    make_synthfaces,
    make_synthfaces_arrays,
    params_for_dataset,
    render_counterfactual,
    render_faces,
    sample_face_params,
)

IDENTITY_LEVEL_KEYS = (
    "face_width", "face_height", "eye_spacing", "eye_size", "nose_length", "mouth_width", "skin_shade",
    "hair_r", "hair_g", "hair_b", "dark_skin", "long_hair",
)  # fmt: skip
IMAGE_LEVEL_KEYS = (
    "offset_x", "offset_y", "rotation", "scale", "light_angle", "bg_r", "smiling", "eyeglasses", "wearing_hat",
)  # fmt: skip


@pytest.fixture(scope="module")
def big_params():
    # Parameters only (no rendering): cheap even for many faces.
    return sample_face_params(20000, num_identities=4000, seed=7)


@pytest.fixture(scope="module")
def small():
    return make_synthfaces_arrays(24, image_size=32, num_identities=6, seed=3)


def test_public_constants():
    assert SYNTHFACES_ATTRIBUTES == ("dark_skin", "long_hair", "smiling", "eyeglasses", "wearing_hat")
    assert DEFAULT_PROTECTED_ATTRIBUTES == ("dark_skin", "long_hair")
    assert set(IDENTITY_ATTRIBUTES) | set(IMAGE_ATTRIBUTES) == set(SYNTHFACES_ATTRIBUTES)


def test_same_seed_same_params_and_images_other_seed_differs():
    a = sample_face_params(40, seed=11)
    b = sample_face_params(40, seed=11)
    c = sample_face_params(40, seed=12)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["offset_x"], c["offset_x"])
    np.testing.assert_array_equal(render_faces(a), render_faces(b))
    assert not np.array_equal(render_faces(a), render_faces(c))


@pytest.mark.parametrize("image_size", [16, 32, 64, 50])
def test_shapes_and_dtypes(image_size):
    images, params = make_synthfaces_arrays(5, image_size=image_size, seed=0)
    assert images.shape == (5, image_size, image_size, 3)
    assert images.dtype == np.uint8
    assert images.std() > 10  # not blank
    assert params["identity"].dtype == np.int64 and params["index"].dtype == np.int64
    for name in SYNTHFACES_ATTRIBUTES:
        assert params[name].dtype == bool and params[name].shape == (5,)
    assert all(len(v) == 5 for v in params.values())


def test_default_num_identities_and_balanced_assignment():
    params = sample_face_params(95, seed=1)
    assert len(np.unique(params["identity"])) == 9  # max(1, 95 // 10)
    counts = np.bincount(sample_face_params(103, num_identities=10, seed=2)["identity"])
    assert counts.min() >= 10 and counts.max() <= 11  # 103 = 10 * 10 + 3
    assert np.array_equal(sample_face_params(3, seed=0)["identity"], [0, 0, 0])  # max(1, 3 // 10) = 1


def test_attribute_balance_within_binomial_tolerance(big_params):
    for name in SYNTHFACES_ATTRIBUTES:
        if name in IDENTITY_ATTRIBUTES:  # one draw per identity
            _, first = np.unique(big_params["identity"], return_index=True)
            values = big_params[name][first]
        else:
            values = big_params[name]
        n = len(values)
        assert abs(values.mean() - 0.5) <= 5 * 0.5 / math.sqrt(n), (name, values.mean(), n)


def test_attributes_pairwise_independent(big_params):
    n_images = len(big_params["identity"])
    _, first = np.unique(big_params["identity"], return_index=True)
    for a, b in itertools.combinations(SYNTHFACES_ATTRIBUTES, 2):
        if a in IDENTITY_ATTRIBUTES and b in IDENTITY_ATTRIBUTES:
            x, y = big_params[a][first], big_params[b][first]  # effective sample: one row per identity
        else:
            x, y = big_params[a], big_params[b]  # an image-level variable is independent per image
        n = len(x)
        r = np.corrcoef(x.astype(float), y.astype(float))[0, 1]
        assert abs(r) <= 5 / math.sqrt(n), (a, b, r, n)
    assert n_images == 20000


def test_identity_level_constant_image_level_varies_within_identity(big_params):
    identity = big_params["identity"]
    order = np.argsort(identity, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(identity[order]) != 0])
    for key in IDENTITY_LEVEL_KEYS:
        values = big_params[key][order].astype(float)
        lo, hi = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
        np.testing.assert_array_equal(lo, hi, err_msg=key)
    for key in IMAGE_LEVEL_KEYS:
        values = big_params[key][order].astype(float)
        spread = np.maximum.reduceat(values, starts) - np.minimum.reduceat(values, starts)
        assert (spread > 0).mean() > 0.5, key
    # Different identities look different.
    _, first = np.unique(identity, return_index=True)
    assert len(np.unique(big_params["face_width"][first])) == len(first)


def test_identity_params_depend_only_on_seed_and_identity():
    a = sample_face_params(50, num_identities=5, seed=4)
    b = sample_face_params(200, num_identities=20, seed=4)
    for ident in range(5):
        ia = np.flatnonzero(a["identity"] == ident)[0]
        ib = np.flatnonzero(b["identity"] == ident)[0]
        for key in IDENTITY_LEVEL_KEYS:
            assert a[key][ia] == b[key][ib]
    for key in IMAGE_LEVEL_KEYS:  # image-level parameters depend only on (seed, index)
        np.testing.assert_array_equal(a[key], b[key][:50])


def test_render_is_independent_of_batch(small):
    images, params = small
    idx = np.array([5, 0, 17, 3])
    sub = {k: v[idx] for k, v in params.items()}
    np.testing.assert_array_equal(render_faces(sub), images[idx])


@pytest.mark.parametrize("attribute", SYNTHFACES_ATTRIBUTES)
def test_counterfactual_changes_only_the_attribute(small, attribute):
    images, params = small
    flipped = counterfactual_params(params, attribute)
    assert set(flipped) == set(params)
    for key in params:
        if key == attribute:
            np.testing.assert_array_equal(flipped[key], ~params[key])
        else:
            assert flipped[key].dtype == params[key].dtype
            np.testing.assert_array_equal(flipped[key], params[key])
    cf = render_counterfactual(params, attribute)
    assert cf.shape == images.shape and cf.dtype == np.uint8
    changed = (cf != images).any(axis=-1).reshape(len(images), -1).mean(axis=1)  # fraction of pixels
    assert (changed > 0.005).all(), (attribute, changed)  # visible in every image
    assert (changed < 0.6).all(), (attribute, changed)  # local: the rest of the scene stays
    # Flipping twice gives the original bit for bit.
    np.testing.assert_array_equal(render_faces(counterfactual_params(flipped, attribute)), images)
    # The inputs are not mutated.
    np.testing.assert_array_equal(render_faces(params), images)


def test_counterfactual_pixels_change_where_attribute_is_drawn(small):
    images, params = small
    fraction = {}
    for attribute in SYNTHFACES_ATTRIBUTES:
        cf = render_counterfactual(params, attribute)
        fraction[attribute] = (cf != images).any(axis=-1).mean()
        # The corners are background: no attribute reaches them.
        np.testing.assert_array_equal(cf[:, :2, :2], images[:, :2, :2])
    # A smile is the smallest change; skin tone covers most of the face.
    assert fraction["smiling"] < fraction["dark_skin"]
    assert fraction["eyeglasses"] < fraction["dark_skin"]


def test_counterfactual_value(small):
    images, params = small
    on = render_counterfactual(params, "eyeglasses", value=True)
    already = params["eyeglasses"]
    np.testing.assert_array_equal(on[already], images[already])
    assert (on[~already] != images[~already]).any(axis=(1, 2, 3)).all()
    per_image = np.arange(len(already)) % 2 == 0
    mixed = counterfactual_params(params, "eyeglasses", value=per_image)
    np.testing.assert_array_equal(mixed["eyeglasses"], per_image)
    with pytest.raises(ValueError, match="value"):
        counterfactual_params(params, "eyeglasses", value=[True, False])


def test_counterfactual_unknown_attribute(small):
    _, params = small
    with pytest.raises(ValueError, match="beard") as info:
        render_counterfactual(params, "beard")
    for name in SYNTHFACES_ATTRIBUTES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": 2.5}, "num_images"),
        ({"num_images": 10, "num_identities": 0}, "num_identities"),
        ({"num_images": 10, "num_identities": 11}, "num_identities"),
        ({"num_images": 10, "image_size": 15}, "image_size"),
        ({"num_images": 10, "image_size": True}, "image_size"),
        ({"num_images": 10, "seed": 1.5}, "seed"),
        ({"num_images": 10, "seed": 2**64}, "seed"),
    ],
)
def test_validation(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_synthfaces_arrays(**kwargs)
    with pytest.raises(ValueError, match=argument):
        make_synthfaces(**kwargs)


def test_render_rejects_bad_params(small):
    _, params = small
    with pytest.raises(ValueError, match="image_size"):
        render_faces(params, image_size=8)
    broken = dict(params)
    del broken["scale"]
    with pytest.raises(ValueError, match="scale"):
        render_faces(broken)


def test_make_synthfaces_dataset():
    ds, params = make_synthfaces(30, image_size=32, num_identities=6, seed=5, return_params=True)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 30
    assert ds.column_names == ["image", "identity", *SYNTHFACES_ATTRIBUTES, "index", "seed"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["identity"] == datasets.Value("int64")
    assert ds.features["index"] == datasets.Value("int64") and ds.features["seed"] == datasets.Value("int64")
    for name in SYNTHFACES_ATTRIBUTES:
        assert ds.features[name] == datasets.Value("bool")
        assert list(ds[name]) == params[name].tolist()
    assert list(ds["identity"]) == params["identity"].tolist()
    assert set(ds["seed"]) == {5}
    image = ds[0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    # PNG is lossless: the stored image equals the in-memory render.
    np.testing.assert_array_equal(np.asarray(image), render_faces(params)[0])
    assert isinstance(make_synthfaces(2, seed=5), datasets.Dataset)


def test_params_for_dataset_recreates_shuffled_subset():
    ds, params = make_synthfaces(40, image_size=16, num_identities=8, seed=9, return_params=True)
    sub = ds.shuffle(seed=0).select(range(12))
    recreated = params_for_dataset(sub)
    idx = np.asarray(sub["index"])
    assert recreated.keys() == params.keys()
    for key in params:
        np.testing.assert_array_equal(recreated[key], params[key][idx], err_msg=key)
    cells = sub.cast_column("image", datasets.Image(decode=False))["image"]
    stored = np.stack([np.asarray(Image.open(io.BytesIO(cell["bytes"]))) for cell in cells])
    np.testing.assert_array_equal(render_faces(recreated, image_size=16), stored)
    # Labels edited after the fact are caught.
    tampered = sub.map(lambda row: {"smiling": not row["smiling"]})
    with pytest.raises(ValueError, match="smiling"):
        params_for_dataset(tampered)
    with pytest.raises(ValueError, match="available columns"):
        params_for_dataset(sub.remove_columns("index"))


def test_speed_is_reported(capsys):
    start = time.perf_counter()
    make_synthfaces_arrays(1000, image_size=32, seed=0)
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[synthfaces] 1000 faces at 32 px rendered in {elapsed:.2f} s")


def test_module_doctest():
    import doctest

    import dpdiffusion.data.synthfaces as module

    assert doctest.testmod(module).failed == 0
