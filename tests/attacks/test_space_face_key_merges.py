"""Distinct faces stay distinct, and a refused request changes nothing (issue 32; both fail on 93f6e91).

- Distinct people on one backdrop (ID photos, a studio, one webcam in one room). The picture code is an 8 x 8 blurred
  luminance layout searched over 1330 probes, and a picture match is taken even when dlib sees two different people
  (on 100 LFW faces pasted on one backdrop, 30 resolved to an earlier subject, 17 of them people dlib tells apart).
  Each such person's first release is refused once the earlier face's budget is spent: a denial of service, which
  also tells the person that someone with a similar picture used the Space. A veto (a picture match refused when
  dlib tells the persons apart) fixed it, and two attacker reviews turned that veto into fresh budgets for spent
  pictures (`test_space_face_key_veto.py`, `test_space_face_key_hybrid.py`); it was removed, and this test is kept
  as a strict expected failure: the residual, on the cautious side.
- A refused request resolved its faces and registered the band keys it did not recognise (a re-framed copy of a spent
  face: a new subject, 32 picture keys, never charged): a client grew the index, which every process holds in memory,
  without a release and at no cost. Now the keys join the index only once the ledger has charged the release.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("dlib")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUDGET = 3.0
ATTRS = ["dark_skin"]
SECRET = bytes(range(32))


import space_harness as H  # noqa: E402  (tests/space_harness.py)


def _space(pipe, folder):
    return H.keyed_space(pipe, folder, budget_epsilon=BUDGET, secret=SECRET)


_portrait = H.backdrop_portrait



@pytest.mark.xfail(strict=True, reason="residual: the veto that fixed it gave spent pictures fresh budgets "
                   "(test_space_face_key_veto.py, test_space_face_key_hybrid.py), so two people on one backdrop may "
                   "share a budget: the cautious side")
def test_distinct_people_on_one_backdrop_each_get_their_first_release(dummy_pipe, tmp_path):
    from skimage import data

    from dpdiffusion.space.face_identity import person_descriptor
    from dpdiffusion.space.images import decode_photo, face_square_box
    from dpdiffusion.space.subjects import find_face_crops

    faces = (data.lfw_subset()[:30] * 255).round().astype(np.uint8)
    space = _space(dummy_pipe, tmp_path)
    seen, refused = [], []
    for i, face in enumerate(faces):
        url = H.page_data_url(_portrait(face))
        photo = decode_photo(url)
        found = find_face_crops(photo, within=face_square_box(photo))
        d = person_descriptor(photo, face=found[0][0]) if found else None
        view = space.protect(url, ATTRS, None, BUDGET, None)  # each person spends their whole budget
        if view.level == "refused" and d is not None and all(np.linalg.norm(d - e) > 0.6 for e in seen):
            refused.append(i)  # dlib tells this person from every face released before, yet nothing was released
        if d is not None:
            seen.append(d)
    assert not refused, (f"{len(refused)} of {len(faces)} people on one backdrop were refused their first release "
                         f"(another person's budget): LFW faces {refused}")


def test_a_refused_request_adds_nothing_to_the_subject_index(dummy_pipe, tmp_path):
    from skimage import data

    space = _space(dummy_pipe, tmp_path)
    photo = data.astronaut()
    assert space.protect(H.page_data_url(photo), ATTRS, None, BUDGET, None).level == "info"
    index = tmp_path / "subject_index.sqlite"

    def rows() -> int:
        db = sqlite3.connect(index)
        try:
            return db.execute("SELECT COUNT(*) FROM band_keys").fetchone()[0]
        finally:
            db.close()

    before = rows()
    for edit in (photo[:, ::-1][:, 20:], photo[30:, :-30], photo[:, ::-1][40:, 40:]):  # the spent face, re-framed
        view = space.protect(H.page_data_url(np.ascontiguousarray(edit)), ATTRS, None, 0.5, None)
        assert view.level == "refused", view.status  # refused by the ledger: nothing released, nothing charged
    assert rows() == before, f"three refused requests added {rows() - before} band keys to the index"
