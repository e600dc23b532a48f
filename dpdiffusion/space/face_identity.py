"""A face's subject that survives ordinary edits, and, where dlib can tell persons apart, the person's.

`SubjectKeyer` (``subjects.py``) keys a *picture*: a mirror image, a grey copy, a brighter one, an 8 px border, a
10 % crop or a 3 degree turn each got a fresh budget (issue 32). `FaceIdentityKeyer` keys a face by two keyed
locality-sensitive hashes, each stored only as keyed band keys in a side table next to the ledger
(`SubjectIndex`):

- **The picture** (kind ``"picture"``, every face). Luminance only (``Y = 0.299 R + 0.587 G + 0.114 B``: a grey copy
  has the same Y), area-resampled to ``WORK_SIDE`` px, blurred (Gaussian, ``BLUR_SIGMA`` px times the probe's scale),
  sampled on a ``GRID`` x ``GRID`` lattice over the central ``REGION`` of the frame and normalised to mean 0 and
  norm 1 (so brightness and contrast, which scale Y about a constant, cancel). A re-upload is matched by *searching*
  the geometry of the edits: each of ``len(PICTURE_PROBES)`` = 1330 geometric probes samples the lattice mirrored or
  not, shrunk (a border: the content fills 86 % to 100 % of the frame), turned (up to 3 degrees) or enlarged and
  shifted (a crop: 100 % to 112 %, shifts up to 8 %); only the unmoved lattice is stored.
- **The person** (kind ``"person"``, when the ``faces`` extra finds a face): dlib's 128-d ResNet descriptor
  (`dpdiffusion.faces.detect.DlibFaceEmbedder`) of the most confident face, averaged with the descriptor of its
  mirror image, so that a mirrored upload has the same descriptor by construction. Another photo of the same person
  is near it (dlib's convention: Euclidean distance below 0.6).

Keyed LSH (`KeyedLSH`). Each vector is projected on ``bands * hashes`` random directions drawn from a generator
seeded by ``HMAC-SHA256(secret, kind)``; the picture keeps each projection's sign, the person its bucket
``floor((a.x + b) / w)`` (E2LSH, for the Euclidean distance dlib is calibrated in). The hashes are cut into bands,
and a band's key is ``BLAKE2b-128(key=secret, kind || band || hashes)``. A face *votes* for a subject with every band
whose key the index holds for that subject; probing as in ``subjects.py``: in each band the ``probed`` least certain
hashes (smallest margin to a boundary) are also tried on their other side (``2 ** probed`` keys a band). A face is a
known subject when its votes reach the kind's minimum (the picture: the best of its geometric probes).

Thresholds, from ``scripts/measure_face_identity.py`` (every picture decoded as the app decodes a PNG upload):

- picture: 32 bands of 32 signs, 4 probed, a match at ``PICTURE_MIN_VOTES`` = 25 votes. On 16 faces x 15 edits the
  best probe of every edit scored 28 to 32 votes; each of 304 faces (200 SynthFaces, 100 LFW, 4 photos) against
  all the others scored at most 22. Without dlib, 120 edited re-uploads of 8 faces (astronaut, camera, 3 SynthFaces,
  3 LFW faces; mirror, grey, brightness and contrast +-10 %, 8 px borders, 10 % crops, +-3 degrees) all found their
  subject; 200 SynthFaces (at 128 px, and at 32 px upscaled) gave 200 subjects each; the LFW subset's 100 faces 100
  and its 100 non-faces 91 (nine flat patches of one step edge, the same pattern up to brightness and contrast).
- person: 128 bands of 6 buckets of width ``PERSON_BUCKET_WIDTH`` = 1.0, 3 probed, a match at ``PERSON_MIN_VOTES``
  = 41 votes: for two descriptors at Euclidean distance d, P(match) is 1 up to d = 0.35, 0.96 at 0.4, 0.43 at 0.45,
  0.015 at 0.5 and 0 from 0.55 (simulated). Edits move dlib's descriptor by at most 0.27 (mirror: 0, by
  construction). dlib's own convention, 0.6, merged 76 of the LFW subset's 92 faces it finds: those are 25 px crops,
  whose descriptors crowd together; with the threshold near 0.45, 7 of 100 were taken for an earlier face, by eye
  mostly the same person (the subset holds several photos of some people), and none of 200 SynthFaces.

Resolution (`FaceIdentityKeyer.resolve`): the person's match if any, else the picture's, else (for ledgers written
by `SubjectKeyer`) the old picture code's probes found in ``known``, else a new subject, whose id is
``HMAC-SHA256(secret, version || picture signs)`` in hex. A picture match is never vetoed by dlib seeing another
person: two attacker reviews turned such a veto into fresh budgets for a spent picture (a decoy face beside the
square; a hybrid image, the spent picture's blur plus another person's fine detail, which the picture key and the
32 px model read as the spent picture and dlib as the other person). So two people photographed on one backdrop may
share a budget (a documented residual: the cautious side). The face's band keys of each kind that did not make the match are added to the subject (a new photo of a known person
teaches the index that photo's picture, a face found by its picture teaches the person when dlib sees it now), so the
index grows with what it did not recognise and never chains a subject through what it did; the Space adds them
(`FaceIdentityKeyer.register`) only once the ledger has charged the face's release, so a refused request teaches the
index nothing.

What the side table reveals. Without the secret: nothing about any face; only how many band keys each subject has
and which subjects share a band key (that two of them are similar). With the secret (a compromised host): anyone
with a photo can compute its band keys and test whether that person (or that picture) used the Space, and under
which subject id (so, with the ledger, how much of the face's budget was spent and when). And each band key can be
inverted by search: about 11 ** 6 = 2 ** 21 candidates a person band (minutes for all 128), 2 ** 32 a picture band
(hours on a GPU for all 32). That gives each stored descriptor back to within about 0.13 (simulated on the LFW
subset; dlib's same-person radius is 0.6), so a host with the secret holds, in effect, every person's descriptor,
and a coarse 8 x 8 luminance thumbnail of every picture. The descriptor and the thumbnail themselves are never
written; the secret is what protects them, as it protects the subject ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from .subject_index import (  # noqa: F401  (the index's names, for callers of this module)
    IDENTITY_VERSION,
    INDEX_FILE,
    SECRET_BYTES,
    KeyedLSH,
    ProbeKeys,
    SubjectIndex,
    _check_secret,
    open_subject_index,
)

logger = logging.getLogger(__name__)


# ---- the picture
WORK_SIDE = 64  # px: the face's luminance is area-resampled to this side first
BLUR_SIGMA = 2.0  # px at WORK_SIDE, times the probe's scale
GRID = 8  # the picture vector: GRID x GRID luminance samples ...
REGION = 0.8  # ... over this central fraction of the frame (at scale 1)
PICTURE_BANDS, PICTURE_HASHES, PICTURE_PROBED, PICTURE_MIN_VOTES = 32, 32, 4, 25

# ---- the person
PERSON_BANDS, PERSON_HASHES, PERSON_PROBED, PERSON_MIN_VOTES = 128, 6, 3, 41
PERSON_BUCKET_WIDTH = 1.0
DESCRIPTOR_DIM = 128
# dlib's descriptors of cartoon faces lie together: of 200 SynthFaces at 128 px dlib found 46, all within 0.42 of
# their mean, and one in five was taken for another by person. A descriptor within CARTOON_RADIUS of the mean of
# SynthFaces' descriptors (seed 0, 300 renders at 128 px, or at 32 px upscaled to 256 px bicubic: 65 and 67 found;
# `scripts/measure_face_identity.py --centroids`) is not taken for a person's. Of other SynthFaces (other seeds; 128,
# 32 and 64 px renders, upscaled) 3 in 155 lie further out; of the LFW subset's real faces and their edits, 421 of 422.
CARTOON_RADIUS = 0.5
_CARTOON_CENTROIDS = np.frombuffer(base64.b64decode(
    "j61uJW0oQKlWrSCiwKzZqaguu69XMdelxLKsJDup0DAusDquua5xr+Aorik7I+8llrAytI2tRa0wLPCr5p95JjSwYCrUKaIsDqpu"
    "rKozOigFso8hACyZM6UxhJ0IK2OtlC4JtNYsDTGZL5QtkSpBsGmWdDCsr70tSCvMqj2s2Kt9MiYwabAxslwx47GwrHUu3a/YsAK0"
    "eiOGNVUvsbAVKH2rcKmrKF0un60upJinSCokNH6stKTkMY0oCiWUoqgoNq1Oq5StjKdwKTOtjCLDLiSysDGEqcypSCNwKQmv9aTl"
    "MV+y5zE2MgQtJy2uLiQtVSNMIXaxdKsAJOeoOBOJJpyv9CbCKh+p8qwjqsyoP67tL+atPjFyqV2ylqVypzAwS7E5sE+taK5yKF0o"
    "RiknJ+OwtLQGrsWtlSl4qJ8oDSw6sWqcRCiJLGioMK4TM2giXLHmngErvDNxMSmeVyhirFYtPrP4KDAx2i7bLAkptK7cJ/0vRrHQ"
    "K5Ar6qrSpaWrBDJoL1euzLEaMWyxpq0pLM+vS7F9s9AN+zRrL9WwKyiKrdyp3CTALASsaaWhq50h2DPQqUGoDzPKJ8CkxiDDllut"
    "BSSXrqyloigKqywkiS7ssWUxpqcDqPQdASDCr/KoijGXsssxSDLQLFkvYi1VLHUjzyUasVKrdSkFqA+TfCo="
), dtype="<f2").astype(np.float64).reshape(2, DESCRIPTOR_DIM)

_LUMA = np.array([0.299, 0.587, 0.114])


def _geometric_probes() -> np.ndarray:
    """(P, 5) rows ``(scale, dx, dy, degrees, mirrored)``: where the unmoved lattice may lie in an edited copy."""
    rows = [(1.0, 0.0, 0.0, 0.0)]
    step = 0.015
    rows += [(s, 0.0, 0.0, 0.0) for s in np.arange(0.86, 1.0 - 1e-9, step)]  # a border: content shrunk, centred
    rows += [(1.0, 0.0, 0.0, r) for r in (-3, -2, -1, 1, 2, 3)]  # a turn of up to 3 degrees
    shifts = np.arange(-0.08, 0.08 + 1e-9, 0.02)
    rows += [(s, dx, dy, 0.0) for s in np.arange(1.0 + step, 1.12 + 1e-9, step) for dx in shifts for dy in shifts]
    rows = np.array(rows, dtype=np.float64)  # a crop: content enlarged and shifted (also by the centre square)
    return np.concatenate([np.c_[rows, np.zeros(len(rows))], np.c_[rows, np.ones(len(rows))]])


PICTURE_PROBES = _geometric_probes()
UNMOVED = PICTURE_PROBES[:1]


def _check_original(original) -> np.ndarray:
    if not isinstance(original, np.ndarray) or original.ndim != 3 or original.shape[-1] != 3 \
            or original.dtype != np.uint8 or min(original.shape[:2]) < 1:
        raise ValueError(f"original must be an (H, W, 3) uint8 array, got "
                         f"{getattr(original, 'shape', type(original).__name__)}")
    return original


def luminance(original: np.ndarray) -> np.ndarray:
    """The face's luminance, area-resampled to (WORK_SIDE, WORK_SIDE) float64 on the 0-255 scale."""
    y = _check_original(original).astype(np.float32) @ _LUMA.astype(np.float32)  # (H, W)
    plane = PIL.Image.fromarray(y, mode="F").resize((WORK_SIDE, WORK_SIDE), PIL.Image.BOX)
    return np.asarray(plane, dtype=np.float64)


