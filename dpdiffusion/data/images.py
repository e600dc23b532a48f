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


# the value ranges a float image may be given in: diffusers' convention for float arrays and tensors ([0, 1], what
# `VaeImageProcessor.preprocess` expects) and the model's own range ([-1, 1]); never guessed from the values
INPUT_RANGES = ((0.0, 1.0), (-1.0, 1.0))
_RANGE_TOLERANCE = 1e-6


def check_input_range(input_range: Any) -> tuple[float, float]:
    """Validate ``input_range``: ``(0, 1)`` (the default, diffusers' convention) or ``(-1, 1)`` (the model's range).

    Raises:
        ValueError: naming ``input_range`` and the two ranges allowed.
    """
    try:
        value = tuple(float(v) for v in input_range)
    except (TypeError, ValueError):
        value = None
    if value not in INPUT_RANGES:
        raise ValueError("input_range must be (0, 1) (diffusers' convention for float images) or (-1, 1) (the "
                         f"model's range), got input_range={input_range!r}")
    return value


def _image_list(images: Any) -> list:
    """The images of a call, one entry each: a batch (4-D array or tensor) is split, and a list of batches is
    concatenated, as diffusers' ``VaeImageProcessor.preprocess`` does."""
    if isinstance(images, PIL.Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.ndim not in (2, 3, 4) or (images.ndim >= 3 and images.shape[-3] not in (1, 3, 4)):
            raise ValueError("images tensor must be (B, C, H, W) or (C, H, W) with C = 1, 3 or 4, got shape "
                             f"{tuple(images.shape)}")
        out = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, np.ndarray):
        out = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a PIL image, an array, a tensor or a non-empty list of them")
    else:
        out = []
        for item in images:
            if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:  # a list of batches: concatenated
                out.extend(list(item))
            else:
                out.append(item)
    if not out:
        raise ValueError("images is an empty batch; pass at least one image")
    return out


def _float_image(x: torch.Tensor, name: str, size: int, input_range: tuple[float, float]) -> torch.Tensor:
    """A float image ``(C, H, W)`` (C = 1, 3, 4) in ``input_range`` -> ``(3, size, size)`` in [-1, 1], in floats.

    Greyscale is repeated to RGB, alpha composited on white (as ``to_rgb``); the image is centre-cropped to a square
    and, only when its side differs from ``size``, resized with antialiased bicubic interpolation (clamped back to
    the range). No 8-bit rounding anywhere: at the model's size the values are the caller's, rescaled."""
    if x.numel() == 0:
        raise ValueError(f"{name} is an empty array (shape {tuple(x.shape)}); each side must be >= {MIN_IMAGE_SIDE} px")
    height, width = x.shape[-2:]
    _check_size(width, height, name)  # before reading the values: a huge array is refused cheaply
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # half precision: resampling on the CPU needs float32
    lo, hi = input_range
    low, high = float(x.min()), float(x.max())
    if low < lo - _RANGE_TOLERANCE or high > hi + _RANGE_TOLERANCE:
        hint = ""
        if lo == 0.0 and low >= -1.0 - _RANGE_TOLERANCE and high <= 1.0 + _RANGE_TOLERANCE:
            hint = ("; for an image already in the model's range pass input_range=(-1, 1) (the range is never "
                    "guessed from the values: a bright image in [-1, 1] has no negative value)")
        raise ValueError(f"{name}: float values must be in [{lo:g}, {hi:g}] (input_range=({lo:g}, {hi:g})), got "
                         f"[{low:.3g}, {high:.3g}]{hint}")
    x01 = (x if lo == 0.0 else (x + 1.0) / 2.0).clamp(0.0, 1.0)  # (C, H, W)
    if x01.shape[0] == 1:
        x01 = x01.expand(3, -1, -1)
    elif x01.shape[0] == 4:  # alpha composited on white, as to_rgb does for PIL images
        x01 = x01[:3] * x01[3:] + (1.0 - x01[3:])
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x01 = x01[:, top:top + side, left:left + side]
    if side != size:
        x01 = torch.nn.functional.interpolate(x01[None], size=(size, size), mode="bicubic", align_corners=False,
                                              antialias=True)[0].clamp(0.0, 1.0)
    return x01 * 2.0 - 1.0


