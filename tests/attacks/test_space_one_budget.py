"""Attacker: a person of the Space who wants more of a face than its budget allows (threat model: channel "one
budget per face").

They spend a face's whole budget in one of the Space's two modes, then open a new session (a new client) and ask
for the same face in the other mode, at a small epsilon, with the same picture or the picture re-saved as JPEG. They
see only the answers. The second release must be refused: a face has one budget, whichever mode releases it.

Measured on scikit-image's astronaut (one face) with a budget of 5: the photo mode's release at epsilon 5 spends the
face's budget, and the face mode's request at epsilon 0.5 is refused; and the other way round.

Both tests fail on commit ae36aae, where the photo mode keyed the face's aligned crop and the face mode the
picture's centre square: two subjects, so the photo whose budget the photo mode had spent was released again, at
epsilon 5, by the face mode.
"""

from __future__ import annotations


import pytest

pytest.importorskip("gradio")
pytest.importorskip("dlib")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:::gradio.queueing")]


import space_harness as H  # noqa: E402  (tests/space_harness.py)
BUDGET = 5.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_face_spent_in_the_photo_mode_is_refused_in_the_face_mode(tmp_path, monkeypatch, fmt):
    from skimage import data

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    photo = data.astronaut()
    with H.served(H.tiny_pipe(), tmp_path / "space", budget_epsilon=BUDGET) as demo:
        first = H.client(demo, tmp_path / "first")
        protected, status = H.protect_photo(first, photo, ["dark_skin"], BUDGET, upload_dir=tmp_path / "f1")
        assert "Protected **1 face(s)**" in status, status  # the whole budget, spent in the photo mode
        second = H.client(demo, tmp_path / "second")  # a new session
        out = H.protect_face(second, photo, ["dark_skin"], 0.5, upload_dir=tmp_path / "f2", fmt=fmt)
        status = out[4]
        assert "Refused" in status and "nothing was charged" in status, status
        assert not isinstance(out[0], str) and not isinstance(out[1], float)  # no image, no epsilon
        print(f"\nphoto mode at ε={BUDGET:g}, then the face mode ({fmt}) at ε=0.5 in a new session: {status}")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_face_spent_in_the_face_mode_is_refused_in_the_photo_mode(tmp_path, monkeypatch, fmt):
    from skimage import data

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    photo = data.astronaut()
    with H.served(H.tiny_pipe(), tmp_path / "space", budget_epsilon=BUDGET) as demo:
        first = H.client(demo, tmp_path / "first")
        out = H.protect_face(first, photo, ["dark_skin"], BUDGET, upload_dir=tmp_path / "f1")
        assert "First protected image at ε=5" in out[4], out[4]  # the whole budget, spent in the face mode
        second = H.client(demo, tmp_path / "second")
        protected, status = H.protect_photo(second, photo, ["dark_skin"], 0.5, upload_dir=tmp_path / "f2", fmt=fmt)
        assert "Refused" in status and "nothing was charged" in status, status
        assert not (isinstance(protected, dict) and protected.get("image")) and not isinstance(protected, (str, tuple))
        print(f"\nface mode at ε={BUDGET:g}, then the photo mode ({fmt}) at ε=0.5 in a new session: {status}")