def picture_vectors(original: np.ndarray, probes: np.ndarray = UNMOVED) -> np.ndarray:
    """The picture vector of ``original`` under each geometric probe: (P, GRID * GRID), each of mean 0 and norm 1.

    Args:
        original (`np.ndarray`): (H, W, 3) uint8, as `images.decode_original` returns it (or an aligned crop).
        probes (`np.ndarray`): (P, 5) rows ``(scale, dx, dy, degrees, mirrored)`` (`PICTURE_PROBES`).
    """
    from scipy import ndimage

    y = luminance(original)
    probes = np.asarray(probes, dtype=np.float64)
    t = (np.arange(GRID) + 0.5) / GRID - 0.5
    u, v = np.meshgrid(t, t, indexing="xy")  # (GRID, GRID) lattice offsets: x across, y down
    scale, dx, dy, deg, mirrored = (probes[:, i][:, None, None] for i in range(5))
    u = np.where(mirrored > 0, -u, u)
    theta = np.deg2rad(deg)
    side = REGION * scale
    x = 0.5 + dx + side * (np.cos(theta) * u - np.sin(theta) * v)  # (P, GRID, GRID) in frame units
    yy = 0.5 + dy + side * (np.sin(theta) * u + np.cos(theta) * v)
    cols, rows = x * WORK_SIDE - 0.5, yy * WORK_SIDE - 0.5
    out = np.empty((len(probes), GRID * GRID))
    for s in np.unique(probes[:, 0]):  # one blur per scale: the blur follows the content, not the frame
        sel = probes[:, 0] == s
        blurred = ndimage.gaussian_filter(y, BLUR_SIGMA * s, mode="nearest")
        out[sel] = ndimage.map_coordinates(blurred, [rows[sel].ravel(), cols[sel].ravel()], order=1,
                                           mode="nearest").reshape(int(sel.sum()), GRID * GRID)
    out -= out.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 1e-6 * math.sqrt(GRID * GRID))


