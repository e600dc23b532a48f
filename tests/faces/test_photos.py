"""``protect_photos`` / ``protect_photo`` end to end on real photos with a tiny in-process pipeline."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from dpdiffusion.faces import NoFaceFoundError, paste_mask, protect_photo, protect_photos

KW = dict(epsilon=1.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0))


def _kw():
    return dict(KW, generator=torch.Generator().manual_seed(0))


def _outside_masks_unchanged(before, after, records):
    keep = np.ones(before.shape[:2], dtype=bool)
    for rec in records:
        keep &= paste_mask(np.array(rec.quad), before.shape) == 0
    assert np.array_equal(after[keep], before[keep])
    return keep


def test_astronaut_whole_photo_protected_outside_bytes_kept(tiny_pipe, astronaut):
    out = protect_photos(tiny_pipe, PIL.Image.fromarray(astronaut), **_kw())
    assert len(out.images) == 1 and out.images[0].size == (512, 512)
    after = np.asarray(out.images[0])
    (rec,) = out.faces[0]
    x0, y0, x1, y1 = rec.box
    assert 165 < (x0 + x1) / 2 < 275 and 70 < (y0 + y1) / 2 < 175
    keep = _outside_masks_unchanged(astronaut, after, out.faces[0])
    px0, py0, px1, py1 = rec.paste_box
    outside_box = np.ones(keep.shape, bool)
    outside_box[py0:py1, px0:px1] = False
    assert np.array_equal(after[outside_box], astronaut[outside_box])
    assert (after[~keep] != astronaut[~keep]).any(axis=-1).mean() > 0.5  # the face was replaced
    assert rec.epsilon == out.epsilon == 1.0 and rec.guarantee == out.guarantee and set(rec.sigmas)
    json.dumps(rec.to_dict())  # a record is JSON-ready


def test_group_photo_every_face_protected(tiny_pipe, group_photo):
    canvas, placed = group_photo
    out = protect_photos(tiny_pipe, canvas, output_type="np", **_kw())
    after = np.rint(out.images[0] * 255).astype(np.uint8)
    assert after.shape == canvas.shape
    assert len(out.faces[0]) == len(placed)
    _outside_masks_unchanged(canvas, after, out.faces[0])
    for x, y, w, h in placed:  # each tile's face centre was replaced
        cx, cy = x + w // 2, y + int(h * 0.55)
        assert (after[cy - 5:cy + 5, cx - 5:cx + 5] != canvas[cy - 5:cy + 5, cx - 5:cx + 5]).any()


def test_photo_without_face_is_refused_before_any_release(counting_pipe, astronaut, coffee, tmp_path):
    from dpdiffusion.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=5.0, delta=1e-5)
    with pytest.raises(ValueError, match=r"photos\[1\]: no face found"):
        protect_photos(counting_pipe, [astronaut, coffee], subject_ids=["a", "c"], ledger=ledger, **_kw())
    assert counting_pipe.calls == 0 and ledger.subjects() == []
    with pytest.raises(NoFaceFoundError) as info:
        protect_photo(counting_pipe, coffee, index=7, **_kw())
    assert info.value.index == 7 and "no face found" in info.value.reason and counting_pipe.calls == 0


def test_each_face_is_its_own_ledger_subject(tiny_pipe, group_photo, astronaut, tmp_path):
    from dpdiffusion.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=1.1, delta=1e-5)
    canvas, placed = group_photo
    out = protect_photos(tiny_pipe, [canvas, astronaut], subject_ids=["group", "astro"], ledger=ledger, **_kw())
    ids = [[r.subject_id for r in recs] for recs in out.faces]
    assert ids == [[f"group/face{j}" for j in range(len(placed))], ["astro/face0"]]
    assert sorted(ledger.subjects()) == sorted(sum(ids, []))
    assert all(r.remaining_budget == pytest.approx(ledger.remaining(r.subject_id)) for recs in out.faces for r in recs)
    # a second release would overspend every face's budget: refused, nothing released
    with pytest.raises(ValueError):
        protect_photos(tiny_pipe, astronaut, subject_ids=["astro"], ledger=ledger, **_kw())
    with pytest.raises(ValueError, match="subject_ids must be given with a ledger"):
        protect_photos(tiny_pipe, astronaut, ledger=ledger, **_kw())
    custom = protect_photos(tiny_pipe, astronaut, subject_ids=["x"], face_subject_id=lambda s, j: f"{s}#{j}", **_kw())
    assert custom.faces[0][0].subject_id == "x#0"
    # subjects from the face's content (the Space's keyed hash): the same face in two photos is one subject
    import hashlib

    def by_content(crop):
        return "h:" + hashlib.sha256(crop.tobytes()).hexdigest()[:16]

    hashed = protect_photos(tiny_pipe, astronaut, crop_subject_id=by_content, ledger=ledger, **_kw())
    sid = hashed.faces[0][0].subject_id
    assert sid.startswith("h:") and sid in ledger.subjects()
    with pytest.raises(ValueError, match="distinct subject id"):
        protect_photos(tiny_pipe, [astronaut, astronaut], crop_subject_id=by_content, **_kw())
    with pytest.raises(ValueError, match="either subject_ids or crop_subject_id"):
        protect_photos(tiny_pipe, astronaut, subject_ids=["a"], crop_subject_id=by_content, **_kw())


def test_protect_photo_for_the_cli(tiny_pipe, astronaut):
    res = protect_photo(tiny_pipe, astronaut, index=3, subject_id="p3", **_kw())
    assert res.image.dtype == np.uint8 and res.image.shape == astronaut.shape
    assert [f.subject_id for f in res.faces] == ["p3/face0"]
    _outside_masks_unchanged(astronaut, res.image, res.faces)


def test_identity_figure_per_face(tiny_pipe, astronaut):
    out = protect_photos(tiny_pipe, astronaut, identity=True, **_kw())
    rec = out.faces[0][0]
    assert rec.identity_distance > 0 and rec.identity_match == (rec.identity_distance < 0.6)


def test_output_types_and_deterministic_seeded_mode(tiny_pipe, astronaut):
    a = protect_photos(tiny_pipe, astronaut, output_type="pt", secure_mode=False, **_kw())  # seeded: comparable
    b = protect_photos(tiny_pipe, astronaut, output_type="np", secure_mode=False, **_kw())
    assert a.noise_source == "seeded" and a.guarantee == "none (reproducible noise)"
    assert a.images[0].shape == (3, 512, 512)
    assert np.array_equal(a.images[0].permute(1, 2, 0).numpy(), b.images[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_face_size=0), "min_face_size must be an integer >= 1"),
    (dict(min_confidence=float("nan")), "min_confidence must be a finite number"),
    (dict(feather=0.0), "feather must be in"),
    (dict(inset=0.6), "inset must be in \\[0, 0.5\\)"),
    (dict(output_type="jpg"), "output_type must be 'pil', 'np' or 'pt'"),
    (dict(subject_ids=["a", "b"]), "subject_ids has 2 ids for 1 photos"),
    (dict(images=[1]), "images is set by protect_photos"),
])
def test_bad_arguments(counting_pipe, astronaut, kwargs, match):
    with pytest.raises(ValueError, match=match):
        protect_photos(counting_pipe, astronaut, **kwargs)
    assert counting_pipe.calls == 0


def test_swappable_backend(tiny_pipe):
    from dpdiffusion.faces import DetectedFace

    class Fixed:  # any object with detect(image) -> list[DetectedFace]
        def detect(self, image, **hints):
            lm = np.zeros((68, 2))
            lm[36:42], lm[42:48], lm[48], lm[54] = (40, 50), (80, 50), (45, 95), (75, 95)
            return [DetectedFace(box=(30, 30, 90, 110), confidence=9.0, landmarks=lm)]

    photo = np.full((160, 200, 3), 90, np.uint8)
    out = protect_photos(tiny_pipe, photo, detector=Fixed(), output_type="np", **_kw())
    assert out.images[0].shape == (160, 200, 3) and out.faces[0][0].box == (30, 30, 90, 110)


def test_skip_mode_for_batch_jobs(counting_pipe, astronaut, coffee, tmp_path):
    from dpdiffusion.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=5.0, delta=1e-5)
    out = protect_photos(counting_pipe, [coffee, astronaut], on_no_face="skip", subject_ids=["c", "a"],
                         ledger=ledger, **_kw())
    assert out.images[0] is None and out.faces[0] == [] and out.images[1].size == (512, 512)
    assert out.skipped == [{"index": 0, "reason": "no face found (min_face_size=48 px, min_confidence=0.5)"}]
    assert ledger.subjects() == ["a/face0"] and counting_pipe.calls == 1
    none = protect_photos(counting_pipe, [coffee], on_no_face="skip", **_kw())
    assert none.images == [None] and none.report is None and counting_pipe.calls == 1
    with pytest.raises(ValueError, match="on_no_face must be 'raise' or 'skip'"):
        protect_photos(counting_pipe, coffee, on_no_face="ignore")


def test_face_generator_makes_each_face_reproducible(tiny_pipe, group_photo, astronaut):
    canvas, _ = group_photo

    def gen(i, j):
        return torch.Generator().manual_seed(1000 * i + j)

    kw = dict(epsilon=1.0, num_inference_steps=2, output_type="np", face_generator=gen, secure_mode=False)
    both = protect_photos(tiny_pipe, [canvas, astronaut], **kw)
    alone = protect_photos(tiny_pipe, [canvas], **kw)  # same faces, same generators, smaller batch
    np.testing.assert_allclose(both.images[0], alone.images[0], atol=2 / 255)
    with pytest.raises(ValueError, match="either generator or face_generator"):
        protect_photos(tiny_pipe, astronaut, face_generator=gen, generator=torch.Generator())


def test_space_handler_and_faces_mode(tiny_pipe, astronaut, coffee):
    from dpdiffusion.faces import check_faces_mode, protect_photo_for_display

    image, message = protect_photo_for_display(tiny_pipe, PIL.Image.fromarray(astronaut), **_kw())
    assert image.size == (512, 512) and message.startswith("Protected 1 face(s)") and "epsilon=1" in message
    image, message = protect_photo_for_display(tiny_pipe, coffee, **_kw())
    assert image is None and message.startswith("No face was found") and "nothing was released" in message
    assert check_faces_mode("detect") == "detect"
    with pytest.raises(ValueError, match="faces must be 'aligned' or 'detect', got faces='all'"):
        check_faces_mode("all")
