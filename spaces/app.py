"""The dpdiffusion Space: a person looks at a protected face and decides how much privacy is enough.

The loop: load a face (upload, or a SynthFaces sample); choose the protected attributes and their weights; the app
releases a protected image at a starting epsilon and shows it next to the original with its privacy figures. The
person answers "more privacy", "more detail" or "accept"; an `EpsilonController` (``spaces/controller.py``: a
multiplicative step until both sides are bracketed, then bisection in log-epsilon) picks the next epsilon and the
app releases again. Every release is charged to the subject's `PrivacyLedger` *before* its image is shown; a
release that would exceed the subject's budget is refused with the reason and charges nothing. "accept" ends the
subject's session with a final report.

Privacy of the upload. The upload never reaches the server's disk: the page reads the file in the browser, centre
crops and shrinks it to ``BROWSER_SIDE`` px there, and sends the pixels as a data URL inside each request (Gradio's
file upload, which writes a temporary file, is not used). The server keeps the decoded pixels only in the
session's memory (`gr.State`, dropped when the tab closes or after ``SESSION_TTL_S``); they are never written to
disk or logged. Gradio's run history (which would keep inputs in the browser's storage) is turned off. What *is*
stored: each judgement (epsilon, attributes, weights, verdict and the *protected* image) in a local dataset
(``feedback_dir/metadata.jsonl`` and ``feedback_dir/images/*.png``, the ``imagefolder`` layout that
`datasets.load_dataset` reads), optionally pushed to a Hub dataset repo by `huggingface_hub.CommitScheduler`.

Run locally with ``dpdiffusion space`` (or ``python spaces/app.py --port 7860``). Environment variables:
``DPDIFFUSION_SPACE_MODEL`` (pipeline folder or Hub repo id; default: the embedded ``DEFAULT_MODEL``),
``DPDIFFUSION_SPACE_DIR`` (where the ledger and the feedback live), ``DPDIFFUSION_FEEDBACK_REPO`` (a Hub dataset
repo for the feedback; needs ``HF_TOKEN`` or a saved token), ``DPDIFFUSION_SPACE_BUDGET_EPSILON``,
``DPDIFFUSION_SPACE_START_EPSILON``, ``DPDIFFUSION_SPACE_STEPS``, ``DPDIFFUSION_SPACE_TORCH_THREADS``.

This file is plumbing: every privacy number comes from `dpdiffusion` (the pipeline's calibration and report, the
ledger's composition); nothing here derives one.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import PIL.Image

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # `dpdiffusion space` runs this file with runpy, which does not add its folder
    sys.path.insert(0, str(_HERE))

from controller import EpsilonController  # noqa: E402

logger = logging.getLogger("dpdiffusion.space")

ENV_MODEL = "DPDIFFUSION_SPACE_MODEL"
ENV_DIR = "DPDIFFUSION_SPACE_DIR"
ENV_FEEDBACK_REPO = "DPDIFFUSION_FEEDBACK_REPO"
ENV_BUDGET = "DPDIFFUSION_SPACE_BUDGET_EPSILON"
ENV_START = "DPDIFFUSION_SPACE_START_EPSILON"
ENV_STEPS = "DPDIFFUSION_SPACE_STEPS"
ENV_THREADS = "DPDIFFUSION_SPACE_TORCH_THREADS"

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a file larger than this is refused (in the browser, and again on the server)
MAX_UPLOAD_PIXELS = 4096 * 4096  # ... and so is an image with more pixels than this
MIN_UPLOAD_SIDE = 8
BROWSER_SIDE = 256  # the page centre-crops and shrinks the upload to this many px before sending it
SESSION_TTL_S = 2 * 3600  # the session's memory (with the original's pixels) is dropped after this

VERDICT_LABELS = {"more_privacy": "more privacy", "more_detail": "more detail", "accept": "accept"}


# ---------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SpaceConfig:
    """Settings of one app instance (shared by all its users).

    Args:
        budget_epsilon (`float`): total epsilon each subject may spend over all of its releases.
        delta (`float`): delta of every release and of the ledger's accounting.
        start_epsilon (`float`): epsilon of a subject's first release (the person may change it).
        num_inference_steps (`int`): DDIM steps of each release.
        step_factor (`float`), min_epsilon (`float`), max_epsilon (`float`): the `EpsilonController`'s settings.
        secure_mode (`bool`): draw the privacy noise from the OS CSPRNG (set for real releases).
        num_samples (`int`), sample_seed (`int`), sample_size (`int`): the SynthFaces samples offered.
        max_concurrent_releases (`int`): releases generated at once; the rest wait in the queue (with progress).
    """

    budget_epsilon: float = 5.0
    delta: float = 1e-5
    start_epsilon: float = 1.0
    num_inference_steps: int = 25
    step_factor: float = 2.0
    min_epsilon: float = 0.01
    max_epsilon: float = 100.0
    secure_mode: bool = True
    num_samples: int = 12
    sample_seed: int = 2024
    sample_size: int = 128
    max_concurrent_releases: int = 1

    def __post_init__(self):
        if not 0.0 < self.budget_epsilon < math.inf:
            raise ValueError(f"budget_epsilon must be finite and > 0, got budget_epsilon={self.budget_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got delta={self.delta}")
        if not self.min_epsilon <= self.start_epsilon <= self.max_epsilon:
            raise ValueError(f"start_epsilon must be in [{self.min_epsilon}, {self.max_epsilon}], "
                             f"got start_epsilon={self.start_epsilon}")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {self.num_inference_steps!r}")
        if self.max_concurrent_releases < 1:
            raise ValueError(f"max_concurrent_releases must be >= 1, got {self.max_concurrent_releases}")


def default_space_dir() -> Path:
    """``$DPDIFFUSION_SPACE_DIR``, else ``/data/dpdiffusion-space`` on a Space with persistent storage, else
    ``~/.cache/dpdiffusion/space``."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/dpdiffusion-space")
    return Path.home() / ".cache" / "dpdiffusion" / "space"


