"""Protect every face of photos in the wild: detect -> FFHQ-align -> ``pipe(crops)`` -> paste back.

What is released for a photo: the photo itself, in which each detected face's aligned crop has been replaced by the
pipeline's protected release of that crop (pasted through the inverse alignment with a feathered mask). The privacy
figures of each face are those of the pipeline's release of its crop (each face is its own subject); pixels outside
the pasted masks are the input's own bytes and carry no guarantee: the background, a face the detector missed, and
the hair or clothes outside a mask are released as they are. A photo in which no face is found is refused with a
``ValueError`` naming its index before anything is released or charged.

The integration points are ``protect_photos`` (the pipeline's ``faces="detect"``) and ``protect_photo`` (one photo,
for the ``protect`` CLI; raises ``NoFaceFoundError``, a ``ValueError`` with a ``reason``, when it must be skipped).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from ..data.images import _array_to_pil, _check_size, to_rgb
from .align import align_face
from .detect import IDENTITY_THRESHOLD, DetectedFace, FaceDetector, default_detector, default_embedder
from .paste import DEFAULT_FEATHER, DEFAULT_INSET, paste_face

logger = logging.getLogger(__name__)

# px (detector box side). The photo is searched at 80 / min_face_size of its size, so detection time grows as
# (1 / min_face_size)^2: measured on data.astronaut() (512 px, one core) about 50 ms at 80 px, 150 ms at 48 px,
# 210 ms at 40 px. At 48 px the FFHQ quad is about 100 px, three times the embedded model's 32 px input.
DEFAULT_MIN_FACE_SIZE = 48
DEFAULT_MIN_CONFIDENCE = 0.5  # dlib HOG margin: true faces on scikit-image's photos score > 1, stray hits < 0.5
FACE_MODES = ("aligned", "detect")


class NoFaceFoundError(ValueError):
    """A photo in which no face passed the detector's filters; nothing was released for it.

    Attributes:
        index (`int`): the photo's index in the call.  reason (`str`): why it was refused.
    """

    def __init__(self, index: int, reason: str):
        self.index, self.reason = int(index), reason
        super().__init__(f"photos[{index}]: {reason}; nothing was released for it")


@dataclass
class FaceRecord:
    """One protected face of a photo.

    Attributes:
        box (`tuple[int, int, int, int]`): the detector's box ``(x0, y0, x1, y1)`` in photo pixels.
        paste_box (`tuple[int, int, int, int]`): the box outside which the photo's bytes are unchanged by this face.
        confidence (`float`): detector score.  quad (`list`): the FFHQ crop quad (4 corners ``(x, y)``).
        subject_id (`str | None`): the ledger subject charged for this face.
        epsilon, delta, noise_multiplier, sigmas, guarantee, noise_source: the privacy figures of this face's
            release.
        remaining_budget (`float | None`): the subject's epsilon left, when a ledger was used.
        identity_distance (`float | None`): dlib-ResNet distance between the original and the pasted face;
            ``identity_match`` is ``identity_distance < 0.6`` (dlib's same-person threshold).
    """

    box: tuple
    paste_box: tuple
    confidence: float
    quad: list
    subject_id: str | None
    epsilon: float
    delta: float
    noise_multiplier: float
    sigmas: dict
    guarantee: str
    noise_source: str = "csprng"
    remaining_budget: float | None = None
    identity_distance: float | None = None
    identity_match: bool | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["box"], d["paste_box"] = list(self.box), list(self.paste_box)
        d["epsilon"] = self.epsilon if math.isfinite(self.epsilon) else "inf"
        return d


@dataclass
class FacesOutput(BaseOutput):
    """Output of ``protect_photos`` / ``pipe(..., faces="detect")``.

    Attributes:
        images (`list`): the whole photos at their input size with the protected faces pasted in (PIL images,
            ``(H, W, 3)`` float arrays in [0, 1], or ``(3, H, W)`` tensors, after ``output_type``).
        faces (`list[list[FaceRecord]]`): per photo, its protected faces.
        report (`PrivacyReport`): the privacy figures shared by every face of the call (``None`` when nothing was
            released).
        skipped (`list[dict]`): with ``on_no_face="skip"``, ``{"index", "reason"}`` of each photo left out (its
            entry in ``images`` is ``None``).
        epsilon, delta, guarantee, noise_source: shortcuts to ``report``.
    """

    images: list
    faces: list
    report: Any = None
    skipped: list = field(default_factory=list)
    epsilon: float | None = None
    delta: float | None = None
    guarantee: str | None = None
    noise_source: str | None = None


@dataclass
class PhotoResult:
    """``protect_photo``'s result: the pasted photo (``(H, W, 3)`` uint8) and its face records."""

    image: np.ndarray
    faces: list = field(default_factory=list)


def photo_to_array(photo: Any, name: str = "photo") -> np.ndarray:
    """A PIL image, an ``(H, W[, C])``/``(3, H, W)`` array or a ``(3, H, W)`` tensor in [0, 1] -> ``(H, W, 3)``
    uint8 RGB (float values are rounded to 8 bits; uint8 input keeps its bytes)."""
    if isinstance(photo, torch.Tensor):
        photo = photo.detach().cpu().float().numpy()
    if isinstance(photo, np.ndarray):
        photo = _array_to_pil(photo, name)
    if not isinstance(photo, PIL.Image.Image):
        raise ValueError(f"{name} has unsupported type {type(photo).__name__}; use PIL images, arrays or tensors")
    _check_size(*photo.size, name)
    return np.asarray(to_rgb(photo), dtype=np.uint8).copy()


def _photos_list(photos: Any) -> list:
    if isinstance(photos, (PIL.Image.Image,)):
        return [photos]
    if isinstance(photos, np.ndarray):
        return list(photos) if photos.ndim == 4 else [photos]
    if isinstance(photos, torch.Tensor):
        return list(photos) if photos.ndim == 4 else [photos]
    if isinstance(photos, (str, bytes)) or not isinstance(photos, Sequence) or len(photos) == 0:
        raise ValueError("photos must be a PIL image, an array, a tensor or a non-empty list of them")
    return list(photos)


def check_face_arguments(min_face_size, min_confidence, feather=DEFAULT_FEATHER, inset=DEFAULT_INSET) -> None:
    """Validate the detection and paste arguments (``ValueError`` naming the argument and its range)."""
    if isinstance(min_face_size, bool) or not isinstance(min_face_size, (int, np.integer)) or min_face_size < 1:
        raise ValueError(f"min_face_size must be an integer >= 1 (pixels), got min_face_size={min_face_size!r}")
    if (isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float))
            or not math.isfinite(min_confidence)):
        raise ValueError(f"min_confidence must be a finite number (detector score), "
                         f"got min_confidence={min_confidence!r}")
    if not isinstance(inset, (int, float)) or not 0.0 <= inset < 0.5:
        raise ValueError(f"inset must be in [0, 0.5), got inset={inset!r}")
    if not isinstance(feather, (int, float)) or not 0.0 < feather <= 0.5 - inset:
        raise ValueError(f"feather must be in (0, {0.5 - inset}], got feather={feather!r}")


