"""A RESIDUAL, kept as a strict expected failure (docs/threat-model.md, "Residuals of the face keys"): a host holding
the secret inverts the person band keys. If a change stops it, the xfail turns red and the threat model must say so.

Review of the face keying (issue 32), attacker: the host operator, who holds the Space folder (threat model: "the
Space folder" row says it holds budgets, the secret, the key check and the feedback; the host is trusted with the
budgets, "not the uploads").

`subject_index.sqlite` keeps 128 person band keys per face, each a keyed hash of 6 E2LSH buckets of dlib's
descriptor. The secret sits next to it (`ledger/subject_key.bin`), so the host knows the projections and can invert
each band by trying its likeliest bucket values (the descriptor's projections are near Gaussian): about 20 000
keyed hashes a band, 128 bands in about 25 s of Python on one core, and least squares on the buckets gives the
descriptor back within about 0.14 (measured on the astronaut and LFW faces; dlib's same-person radius is 0.6). That
is a face template of every person who used the Space, kept as long as the index (no deletion path), usable against
any photo collection; the row says nothing of it. Here 64 bands suffice (error about 0.2, a few seconds).
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("dlib")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


import space_harness as H  # noqa: E402  (tests/space_harness.py)


def _invert_person_bands(lsh, keys: set, bands: int, top: int = 9) -> np.ndarray:
    """The descriptor whose band keys are ``keys``: each band's likeliest bucket values tried in turn, then least
    squares to the centres of the buckets found."""
    from scipy.stats import norm

    a, off, w, k = lsh._directions, lsh._offsets, lsh.bucket_width, lsh.hashes
    vals = np.arange(-8, 8)
    rows, targets = [], []
    for b in range(bands):
        j = np.arange(b * k, b * k + k)
        sd = 1.4 * np.linalg.norm(a[:, j], axis=0) / np.sqrt(a.shape[0])  # dlib descriptors: norm about 1.4
        p = norm.cdf(((vals[None] + 1) * w - off[j, None]) / sd[:, None]) - norm.cdf((vals[None] * w - off[j, None])
                                                                                     / sd[:, None])
        order = np.argsort(-p, axis=1)[:, :top]
        lp = np.log(np.take_along_axis(p, order, 1) + 1e-300)
        grid = np.stack(np.meshgrid(*[np.arange(top)] * k, indexing="ij"), -1).reshape(-1, k)
        cand = vals[order[np.arange(k)[None], grid[np.argsort(-lp[np.arange(k)[None], grid].sum(1))]]]
        for values, code in zip(cand, lsh._pack(cand)):
            if lsh.key(b, int(code)) in keys:
                rows.append(a[:, j].T)
                targets.append((values + 0.5) * w - off[j])
                break
    return np.linalg.lstsq(np.concatenate(rows), np.concatenate(targets), rcond=None)[0]


@pytest.mark.xfail(strict=True, reason="residual: the secret protects the stored descriptors; a host holding it "
                   "recovers each within about 0.13 to 0.2 (threat model)")
def test_the_subject_index_gives_the_host_no_face_template(tmp_path):
    from skimage import data

    from dpdiffusion.space.face_identity import person_descriptor, person_lsh
    from dpdiffusion.space.images import decode_photo, face_square_box
    from dpdiffusion.space.subjects import find_face_crops

    app = H.load_space_module()
    demo = app.build_demo(H.tiny_pipe(), ledger_dir=tmp_path / "ledger", feedback_dir=tmp_path / "feedback",
                          budget_epsilon=3.0, num_inference_steps=1)
    photo = data.astronaut()
    view = demo.dp_space.protect(H.page_data_url(photo), ["dark_skin"], None, 1.0, None)
    assert view.level == "info", view.status

    # the host: the folder only
    secret = (tmp_path / "ledger" / "subject_key.bin").read_bytes()
    db = sqlite3.connect(tmp_path / "ledger" / "subject_index.sqlite")
    by_subject: dict = {}
    for key, subject in db.execute("SELECT key, subject FROM band_keys WHERE kind = 'person'"):
        by_subject.setdefault(subject, set()).add(bytes(key))
    db.close()
    assert by_subject, "no person keys stored"
    lsh = person_lsh(secret)
    recovered = [_invert_person_bands(lsh, keys, bands=64) for keys in by_subject.values()]

    # what the Space computed from the upload (never written, the threat model says)
    decoded = decode_photo(H.page_data_url(photo))
    face, _ = find_face_crops(decoded, within=face_square_box(decoded))[0]
    truth = person_descriptor(decoded, face=face)
    error = min(float(np.linalg.norm(r - truth)) for r in recovered)
    assert error > 0.6, (f"the host recovered the astronaut's dlib descriptor from subject_index.sqlite and the "
                         f"secret within {error:.2f} (same person below 0.6)")