def load_pipeline(model: Optional[str] = None):
    """The pipeline named by ``model``, ``$DPDIFFUSION_SPACE_MODEL``, or the embedded ``DEFAULT_MODEL``."""
    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.models.default import DEFAULT_MODEL, default_model_available

    model = model or os.environ.get(ENV_MODEL)
    if not model:
        if not default_model_available():
            raise ValueError(f"the embedded default model is not installed at {DEFAULT_MODEL}; train it with "
                             f"scripts/train_default_models.py --install or set {ENV_MODEL} to a pipeline")
        model = DEFAULT_MODEL
    pipe = DPDiffusionPipeline.from_pretrained(model, use_safetensors=True)  # never unpickle weights
    return pipe, model


# ---------------------------------------------------------------------------------------------------- images
_DATA_URL = re.compile(r"data:image/(?:png|jpeg|webp|gif|bmp);base64,")


def image_to_data_url(image: np.ndarray | PIL.Image.Image) -> str:
    """PNG data URL of an RGB image (how the page carries images without files)."""
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_original(value: Any) -> np.ndarray:
    """The original face as an RGB uint8 array (H, W, 3), at most ``BROWSER_SIDE`` px a side, in memory only.

    Args:
        value: a ``data:image/...;base64,`` URL (what the page sends), a PIL image or an (H, W, 3) uint8 array.

    Raises:
        ValueError: no image, not an image, larger than ``MAX_UPLOAD_BYTES`` or ``MAX_UPLOAD_PIXELS``, or a side
            below ``MIN_UPLOAD_SIDE``. The message never contains the image's content.
    """
    from dpdiffusion.data.images import resize_square, to_rgb

    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("no face loaded yet: upload an image or pick a SynthFaces sample")
    if isinstance(value, np.ndarray):
        if value.ndim != 3 or value.shape[-1] != 3 or value.dtype != np.uint8:
            raise ValueError(f"an image array must be (H, W, 3) uint8, got shape {value.shape} dtype {value.dtype}")
        image = PIL.Image.fromarray(value)
    elif isinstance(value, PIL.Image.Image):
        image = value
    elif isinstance(value, str):
        match = _DATA_URL.match(value)
        if match is None:
            raise ValueError("the image must arrive as a data:image/(png|jpeg|webp|gif|bmp);base64 URL")
        payload = value[match.end():]
        if len(payload) * 3 // 4 > MAX_UPLOAD_BYTES + 3:
            raise ValueError(f"the image is larger than the limit of {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the image data is not valid base64") from None
        try:
            image = PIL.Image.open(io.BytesIO(raw))  # lazy: reads the header only, so the size check comes first
        except (PIL.UnidentifiedImageError, OSError):
            raise ValueError("the data is not an image PIL can read") from None
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    width, height = image.size
    if width * height > MAX_UPLOAD_PIXELS:
        raise ValueError(f"the image is {width}x{height} px; at most {MAX_UPLOAD_PIXELS / 1e6:.1f} megapixels "
                         "are accepted")
    if min(width, height) < MIN_UPLOAD_SIDE:
        raise ValueError(f"the image is {width}x{height} px; each side must be at least {MIN_UPLOAD_SIDE} px")
    try:
        image.load()  # decode now (after the size checks), so that a truncated file fails here
        image = to_rgb(image)
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        raise ValueError("the image file is truncated or corrupt") from None
    image = resize_square(image, min(BROWSER_SIDE, width, height))
    return np.asarray(image, dtype=np.uint8).copy()


