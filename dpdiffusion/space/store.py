"""The Space's files on the server: its folders, the ledger, the subject secret, and the checks made before it starts.

Layout (the Space folder, ``$DPDIFFUSION_SPACE_DIR``, see ``config.py``): ``ledger/`` holds ``ledger.sqlite`` (with
sqlite's ``-wal`` and ``-shm`` files) and the subject secret ``subject_key.bin``; ``feedback/`` the feedback dataset
(``feedback.py``); the marker ``.dpdiffusion-space-ledger`` (`marker_path`: next to the ledger folder, outside it)
records that a ledger and secret were created there. Nothing else is written: uploads never reach a file
(``images.py``).

Modes. Every folder the Space creates is 0700 and every file it creates 0600, whatever the umask: folders are made
with mode 0700 and set to it; the ledger file is created empty with mode 0600 *before* sqlite opens it (sqlite gives
its ``-wal`` and ``-shm`` files the database file's mode); the secret, the marker and the feedback files are opened
with ``O_CREAT`` and mode 0600. A Space folder, ledger, secret or feedback file found open to others (left by an
older version) is made private, with a warning.

Startup checks (`open_space_store`). A face's budget is in the ledger, and a face is found in it only through the
secret: losing either, or pairing a ledger with another secret, silently gives every face a fresh budget. The
secret's key check (`key_check`: ``HMAC-SHA256(secret, "dpdiffusion-space-key-check")``, which says nothing about the
secret) is stored in the ledger's ``meta`` table and in the marker when they are created (and added to a ledger made
before the checks). The Space refuses to start when

- the secret is missing next to a ledger that holds releases, or
- the ledger is missing next to a secret, a feedback dataset with records or the marker (the Space ran here
  before: deleting both files, ``rm ledger/*``, leaves the marker), or
- the secret next to a ledger that holds releases is not the one the ledger was keyed with (another 32-byte secret,
  e.g. from the wrong backup), or the pair is not the one the marker names, or the marker cannot be read,

and the message names the files and the two ways out: restore them from a backup, or start over on purpose with
``new_ledger`` (``dpdiffusion space --new-ledger``, ``$DPDIFFUSION_SPACE_NEW_LEDGER=1`` or
``build_demo(new_ledger=True)``), which moves what is left of the old ledger and secret (and a copy of the marker)
to ``ledger/replaced-<UTC time>/``, starts a new pair and rewrites the marker. Where the ledger and its secret are
both present and match, ``new_ledger`` changes nothing (a variable left set on a Space cannot wipe the budgets at its
next restart); a separate Space needs its own ``$DPDIFFUSION_SPACE_DIR``. What the checks cannot see: a Space folder
lost as a whole, marker included (no persistent storage, another ``$DPDIFFUSION_SPACE_DIR``), leaves no trace to
compare with; a ledger without releases may get a new secret (nothing is keyed with the old one).

The secret is created atomically (written to a private temporary file, then hard-linked into place, which fails if
another process got there first), so processes starting at once agree on one secret. It is never shown, logged or
written to the feedback dataset.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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
KEY_CHECK_CONTEXT = b"dpdiffusion-space-key-check"
KEY_CHECK_META = "space_key_check"  # the key check's row in the ledger's meta table
MARKER_PREFIX = ".dpdiffusion-space-"

__all__ = ["FILE_MODE", "FOLDER_MODE", "LEDGER_FILE", "SECRET_BYTES", "SECRET_FILE", "key_check",
           "load_or_create_secret", "marker_path", "open_private", "open_space_ledger", "open_space_store",
           "private_file", "private_folder"]


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
    from .subject_index import INDEX_FILE  # the band keys of every subject: set aside with the ledger

    names = [LEDGER_FILE, *(LEDGER_FILE + s for s in LEDGER_SIDE_FILES), INDEX_FILE,
             *(INDEX_FILE + s for s in LEDGER_SIDE_FILES)]
    return [folder / n for n in names if (folder / n).exists()]


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


def _now() -> str:
    return datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')


def _set_aside(folder: Path) -> Optional[Path]:
    """Move the ledger's files and the secret to ``folder/replaced-<UTC time>/`` (0700); returns it, or `None`."""
    files = [*_ledger_files(folder), *([folder / SECRET_FILE] if (folder / SECRET_FILE).exists() else [])]
    if not files:
        return None
    aside = private_folder(folder / f"replaced-{_now()}")
    for p in files:
        shutil.move(str(p), str(aside / p.name))
    return aside


