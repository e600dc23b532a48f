"""The Space's photo mode: every face of an uploaded photo protected and pasted back, each on its own budget.

A photo of any size (up to the upload limits) goes through `dpdiffusion.faces.protect_photos`: each face is
detected, FFHQ-aligned to the model's input, released (charged to *that face's* ledger subject first: the keyed hash
of its aligned crop, `subjects.SubjectKeyer`, so the same face in a re-upload spends the same budget) and pasted
back; the rest of the photo is shown as it was. A photo with no face releases and charges nothing. Nothing of the
upload is stored.
"""

from __future__ import annotations

import logging
import math
import secrets

import numpy as np

from .images import MAX_UPLOAD_PIXELS, MIN_UPLOAD_SIDE
from .report import fmt

logger = logging.getLogger(__name__)


def protect_photo(space, photo, attributes, epsilon) -> tuple:
    """Protect every face of ``photo`` at ``epsilon``.

    Args:
        space (`DPSpace`): the app (pipeline, ledger, face keying, config).
        photo (`np.ndarray`): (H, W, 3) uint8 upload.
        attributes (`list[str]`): the attributes to protect.
        epsilon (`float`): epsilon of each face's release.

    Returns:
        ``(annotated, message)``: ``(image, [((x0, y0, x1, y1), label), ...])`` for a ``gr.AnnotatedImage`` (or
        ``None`` when nothing was released) and a Markdown sentence with each face's figures or the reason.
    """
    import torch

    from dpdiffusion.faces.photos import NoFaceFoundError, protect_photos
    from dpdiffusion.privacy.ledger import BudgetExceededError

    try:
        photo = _check_photo(photo)
        attributes = list(attributes or [])
        if not attributes:
            raise ValueError("choose at least one attribute to protect")
        eps = float(epsilon)
        config = space.config
        if not config.min_epsilon <= eps <= config.max_epsilon:
            raise ValueError(f"epsilon must be in [{config.min_epsilon:g}, {config.max_epsilon:g}], got {eps:g}")
        with space._new_subject_lock:  # faces resolved against the ledger and charged before another release
            known = set(space.ledger.subjects())
            out = protect_photos(
                space.pipe, [photo], crop_subject_id=lambda crop: space.subjects.resolve(crop, known),
                ledger=space.ledger, attributes=attributes, epsilon=eps, delta=config.delta,
                num_inference_steps=config.num_inference_steps, secure_mode=True,
                generator=torch.Generator().manual_seed(secrets.randbits(63)), output_type="np")
    except NoFaceFoundError:
        return None, ("**No face was found** in this photo (faces of at least 48 px, detector score at least 0.5), "
                      "so nothing was released and nothing was charged.")
    except BudgetExceededError as exc:
        return None, (f"**Refused**: a face in this photo has {fmt(exc.remaining_epsilon)} of its budget left, "
                      f"and this release would cost more (ε={fmt(exc.release_epsilon)} on its own). Nothing was "
                      "released and nothing was charged; choose a smaller ε.")
    except (TypeError, ValueError) as exc:
        return None, f"**Refused**: {exc}"
    if out.noise_source != "csprng":
        return None, "**Withheld**: the privacy noise was not drawn from the OS CSPRNG."
    image = (np.clip(out.images[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)
    faces = out.faces[0]
    boxes = [(tuple(int(v) for v in f.box), f"face {j + 1}: ε={fmt(f.epsilon)}, left {fmt(f.remaining_budget)}")
             for j, f in enumerate(faces)]
    logger.info("photo mode: %d face(s) protected at epsilon=%.4g", len(faces), eps)
    eps_text = "inf" if not math.isfinite(out.epsilon) else fmt(out.epsilon)
    return (image, boxes), (f"Protected **{len(faces)} face(s)**, each released at ε={eps_text}, "
                            f"δ={out.delta:g} ({out.guarantee}) and charged to its own budget; the rest of the "
                            "photo is shown as uploaded (not covered by the guarantee).")


def _check_photo(photo) -> np.ndarray:
    if not isinstance(photo, np.ndarray) or photo.ndim != 3 or photo.shape[-1] not in (3, 4):
        raise ValueError("upload a colour photo")
    h, w = photo.shape[:2]
    if h * w > MAX_UPLOAD_PIXELS or min(h, w) < MIN_UPLOAD_SIDE:
        raise ValueError(f"the photo is {w}x{h} px; photos must be at least {MIN_UPLOAD_SIDE} px a side and at most "
                         f"{MAX_UPLOAD_PIXELS} pixels")
    return np.ascontiguousarray(photo[..., :3].astype(np.uint8))
