"""The Space's face -> subject keying (spaces/subjects.py): the same picture re-encoded or resized is one subject,
different pictures are different subjects, and ids are keyed with a private, shared, atomically created secret.

Photos: scikit-image's astronaut, chelsea, coffee and camera (bundled with the package); faces: SynthFaces.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("gradio")
SPACES = Path(__file__).resolve().parents[2] / "spaces"


def load_space_module():
    name = "dpdiffusion_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SPACES / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = load_space_module()
from dpdiffusion.space import subjects  # noqa: E402  (the app ships in the package)


def upload(image: np.ndarray, fmt: str = "PNG", scale: float = 1.0) -> np.ndarray:
    """What the app decodes when ``image`` is uploaded as ``fmt`` (JPEG at quality 90) after resizing by ``scale``."""
    pil = PIL.Image.fromarray(image)
    if scale != 1.0:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), PIL.Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    return app.decode_original(f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode())


VARIANTS = [("JPEG", 1.0), ("PNG", 2.0), ("PNG", 0.75), ("JPEG", 0.75), ("JPEG", 2.0)]


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
            "camera": np.stack([data.camera()] * 3, axis=-1)}


@pytest.fixture
def keyer():
    return subjects.SubjectKeyer(bytes(range(32)))


def test_the_same_photo_reencoded_or_resized_is_one_subject(photos, keyer):
    ids = {}
    for name, photo in photos.items():
        first = keyer.subject_id(upload(photo))
        for fmt, scale in VARIANTS:  # first upload as PNG, the re-upload as another file
            assert keyer.resolve(upload(photo, fmt, scale), {first}) == first, (name, fmt, scale)
        # and the other way round: first seen as a JPEG at 0.75x, then the original PNG
        jpeg_first = keyer.subject_id(upload(photo, "JPEG", 0.75))
        assert keyer.resolve(upload(photo), {jpeg_first}) == jpeg_first, name
        ids[name] = first
    assert len(set(ids.values())) == len(photos)  # different photos: different subjects
    for name, photo in photos.items():  # ... and none is taken for another one that is already known
        others = {sid for other, sid in ids.items() if other != name}
        assert keyer.resolve(upload(photo, "JPEG"), others) not in others, name


def test_two_hundred_synthfaces_are_two_hundred_subjects(keyer):
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    faces, _ = make_synthfaces_arrays(200, image_size=128, seed=2024)
    known = set()
    for i, f in enumerate(faces):
        sid = keyer.resolve(app.decode_original(f), known)  # as the app does: against every subject so far
        assert sid not in known, f"SynthFaces {i} was taken for an earlier face"
        known.add(sid)
    assert len(known) == 200
    for f in faces[:10]:  # and each is found again as a JPEG
        assert keyer.resolve(upload(f, "JPEG"), known) == keyer.subject_id(app.decode_original(f))


def test_what_is_not_the_same_picture(photos, keyer):
    """A crop and an edit are new subjects (documented on the page: the app recognises a picture, not a person)."""
    photo = photos["astronaut"]
    known = {keyer.subject_id(upload(photo))}
    crop = photo[60:400, 100:440]
    edited = photo.copy()
    edited[:, :256] = 255 - edited[:, :256]
    assert keyer.resolve(app.decode_original(crop), known) not in known
    assert keyer.resolve(app.decode_original(edited), known) not in known


def test_ids_are_keyed_and_opaque(photos):
    face = upload(photos["coffee"])
    a, b = subjects.SubjectKeyer(b"\x01" * 32), subjects.SubjectKeyer(b"\x02" * 32)
    assert a.subject_id(face) != b.subject_id(face)  # not recomputable without the secret
    assert a.subject_id(face) == subjects.SubjectKeyer(b"\x01" * 32).subject_id(face)
    assert len(a.subject_id(face)) == 64 and int(a.subject_id(face), 16) >= 0
    assert "\\x01" not in repr(a) and "hidden" in repr(a)
    with pytest.raises(ValueError, match="secret must be 32 bytes"):
        subjects.SubjectKeyer(b"short")
    with pytest.raises(ValueError, match="original must be an"):
        subjects.face_features(np.zeros((8, 8), np.uint8))


def test_probes_cover_numbers_near_a_cell_boundary():
    features = np.full(48, 2 * subjects.LEVEL_STEP)  # every number at a cell centre: one code, no probes
    assert len(subjects.face_code_probes(features)) == 1
    features[5] = 2.5 * subjects.LEVEL_STEP - 1.0  # one number 1 level below a boundary
    codes = subjects.face_code_probes(features)
    assert len(codes) == 2
    moved = np.frombuffer(codes[1], dtype=np.int8)
    assert moved[5] == 3 and (np.delete(moved, 5) == 2).all()
    features[:20] = 2.5 * subjects.LEVEL_STEP - 0.5  # more uncertain numbers than are probed
    assert len(subjects.face_code_probes(features)) == 2 ** subjects.MAX_PROBED


def test_secret_is_created_once_privately_and_shared(tmp_path, caplog):
    folder = tmp_path / "ledger"
    results, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        results.append(subjects.load_or_create_secret(folder))

    with caplog.at_level(logging.DEBUG):
        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(results) == 8 and len(set(results)) == 1 and len(results[0]) == 32  # everyone agrees
    path = folder / subjects.SECRET_FILE
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in folder.iterdir()] == [subjects.SECRET_FILE]  # no temporary file left behind
    assert subjects.load_or_create_secret(folder) == results[0]
    assert results[0].hex() not in caplog.text
    path.write_bytes(b"cut")
    with pytest.raises(ValueError, match="does not hold a 32-byte"):
        subjects.load_or_create_secret(folder)


def test_a_secret_readable_by_others_is_made_private(tmp_path, caplog):
    secret = subjects.load_or_create_secret(tmp_path)
    path = tmp_path / subjects.SECRET_FILE
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert subjects.load_or_create_secret(tmp_path) == secret
    assert (path.stat().st_mode & 0o777) == 0o600 and "open to others" in caplog.text
    assert secret.hex() not in caplog.text


def test_the_secret_never_reaches_the_feedback_or_the_page(dummy_pipe, tmp_path):
    demo = app.build_demo(dummy_pipe, ledger_dir=tmp_path / "ledger", feedback_dir=tmp_path / "feedback",
                          budget_epsilon=3.0, num_inference_steps=2)
    space = demo.dp_space
    view = space.protect(app.image_to_data_url(upload(np.full((64, 64, 3), 90, np.uint8))), ["dark_skin"], None,
                         1.0, None)
    space.feedback("accept", space.feedback("more_privacy", view.session).session)
    secret = (tmp_path / "ledger" / subjects.SECRET_FILE).read_bytes()
    sid = view.session.subject_id
    for p in (tmp_path / "feedback").rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert secret not in data and secret.hex().encode() not in data and sid.encode() not in data, p
    import json

    page = json.dumps(demo.get_config_file(), default=str)
    assert secret.hex() not in page
    note = next(c for c in demo.get_config_file()["components"]
                if c.get("props", {}).get("elem_id") == "dp-face-note")["props"]["value"]
    assert "What is a face here?" in note and "another photo of the same person" in note and "crop" in note
