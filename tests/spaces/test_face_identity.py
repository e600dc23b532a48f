"""The Space's edit-proof face keying (`dpdiffusion.space.face_identity`): the picture vector's invariances, the
keyed LSH and its probes, the side table (private, keyed, shared, refusing another secret), and the keyer: ordinary
edits of a face find its subject, distinct faces stay distinct, and with dlib another framing of a person is found
by the person. The attacker's view through the real `DPSpace`: tests/attacks/test_space_edited_reuploads.py.

Faces: SynthFaces at the Space's 128 px and scikit-image's astronaut, each decoded as the app decodes an upload.
"""

from __future__ import annotations

import base64
import io
import sqlite3

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps
import pytest

from dpdiffusion.space import face_identity as fi

SECRET = bytes(range(32))


def upload(image: np.ndarray, fmt: str = "PNG") -> np.ndarray:
    """What the app decodes when ``image`` is uploaded."""
    from dpdiffusion.space.images import decode_original

    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return decode_original(f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode())


def _np(p: PIL.Image.Image) -> np.ndarray:
    return np.asarray(p.convert("RGB"), dtype=np.uint8)


def _crop(x, top, bottom, left, right):
    h, w = x.shape[:2]
    return x[round(top * h):h - round(bottom * h), round(left * w):w - round(right * w)]


EDITS = {  # the ordinary edits, each at its limit
    "mirror": lambda x: x[:, ::-1].copy(),
    "grayscale": lambda x: _np(PIL.Image.fromarray(x).convert("L")),
    "brightness +10%": lambda x: _np(PIL.ImageEnhance.Brightness(PIL.Image.fromarray(x)).enhance(1.1)),
    "brightness -10%": lambda x: _np(PIL.ImageEnhance.Brightness(PIL.Image.fromarray(x)).enhance(0.9)),
    "contrast +10%": lambda x: _np(PIL.ImageEnhance.Contrast(PIL.Image.fromarray(x)).enhance(1.1)),
    "contrast -10%": lambda x: _np(PIL.ImageEnhance.Contrast(PIL.Image.fromarray(x)).enhance(0.9)),
    "border 8 px red": lambda x: _np(PIL.ImageOps.expand(PIL.Image.fromarray(x), 8, fill=(220, 30, 40))),
    "border 8 px white": lambda x: _np(PIL.ImageOps.expand(PIL.Image.fromarray(x), 8, fill=(255, 255, 255))),
    "crop 10% centred": lambda x: _crop(x, 0.05, 0.05, 0.05, 0.05),
    "crop 10% top-left": lambda x: _crop(x, 0.1, 0.0, 0.1, 0.0),
    "crop 10% bottom": lambda x: _crop(x, 0.0, 0.1, 0.0, 0.0),
    "rotate +3 deg": lambda x: _np(PIL.Image.fromarray(x).rotate(3, resample=PIL.Image.BICUBIC)),
    "rotate -3 deg": lambda x: _np(PIL.Image.fromarray(x).rotate(-3, resample=PIL.Image.BICUBIC)),
}


def synthfaces(n: int, seed: int = 2024) -> list:
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    return list(make_synthfaces_arrays(n, image_size=128, seed=seed, num_identities=n)[0])


@pytest.fixture
def keyer(tmp_path):
    """Pictures only: the fast path, and what the Space does without the faces extra."""
    return fi.FaceIdentityKeyer(SECRET, fi.SubjectIndex(tmp_path / fi.INDEX_FILE, SECRET), persons=False)


