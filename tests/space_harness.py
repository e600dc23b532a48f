"""Helpers shared by the Space's tests and its attacker tests (``tests/attacks/test_space_*.py``): serve the app on a
tiny pipeline, and talk to it as its page does, through `gradio_client`.

Import it as ``import space_harness as H`` (``tests/`` is on the path: ``tests/conftest.py``); it is not a test module. The helpers only use what an
actor outside the server has: the page's API, its answers and Gradio's routes.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image

SPACES = Path(__file__).resolve().parents[1] / "spaces"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def load_space_module():
    """``spaces/app.py`` as the module ``dpdiffusion_space_app`` (``spaces/`` is not a package)."""
    name = "dpdiffusion_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SPACES / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def tiny_pipe(image_size: int = 32):
    """The 32 px dummy pipeline of ``tests/dpd_test_components.py`` (random weights; progress bars off)."""
    from dpd_test_components import get_dummy_components

    from dpdiffusion import DPDiffusionPipeline

    pipe = DPDiffusionPipeline(**get_dummy_components(image_size=image_size))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def served(pipe, space_dir: Path, **build_kwargs):
    """The app built on ``pipe`` with its folders under ``space_dir`` (``ledger/``, ``feedback/``), launched on
    127.0.0.1; yields the `gr.Blocks` (``.local_url``, ``.dp_space``). Set ``GRADIO_TEMP_DIR`` before."""
    app = load_space_module()
    build_kwargs.setdefault("num_inference_steps", 1)
    demo = app.build_demo(pipe, ledger_dir=space_dir / "ledger", feedback_dir=space_dir / "feedback",
                          **build_kwargs)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        yield demo
    finally:
        demo.close()


def client(demo, download_dir: Path):
    """A new `gradio_client.Client` of the served app: a new browser session (no state shared with others)."""
    from gradio_client import Client

    return Client(demo.local_url, verbose=False, download_files=str(download_dir))


def page_data_url(image: np.ndarray, fmt: str = "PNG", quality: int = 90) -> str:
    """What the page's script sends for a picture file: a data URL (the page shrinks a picture larger than 1024 px on
    its long side first; the pictures of these tests are smaller). ``fmt="JPEG"``: the picture re-saved as JPEG."""
    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _takes_a_file(cl, api_name: str) -> bool:
    info = cl.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]["parameters"][0]
    return info.get("component") in ("Image", "File", "AnnotatedImage")


def send_picture(cl, api_name: str, image: np.ndarray, *args, upload_dir: Path, fmt: str = "PNG"):
    """Call ``api_name`` with ``image`` the way the page sends it: as a data URL where the endpoint takes one, or as
    an uploaded file where its input is a Gradio file component (what the page did before the photo mode read its
    photo in the browser)."""
    if _takes_a_file(cl, api_name):
        from gradio_client import handle_file

        upload_dir.mkdir(parents=True, exist_ok=True)
        path = upload_dir / f"upload.{fmt.lower()}"
        PIL.Image.fromarray(image).save(path, format=fmt)
        return cl.predict(handle_file(str(path)), *args, api_name=api_name)
    return cl.predict(page_data_url(image, fmt), *args, api_name=api_name)


def protect_face(cl, image: np.ndarray, attributes, epsilon: float, *, upload_dir: Path, fmt: str = "PNG"):
    """The face mode's "Protect" (all weights 1): ``(image, epsilon, spent, figures, status, report)``."""
    params = cl.view_api(print_info=False, return_format="dict")["named_endpoints"]["/protect"]["parameters"]
    weights = [1.0] * (len(params) - 3)
    return send_picture(cl, "/protect", image, attributes, epsilon, *weights, upload_dir=upload_dir, fmt=fmt)


def protect_photo(cl, image: np.ndarray, attributes, epsilon: float, *, upload_dir: Path, fmt: str = "PNG"):
    """The photo mode's "Protect the faces": ``(protected photo, status)``."""
    return send_picture(cl, "/protect_photo", image, attributes, epsilon, upload_dir=upload_dir, fmt=fmt)


