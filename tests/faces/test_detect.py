"""Detection and landmarks on real photos (dlib HOG + 68 points, from the ``faces`` extra)."""

from __future__ import annotations

import numpy as np
import pytest

from dpd_faces_photos import ASTRONAUT_FACE

from dpdiffusion.faces import DlibFaceDetector, find_faces
from dpdiffusion.faces.detect import default_detector, default_embedder


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_astronaut_has_one_face_where_it_is(astronaut):
    faces = find_faces(astronaut)
    assert len(faces) == 1
    assert _iou(faces[0].box, ASTRONAUT_FACE) > 0.8
    lm = faces[0].landmarks
    assert lm.shape == (68, 2)
    # eyes above the mouth, left eye left of the right eye, all inside the box's neighbourhood
    assert lm[36:42, 1].mean() < lm[48:60, 1].mean() and lm[36:42, 0].mean() < lm[42:48, 0].mean()
    x0, y0, x1, y1 = faces[0].box
    assert (lm[:, 0] > x0 - 10).all() and (lm[:, 0] < x1 + 10).all()


def test_coffee_has_no_face(coffee):
    assert find_faces(coffee) == []


def test_group_photo_every_face_found_in_its_tile(group_photo):
    canvas, placed = group_photo
    faces = find_faces(canvas)
    assert len(faces) == len(placed)
    for x, y, w, h in placed:
        inside = [f for f in faces if x <= (f.box[0] + f.box[2]) / 2 < x + w and y <= (f.box[1] + f.box[3]) / 2 < y + h]
        assert len(inside) == 1, (x, y, [f.box for f in faces])


def test_thresholds_filter(astronaut):
    det = default_detector()
    raw = det.detect(astronaut, min_face_size=40)  # dlib's own threshold: the face and a weak stray hit on the suit
    assert len(raw) == 2 and raw[0].confidence > 1.0 > 0.5 > raw[1].confidence
    assert find_faces(astronaut, min_face_size=40, min_confidence=-10.0) == raw
    assert find_faces(astronaut, min_face_size=40) == raw[:1]
    assert find_faces(astronaut, min_face_size=500) == []
    assert find_faces(astronaut, min_confidence=5.0) == []


def test_detector_arguments_are_validated():
    with pytest.raises(ValueError, match="upsample must be an integer in \\[0, 3\\]"):
        DlibFaceDetector(upsample=7)
    with pytest.raises(ValueError, match="model must be 'hog' or 'cnn'"):
        DlibFaceDetector(model="yolo")
    with pytest.raises(ValueError, match="uint8 RGB"):
        default_detector().detect(np.zeros((10, 10), dtype=np.float32))


def test_identity_embedder_same_face_close_other_image_far(astronaut, group_photo):
    emb = default_embedder()
    box = find_faces(astronaut)[0].box
    a = emb.embed(astronaut, box)
    assert a.shape == (128,)
    assert emb.distance(a, emb.embed(astronaut.copy(), box)) == 0.0
    # the same person, rescaled, in the group photo: below dlib's 0.6 same-person threshold
    canvas, _ = group_photo
    other = find_faces(canvas)
    assert min(emb.distance(a, emb.embed(canvas, f.box)) for f in other) < 0.6


def test_min_face_size_sets_the_search_resolution(astronaut):
    import PIL.Image

    big = np.asarray(PIL.Image.fromarray(astronaut).resize((1024, 1024), PIL.Image.BICUBIC))
    det = default_detector()
    # searched at half resolution (a 160 px face is 80 px there): still found, box mapped back to full size
    (face,) = det.detect(big, min_face_size=160)
    assert _iou(face.box, tuple(2 * v for v in ASTRONAUT_FACE)) > 0.6
    assert face.landmarks[:, 0].max() > 400  # landmarks at full resolution
