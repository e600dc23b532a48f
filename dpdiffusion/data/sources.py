"""What a dataset source names, decided before anything is loaded: a ``save_to_disk`` folder, an image folder, one
image file, or a Hub dataset id.

`dpdiffusion.protect` reads the answer (and the CLI asks first, before loading a model): a slip (a path that does not
exist, a file that is not an image, a name the Hub cannot hold) is refused at once with what is expected, instead of
being sent to the Hub as a dataset id and failing there after its retries. This module imports no heavy library at
import time (``datasets`` and ``huggingface_hub`` only inside the branches that need them).
"""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_KINDS = ("saved", "folder", "file", "hub")

# What a --source may be, in one sentence (the errors end with it)
EXPECTED = ("an image folder (optionally with metadata.csv/jsonl), a save_to_disk folder, one image file or a Hub "
            "dataset id (name or owner/name)")


def image_extensions() -> tuple[str, ...]:
    """The file extensions (lower case, with the dot) that ``datasets``' ``imagefolder`` loader reads."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return tuple(ext.lower() for ext in ImageFolder.EXTENSIONS)


def _looks_like_a_path(source: str) -> bool:
    """A string a user meant as a local path: an image file name, or a first component that is a local folder."""
    head = source.split("/", 1)[0]
    return (os.path.splitext(source)[1].lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif",
                                                    ".tiff", ".csv", ".json", ".jsonl", ".parquet", ".arrow"}
            or ("/" in source and os.path.isdir(head)))


def source_kind(source, *, name: str = "source") -> str:
    """Which kind of source ``source`` names, one of `SOURCE_KINDS`, checked without loading anything.

    Args:
        source (`str` or `os.PathLike`): the source, as ``ProtectConfig.source`` / ``--source`` takes it.
        name (`str`): how the errors name the argument (``"--source"`` for the command line).

    Returns:
        `str`: ``"saved"`` (a folder with ``state.json`` or ``dataset_dict.json``), ``"folder"`` (any other folder,
        read as an image folder), ``"file"`` (one image file, read as a folder holding only it) or ``"hub"`` (a
        string that is a valid Hub dataset id and no local path).

    Raises:
        ValueError: naming ``name`` and what it takes: a path that does not exist (a name with an image or data file
            extension, or whose first component is a local folder, is taken to be a path), a file that is not an
            image, something that is neither a file nor a folder, or a string that cannot be a Hub dataset id.
    """
    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source
    shown = f"{name} {text!r}" if name.startswith("-") else f"{name}={text!r}"

    def refuse(why: str) -> ValueError:
        return ValueError(f"{name} must be {EXPECTED}, got {shown}: {why}")

    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be {EXPECTED}, got {shown}")
    path = Path(text)
    if path.is_dir():
        return "saved" if (path / "state.json").exists() or (path / "dataset_dict.json").exists() else "folder"
    if path.exists():
        if not path.is_file():
            raise refuse("it exists but is neither a file nor a folder")
        if path.suffix.lower() not in image_extensions():
            raise refuse(f"a file that is not an image (extension {path.suffix or '(none)'!r}; an image file is a "
                         f".png, .jpg, .jpeg, .webp, .bmp, .tif or another format that Pillow reads)")
        return "file"
    if isinstance(source, os.PathLike) or _looks_like_a_path(text):
        raise refuse("no such file or folder")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise refuse("no such file or folder, and not a Hub dataset id") from None
    return "hub"