def key_check(secret: bytes) -> str:
    """The key-check value of a subject secret: ``HMAC-SHA256(secret, "dpdiffusion-space-key-check")`` in hex. It
    tells whether a secret is the one a ledger was keyed with, and nothing about the secret."""
    return hmac.new(secret, KEY_CHECK_CONTEXT, hashlib.sha256).hexdigest()


def marker_path(ledger_dir) -> Path:
    """The Space's marker for the ledger folder ``ledger_dir``: ``.dpdiffusion-space-<folder name>`` next to it (in the
    Space folder, outside ``ledger/``: ``<space>/.dpdiffusion-space-ledger``)."""
    ledger_dir = Path(ledger_dir)
    return ledger_dir.parent / f"{MARKER_PREFIX}{ledger_dir.name}"


def _read_marker(path: Path) -> Tuple[Optional[dict], Optional[str]]:
    """``(marker, problem)``: the marker's content (`None` if there is none), or why it cannot be read."""
    if not path.exists():
        return None, None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(marker, dict) or not isinstance(marker.get("key_check"), str):
            raise ValueError("no key_check")
    except (OSError, ValueError) as exc:
        return None, (f"the Space's marker {path} cannot be read ({type(exc).__name__}): this Space ran here before, "
                      "and its ledger and secret cannot be checked against it.")
    return marker, None


def _write_marker(path: Path, check: str, ledger_dir: Path) -> None:
    """Write the marker atomically (a private temporary file renamed into place), mode 0600."""
    content = {"what": "the dpdiffusion Space's ledger marker: a ledger and a subject secret were created in "
                       "the folder below; the Space refuses to start without them (see dpdiffusion/space/store.py)",
               "ledger_folder": ledger_dir.name, "key_check": check,
               "created_at": datetime.now(timezone.utc).isoformat()}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open_private(tmp, "w", exclusive=True) as f:
            json.dump(content, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    _make_private(path, FILE_MODE)


def _ledger_key_check(path: Path) -> Optional[str]:
    from ..privacy.ledger_store import connect

    with connect(str(path)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK_META,)).fetchone()
    return None if row is None else str(row[0])


def _set_ledger_key_check(path: Path, check: str) -> None:
    from ..privacy.ledger_store import connect, transaction

    with connect(str(path)) as conn:
        with transaction(conn):
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (KEY_CHECK_META, check))


def _key_problem(ledger_path: Path, secret_path: Path, marker_file: Path, marker: Optional[dict]) -> Optional[str]:
    """Why the secret next to a ledger that holds releases is not that ledger's (or the pair is not this Space
    folder's), or `None`."""
    n = _ledger_releases(ledger_path)
    if not n:  # nothing is keyed with any secret yet: a new secret changes no face's budget
        return None
    check = key_check(load_or_create_secret(secret_path.parent, create=False))
    stored = _ledger_key_check(ledger_path)
    if stored is not None and stored != check:
        return (f"the subject secret {secret_path} is not the one the ledger {ledger_path} was keyed with (the key "
                f"check stored in the ledger differs): none of the {n} face(s) in the ledger would be found again, "
                "and every face would start over with a fresh budget.")
    if marker is not None and marker["key_check"] != check:
        return (f"the ledger {ledger_path} and the subject secret {secret_path} are not the ones this Space folder "
                f"was created with (the key check in its marker {marker_file} differs): the faces this Space released "
                "would start over with a fresh budget.")
    return None


