"""Follow a contract's events on the settlement chain into SQLite, with a confirmation depth and reorgs.

The chain is the one source of truth; this module keeps a durable, ordered copy of the contract's
events that are buried under at least ``confirmations`` blocks, and the hash of the blocks it took
them from. Each ``poll_once``:

1. checks that the last block it ingested is still on the canonical chain; if not (a reorg deeper
   than the confirmation depth), it walks back over the block hashes it kept to the newest one the
   chain still has, deletes every event above it and reports the block it reverted to, so the
   caller rebuilds its view (``ChainView``) without the orphaned events;
2. reads the logs of the next range of confirmed blocks and keeps them only if every log's block
   hash is canonical and the range's last block did not change while it read (a reorg racing the
   read costs one round, never a mixed view);
3. stores the events and the cursor in one SQLite transaction, so a node killed at any instant
   resumes from a consistent cursor.

Everything here is synchronous (web3's HTTP provider, every request with a timeout); the node runs
``poll_once`` in a worker thread. Events are stored as JSON: integers stay exact (uint256 amounts
do not fit msgpack), byte strings become ``0x`` hex, addresses their checksummed form.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import open_database

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS chain_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chain_blocks (number INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chain_events (
    block_number INTEGER NOT NULL, log_index INTEGER NOT NULL, block_hash BLOB NOT NULL,
    tx_hash BLOB NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL, block_time INTEGER NOT NULL,
    PRIMARY KEY (block_number, log_index)
);
"""
KEEP_BLOCKS = 512  # block hashes kept for finding a fork point; a deeper reorg re-reads from the start


@dataclass(frozen=True)
class ChainEvent:
    block_number: int
    log_index: int
    block_hash: bytes
    tx_hash: bytes
    name: str
    args: dict[str, Any] = field(hash=False)
    block_time: int = 0  # the block's timestamp: the contract's clock for every deadline


@dataclass(frozen=True)
class PollResult:
    events: tuple[ChainEvent, ...]  # newly confirmed, in chain order
    reverted_to: int | None  # a reorg removed every stored event above this block
    cursor: int  # last ingested block
    head: int


