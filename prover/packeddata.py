"""Training on a packed dataset (SPEC.md §12.3): batches read record by record, every record checked.

A ``PackedDataset`` builds the batch of a step from the records that step reads
(``protocol.taskdata.compute_step_records``), taken from a ``RecordSource``:

* ``DirRecords``: a local packed dataset directory (``pol prove --dataset DIR``, ``pol verify
  --dataset DIR``, a node's ``datasets/<hash>/``). Every record read is hashed and compared with its
  leaf under ``records_root``; a record that does not match is refused, named with its shard and
  byte range.
* ``CachedRecords``: records fetched from peers, one file per record with its audit path
  (``node.records``), re-checked against ``records_root`` whenever read.

Sources are found by dataset hash (``register_source``), so every command that builds a runtime
(prove, verify, audit, answer) reads the same data without passing it through each call.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from protocol.datapack import get_record_length
from protocol.encoding import decode_canonical, encode_canonical
from protocol.errors import InvalidInput, ReplayError
from protocol.merkle import MerkleProof, compute_leaf_hash, compute_proof_from_leaf_hashes
from protocol.merkle import compute_root_from_leaf_hashes
from protocol.rng import compute_permutation
from protocol.task import Task, TransformerConfig
from protocol.taskdata import PackedData, compute_image_items, compute_step_records, compute_window_starts

from .training import NonFiniteLoss
from .datapack import (
    InvalidDataset,
    _trusted_leaves,
    load_manifest,
    read_record,
    shard_name,
)
from protocol.datapack import Manifest, compute_packed_dataset_hash, validate_record

log = logging.getLogger(__name__)
RECORD_CACHE = 64  # records kept in memory per source (64 KiB each by default)
_NP_TOKEN = {"u8": "<u1", "u16": "<u2", "u32": "<u4"}


class RecordSource(Protocol):
    """Records of one packed dataset, each checked against its ``records_root`` before it is returned."""

    dataset_hash: bytes

    def get_record(self, index: int) -> bytes: ...


class CorruptRecord(ReplayError):
    """A local record does not hash to the dataset's root: our copy is damaged (never the prover's fault)."""


class DataOutOfRange(NonFiniteLoss):
    """A step reads a token or label outside the task's classes: it cannot be trained, like a step whose
    loss is not finite, so a prover cannot claim it and a replay that meets it rejects the segment."""

    def __init__(self, step: int, what: str) -> None:
        self.step = step
        Exception.__init__(self, f"step {step} reads {what}: the step cannot be trained")


class DirRecords:
    """A local packed dataset directory; every record read is checked against the manifest's root."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.manifest: Manifest = load_manifest(directory)
        self.dataset_hash = compute_packed_dataset_hash(self.manifest)
        leaves = _trusted_leaves(directory, self.manifest)
        if leaves is None:
            log.warning("%s: leaf index missing or stale; hashing every record once", directory)
            leaves = [compute_leaf_hash(read_record(directory, self.manifest, i))
                      for i in range(self.manifest.num_records)]
            if compute_root_from_leaf_hashes(leaves) != self.manifest.records_root:
                raise InvalidDataset(f"the records in {directory} do not hash to its manifest's records_root; "
                                     "`pol dataset verify` names the first bad shard")
        self._leaves = leaves
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_record(self, index: int) -> bytes:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        try:
            record = read_record(self.directory, self.manifest, index)
        except InvalidInput as exc:  # a truncated or missing shard: our copy, not the prover, is at fault
            raise CorruptRecord(str(exc)) from None
        if compute_leaf_hash(record) != self._leaves[index]:
            shard, within = divmod(index, self.manifest.records_per_shard)
            start = within * self.manifest.record_bytes
            raise CorruptRecord(f"record {index} ({shard_name(shard)}, bytes {start}..{start + len(record) - 1}) "
                                f"does not hash to the manifest of {self.directory}; refusing it")
        with self._lock:
            self._cache[index] = record
            while len(self._cache) > RECORD_CACHE:
                self._cache.popitem(last=False)
        return record

    def get_proof(self, index: int) -> MerkleProof:
        return compute_proof_from_leaf_hashes(self._leaves, index)


def encode_cached_record(record: bytes, proof: MerkleProof) -> bytes:
    """What ``CachedRecords`` stores per record: ``{record, path}`` in canonical msgpack."""
    return encode_canonical({"record": record, "path": list(proof.path)})


class CachedRecords:
    """Records fetched with their audit paths, one file each (``DIR/NNNNNNNNNN.rec``)."""

    def __init__(self, directory: Path, dataset_hash: bytes, packed: PackedData) -> None:
        self.directory = directory
        self.dataset_hash = dataset_hash
        self.packed = packed
        self.manifest = get_manifest_view(packed)

    def path(self, index: int) -> Path:
        return self.directory / f"{index:010d}.rec"

    def has(self, index: int) -> bool:
        return self.path(index).is_file()

    def load(self, index: int) -> tuple[bytes, MerkleProof]:
        """Record ``index`` and its audit path, checked (``InvalidInput`` if the file is bad)."""
        raw = self.path(index).read_bytes()
        doc = decode_canonical(raw, (2 << 20))
        if not isinstance(doc, dict) or set(doc) != {"record", "path"} or not isinstance(doc["record"], bytes) \
                or not isinstance(doc["path"], list) or not all(isinstance(h, bytes) for h in doc["path"]):
            raise InvalidInput(f"cached record {index} is malformed")
        proof = MerkleProof(index, self.packed.num_records, tuple(doc["path"]))
        validate_record(self.manifest, index, doc["record"], proof)
        return doc["record"], proof

    def get_record(self, index: int) -> bytes:
        try:
            return self.load(index)[0]
        except FileNotFoundError:
            raise ReplayError(f"record {index} of dataset {self.dataset_hash.hex()[:16]} has not been fetched") from None
        except InvalidInput as exc:
            raise ReplayError(f"cached record {index} is damaged ({exc}); delete it to fetch it again") from None

    def put(self, index: int, record: bytes, proof: MerkleProof) -> None:
        """Store a record that the caller has checked (``validate_record``)."""
        from .checkpoint import write_atomic

        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(index), encode_cached_record(record, proof))