# ------------------------------------------------------------------------------------------------ the picture vector
class TestPictureVector:
    def test_unit_norm_and_mean_zero(self):
        v = fi.picture_vectors(upload(synthfaces(1)[0]), fi.PICTURE_PROBES[:40])
        assert v.shape == (40, fi.GRID * fi.GRID)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(v.mean(axis=1), 0.0, atol=1e-12)

    def test_a_flat_picture_is_the_zero_vector(self):
        assert not fi.picture_vectors(np.full((64, 64, 3), 90, np.uint8)).any()

    def test_the_mirrored_probe_of_a_mirror_image_is_the_picture(self):
        face = upload(synthfaces(1)[0])
        mirrored = fi.UNMOVED.copy()
        mirrored[0, 4] = 1.0
        np.testing.assert_allclose(fi.picture_vectors(face[:, ::-1].copy(), mirrored), fi.picture_vectors(face),
                                   atol=1e-6)

    def test_luminance_only_and_brightness_contrast_cancel(self):
        face = upload(synthfaces(1)[0])
        grey = _np(PIL.Image.fromarray(face).convert("L"))
        ref = fi.picture_vectors(face)[0]
        assert np.linalg.norm(fi.picture_vectors(grey)[0] - ref) < 0.01  # Y rounded to integers, nothing else
        x = face.astype(np.float64)
        for gain, offset in ((0.9, 0.0), (0.95, 8.0), (0.8, 20.0)):  # within range: no clipping
            edited = np.clip(np.round(x * gain + offset), 0, 255).astype(np.uint8)
            assert np.linalg.norm(fi.picture_vectors(edited)[0] - ref) < 0.01, (gain, offset)

    def test_bad_input_raises(self):
        with pytest.raises(ValueError, match="original must be an"):
            fi.picture_vectors(np.zeros((8, 8), np.uint8))
        with pytest.raises(ValueError, match="original must be an"):
            fi.picture_vectors(np.zeros((8, 8, 3), np.float32))

    def test_the_probes_cover_the_edits(self):
        p = fi.PICTURE_PROBES
        assert len(p) == 1330 and (p[0] == [1, 0, 0, 0, 0]).all()
        assert p[:, 0].min() <= 128 / 144 and p[:, 0].max() >= 1 / 0.9  # an 8 px border on 128 px, a 10 % crop
        assert np.abs(p[:, 3]).max() == 3 and set(p[:, 4]) == {0.0, 1.0}


# ------------------------------------------------------------------------------------------------ keyed LSH
class TestKeyedLSH:
    @pytest.mark.parametrize("width", [None, 1.5])
    def test_a_hash_near_its_boundary_is_probed(self, width):
        lsh = fi.KeyedLSH(SECRET, "test", dim=16, bands=4, hashes=8, probed=2, bucket_width=width)
        rng = np.random.default_rng(3)
        x = rng.standard_normal(16) * (0.3 if width else 1.0)
        if width is None:
            x /= np.linalg.norm(x)
        values, nearer, margin = lsh.hashes_of(x)
        band, j = 0, int(np.argmin(margin[0, 0]))
        direction = lsh._directions[:, band * lsh.hashes + j]
        scale = 1.0 if width is None else width
        # move x just across the least certain hash's boundary of band 0
        y = x + direction / (direction @ direction) * nearer[0, 0, j] * (margin[0, 0, j] * scale + 1e-3)
        assert lsh.hashes_of(y)[0][0, 0, j] != values[0, 0, j]
        stored = lsh.reference_keys(x)
        codes = lsh.probe_codes(y)[0, band]
        assert stored[band] != lsh.key(band, int(codes[0]))  # the unprobed code moved ...
        assert stored[band] in [lsh.key(band, int(c)) for c in codes]  # ... and a probe finds it again
        assert lsh.probe_codes(x).shape == (1, 4, 4)

    def test_keys_depend_on_the_secret_and_the_kind(self):
        x = np.random.default_rng(0).standard_normal(16)
        a = fi.KeyedLSH(SECRET, "picture", dim=16, bands=3, hashes=8, probed=0)
        b = fi.KeyedLSH(b"\x01" * 32, "picture", dim=16, bands=3, hashes=8, probed=0)
        c = fi.KeyedLSH(SECRET, "person", dim=16, bands=3, hashes=8, probed=0)
        assert a.reference_keys(x) == fi.KeyedLSH(SECRET, "picture", dim=16, bands=3, hashes=8,
                                                  probed=0).reference_keys(x)
        assert not set(a.reference_keys(x)) & (set(b.reference_keys(x)) | set(c.reference_keys(x)))
        assert all(len(k) == 16 for k in a.reference_keys(x)) and "secret=<hidden>" in repr(a)

    def test_bad_arguments_raise(self):
        with pytest.raises(ValueError, match="probed must be in"):
            fi.KeyedLSH(SECRET, "x", dim=4, bands=2, hashes=4, probed=5)
        with pytest.raises(ValueError, match="64 bits"):
            fi.KeyedLSH(SECRET, "x", dim=4, bands=2, hashes=9, probed=1, bucket_width=1.0)


