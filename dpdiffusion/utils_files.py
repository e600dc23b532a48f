"""Writing a whole folder so that it is never seen half-written (model folders, exported Spaces)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["write_folder_atomically"]


def write_folder_atomically(folder, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh sibling temporary folder, then move it into place as ``folder``.

    An existing ``folder`` is replaced only once the new one is complete (renamed aside, the new one renamed in, the
    old one removed); if ``write`` raises, the temporary folder is removed and ``folder`` is left as it was.

    Args:
        folder (`str` or `Path`): the destination.
        write (`Callable[[Path], None]`): fills the folder it is given.

    Returns:
        `Path`: ``folder``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
