"""Checkpoint transfer chunk by chunk, every chunk proven under the committed state root on arrival.

Protocol ``/pol/chunk/2``: a ``ChunkRequest`` (claim id, checkpoint index, tensor name, chunk index) is
answered by a ``ChunkResponse`` carrying that ``TENSOR_CHUNK_BYTES`` chunk of the tensor's bytes, its path
under the tensor's chunk root, the tensor's proof under the checkpoint's state root and that root's path
under the claim's commitment (SPEC.md §5.2, §16.6). A response is one frame of at most 1 MiB.

The fetcher (``ChunkFetcher``) takes every tensor's dtype and shape from the task, checks each chunk when
it arrives (``validate_chunk_response``, against the root it already holds for that checkpoint) and writes
it at its place in a temporary safetensors file whose header follows from that layout, so its memory is
bounded by the chunks in flight, never a whole tensor. When every chunk is in, the state root recomputed
from the chunk hashes proves that nothing is missing; only then is the file synced and renamed into place.
A holder that fails or sends one wrong chunk is left for the rest of the fetch, which continues at the
same chunk from the next holder; progress also survives across the caller's retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prover.checkpoint import fsync_dir, read_checkpoint
from protocol.constants import TENSOR_CHUNK_BYTES, Digest
from protocol.errors import InvalidCheckpoint, InvalidInput, InvalidMessage, InvalidProof
from protocol.merkle import (
    MerkleProof,
    compute_leaf_hash,
    compute_merkle_proof,
    compute_proof_from_leaf_hashes,
    compute_root_from_leaf_hashes,
)
from protocol.messages import ChunkRequest, ChunkResponse, decode_message, encode_message, validate_chunk_response
from protocol.state import (
    TensorLeaf,
    compute_chunk_hashes,
    compute_leaf_data,
    get_chunk_count,
    get_sorted_leaves,
    get_tensor_nbytes,
)

log = logging.getLogger(__name__)

PROTO_CHUNK = "/pol/chunk/2"
FRAME_BYTES = 1 << 20  # one p2p DATA frame (node/_p2p_framing.py): a chunk and its proofs fit
PIPELINE_DEPTH = 8  # chunk requests in flight to one holder (the server serves up to 16 at once)

# (claim_id, checkpoint) -> (checkpoint file, state root, the root's path under the commitment), or None
Lookup = Callable[[bytes, int], "tuple[str, bytes, tuple[bytes, ...]] | None"]
# (peer, multiaddr or None, protocol, payload, response limit) -> response bytes
Requester = Callable[[str, "str | None", str, bytes, int], Awaitable[bytes]]
# (name, dtype, shape) of every tensor of a checkpoint, from the task, in canonical (name byte) order
Layout = Sequence[tuple[str, str, tuple[int, ...]]]
_ST_DTYPE = {"f32": "F32", "i64": "I64"}


class ChunkFetchFailed(Exception):
    """No holder could supply the rest of a checkpoint."""


def _leaf_hash(name: str, dtype: str, shape: tuple[int, ...], chunk_hashes: Sequence[bytes]) -> Digest:
    return compute_leaf_hash(compute_leaf_data(name, dtype, shape, compute_root_from_leaf_hashes(chunk_hashes)))


@dataclass
class _Held:
    root: bytes
    root_path: tuple[bytes, ...]
    leaves: dict[str, TensorLeaf]
    chunk_hashes: dict[str, list[Digest]]
    tensor_proofs: dict[str, MerkleProof]


class ChunkServer:
    """Serves chunks of locally held checkpoints (re-checked against their root when loaded)."""

    def __init__(self, lookup: Lookup, cache_size: int = 4) -> None:
        self._lookup = lookup
        self._cache: OrderedDict[tuple[bytes, int], _Held] = OrderedDict()
        self._size = cache_size
        self.served = 0
        self.served_bytes = 0

    def _load(self, claim_id: bytes, index: int) -> _Held:
        key = (claim_id, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        found = self._lookup(claim_id, index)
        if found is None:
            raise LookupError("checkpoint not held here")
        path, root, root_path = found
        ordered = get_sorted_leaves(read_checkpoint(Path(path)))
        chunks = {leaf.name: compute_chunk_hashes(leaf.data) for leaf in ordered}
        hashes = [_leaf_hash(leaf.name, leaf.dtype, leaf.shape, chunks[leaf.name]) for leaf in ordered]
        if compute_root_from_leaf_hashes(hashes) != root:
            raise InvalidCheckpoint(f"checkpoint {Path(path).name} does not hash to its committed root")
        held = _Held(root, tuple(root_path), {leaf.name: leaf for leaf in ordered}, chunks,
                     {leaf.name: compute_proof_from_leaf_hashes(hashes, i) for i, leaf in enumerate(ordered)})
        self._cache[key] = held
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return held

    def answer(self, request: bytes) -> bytes:
        """The encoded ``ChunkResponse`` to an encoded ``ChunkRequest`` (blocking: file I/O, hashing)."""
        req = decode_message(request, 4096)
        if not isinstance(req, ChunkRequest):
            raise InvalidMessage("expected a chunk request")
        held = self._load(req.claim_id, req.checkpoint)
        leaf = held.leaves.get(req.tensor)
        if leaf is None:
            raise LookupError("no such tensor in that checkpoint")
        hashes = held.chunk_hashes[req.tensor]
        if req.chunk >= len(hashes):
            raise InvalidMessage(f"chunk {req.chunk} beyond the tensor's {len(hashes)} chunks")
        data = bytes(memoryview(leaf.data)[req.chunk * TENSOR_CHUNK_BYTES:(req.chunk + 1) * TENSOR_CHUNK_BYTES])
        path = compute_proof_from_leaf_hashes(hashes, req.chunk).path
        self.served += 1
        self.served_bytes += len(data)
        return encode_message(ChunkResponse(req.claim_id, req.checkpoint, req.tensor, leaf.dtype, leaf.shape,
                                            req.chunk, data, path, held.root, held.root_path,
                                            held.tensor_proofs[req.tensor]))

    async def serve(self, peer: str, request: bytes) -> bytes:
        return await asyncio.to_thread(self.answer, request)


def encode_safetensors_header(layout: Layout, metadata: dict[str, str]) -> tuple[bytes, list[int]]:
    """The 8-byte length and JSON header of a safetensors file holding ``layout`` in that order, padded
    with spaces to a multiple of 8 bytes, and each tensor's data offset after the header."""
    entries: dict[str, object] = {"__metadata__": metadata}
    offsets, position = [], 0
    for name, dtype, shape in layout:
        nbytes = get_tensor_nbytes(dtype, shape)
        entries[name] = {"dtype": _ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [position, position + nbytes]}
        offsets.append(position)
        position += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header, offsets


