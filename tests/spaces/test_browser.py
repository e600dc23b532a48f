"""The Space in a real browser: headless Chromium (Debian's ``chromium`` package) driven over the Chrome DevTools
Protocol by a tiny stdlib websocket client, so no browser is downloaded and no test dependency is added.

Skipped cleanly where no Chromium is installed (``apt-get install -y chromium``; or point ``DPDIFFUSION_CHROMIUM``
at a binary). Screenshots are kept in ``tests/artifacts/`` and their paths printed.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import PIL.Image
import pytest
import torch

gr = pytest.importorskip("gradio")

SPACES = Path(__file__).resolve().parents[2] / "spaces"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _chromium() -> str | None:
    for candidate in (os.environ.get("DPDIFFUSION_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install -y chromium)"),
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),
]


def load_space_module():
    name = "dpdiffusion_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SPACES / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ------------------------------------------------------------------------------------------------ a CDP client
class WebSocket:
    """Just enough of RFC 6455 for CDP on localhost: masked text frames out; fragments, ping and close in."""

    def __init__(self, url: str, timeout: float = 120.0):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake failed: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return bytes(buf)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytearray([0x80 | opcode])
        if n < 126:
            header.append(0x80 | n)
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
        self.sock.sendall(bytes(header) + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:
                self._send_frame(0xA, data)
                continue
            if opcode == 0xA:
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Browser:
    """Headless Chromium with one page: `goto`, `evaluate`, `wait_for`, `set_files`, `click`, `screenshot`."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 1500):
        self.profile = tempfile.mkdtemp(prefix="dp-chromium-")
        self.ws = None
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url, deadline, lines = None, time.time() + 90, []
        while url is None and time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            url = match.group(1) if match else None
        if url is None:
            self.close()
            raise RuntimeError("chromium did not start: " + "".join(lines[-20:]))
        self.ws = WebSocket(url)
        self._id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, *, session: bool = False, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def goto(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 90.0, interval: float = 0.2):
        deadline = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(f"timed out waiting for {expression!r}")
            time.sleep(interval)

    def set_files(self, selector: str, paths: list) -> None:
        found = self.call("Runtime.evaluate", session=True,
                          expression=f"document.querySelector({json.dumps(selector)})")
        object_id = found["result"].get("objectId")
        if object_id is None:
            raise RuntimeError(f"no element matches {selector!r}")
        self.call("DOM.setFileInputFiles", session=True, files=[str(p) for p in paths], objectId=object_id)

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self.ws is not None:
                try:
                    self.call("Browser.close")
                except Exception:
                    pass
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ page helpers
def number(browser: Browser, elem_id: str) -> float | None:
    text = browser.evaluate(f"(document.querySelector('#{elem_id} input') || {{}}).value")
    return float(text) if text not in (None, "") else None


def status(browser: Browser) -> str:
    return browser.evaluate("(document.querySelector('#dp-status') || {}).innerText || ''")


def wait_for_status(browser: Browser, pattern: str, *, timeout: float = 90.0) -> str:
    expr = f"/{pattern}/.test((document.querySelector('#dp-status') || {{}}).innerText || '')"
    browser.wait_for(expr, timeout=timeout)
    return status(browser)


def set_number(browser: Browser, elem_id: str, value: float) -> None:
    browser.evaluate(f"""(() => {{ const i = document.querySelector('#{elem_id} input'); i.value = '{value}';
        i.dispatchEvent(new Event('input', {{bubbles: true}})); i.dispatchEvent(new Event('change', {{bubbles: true}}));
        return true; }})()""")


def shown(browser: Browser, selector: str) -> bool:
    """Whether an element matching ``selector`` is on the page and laid out (not hidden)."""
    return browser.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            "return !!e && e.getClientRects().length > 0; })()")


def enabled(browser: Browser, selector: str) -> bool:
    return browser.evaluate(f"!document.querySelector({json.dumps(selector)}).disabled")


def wait_for_figures(browser: Browser, *, timeout: float = 30.0) -> None:
    """Wait until the page shows the figures of a release (hidden, a dash instead, before the first one)."""
    browser.wait_for("(() => { const e = document.querySelector('#dp-session-spent input'); "
                     "return !!e && e.getClientRects().length > 0; })()", timeout=timeout)


def press(browser: Browser, selector: str, *, timeout: float = 30.0) -> None:
    """Click a button once the page has enabled it (the judgement buttons follow each answer)."""
    browser.wait_for(f"!document.querySelector({json.dumps(selector)}).disabled", timeout=timeout)
    browser.click(selector)


