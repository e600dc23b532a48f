"""The Space's files on the server: its folders, the ledger, the subject secret, and the checks made before it starts.

Layout (the Space folder, ``$DPDIFFUSION_SPACE_DIR``, see ``config.py``): ``ledger/`` holds ``ledger.sqlite`` (with
sqlite's ``-wal`` and ``-shm`` files) and the subject secret ``subject_key.bin``; ``feedback/`` the feedback dataset
(``feedback.py``). Nothing else is written: uploads never reach a file (``images.py``).

Modes. Every folder the Space creates is 0700 and every file it creates 0600, whatever the umask: folders are made
with mode 0700 and set to it; the ledger file is created empty with mode 0600 *before* sqlite opens it (sqlite gives
its ``-wal`` and ``-shm`` files the database file's mode); the secret and the feedback files are opened with
``O_CREAT`` and mode 0600. A Space folder, ledger, secret or feedback file found open to others (left by an older
version) is made private, with a warning.

Startup checks (`open_space_store`). A face's budget is in the ledger, and a face is found in it only through the
secret: losing either silently gives every face a fresh budget. So the Space refuses to start when

- the secret is missing next to a ledger that holds releases, or
- the ledger is missing next to a secret, or next to a feedback dataset with records (the Space ran here before),

and the message names the file and the two ways out: restore it from a backup, or start over on purpose with
``new_ledger`` (``dpdiffusion space --new-ledger``, ``$DPDIFFUSION_SPACE_NEW_LEDGER=1`` or
``build_demo(new_ledger=True)``), which moves what is left of the old ledger and secret to
``ledger/replaced-<UTC time>/`` and starts a new pair. Where the ledger and its secret are both present,
``new_ledger`` changes nothing (a variable left set on a Space cannot wipe the budgets at its next restart); a
separate Space needs its own ``$DPDIFFUSION_SPACE_DIR``. What the checks cannot see: a Space folder lost as a whole
(no persistent storage, another ``$DPDIFFUSION_SPACE_DIR``) leaves no trace to compare with.

The secret is created atomically (written to a private temporary file, then hard-linked into place, which fails if
another process got there first), so processes starting at once agree on one secret. It is never shown, logged or
written to the feedback dataset.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Tuple

logger = logging.getLogger(__name__)

SECRET_FILE = "subject_key.bin"
LEDGER_FILE = "ledger.sqlite"
LEDGER_SIDE_FILES = ("-wal", "-shm", "-journal")  # sqlite's files next to the ledger
FEEDBACK_RECORDS = "metadata.jsonl"
SECRET_BYTES = 32
FOLDER_MODE = 0o700
FILE_MODE = 0o600

__all__ = ["FILE_MODE", "FOLDER_MODE", "LEDGER_FILE", "SECRET_BYTES", "SECRET_FILE", "load_or_create_secret",
           "open_private", "open_space_ledger", "open_space_store", "private_file", "private_folder"]


# ---------------------------------------------------------------------------------------------------- modes
def _make_private(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode & 0o777:
        logger.warning("%s was open to others (mode %o); setting mode %o", path, current, mode)
        os.chmod(path, mode)


def private_folder(path) -> Path:
    """``path`` as a folder of mode 0700 (created with any missing parents, each 0700), whatever the umask.

    An existing ``path`` that is open to others is set to 0700 (with a warning); existing parents are left as they
    are.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # another process made it first
            pass
        os.chmod(folder, FOLDER_MODE)  # mkdir's mode went through the umask
    if not path.is_dir():
        raise ValueError(f"{path} must be a folder")
    _make_private(path, FOLDER_MODE)
    return path


