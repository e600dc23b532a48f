"""Keyed locality-sensitive hashing and the side table of band keys that the Space's face keying stores.

`KeyedLSH` turns vectors into band keys that only the server's secret can compute; `SubjectIndex` maps band keys to
ledger subject ids in ``subject_index.sqlite`` next to the ledger (mode 0600). What is hashed, the parameters, their
measurements and what the table reveals to whom: `face_identity`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INDEX_FILE = "subject_index.sqlite"
SECRET_BYTES = 32
IDENTITY_VERSION = b"dpdiffusion-space-identity-v1"


# ---------------------------------------------------------------------------------------------------- keyed LSH
class KeyedLSH:
    """Keyed locality-sensitive hashing of vectors into band keys (see the module).

    Args:
        secret (`bytes`): the server's key.
        kind (`str`): ``"picture"`` or ``"person"`` (seeds the directions and is part of every key).
        dim (`int`): the vectors' length.
        bands (`int`), hashes (`int`): ``bands`` keys of ``hashes`` hashes each.
        probed (`int`): per band, this many least certain hashes are also tried on their other side.
        bucket_width (`float`, *optional*): E2LSH bucket width; ``None``: signs (vectors of mean 0 and norm 1).
    """

    def __init__(self, secret: bytes, kind: str, *, dim: int, bands: int, hashes: int, probed: int,
                 bucket_width: float | None = None):
        if not 0 <= probed <= hashes:
            raise ValueError(f"probed must be in [0, hashes={hashes}], got probed={probed}")
        if hashes * (8 if bucket_width is not None else 1) > 64:
            raise ValueError(f"a band must fit in 64 bits, got hashes={hashes}")
        self.kind, self.dim, self.bands, self.hashes, self.probed = kind, dim, bands, hashes, probed
        self.bucket_width = bucket_width
        seed = hmac.new(secret, IDENTITY_VERSION + b"\0directions\0" + kind.encode(), hashlib.sha256).digest()
        rng = np.random.Generator(np.random.PCG64(np.frombuffer(seed, dtype=np.uint64)))
        self._directions = rng.standard_normal((dim, bands * hashes))  # (dim, B * k)
        self._offsets = rng.uniform(0.0, bucket_width or 1.0, bands * hashes)
        self._key = hashlib.sha256(secret + IDENTITY_VERSION + b"\0band-keys\0" + kind.encode()).digest()
        # the flips probed: every subset of the `probed` least certain hashes of a band, fewest first
        subsets = (np.arange(2 ** probed)[:, None] >> np.arange(probed)[None, :]) & 1  # (2^t, t), none first
        self._subsets = subsets[np.argsort(subsets.sum(1), kind="stable")].astype(bool)

    def __repr__(self) -> str:
        return f"KeyedLSH(kind={self.kind!r}, bands={self.bands}, hashes={self.hashes}, secret=<hidden>)"

    def hashes_of(self, vectors: np.ndarray):
        """Hash values (N, B, k) int64 and the side of each one's nearer boundary (-1 or +1) with its margin."""
        proj = np.asarray(vectors, dtype=np.float64).reshape(-1, self.dim) @ self._directions  # (N, B * k)
        if self.bucket_width is None:
            values = (proj > 0).astype(np.int64)
            margin = np.abs(proj)
            nearer = np.where(values > 0, -1, 1)
        else:
            t = (proj + self._offsets) / self.bucket_width
            values = np.floor(t).astype(np.int64)
            frac = t - values
            nearer = np.where(frac < 0.5, -1, 1)
            margin = np.minimum(frac, 1.0 - frac)
        shape = (-1, self.bands, self.hashes)
        return values.reshape(shape), nearer.reshape(shape), margin.reshape(shape)

    def _pack(self, values: np.ndarray) -> np.ndarray:
        """(..., k) hash values -> (...,) uint64 band codes (signs: one bit each; buckets: 8 bits each, wrapped)."""
        bits = 1 if self.bucket_width is None else 8
        v = (values & ((1 << bits) - 1)).astype(np.uint64)
        shifts = (np.arange(self.hashes, dtype=np.uint64) * np.uint64(bits))
        return np.bitwise_or.reduce(v << shifts, axis=-1)

    def key(self, band: int, code: int) -> bytes:
        """The keyed band key of ``code`` in ``band``: BLAKE2b-128 keyed with the secret."""
        return hashlib.blake2b(band.to_bytes(2, "big") + int(code).to_bytes(8, "big"), key=self._key,
                               digest_size=16, person=self.kind.encode()[:16]).digest()

    def reference_keys(self, vector: np.ndarray) -> list[bytes]:
        """The ``bands`` keys of one vector, unprobed: what the index stores."""
        values, _, _ = self.hashes_of(vector)
        codes = self._pack(values[0])
        return [self.key(b, int(c)) for b, c in enumerate(codes)]

    def probe_codes(self, vectors: np.ndarray) -> np.ndarray:
        """(N, B, 2 ** probed) uint64 band codes of each vector with its probes (the unprobed code first)."""
        values, nearer, margin = self.hashes_of(vectors)
        base = self._pack(values)  # (N, B)
        codes = np.empty(base.shape + (len(self._subsets),), dtype=np.uint64)
        codes[:, :, 0] = base
        if not self.probed:
            return codes
        order = np.argsort(margin, axis=2, kind="stable")[:, :, :self.probed]  # (N, B, t) least certain hashes
        cur = np.take_along_axis(values, order, axis=2)
        new = (1 - cur) if self.bucket_width is None else cur + np.take_along_axis(nearer, order, axis=2)
        bits = 1 if self.bucket_width is None else 8
        field_mask = (1 << bits) - 1
        # moving hash j changes only its field of the packed code: XOR with (old ^ new) in that field
        flips = ((cur ^ new) & field_mask).astype(np.uint64) << (order.astype(np.uint64) * np.uint64(bits))
        for j, subset in enumerate(self._subsets):
            if j:
                codes[:, :, j] = base ^ np.bitwise_xor.reduce(flips[:, :, subset], axis=2)
        return codes

    def probe_keys(self, vectors: np.ndarray) -> ProbeKeys:
        """The keys to look up for ``vectors`` (geometric probes of one face) and which vector each belongs to."""
        codes = self.probe_codes(vectors)  # (N, B, m)
        bands = []
        for b in range(self.bands):
            unique, inverse = np.unique(codes[:, b, :], return_inverse=True)
            bands.append(([self.key(b, int(c)) for c in unique], inverse.reshape(codes.shape[0], codes.shape[2])))
        return ProbeKeys(len(codes), bands)

    def votes(self, probes: ProbeKeys, lookup) -> dict[str, int]:
        """Each subject's votes: the most bands any one of the probed vectors matches.

        Args:
            probes (`ProbeKeys`): from `probe_keys`.
            lookup (callable): ``lookup(keys) -> {key: set of subject ids}`` for the keys the index holds.
        """
        hits: dict[str, np.ndarray] = {}
        for b, (keys, inverse) in enumerate(probes.bands):
            found = lookup(keys)
            for u, k in enumerate(keys):
                subjects = found.get(k)
                if not subjects:
                    continue
                rows = (inverse == u).any(axis=1)  # (N,) vectors with this key among their probes of band b
                for s in subjects:
                    hits.setdefault(s, np.zeros((probes.vectors, self.bands), dtype=bool))[:, b] |= rows
        return {s: int(h.sum(axis=1).max()) for s, h in hits.items()}