def find_faces(photo: np.ndarray, *, detector: FaceDetector | None = None, min_face_size: int = DEFAULT_MIN_FACE_SIZE,
               min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> list[DetectedFace]:
    """The faces of ``photo`` (``(H, W, 3)`` uint8) that are at least ``min_face_size`` px and ``min_confidence``."""
    detector = detector if detector is not None else default_detector()
    faces = detector.detect(photo, min_face_size=min_face_size)
    kept = [f for f in faces if f.size >= min_face_size and f.confidence >= min_confidence]
    if len(kept) < len(faces):
        logger.info("dropped %d detection(s) below min_face_size=%d px or min_confidence=%g",
                    len(faces) - len(kept), min_face_size, min_confidence)
    return kept


def _no_face_reason(min_face_size, min_confidence) -> str:
    return f"no face found (min_face_size={min_face_size} px, min_confidence={min_confidence})"


def protect_photos(pipe, photos: Any, *, min_face_size: int = DEFAULT_MIN_FACE_SIZE,
                   min_confidence: float = DEFAULT_MIN_CONFIDENCE, detector: FaceDetector | None = None,
                   subject_ids: Sequence[str] | None = None,
                   face_subject_id: Callable[[str, int], str] | None = None,
                   crop_subject_id: Callable[[np.ndarray], str] | None = None,
                   face_generator: Callable[[int, int], torch.Generator] | None = None, identity: bool = False,
                   feather: float = DEFAULT_FEATHER, inset: float = DEFAULT_INSET, on_no_face: str = "raise",
                   output_type: str = "pil", return_dict: bool = True, **pipe_kwargs):
    r"""Detect, align, protect and paste back every face of each photo.

    Args:
        pipe (`DPDiffusionPipeline`): the pipeline; its ``image_size`` is the crop size.
        photos: a PIL image, an array, a tensor in [0, 1], or a list of them; any size (at least 8 px a side).
        min_face_size (`int`): smallest face (detector box side, px) to protect; smaller ones are not searched for
            and stay as they are in the photo. Default 48.
        min_confidence (`float`): smallest detector score to accept. Default 0.5.
        detector (`FaceDetector`): a backend with ``detect(image, *, min_face_size) -> list[DetectedFace]``
            (default: dlib HOG + 68 landmarks, from the ``faces`` extra).
        subject_ids (`list[str]`): one subject id per photo; face ``j`` of photo ``i`` is charged to the subject
            ``face_subject_id(subject_ids[i], j)`` (default ``f"{id}/face{j}"``). Required with ``ledger=``.
        face_subject_id (`Callable[[str, int], str]`): how a face's subject id is derived from its photo's.
        crop_subject_id (`Callable[[np.ndarray], str]`): instead, a face's subject id computed from its aligned crop
            (``(S, S, 3)`` uint8), e.g. the Space's keyed hash of the normalised face content, so that the same face
            in another photo charges the same budget.
        face_generator (`Callable[[int, int], torch.Generator]`): the generator of face ``j`` of photo ``i`` (for
            reproducible batch jobs, e.g. seeded by ``(seed, row, j)``); instead of ``generator``.
        identity (`bool`): also compute dlib's 128-d ResNet distance between each original and pasted face (an
            identity-leakage figure: below 0.6 dlib calls them the same person; ``scope="attributes"`` keeps the
            identity in the residual by design, so a match there is expected, not a failure).
        feather (`float`), inset (`float`): the paste mask (see ``dpdiffusion.faces.paste``).
        on_no_face (`str`): ``"raise"`` (default): a photo with no face refuses the whole call before anything is
            released; ``"skip"``: such a photo gets ``None`` in ``images``, no faces, and an entry
            ``{"index", "reason"}`` in ``skipped`` (for batch jobs that write ``skipped.jsonl``); the others are
            protected.
        output_type (`str`): ``"pil"``, ``"np"`` (``(H, W, 3)`` float in [0, 1]) or ``"pt"`` (``(3, H, W)``).
        **pipe_kwargs: passed to ``pipe(crops, ...)`` (``epsilon``, ``attributes``, ``generator``, ``ledger`` ...;
            the crops are its ``image``). A list of generators must hold one per face; ``num_images_per_prompt``
            must be 1.

    Returns:
        `FacesOutput` (or ``(images, faces)`` when ``return_dict=False``).

    Raises:
        ValueError: a bad argument, or ``NoFaceFoundError`` (a ``ValueError``) naming the first photo with no face;
        nothing is released or charged then.
    """
    check_face_arguments(min_face_size, min_confidence, feather, inset)
    if on_no_face not in ("raise", "skip"):
        raise ValueError(f"on_no_face must be 'raise' or 'skip', got on_no_face={on_no_face!r}")
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got output_type={output_type!r}")
    for key in ("image", "images", "subject_ids", "output_type", "return_dict", "faces"):
        if key in pipe_kwargs:
            raise ValueError(f"{key} is set by protect_photos and cannot be passed through to the pipeline")
    if pipe_kwargs.get("num_images_per_prompt", 1) != 1:
        raise ValueError("num_images_per_prompt must be 1 with protect_photos (a photo holds one release of each "
                         f"face), got num_images_per_prompt={pipe_kwargs['num_images_per_prompt']!r}; call again for "
                         "another release")
    items = _photos_list(photos)
    if subject_ids is not None and len(subject_ids) != len(items):
        raise ValueError(f"subject_ids has {len(subject_ids)} ids for {len(items)} photos; pass one per photo")
    if face_generator is not None and pipe_kwargs.get("generator") is not None:
        raise ValueError("pass either generator or face_generator, not both")
    if subject_ids is not None and crop_subject_id is not None:
        raise ValueError("pass either subject_ids or crop_subject_id, not both")
    if pipe_kwargs.get("ledger") is not None and subject_ids is None and crop_subject_id is None:
        raise ValueError("subject_ids must be given with a ledger (one id per photo; each face is its own subject), "
                         "or crop_subject_id")
    face_subject_id = face_subject_id or (lambda sid, j: f"{sid}/face{j}")
    arrays = [photo_to_array(p, f"photos[{i}]") for i, p in enumerate(items)]

    # 1. detect and align everything first: a photo with no face is refused before anything is released
    found, aligned, face_ids, skipped, gens = [], [], [], [], []
    for i, arr in enumerate(arrays):
        faces = find_faces(arr, detector=detector, min_face_size=min_face_size, min_confidence=min_confidence)
        if not faces:
            reason = _no_face_reason(min_face_size, min_confidence)
            if on_no_face == "raise":
                raise NoFaceFoundError(i, reason)
            logger.info("photos[%d] skipped: %s", i, reason)
            skipped.append({"index": i, "reason": reason})
        found.append(faces)
        for j, face in enumerate(faces):
            aligned.append(align_face(arr, face.landmarks, pipe.image_size))
            if crop_subject_id is not None:
                face_ids.append(str(crop_subject_id(aligned[-1].crop)))
            else:
                face_ids.append(face_subject_id(str(subject_ids[i]), j) if subject_ids is not None else None)
            if face_generator is not None:
                gens.append(face_generator(i, j))
    named = subject_ids is not None or crop_subject_id is not None
    if named and len(set(face_ids)) != len(face_ids):
        dup = sorted({f for f in face_ids if face_ids.count(f) > 1})
        raise ValueError(f"every face must have a distinct subject id in one call; got duplicates {dup}")

    # 2. one release of all the crops (one subject per face)
    report, remaining, protected = None, None, None
    if aligned:
        crops = np.stack([a.crop for a in aligned])  # (N, S, S, 3) uint8
        if face_generator is not None:
            pipe_kwargs = dict(pipe_kwargs, generator=gens)
        out = pipe(crops, subject_ids=face_ids if named else None, output_type="np",  # crops: the `image` argument
                   return_dict=True, **pipe_kwargs)
        protected = np.clip(np.rint(np.asarray(out.images) * 255.0), 0, 255).astype(np.uint8)  # (N, S, S, 3)
        report, remaining = out.report, out.remaining_budget

    # 3. paste back, photo by photo, and the per-face records
    embedder = default_embedder() if identity else None
    results, records, k = [], [], 0
    for i, arr in enumerate(arrays):
        if not found[i]:
            results.append(None)
            records.append([])
            continue
        pasted, recs = arr, []
        for face in found[i]:
            pasted, paste_box = paste_face(pasted, protected[k], aligned[k].quad, feather=feather, inset=inset)
            recs.append(FaceRecord(
                box=tuple(int(v) for v in face.box), paste_box=paste_box, confidence=face.confidence,
                quad=aligned[k].quad.round(3).tolist(), subject_id=face_ids[k], epsilon=report.epsilon,
                delta=report.delta, noise_multiplier=report.noise_multiplier, sigmas=dict(report.sigmas),
                guarantee=report.guarantee, noise_source=report.noise_source,
                remaining_budget=None if remaining is None else float(remaining[k])))
            k += 1
        if embedder is not None:
            for rec in recs:
                dist = embedder.distance(embedder.embed(arr, rec.box), embedder.embed(pasted, rec.box))
                rec.identity_distance, rec.identity_match = dist, bool(dist < IDENTITY_THRESHOLD)
        results.append(pasted)
        records.append(recs)
    logger.info("protected %d face(s) in %d photo(s)", k, len(arrays))

    images = [None if a is None else _to_output(a, output_type) for a in results]
    if not return_dict:
        return images, records
    return FacesOutput(images=images, faces=records, report=report, skipped=skipped,
                       epsilon=None if report is None else report.epsilon,
                       delta=None if report is None else report.delta,
                       guarantee=None if report is None else report.guarantee,
                       noise_source=None if report is None else report.noise_source)


def _to_output(array: np.ndarray, output_type: str):
    if output_type == "pil":
        return PIL.Image.fromarray(array)
    if output_type == "np":
        return array.astype(np.float32) / 255.0
    return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)


