"""The Space's photo mode: every face of an uploaded photo protected and pasted back, each on its own budget.

The photo arrives like the face mode's picture: read in the browser, shrunk there to at most ``PHOTO_SIDE`` px on
its long side and sent as a data URL inside the request (`images.decode_photo` checks the limits); it is never a
Gradio file upload, so it never reaches a disk or a file route. Each face is found and keyed exactly as the face mode
finds and keys it (`subjects.find_face_crops`: the keyed hash of its aligned crop), so a face has one budget in both
modes. The release goes through `dpdiffusion.faces.protect_photos` on those same faces: each face is FFHQ-aligned to
the model's input, released (charged to *that face's* subject first) and pasted back; the rest of the photo is
returned as it was. The protected photo goes back as a data URL in the answer (`photo_view`), not as a file: it holds
the upload's own pixels outside the faces, so the Space writes no file of it either. A photo with no face releases
and charges nothing.

What the answer says: this request's figures (each face's epsilon and delta), never what a face has left or what
other sessions spent; a refusal by the ledger says only that the release does not fit (`session.refusal_text`).
"""

from __future__ import annotations

import logging
import math
import secrets

import numpy as np

from .config import photo_domain_refusal
from .images import decode_photo, image_to_data_url
from .report import fmt
from .session import FaceLedger, ReleaseRefused, refusal_text
from .subjects import FoundFaces, find_face_crops

logger = logging.getLogger(__name__)


def protect_photo(space, photo, attributes, epsilon) -> tuple:
    """Protect every face of ``photo`` at ``epsilon``.

    A Space serving a model that knows only synthetic faces (the embedded default) refuses every photo with the
    model's domain and the commands that serve real faces, before the photo is decoded (`config.photo_domain_refusal`),
    unless it was launched with ``--allow-domain-mismatch`` (``SpaceConfig.allow_domain_mismatch``).

    Args:
        space (`DPSpace`): the app (pipeline, ledger, face keying, config).
        photo: the upload: a ``data:image/...;base64`` URL (what the page sends), or an (H, W, 3) uint8 array.
        attributes (`list[str]`): the attributes to protect.
        epsilon (`float`): epsilon of each face's release.

    Returns:
        ``(annotated, message)``: ``(image, [((x0, y0, x1, y1), label), ...])`` (the protected photo, (H, W, 3)
        uint8, and each face's box; `None` when nothing was released) and a Markdown sentence with the figures or
        the reason.
    """
    import torch

    from dpdiffusion.faces.photos import NoFaceFoundError, protect_photos

    config = space.config
    refusal = photo_domain_refusal(space.pipe, config)  # a model that knows only synthetic faces: not on photos
    if refusal is not None:
        return None, f"**Refused**: {refusal} Nothing was released and nothing was charged."
    try:  # request-only refusals, before anything is detected or the ledger is read
        photo = decode_photo(photo)
        attributes = space.check_attributes(attributes)
        eps = space.check_epsilon(float(epsilon) if epsilon is not None else None)
    except (TypeError, ValueError) as exc:
        return None, f"**Refused**: {exc}"
    try:
        found = find_face_crops(photo, required=True)
    except ImportError:
        return None, ("**Refused**: the photo mode needs the faces extra (dlib), which this Space does not have; "
                      "nothing was released.")
    if not found:
        return None, ("**No face was found** in this photo (faces of at least 48 px, detector score at least 0.5), "
                      "so nothing was released and nothing was charged.")
    try:
        with space._new_subject_lock:  # faces resolved against the ledger and charged before another release
            known = set(space.ledger.subjects())
            matches = [space.subjects.match(crop, known, photo=photo, face=face, register=False)
                       for face, crop in found]
            ids = [m.subject_id for m in matches]
            if len(set(ids)) != len(ids):
                return None, ("**Refused**: two faces of this photo look the same to the app's face key, so they "
                              "cannot be charged separately; nothing was released and nothing was charged.")
            out = protect_photos(
                space.pipe, [photo], detector=FoundFaces([f for f, _ in found]), subject_ids=["photo"],
                face_subject_id=lambda _, j: ids[j],
                ledger=FaceLedger(space.ledger, on_charged=lambda: [space.subjects.register(m) for m in matches]),
                attributes=attributes,
                epsilon=eps, delta=config.delta, num_inference_steps=config.num_inference_steps, secure_mode=True,
                generator=torch.Generator().manual_seed(secrets.randbits(63)), output_type="np")
    except ReleaseRefused as exc:
        logger.info("photo release refused by the ledger (%s)", exc.kind)
        return None, f"**Refused**: {refusal_text(config.budget_epsilon, config.delta)}"
    except NoFaceFoundError:  # pragma: no cover - the faces were found above
        return None, "**No face was found** in this photo, so nothing was released and nothing was charged."
    except (TypeError, ValueError) as exc:  # the pipeline's checks of the request
        return None, f"**Refused**: {exc}"
    if out.noise_source != "csprng":
        return None, "**Withheld**: the privacy noise was not drawn from the OS CSPRNG."
    image = (np.clip(out.images[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)
    faces = out.faces[0]
    boxes = [(tuple(int(v) for v in f.box), f"face {j + 1}: ε={fmt(f.epsilon)}") for j, f in enumerate(faces)]
    logger.info("photo mode: %d face(s) protected at epsilon=%.4g", len(faces), eps)
    eps_text = "inf" if not math.isfinite(out.epsilon) else fmt(out.epsilon)
    return (image, boxes), (f"Protected **{len(faces)} face(s)**, each released at ε={eps_text}, "
                            f"δ={out.delta:g} ({out.guarantee}) and charged to its own budget (the same budget as "
                            "that face in the face mode); the rest of the photo is shown as uploaded (not covered by "
                            "the guarantee).")


def photo_view(annotated) -> dict:
    """The value of the page's protected-photo component: the photo as a PNG data URL and each face's box (in
    percent of the photo) with its label; ``{}`` for nothing. Nothing of it is written to a file."""
    if annotated is None:
        return {}
    image, boxes = annotated
    h, w = image.shape[:2]
    return {"image": image_to_data_url(image), "width": int(w), "height": int(h),
            "boxes": [{"left": 100.0 * x0 / w, "top": 100.0 * y0 / h, "width": 100.0 * (x1 - x0) / w,
                       "height": 100.0 * (y1 - y0) / h, "label": label} for (x0, y0, x1, y1), label in boxes]}