# ---------------------------------------------------------------------------------------------------- the person
def person_descriptor(original: np.ndarray, *, detector=None, embedder=None, face=None) -> np.ndarray | None:
    """dlib's descriptor of the most confident face in ``original``, averaged with its mirror's; ``None`` without
    a face (or without the ``faces`` extra: then with a warning, once).

    Args:
        original (`np.ndarray`): (H, W, 3) uint8 picture.
        detector, embedder: `DlibFaceDetector` / `DlibFaceEmbedder` (default: the shared ones).
        face (`DetectedFace`, *optional*): a face already found in ``original`` (skips detection).
    """
    original = np.ascontiguousarray(_check_original(original))
    try:
        if face is None:
            from ..faces.detect import default_detector

            faces = (detector or default_detector()).detect(original)
            if not faces:
                return None
            face = max(faces, key=lambda f: f.confidence)
        if embedder is None:
            from ..faces.detect import default_embedder

            embedder = default_embedder()
    except ImportError:
        if not _NO_FACES_WARNED.is_set():
            _NO_FACES_WARNED.set()
            logger.warning("the faces extra (dlib) is not installed: faces are keyed by their picture only, and "
                           "another photo of the same person is a new subject")
        return None
    x0, y0, x1, y1 = (int(v) for v in face.box)
    w = original.shape[1]
    mirrored = np.ascontiguousarray(original[:, ::-1])
    a = embedder.embed(original, (x0, y0, x1, y1))
    b = embedder.embed(mirrored, (w - x1, y0, w - x0, y1))
    return (np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64)) / 2.0