_SOURCES: dict[bytes, RecordSource] = {}
_SOURCES_LOCK = threading.Lock()


def register_source(source: RecordSource) -> None:
    """Make ``source`` the records of its dataset hash for every runtime built from now on."""
    with _SOURCES_LOCK:
        _SOURCES[source.dataset_hash] = source


def clear_sources() -> None:
    """Forget every registered source (each command names its datasets afresh)."""
    with _SOURCES_LOCK:
        _SOURCES.clear()


DATASET_DIRS_ENV = "POL_DATASET_DIRS"  # packed dataset directories, os.pathsep-separated (benchmarks, scripts)


def _from_environment(dataset_hash: bytes) -> RecordSource | None:
    for entry in filter(None, os.environ.get(DATASET_DIRS_ENV, "").split(os.pathsep)):
        try:
            source = DirRecords(Path(entry))
        except (InvalidInput, OSError) as exc:
            log.warning("%s entry %s is not a usable packed dataset: %s", DATASET_DIRS_ENV, entry, exc)
            continue
        register_source(source)
        if source.dataset_hash == dataset_hash:
            return source
    return None


def get_source(dataset_hash: bytes) -> RecordSource:
    with _SOURCES_LOCK:
        source = _SOURCES.get(dataset_hash)
        known = sorted(h.hex()[:16] for h in _SOURCES)
    if source is None:
        source = _from_environment(dataset_hash)
    if source is None:
        raise ReplayError(f"the task trains on packed dataset {dataset_hash.hex()}; no directory of it is "
                          f"given (--dataset DIR; datasets given: {known or 'none'})")
    return source


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return compute_permutation(seed, epoch, n)


class PackedDataset:
    """The batches of a task on a packed dataset, read from a ``RecordSource``."""

    adapter = "packed"

    def __init__(self, sha256: bytes, packed: PackedData, source: RecordSource | None = None) -> None:
        self.sha256 = sha256
        self.packed = packed
        self.source = source if source is not None else get_source(sha256)
        self.n_classes = packed.classes
        self.in_features = 0 if packed.is_tokens else int(np.prod(packed.item_shape))
        self.records_read: set[int] = set()
        self._manifest = get_manifest_view(packed)

    def get_step_records(self, task: Task, step: int) -> list[int]:
        context = task.model.context if isinstance(task.model, TransformerConfig) else 0
        return compute_step_records(self.packed, task.seed, step, task.batch_size, context, _permutation)

    def _items(self, first: int, count: int) -> bytes:
        """The bytes of items ``first .. first + count - 1`` (they may span records)."""
        p = self.packed
        size, ipr = p.item_bytes, p.items_per_record
        out = bytearray()
        index = first
        while index < first + count:
            r, within = divmod(index, ipr)
            record = self.source.get_record(r)
            if len(record) != get_record_length(self._manifest, r):
                raise ReplayError(f"record {r} has the wrong length")
            self.records_read.add(r)
            take = min(ipr - within, first + count - index)
            out += record[within * size:(within + take) * size]
            index += take
        return bytes(out)

    def get_batch(self, task: Task, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, b = self.packed, task.batch_size
        if p.is_tokens:
            assert isinstance(task.model, TransformerConfig)
            ctx = task.model.context
            starts = compute_window_starts(p, task.seed, step, b, ctx)
            dtype = _NP_TOKEN[p.item_dtype]
            rows = [np.frombuffer(self._items(int(s), ctx + 1), dtype=dtype).astype(np.int64) for s in starts]
            windows = np.stack(rows)
            bad = int(windows.max())
            if bad >= p.classes:
                raise DataOutOfRange(step, f"token {bad}, outside the task's vocabulary of {p.classes}")
            return torch.from_numpy(windows[:, :-1].copy()), torch.from_numpy(windows[:, 1:].copy())
        items = compute_image_items(p, task.seed, step, b, _permutation)
        pixels = int(np.prod(p.item_shape))
        raw = np.stack([np.frombuffer(self._items(int(i), 1), dtype=np.uint8) for i in items])
        labels = raw[:, pixels:].copy().view("<u2").reshape(-1).astype(np.int64)
        if int(labels.max()) >= p.classes:
            raise DataOutOfRange(step, f"label {int(labels.max())}, outside the task's {p.classes} classes")
        # binary32 division of exact small integers: correctly rounded, the same on every device
        inputs = raw[:, :pixels].astype(np.float32) / np.float32(p.pixel_scale)
        return torch.from_numpy(inputs), torch.from_numpy(labels)


def get_manifest_view(p: PackedData) -> Manifest:
    """The identity part of a manifest, from a task's packed fields (enough to check any record)."""
    return Manifest(p.format, p.item_dtype, p.item_shape, p.num_items, p.items_per_record, p.records_root, 1, ())