@dataclass(frozen=True)
class ProbeKeys:
    """The keys probed for some vectors: per band, the distinct keys and an (N, 2 ** probed) index into them."""

    vectors: int
    bands: list = field(repr=False)


# ---------------------------------------------------------------------------------------------------- the index
class SubjectIndex:
    """The side table of band keys -> subject ids: ``subject_index.sqlite`` next to the ledger, mode 0600.

    Rows are ``(kind, key, subject)``; a band key may belong to several subjects (two faces may agree in a band).
    Each process keeps the rows in memory and reads only the rows added since its last lookup, so processes sharing
    the folder see each other's subjects. The file holds a check value of the secret: opened with another secret
    (whose keys would never match), it raises instead of giving every face a fresh budget.

    Args:
        path (`str` or `Path`): the sqlite file.
        secret (`bytes`): the server's key (``SECRET_BYTES`` long).
        create (`bool`): create the file when missing (else `FileNotFoundError`).

    Raises:
        ValueError: a bad secret, or an index written under another secret or version.
    """

    def __init__(self, path, secret: bytes, *, create: bool = True):
        _check_secret(secret)
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"no subject index at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # private before sqlite opens it
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            logger.warning("%s was open to others (mode %o); setting mode 600", self.path, mode)
            os.chmod(self.path, 0o600)
        check = hmac.new(secret, IDENTITY_VERSION + b"\0index-check", hashlib.sha256).digest()[:16]
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS band_keys (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                       "key BLOB NOT NULL, subject TEXT NOT NULL, UNIQUE (kind, key, subject))")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('check', ?)", (check,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (IDENTITY_VERSION,))
            stored = dict(db.execute("SELECT name, value FROM meta"))
        if bytes(stored["version"]) != IDENTITY_VERSION:
            raise ValueError(f"{self.path} was written by another version of the face keying "
                             f"({bytes(stored['version']).decode(errors='replace')})")
        if not hmac.compare_digest(bytes(stored["check"]), check):
            raise ValueError(f"{self.path} was written under another subject secret: with this one no face would be "
                             "found again (every face would get a fresh budget). Restore the secret that goes with "
                             "it, or start a new ledger on purpose.")
        self._lock = threading.Lock()
        self._keys: dict[str, dict[bytes, set]] = {}
        self._subjects: set = set()
        self._last = 0

    def __repr__(self) -> str:
        return f"SubjectIndex({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 30000")
        return db

    def refresh(self) -> None:
        """Reads the rows added (by any process) since the last refresh."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        db = self._connect()
        try:
            rows = db.execute("SELECT id, kind, key, subject FROM band_keys WHERE id > ? ORDER BY id",
                              (self._last,)).fetchall()
        finally:
            db.close()
        for rid, kind, key, subject in rows:
            self._keys.setdefault(kind, {}).setdefault(bytes(key), set()).add(subject)
            self._subjects.add(subject)
            self._last = rid

    def lookup(self, kind: str, keys: Iterable[bytes], *, refresh: bool = True) -> dict[bytes, set]:
        """The subjects of each of ``keys`` that the index holds (keys it does not hold are left out); with
        ``refresh``, after reading the rows other processes added."""
        with self._lock:
            if refresh:
                self._refresh()
            table = self._keys.get(kind, {})
            return {k: set(table[k]) for k in keys if k in table}

    def add(self, kind: str, keys: Sequence[bytes], subject_id: str) -> None:
        """Adds ``keys`` of ``kind`` to ``subject_id`` (idempotent)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO band_keys (kind, key, subject) VALUES (?, ?, ?)",
                           [(kind, bytes(k), subject_id) for k in keys])
            db.execute("COMMIT")
        finally:
            db.close()

    def subjects(self) -> set:
        """Every subject id the index holds keys for."""
        with self._lock:
            self._refresh()
            return set(self._subjects)

    def kinds_of(self, subject_id: str) -> set:
        """The kinds (``"picture"``, ``"person"``) the index holds keys of for ``subject_id``."""
        db = self._connect()
        try:
            return {k for (k,) in db.execute("SELECT DISTINCT kind FROM band_keys WHERE subject = ?", (subject_id,))}
        finally:
            db.close()


