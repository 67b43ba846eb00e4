"""Records of packed datasets over libp2p (SPEC.md §12.4): a verifier fetches only what it replays.

Protocol ``/pol/record/1``: a request ``{dataset, index}`` is answered by ``{record, path}``, the
record's bytes and its audit path under the dataset's ``records_root``. The fetcher checks each
response against the task's packed fields (length, index, tree size, root) before the record is
cached on disk (``<data_dir>/records/<dataset hash>/``, one file per record with its path) and
used. Nothing is ever fetched whole: ``RecordFetcher.ensure`` asks only for the records a segment
reads that are not cached yet.

Every node serves what it holds: a full packed dataset directory (``<data_dir>/datasets/<hash>/``,
a prover's training data) or records it fetched itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from prover.packeddata import CachedRecords, DirRecords, PackedDataset
from protocol.datapack import MAX_RECORD_BYTES, validate_record
from protocol.encoding import decode_canonical, encode_canonical
from protocol.errors import InvalidInput, InvalidMessage
from protocol.merkle import MerkleProof
from protocol.task import Task
from protocol.taskdata import PackedData

log = logging.getLogger(__name__)

PROTO_RECORD = "/pol/record/1"
MAX_RECORD_REQUEST = 256
MAX_RECORD_RESPONSE = MAX_RECORD_BYTES + (1 << 16)  # the record and an audit path of at most 40 hashes
MAX_PATH = 64
IN_FLIGHT = 8  # record requests in flight per fetch
MAX_SEGMENT_RECORD_BYTES = 2 << 30  # a verifier declines a task whose segment may read more records than this

# (peer, multiaddr or None, protocol, payload, response limit) -> response bytes
Requester = Callable[[str, "str | None", str, bytes, int], Awaitable[bytes]]


class RecordFetchFailed(Exception):
    """No holder could supply a record a replay needs."""


@dataclass
class RecordStats:
    fetched: int = 0
    bytes: int = 0
    refused: int = 0  # responses that failed their checks
    served: int = 0
    by_dataset: dict[str, int] = field(default_factory=dict)


def encode_record_request(dataset: bytes, index: int) -> bytes:
    return encode_canonical({"dataset": dataset, "index": index})


def decode_record_request(raw: bytes) -> tuple[bytes, int]:
    doc = decode_canonical(raw, MAX_RECORD_REQUEST)
    if not isinstance(doc, dict) or set(doc) != {"dataset", "index"}:
        raise InvalidMessage("a record request is {dataset, index}")
    dataset, index = doc["dataset"], doc["index"]
    if not isinstance(dataset, bytes) or len(dataset) != 32:
        raise InvalidMessage("record request: dataset must be 32 bytes")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 1 << 40:
        raise InvalidMessage("record request: index must be an integer in [0, 2^40)")
    return dataset, index


def decode_record_response(raw: bytes, packed: PackedData, index: int) -> tuple[bytes, MerkleProof]:
    """The record and proof of a response, checked against the task's packed fields (``InvalidInput``)."""
    doc = decode_canonical(raw, MAX_RECORD_RESPONSE)
    if not isinstance(doc, dict) or set(doc) != {"record", "path"}:
        raise InvalidMessage("a record response is {record, path}")
    record, path = doc["record"], doc["path"]
    if not isinstance(record, bytes) or not isinstance(path, list) or len(path) > MAX_PATH \
            or not all(isinstance(h, bytes) and len(h) == 32 for h in path):
        raise InvalidMessage("record response: record must be bytes, path a list of 32-byte hashes")
    from prover.packeddata import get_manifest_view

    proof = MerkleProof(index, packed.num_records, tuple(path))
    validate_record(get_manifest_view(packed), index, record, proof)
    return record, proof


class RecordStore:
    """The records this node holds: full datasets under ``datasets_dir``, fetched ones under ``cache_dir``."""

    def __init__(self, datasets_dir: Path, cache_dir: Path) -> None:
        self.datasets_dir = datasets_dir
        self.cache_dir = cache_dir
        self._full: dict[bytes, DirRecords] = {}
        self._unusable: set[bytes] = set()
        self.stats = RecordStats()

    def full(self, dataset: bytes) -> DirRecords | None:
        """The complete local copy of ``dataset``, if this node has one (opened and checked once; a copy
        added later is found then, an unusable one is not reopened until restart)."""
        held = self._full.get(dataset)
        directory = self.datasets_dir / dataset.hex()
        if held is not None or dataset in self._unusable or not directory.is_dir():
            return held
        try:
            held = DirRecords(directory)
        except (InvalidInput, OSError) as exc:
            log.warning("packed dataset %s is unusable: %s", directory, exc)
            held = None
        if held is not None and held.dataset_hash != dataset:
            log.warning("%s holds dataset %s, not the one its name says", directory, held.dataset_hash.hex())
            held = None
        if held is None:
            self._unusable.add(dataset)
        else:
            self._full[dataset] = held
        return held

    def cache(self, dataset: bytes, packed: PackedData) -> CachedRecords:
        return CachedRecords(self.cache_dir / dataset.hex(), dataset, packed)

    def source(self, dataset: bytes, packed: PackedData) -> DirRecords | CachedRecords:
        """Where a replay reads ``dataset``'s records: the full copy if held, else the fetched records."""
        return self.full(dataset) or self.cache(dataset, packed)

    def answer(self, request: bytes) -> bytes:
        """The encoded response to an encoded request (blocking: file I/O and hashing)."""
        dataset, index = decode_record_request(request)
        held = self.full(dataset)
        if held is not None:
            if index >= held.manifest.num_records:
                raise InvalidMessage("record index beyond the dataset")
            record, path = held.get_record(index), held.get_proof(index).path
            raw = encode_canonical({"record": record, "path": list(path)})
        else:
            cached = self.cache_dir / dataset.hex() / f"{index:010d}.rec"
            if not cached.is_file():
                raise LookupError("record not held here")
            raw = cached.read_bytes()  # {record, path}: the requester checks it against the root
            if len(raw) > MAX_RECORD_RESPONSE:
                raise LookupError("cached record is oversized")
        self.stats.served += 1
        return raw

    async def serve(self, peer: str, request: bytes) -> bytes:
        return await asyncio.to_thread(self.answer, request)


