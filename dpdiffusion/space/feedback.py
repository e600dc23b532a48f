"""`FeedbackLog`: the Space's judgements as an ``imagefolder`` dataset, optionally pushed to a Hub dataset repo.

It holds the *protected* images and the figures of each judgement, never an original, the subject secret or a
ledger subject id (records carry a random per-session id, so the dataset cannot be joined with the ledger), and no
figure composed over sessions: ``session_spent_epsilon`` is what the record's own session spent, so two sessions on
one face cannot be linked through it. Locally the folder is 0700 and its files 0600 (``store.py``), whatever the
umask; a pushed dataset repo is private unless the operator makes it public.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import PIL.Image

from .config import ENV_FEEDBACK_REPO
from .store import FEEDBACK_RECORDS, FILE_MODE, open_private, private_folder

logger = logging.getLogger(__name__)

class FeedbackLog:
    """Append-only log of judgements in the ``imagefolder`` layout, optionally pushed to a Hub dataset repo.

    ``folder/metadata.jsonl`` holds one JSON object per judgement (its ``file_name`` points at the protected image,
    ``folder/images/<record_id>.png``); ``datasets.load_dataset("imagefolder", data_dir=folder)`` loads it with an
    ``image`` column. The original image is never passed here. With ``repo_id`` and a token, a
    `huggingface_hub.CommitScheduler` pushes the folder to the dataset repo every ``every_minutes``; writes then
    hold the scheduler's lock so that a commit never sees a half-written line.

    Args:
        folder (`str` or `Path`): the local dataset folder (created if missing; 0700, its files 0600).
        repo_id (`str`, *optional*): Hub dataset repo, e.g. ``"user/dpdiffusion-feedback"``.
        token (`str`, *optional*): Hub token; without one nothing is pushed.
        every_minutes (`float`): push interval.
        private (`bool`): create the repo private.
    """

    def __init__(self, folder, *, repo_id: Optional[str] = None, token: Optional[str] = None,
                 every_minutes: float = 5.0, private: bool = True):
        self.folder = private_folder(folder)
        private_folder(self.folder / "images")
        self.path = self.folder / FEEDBACK_RECORDS
        for p in [self.path, *(self.folder / "images").glob("*.png")]:  # left by an older version
            if p.is_file() and p.stat().st_mode & 0o777 & ~FILE_MODE:
                p.chmod(FILE_MODE)
        self.scheduler = None
        if repo_id and token:
            from huggingface_hub import CommitScheduler

            self.scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=self.folder,
                                             every=every_minutes, token=token, private=private,
                                             allow_patterns=["metadata.jsonl", "images/*.png"])
            logger.info("feedback is pushed to the Hub dataset %s every %s min", repo_id, every_minutes)
        elif repo_id:
            logger.warning("%s=%s is set but no Hub token was found; feedback stays local", ENV_FEEDBACK_REPO,
                           repo_id)
        self._lock = self.scheduler.lock if self.scheduler is not None else threading.Lock()

    def append(self, record: dict, protected_image: np.ndarray) -> dict:
        """Write the protected image and one JSON line; returns the record with its ``file_name``."""
        record_id = uuid.uuid4().hex
        file_name = f"images/{record_id}.png"
        record = {"file_name": file_name, "record_id": record_id, **record}
        line = json.dumps(record, sort_keys=False, allow_nan=True) + "\n"
        with self._lock:
            _save_png_atomically(np.asarray(protected_image, dtype=np.uint8), self.folder / file_name)
            with open_private(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return record

    def records(self) -> list[dict]:
        """All records, oldest first."""
        if not self.path.exists():
            return []
        with self._lock, open(self.path, encoding="utf-8") as f:
            text = f.read()
        # a line without its newline was cut by a crash while being written: it is not a record
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def load_feedback_dataset(folder):
    """The feedback as a `datasets.Dataset` (columns: ``image`` and the record fields)."""
    import datasets

    return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")


def _save_png_atomically(image: np.ndarray, path: Path) -> None:
    """Write the PNG to a temporary file in the same folder, fsync it, and rename it into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open_private(tmp, "wb", exclusive=True) as f:
            PIL.Image.fromarray(image).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
