"""Photos in the wild: detect every face, FFHQ-align it to the model's input, protect it, paste it back.

``protect_photos(pipe, photos, ...)`` is what ``pipe(photos, faces="detect")`` runs; ``protect_photo`` is the
per-photo form for ``dpdiffusion protect --faces detect``. The detector and landmark backend (dlib, from the
``faces`` extra) is imported lazily, so ``import dpdiffusion.faces`` works without it.
"""

from .align import AlignedFace, align_face, ffhq_quad, unwarp_crop, warp_quad
from .detect import IDENTITY_THRESHOLD, DetectedFace, DlibFaceDetector, DlibFaceEmbedder, FaceDetector
from .paste import feather_mask, paste_face, paste_mask
from .photos import (DEFAULT_MIN_CONFIDENCE, DEFAULT_MIN_FACE_SIZE, FACE_MODES, FaceRecord, FacesOutput,
                     NoFaceFoundError, PhotoResult, check_faces_mode, find_faces, protect_photo,
                     protect_photo_for_display, protect_photos)

__all__ = [
    "AlignedFace", "align_face", "ffhq_quad", "unwarp_crop", "warp_quad", "IDENTITY_THRESHOLD", "DetectedFace",
    "DlibFaceDetector", "DlibFaceEmbedder", "FaceDetector", "feather_mask", "paste_face", "paste_mask",
    "DEFAULT_MIN_CONFIDENCE", "DEFAULT_MIN_FACE_SIZE", "FACE_MODES", "FaceRecord", "FacesOutput", "NoFaceFoundError",
    "PhotoResult", "check_faces_mode", "find_faces", "protect_photo", "protect_photo_for_display", "protect_photos",
]