class RecordFetcher:
    """Fetches the records a replay needs, each checked with its audit path, into the store's cache."""

    def __init__(self, store: RecordStore, request: Requester) -> None:
        self.store = store
        self._request = request
        self._locks: dict[bytes, asyncio.Lock] = {}

    async def ensure(self, dataset: bytes, packed: PackedData, indices: list[int],
                     candidates: list[tuple[str, str | None]]) -> int:
        """Make every record in ``indices`` available locally; returns how many were fetched now."""
        if self.store.full(dataset) is not None:
            return 0
        cache = self.store.cache(dataset, packed)
        lock = self._locks.setdefault(dataset, asyncio.Lock())
        async with lock:
            missing = await asyncio.to_thread(_missing, cache, sorted(set(indices)))
            if not missing:
                return 0
            slots = asyncio.Semaphore(IN_FLIGHT)

            async def one(index: int) -> None:
                async with slots:
                    await self._fetch_one(cache, dataset, packed, index, candidates)

            await asyncio.gather(*(one(i) for i in missing))
        log.info("fetched %d records of dataset %s (%d asked)", len(missing), dataset.hex()[:12], len(indices))
        return len(missing)

    async def _fetch_one(self, cache: CachedRecords, dataset: bytes, packed: PackedData, index: int,
                         candidates: list[tuple[str, str | None]]) -> None:
        errors: list[str] = []
        payload = encode_record_request(dataset, index)
        for peer, addr in candidates:
            try:
                raw = await self._request(peer, addr, PROTO_RECORD, payload, MAX_RECORD_RESPONSE)
                record, proof = decode_record_response(raw, packed, index)
            except asyncio.CancelledError:
                raise
            except InvalidInput as exc:
                self.store.stats.refused += 1
                errors.append(f"{peer[-8:]}: {exc}")
                log.warning("record %d of %s from %s refused: %s", index, dataset.hex()[:12], peer[-8:], exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a vanished or slow holder: try the next one
                errors.append(f"{peer[-8:]}: {exc}")
                continue
            await asyncio.to_thread(cache.put, index, record, proof)
            stats = self.store.stats
            stats.fetched += 1
            stats.bytes += len(record)
            stats.by_dataset[dataset.hex()] = stats.by_dataset.get(dataset.hex(), 0) + 1
            return
        raise RecordFetchFailed(f"record {index} of dataset {dataset.hex()[:16]}: no holder served it "
                                f"({'; '.join(errors[-3:]) or 'no candidates'})")


def get_segment_record_bytes_bound(task: Task) -> int:
    """An upper bound, from the task alone, on the record bytes one segment reads (before any fetch)."""
    p = task.data.packed
    if p is None:
        return 0
    per_row = 1
    if p.is_tokens:
        context = getattr(task.model, "context", 0)
        per_row = (context + 1 + p.items_per_record - 1) // p.items_per_record + 1
    records = min(p.num_records, task.checkpoint_interval * task.batch_size * per_row)
    return records * p.items_per_record * p.item_bytes


def _missing(cache: CachedRecords, indices: list[int]) -> list[int]:
    """Records not cached, or cached but failing their proof now (a damaged file is fetched again)."""
    out = []
    for i in indices:
        try:
            cache.load(i)
        except FileNotFoundError:
            out.append(i)
        except (InvalidInput, OSError) as exc:
            log.warning("cached record %d of %s is damaged (%s); fetching it again", i, cache.dataset_hash.hex()[:12],
                        exc)
            cache.path(i).unlink(missing_ok=True)
            out.append(i)
    return out


def get_segment_records(dataset: PackedDataset, keyed_task: Task, segment: int) -> list[int]:
    """The records segment ``segment`` of ``keyed_task`` (a task keyed by its run seed) reads."""
    k = keyed_task.checkpoint_interval
    out: set[int] = set()
    for step in range(segment * k, segment * k + k):
        out.update(dataset.get_step_records(keyed_task, step))
    return sorted(out)