def _check_secret(secret) -> bytes:
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got "
                         f"{len(secret) if isinstance(secret, bytes) else type(secret).__name__}")
    return secret


def open_subject_index(folder, secret: bytes, *, ledger=None, new_index: bool = False) -> SubjectIndex:
    """The Space's subject index, ``folder/subject_index.sqlite`` (next to the ledger and its secret).

    A ledger that already holds releases, with no index beside it, means the index was lost: every face that was
    found only through it (an edit, another photo of the person) would get a fresh budget, so this raises unless
    ``new_index`` (for a ledger written before the index existed: its faces are then found by the old picture code
    alone, and join the index the next time they are released).

    Args:
        folder (`str` or `Path`): the ledger folder.
        secret (`bytes`): the subject secret (``store.load_or_create_secret``).
        ledger (`PrivacyLedger`, *optional*): the Space's ledger, for the check above.
        new_index (`bool`): create the index next to a ledger with releases.

    Raises:
        ValueError: the index is missing next to a ledger with releases (and not ``new_index``), or it was written
            under another secret.
    """
    path = Path(folder) / INDEX_FILE
    if not path.exists() and ledger is not None and not new_index and ledger.subjects():
        raise ValueError(f"the ledger {ledger.path} holds releases but its subject index {path} is missing: without "
                         "it, edited re-uploads and other photos of a person already released would get a fresh "
                         "budget. Restore it from a backup, or start the index anew on purpose (`dpdiffusion space "
                         "--new-ledger`, DPDIFFUSION_SPACE_NEW_LEDGER=1 or new_index=True: with the ledger and its "
                         "secret both present nothing is reset, and faces released before are found by their exact "
                         "picture until they are released again).")
    return SubjectIndex(path, secret)