def open_space_store(ledger_dir, feedback_dir, *, budget_epsilon: Optional[float], delta: Optional[float],
                     budget_name: str = "budget_epsilon", new_ledger: bool = False,
                     new_ledger_name: str = "new_ledger") -> Tuple[object, bytes]:
    """Open the Space's ledger and subject secret after the startup checks (see the module docstring), and record
    the secret's key check in the ledger and in the Space's marker.

    Args:
        ledger_dir (`Path`): the ledger folder (ledger and secret); feedback_dir (`Path`): the feedback folder.
        budget_epsilon (`float`, *optional*), delta (`float`, *optional*), budget_name (`str`): as in
            `open_space_ledger`.
        new_ledger (`bool`): start a new ledger and secret where one of them is missing or they do not match (the
            surviving files are moved aside); changes nothing where both are present and match.
        new_ledger_name (`str`): how the user sets ``new_ledger``, for the message.

    Returns:
        ``(ledger, secret)``: the `PrivacyLedger` and the secret's bytes.

    Raises:
        ValueError: the secret is missing next to a ledger with releases, or is not that ledger's; the ledger is
            missing where the Space ran before; the ledger and secret are not those the Space's marker names (each
            without ``new_ledger``); or as `open_space_ledger`.
    """
    ledger_dir, feedback_dir = private_folder(ledger_dir), private_folder(feedback_dir)
    ledger_path, secret_path = ledger_dir / LEDGER_FILE, ledger_dir / SECRET_FILE
    marker_file = marker_path(ledger_dir)
    has_ledger = ledger_path.is_file() and ledger_path.stat().st_size > 0
    has_secret = secret_path.exists()
    records = feedback_dir / FEEDBACK_RECORDS
    has_feedback = records.is_file() and records.stat().st_size > 0
    marker, problem = _read_marker(marker_file)
    if problem is None and has_ledger and not has_secret:
        n = _ledger_releases(ledger_path)
        if n:
            problem = (f"the subject secret {secret_path} is missing next to the ledger {ledger_path}, which holds the "
                       f"releases of {n} face(s): without the secret no face can be found in the ledger again, and "
                       "every face would start over with a fresh budget.")
    elif problem is None and not has_ledger and (has_secret or has_feedback or marker is not None):
        found = " and ".join(str(p) for p, ok in ((secret_path, has_secret), (records, has_feedback),
                                                  (marker_file, marker is not None)) if ok)
        also = "" if has_secret else f" (and so is the subject secret {secret_path})"
        problem = (f"the ledger {ledger_path} is missing{also}, but this Space ran here before (found {found}): a new "
                   "ledger would give every face a fresh budget.")
    elif problem is None and has_ledger and has_secret:
        problem = _key_problem(ledger_path, secret_path, marker_file, marker)
    started_over = False
    if problem is not None:
        if not new_ledger:
            raise ValueError(f"refusing to start: {problem} Restore the missing or replaced file from a backup, or "
                             f"start over on purpose with a new ledger and secret ({new_ledger_name}; the old files "
                             "are kept aside).")
        aside = _set_aside(ledger_dir)
        if marker_file.exists():
            aside = aside or private_folder(ledger_dir / f"replaced-{_now()}")
            shutil.copy2(marker_file, aside / marker_file.name)
        started_over = True
        logger.warning("starting over with a new ledger and subject secret (%s): %s The old files are in %s.",
                       new_ledger_name, problem, aside)
    elif new_ledger:
        logger.warning("%s is set, but the ledger and its subject secret are both present and match: nothing to start "
                       "over, every face keeps its budget (a separate Space needs its own DPDIFFUSION_SPACE_DIR); "
                       "unset it", new_ledger_name)
    ledger = open_space_ledger(ledger_dir, budget_epsilon=budget_epsilon, delta=delta, budget_name=budget_name)
    secret = load_or_create_secret(ledger_dir, create=not ledger.subjects())
    check = key_check(secret)
    if _ledger_key_check(ledger_path) != check:  # a new ledger, a ledger without releases, or one made before checks
        _set_ledger_key_check(ledger_path, check)
    if started_over or marker is None or marker["key_check"] != check:
        _write_marker(marker_file, check, ledger_dir)
    return ledger, secret