_NO_FACES_WARNED = threading.Event()


def is_cartoon(descriptor: np.ndarray) -> bool:
    """Whether dlib's ``descriptor`` lies among those of SynthFaces' cartoon faces (`CARTOON_RADIUS`), where it does
    not tell persons apart."""
    d = np.linalg.norm(np.asarray(descriptor, dtype=np.float64)[None, :] - _CARTOON_CENTROIDS, axis=1)
    return bool(d.min() < CARTOON_RADIUS)


def picture_lsh(secret: bytes) -> KeyedLSH:
    return KeyedLSH(secret, "picture", dim=GRID * GRID, bands=PICTURE_BANDS, hashes=PICTURE_HASHES,
                    probed=PICTURE_PROBED)


def person_lsh(secret: bytes) -> KeyedLSH:
    return KeyedLSH(secret, "person", dim=DESCRIPTOR_DIM, bands=PERSON_BANDS, hashes=PERSON_HASHES,
                    probed=PERSON_PROBED, bucket_width=PERSON_BUCKET_WIDTH)


# ---------------------------------------------------------------------------------------------------- the keyer
@dataclass(frozen=True)
class Match:
    """How a face was resolved: ``subject_id``; ``by`` one of ``"person"``, ``"picture"``, ``"legacy"`` (the old
    picture code of `subjects.SubjectKeyer`) or ``"new"``; ``votes`` per kind (the winning subject's)."""

    subject_id: str
    by: str
    votes: dict[str, int] = field(default_factory=dict)
    # what `FaceIdentityKeyer.register` adds to the index once the face is charged: ((kind, band keys), ...)
    pending: tuple = field(default=(), repr=False, compare=False)