# ------------------------------------------------------------------------------------------------ the side table
class TestSubjectIndex:
    def test_private_keyed_and_shared_between_processes(self, tmp_path):
        path = tmp_path / fi.INDEX_FILE
        a, b = fi.SubjectIndex(path, SECRET), fi.SubjectIndex(path, SECRET)  # two processes' views of one file
        assert (path.stat().st_mode & 0o777) == 0o600
        a.add("picture", [b"k" * 16, b"l" * 16], "s1")
        b.add("picture", [b"k" * 16], "s2")
        assert a.lookup("picture", [b"k" * 16, b"x" * 16]) == {b"k" * 16: {"s1", "s2"}}
        assert b.subjects() == {"s1", "s2"} and a.lookup("person", [b"k" * 16]) == {}
        assert a.kinds_of("s1") == {"picture"}
        with pytest.raises(ValueError, match="another subject secret"):
            fi.SubjectIndex(path, b"\x02" * 32)
        with pytest.raises(ValueError, match="secret must be 32 bytes"):
            fi.SubjectIndex(path, b"short")

    def test_an_index_open_to_others_is_made_private(self, tmp_path, caplog):
        path = tmp_path / fi.INDEX_FILE
        fi.SubjectIndex(path, SECRET)
        path.chmod(0o644)
        fi.SubjectIndex(path, SECRET)
        assert (path.stat().st_mode & 0o777) == 0o600 and "open to others" in caplog.text

    def test_a_missing_index_next_to_a_spent_ledger_is_refused(self, tmp_path):
        class Ledger:
            path = str(tmp_path / "ledger.sqlite")

            def subjects(self):
                return ["a" * 64]

        with pytest.raises(ValueError, match="subject index .* is missing"):
            fi.open_subject_index(tmp_path, SECRET, ledger=Ledger())
        assert not (tmp_path / fi.INDEX_FILE).exists()
        fi.open_subject_index(tmp_path, SECRET, ledger=Ledger(), new_index=True)  # on purpose
        fi.open_subject_index(tmp_path, SECRET, ledger=Ledger())  # and from then on it is there

    def test_only_keyed_band_keys_are_stored(self, tmp_path, keyer):
        from skimage import data

        sid = keyer.resolve(upload(data.astronaut()), set())
        db = sqlite3.connect(tmp_path / fi.INDEX_FILE)
        rows = db.execute("SELECT kind, key, subject FROM band_keys").fetchall()
        assert {r[2] for r in rows} == {sid} and {r[0] for r in rows} == {"picture"}
        assert len(rows) == fi.PICTURE_BANDS and all(isinstance(r[1], bytes) and len(r[1]) == 16 for r in rows)
        assert sorted(t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")) == \
            ["band_keys", "meta"]


# ------------------------------------------------------------------------------------------------ the keyer
class TestKeyer:
    def test_every_edit_of_a_face_finds_its_subject(self, keyer):
        from skimage import data

        faces = {"synthfaces": synthfaces(1)[0], "astronaut": data.astronaut()}
        known = {name: keyer.resolve(upload(f), set()) for name, f in faces.items()}
        fresh = []
        for name, face in faces.items():
            for edit, fn in EDITS.items():
                m = keyer.match(upload(fn(face)), set(known.values()), register=False)
                if m.subject_id != known[name]:
                    fresh.append((name, edit, m.votes))
                else:
                    assert m.by == "picture", (name, edit)
        assert not fresh
        assert keyer.resolve(upload(faces["astronaut"], "JPEG"), set(known.values())) == known["astronaut"]

    def test_distinct_faces_stay_distinct(self, keyer):
        from skimage import data

        faces = synthfaces(24) + [data.astronaut(), data.coffee(), data.chelsea(),
                                  np.stack([data.camera()] * 3, axis=-1)]
        known = set()
        for i, f in enumerate(faces):
            m = keyer.match(upload(f), known)
            assert m.by == "new" and m.subject_id not in known, (i, m)
            known.add(m.subject_id)
        assert len(known) == len(faces)

    def test_ids_are_keyed_opaque_and_deterministic(self, tmp_path, keyer):
        face = upload(synthfaces(1)[0])
        other = fi.FaceIdentityKeyer(b"\x01" * 32, fi.SubjectIndex(tmp_path / "other.sqlite", b"\x01" * 32),
                                     persons=False)
        sid = keyer.subject_id(face)
        assert len(sid) == 64 and int(sid, 16) >= 0 and other.subject_id(face) != sid
        assert keyer.resolve(face, set()) == sid  # a new face gets its own id
        assert keyer.candidates(face) == [sid]
        assert "\\x00\\x01" not in repr(keyer) and "hidden" in repr(keyer)
        with pytest.raises(ValueError, match="secret must be 32 bytes"):
            fi.FaceIdentityKeyer(b"short", keyer.index)

    def test_subjects_of_the_old_picture_keyer_are_found(self, keyer):
        from dpdiffusion.space.subjects import SubjectKeyer

        face = upload(synthfaces(1)[0])
        old = SubjectKeyer(SECRET).subject_id(face)  # a ledger written before the index
        m = keyer.match(face, {old})
        assert (m.subject_id, m.by) == (old, "legacy")
        assert keyer.match(face[:, ::-1].copy(), {old}).subject_id == old  # and now its edits too, by picture


class TestPersons:
    """With the faces extra: dlib's descriptor, averaged with its mirror's, keyed in bands."""

    @pytest.fixture
    def keyer(self, tmp_path):
        pytest.importorskip("dlib")
        return fi.FaceIdentityKeyer(SECRET, fi.SubjectIndex(tmp_path / fi.INDEX_FILE, SECRET))

    def test_the_descriptor_of_a_mirror_image_is_the_same(self):
        pytest.importorskip("dlib")
        from skimage import data

        face = upload(data.astronaut())
        a, b = fi.person_descriptor(face), fi.person_descriptor(face[:, ::-1].copy())
        assert a.shape == (fi.DESCRIPTOR_DIM,) and np.linalg.norm(a - b) < 0.05
        assert fi.person_descriptor(upload(data.coffee())) is None  # no face

    def test_another_framing_of_the_person_is_found_by_the_person(self, keyer):
        from skimage import data

        photo = data.astronaut()
        sid = keyer.resolve(upload(photo), set())
        assert fi.SubjectIndex(keyer.index.path, SECRET).kinds_of(sid) == {"picture", "person"}
        closer = photo[20:260, 120:360]  # the face filling the frame: not an edit of the picture
        assert keyer.match(upload(closer), {sid}, person=False, register=False).subject_id != sid
        m = keyer.match(upload(closer), {sid})
        assert (m.subject_id, m.by) == (sid, "person") and m.votes["person"] >= fi.PERSON_MIN_VOTES
        # that framing's picture now belongs to the subject: its edits are found without dlib too
        assert keyer.match(upload(closer[:, ::-1].copy()), {sid}, person=False).subject_id == sid
