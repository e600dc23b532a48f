"""Attackers: another client of the same Space, and the Space's host (threat model: channels "the Space's files and
file routes", "Gradio's upload route", "Gradio's deep-link route and each session's stored page config").

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

`test_no_mode_leaves_a_copy_of_the_upload` fails on commit ae36aae, where the photo mode took its photo through
``gr.Image(sources=["upload"])``: the upload landed in Gradio's cache as a byte-identical file, which a client with no
session fetched (200). The other three fail on commit 4c74bf1 (an attacker review of the Space):

- `test_an_upload_sent_as_a_file_is_neither_stored_nor_served`: ``POST /gradio_api/upload`` is mounted on every
  Gradio app and `gradio_client` sends every ``handle_file(...)`` argument through it before the call, whatever the
  endpoint's component; the Space then refused the value, but the original was already in
  ``GRADIO_TEMP_DIR/<hash>/me.png``, and ``GET /gradio_api/file=<that path>`` returned it (200) to a client with no
  session. Now the Space launches with ``max_file_size=0``: the route answers 413 before it writes a byte.
- `test_a_session_keeps_no_copy_of_the_upload_after_its_answer` (the host, who reads the process memory): Gradio
  copied every input and output value into the session's stored page config (``SessionState.config_values``, kept
  until 10,000 newer sessions push it out, not dropped with the session's ``gr.State``), so the upload and the photo
  mode's answer (the upload's pixels outside the faces) stayed in memory after the answer, and the queue held on to
  the last request (its body, parsed and raw). Now the Space sets those values back to their initial value as
  Gradio stores them and drops the request's body once it is parsed; the face mode keeps its square in the session's
  ``gr.State`` only, dropped when the tab closes.
- `test_the_deep_link_route_hands_no_upload_to_another_client`: ``GET /gradio_api/deep_link?session_hash=H``
  (mounted whether or not the page has a deep-link button, no login) wrote that page config, upload included, to
  ``GRADIO_TEMP_DIR/deep_links/<id>/state.json`` (never deleted) and ``GET /config?deep_link=<id>`` served it to any
  client holding the id. Now the route is removed before the server answers any request.
"""

from __future__ import annotations

import base64
import gc
import http.client
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("dlib")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:::gradio.queueing")]


import space_harness as H  # noqa: E402  (tests/space_harness.py)


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