class EventStore:
    """The durable event copy: SQLite (WAL), one connection guarded by a lock."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM chain_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO chain_meta VALUES (?, ?)", (key, value))

    def cursor(self) -> int | None:
        value = self.get_meta("cursor")
        return None if value is None else int(value)

    def block_hash(self, number: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT hash FROM chain_blocks WHERE number = ?", (number,)).fetchone()
        return None if row is None else bytes(row[0])

    def kept_blocks(self) -> list[tuple[int, bytes]]:
        """Kept (number, hash) pairs, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT number, hash FROM chain_blocks ORDER BY number DESC").fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def commit_range(self, events: list[ChainEvent], blocks: dict[int, bytes], cursor: int) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO chain_events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(e.block_number, e.log_index, e.block_hash, e.tx_hash, e.name, _dump_args(e.args), e.block_time)
                     for e in events])
                self._db.executemany("INSERT OR REPLACE INTO chain_blocks VALUES (?, ?)", list(blocks.items()))
                self._db.execute("DELETE FROM chain_blocks WHERE number < ?", (cursor - KEEP_BLOCKS,))
                self._db.execute("INSERT OR REPLACE INTO chain_meta VALUES ('cursor', ?)", (str(cursor),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def revert_to(self, number: int) -> int:
        """Delete everything above block ``number``; returns how many events went."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute("DELETE FROM chain_events WHERE block_number > ?", (number,)).rowcount
                self._db.execute("DELETE FROM chain_blocks WHERE number > ?", (number,))
                self._db.execute("INSERT OR REPLACE INTO chain_meta VALUES ('cursor', ?)", (str(number),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(gone)

    def events(self) -> Iterator[ChainEvent]:
        with self._lock:
            rows = self._db.execute("SELECT block_number, log_index, block_hash, tx_hash, name, args, block_time "
                                    "FROM chain_events ORDER BY block_number, log_index").fetchall()
        for r in rows:
            yield ChainEvent(int(r[0]), int(r[1]), bytes(r[2]), bytes(r[3]), str(r[4]), json.loads(r[5]), int(r[6]))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM chain_events").fetchone()[0])


class ReorgDuringRead(Exception):
    """The chain changed while a range was read; nothing was stored (retry next round)."""


class ChainFollower:
    """Confirmed events of one contract, kept in an ``EventStore``."""

    def __init__(self, w3: Any, address: str, abi: list[dict[str, Any]], store: EventStore, *,
                 confirmations: int, start_block: int = 0, max_range: int = 2000) -> None:
        from web3 import Web3

        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=abi)
        self.store = store
        self.confirmations = confirmations
        self.start_block = start_block
        self.max_range = max_range
        self._by_topic: dict[bytes, Any] = {}
        for item in abi:
            if item.get("type") == "event" and not item.get("anonymous"):
                signature = f"{item['name']}({','.join(_abi_type(i) for i in item['inputs'])})"
                self._by_topic[bytes(Web3.keccak(text=signature))] = getattr(self.contract.events, item["name"])
        previous = store.get_meta("contract")
        if previous is not None and previous != self.address:
            raise ValueError(f"event store follows {previous}, not {self.address}; use a fresh data_dir")
        store.set_meta("contract", self.address)

    def _block_at(self, number: int) -> tuple[bytes, int] | None:
        block = self.w3.eth.get_block(number)
        return None if block is None else (bytes(block["hash"]), int(block["timestamp"]))

    def _hash_at(self, number: int) -> bytes | None:
        block = self._block_at(number)
        return None if block is None else block[0]

    def _find_fork(self) -> int:
        """Newest kept block the chain still has; ``start_block - 1`` if none (re-read everything)."""
        for number, kept in self.store.kept_blocks():
            try:
                if self._hash_at(number) == kept:
                    return number
            except Exception:  # noqa: BLE001 - block no longer exists (chain shortened)
                continue
        return self.start_block - 1

    def poll_once(self) -> PollResult:
        head = int(self.w3.eth.block_number)
        cursor = self.store.cursor()
        reverted_to = None
        if cursor is None:
            cursor = self.start_block - 1
        else:
            kept = self.store.block_hash(cursor)
            try:
                canonical = self._hash_at(cursor) if cursor >= 0 else None
            except Exception:  # noqa: BLE001 - block number past the (shortened) head
                canonical = None
            if kept is not None and canonical != kept:
                fork = self._find_fork()
                gone = self.store.revert_to(fork)
                log.warning("chain reorg: block %d changed; reverted to block %d (%d events undone)", cursor, fork,
                            gone)
                cursor, reverted_to = fork, fork
        target = head - self.confirmations
        if target <= cursor:
            return PollResult((), reverted_to, cursor, head)
        end = min(target, cursor + self.max_range)
        end_hash = self._hash_at(end)
        logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": cursor + 1, "toBlock": end})
        blocks: dict[int, bytes] = {} if end_hash is None else {end: end_hash}
        times: dict[int, int] = {}
        events = []
        for entry in logs:
            number, block_hash = int(entry["blockNumber"]), bytes(entry["blockHash"])
            if number not in times:
                blocks[number], times[number] = self._block_at(number) or (b"", 0)
            if blocks[number] != block_hash:
                raise ReorgDuringRead(f"log in block {number} is not on the canonical chain")
            event = self._decode(entry, times[number])
            if event is not None:
                events.append(event)
        if end_hash is None or self._hash_at(end) != end_hash:
            raise ReorgDuringRead(f"block {end} changed while reading")
        events.sort(key=lambda e: (e.block_number, e.log_index))
        self.store.commit_range(events, blocks, end)
        return PollResult(tuple(events), reverted_to, end, head)

    def _decode(self, entry: Any, block_time: int) -> ChainEvent | None:
        topics = entry.get("topics") or []
        handler = self._by_topic.get(bytes(topics[0])) if topics else None
        if handler is None:
            log.warning("unknown event in block %s (topic %s); ignored", entry["blockNumber"],
                        bytes(topics[0]).hex() if topics else "-")
            return None
        decoded = handler().process_log(entry)
        return ChainEvent(int(entry["blockNumber"]), int(entry["logIndex"]), bytes(entry["blockHash"]),
                          bytes(entry["transactionHash"]), str(decoded["event"]), _plain(dict(decoded["args"])),
                          block_time)


def _abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[len("tuple"):]
    return kind


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _dump_args(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))
