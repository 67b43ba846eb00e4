"""SQLite (WAL) persistence of a node.

Everything durable is here: the log of accepted gossip messages and ledger ticks (the ledger state
is the fold of this log, replayed with the ``now`` each entry was applied at, so a node killed at any
instant restarts with exactly the state of its last committed entry and never applies a certificate
twice), the votes this node cast, the checkpoint roots and files it fetched and the proofs it made.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id BLOB UNIQUE,          -- NULL for ticks
    kind TEXT NOT NULL,          -- message type or 'tick'
    data BLOB NOT NULL,
    now INTEGER NOT NULL,        -- ledger time the entry was applied at
    received_at REAL NOT NULL,   -- wall clock, for reports
    source TEXT NOT NULL         -- 'gossip', 'sync', 'local', 'http'
);
CREATE TABLE IF NOT EXISTS my_votes (
    subject BLOB PRIMARY KEY, kind TEXT NOT NULL, data BLOB NOT NULL, cast_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS roots (claim_id BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    claim_id BLOB NOT NULL, idx INTEGER NOT NULL, root BLOB NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (claim_id, idx)
);
CREATE TABLE IF NOT EXISTS proofs (claim_id BLOB PRIMARY KEY, task_id BLOB NOT NULL, dir TEXT NOT NULL);
"""


@dataclass(frozen=True)
class LogEntry:
    seq: int
    msg_id: bytes | None
    kind: str
    data: bytes
    now: int
    received_at: float
    source: str


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """A durable SQLite database (WAL, fsync on commit) with ``schema`` applied, in autocommit mode;
    usable from several threads under the caller's lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


class Store:
    def __init__(self, path: Path) -> None:
        # One connection used from the asyncio thread; a lock guards the rare use from workers.
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- log ---------------------------------------------------------------------------

    def has_message(self, msg_id: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM log WHERE msg_id = ?", (msg_id,)).fetchone() is not None

    def append(self, msg_id: bytes | None, kind: str, data: bytes, now: int, received_at: float,
               source: str) -> int | None:
        """Append one entry atomically; returns its seq, or None if the message is already logged."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO log (msg_id, kind, data, now, received_at, source) VALUES (?, ?, ?, ?, ?, ?)",
                    (msg_id, kind, data, now, received_at, source))
            except sqlite3.IntegrityError:
                return None
            return int(cur.lastrowid or 0)

    def entries(self, since: int = 0) -> Iterator[LogEntry]:
        with self._lock:
            rows = self._db.execute("SELECT seq, msg_id, kind, data, now, received_at, source FROM log "
                                    "WHERE seq >= ? ORDER BY seq", (since,)).fetchall()
        for row in rows:
            yield LogEntry(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6])

    def messages_since(self, since: int, limit: int) -> list[tuple[int, bytes]]:
        """Gossip messages (not ticks) with seq >= since, for the sync protocol."""
        with self._lock:
            rows = self._db.execute("SELECT seq, data FROM log WHERE seq >= ? AND kind != 'tick' "
                                    "ORDER BY seq LIMIT ?", (since, limit)).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM log").fetchone()
        return int(row[0] or 0)

    # --- votes, roots, checkpoints, proofs -----------------------------------------------

    def get_my_vote(self, subject: bytes) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM my_votes WHERE subject = ?", (subject,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_my_vote(self, subject: bytes, kind: str, data: bytes, at: float) -> bytes:
        """Record a vote before publishing it; returns the vote already recorded if there is one."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO my_votes VALUES (?, ?, ?, ?)", (subject, kind, data, at))
            row = self._db.execute("SELECT data FROM my_votes WHERE subject = ?", (subject,)).fetchone()
        return bytes(row[0])

    def get_roots(self, claim_id: bytes) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM roots WHERE claim_id = ?", (claim_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_roots(self, claim_id: bytes, data: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO roots VALUES (?, ?)", (claim_id, data))

    def get_checkpoint(self, claim_id: bytes, index: int) -> tuple[bytes, str] | None:
        with self._lock:
            row = self._db.execute("SELECT root, path FROM checkpoints WHERE claim_id = ? AND idx = ?",
                                   (claim_id, index)).fetchone()
        return None if row is None else (bytes(row[0]), str(row[1]))

    def put_checkpoint(self, claim_id: bytes, index: int, root: bytes, path: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)", (claim_id, index, root, path))

    def delete_checkpoints(self, claim_id: bytes) -> None:
        with self._lock:
            self._db.execute("DELETE FROM checkpoints WHERE claim_id = ?", (claim_id,))

    def get_proof(self, claim_id: bytes) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT dir FROM proofs WHERE claim_id = ?", (claim_id,)).fetchone()
        return None if row is None else str(row[0])

    def get_proofs(self) -> list[tuple[bytes, bytes, str]]:
        with self._lock:
            rows = self._db.execute("SELECT claim_id, task_id, dir FROM proofs").fetchall()
        return [(bytes(r[0]), bytes(r[1]), str(r[2])) for r in rows]

    def put_proof(self, claim_id: bytes, task_id: bytes, directory: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO proofs VALUES (?, ?, ?)", (claim_id, task_id, directory))