def _as_chw(arr: np.ndarray | torch.Tensor, name: str, *, tensor: bool) -> torch.Tensor:
    """A float array to ``(C, H, W)``: tensors are channel-first (diffusers' convention), arrays channel-last unless
    the first axis is the only one that can be channels (as ``_array_to_pil``)."""
    x = arr.detach().cpu() if tensor else torch.from_numpy(np.ascontiguousarray(arr))
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        if tensor and x.shape[0] in (1, 3, 4):
            return x
        if not tensor and x.shape[0] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
            return x
        if x.shape[-1] in (1, 3, 4):
            return x.permute(2, 0, 1)
    raise ValueError(f"{name} must be an (H, W), (H, W, 3|4) or (3, H, W) array, got shape {tuple(x.shape)}")


def _one_image(img: Any, name: str, size: int, input_range: tuple[float, float]) -> torch.Tensor:
    """One image -> ``(3, size, size)`` in [-1, 1]: 8-bit inputs (PIL images, uint8 arrays and tensors) through
    PIL as 8-bit RGB; uint16 and float inputs in floats."""
    if isinstance(img, torch.Tensor):
        if img.dtype.is_floating_point:
            return _float_image(_as_chw(img, name, tensor=True), name, size, input_range)
        img = img.detach().cpu().numpy()
        if img.ndim == 3 and img.shape[0] in (1, 3, 4):
            img = np.moveaxis(img, 0, -1)  # tensors are channel-first
    if isinstance(img, np.ndarray):
        if img.dtype.kind == "f":
            return _float_image(_as_chw(img, name, tensor=False), name, size, input_range)
        if img.dtype == np.uint16:  # 16 bits kept: a fixed range, whatever input_range says
            return _float_image(_as_chw(img.astype(np.float64) / 65535.0, name, tensor=False), name, size,
                                (0.0, 1.0))
        img = _array_to_pil(img, name)
    if not isinstance(img, PIL.Image.Image):
        raise ValueError(f"{name} has unsupported type {type(img).__name__}; use PIL images, arrays or tensors")
    _check_size(*img.size, name)  # before decoding any pixel data: a huge image is refused cheaply
    try:
        img = resize_square(to_rgb(img), size)
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # truncated/corrupt data, unsupported mode
        raise ValueError(f"{name} (mode {img.mode}, {img.size[0]}x{img.size[1]} px) cannot be read as an RGB "
                         f"image: {type(err).__name__}: {err}") from err
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def images_to_tensor(images: Any, size: int, *, input_range: Any = (0.0, 1.0)) -> torch.Tensor:
    """Convert the pipeline's ``image`` argument to a float tensor ``(B, 3, size, size)`` in ``[-1, 1]``.

    Takes what diffusers' ``VaeImageProcessor.preprocess`` takes: a PIL image, a numpy array (``(H, W[, C])``,
    ``(C, H, W)`` or a batch ``(B, H, W, C)``), a torch tensor (``(C, H, W)`` or a batch ``(B, C, H, W)``) or a list of
    any of these, batches included (a list of ``(1, 3, H, W)`` tensors is concatenated). Any PIL mode is converted to
    RGB; any size is centre-cropped and resized to ``size``.

    Value ranges: PIL images and uint8 arrays/tensors are 8-bit (0..255) and stay 8-bit; uint16 arrays are 0..65535
    and are kept in floats; float arrays and tensors are taken in ``input_range``: ``(0, 1)`` by default, diffusers'
    convention for image tensors and arrays, or ``(-1, 1)``, the model's range, when the caller says so. The range is
    never guessed from the values (diffusers' image processor reads a tensor with a negative value as [-1, 1] with a
    warning; a bright image in [-1, 1] has none, so this pipeline asks instead and refuses values outside the range
    given). Float inputs are never rounded to 8 bits: at the model's size they reach the model as given (rescaled to
    [-1, 1]); other sizes are resampled in floats.

    Raises:
        ValueError: empty batch, unsupported type/shape/dtype, values outside ``input_range``, a bad ``input_range``,
        or an image too small/huge.
    """
    input_range = check_input_range(input_range)
    items = _image_list(images)
    out = [_one_image(img, f"images[{i}]", size, input_range).float() for i, img in enumerate(items)]
    return torch.stack(out)


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
