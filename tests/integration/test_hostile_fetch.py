"""A holder that lies about a tensor's shape to make the verifier download and buffer far more than the
task's state: refused at its first chunk (shapes come from the task), and nothing is buffered beyond the
chunks in flight (each chunk is checked on arrival and written to disk)."""

from __future__ import annotations

import asyncio
from typing import Any

from node.chunks import PIPELINE_DEPTH, ChunkFetcher
from prover.checkpoint import read_checkpoint
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
        honest = decode_message(self.server.answer(encode_message(ChunkRequest(**{**req.__dict__, "chunk": 0}))))
        assert isinstance(honest, ChunkResponse)
        return encode_message(ChunkResponse(**{**honest.__dict__, "chunk": req.chunk,
                                               "shape": (100 * honest.shape[0],), "data": bytes(len(honest.data))}))


def test_holder_stating_a_larger_shape_is_dropped_at_its_first_chunk(setup: dict[str, Any]) -> None:  # noqa: F811
    peers = Inflating(setup["server"])
    fetcher = ChunkFetcher(peers.request)
    asyncio.run(fetcher.fetch(CLAIM, 1, setup["root"], setup["commitment"], 3, setup["layout"],
                              [("inflater", None), ("honest", None)], setup["dest"]))
    assert read_checkpoint(setup["dest"], expected_root=setup["root"]) == setup["leaves"]
    asked = [r for p, r in peers.log if p == "inflater" and r.tensor == "param/a"]
    # Each refused on arrival: only the requests already in flight when the first lie came back (it had
    # answered meta/step honestly, so its pipeline was open), then the holder is left.
    assert len(asked) == fetcher.stats.refused <= PIPELINE_DEPTH
    assert {(r.tensor, r.chunk) for p, r in peers.log if p == "honest"} >= {("param/a", k) for k in range(3)}