def load_page_and_upload(browser: Browser, url: str, image_path: Path) -> None:
    browser.goto(url)
    browser.wait_for("!!document.querySelector('#dp-original input[type=file]') && "
                     "!!document.querySelector('#dp-protect')", timeout=120)
    browser.set_files("#dp-original input[type=file]", [image_path])
    browser.wait_for("!!document.querySelector('#dp-original img.dp-preview')", timeout=30)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def served(dummy_pipe, tmp_path, monkeypatch):
    """The app on the tiny pipeline (2 steps), or on ``$DPDIFFUSION_SPACE_TEST_MODEL`` (25 steps) for a screenshot
    of a real model, e.g. ``DPDIFFUSION_SPACE_TEST_MODEL=dpdiffusion/default_model``."""
    app = load_space_module()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    pipe, steps, name = dummy_pipe, 2, "tiny test pipeline"
    if os.environ.get("DPDIFFUSION_SPACE_TEST_MODEL"):
        from dpdiffusion import DPDiffusionPipeline

        name = os.environ["DPDIFFUSION_SPACE_TEST_MODEL"]
        pipe, steps = DPDiffusionPipeline.from_pretrained(name, use_safetensors=True), 25
        pipe.set_progress_bar_config(disable=True)
    demo = app.build_demo(pipe, ledger_dir=tmp_path / "ledger", feedback_dir=tmp_path / "feedback",
                          budget_epsilon=3.0, start_epsilon=1.0, num_inference_steps=steps,
                          model_name=name)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    browser = Browser(CHROMIUM)
    try:
        yield app, demo, browser
    finally:
        browser.close()
        demo.close()


def test_feedback_round_in_the_browser(served, tmp_path):
    """Upload a face, Protect, press "more privacy" twice: epsilon falls and this session's spend grows each time;
    then a fresh page with the same picture continues the same face's budget: a release that would exceed it is
    refused without a figure of the first session (the ledger does not change), a cheap one is charged to the same
    subject and the new page shows only its own spend."""
    app, demo, browser = served
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    upload = tmp_path / "face.png"
    PIL.Image.fromarray(make_synthfaces_arrays(1, image_size=200, seed=11)[0][0]).save(upload)
    ledger = demo.dp_space.ledger

    # 1. a feedback round
    load_page_and_upload(browser, demo.local_url, upload)
    browser.click("#dp-protect")
    wait_for_status(browser, "First protected image")
    wait_for_figures(browser)
    epsilons, spent = [number(browser, "dp-epsilon")], [number(browser, "dp-session-spent")]
    for expected in ("0.5", "0.25"):
        press(browser, "#dp-more-privacy")
        wait_for_status(browser, f"More privacy at ε={re.escape(expected)}")
        epsilons.append(number(browser, "dp-epsilon"))
        spent.append(number(browser, "dp-session-spent"))
    assert epsilons == [1.0, 0.5, 0.25]
    assert spent[0] < spent[1] < spent[2], spent
    assert browser.evaluate("!!document.querySelector('#dp-protected img')")
    shot = browser.screenshot(ARTIFACTS / "space_feedback_round.png")
    print(f"\nscreenshot after a feedback round: {shot}")
    subjects = ledger.subjects()  # the picture, and each face the detector finds in it: every release charges all
    assert subjects and all(len(ledger.history(s)) == 3 for s in subjects), subjects
    subject = subjects[0]
    assert spent[2] == pytest.approx(ledger.spent(subject), rel=1e-3)  # this session's releases are all of them
    records = demo.dp_space.feedback_log.records()
    assert [(r["verdict"], r["epsilon"]) for r in records] == [("more_privacy", 1.0), ("more_privacy", 0.5)]

    # 2. a fresh page with the same picture is the same face: no fresh budget. Epsilon 2.9 on its own would fit a
    # new subject's budget of 3; composed with the three releases above it does not, so it is refused
    load_page_and_upload(browser, demo.local_url, upload)
    set_number(browser, "dp-start-epsilon", 2.9)
    before = (ledger.history(subject), ledger.spent(subject), len(demo.dp_space.feedback_log.records()))
    browser.click("#dp-protect")
    text = wait_for_status(browser, "Refused")
    assert "does not fit" in text and "nothing was charged" in text
    assert f"{ledger.spent(subject):.4g}" not in text and f"{3.0 - ledger.spent(subject):.4g}" not in text
    assert ledger.subjects() == subjects
    assert (ledger.history(subject), ledger.spent(subject), len(demo.dp_space.feedback_log.records())) == before
    shot = browser.screenshot(ARTIFACTS / "space_budget_refused.png")
    print(f"screenshot of the refused release: {shot}")
    # ... while a cheap release on the fresh page is charged to the same face
    set_number(browser, "dp-start-epsilon", 0.5)
    browser.click("#dp-protect")
    wait_for_status(browser, "First protected image at ε=0.5")
    wait_for_figures(browser)
    assert ledger.subjects() == subjects and all(len(ledger.history(s)) == 4 for s in subjects)
    assert number(browser, "dp-session-spent") == pytest.approx(0.5, rel=1e-3)  # this page's own release only

    # 3. the upload never reached the server's disk (Gradio's cache, the ledger, the feedback)
    raw = upload.read_bytes()
    for root in (tmp_path / "gradio", tmp_path / "ledger", tmp_path / "feedback"):
        for path in (p for p in root.rglob("*") if p.is_file()):
            assert raw[:2048] not in path.read_bytes(), path
            if path.suffix.lower() in (".png", ".webp"):
                assert PIL.Image.open(path).size != (200, 200), path


