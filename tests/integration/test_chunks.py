"""Chunked checkpoint transfer (node.chunks) in-process: every chunk proven on arrival and written to a
temporary file, resume at the same chunk from the next holder, lying holders, bad requests. The libp2p
path is covered by test_faults_transfer.py."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.chunks import PIPELINE_DEPTH, ChunkFetcher, ChunkFetchFailed, ChunkServer, compute_root_path
from prover.checkpoint import read_checkpoint, write_checkpoint
from protocol.claim import compute_commitment
from protocol.constants import TENSOR_CHUNK_BYTES
from protocol.errors import InvalidInput
from protocol.messages import ChunkRequest, ChunkResponse, decode_message, encode_message
from protocol.state import TensorLeaf, compute_state_root, get_sorted_leaves

CLAIM = hashlib.sha256(b"claim").digest()
A_ELEMENTS = 2 * TENSOR_CHUNK_BYTES // 4 + 750  # param/a: three chunks, the last one 3000 bytes


def _leaves(seed: int = 0) -> list[TensorLeaf]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(A_ELEMENTS).astype("<f4")
    b = rng.standard_normal((4, 5)).astype("<f4")
    return get_sorted_leaves([
        TensorLeaf("meta/step", "i64", (), np.int64(5).tobytes()),
        TensorLeaf("param/a", "f32", (A_ELEMENTS,), a.tobytes()),
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
            "server": ChunkServer(lookup), "layout": [(leaf.name, leaf.dtype, leaf.shape) for leaf in leaves],
            "dest": tmp_path / "fetched" / "000001.safetensors"}


class Peers:
    """Fake transport: peer name -> behaviour; records every request."""

    def __init__(self, server: ChunkServer) -> None:
        self.server = server
        self.log: list[tuple[str, ChunkRequest]] = []
        self.vanish_after: dict[str, int] = {}
        self.tamper: dict[str, tuple[str, int] | None] = {}  # peer -> (tensor, chunk) it corrupts, None = all

    async def request(self, peer: str, addr: str | None, protocol: str, payload: bytes, limit: int) -> bytes:
        req = decode_message(payload)
        assert isinstance(req, ChunkRequest) and protocol == "/pol/chunk/2"
        self.log.append((peer, req))
        left = self.vanish_after.get(peer)
        if left is not None:
            if left <= 0:
                raise ConnectionError(f"{peer} vanished")
            self.vanish_after[peer] = left - 1
        raw = self.server.answer(payload)
        assert len(raw) <= limit
        if peer in self.tamper and self.tamper[peer] in (None, (req.tensor, req.chunk)):
            resp = decode_message(raw)
            assert isinstance(resp, ChunkResponse)
            data = bytearray(resp.data)
            if data:
                data[len(data) // 2] ^= 1  # one flipped bit, same length
            raw = encode_message(ChunkResponse(**{**resp.__dict__, "data": bytes(data) or b"\x00"}))
        return raw


def _fetch(fetcher: ChunkFetcher, s: dict[str, Any], holders: list[str]) -> list[TensorLeaf]:
    asyncio.run(fetcher.fetch(CLAIM, 1, s["root"], s["commitment"], 3, s["layout"], [(h, None) for h in holders],
                              s["dest"]))
    assert not s["dest"].with_name(s["dest"].name + ".part").exists()
    return read_checkpoint(s["dest"], expected_root=s["root"])


def test_fetch_chunk_by_chunk_into_a_file(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    fetcher = ChunkFetcher(peers.request)
    assert _fetch(fetcher, setup, ["a"]) == setup["leaves"]
    asked = [(r.tensor, r.chunk) for _, r in peers.log]
    assert sorted(asked) == [("meta/step", 0), ("param/a", 0), ("param/a", 1), ("param/a", 2), ("param/b", 0),
                             ("param/empty", 0)]
    assert fetcher.stats.resumes == fetcher.stats.refused == 0
    from safetensors.numpy import load_file  # the file is a standard safetensors file

    loaded = load_file(str(setup["dest"]))
    assert loaded["param/a"].tobytes() == setup["leaves"][1].data and loaded["param/empty"].shape == (0,)


def test_vanished_holder_resumes_at_same_chunk(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    peers.vanish_after.update(prover=3, gone=0)  # the prover dies in the middle of param/a
    fetcher = ChunkFetcher(peers.request)
    assert _fetch(fetcher, setup, ["prover", "gone", "verifier"]) == setup["leaves"]
    ok_from_prover = [(r.tensor, r.chunk) for p, r in peers.log if p == "prover"][:3]
    from_verifier = [(r.tensor, r.chunk) for p, r in peers.log if p == "verifier"]
    everything = {(r.tensor, r.chunk) for _, r in peers.log}
    assert len(everything) == 6 and sorted(from_verifier) == sorted(everything - set(ok_from_prover))
    assert fetcher.stats.resumes >= 1 and fetcher.stats.by_peer == {"prover": 3, "verifier": 3}


def test_progress_survives_a_failed_attempt(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    peers.vanish_after["prover"] = 2
    fetcher = ChunkFetcher(peers.request)
    with pytest.raises(ChunkFetchFailed, match="no holder left"):
        _fetch(fetcher, setup, ["prover"])
    assert not setup["dest"].exists()
    peers.log.clear()
    assert _fetch(fetcher, setup, ["late"]) == setup["leaves"]
    assert len(peers.log) == 6 - 2  # continued, not restarted


def test_lying_holder_costs_one_chunk(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    peers.tamper["liar"] = None
    fetcher = ChunkFetcher(peers.request)
    assert _fetch(fetcher, setup, ["liar", "honest"]) == setup["leaves"]
    assert [p for p, _ in peers.log].count("liar") == 1 and fetcher.stats.refused == 1
    with pytest.raises(ChunkFetchFailed, match="does not lead to the checkpoint's state root"):
        _fetch(ChunkFetcher(peers.request), setup, ["liar"])


def test_flipped_byte_in_chunk_k_is_refused_at_chunk_k(setup: dict[str, Any]) -> None:
    for k in range(3):
        peers = Peers(setup["server"])
        peers.tamper["liar"] = ("param/a", k)  # honest everywhere else
        fetcher = ChunkFetcher(peers.request)
        assert _fetch(fetcher, setup, ["liar", "honest"]) == setup["leaves"]
        assert fetcher.stats.refused == 1
        from_honest = [(r.tensor, r.chunk) for p, r in peers.log if p == "honest"]
        assert from_honest[0] == ("param/a", k)  # the rest continues at the refused chunk
        setup["dest"].unlink()


def test_wrong_commitment_root_or_layout_is_refused(setup: dict[str, Any]) -> None:
    peers = Peers(setup["server"])
    other = compute_commitment([b"\x01" * 32] * 3)
    s = dict(setup)
    with pytest.raises(ChunkFetchFailed, match="not the claim's committed root"):
        _fetch(ChunkFetcher(peers.request), {**s, "commitment": other}, ["a"])
    with pytest.raises(ChunkFetchFailed, match="differs from the committed root"):
        _fetch(ChunkFetcher(peers.request), {**s, "root": b"\x02" * 32}, ["a"])
    wrong = [(n, d, (3, 3) if n == "param/b" else sh) for n, d, sh in s["layout"]]
    with pytest.raises(ChunkFetchFailed, match="the task implies"):
        _fetch(ChunkFetcher(peers.request), {**s, "layout": wrong}, ["a"])
    # A tensor list that misses one tensor is not the whole state.
    with pytest.raises(InvalidInput, match="whole state"):
        _fetch(ChunkFetcher(peers.request), {**s, "layout": s["layout"][:-1]}, ["a"])
    assert not setup["dest"].exists() and not list(setup["dest"].parent.glob("*.part"))


def test_server_refuses_bad_requests(setup: dict[str, Any]) -> None:
    server: ChunkServer = setup["server"]
    for bad in (b"", b"\xc1", encode_message(ChunkRequest(CLAIM, 1, "param/a", 3))):
        with pytest.raises(InvalidInput):
            server.answer(bad)
    with pytest.raises(LookupError):
        server.answer(encode_message(ChunkRequest(CLAIM, 1, "param/zzz", 0)))
    with pytest.raises(LookupError):
        server.answer(encode_message(ChunkRequest(CLAIM, 2, "param/a", 0)))
    full = decode_message(server.answer(encode_message(ChunkRequest(CLAIM, 1, "param/a", 0))))
    assert isinstance(full, ChunkResponse) and len(full.data) == TENSOR_CHUNK_BYTES
    assert len(encode_message(full)) < 1 << 20  # one frame
    last = decode_message(server.answer(encode_message(ChunkRequest(CLAIM, 1, "param/a", 2))))
    assert isinstance(last, ChunkResponse) and len(last.data) == 3000 and PIPELINE_DEPTH >= 1
