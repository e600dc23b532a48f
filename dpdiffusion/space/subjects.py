"""Who is a subject in the Space: a keyed hash of a face's normalised content, the same in both of its modes.

A subject is a *face as the app normalises it*, keyed with a server-side secret: since issue 32 by
`face_identity.FaceIdentityKeyer` (a luminance layout searched over mirror, border, crop and turn, and dlib's
descriptor of the person, both as keyed LSH band keys in ``subject_index.sqlite``); `SubjectKeyer` below, a coarse
colour layout that survives re-encoding and resizing only, still finds the subjects of ledgers written before. Both
modes receive the same picture (read in the browser and shrunk
there to at most ``images.PHOTO_SIDE`` px on its long side) and find its faces the same way (`find_face_crops`:
`dpdiffusion.faces`' dlib detector with the photo mode's thresholds, at least 48 px and score 0.5, and FFHQ
alignment to a ``FACE_KEY_SIDE`` px crop); each face found is the subject of its aligned crop. The face mode, which
releases the picture's centre square, also keys that square itself (what it keyed before faces were detected, and
the only subject of a picture with no face found) and charges each release to all of its subjects at once. So:

- the same picture uploaded again, in another session, as JPEG (quality 90) or at another size (2x, 0.75x) is the
  same subject and spends the same budget;
- a face spent in the photo mode is spent in the face mode, and the other way round (the astronaut's face:
  ``tests/attacks/test_space_one_budget.py``);
- a mirror image, a grey copy, brightness or contrast within 10 %, a border up to 8 px, a crop up to 10 % and a
  turn up to 3 degrees are the same subject (``tests/attacks/test_space_edited_reuploads.py``); with the faces
  extra, so is another photo of the same person whose descriptor lies within about 0.44 of it (dlib's own
  convention is 0.6; see `face_identity` for the measurements). A photo of the person further from it, or any
  other edit, is a new subject; so is a face the detector misses in one mode and finds in the other (a face under
  48 px, or one scoring near 0.5 in one encoding and not another).

The face code (`face_code`). The decoded face is area-resampled to 32x32 per RGB channel (in float), blurred
(Gaussian, sigma 1 px), converted to YCbCr (chroma centred on 0), and averaged over a 4x4 grid: 48 numbers on the
0-255 scale. Each is quantised to cells of ``LEVEL_STEP`` = 255/6 levels whose *centres* sit on 0 and 255 (so
grey pictures, chroma exactly 0, and saturated black or white regions lie far from a cell boundary). Measured on
scikit-image's astronaut, chelsea, coffee and camera and on 40 SynthFaces, each as PNG, JPEG q90 and resized by 2,
0.75 and 0.5 (Lanczos and bilinear, PNG and JPEG): no number moved by more than 1.44 levels; 200 SynthFaces gave
200 distinct codes, none within another's probes.

Lookup (`SubjectKeyer.resolve`). Any exact code has boundaries: a number within ``PROBE_MARGIN`` (3 levels, twice
the largest shift measured) of a cell boundary may land in the neighbouring cell in a re-encoded copy. So the app
computes the code's *probes*: the code with any subset of its (at most ``MAX_PROBED`` = 12) least certain numbers
moved to the neighbouring cell, each keyed into a subject id, most likely first. The face is the first probe
that is already a subject in the ledger (an exact lookup of at most 4096 ids), else a new subject under its own
code. Merging two pictures that differ only near cell boundaries errs on the side of privacy (they share one
budget); splitting one picture into two would not, and is what the probes prevent.

Keying. A subject id is ``HMAC-SHA256(secret, code)`` in hex: opaque, and impossible to recompute (or to test a
guessed picture against) without the secret. The secret (32 bytes from `secrets.token_bytes`) lives next to the
ledger in ``subject_key.bin`` (``store.py``: mode 0600, created atomically; the Space refuses to start without it
next to a ledger that holds releases). It is never shown, logged or written to the feedback dataset, and subject ids
never leave the server either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
from typing import Collection, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image

from .store import LEDGER_FILE, SECRET_BYTES, SECRET_FILE, load_or_create_secret, open_space_ledger  # noqa: F401

logger = logging.getLogger(__name__)

CODE_VERSION = b"dpdiffusion-space-face-v1"
RESAMPLE_SIDE = 32  # the face is area-resampled to this many px a side ...
BLUR_SIGMA = 1.0  # ... blurred with this Gaussian (px) ...
GRID = 4  # ... and averaged over GRID x GRID blocks, per Y, Cb, Cr channel
LEVEL_STEP = 255.0 / 6.0  # quantisation step on the 0-255 scale; cell centres at 0, 42.5, ..., 255
PROBE_MARGIN = 3.0  # a number nearer than this (levels) to a cell boundary is uncertain
MAX_PROBED = 12  # at most this many uncertain numbers are probed (2**12 ids)
FACE_KEY_SIDE = 32  # px: a face found in a picture is keyed on its FFHQ-aligned crop at this size (both modes)

_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


# ---------------------------------------------------------------------------------------------------- the code
def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(t ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(x, radius, mode="edge")  # (S + 2r, S + 2r)
    rows = np.stack([np.convolve(r, kernel, mode="valid") for r in padded])  # (S + 2r, S)
    return np.stack([np.convolve(c, kernel, mode="valid") for c in rows.T]).T  # (S, S)


def face_features(original: np.ndarray) -> np.ndarray:
    """The coarse colour layout of a decoded face: (GRID * GRID * 3,) float64 on the 0-255 scale.

    Args:
        original (`np.ndarray`): (H, W, 3) uint8, as returned by `images.decode_original`.

    Raises:
        ValueError: ``original`` is not an (H, W, 3) uint8 array.
    """
    if not isinstance(original, np.ndarray) or original.ndim != 3 or original.shape[-1] != 3 \
            or original.dtype != np.uint8:
        raise ValueError(f"original must be an (H, W, 3) uint8 array, got "
                         f"{getattr(original, 'shape', type(original).__name__)}")
    channels = []
    for c in range(3):
        plane = PIL.Image.fromarray(original[..., c].astype(np.float32), mode="F")
        plane = plane.resize((RESAMPLE_SIDE, RESAMPLE_SIDE), PIL.Image.BOX)  # area average, in float
        channels.append(_gaussian_blur(np.asarray(plane, dtype=np.float64), BLUR_SIGMA))
    ycc = np.stack(channels, axis=-1) @ _YCBCR.T  # (S, S, 3); Y in [0, 255], Cb and Cr in [-127.5, 127.5]
    b = RESAMPLE_SIDE // GRID
    return ycc.reshape(GRID, b, GRID, b, 3).mean(axis=(1, 3)).ravel()  # (GRID * GRID * 3,)


def face_code_probes(features: np.ndarray) -> List[bytes]:
    """The quantised code of ``features`` and its probes, most likely first (the code itself first).

    A probe moves a subset of the (at most ``MAX_PROBED``) numbers within ``PROBE_MARGIN`` of a cell boundary into
    the neighbouring cell; probes are ordered by the summed margin of the numbers they move.

    Args:
        features (`np.ndarray`): (n,) numbers on the 0-255 scale, as from `face_features`.

    Returns:
        `list[bytes]`: between 1 and ``2 ** MAX_PROBED`` codes, each n int8 cell indices.
    """
    t = np.asarray(features, dtype=np.float64) / LEVEL_STEP
    cells = np.floor(t + 0.5).astype(np.int64)  # cell centres on multiples of LEVEL_STEP
    offset = t - cells  # in [-0.5, 0.5)
    margin = (0.5 - np.abs(offset)) * LEVEL_STEP  # distance to the nearest cell boundary, in levels
    neighbour = cells + np.where(offset >= 0, 1, -1)
    uncertain = np.array([i for i in np.argsort(margin, kind="stable")[:MAX_PROBED] if margin[i] < PROBE_MARGIN],
                         dtype=np.int64)
    k = len(uncertain)
    moves = (np.arange(2 ** k)[:, None] >> np.arange(k)[None, :]) & 1  # (2^k, k): which uncertain numbers move
    cost = moves @ margin[uncertain] if k else np.zeros(1)
    order = np.lexsort((moves.sum(axis=1), cost))  # least summed margin first, then fewest moved; code first
    codes = np.repeat(cells[None, :], 2 ** k, axis=0)  # (2^k, n)
    if k:
        codes[:, uncertain] = np.where(moves == 1, neighbour[uncertain][None, :], cells[uncertain][None, :])
    codes = codes[order].astype(np.int8)
    return [row.tobytes() for row in codes]


# ---------------------------------------------------------------------------------------------------- the keyer
class SubjectKeyer:
    """Turns a decoded face into its ledger subject id: ``HMAC-SHA256(secret, code)`` in hex (see the module).

    Args:
        secret (`bytes`): the server-side key, ``SECRET_BYTES`` long (`load_or_create_secret`).

    Raises:
        ValueError: the secret is not ``SECRET_BYTES`` bytes.
    """

    def __init__(self, secret: bytes):
        if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
            raise ValueError(f"secret must be {SECRET_BYTES} bytes, got "
                             f"{len(secret) if isinstance(secret, bytes) else type(secret).__name__}")
        self._secret = secret

    def __repr__(self) -> str:  # never the secret
        return "SubjectKeyer(secret=<hidden>)"

    def _key(self, code: bytes) -> str:
        return hmac.new(self._secret, CODE_VERSION + b"\0" + code, hashlib.sha256).hexdigest()

    def candidates(self, original: np.ndarray) -> List[str]:
        """The subject ids this face may be, most likely first; the first is its own (a new subject's) id."""
        return [self._key(code) for code in face_code_probes(face_features(original))]

    def subject_id(self, original: np.ndarray) -> str:
        """The face's own subject id (its unmoved code)."""
        return self.candidates(original)[0]

    def resolve(self, original: np.ndarray, known: Collection[str]) -> str:
        """The face's subject: the first candidate already in ``known``, else the face's own (new) id.

        Args:
            original (`np.ndarray`): (H, W, 3) uint8, as returned by `images.decode_original`.
            known (`Collection[str]`): the ledger's subjects (``ledger.subjects()``).
        """
        known = known if isinstance(known, (set, frozenset)) else set(known)
        candidates = self.candidates(original)
        return next((c for c in candidates if c in known), candidates[0])


# ---------------------------------------------------------------------------------------------------- faces
class FoundFaces:
    """A face detector that answers with faces found before (`find_face_crops`), so that the photo mode's release
    (`dpdiffusion.faces.protect_photos`) protects exactly the faces the app keyed, without detecting twice."""

    def __init__(self, faces: Sequence):
        self.faces = list(faces)

    def detect(self, image: np.ndarray, *, min_face_size: Optional[int] = None) -> list:
        return list(self.faces)


_NO_DETECTOR_WARNED = threading.Event()


def find_face_crops(photo: np.ndarray, *, side: int = FACE_KEY_SIDE, within: Optional[Tuple[int, int, int, int]] = None,
                    required: bool = False) -> List[tuple]:
    """The faces of ``photo`` and their aligned crops, as both of the Space's modes key them.

    Detection and alignment are `dpdiffusion.faces`' (dlib HOG with its 68 landmarks, FFHQ alignment) with the
    photo mode's thresholds (``DEFAULT_MIN_FACE_SIZE`` = 48 px, ``DEFAULT_MIN_CONFIDENCE`` = 0.5).

    Args:
        photo (`np.ndarray`): (H, W, 3) uint8, as returned by `images.decode_photo`.
        side (`int`): the crops' side in px (``FACE_KEY_SIDE``).
        within (`tuple`, *optional*): ``(x0, y0, x1, y1)``: keep only the faces whose box overlaps this box (the
            face mode's released square).
        required (`bool`): raise `ImportError` when the ``faces`` extra is missing, instead of returning no face
            (with a warning, once).

    Returns:
        `list[tuple[DetectedFace, np.ndarray]]`: each face (best first) and its (side, side, 3) uint8 crop.
    """
    try:
        from ..faces.align import align_face
        from ..faces.photos import find_faces

        faces = find_faces(photo)
    except ImportError:
        if required:
            raise
        if not _NO_DETECTOR_WARNED.is_set():
            _NO_DETECTOR_WARNED.set()
            logger.warning("the faces extra (dlib) is not installed: the face mode keys whole pictures only, and the "
                           "photo mode is unavailable")
        return []
    if within is not None:
        x0, y0, x1, y1 = within
        faces = [f for f in faces if f.box[0] < x1 and f.box[2] > x0 and f.box[1] < y1 and f.box[3] > y0]
    return [(f, align_face(photo, f.landmarks, side).crop) for f in faces]