def private_file(path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist; an existing one open to others is set to 0600."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        _make_private(path, FILE_MODE)
    else:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    return path


def open_private(path, mode: str = "wb", *, exclusive: bool = False):
    """``open(path, mode)`` for writing (``"wb"``, ``"w"``, ``"ab"`` or ``"a"``), the file created with mode 0600
    whatever the umask (``exclusive``: fail if it exists)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    if exclusive:
        flags |= os.O_EXCL
    fd = os.open(path, flags, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & ~FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------------------------------- the secret
def load_or_create_secret(folder, *, create: bool = True) -> bytes:
    """The Space's subject secret in ``folder/subject_key.bin``, created once (atomically, mode 0600).

    Two processes that start at once agree on one secret: each writes its candidate to a private temporary file
    and hard-links it to the final name, which only the first succeeds in doing; everyone then reads that file.

    Args:
        folder (`str` or `Path`): the folder of the Space's ledger (created, mode 0700, if missing).
        create (`bool`): create the secret when it is missing; `False` refuses instead (a ledger that holds releases
            is keyed with the missing secret).

    Returns:
        `bytes`: ``SECRET_BYTES`` bytes.

    Raises:
        ValueError: the file exists but does not hold ``SECRET_BYTES`` bytes, or it is missing and ``create`` is
            `False`.
    """
    folder = private_folder(folder)
    path = folder / SECRET_FILE
    if not path.exists():
        if not create:
            raise ValueError(f"the subject secret {path} is missing next to a ledger that holds releases: without it "
                             "no face can be found in the ledger again, and every face would start over with a fresh "
                             "budget. Restore it from a backup, or start over on purpose (new_ledger)")
        _create_secret(path)
    _make_private(path, FILE_MODE)
    for _ in range(50):  # without hard links the winner's file may briefly be shorter (see _create_secret)
        secret = path.read_bytes()
        if len(secret) == SECRET_BYTES:
            return secret
        time.sleep(0.02)
    raise ValueError(f"{path} does not hold a {SECRET_BYTES}-byte subject secret; restore it from a backup (a new "
                     "secret would give every face a fresh budget)")


def _create_secret(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open_private(tmp, "wb", exclusive=True) as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the file exists: the first process wins
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create, then write
            _create_secret_without_links(path, tmp.read_bytes())
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _create_secret_without_links(path: Path, secret: bytes) -> None:
    try:
        f = open_private(path, "wb", exclusive=True)
    except FileExistsError:
        return
    with f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- the ledger
def _ledger_files(folder: Path) -> list:
    return [p for p in [folder / LEDGER_FILE, *(folder / (LEDGER_FILE + s) for s in LEDGER_SIDE_FILES)] if p.exists()]


def open_space_ledger(folder, *, budget_epsilon: Optional[float], delta: Optional[float],
                      budget_name: str = "budget_epsilon", delta_name: str = "delta"):
    """The Space's one ledger, ``folder/ledger.sqlite`` (mode 0600, folder 0700); its budget and delta are fixed
    when it is created.

    Restarting the Space with another budget must not give every face a fresh one, so a configured budget or delta
    that differs from the stored one is an error; one left unset (`None`) takes the stored value (or, for a new
    ledger, ``DEFAULT_BUDGET_EPSILON`` / ``DEFAULT_DELTA``).

    Args:
        folder (`str` or `Path`): the ledger folder (created if missing).
        budget_epsilon (`float`, *optional*), delta (`float`, *optional*): the configured values.
        budget_name (`str`), delta_name (`str`): how the user set them (an env var or argument), for the error.

    Returns:
        `PrivacyLedger`.

    Raises:
        ValueError: the configured budget or delta differs from the ledger's.
    """
    from ..privacy.ledger import PrivacyLedger
    from .config import DEFAULT_BUDGET_EPSILON, DEFAULT_DELTA

    folder = private_folder(folder)
    old = sorted(p.name for p in folder.glob("ledger_budget*_delta*.sqlite"))
    if old:
        logger.warning("ignoring older per-budget ledgers %s in %s: their subjects were per-session ids that no "
                       "face can be matched to", old, folder)
    path = folder / LEDGER_FILE
    if not path.exists() or path.stat().st_size == 0:
        private_file(path)  # sqlite then creates the database, and its -wal and -shm files, with this mode
        ledger = PrivacyLedger(path, budget_epsilon=DEFAULT_BUDGET_EPSILON if budget_epsilon is None
                               else budget_epsilon, delta=DEFAULT_DELTA if delta is None else delta)
    else:
        ledger = PrivacyLedger(path)
        for name, wanted, stored in ((budget_name, budget_epsilon, ledger.budget_epsilon),
                                     (delta_name, delta, ledger.delta)):
            if wanted is not None and float(wanted) != stored:
                raise ValueError(
                    f"{name}={wanted:g} differs from the Space ledger's {stored:g} ({path}): each face's budget is "
                    f"fixed when the ledger is created, and restarting with another value would give every face a "
                    f"fresh one. Set {name} to {stored:g} (or leave it unset to use the stored value), or point "
                    f"DPDIFFUSION_SPACE_DIR at a new folder for a new Space.")
    for p in _ledger_files(folder):
        _make_private(p, FILE_MODE)
    return ledger


# ---------------------------------------------------------------------------------------------------- at startup
def _ledger_releases(path: Path) -> int:
    from ..privacy.ledger import PrivacyLedger

    return len(PrivacyLedger(path).subjects())


def _set_aside(folder: Path) -> Optional[Path]:
    """Move the ledger's files and the secret to ``folder/replaced-<UTC time>/`` (0700); returns it, or `None`."""
    files = [*_ledger_files(folder), *([folder / SECRET_FILE] if (folder / SECRET_FILE).exists() else [])]
    if not files:
        return None
    aside = private_folder(folder / f"replaced-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}")
    for p in files:
        shutil.move(str(p), str(aside / p.name))
    return aside


def open_space_store(ledger_dir, feedback_dir, *, budget_epsilon: Optional[float], delta: Optional[float],
                     budget_name: str = "budget_epsilon", new_ledger: bool = False,
                     new_ledger_name: str = "new_ledger") -> Tuple[object, bytes]:
    """Open the Space's ledger and subject secret after the startup checks (see the module docstring).

    Args:
        ledger_dir (`Path`): the ledger folder (ledger and secret); feedback_dir (`Path`): the feedback folder.
        budget_epsilon (`float`, *optional*), delta (`float`, *optional*), budget_name (`str`): as in
            `open_space_ledger`.
        new_ledger (`bool`): start a new ledger and secret where one of them is missing (the surviving files are
            moved aside); changes nothing where both are present.
        new_ledger_name (`str`): how the user sets ``new_ledger``, for the message.

    Returns:
        ``(ledger, secret)``: the `PrivacyLedger` and the secret's bytes.

    Raises:
        ValueError: the secret is missing next to a ledger with releases, or the ledger is missing where the Space ran
            before (without ``new_ledger``); or as `open_space_ledger`.
    """
    ledger_dir, feedback_dir = private_folder(ledger_dir), private_folder(feedback_dir)
    ledger_path, secret_path = ledger_dir / LEDGER_FILE, ledger_dir / SECRET_FILE
    has_ledger = ledger_path.is_file() and ledger_path.stat().st_size > 0
    has_secret = secret_path.exists()
    records = feedback_dir / FEEDBACK_RECORDS
    has_feedback = records.is_file() and records.stat().st_size > 0
    problem = None
    if has_ledger and not has_secret:
        n = _ledger_releases(ledger_path)
        if n:
            problem = (f"the subject secret {secret_path} is missing next to the ledger {ledger_path}, which holds the "
                       f"releases of {n} face(s): without the secret no face can be found in the ledger again, and "
                       "every face would start over with a fresh budget.")
    elif not has_ledger and (has_secret or has_feedback):
        found = " and ".join(str(p) for p, ok in ((secret_path, has_secret), (records, has_feedback)) if ok)
        problem = (f"the ledger {ledger_path} is missing, but this Space ran here before (found {found}): a new "
                   "ledger would give every face a fresh budget.")
    if problem is not None:
        if not new_ledger:
            raise ValueError(f"refusing to start: {problem} Restore the file from a backup, or start over on purpose "
                             f"with a new ledger and secret ({new_ledger_name}; the old files are kept aside).")
        aside = _set_aside(ledger_dir)
        logger.warning("starting over with a new ledger and subject secret (%s): %s The old files are in %s.",
                       new_ledger_name, problem, aside)
    elif new_ledger:
        logger.warning("%s is set, but the ledger and its subject secret are both present: nothing to start over, "
                       "every face keeps its budget (a separate Space needs its own DPDIFFUSION_SPACE_DIR); unset it",
                       new_ledger_name)
    ledger = open_space_ledger(ledger_dir, budget_epsilon=budget_epsilon, delta=delta, budget_name=budget_name)
    secret = load_or_create_secret(ledger_dir, create=not ledger.subjects())
    return ledger, secret