def upscale_for_display(image: np.ndarray, side: int = BROWSER_SIDE) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor (a 32 px release shown at about ``side`` px, pixels
    visible as pixels); the stored feedback image keeps the model's resolution."""
    factor = max(1, side // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _digest(original: np.ndarray) -> str:
    return hashlib.sha256(repr(original.shape).encode() + original.tobytes()).hexdigest()


@lru_cache(maxsize=4)
def synthfaces_samples(num_samples: int, seed: int, image_size: int) -> np.ndarray:
    """``num_samples`` SynthFaces renders (N, S, S, 3) uint8: synthetic faces anyone may try the app with."""
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    images, _ = make_synthfaces_arrays(num_samples, image_size=image_size, seed=seed)
    return images


# ---------------------------------------------------------------------------------------------------- feedback
class FeedbackLog:
    """Append-only log of judgements in the ``imagefolder`` layout, optionally pushed to a Hub dataset repo.

    ``folder/metadata.jsonl`` holds one JSON object per judgement (its ``file_name`` points at the protected image,
    ``folder/images/<record_id>.png``); ``datasets.load_dataset("imagefolder", data_dir=folder)`` loads it with an
    ``image`` column. The original image is never passed here. With ``repo_id`` and a token, a
    `huggingface_hub.CommitScheduler` pushes the folder to the dataset repo every ``every_minutes``; writes then
    hold the scheduler's lock so that a commit never sees a half-written line.

    Args:
        folder (`str` or `Path`): the local dataset folder (created if missing).
        repo_id (`str`, *optional*): Hub dataset repo, e.g. ``"user/dpdiffusion-feedback"``.
        token (`str`, *optional*): Hub token; without one nothing is pushed.
        every_minutes (`float`): push interval.
        private (`bool`): create the repo private.
    """

    def __init__(self, folder, *, repo_id: Optional[str] = None, token: Optional[str] = None,
                 every_minutes: float = 5.0, private: bool = True):
        self.folder = Path(folder)
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metadata.jsonl"
        self.scheduler = None
        if repo_id and token:
            from huggingface_hub import CommitScheduler

            self.scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=self.folder,
                                             every=every_minutes, token=token, private=private,
                                             allow_patterns=["metadata.jsonl", "images/*.png"])
            logger.info("feedback is pushed to the Hub dataset %s every %s min", repo_id, every_minutes)
        elif repo_id:
            logger.warning("%s=%s is set but no Hub token was found; feedback stays local", ENV_FEEDBACK_REPO,
                           repo_id)
        self._lock = self.scheduler.lock if self.scheduler is not None else threading.Lock()

    def append(self, record: dict, protected_image: np.ndarray) -> dict:
        """Write the protected image and one JSON line; returns the record with its ``file_name``."""
        record_id = uuid.uuid4().hex
        file_name = f"images/{record_id}.png"
        record = {"file_name": file_name, "record_id": record_id, **record}
        line = json.dumps(record, sort_keys=False, allow_nan=True) + "\n"
        with self._lock:
            PIL.Image.fromarray(np.asarray(protected_image, dtype=np.uint8)).save(self.folder / file_name)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return record

    def records(self) -> list[dict]:
        """All records, oldest first."""
        if not self.path.exists():
            return []
        with self._lock, open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def load_feedback_dataset(folder):
    """The feedback as a `datasets.Dataset` (columns: ``image`` and the record fields)."""
    import datasets

    return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")


# ---------------------------------------------------------------------------------------------------- session
@dataclass
class SubjectSession:
    """One browser session's state (in `gr.State`: server memory only, never on disk).

    ``original`` holds the decoded pixels of the face being protected; ``subject_id`` is a fresh uuid per face
    loaded in this session (the ledger's key); ``controller`` the epsilon search; ``protected`` and ``report``
    the image currently shown and its privacy figures.
    """

    subject_id: Optional[str] = None
    image_digest: Optional[str] = None
    original: Optional[np.ndarray] = None
    attributes: tuple = ()
    weights: tuple = ()
    controller: Optional[EpsilonController] = None
    protected: Optional[np.ndarray] = None
    report: Optional[dict] = None
    releases: int = 0
    finished: bool = False
    epsilons: tuple = ()
    spent_epsilon: float = 0.0


@dataclass
class View:
    """What a handler shows; ``None`` fields leave the page as it is (a refused request changes nothing)."""

    session: SubjectSession
    status: str
    level: str = "info"  # "info" | "refused"
    protected: Optional[np.ndarray] = None
    epsilon: Optional[float] = None
    budget_left: Optional[float] = None
    figures: Optional[str] = None
    report: Optional[str] = None
    latency_s: Optional[float] = None


