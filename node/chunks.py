"""Checkpoint transfer in chunks of at most 1 MiB, each tensor proven under the committed state root.

Protocol ``/pol/chunk/1``: a ``ChunkRequest`` (claim id, checkpoint index, tensor name, offset,
length) is answered by a ``ChunkResponse`` carrying ``data = tensor[offset : offset + length]``, the
tensor's dtype and shape, its Merkle proof under the checkpoint's state root, and that root's path under
the claim's commitment (SPEC.md §16.6). A response is one frame of at most 1 MiB (``CHUNK_BYTES`` of
tensor data plus the proofs).

The fetcher (``ChunkFetcher``) checks each response against the request and the commitment
(``validate_chunk_response``) and against the root it already holds for that checkpoint, assembles each
tensor, checks it against the root (``validate_assembled_tensor``) and finally that the set of tensors is
the whole state (``compute_state_root``). Only then is the checkpoint written to disk and used. Progress
survives a vanished holder: the fetch continues at the same tensor and offset from the next holder,
and across retries of the caller. A tensor that fails its proof after assembly is fetched again from
the start, from another holder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from prover.checkpoint import read_checkpoint
from protocol.constants import MAX_CHUNK_LENGTH
from protocol.errors import InvalidInput, InvalidMessage, InvalidProof
from protocol.merkle import MerkleProof, compute_merkle_proof, compute_proof_from_leaf_hashes
from protocol.messages import (
    ChunkRequest,
    ChunkResponse,
    decode_message,
    encode_message,
    validate_assembled_tensor,
    validate_chunk_response,
)
from protocol.state import TensorLeaf, compute_state_root, compute_tensor_leaf_hash, get_sorted_leaves

log = logging.getLogger(__name__)

PROTO_CHUNK = "/pol/chunk/1"
FRAME_BYTES = 1 << 20  # one p2p DATA frame (node/_p2p_framing.py)
CHUNK_BYTES = MAX_CHUNK_LENGTH - 16 * 1024  # tensor bytes per request: the response fits one 1 MiB frame
MAX_TENSOR_RESTARTS = 3
PIPELINE_DEPTH = 8  # chunk requests in flight per tensor (the server serves up to 16 at once)

# (claim_id, checkpoint) -> (checkpoint file, state root, the root's path under the commitment), or None
Lookup = Callable[[bytes, int], "tuple[str, bytes, tuple[bytes, ...]] | None"]
# (peer, multiaddr or None, protocol, payload, response limit) -> response bytes
Requester = Callable[[str, "str | None", str, bytes, int], Awaitable[bytes]]


class ChunkFetchFailed(Exception):
    """No holder could supply the rest of a checkpoint."""


class _Mismatch(InvalidMessage):
    """A chunk disagrees with the earlier chunks of its tensor (which of the holders lies is unknown)."""


@dataclass
class _Held:
    root: bytes
    root_path: tuple[bytes, ...]
    leaves: dict[str, TensorLeaf]
    hashes: list[bytes]
    order: list[str]
    proofs: dict[str, MerkleProof] = field(default_factory=dict)


class ChunkServer:
    """Serves tensors of locally held checkpoints (re-checked against their root when loaded)."""

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
        ordered = get_sorted_leaves(read_checkpoint(Path(path), expected_root=root))
        held = _Held(root, tuple(root_path), {leaf.name: leaf for leaf in ordered},
                     [compute_tensor_leaf_hash(leaf) for leaf in ordered], [leaf.name for leaf in ordered])
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
        if req.offset > len(leaf.data):
            raise InvalidMessage("offset beyond the tensor's end")
        proof = held.proofs.get(req.tensor)
        if proof is None:
            proof = compute_proof_from_leaf_hashes(held.hashes, held.order.index(req.tensor))
            held.proofs[req.tensor] = proof
        data = leaf.data[req.offset:req.offset + req.length]
        self.served += 1
        self.served_bytes += len(data)
        return encode_message(ChunkResponse(req.claim_id, req.checkpoint, req.tensor, leaf.dtype, leaf.shape,
                                            req.offset, data, held.root, held.root_path, proof))

    async def serve(self, peer: str, request: bytes) -> bytes:
        return await asyncio.to_thread(self.answer, request)


@dataclass
class _Progress:
    done: dict[str, TensorLeaf] = field(default_factory=dict)
    name: str = ""
    buf: bytearray = field(default_factory=bytearray)
    first: ChunkResponse | None = None
    restarts: int = 0
    layout: dict[str, tuple[str, tuple[int, ...]]] | None = None


@dataclass
class FetchStats:
    chunks: int = 0
    bytes: int = 0
    resumes: int = 0  # moves to another holder in the middle of a checkpoint
    by_peer: dict[str, int] = field(default_factory=dict)


class ChunkFetcher:
    """Fetches whole checkpoints tensor by tensor; keeps partial progress between attempts."""

    def __init__(self, request: Requester, chunk_bytes: int = CHUNK_BYTES) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_LENGTH:
            raise ValueError(f"chunk_bytes must be in 1..{MAX_CHUNK_LENGTH}")
        self._request = request
        self.chunk_bytes = chunk_bytes
        self._progress: dict[tuple[bytes, int], _Progress] = {}
        self.stats = FetchStats()
        self.current: dict[str, object] = {}  # what is being fetched right now (for /status)

    async def fetch(self, claim_id: bytes, index: int, root: bytes, commitment: bytes, num_checkpoints: int,
                    names: list[str], candidates: list[tuple[str, str | None]],
                    layout: dict[str, tuple[str, tuple[int, ...]]] | None = None) -> list[TensorLeaf]:
        """All tensors ``names`` of checkpoint ``index``, proven under ``root`` (itself under ``commitment``).

        ``layout`` (name -> dtype, shape, from the task) is what each tensor must be: a holder that states
        another dtype or shape is refused at its first chunk, so no holder can make us buffer more than the
        task's own tensor sizes.
        """
        key = (claim_id, index)
        prog = self._progress.setdefault(key, _Progress())
        prog.layout = layout
        holders = list(candidates)
        at, errors = 0, list[str]()
        limit = FRAME_BYTES if self.chunk_bytes <= CHUNK_BYTES else MAX_CHUNK_LENGTH + 64 * 1024
        started = time.monotonic()
        i = 0
        while i < len(names):
            name = names[i]
            if name in prog.done:
                i += 1
                continue
            if prog.name != name:
                prog.name, prog.buf, prog.first, prog.restarts = name, bytearray(), None, 0
            while prog.first is None or len(prog.buf) < _nbytes(prog.first):
                if at >= len(holders):
                    raise ChunkFetchFailed(f"checkpoint {index}: no holder left at {name}+{len(prog.buf)} "
                                           f"({'; '.join(errors[-3:]) or 'no candidates'})")
                peer, addr = holders[at]
                # Once the tensor's size is known, keep several requests in flight to the same holder:
                # one request at a time leaves the link idle for a round trip per MiB.
                total = _nbytes(prog.first) if prog.first is not None else 0
                offsets = [len(prog.buf)] if prog.first is None else list(
                    range(len(prog.buf), total, self.chunk_bytes))[:PIPELINE_DEPTH]
                reqs = [ChunkRequest(claim_id, index, name, off, self.chunk_bytes) for off in offsets]
                self.current = {"claim_id": claim_id.hex(), "checkpoint": index, "tensor": name,
                                "offset": len(prog.buf), "from": peer}
                results = await asyncio.gather(
                    *(self._one(peer, addr, r, limit, root, commitment, num_checkpoints, prog) for r in reqs),
                    return_exceptions=True)
                for req, result in zip(reqs, results):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    if isinstance(result, _Mismatch):  # this holder or an earlier one lies: restart the tensor
                        prog.restarts += 1
                        if prog.restarts > MAX_TENSOR_RESTARTS:
                            raise ChunkFetchFailed(f"tensor {name}: {result}") from result
                        prog.buf, prog.first = bytearray(), None
                        break
                    if isinstance(result, BaseException):  # vanished, lying or slow holder: resume at the next
                        errors.append(f"{peer[-8:]}: {result}")
                        log.info("chunk %d/%s+%d from %s failed (%s); trying the next holder", index, name,
                                 req.offset, peer[-8:], result)
                        at += 1
                        if prog.buf or prog.done:
                            self.stats.resumes += 1
                        break
                    if req.offset != len(prog.buf):  # only contiguous data is kept
                        break
                    resp = result
                    prog.first = prog.first or resp
                    prog.buf += resp.data
                    self.stats.chunks += 1
                    self.stats.bytes += len(resp.data)
                    self.stats.by_peer[peer] = self.stats.by_peer.get(peer, 0) + 1
            leaf = TensorLeaf(name, prog.first.dtype, prog.first.shape, bytes(prog.buf))
            try:
                validate_assembled_tensor(leaf, prog.first)
            except InvalidInput as exc:  # some holder sent wrong bytes: start this tensor over elsewhere
                prog.restarts += 1
                log.warning("checkpoint %d tensor %s fails its proof (%s); fetching it again", index, name, exc)
                if prog.restarts > MAX_TENSOR_RESTARTS:
                    raise ChunkFetchFailed(f"tensor {name} failed its proof {prog.restarts} times") from exc
                prog.buf, prog.first = bytearray(), None
                at += 1
                continue
            prog.done[name] = leaf
            prog.name, prog.buf, prog.first = "", bytearray(), None
            i += 1
        leaves = [prog.done[n] for n in names]
        self._progress.pop(key, None)
        self.current = {}
        if compute_state_root(leaves) != root:  # the named tensors are the whole state, nothing missing
            raise InvalidProof(f"checkpoint {index}: the tensors {names[:2]}... are not the whole state")
        log.info("fetched checkpoint %d of %s: %d tensors, %d bytes in %.2f s", index, claim_id.hex()[:12],
                 len(leaves), sum(len(x.data) for x in leaves), time.monotonic() - started)
        return leaves

    async def _one(self, peer: str, addr: str | None, req: ChunkRequest, limit: int, root: bytes,
                   commitment: bytes, num_checkpoints: int, prog: _Progress) -> ChunkResponse:
        raw = await self._request(peer, addr, PROTO_CHUNK, encode_message(req), limit)
        resp = decode_message(raw)
        if not isinstance(resp, ChunkResponse):
            raise InvalidMessage("expected a chunk response")
        if prog.layout is not None and prog.layout.get(req.tensor) != (resp.dtype, resp.shape):
            raise InvalidMessage(f"holder states {resp.dtype}{list(resp.shape)[:8]} for {req.tensor}; the task "
                                 f"implies {prog.layout.get(req.tensor)}")
        validate_chunk_response(resp, req, commitment, num_checkpoints)
        if resp.state_root != root:
            raise InvalidProof("chunk's state root differs from the committed root")
        if prog.first is not None and (resp.dtype, resp.shape, resp.tensor_proof) != (
                prog.first.dtype, prog.first.shape, prog.first.tensor_proof):
            raise _Mismatch("chunk's dtype, shape or proof changed within one tensor")
        if not resp.data and _nbytes(resp) > req.offset:
            raise InvalidMessage("empty chunk before the tensor's end")
        return resp


def _nbytes(resp: ChunkResponse) -> int:
    count = 1
    for d in resp.shape:
        count *= d
    return count * (8 if resp.dtype == "i64" else 4)


def compute_root_path(roots: list[bytes], index: int) -> tuple[bytes, ...]:
    return tuple(compute_merkle_proof(roots, index).path)
