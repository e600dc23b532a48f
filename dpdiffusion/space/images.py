"""Images in the Space: decoding and checking uploads (data URLs, in memory only), data URLs of the images shown,
display upscaling and the SynthFaces samples.

An upload never reaches the server's disk, in either mode: the page reads the file in the browser (`layout.py`),
shrinks it there to at most ``PHOTO_SIDE`` px on its long side and sends it as a PNG data URL *inside* the request
(never through Gradio's file upload, which writes a temporary file that its file route then serves). On the server,
`decode_photo` checks the limits before decoding and returns the pixels, which live only in memory: the face mode
releases the photo's centre square (`face_square`, at most ``FACE_SIDE`` px; `decode_original` does both) and keeps
it in the session's memory; the photo mode keeps the photo for the length of its request and returns the protected
photo as a data URL too (`image_to_data_url`), so no file of it is written either.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from functools import lru_cache
from typing import Any

import numpy as np
import PIL.Image

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a file larger than this is refused (in the browser, and again on the server)
MAX_UPLOAD_PIXELS = 4096 * 4096  # ... and so is an image with more pixels than this
MIN_UPLOAD_SIDE = 8
PHOTO_SIDE = 1024  # the page shrinks an upload to at most this many px on its long side before sending it
FACE_SIDE = 256  # the face mode releases the centre square of the picture, shrunk to at most this many px

_DATA_URL = re.compile(r"data:image/(?:png|jpeg|webp|gif|bmp);base64,")


def image_to_data_url(image: np.ndarray | PIL.Image.Image) -> str:
    """PNG data URL of an RGB image (how the page carries images without files)."""
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_photo(value: Any) -> np.ndarray:
    """The uploaded picture as an RGB uint8 array (H, W, 3), at most ``PHOTO_SIDE`` px on its long side, in memory.

    Args:
        value: a ``data:image/...;base64,`` URL (what the page sends), a PIL image or an (H, W, 3) uint8 array.

    Raises:
        ValueError: no image, not an image, larger than ``MAX_UPLOAD_BYTES`` or ``MAX_UPLOAD_PIXELS``, or a side
            below ``MIN_UPLOAD_SIDE``. The message never contains the image's content.
    """
    from ..data.images import to_rgb

    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("nothing loaded yet: upload a picture (or, in the face mode, pick a SynthFaces sample)")
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
    if max(width, height) > PHOTO_SIDE:  # what the page does; a client of the API may send more
        scale = PHOTO_SIDE / max(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), PIL.Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def face_square(photo: np.ndarray) -> np.ndarray:
    """The face mode's picture: the centre square of ``photo``, shrunk to at most ``FACE_SIDE`` px (bicubic)."""
    from ..data.images import resize_square

    h, w = photo.shape[:2]
    return np.asarray(resize_square(PIL.Image.fromarray(photo), min(FACE_SIDE, w, h)), dtype=np.uint8).copy()


def face_square_box(photo: np.ndarray) -> tuple:
    """``(x0, y0, x1, y1)`` of the centre square `face_square` takes from ``photo``."""
    h, w = photo.shape[:2]
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def decode_original(value: Any) -> np.ndarray:
    """The face mode's picture of an upload: `face_square` of `decode_photo` (RGB uint8, at most ``FACE_SIDE`` px a
    side, in memory only). Raises ``ValueError`` as `decode_photo`."""
    return face_square(decode_photo(value))


def upscale_for_display(image: np.ndarray, side: int = FACE_SIDE) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor (a 32 px release shown at about ``side`` px, pixels
    visible as pixels); the stored feedback image keeps the model's resolution."""
    factor = max(1, side // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


@lru_cache(maxsize=4)
def synthfaces_samples(num_samples: int, seed: int, image_size: int) -> np.ndarray:
    """``num_samples`` SynthFaces renders (N, S, S, 3) uint8: synthetic faces anyone may try the app with."""
    from ..data.synthfaces import make_synthfaces_arrays

    images, _ = make_synthfaces_arrays(num_samples, image_size=image_size, seed=seed)
    return images