def protect_photo(pipe, photo: Any, *, index: int = 0, subject_id: str | None = None, **kwargs) -> PhotoResult:
    r"""One photo for the ``protect`` CLI: the pasted photo (uint8) and its face records.

    Args:
        pipe (`DPDiffusionPipeline`), photo: as in ``protect_photos``.
        index (`int`): the photo's index in the dataset (named in the error).
        subject_id (`str`): the photo's subject id; its faces are charged as ``f"{subject_id}/face{j}"``.
        **kwargs: as ``protect_photos`` (``min_face_size``, ``min_confidence``, ``epsilon``, ``ledger`` ...).

    Returns:
        `PhotoResult` with ``image`` (``(H, W, 3)`` uint8) and ``faces`` (`list[FaceRecord]`).

    Raises:
        NoFaceFoundError: (a ``ValueError`` with ``.index`` and ``.reason``) when the photo has no face: write it to
        ``skipped.jsonl`` and release nothing.
    """
    kwargs.pop("output_type", None)
    try:
        images, faces = protect_photos(pipe, [photo], subject_ids=None if subject_id is None else [subject_id],
                                       output_type="np", return_dict=False, **kwargs)
    except NoFaceFoundError as err:
        raise NoFaceFoundError(index, err.reason) from None
    return PhotoResult(image=np.rint(images[0] * 255.0).astype(np.uint8), faces=faces[0])