def _fmt(x: float, digits: int = 4) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------------------------------------------- handlers
class DPSpace:
    """The app's logic, independent of Gradio: pure handlers from (inputs, session) to a `View`.

    Args:
        pipe (`DPDiffusionPipeline`): the model (shared, read-only).
        ledger (`PrivacyLedger`): per-subject budgets (sqlite, shared by all sessions and processes).
        feedback (`FeedbackLog`): where judgements go.
        config (`SpaceConfig`): settings.
        model_name (`str`): recorded with each judgement.
    """

    def __init__(self, pipe, *, ledger, feedback: FeedbackLog, config: SpaceConfig, model_name: str = "custom"):
        self.pipe = pipe
        self.ledger = ledger
        self.feedback_log = feedback
        self.config = config
        self.model_name = model_name
        if ledger.delta != config.delta:
            raise ValueError(f"the ledger's delta ({ledger.delta}) must equal the app's delta ({config.delta})")

    # -- helpers ----------------------------------------------------------------------------------------------
    @property
    def attribute_names(self) -> tuple:
        return tuple(self.pipe.attribute_directions.names)

    @property
    def default_attributes(self) -> list:
        from dpdiffusion.pipeline_dp_diffusion import DEFAULT_PROTECTED

        chosen = [a for a in DEFAULT_PROTECTED if a in self.attribute_names]
        return chosen or [self.attribute_names[0]]

    def sample(self, index) -> str:
        """The data URL of SynthFaces sample ``index`` (to show and to protect like an upload)."""
        n = self.config.num_samples
        if isinstance(index, bool) or not isinstance(index, (int, float)) or not float(index).is_integer() \
                or not 0 <= int(index) < n:
            raise ValueError(f"sample index must be an integer in [0, {n - 1}], got {index!r}")
        images = synthfaces_samples(n, self.config.sample_seed, self.config.sample_size)
        return image_to_data_url(images[int(index)])

    def _weights_for(self, attributes, weights) -> tuple:
        if isinstance(weights, dict):
            values = [weights.get(a, 1.0) for a in attributes]
        elif weights is None:
            values = [1.0] * len(attributes)
        else:
            values = list(weights)
        out = []
        for a, w in zip(attributes, values):
            if w is None or isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < float(w) < math.inf:
                raise ValueError(f"the weight of {a} must be a number > 0, got {w!r}")
            out.append(float(w))
        if len(out) != len(attributes):
            raise ValueError(f"need one weight per attribute ({len(attributes)}), got {len(out)}")
        return tuple(out)

    def _release(self, session: SubjectSession, epsilon: float, progress=None):
        """Charge the subject's ledger, then generate. Raises ``BudgetExceededError`` (nothing charged) or
        ``ValueError``. Returns ``(image uint8 (H, W, 3), report dict, seconds)``."""
        import torch

        kwargs = dict(attributes=list(session.attributes), weights=list(session.weights), epsilon=float(epsilon),
                      delta=self.config.delta, num_inference_steps=self.config.num_inference_steps,
                      generator=torch.Generator().manual_seed(secrets.randbits(63)), output_type="np",
                      secure_mode=self.config.secure_mode)
        if progress is not None:
            progress(0.0, desc="charging the privacy ledger")
        start = time.perf_counter()
        # the pipeline charges the ledger atomically before it generates anything, and refuses (charging
        # nothing) when the release would exceed the subject's budget
        out = self.pipe(session.original, ledger=self.ledger, subject_ids=[session.subject_id], **kwargs)
        seconds = time.perf_counter() - start
        image = (np.clip(out.images[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)  # (H, W, 3)
        return image, out.report.to_dict(), seconds

    def _figures(self, session: SubjectSession, latency_s: Optional[float]) -> str:
        r = session.report
        sid = session.subject_id
        spent, left = self.ledger.spent(sid), self.ledger.remaining(sid)
        sigmas = ", ".join(f"{a}: {_fmt(s)}" for a, s in r["sigmas"].items())
        weights = ", ".join(f"{a}: {_fmt(w, 3)}" for a, w in zip(r["attributes"], r["weights"]))
        guarantee = ("formal" if r["guarantee"] == "formal" else "heuristic (not covered by the accountant)")
        lines = [
            "| privacy figure | value |",
            "|---|---|",
            f"| ε of this image | **{_fmt(r['epsilon'])}** |",
            f"| δ | {r['delta']:.1e} |",
            f"| guarantee | {guarantee}: ({_fmt(r['epsilon'])}, {r['delta']:.0e})-DP for "
            f"{r['neighbouring_relation']} |",
            f"| noise multiplier | {_fmt(r['noise_multiplier'])} (diffusion strength {_fmt(r['strength'], 3)}) |",
            f"| noise std per attribute | {sigmas} |",
            f"| budget shares | {weights} |",
            f"| releases of this face | {session.releases} (ε so far: "
            f"{', '.join(_fmt(e) for e in session.epsilons)}) |",
            f"| ε spent (all releases composed) | {_fmt(spent)} at δ={self.ledger.delta:.0e} |",
            f"| **budget left** | **{_fmt(left)}** of {_fmt(self.ledger.budget_epsilon)} |",
        ]
        if latency_s is not None:
            lines.append(f"| generated in | {latency_s:.2f} s ({self.config.num_inference_steps} steps) |")
        hints = []
        for verdict in ("more_privacy", "more_detail"):
            nxt = session.controller.propose(verdict)
            if not session.controller.moved(nxt):
                hints.append(f"{VERDICT_LABELS[verdict]}: cannot move further")
                continue
            cal = self.pipe.calibrate(self.pipe.privacy_spec(
                attributes=list(session.attributes), weights=list(session.weights), epsilon=nxt.epsilon,
                delta=self.config.delta))
            after = self.ledger.preview(sid, noise_multiplier=cal.noise_multiplier)
            fits = after <= self.ledger.budget_epsilon
            hints.append(f"{VERDICT_LABELS[verdict]} → ε={_fmt(nxt.epsilon)} (total after: {_fmt(after)}"
                         f"{'' if fits else ', over budget: would be refused'})")
        lines.append(f"| next release | {'; '.join(hints)} |")
        return "\n".join(lines)

    def _shown(self, session: SubjectSession, status: str, latency_s: Optional[float]) -> View:
        return View(session=session, status=status, protected=upscale_for_display(session.protected),
                    epsilon=float(session.report["epsilon"]),
                    budget_left=float(f"{self.ledger.remaining(session.subject_id):.4g}"),
                    figures=self._figures(session, latency_s), latency_s=latency_s)

    def _record(self, session: SubjectSession, verdict: str) -> dict:
        r = session.report
        record = {
            "session_id": session.subject_id,
            "release_index": session.releases,
            "verdict": verdict,
            "epsilon": r["epsilon"],
            "delta": r["delta"],
            "attributes": list(r["attributes"]),
            "weights": [float(w) for w in session.weights],
            "normalized_weights": list(r["weights"]),
            "noise_multiplier": r["noise_multiplier"],
            "sigmas": [r["sigmas"][a] for a in r["attributes"]],
            "strength": r["strength"],
            "guarantee": r["guarantee"],
            "scope": r["scope"],
            "spent_epsilon": session.spent_epsilon,  # composed over the releases up to this image
            "budget_epsilon": self.ledger.budget_epsilon,
            "model": self.model_name,
            "num_inference_steps": self.config.num_inference_steps,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        return self.feedback_log.append(record, session.protected)

    @staticmethod
    def _refuse(session: SubjectSession, why: str) -> View:
        return View(session=session, status=f"**Refused.** {why}", level="refused")

    # -- handlers ---------------------------------------------------------------------------------------------
    def protect(self, image, attributes, weights, start_epsilon, session: Optional[SubjectSession],
                progress=None) -> View:
        """Start (or restart) protecting the loaded face at ``start_epsilon``: one release, charged to its subject.

        A face not seen before in this session gets a new subject id (and so its own budget); the same face keeps
        its subject and budget, also after "accept" (which ends its session: further releases are refused).
        """
        session = session if session is not None else SubjectSession()
        try:
            original = decode_original(image)
        except ValueError as exc:
            return self._refuse(session, str(exc))
        attributes = [a for a in (attributes or [])]
        if not attributes:
            return self._refuse(session, "choose at least one attribute to protect")
        unknown = [a for a in attributes if a not in self.attribute_names]
        if unknown:
            return self._refuse(session, f"unknown attributes {unknown}; this model knows {list(self.attribute_names)}")
        try:
            weights = self._weights_for(attributes, weights)
            eps = float(start_epsilon) if start_epsilon is not None else self.config.start_epsilon
            controller = EpsilonController(epsilon=eps, step_factor=self.config.step_factor,
                                           min_epsilon=self.config.min_epsilon, max_epsilon=self.config.max_epsilon)
        except (TypeError, ValueError) as exc:
            return self._refuse(session, str(exc))
        digest = _digest(original)
        if session.subject_id is not None and digest == session.image_digest:
            if session.finished:
                return self._refuse(session, "you accepted an image of this face, which ended its session; load "
                                             "another face to start a new one")
            new = replace(session, attributes=tuple(attributes), weights=weights, controller=controller)
        else:
            new = SubjectSession(subject_id=uuid.uuid4().hex, image_digest=digest, original=original,
                                 attributes=tuple(attributes), weights=weights, controller=controller)
        return self._generate(session, new, eps, progress, "First protected image")

    def _generate(self, old: SubjectSession, new: SubjectSession, epsilon: float, progress, what: str,
                  verdict: Optional[str] = None) -> View:
        from dpdiffusion.privacy.ledger import BudgetExceededError

        try:
            image, report, seconds = self._release(new, epsilon, progress)
        except BudgetExceededError as exc:
            return self._refuse(old, f"this release would exceed the face's privacy budget, so nothing was "
                                     f"generated and nothing was charged. {exc} You can accept the current image "
                                     "or load another face.")
        except ValueError as exc:
            return self._refuse(old, str(exc))
        if verdict is not None:  # the judgement of the previous image is recorded once the next release exists
            self._record(old, verdict)
        new = replace(new, protected=image, report=report, releases=new.releases + 1,
                      epsilons=new.epsilons + (report["epsilon"],), spent_epsilon=self.ledger.spent(new.subject_id))
        logger.info("release %d of subject %s at epsilon=%.4g in %.2f s", new.releases, new.subject_id[:8],
                    report["epsilon"], seconds)
        return self._shown(new, f"{what} at ε={_fmt(report['epsilon'])}. Judge it: more privacy, more detail "
                                f"or accept.", seconds)

    def feedback(self, verdict: str, session: Optional[SubjectSession], progress=None) -> View:
        """Judge the image shown: ``"more_privacy"`` / ``"more_detail"`` release again at the controller's next
        epsilon (charged; refused when over budget, changing nothing), ``"accept"`` ends the session."""
        session = session if session is not None else SubjectSession()
        if verdict not in VERDICT_LABELS:
            raise ValueError(f"verdict must be one of {tuple(VERDICT_LABELS)}, got verdict={verdict!r}")
        if session.protected is None:
            return self._refuse(session, "no protected image to judge yet: load a face and press Protect")
        if session.finished:
            return self._refuse(session, "this face's session has ended (accepted); load another face")
        if verdict == "accept":
            return self.accept(session)
        nxt = session.controller.propose(verdict)
        if not session.controller.moved(nxt):
            return self._refuse(session, f"ε cannot move further in that direction (now {_fmt(nxt.epsilon)}, "
                                         f"range [{self.config.min_epsilon}, {self.config.max_epsilon}])")
        new = replace(session, controller=nxt)
        label = "More privacy" if verdict == "more_privacy" else "More detail"
        return self._generate(session, new, nxt.epsilon, progress, label, verdict=verdict)

    def accept(self, session: SubjectSession) -> View:
        """Record "accept" for the image shown and end the subject's session with a final report (no charge)."""
        self._record(session, "accept")
        controller = session.controller.propose("accept")
        done = replace(session, controller=controller, finished=True)
        sid = session.subject_id
        spent, left = self.ledger.spent(sid), self.ledger.remaining(sid)
        r = session.report
        steps = " → ".join(f"{_fmt(e)} ({VERDICT_LABELS[v]})" for e, v in controller.history)
        report = "\n".join([
            "### Final report",
            f"- Accepted image: ε = **{_fmt(r['epsilon'])}**, δ = {r['delta']:.0e}, protecting "
            f"{', '.join(r['attributes'])} (weights {', '.join(_fmt(w, 3) for w in session.weights)}).",
            f"- Releases of this face: {session.releases}; judgements: {steps}.",
            f"- Everything released for this face (all {session.releases} images together) is "
            f"(**{_fmt(spent)}**, {self.ledger.delta:.0e})-DP for {r['neighbouring_relation']}; guarantee: "
            f"{r['guarantee']}.",
            f"- Budget: {_fmt(spent)} of {_fmt(self.ledger.budget_epsilon)} spent, {_fmt(left)} left "
            "(unused; the session is closed).",
            f"- Subject id (random, this session only): `{sid}`.",
            "- Stored: your judgements with the protected images only; the original was never stored.",
        ])
        view = self._shown(done, "Accepted. The session for this face has ended; load another face to start again.",
                           None)
        view.report = report
        return view


# ---------------------------------------------------------------------------------------------------- page
_ORIGINAL_TEMPLATE = """
<div class="dp-original">
  <div class="dp-title">Original (stays in your browser and this session's memory)</div>
  <label class="dp-pick">Upload a face…
    <input type="file" accept="image/png,image/jpeg,image/webp,image/gif,image/bmp">
  </label>
  ${(value || '').startsWith('data:image/')
    ? `<img class="dp-preview" src="${value}" alt="original face">`
    : `<div class="dp-empty">no face loaded</div>`}
  <div class="dp-msg"></div>
</div>
"""

_ORIGINAL_CSS = """
.dp-original { display: flex; flex-direction: column; gap: 6px; }
.dp-title { font-weight: 600; }
.dp-pick { cursor: pointer; border: 1px dashed var(--border-color-primary); padding: 6px; border-radius: 6px; }
.dp-preview, .dp-empty { width: 256px; height: 256px; border-radius: 6px; }
.dp-preview { image-rendering: pixelated; object-fit: contain; background: #eee; }
.dp-empty { display: flex; align-items: center; justify-content: center; background: #f3f3f3; color: #777; }
.dp-msg { min-height: 1.2em; font-size: 0.9em; }
"""

# Reads the file in the browser, checks the limits, centre-crops and shrinks it on a canvas, and puts the PNG data
# URL in this component's value (sent with the next request); nothing is uploaded as a file.
_ORIGINAL_JS = """
element.addEventListener('change', (ev) => {
  const input = ev.target;
  if (!input || !input.matches || !input.matches('input[type=file]')) return;
  const file = input.files && input.files[0];
  const say = (text) => { const m = element.querySelector('.dp-msg'); if (m) m.textContent = text; };
  if (!file) return;
  if (file.size > props.max_bytes) {
    say(`Refused: the file is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${props.max_bytes / 1048576} MB.`);
    input.value = ''; return;
  }
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    URL.revokeObjectURL(url);
    const w = img.naturalWidth, h = img.naturalHeight;
    if (w * h > props.max_pixels) {
      say(`Refused: ${w}x${h} px is over the ${(props.max_pixels / 1e6).toFixed(1)} MP limit.`); return;
    }
    if (Math.min(w, h) < props.min_side) { say(`Refused: each side must be at least ${props.min_side} px.`); return; }
    const side = Math.min(w, h), out = Math.min(props.side, side);
    const canvas = document.createElement('canvas'); canvas.width = out; canvas.height = out;
    const ctx = canvas.getContext('2d'); ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(img, (w - side) / 2, (h - side) / 2, side, side, 0, 0, out, out);
    props.value = canvas.toDataURL('image/png');
    trigger('change');
  };
  img.onerror = () => { URL.revokeObjectURL(url); say('Refused: the browser cannot read this file as an image.'); };
  img.src = url;
});
"""

_PRIVACY_NOTE = """
**What happens to your photo.** The original is read and shrunk to {side}×{side} px **in your browser**; it is sent
to the server only inside each request and kept only in this session's memory (dropped when you close the tab, or
after {ttl} h). It is **never written to disk or to logs**, and it is never part of the feedback. Limits: files up to
**{mb} MB** and **{mp:.1f} megapixels**, each side at least {min_side} px.

**What is stored.** Each judgement you make (ε, δ, the protected attributes and weights, your verdict and the
*protected* image) is appended to a feedback dataset{hub}. Every image you see is a release charged to this face's
privacy budget **before** it is shown; when the next one would exceed the budget, the app refuses and charges nothing.
"""


@lru_cache(maxsize=1)
def _private_blocks_class():
    import gradio as gr

    class PrivateBlocks(gr.Blocks):
        """`gr.Blocks` whose `launch` defaults to ``run_history=False``: Gradio's run history would keep each
        request's inputs (the original face) in the browser's storage."""

        def launch(self, *args, **kwargs):
            kwargs.setdefault("run_history", False)
            kwargs.setdefault("footer_links", ["api", "gradio", "settings"])
            return super().launch(*args, **kwargs)

    return PrivateBlocks


def _env_float(name: str, default: float) -> float:
    return float(os.environ[name]) if os.environ.get(name) else default


def _hub_token() -> Optional[str]:
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # pragma: no cover - no token store
        return None


def build_demo(pipe=None, *, ledger_dir=None, feedback_dir=None, budget_epsilon: Optional[float] = None,
               delta: float = 1e-5, start_epsilon: Optional[float] = None,
               num_inference_steps: Optional[int] = None, feedback_repo: Optional[str] = None,
               hub_token: Optional[str] = None, model_name: Optional[str] = None, secure_mode: bool = True,
               **config_kwargs):
    """Build the Space's page.

    Args:
        pipe (`DPDiffusionPipeline`, *optional*): the model; default: `load_pipeline()` (``$DPDIFFUSION_SPACE_MODEL``
            or the embedded ``DEFAULT_MODEL``).
        ledger_dir, feedback_dir (`str` or `Path`, *optional*): where the ledger (sqlite) and the feedback dataset
            live; default: under `default_space_dir()`.
        budget_epsilon (`float`, *optional*): per-subject budget (default ``$DPDIFFUSION_SPACE_BUDGET_EPSILON`` or 5).
        delta (`float`): delta of every release and of the ledger.
        start_epsilon (`float`, *optional*): default first epsilon (``$DPDIFFUSION_SPACE_START_EPSILON`` or 1).
        num_inference_steps (`int`, *optional*): DDIM steps (``$DPDIFFUSION_SPACE_STEPS`` or 25).
        feedback_repo (`str`, *optional*): Hub dataset repo for the feedback (``$DPDIFFUSION_FEEDBACK_REPO``);
            pushed only when a token exists (``hub_token``, ``$HF_TOKEN`` or a saved login).
        model_name (`str`, *optional*): recorded with the feedback.
        secure_mode (`bool`): privacy noise from the OS CSPRNG.
        **config_kwargs: other `SpaceConfig` fields.

    Returns:
        `gr.Blocks`: the page; its ``dp_space`` attribute is the `DPSpace` behind it.
    """
    import gradio as gr

    from dpdiffusion.privacy.ledger import PrivacyLedger

    if pipe is None:
        pipe, loaded = load_pipeline()
        pipe.set_progress_bar_config(leave=False)  # our own pipeline; an injected one keeps its settings
        model_name = model_name or loaded
    config = SpaceConfig(
        budget_epsilon=budget_epsilon if budget_epsilon is not None else _env_float(ENV_BUDGET, 5.0),
        delta=delta,
        start_epsilon=start_epsilon if start_epsilon is not None else _env_float(ENV_START, 1.0),
        num_inference_steps=num_inference_steps if num_inference_steps is not None
        else int(_env_float(ENV_STEPS, 25)),
        secure_mode=secure_mode, **config_kwargs)
    base = default_space_dir()
    ledger_dir = Path(ledger_dir) if ledger_dir is not None else base / "ledger"
    feedback_dir = Path(feedback_dir) if feedback_dir is not None else base / "feedback"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    # one ledger file per (budget, delta): a ledger's budget cannot change once created
    ledger = PrivacyLedger(ledger_dir / f"ledger_budget{config.budget_epsilon:g}_delta{config.delta:g}.sqlite",
                           budget_epsilon=config.budget_epsilon, delta=config.delta)
    repo = feedback_repo if feedback_repo is not None else os.environ.get(ENV_FEEDBACK_REPO)
    feedback = FeedbackLog(feedback_dir, repo_id=repo, token=(hub_token or _hub_token()) if repo else None)
    space = DPSpace(pipe, ledger=ledger, feedback=feedback, config=config, model_name=model_name or "custom")
    names = space.attribute_names
    size = pipe.image_size

    def outputs_of(view: View):
        if view.level == "refused":
            gr.Warning(re.sub(r"\*\*", "", view.status), duration=15)
        skip = gr.skip()
        return (
            view.protected if view.protected is not None else skip,
            view.epsilon if view.epsilon is not None else skip,
            view.budget_left if view.budget_left is not None else skip,
            view.figures if view.figures is not None else skip,
            view.status,
            view.report if view.report is not None else ("" if view.level != "refused" else skip),
            view.session,
        )

    def on_protect(image, attributes, start_eps, session, *weights, progress=gr.Progress(track_tqdm=True)):
        view = space.protect(image, attributes, dict(zip(names, weights)), start_eps, session, progress=progress)
        return outputs_of(view)

    def on_more_privacy(session, progress=gr.Progress(track_tqdm=True)):
        return outputs_of(space.feedback("more_privacy", session, progress=progress))

    def on_more_detail(session, progress=gr.Progress(track_tqdm=True)):
        return outputs_of(space.feedback("more_detail", session, progress=progress))

    def on_accept(session):
        return outputs_of(space.feedback("accept", session))

    def on_sample(index):
        try:
            return space.sample(index)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    blocks_cls = _private_blocks_class()
    hub_note = f", pushed to the Hub dataset `{repo}`" if feedback.scheduler is not None else " on the server"
    with blocks_cls(title="dpdiffusion: how much privacy is enough?", analytics_enabled=False,
                    delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# How much privacy is enough?\n"
            f"Protect a face's sensitive attributes with differential privacy, judge the result, and steer ε. "
            f"Model: `{space.model_name}` ({size}×{size} px). Each face has a privacy budget of "
            f"ε = {config.budget_epsilon:g} at δ = {config.delta:.0e} over all the images released of it.")
        gr.Markdown(_PRIVACY_NOTE.format(side=BROWSER_SIDE, ttl=SESSION_TTL_S // 3600,
                                         mb=MAX_UPLOAD_BYTES // (1024 * 1024), mp=MAX_UPLOAD_PIXELS / 1e6,
                                         min_side=MIN_UPLOAD_SIDE, hub=hub_note), elem_id="dp-privacy-note")
        session_state = gr.State(SubjectSession(), time_to_live=SESSION_TTL_S)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                original = gr.HTML(value="", html_template=_ORIGINAL_TEMPLATE, css_template=_ORIGINAL_CSS,
                                   js_on_load=_ORIGINAL_JS, elem_id="dp-original", max_bytes=MAX_UPLOAD_BYTES,
                                   max_pixels=MAX_UPLOAD_PIXELS, min_side=MIN_UPLOAD_SIDE, side=BROWSER_SIDE)
                with gr.Row():
                    sample_index = gr.Slider(0, config.num_samples - 1, value=0, step=1,
                                             label="SynthFaces sample", elem_id="dp-sample-index")
                    sample_btn = gr.Button("Use this sample", elem_id="dp-sample", size="sm")
            with gr.Column(scale=1, min_width=300):
                protected = gr.Image(label="Protected", type="numpy", format="png", interactive=False,
                                     height=300, elem_id="dp-protected", buttons=["download"])
            with gr.Column(scale=1, min_width=260):
                epsilon_box = gr.Number(label="ε of this image", interactive=False, elem_id="dp-epsilon",
                                        precision=None)
                budget_box = gr.Number(label="budget left (ε)", interactive=False, elem_id="dp-budget-left")
                with gr.Row():
                    more_privacy_btn = gr.Button("More privacy", elem_id="dp-more-privacy", variant="secondary")
                    more_detail_btn = gr.Button("More detail", elem_id="dp-more-detail", variant="secondary")
                accept_btn = gr.Button("Accept", elem_id="dp-accept", variant="primary")
        status = gr.Markdown("Load a face, choose what to protect, and press **Protect**.", elem_id="dp-status")
        with gr.Row():
            with gr.Column(scale=1):
                attributes = gr.CheckboxGroup(list(names), value=space.default_attributes,
                                              label="Protected attributes", elem_id="dp-attributes")
                weight_sliders = [gr.Slider(0.1, 10.0, value=1.0, step=0.1, label=f"weight: {a}",
                                            elem_id=f"dp-weight-{a}") for a in names]
                start_eps = gr.Number(value=config.start_epsilon, label="starting ε", minimum=config.min_epsilon,
                                      maximum=config.max_epsilon, elem_id="dp-start-epsilon")
                protect_btn = gr.Button("Protect", variant="primary", elem_id="dp-protect")
            with gr.Column(scale=2):
                figures = gr.Markdown(elem_id="dp-figures")
                report = gr.Markdown(elem_id="dp-report")

        outs = [protected, epsilon_box, budget_box, figures, status, report, session_state]
        release = dict(concurrency_limit=config.max_concurrent_releases, concurrency_id="release",
                       show_progress="full", show_progress_on=[protected])
        protect_btn.click(on_protect, [original, attributes, start_eps, session_state, *weight_sliders], outs,
                          api_name="protect", **release)
        more_privacy_btn.click(on_more_privacy, [session_state], outs, api_name="more_privacy", **release)
        more_detail_btn.click(on_more_detail, [session_state], outs, api_name="more_detail", **release)
        accept_btn.click(on_accept, [session_state], outs, api_name="accept", concurrency_limit=None)
        sample_btn.click(on_sample, [sample_index], [original], api_name="sample", concurrency_limit=None)
    demo.queue(max_size=64)
    demo.dp_space = space
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="The dpdiffusion Space (Gradio app).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, or $GRADIO_SERVER_PORT).")
    parser.add_argument("--host", default=None, help="Interface to bind (default: Gradio's).")
    parser.add_argument("--model", default=None, help=f"Pipeline folder or Hub repo id (default: ${ENV_MODEL} "
                                                      "or the embedded default).")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.environ.get(ENV_THREADS):  # e.g. 1 where other work shares the cores (OpenMP spinning is costly)
        import torch

        torch.set_num_threads(int(os.environ[ENV_THREADS]))
    pipe, model_name = load_pipeline(ns.model)
    build_demo(pipe, model_name=model_name).launch(server_port=ns.port, server_name=ns.host)


if __name__ == "__main__":
    main()
