"""``pipe(photos, faces="detect")`` and ``dpdiffusion protect --faces detect`` on real photos (scikit-image's)."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from dpd_faces_photos import ASTRONAUT_FACE


def test_pipeline_detect_mode_returns_whole_photos_with_faces(tiny_pipe, astronaut, group_photo):
    canvas, placed = group_photo
    out = tiny_pipe([astronaut, canvas], faces="detect", epsilon=1.0, num_inference_steps=1, output_type="np")
    assert [im.shape for im in out.images] == [astronaut.shape, canvas.shape]  # the input sizes
    assert [len(f) for f in out.faces] == [1, 3]
    x0, y0, x1, y1 = out.faces[0][0].box
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    assert abs(x0 - fx0) < 20 and abs(y0 - fy0) < 20 and abs(x1 - fx1) < 20 and abs(y1 - fy1) < 20
    for face in out.faces[0] + out.faces[1]:
        assert (face.noise_source, face.guarantee) == ("csprng", "formal") and face.epsilon == 1.0
    # outside the pasted faces the photo is byte for byte the input
    got = np.rint(out.images[0] * 255).astype(np.uint8)
    px0, py0, px1, py1 = out.faces[0][0].paste_box
    outside = np.ones(astronaut.shape[:2], bool)
    outside[py0:py1, px0:px1] = False
    assert np.array_equal(got[outside], astronaut[outside]) and not np.array_equal(got, astronaut)


def test_pipeline_detect_mode_refuses_a_photo_without_face(tiny_pipe, astronaut, coffee):
    with pytest.raises(ValueError, match=r"photos\[1\]"):
        tiny_pipe([astronaut, coffee], faces="detect", num_inference_steps=1)
    with pytest.raises(ValueError, match="faces must be"):
        tiny_pipe([astronaut], faces="crop", num_inference_steps=1)
    with pytest.raises(ValueError, match="faces='detect' only"):
        tiny_pipe([astronaut], min_face_size=64, num_inference_steps=1)


def test_protect_detect_mode_lists_photos_without_face_and_records_faces(tiny_pipe, astronaut, coffee, tmp_path):
    from dpdiffusion.protect import ProtectConfig, protect_dataset

    src = tmp_path / "src"
    src.mkdir()
    for i, photo in enumerate([astronaut, coffee, astronaut[:, ::-1]]):
        PIL.Image.fromarray(np.ascontiguousarray(photo)).save(src / f"{i}.png")
    out = protect_dataset(tiny_pipe, ProtectConfig(source=str(src), output_dir=str(tmp_path / "out"),
                                                   attributes=["dark_skin"], epsilon=1.0, num_inference_steps=1,
                                                   batch_size=2, faces="detect"), progress=False)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    skipped = [json.loads(line) for line in (tmp_path / "out-private" / "skipped.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 2] and [s["index"] for s in skipped] == [1]
    assert "no face" in skipped[0]["reason"]
    assert not (out / "images" / "00000001.png").exists()  # never released unprotected
    for r in records:
        assert PIL.Image.open(out / r["file_name"]).size == (512, 512)
        assert len(r["faces"]) == 1 and r["faces"][0]["guarantee"] == "formal"
    with pytest.raises(ValueError, match="faces must be"):
        protect_dataset(tiny_pipe, ProtectConfig(source=str(src), output_dir=str(tmp_path / "bad"), faces="all"),
                        progress=False)
    assert not (tmp_path / "bad").exists()
