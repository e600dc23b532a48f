"""Attribute datasets: image folders in CelebA's schema, save_to_disk round trips, checks and tensors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from dpdiffusion.data.attributes import (
    CELEBA_ATTRIBUTES,
    CELEBA_TO_SYNTHFACES,
    dataset_to_tensors,
    validate_images,
)
from dpdiffusion.data.attributes import load_attribute_dataset as _load_attribute_dataset
from dpdiffusion.data.synthfaces import SYNTHFACES_ATTRIBUTES

# (file name, mode, (width, height)): different modes and sizes, as in scraped face folders.
FILES = [
    ("000001.png", "RGB", (40, 30)),
    ("000002.png", "L", (20, 20)),
    ("000003.png", "RGBA", (30, 50)),
    ("000004.png", "I;16", (24, 24)),
    ("000005.png", "P", (24, 36)),
    ("000006.jpg", "RGB", (33, 33)),
]


def load_attribute_dataset(name_or_path, **kwargs):
    """The function under test, with the image-folder cache kept next to the (tmp_path) data."""
    kwargs.setdefault("cache_dir", str(Path(name_or_path).parent / "hf_cache"))
    return _load_attribute_dataset(name_or_path, **kwargs)


def _write_image(path, mode, size, rng):
    w, h = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), mode="L")
    elif mode == "RGBA":
        image = Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), mode="RGBA")
    else:
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mode="RGB")
        if mode == "P":
            image = image.convert("P")
    assert image.mode == mode
    image.save(path)


@pytest.fixture()
def celeba_folder(tmp_path):
    """A tiny folder in CelebA's schema: file_name plus all 40 attributes valued -1/1, and an identity."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "celeba_tiny"
    folder.mkdir()
    values = np.where(rng.random((len(FILES), len(CELEBA_ATTRIBUTES))) < 0.5, -1, 1)
    values[:, 0] = [1, -1, 1, -1, 1, -1]  # both values present in the first column for sure
    lines = [",".join(["file_name", *CELEBA_ATTRIBUTES, "celeb_id"])]
    for i, (name, mode, size) in enumerate(FILES):
        _write_image(folder / name, mode, size, rng)
        lines.append(",".join([name, *map(str, values[i]), str(i // 2)]))
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder, values


def test_celeba_constants():
    assert len(CELEBA_ATTRIBUTES) == 40 and len(set(CELEBA_ATTRIBUTES)) == 40
    assert CELEBA_ATTRIBUTES[0] == "5_o_Clock_Shadow" and CELEBA_ATTRIBUTES[-1] == "Young"
    assert CELEBA_ATTRIBUTES.index("Smiling") == 31 and CELEBA_ATTRIBUTES.index("Male") == 20
    assert set(CELEBA_TO_SYNTHFACES) == set(SYNTHFACES_ATTRIBUTES)
    assert CELEBA_TO_SYNTHFACES["dark_skin"] is None and CELEBA_TO_SYNTHFACES["long_hair"] is None
    for celeba in CELEBA_TO_SYNTHFACES.values():
        assert celeba is None or celeba in CELEBA_ATTRIBUTES


def _file_order(ds):
    """Row -> index in FILES, keyed by the (unique) image sizes: independent of the loader's row order."""
    sizes = [size for _, _, size in FILES]
    return [sizes.index(ds[i]["image"].size) for i in range(len(ds))]


def test_image_folder_in_celeba_schema(celeba_folder):
    folder, values = celeba_folder
    ds = load_attribute_dataset(str(folder), identity_column="celeb_id")
    assert len(ds) == len(FILES)
    assert isinstance(ds.features["image"], datasets.Image)
    for name in CELEBA_ATTRIBUTES:
        assert ds.features[name] == datasets.Value("bool"), name
    order = _file_order(ds)
    assert sorted(order) == list(range(len(FILES)))
    for name in ("5_o_Clock_Shadow", "Smiling", "Eyeglasses", "Wearing_Hat", "Male", "Young"):
        k = CELEBA_ATTRIBUTES.index(name)
        assert list(ds[name]) == [bool(values[i, k] == 1) for i in order], name
    assert ds.features["celeb_id"] == datasets.Value("int64")  # not an attribute: untouched
    assert list(ds["celeb_id"]) == [i // 2 for i in order]
    assert validate_images(ds) == []
    assert (folder.parent / "hf_cache").is_dir()  # cache_dir is honoured


def test_selected_columns_zero_one_values_jsonl(tmp_path):
    folder = tmp_path / "zero_one"
    folder.mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(4):
        _write_image(folder / f"{i}.png", "RGB", (16 + i, 16), rng)
        lines.append(json.dumps({"file_name": f"{i}.png", "Smiling": i % 2, "Male": 1 - i % 2, "score": i * 10}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_attribute_dataset(folder, attribute_columns=["Smiling"])
    order = [ds[i]["image"].size[0] - 16 for i in range(len(ds))]
    assert ds.features["Smiling"] == datasets.Value("bool")
    assert list(ds["Smiling"]) == [bool(i % 2) for i in order]
    assert ds.features["Male"] == datasets.Value("int64")  # only the named columns are normalised
    assert ds.column_names == ["image", "Smiling", "Male", "score"]  # column order kept
    with pytest.raises(ValueError, match=r"'score'.* 4 distinct value\(s\) of type int64") as info:
        load_attribute_dataset(folder, attribute_columns=["score"])
    assert "10" not in str(info.value) and "30" not in str(info.value)  # the values are not shown


def test_unknown_columns_list_available(celeba_folder):
    folder, _ = celeba_folder
    for kwargs in (
        {"attribute_columns": ["Smiling", "Has_Beard"]},
        {"image_column": "img"},
        {"identity_column": "person"},
    ):
        with pytest.raises(ValueError, match="available columns") as info:
            load_attribute_dataset(folder, **kwargs)
        assert "Smiling" in str(info.value) and "celeb_id" in str(info.value)


def test_missing_path_and_split(tmp_path, celeba_folder):
    with pytest.raises(ValueError, match="name_or_path"):
        load_attribute_dataset(tmp_path / "does_not_exist")
    folder, _ = celeba_folder
    ds = datasets.Dataset.from_dict({"image": [str(folder / FILES[0][0])], "Smiling": [1]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="split"):
        load_attribute_dataset(tmp_path / "dd", split="test")


def test_save_to_disk_round_trip(tmp_path, celeba_folder):
    folder, values = celeba_folder
    ds = load_attribute_dataset(folder, identity_column="celeb_id")
    ds.save_to_disk(str(tmp_path / "saved"))
    again = load_attribute_dataset(tmp_path / "saved", identity_column="celeb_id")
    assert again.features == ds.features and again.column_names == ds.column_names
    for name in ("Smiling", "Male"):
        assert list(again[name]) == list(ds[name])
    np.testing.assert_array_equal(np.asarray(again[2]["image"]), np.asarray(ds[2]["image"]))
    # A DatasetDict on disk, with raw -1/1 integers: the split is picked and the values normalised.
    raw = datasets.Dataset.from_dict(
        {"image": [str(folder / name) for name, _, _ in FILES], "Smiling": [1, -1, 1, -1, -1, 1]}
    )
    datasets.DatasetDict({"train": raw, "test": raw.select([0, 1])}).save_to_disk(str(tmp_path / "dd"))
    test = load_attribute_dataset(tmp_path / "dd", split="test")
    assert isinstance(test.features["image"], datasets.Image)  # paths cast to Image
    assert list(test["Smiling"]) == [True, False]
    streamed = load_attribute_dataset(tmp_path / "dd", split="test", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert streamed.features["Smiling"] == datasets.Value("bool")
    assert [row["Smiling"] for row in streamed] == [True, False]


def test_values_other_than_binary_raise(tmp_path):
    ds = datasets.Dataset.from_dict({"image": [None, None, None], "Smiling": [1, 2, -1], "Bald": [0.0, 1.0, 1.0]})
    ds.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"'Smiling'.* 3 distinct value\(s\) of type int64") as info:
        load_attribute_dataset(tmp_path / "bad")
    assert "[-1" not in str(info.value) and "2]" not in str(info.value)  # the values are not shown
    streamed = load_attribute_dataset(tmp_path / "bad", attribute_columns=["Smiling"], streaming=True)
    with pytest.raises(ValueError, match="'Smiling'"):  # streaming checks each row as it is read
        list(streamed)
    ok = load_attribute_dataset(tmp_path / "bad", attribute_columns=["Bald"])
    assert list(ok["Bald"]) == [False, True, True]


def test_validate_images_reports_truncated_png(tmp_path, celeba_folder):
    folder, _ = celeba_folder
    data = (folder / "000001.png").read_bytes()
    (folder / "000001.png").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "000003.png").write_bytes(b"not an image at all")  # corrupt
    ds = load_attribute_dataset(folder)
    bad = validate_images(ds)
    assert len(bad) == 2
    names = [ds.cast_column("image", datasets.Image(decode=False))[i]["image"]["path"] for i, _ in bad]
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == ["000001.png", "000003.png"]
    assert all(isinstance(reason, str) and reason for _, reason in bad)
    with pytest.raises(ValueError, match="row"):
        dataset_to_tensors(ds, image_size=8, attribute_columns=["Smiling"])


def test_validate_images_ignores_global_truncated_flag(tmp_path, celeba_folder, monkeypatch):
    from PIL import ImageFile

    folder, _ = celeba_folder
    data = (folder / "000002.png").read_bytes()
    (folder / "000002.png").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert len(validate_images(load_attribute_dataset(folder))) == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_dataset_to_tensors_any_mode(celeba_folder):
    folder, values = celeba_folder
    ds = load_attribute_dataset(folder)
    images, labels = dataset_to_tensors(ds, image_size=12, attribute_columns=["Smiling", "Male"])
    assert images.shape == (len(FILES), 3, 12, 12) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    assert labels.shape == (len(FILES), 2) and labels.dtype == torch.float32
    order = _file_order(ds)
    k = CELEBA_ATTRIBUTES.index("Smiling")
    assert labels[:, 0].tolist() == [float(values[i, k] == 1) for i in order]
    # A greyscale input gives equal channels.
    grey = order.index(1)
    assert torch.equal(images[grey, 0], images[grey, 1]) and torch.equal(images[grey, 1], images[grey, 2])
    # Centre crop then bicubic resize, as documented: compare one RGB image with PIL directly.
    rgb = order.index(0)
    w, h = 40, 30
    ref = Image.open(folder / "000001.png").crop(((w - h) // 2, 0, (w - h) // 2 + h, h)).resize((12, 12), Image.BICUBIC)
    expected = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float() / 127.5 - 1.0
    torch.testing.assert_close(images[rgb], expected)
    empty_images, empty_labels = dataset_to_tensors(ds, image_size=8, attribute_columns=[])
    assert empty_labels.shape == (len(FILES), 0)
    with pytest.raises(ValueError, match="image_size"):
        dataset_to_tensors(ds, image_size=0, attribute_columns=["Smiling"])
    with pytest.raises(ValueError, match="available columns"):
        dataset_to_tensors(ds, image_size=8, attribute_columns=["Nope"])


def test_dataset_to_tensors_on_synthfaces():
    from dpdiffusion.data.synthfaces import make_synthfaces, render_faces

    ds, params = make_synthfaces(6, image_size=16, seed=2, return_params=True)
    images, labels = dataset_to_tensors(ds, image_size=16, attribute_columns=list(SYNTHFACES_ATTRIBUTES))
    expected = torch.from_numpy(render_faces(params, image_size=16)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    torch.testing.assert_close(images, expected)
    assert labels.tolist() == [[float(params[a][i]) for a in SYNTHFACES_ATTRIBUTES] for i in range(6)]
