"""Attackers: another client of the same Space, and the Space's host (threat model: channel "the Space's files and
file routes").

A person protects a photo in the photo mode (``/protect_photo``), sending it as the page does. Then

- another client, with a fresh session and no relation to that person, asks Gradio's file route
  (``GET /gradio_api/file=<path>``) for every file under Gradio's temporary folder and every file the person's own
  answer points to (the strongest such client: it knows every path), and
- the host lists every file under Gradio's temporary folder (``GRADIO_TEMP_DIR``, one per test) and the Space folder
  (ledger, secret, feedback), and decodes every image among them.

Neither may find a copy of the upload: no file pixel-identical to it (at its size), and no file holding its bytes.
The photo mode's answer is the protected photo as a data URL inside the answer (not a file), so the photo mode leaves
no image file at all. Then another person protects the same picture in the face mode, which is checked the same way
(its square, the face mode's picture, included); its protected image is a release, served as a file.

The test fails on commit ae36aae, where the photo mode took its photo through ``gr.Image(sources=["upload"])``:
the upload landed in Gradio's cache as a byte-identical file, which a client with no session fetched (200).
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("dlib")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:::gradio.queueing")]


def load_harness():
    name = "dpdiffusion_space_harness"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "spaces" /
                                                  "space_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = load_harness()


def _copies_of(upload: np.ndarray, png: bytes, roots) -> tuple:
    """(image files found, those pixel-identical to ``upload``, files holding its PNG bytes) under ``roots``."""
    images = list(H.image_files(*roots))
    identical = [p for p, pixels in images if pixels.shape == upload.shape and np.array_equal(pixels, upload)]
    with_bytes = [p for root in roots for p in Path(root).rglob("*") if p.is_file() and png[:4096] in p.read_bytes()]
    return images, identical, with_bytes


def test_no_mode_leaves_a_copy_of_the_upload(tmp_path, monkeypatch):
    from skimage import data

    app = H.load_space_module()
    gradio_tmp = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    photo = data.astronaut()  # (512, 512, 3): one face
    png = base64.b64decode(H.page_data_url(photo).split(",", 1)[1])
    square = app.decode_original(H.page_data_url(photo))  # what the face mode releases, kept in memory only
    with H.served(H.tiny_pipe(), tmp_path / "space", budget_epsilon=5.0) as demo:
        # 1. the photo mode
        person = H.client(demo, tmp_path / "person")
        protected, status = H.protect_photo(person, photo, ["dark_skin"], 1.0, upload_dir=tmp_path / "person-files")
        assert "Protected **1 face(s)**" in status, status
        tried = _no_copy_served_or_stored(demo, gradio_tmp, tmp_path / "space", protected, photo, png)
        images = list(H.image_files(gradio_tmp))
        assert images == []  # the photo mode writes no image at all: the protected photo came back in the answer
        assert isinstance(protected, dict) and protected["image"].startswith("data:image/png;base64,")
        print(f"\nphoto mode: {tried} file route(s) tried, {len(images)} image file(s) under Gradio's temporary "
              "folder, 0 pixel-identical to the upload")
        # 2. the face mode, another person, the same picture
        other = H.client(demo, tmp_path / "other")
        out = H.protect_face(other, photo, ["dark_skin"], 1.0, upload_dir=tmp_path / "other-files")
        assert "First protected image" in out[4], out[4]
        other.predict(api_name="/accept")
        tried = _no_copy_served_or_stored(demo, gradio_tmp, tmp_path / "space", out, photo, png, square)
        images = list(H.image_files(gradio_tmp, tmp_path / "space"))
        print(f"face mode: {tried} file route(s) tried, {len(images)} image file(s) on the server (the protected "
              "releases), 0 pixel-identical to the upload or to its square")


def _no_copy_served_or_stored(demo, gradio_tmp: Path, space: Path, answer, *copies) -> int:
    """Another client asks the file route for every file under Gradio's temporary folder and every path in the
    person's answer; the host decodes every file. Neither may find any of ``copies`` (pixels, or PNG bytes)."""
    pixels = [c for c in copies if isinstance(c, np.ndarray)]
    raw = [c for c in copies if isinstance(c, bytes)]
    routes = [*(p for p in gradio_tmp.rglob("*") if p.is_file()), *H.paths_in(answer)]
    served = [p for p in routes for code, body in [H.fetch_file_route(demo.local_url, p)]
              if code == 200 and (any(r[:4096] in body for r in raw) or any(_decodes_to(body, c) for c in pixels))]
    assert served == [], f"a client with no session fetched the upload: {served}"
    for upload in pixels:
        images, identical, with_bytes = _copies_of(upload, raw[0], [gradio_tmp, space])
        assert identical == [] and with_bytes == [], (identical, with_bytes)
    return len(routes)


def _decodes_to(body: bytes, pixels: np.ndarray) -> bool:
    import io

    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(body)) as im:
            got = np.asarray(im.convert("RGB"))
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        return False
    return got.shape == pixels.shape and np.array_equal(got, pixels)