def test_the_page_before_and_after_a_release(dummy_components, tmp_path, monkeypatch):
    """Issue 33: with a model that knows only synthetic faces the page says so (a banner with the two commands that
    serve real faces); before a release it shows no figure (a dash, not 0) and the judgement buttons are disabled;
    the Protect button sits above the weights, which are shown for the ticked attributes only; a release shows its
    figures and enables the buttons; after "accept" they are disabled and the table offers no next release."""
    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays
    from dpdiffusion.models.training_domain import synthfaces_domain

    app = load_space_module()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    pipe = DPDiffusionPipeline(**dummy_components, training_domain=synthfaces_domain(16))
    pipe.set_progress_bar_config(disable=True)
    demo = app.build_demo(pipe, ledger_dir=tmp_path / "ledger", feedback_dir=tmp_path / "feedback",
                          budget_epsilon=3.0, start_epsilon=1.0, num_inference_steps=2,
                          model_name="embedded default (SynthFaces)")
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    browser = Browser(CHROMIUM)
    judge = ("#dp-more-privacy", "#dp-more-detail", "#dp-accept")
    try:
        browser.goto(demo.local_url)
        browser.wait_for("!!document.querySelector('#dp-protect') && !!document.querySelector('#dp-no-figures')",
                         timeout=120)
        banner = browser.evaluate("document.querySelector('#dp-domain-banner').innerText")
        assert "only synthetic faces" in banner and "SynthFaces, 16 px, synthetic" in banner, banner
        assert "scripts/convert_diffae_checkpoint.py" in banner and "dpdiffusion space --model" in banner, banner
        # before a face is loaded: no figure (a dash), nothing to judge
        assert browser.evaluate("document.querySelector('#dp-no-figures').innerText").count("–") == 2
        assert not shown(browser, "#dp-epsilon input") and not shown(browser, "#dp-session-spent input")
        assert not any(enabled(browser, b) for b in judge)
        # the weights of the ticked attributes only, below the Protect button
        names = list(pipe.attribute_directions.names)
        ticked = demo.dp_space.default_attributes
        assert [shown(browser, f"#dp-weight-{n}") for n in names] == [n in ticked for n in names]
        top = "document.querySelector('{}').getBoundingClientRect().top"
        weight = f"#dp-weight-{ticked[0]}"
        assert browser.evaluate(top.format("#dp-protect")) < browser.evaluate(top.format(weight))
        extra = next(n for n in names if n not in ticked)
        box = f"#dp-attributes input[type=checkbox][name={json.dumps(extra)}]"
        browser.click(box)
        browser.wait_for(f"(() => {{ const e = document.querySelector('#dp-weight-{extra}'); "
                         "return !!e && e.getClientRects().length > 0; })()", timeout=30)
        browser.click(box)
        browser.wait_for(f"(() => {{ const e = document.querySelector('#dp-weight-{extra}'); "
                         "return !e || e.getClientRects().length === 0; })()", timeout=30)

        upload = tmp_path / "face.png"
        PIL.Image.fromarray(make_synthfaces_arrays(1, image_size=200, seed=11)[0][0]).save(upload)
        browser.set_files("#dp-original input[type=file]", [upload])
        browser.wait_for("!!document.querySelector('#dp-original img.dp-preview')", timeout=30)
        assert not shown(browser, "#dp-epsilon input") and not any(enabled(browser, b) for b in judge)
        shot = browser.screenshot(ARTIFACTS / "space_before_release.png")
        print(f"\nscreenshot before a release: {shot}")

        # a release: its figures, and the judgements
        browser.click("#dp-protect")
        wait_for_status(browser, "First protected image")
        wait_for_figures(browser)
        browser.wait_for("!document.querySelector('#dp-accept').disabled", timeout=30)
        assert all(enabled(browser, b) for b in judge) and not shown(browser, "#dp-no-figures")
        assert number(browser, "dp-epsilon") == 1.0
        assert number(browser, "dp-session-spent") == pytest.approx(1.0, rel=1e-3)
        assert "next release" in browser.evaluate("document.querySelector('#dp-figures').innerText")
        shot = browser.screenshot(ARTIFACTS / "space_after_release.png")
        print(f"screenshot after a release: {shot}")

        # accepted: nothing more to judge, no next release offered; the accepted image's figures stay
        press(browser, "#dp-accept")
        wait_for_status(browser, "Accepted")
        browser.wait_for("document.querySelector('#dp-accept').disabled", timeout=30)
        assert not any(enabled(browser, b) for b in judge)
        figures = browser.evaluate("document.querySelector('#dp-figures').innerText")
        assert "ε of this image" in figures and "next release" not in figures, figures
        assert number(browser, "dp-epsilon") == 1.0
        shot = browser.screenshot(ARTIFACTS / "space_accepted.png")
        print(f"screenshot after accept: {shot}")
    finally:
        browser.close()
        demo.close()