# -------------------------------------------------------------------- a file sent to Gradio's upload route (4c74bf1)
def _upload(base: str, name: str, data: bytes):
    """``POST /gradio_api/upload`` as gradio_client sends a ``handle_file`` argument: (status, server paths)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{base}/gradio_api/upload", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, []


def test_an_upload_sent_as_a_file_is_neither_stored_nor_served(tmp_path, monkeypatch):
    import PIL.Image
    from skimage import data

    gradio_tmp = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    buf = io.BytesIO()
    PIL.Image.fromarray(data.astronaut()).save(buf, format="PNG")
    png = buf.getvalue()
    with H.served(H.tiny_pipe(), tmp_path / "space", budget_epsilon=5.0) as demo:
        base = demo.local_url.rstrip("/")
        status, paths = _upload(base, "me.png", png)
        person = H.client(demo, tmp_path / "person")
        for path in paths:  # the call gradio_client makes next: refused by the Space
            file_data = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "me.png"}
            _, text = person.predict(file_data, ["dark_skin"], 1.0, api_name="/protect_photo")
            assert "Refused" in text, text
        served = [p for p in paths if H.fetch_file_route(base, p)[0] == 200]  # another client, no session
        stored = [p for p in gradio_tmp.rglob("*") if p.is_file() and png[:4096] in p.read_bytes()]
        assert not served, f"the file route served the upload to another client: {served} (upload route: {status})"
        assert not stored, f"the upload route left the original in Gradio's cache: {stored}"
        assert status == 413 and paths == [], (status, paths)
        print(f"\nPOST /gradio_api/upload with the photo: {status}; {len(stored)} file(s) holding it")


# ------------------------------------------------------------- what the server keeps after an answer (4c74bf1)
def _holds(value, text: str) -> bool:
    return text in json.dumps(value, default=str)


def _person_protects_a_photo(demo, tmp_path):
    from skimage import data

    photo = data.astronaut()
    url = H.page_data_url(photo)
    person = H.client(demo, tmp_path / "person")
    answer, status = person.predict(url, ["dark_skin"], 0.5, api_name="/protect_photo")
    assert "Protected **1 face(s)**" in status, status
    return person, url, answer


def _queued_requests_holding(text: str) -> list:
    """Gradio's queued events (their parsed and raw request bodies) still holding ``text``: what the host reads in
    the server's memory. (The client runs in this process too, so only the server's own objects are read.)"""
    from gradio.queueing import Event

    gc.collect()
    found = []
    for event in [o for o in gc.get_objects() if type(o) is Event]:
        request = getattr(event, "request", None)
        parts = [getattr(getattr(event, "data", None), "data", None), getattr(request, "__dict__", {}).get("_json"),
                 getattr(request, "__dict__", {}).get("_body")]
        if any(p is not None and (text.encode() in p if isinstance(p, bytes) else _holds(p, text)) for p in parts):
            found.append(event._id)
    return found


def test_a_session_keeps_no_copy_of_the_upload_after_its_answer(tmp_path, monkeypatch):
    from skimage import data

    from dpdiffusion.space.images import FACE_SIDE

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with H.served(H.tiny_pipe(), tmp_path / "space", budget_epsilon=5.0) as demo:
        # the photo mode: nothing of the photo, nor of its answer, once it has answered
        person, url, answer = _person_protects_a_photo(demo, tmp_path)
        protected = answer["image"]
        session = demo.state_holder.session_data[person.session_hash]
        kept = [k for k, v in session.config_values.items() if _holds(v, url) or _holds(v, protected)]
        assert not kept, (f"the photo mode's upload or answer is still held in the session's stored config "
                          f"(component ids {kept}) after its answer: the page says it keeps nothing once it answered")
        assert not _queued_requests_holding(url), "Gradio's queue still holds the request with the photo"
        assert not [v for v in session.state_data.values() if v is not None and _holds(vars(v), url)]
        # the face mode: the session's gr.State holds the picture's centre square (no more), nothing else holds it
        other = H.client(demo, tmp_path / "other")
        picture = data.astronaut()[:, ::-1].copy()
        face_url = H.page_data_url(picture)
        out = H.protect_face(other, picture, ["dark_skin"], 1.0, upload_dir=tmp_path / "other-files")
        assert "First protected image" in out[4], out[4]
        session = demo.state_holder.session_data[other.session_hash]
        assert not [k for k, v in session.config_values.items() if _holds(v, face_url)]
        assert not _queued_requests_holding(face_url), "Gradio's queue still holds the request with the picture"
        states = [v for v in session.state_data.values() if getattr(v, "original", None) is not None]
        assert len(states) == 1 and max(states[0].original.shape[:2]) <= FACE_SIDE, [s.original.shape for s in states]
        # the person closes the tab: the page's heartbeat connection (``/gradio_api/heartbeat/<session>``) ends
        host, port = urllib.parse.urlsplit(demo.local_url).hostname, urllib.parse.urlsplit(demo.local_url).port
        tab = http.client.HTTPConnection(host, port, timeout=20)
        tab.request("GET", f"/gradio_api/heartbeat/{other.session_hash}")
        assert tab.getresponse().read(5) == b"data:"
        tab.close()
        closed, deadline = time.time(), time.time() + 20
        while session.state_data and time.time() < deadline:
            time.sleep(0.05)
        assert not session.state_data, "the face mode's picture outlived the closed tab"
        print(f"\nafter the answers: 0 copies of either upload in the page config or the queue; the face mode's "
              f"square ({states[0].original.shape[0]} px, in the session's state) dropped {time.time() - closed:.2f} s "
              "after the tab closed")


# ----------------------------------------------------------------------------- the deep-link route (4c74bf1)
def test_the_deep_link_route_hands_no_upload_to_another_client(tmp_path, monkeypatch):
    gradio_tmp = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    with H.served(H.tiny_pipe(), tmp_path / "space", budget_epsilon=5.0) as demo:
        person, url, _ = _person_protects_a_photo(demo, tmp_path)
        base = demo.local_url.rstrip("/")
        # another client, no session of its own, that has learnt the person's session hash
        try:
            with urllib.request.urlopen(f"{base}/gradio_api/deep_link?session_hash={person.session_hash}",
                                        timeout=20) as r:
                status, link = r.status, json.loads(r.read() or b'""')
        except urllib.error.HTTPError as err:
            status, link = err.code, ""
        served = b""
        if link:
            with urllib.request.urlopen(f"{base}/config?deep_link={link}", timeout=20) as r:
                served = r.read()
        png = base64.b64decode(url.split(",", 1)[1])
        on_disk = [p for p in gradio_tmp.rglob("*") if p.is_file()
                   and (url.split(",", 1)[1][:4096].encode() in p.read_bytes() or png[:4096] in p.read_bytes())]
        leaked = url.encode() in served
        assert not leaked, "GET /config?deep_link=<id> served the person's upload to another client"
        assert not on_disk, f"the deep-link route wrote the upload to disk: {on_disk}"
        assert status == 404 and not (gradio_tmp / "deep_links").exists(), status
        print(f"\nGET /gradio_api/deep_link: {status}; nothing under deep_links/")
