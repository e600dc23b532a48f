"""The sqlite storage of `dpdiffusion.privacy.ledger`: schema, connections, transactions, queries.

WAL mode with synchronous=FULL and a fresh connection per operation (safe across threads and forked processes);
`transaction` runs its block in one ``BEGIN IMMEDIATE`` (serialised across processes, all or nothing).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator, List, Optional

from .ledger_records import UNRECORDED

__all__ = ["SCHEMA_VERSION", "connect", "transaction", "read_multipliers", "open_store"]

SCHEMA_VERSION = "2"
TIMEOUT_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    subject_id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    attributes TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    release_id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id),
    noise_multiplier REAL NOT NULL,
    epsilon REAL NOT NULL,
    spent_after REAL NOT NULL,
    attributes TEXT NOT NULL,
    scope TEXT NOT NULL,
    note TEXT,
    created_at TEXT NOT NULL,
    guarantee TEXT NOT NULL DEFAULT 'unrecorded'
);
CREATE INDEX IF NOT EXISTS releases_by_subject ON releases(subject_id);
"""



@contextmanager
def connect(path: str) -> Iterator[sqlite3.Connection]:
    """A fresh connection to the ledger file ``path`` (autocommit; transactions are explicit)."""
    conn = sqlite3.connect(path, timeout=TIMEOUT_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE"):
    """Run the block in one ``BEGIN <mode>`` transaction: committed if it returns, rolled back if it raises."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read_multipliers(conn: sqlite3.Connection, subject_id: str, guarantee: Optional[str] = None) -> List[float]:
    """The noise multipliers of the subject's releases (only those with ``guarantee`` if given), oldest first."""
    if guarantee is None:
        rows = conn.execute(
            "SELECT noise_multiplier FROM releases WHERE subject_id = ? ORDER BY release_id", (subject_id,)
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT noise_multiplier FROM releases WHERE subject_id = ? AND guarantee = ? ORDER BY release_id",
            (subject_id, guarantee),
        ).fetchall()
    return [float(r[0]) for r in rows]


def open_store(path: str, budget_epsilon: Optional[float], delta: Optional[float]) -> tuple[float, float]:
    """Create or migrate the ledger file and return its stored ``(budget_epsilon, delta)``.

    Raises:
        ValueError: if a new ledger lacks ``budget_epsilon`` or ``delta``, or the given ones differ from the stored.
    """
    with connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        with transaction(conn):
            for statement in SCHEMA.split(";"):  # not executescript: it would COMMIT the transaction
                if statement.strip():
                    conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(releases)").fetchall()}
            if "guarantee" not in columns:  # a schema-1 ledger: its releases' guarantees were not recorded
                conn.execute(f"ALTER TABLE releases ADD COLUMN guarantee TEXT NOT NULL DEFAULT '{UNRECORDED}'")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
            stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not stored:
                if budget_epsilon is None or delta is None:
                    raise ValueError(f"a new ledger needs budget_epsilon and delta; {path} is empty")
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", SCHEMA_VERSION),
                        ("budget_epsilon", float.hex(budget_epsilon)),
                        ("delta", float.hex(delta)),
                    ],
                )
                stored = {"budget_epsilon": float.hex(budget_epsilon), "delta": float.hex(delta)}
    stored_budget = float.fromhex(stored["budget_epsilon"])
    stored_delta = float.fromhex(stored["delta"])
    if (budget_epsilon is not None and budget_epsilon != stored_budget) or (
        delta is not None and delta != stored_delta
    ):
        raise ValueError(
            f"the ledger at {path} was created with budget_epsilon={stored_budget}, delta={stored_delta}; "
            f"got budget_epsilon={budget_epsilon}, delta={delta}. A ledger's budget and delta cannot change"
        )
    return stored_budget, stored_delta