@dataclass
class _Progress:
    tmp: Path
    layout: tuple[tuple[str, str, tuple[int, ...]], ...]
    start: int  # file offset of the first tensor byte
    offsets: list[int]  # of each tensor, after ``start``
    hashes: list[list[Digest | None]]  # per tensor, per chunk: the leaf hash of a checked chunk on disk


@dataclass
class FetchStats:
    chunks: int = 0
    bytes: int = 0
    resumes: int = 0  # moves to another holder in the middle of a checkpoint
    refused: int = 0  # chunks refused (wrong data, proof, dtype or shape)
    by_peer: dict[str, int] = field(default_factory=dict)


class ChunkFetcher:
    """Fetches whole checkpoints chunk by chunk into files; keeps partial progress between attempts.

    ``chunks_per_s`` > 0 paces the requests (a bandwidth cap for operators; tests use it to make a
    transfer last)."""

    def __init__(self, request: Requester, chunks_per_s: float = 0.0) -> None:
        self._request = request
        self.chunks_per_s = chunks_per_s
        self._progress: dict[tuple[bytes, int], _Progress] = {}
        self.stats = FetchStats()
        self.current: dict[str, object] = {}  # what is being fetched right now (for /status)

    def _start(self, key: tuple[bytes, int], dest: Path, layout: Layout, metadata: dict[str, str]) -> _Progress:
        prog = self._progress.get(key)
        frozen = tuple((n, d, tuple(s)) for n, d, s in layout)
        if prog is not None and prog.layout == frozen and prog.tmp.exists():
            return prog
        header, offsets = encode_safetensors_header(frozen, metadata)
        total = sum(get_tensor_nbytes(d, s) for _, d, s in frozen)
        tmp = dest.with_name(dest.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:  # sparse: every chunk is written at its place as it arrives
            fh.write(header)
            fh.truncate(len(header) + total)
        prog = _Progress(tmp, frozen, len(header), offsets,
                         [[None] * get_chunk_count(get_tensor_nbytes(d, s)) for _, d, s in frozen])
        self._progress[key] = prog
        return prog

    async def fetch(self, claim_id: bytes, index: int, root: bytes, commitment: bytes, num_checkpoints: int,
                    layout: Layout, candidates: list[tuple[str, str | None]], dest: Path,
                    task_id: bytes = b"") -> None:
        """Write checkpoint ``index`` (the tensors of ``layout``, from the task) to ``dest``, every chunk proven
        under ``root`` (itself under ``commitment``) on arrival and the whole state checked before the rename.

        A holder that states another dtype or shape than the task's, or sends a chunk that fails its proof,
        costs that chunk: the fetch moves on to the next holder."""
        key = (claim_id, index)
        prog = self._start(key, dest, layout, {"pol_root": root.hex(), "pol_task_id": task_id.hex()})
        holders = list(candidates)
        at, errors, trusted = 0, list[str](), set[str]()
        started = time.monotonic()
        fd = os.open(prog.tmp, os.O_WRONLY)
        try:
            while True:
                todo = [(t, k) for t, chunks in enumerate(prog.hashes) for k, h in enumerate(chunks) if h is None]
                if not todo:
                    break
                if at >= len(holders):
                    name = prog.layout[todo[0][0]][0]
                    raise ChunkFetchFailed(f"checkpoint {index}: no holder left at {name} chunk {todo[0][1]} "
                                           f"({'; '.join(errors[-3:]) or 'no candidates'})")
                peer, addr = holders[at]
                # One request to a new holder first: a liar costs one chunk, then the pipeline opens.
                depth = PIPELINE_DEPTH if peer in trusted and self.chunks_per_s <= 0 else 1
                batch = todo[:depth]
                self.current = {"claim_id": claim_id.hex(), "checkpoint": index, "tensor": prog.layout[batch[0][0]][0],
                                "chunk": batch[0][1], "from": peer}
                t0 = time.monotonic()
                results = await asyncio.gather(
                    *(self._one(peer, addr, claim_id, index, prog.layout[t], k, root, commitment, num_checkpoints)
                      for t, k in batch), return_exceptions=True)
                failure: BaseException | None = None
                for (t, k), result in zip(batch, results):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    if isinstance(result, BaseException):
                        failure = failure or result
                        if isinstance(result, InvalidInput):  # the holder's answer, not the transport
                            self.stats.refused += 1
                        continue
                    resp, chunk_hash = result
                    os.pwrite(fd, resp.data, prog.start + prog.offsets[t] + k * TENSOR_CHUNK_BYTES)
                    prog.hashes[t][k] = chunk_hash
                    self.stats.chunks += 1
                    self.stats.bytes += len(resp.data)
                    self.stats.by_peer[peer] = self.stats.by_peer.get(peer, 0) + 1
                    trusted.add(peer)
                if failure is not None:  # vanished, lying or slow holder: continue from the next one
                    errors.append(f"{peer[-8:]}: {failure}")
                    log.info("checkpoint %d: chunk from %s failed (%s); trying the next holder", index, peer[-8:],
                             failure)
                    at += 1
                    if any(h is not None for chunks in prog.hashes for h in chunks):
                        self.stats.resumes += 1
                if self.chunks_per_s > 0:
                    await asyncio.sleep(max(0.0, len(batch) / self.chunks_per_s - (time.monotonic() - t0)))
            hashes = [_leaf_hash(n, d, s, [h for h in chunks if h is not None])
                      for (n, d, s), chunks in zip(prog.layout, prog.hashes)]
            if compute_root_from_leaf_hashes(hashes) != root:  # the task's tensors are the whole state
                self._progress.pop(key, None)
                prog.tmp.unlink(missing_ok=True)
                raise InvalidProof(f"checkpoint {index}: the task's tensors are not the whole state under the committed root")
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        os.replace(prog.tmp, dest)
        await asyncio.to_thread(fsync_dir, dest.parent)
        self._progress.pop(key, None)
        self.current = {}
        log.info("fetched checkpoint %d of %s: %d tensors, %d bytes in %.2f s", index, claim_id.hex()[:12],
                 len(prog.layout), sum(get_tensor_nbytes(d, s) for _, d, s in prog.layout), time.monotonic() - started)

    async def _one(self, peer: str, addr: str | None, claim_id: bytes, index: int,
                   tensor: tuple[str, str, tuple[int, ...]], chunk: int, root: bytes, commitment: bytes,
                   num_checkpoints: int) -> tuple[ChunkResponse, Digest]:
        name, dtype, shape = tensor
        req = ChunkRequest(claim_id, index, name, chunk)
        raw = await self._request(peer, addr, PROTO_CHUNK, encode_message(req), FRAME_BYTES)
        resp = decode_message(raw)
        if not isinstance(resp, ChunkResponse):
            raise InvalidMessage("expected a chunk response")
        if (resp.dtype, resp.shape) != (dtype, shape):
            raise InvalidMessage(f"holder states {resp.dtype}{list(resp.shape)[:8]} for {name}; the task implies "
                                 f"{dtype}{list(shape)}")
        if resp.state_root != root:
            raise InvalidProof("chunk's state root differs from the committed root")
        return resp, validate_chunk_response(resp, req, commitment, num_checkpoints)


def compute_root_path(roots: list[bytes], index: int) -> tuple[bytes, ...]:
    return tuple(compute_merkle_proof(roots, index).path)
