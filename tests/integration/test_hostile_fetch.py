"""A holder that lies about a tensor's shape to make the verifier download and buffer far more than the
task's state (before: up to 2^28 elements per tensor, checked only once assembled)."""

from __future__ import annotations

import asyncio
from typing import Any

from node.chunks import ChunkFetcher
from protocol.messages import ChunkRequest, ChunkResponse, decode_message, encode_message

from .test_chunks import CLAIM, Peers, setup  # noqa: F401 - setup is the shared fixture


class Inflating(Peers):
    """Answers with the honest root and proofs but states a 100x larger param/a, zero-filled."""

    async def request(self, peer: str, addr: str | None, protocol: str, payload: bytes, limit: int) -> bytes:
        req = decode_message(payload)
        assert isinstance(req, ChunkRequest)
        if peer != "inflater" or req.tensor != "param/a":
            return await super().request(peer, addr, protocol, payload, limit)
        self.log.append((peer, req))
        honest = decode_message(self.server.answer(encode_message(ChunkRequest(**{**req.__dict__, "offset": 0}))))
        assert isinstance(honest, ChunkResponse)
        big = 300_000 * 4
        data = bytes(max(0, min(req.length, big - req.offset)))
        return encode_message(ChunkResponse(**{**honest.__dict__, "offset": req.offset, "shape": (300_000,),
                                               "data": data}))


def _fetch(peers: Peers, s: dict[str, Any], layout: Any) -> Any:
    fetcher = ChunkFetcher(peers.request, chunk_bytes=1000)
    leaves = asyncio.run(fetcher.fetch(CLAIM, 1, s["root"], s["commitment"], 3, s["names"],
                                       [("inflater", None), ("honest", None)], layout))
    return leaves, fetcher


def test_holder_stating_a_larger_shape_is_dropped_at_its_first_chunk(setup: dict[str, Any]) -> None:  # noqa: F811
    layout = {leaf.name: (leaf.dtype, leaf.shape) for leaf in setup["leaves"]}
    peers = Inflating(setup["server"])
    leaves, fetcher = _fetch(peers, setup, layout)
    assert leaves == setup["leaves"]
    asked = [r for p, r in peers.log if p == "inflater" and r.tensor == "param/a"]
    assert len(asked) == 1  # refused on its first answer, then the honest holder serves the rest
    # Without the task's layout the same liar is believed until the tensor is assembled: 1200 requests,
    # 1.2 MB buffered for a 12 KB tensor.
    peers = Inflating(setup["server"])
    leaves, _ = _fetch(peers, setup, None)
    assert leaves == setup["leaves"]
    assert len([r for p, r in peers.log if p == "inflater" and r.tensor == "param/a"]) > 1000
