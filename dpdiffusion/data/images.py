"""Image conversion at the public boundary: any PIL mode, numpy array or tensor to a model tensor, and back."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch

MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 4096 * 4096


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL mode to 8-bit RGB (16/32-bit greyscale rescaled, alpha composited on white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"a mode {image.mode} image holds NaN or infinite pixel values")
        hi = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0, 0, 255).round().astype(np.uint8)
        return PIL.Image.fromarray(arr, mode="L").convert("RGB")
    if image.mode in ("La", "RGBa"):  # premultiplied alpha: Pillow converts these only to their plain forms
        image = image.convert(image.mode[:-1] + "A")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_size(width: int, height: int, name: str) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} is {width}x{height} px; each side must be >= {MIN_IMAGE_SIDE} px")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{name} is {width}x{height} px; at most {MAX_IMAGE_PIXELS} pixels are accepted")


def resize_square(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` (bicubic)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if side == size else image.resize((size, size), PIL.Image.BICUBIC)


def _array_to_pil(arr: np.ndarray, name: str) -> PIL.Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"{name} must be an (H, W), (H, W, 3|4) or (3, H, W) array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is an empty array (shape {arr.shape}); each side must be >= {MIN_IMAGE_SIDE} px")
    if not np.isfinite(arr).all() if arr.dtype.kind == "f" else False:
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.dtype == np.uint8:
        data = arr
    elif arr.dtype == np.uint16:
        data = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif arr.dtype.kind == "f":
        if arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
            raise ValueError(f"{name}: float arrays must hold values in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
        data = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    else:
        raise ValueError(f"{name}: unsupported array dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    return PIL.Image.fromarray(data)


def images_to_tensor(images: Any, size: int) -> torch.Tensor:
    """Convert the pipeline's ``images`` argument to a float tensor ``(B, 3, size, size)`` in ``[-1, 1]``.

    Accepts a PIL image, a list of PIL images, a numpy array (``(H, W[, C])`` or a batch ``(B, H, W, C)``,
    uint8/uint16 or float in [0, 1]) or a torch tensor ``(B, 3, H, W)``/``(3, H, W)`` with values in [0, 1]
    (diffusers' convention). Any PIL mode is converted to RGB; any size is centre-cropped and resized.

    Raises:
        ValueError: empty batch, unsupported type/shape/dtype, values out of range, or an image too small/huge.
    """
    if isinstance(images, (PIL.Image.Image, np.ndarray, torch.Tensor)):
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] not in (1, 3):
                raise ValueError(f"images tensor must be (B, 3, H, W) or (3, H, W), got shape {tuple(images.shape)}")
            if images.shape[0] == 0:
                raise ValueError("images is an empty batch; pass at least one image")
            if not torch.isfinite(images).all() or images.min() < -1e-6 or images.max() > 1 + 1e-6:
                raise ValueError("images tensor values must be finite and in [0, 1]")
            images = [img.permute(1, 2, 0).float().cpu().numpy() for img in images]
        else:
            images = [images]
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a PIL image, an array, a tensor or a non-empty list of them")
    out = []
    for i, img in enumerate(images):
        name = f"images[{i}]"
        if isinstance(img, torch.Tensor):
            img = img.detach().cpu().numpy()
            if img.ndim == 3 and img.shape[0] in (1, 3):
                img = np.moveaxis(img, 0, -1)
        if isinstance(img, np.ndarray):
            img = _array_to_pil(img, name)
        if not isinstance(img, PIL.Image.Image):
            raise ValueError(f"{name} has unsupported type {type(img).__name__}; use PIL images, arrays or tensors")
        _check_size(*img.size, name)  # before decoding any pixel data: a huge image is refused cheaply
        try:
            img = resize_square(to_rgb(img), size)
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # truncated/corrupt data, unsupported mode
            raise ValueError(f"{name} (mode {img.mode}, {img.size[0]}x{img.size[1]} px) cannot be read as an RGB "
                             f"image: {type(err).__name__}: {err}") from err
        out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 127.5 - 1.0


def tensor_to_output(x: torch.Tensor, output_type: str):
    """Model tensor ``(B, 3, H, W)`` in [-1, 1] to ``"pil"`` (list), ``"np"`` (B, H, W, 3 float in [0, 1]) or ``"pt"``."""
    x01 = ((x.float() + 1) / 2).clamp(0, 1)
    if output_type == "pt":
        return x01
    arr = x01.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    if output_type == "pil":
        return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
    raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got output_type={output_type!r}")