def texts(value) -> list:
    """Every string in an answer (nested tuples, lists and dicts), data URLs left out."""
    if isinstance(value, str):
        return [] if value.startswith("data:") else [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in texts(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in texts(v)]
    return []


def numbers(value) -> list:
    """Every number in an answer: the numbers themselves and those written in its strings."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)] if math.isfinite(value) else []
    found = []
    for t in texts(value):
        found += [float(m) for m in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?", t)]
    if isinstance(value, dict):
        found += [n for v in value.values() if not isinstance(v, str) for n in numbers(v)]
    elif isinstance(value, (list, tuple)):
        found += [n for v in value if not isinstance(v, str) for n in numbers(v)]
    return found


def shows(value, figure: float) -> bool:
    """Whether ``figure`` appears in an answer at any of the precisions a page would print it (2 to 6 significant
    digits, or as a float)."""
    candidates = {round(figure, 12)} | {float(f"{figure:.{d}g}") for d in range(2, 7)}
    return any(any(math.isclose(n, c, rel_tol=1e-12, abs_tol=1e-12) for c in candidates) for n in numbers(value))


def image_files(*roots: Path):
    """``(path, pixels)`` of every file under ``roots`` that PIL can decode as an image (any name), RGB uint8."""
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            try:
                with PIL.Image.open(path) as im:
                    yield path, np.asarray(im.convert("RGB"))
            except (PIL.UnidentifiedImageError, OSError, ValueError):
                continue


def fetch_file_route(base_url: str, path) -> tuple:
    """``GET /gradio_api/file=<path>`` as a client with no session: ``(status, bytes)``."""
    url = base_url.rstrip("/") + "/gradio_api/file=" + urllib.parse.quote(str(path))
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def paths_in(value) -> list:
    """Every file path or Gradio file URL a client sees in an answer."""
    found = []
    for t in texts(value):
        if "/gradio_api/file=" in t:
            found.append(urllib.parse.unquote(t.split("/gradio_api/file=", 1)[1]))
        elif t.startswith("/") and Path(t).exists():
            found.append(t)
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        found.append(value["path"])
    return found


def feedback_records(space_dir: Path) -> list:
    """The feedback dataset's records, as a reader of the pushed dataset sees them (``metadata.jsonl``)."""
    path = space_dir / "feedback" / "metadata.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keyed_space(pipe, folder: Path, *, budget_epsilon: float, secret: bytes = bytes(range(32))):
    """The Space as `build_demo` builds it (`DPSpace`, in process), with the face keying injected under a fixed secret
    (the keyed LSH's directions depend on the secret: fixed, the figures are reproducible)."""
    from dpdiffusion.privacy.ledger import PrivacyLedger
    from dpdiffusion.space.app import DPSpace, FeedbackLog, SpaceConfig
    from dpdiffusion.space.face_identity import FaceIdentityKeyer, open_subject_index

    config = SpaceConfig(budget_epsilon=budget_epsilon, num_inference_steps=2)
    ledger = PrivacyLedger(folder / "ledger.sqlite", budget_epsilon=budget_epsilon, delta=config.delta)
    keyer = FaceIdentityKeyer(secret, open_subject_index(folder, secret, ledger=ledger))
    return DPSpace(pipe, ledger=ledger, feedback=FeedbackLog(folder / "feedback"), config=config,
                   model_name="dummy", subjects=keyer)


def backdrop_portrait(face: np.ndarray, side: int = 512, frac: float = 0.45) -> np.ndarray:
    """A grey face (an LFW crop) as a head on a photographer's blue backdrop, above dark shoulders."""
    yy, xx = np.mgrid[:side, :side] / side
    v = 1 - 0.5 * ((yy - 0.45) ** 2 + (xx - 0.5) ** 2)
    img = np.clip(np.stack([60 * v, 110 * v, 170 * v], -1), 0, 255).astype(np.uint8)
    s = int(frac * side)
    head = np.asarray(PIL.Image.fromarray(face).resize((s, s), PIL.Image.BICUBIC))
    y, x = np.mgrid[:s, :s]
    mask = (((y - s / 2) / (s / 2)) ** 2 + ((x - s / 2) / (s * 0.42)) ** 2) < 1
    r0 = int(side / 2 - s / 2 - 0.05 * side)
    c0 = int(side / 2 - s / 2)
    img[r0 + int(0.85 * s):, max(0, c0 - s // 4):c0 + s + s // 4] = (40, 40, 50)
    img[r0:r0 + s, c0:c0 + s][mask] = np.stack([head] * 3, -1)[mask]
    return img