class FaceIdentityKeyer:
    """Turns a face into its ledger subject, recognising edited re-uploads and other photos of the same person.

    A drop-in for `subjects.SubjectKeyer` (``resolve(original, known)``, ``candidates``, ``subject_id``); see the
    module for what is matched and stored.

    Args:
        secret (`bytes`): the server's key (``SECRET_BYTES`` long).
        index (`SubjectIndex`): the side table of band keys.
        persons (`bool`): match persons by dlib's descriptor when the ``faces`` extra is installed. Default True.
        legacy (`bool`): also find subjects keyed by `subjects.SubjectKeyer` (ledgers written before the index).
        detector, embedder: dlib backends (default: the shared ones of `dpdiffusion.faces.detect`).

    Raises:
        ValueError: a bad secret.
    """

    def __init__(self, secret: bytes, index: SubjectIndex, *, persons: bool = True, legacy: bool = True,
                 detector=None, embedder=None):
        self._secret = _check_secret(secret)
        self.index = index
        self.persons = persons
        self._picture = picture_lsh(secret)
        self._person = person_lsh(secret)
        self._detector, self._embedder = detector, embedder
        self._cache: OrderedDict[bytes, tuple] = OrderedDict()  # the last faces' keys (resolve runs twice)
        self._cache_lock = threading.Lock()
        self._legacy = None
        if legacy:
            try:
                from .subjects import SubjectKeyer

                self._legacy = SubjectKeyer(secret)
            except ImportError:  # pragma: no cover - subjects.py without the old keyer
                logger.warning("the old picture keyer is not available: subjects of older ledgers are not found")

    def __repr__(self) -> str:  # never the secret
        return f"FaceIdentityKeyer(index={self.index!r}, persons={self.persons}, secret=<hidden>)"

    def _own_id(self, reference: np.ndarray) -> str:
        values, _, _ = self._picture.hashes_of(reference)
        code = self._picture._pack(values[0]).astype(">u8").tobytes()
        return hmac.new(self._secret, IDENTITY_VERSION + b"\0subject\0" + code, hashlib.sha256).hexdigest()

    def subject_id(self, original: np.ndarray) -> str:
        """The id a new subject gets for this face (a keyed hash of its unmoved picture signs)."""
        return self._own_id(picture_vectors(original, UNMOVED)[0])

    def _keys_of(self, original: np.ndarray, *, photo, face, person: bool) -> tuple:
        """(own id, picture reference keys, picture probe keys, person reference keys, person probe keys) of a face;
        the person's are ``None`` without a person. The last few are kept: a new face is resolved twice."""
        digest = hashlib.sha256(repr((original.shape, person, None if face is None else tuple(face.box),
                                      None if photo is None else photo.shape)).encode())
        digest.update(np.ascontiguousarray(original).tobytes())
        if photo is not None:
            digest.update(np.ascontiguousarray(photo).tobytes())
        tag = digest.digest()
        with self._cache_lock:
            if tag in self._cache:
                self._cache.move_to_end(tag)
                return self._cache[tag]
        vectors = picture_vectors(original, PICTURE_PROBES)  # (P, 64); row 0 is the unmoved picture
        descriptor = None
        if person:
            descriptor = person_descriptor(original if photo is None else photo, face=face,
                                           detector=self._detector, embedder=self._embedder)
            if descriptor is not None and is_cartoon(descriptor):
                descriptor = None
        keys = (self._own_id(vectors[0]), self._picture.reference_keys(vectors[0]), self._picture.probe_keys(vectors),
                None if descriptor is None else self._person.reference_keys(descriptor),
                None if descriptor is None else self._person.probe_keys(descriptor[None]))
        with self._cache_lock:
            self._cache[tag] = keys
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return keys

    def match(self, original: np.ndarray, known: Collection[str] = (), *, photo: np.ndarray | None = None,
              face=None, person: bool = True, register: bool = True) -> Match:
        """Resolves ``original`` (see `resolve`) and says how; with ``register``, teaches the index what it did not
        recognise of this face (or call `register` once the face is charged)."""
        original = _check_original(original)
        known = known if isinstance(known, (set, frozenset)) else set(known)
        own, picture_keys, picture_probes, person_keys, person_probes = self._keys_of(
            original, photo=photo, face=face, person=person and self.persons)
        self.index.refresh()
        votes = {"picture": self._picture.votes(
            picture_probes, lambda keys: self.index.lookup("picture", keys, refresh=False))}
        if person_probes is not None:
            votes["person"] = self._person.votes(
                person_probes, lambda keys: self.index.lookup("person", keys, refresh=False))
        chosen, by = None, "new"
        for kind, needed in (("person", PERSON_MIN_VOTES), ("picture", PICTURE_MIN_VOTES)):
            found = [(v, s in known, s) for s, v in votes.get(kind, {}).items() if v >= needed]
            if found:
                chosen, by = max(found)[2], kind  # most votes; a subject in the ledger first on a tie
                break
        if chosen is None and self._legacy is not None and known:
            chosen = next((c for c in self._legacy.candidates(original) if c in known), None)
            by = "legacy" if chosen is not None else "new"
        if chosen is None:
            chosen = own
        pending = []
        if by != "picture":
            pending.append(("picture", tuple(picture_keys)))
        if by != "person" and person_keys is not None:
            pending.append(("person", tuple(person_keys)))
        result = Match(chosen, by, {k: v.get(chosen, 0) for k, v in votes.items()}, tuple(pending))
        if register:
            self.register(result)
        logger.debug("face resolved by %s", by)  # never the subject id (the host's logs must not link sessions)
        return result

    def register(self, match: Match) -> None:
        """Teaches the index what `match` did not recognise of its face (its ``pending`` band keys). Call it once the
        face's release is charged: a refused request must not grow the index."""
        for kind, keys in match.pending:
            self.index.add(kind, keys, match.subject_id)

    def resolve(self, original: np.ndarray, known: Collection[str], *, photo: np.ndarray | None = None,
                face=None, person: bool = True) -> str:
        """The face's subject: the person it shows if the index knows them, else the picture it is an edit of, else
        (older ledgers) the picture code of `subjects.SubjectKeyer` found in ``known``, else a new subject. The face's
        band keys are added to the index (see the module), so call this only for a face about to be charged.

        Args:
            original (`np.ndarray`): (H, W, 3) uint8: `images.decode_original`'s output, or a face's aligned crop.
            known (`Collection[str]`): the ledger's subjects (``ledger.subjects()``).
            photo (`np.ndarray`, *optional*): the picture ``face`` was found in (default ``original``).
            face (`DetectedFace`, *optional*): the face to describe (default: the most confident one found).
            person (`bool`): describe the person (False: the picture only, e.g. for a picture whose faces are keyed
                on their own).
        """
        return self.match(original, known, photo=photo, face=face, person=person).subject_id

    def candidates(self, original: np.ndarray, known: Collection[str] = ()) -> list[str]:
        """The subject ids this face may be, most likely first, ending with its own (a new subject's) id; the index
        is not changed."""
        m = self.match(original, known, register=False)
        own = self.subject_id(original)
        return [m.subject_id] + ([own] if own != m.subject_id else [])


def open_space_keyer(folder, secret: bytes, *, ledger=None, new_index: bool = False,
                     persons: bool = True) -> FaceIdentityKeyer:
    """The Space's keyer on the index next to its ledger (`open_subject_index`; same arguments and errors)."""
    return FaceIdentityKeyer(secret, open_subject_index(folder, secret, ledger=ledger, new_index=new_index),
                             persons=persons)
