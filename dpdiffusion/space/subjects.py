"""Who is a subject in the Space: a keyed hash of the face picture's content, and the one ledger it is charged to.

A subject is a *picture*: the face as the app decodes it (`images.decode_original`: RGB, centre square, at most
256 px), reduced to a coarse colour layout that survives re-encoding and resizing, and keyed with a server-side
secret. The same picture uploaded again, in another session, as JPEG (quality 90) or at another size (2x, 0.75x)
is the same subject and spends the same budget. Another photo of the same person, a crop or an edit is *not*
recognised: it is a new subject (the app cannot tell who a person is; it can tell a picture it has seen).

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
ledger in ``subject_key.bin``, mode 0600, created atomically (written to a temporary file, then hard-linked into
place, which fails if another process got there first), so processes starting at once agree on one secret. It is
never shown, logged or written to the feedback dataset.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import stat
import time
import uuid
from pathlib import Path
from typing import Collection, List, Optional

import numpy as np
import PIL.Image

logger = logging.getLogger(__name__)

SECRET_FILE = "subject_key.bin"
LEDGER_FILE = "ledger.sqlite"
SECRET_BYTES = 32
CODE_VERSION = b"dpdiffusion-space-face-v1"
RESAMPLE_SIDE = 32  # the face is area-resampled to this many px a side ...
BLUR_SIGMA = 1.0  # ... blurred with this Gaussian (px) ...
GRID = 4  # ... and averaged over GRID x GRID blocks, per Y, Cb, Cr channel
LEVEL_STEP = 255.0 / 6.0  # quantisation step on the 0-255 scale; cell centres at 0, 42.5, ..., 255
PROBE_MARGIN = 3.0  # a number nearer than this (levels) to a cell boundary is uncertain
MAX_PROBED = 12  # at most this many uncertain numbers are probed (2**12 ids)

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


# ---------------------------------------------------------------------------------------------------- the secret
def load_or_create_secret(folder) -> bytes:
    """The Space's subject secret in ``folder/subject_key.bin``, created once (atomically, mode 0600).

    Two processes that start at once agree on one secret: each writes its candidate to a private temporary file
    and hard-links it to the final name, which only the first succeeds in doing; everyone then reads that file.

    Args:
        folder (`str` or `Path`): the folder of the Space's ledger (created if missing).

    Returns:
        `bytes`: ``SECRET_BYTES`` bytes.

    Raises:
        ValueError: the file exists but does not hold ``SECRET_BYTES`` bytes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("%s was readable by others (mode %o); setting mode 600", path, mode)
        os.chmod(path, 0o600)
    for _ in range(50):  # without hard links the winner's file may briefly be shorter (see _create_secret)
        secret = path.read_bytes()
        if len(secret) == SECRET_BYTES:
            return secret
        time.sleep(0.02)
    raise ValueError(f"{path} does not hold a {SECRET_BYTES}-byte subject secret; restore it from a backup (a new "
                     "secret would give every face a fresh budget)")


def _create_secret(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the file exists: the first process wins
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create, then write
            _create_secret_without_links(path, tmp.read_bytes())
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _create_secret_without_links(path: Path, secret: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- the ledger
def open_space_ledger(folder, *, budget_epsilon: Optional[float], delta: Optional[float],
                      budget_name: str = "budget_epsilon", delta_name: str = "delta"):
    """The Space's one ledger, ``folder/ledger.sqlite``; its budget and delta are fixed when it is created.

    Restarting the Space with another budget must not give every face a fresh one, so a configured budget or delta
    that differs from the stored one is an error; one left unset (`None`) takes the stored value (or, for a new
    ledger, ``DEFAULT_BUDGET_EPSILON`` / ``DEFAULT_DELTA``).

    Args:
        folder (`str` or `Path`): the ledger folder (created if missing).
        budget_epsilon (`float`, *optional*), delta (`float`, *optional*): the configured values.
        budget_name (`str`), delta_name (`str`): how the user set them (an env var or argument), for the error.

    Returns:
        `PrivacyLedger`.

    Raises:
        ValueError: the configured budget or delta differs from the ledger's.
    """
    from .config import DEFAULT_BUDGET_EPSILON, DEFAULT_DELTA
    from ..privacy.ledger import PrivacyLedger

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(p.name for p in folder.glob("ledger_budget*_delta*.sqlite"))
    if old:
        logger.warning("ignoring older per-budget ledgers %s in %s: their subjects were per-session ids that no "
                       "face can be matched to", old, folder)
    path = folder / LEDGER_FILE
    if not path.exists():
        return PrivacyLedger(path, budget_epsilon=DEFAULT_BUDGET_EPSILON if budget_epsilon is None else budget_epsilon,
                             delta=DEFAULT_DELTA if delta is None else delta)
    ledger = PrivacyLedger(path)
    for name, wanted, stored in ((budget_name, budget_epsilon, ledger.budget_epsilon),
                                 (delta_name, delta, ledger.delta)):
        if wanted is not None and float(wanted) != stored:
            raise ValueError(
                f"{name}={wanted:g} differs from the Space ledger's {stored:g} ({path}): each face's budget is "
                f"fixed when the ledger is created, and restarting with another value would give every face a fresh "
                f"one. Set {name} to {stored:g} (or leave it unset to use the stored value), or point "
                f"DPDIFFUSION_SPACE_DIR at a new folder for a new Space.")
    return ledger