def check_faces_mode(faces: Any) -> str:
    """Validate the pipeline's ``faces=`` argument: ``"aligned"`` (inputs are aligned crops) or ``"detect"``."""
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be 'aligned' or 'detect', got faces={faces!r}")
    return faces


def protect_photo_for_display(pipe, photo: Any, **kwargs) -> tuple:
    r"""The Space's handler for an uploaded photo: the photo with its faces protected, and a message.

    Args:
        pipe (`DPDiffusionPipeline`), photo: as in ``protect_photos``; **kwargs: as ``protect_photos``.

    Returns:
        ``(image, message)``: a PIL image and a sentence listing the faces and their epsilon, or ``(None, message)``
        saying that no face was found and nothing was released.
    """
    kwargs.pop("output_type", None)
    try:
        out = protect_photos(pipe, [photo], output_type="pil", **kwargs)
    except NoFaceFoundError as err:
        detail = err.reason.removeprefix("no face found ")
        return None, f"No face was found in the photo {detail}; nothing was released."
    recs = out.faces[0]
    boxes = ", ".join(str(tuple(r.box)) for r in recs)
    eps = "inf" if not math.isfinite(out.epsilon) else f"{out.epsilon:g}"
    return out.images[0], (f"Protected {len(recs)} face(s) at boxes {boxes}, each with epsilon={eps}, "
                           f"delta={out.delta:g} ({out.guarantee}); the rest of the photo is unchanged.")
