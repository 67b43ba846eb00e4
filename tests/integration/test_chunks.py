"""Chunked checkpoint transfer (node.chunks) in-process: proofs, resume at the same offset from the next
holder, lying holders, bad requests. The libp2p path is covered by test_faults_transfer.py."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.chunks import ChunkFetcher, ChunkFetchFailed, ChunkServer, compute_root_path
from prover.checkpoint import write_checkpoint
from protocol.claim import compute_commitment
from protocol.errors import InvalidInput
from protocol.messages import ChunkRequest, ChunkResponse, decode_message, encode_message
from protocol.state import TensorLeaf, compute_state_root, get_sorted_leaves

CLAIM = hashlib.sha256(b"claim").digest()


def _leaves(seed: int = 0) -> list[TensorLeaf]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(3000).astype("<f4")
    b = rng.standard_normal((4, 5)).astype("<f4")
    return get_sorted_leaves([
        TensorLeaf("meta/step", "i64", (), np.int64(5).tobytes()),
        TensorLeaf("param/a", "f32", (3000,), a.tobytes()),
        TensorLeaf("param/b", "f32", (4, 5), b.tobytes()),
        TensorLeaf("param/empty", "f32", (0,), b""),
    ])


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, Any]:
    leaves = _leaves()
    root = compute_state_root(leaves)
    roots = [hashlib.sha256(b"r0").digest(), root, hashlib.sha256(b"r2").digest()]
    path = tmp_path / "ckpt.safetensors"
    write_checkpoint(path, leaves, root, b"\x00" * 32)

    def lookup(claim_id: bytes, index: int) -> Any:
        if claim_id != CLAIM or index != 1:
            return None
        return str(path), root, compute_root_path(roots, 1)

    return {"leaves": leaves, "root": root, "roots": roots, "commitment": compute_commitment(roots),
            "server": ChunkServer(lookup), "names": [leaf.name for leaf in leaves]}


class Peers:
    """Fake transport: peer name -> behaviour; records every request."""

    def __init__(self, server: ChunkServer) -> None:
        self.server = server
        self.log: list[tuple[str, ChunkRequest]] = []
        self.vanish_after: dict[str, int] = {}
        self.tamper: set[str] = set()

    async def request(self, peer: str, addr: str | None, protocol: str, payload: bytes, limit: int) -> bytes:
        req = decode_message(payload)
        assert isinstance(req, ChunkRequest) and protocol == "/pol/chunk/1"
        self.log.append((peer, req))
        left = self.vanish_after.get(peer)
        if left is not None:
            if left <= 0:
                raise ConnectionError(f"{peer} vanished")
            self.vanish_after[peer] = left - 1
        raw = self.server.answer(payload)
        assert len(raw) <= limit
        if peer in self.tamper:
            resp = decode_message(raw)
            assert isinstance(resp, ChunkResponse)
            data = bytes(b ^ 1 for b in resp.data)
            raw = encode_message(ChunkResponse(**{**resp.__dict__, "data": data}))
        return raw


def _fetch(fetcher: ChunkFetcher, s: dict[str, Any], holders: list[str]) -> list[TensorLeaf]:
    return asyncio.run(fetcher.fetch(CLAIM, 1, s["root"], s["commitment"], 3, s["names"],
                                     [(h, None) for h in holders]))


def test_fetch_in_chunks_with_proofs(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    fetcher = ChunkFetcher(peers.request, chunk_bytes=1000)
    assert _fetch(fetcher, setup, ["a"]) == setup["leaves"]
    sizes = [r.length for _, r in peers.log]
    assert max(sizes) == 1000 and len(peers.log) == 1 + 12 + 1 + 1  # 12000-byte tensor in 12 pieces
    assert fetcher.stats.resumes == 0


def test_vanished_holder_resumes_at_same_offset(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    peers.vanish_after.update(prover=5, gone=0)  # the prover dies in the middle of param/a
    fetcher = ChunkFetcher(peers.request, chunk_bytes=1000)
    assert _fetch(fetcher, setup, ["prover", "gone", "verifier"]) == setup["leaves"]
    first_from_other = next(r for p, r in peers.log if p == "verifier")
    last_ok = [r for p, r in peers.log if p == "prover"][4]
    assert (first_from_other.tensor, first_from_other.offset) == (last_ok.tensor, last_ok.offset + 1000)
    assert fetcher.stats.resumes >= 1


def test_progress_survives_a_failed_attempt(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    peers.vanish_after["prover"] = 4
    fetcher = ChunkFetcher(peers.request, chunk_bytes=1000)
    with pytest.raises(ChunkFetchFailed):
        _fetch(fetcher, setup, ["prover"])
    peers.log.clear()
    assert _fetch(fetcher, setup, ["late"]) == setup["leaves"]
    assert peers.log[0][1].offset > 0  # continued, not restarted


def test_lying_holder_is_caught_and_bypassed(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    peers.tamper.add("liar")
    fetcher = ChunkFetcher(peers.request, chunk_bytes=1000)
    assert _fetch(fetcher, setup, ["liar", "honest"]) == setup["leaves"]
    with pytest.raises(ChunkFetchFailed):
        _fetch(ChunkFetcher(peers.request, chunk_bytes=1000), setup, ["liar"])


def test_wrong_commitment_or_root_is_refused(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    fetcher = ChunkFetcher(peers.request, chunk_bytes=1000)
    other = compute_commitment([b"\x01" * 32] * 3)
    with pytest.raises(ChunkFetchFailed, match="not the claim's committed root"):
        asyncio.run(fetcher.fetch(CLAIM, 1, setup["root"], other, 3, setup["names"], [("a", None)]))
    with pytest.raises(ChunkFetchFailed, match="differs from the committed root"):
        asyncio.run(ChunkFetcher(peers.request).fetch(CLAIM, 1, b"\x02" * 32, setup["commitment"], 3,
                                                      setup["names"], [("a", None)]))
    # A tensor list that misses one tensor is not the whole state.
    with pytest.raises(InvalidInput, match="whole state"):
        asyncio.run(ChunkFetcher(peers.request).fetch(CLAIM, 1, setup["root"], setup["commitment"], 3,
                                                      setup["names"][:-1], [("a", None)]))


def test_server_refuses_bad_requests(setup: dict[str, Any]) -> None:
    server: ChunkServer = setup["server"]
    for bad in (b"", b"\xc1", encode_message(ChunkRequest(CLAIM, 1, "param/a", 12001, 10))):
        with pytest.raises(InvalidInput):
            server.answer(bad)
    with pytest.raises(LookupError):
        server.answer(encode_message(ChunkRequest(CLAIM, 1, "param/zzz", 0, 10)))
    with pytest.raises(LookupError):
        server.answer(encode_message(ChunkRequest(CLAIM, 2, "param/a", 0, 10)))
    full = decode_message(server.answer(encode_message(ChunkRequest(CLAIM, 1, "param/a", 0, 1 << 20))))
    assert isinstance(full, ChunkResponse) and len(full.data) == 12000
    assert len(encode_message(full)) < 1 << 20
