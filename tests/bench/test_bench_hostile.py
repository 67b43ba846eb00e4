"""Honest claim latency while an unfunded key floods the network, next to the same claim on a quiet one.

Two devnets (2 verifiers, 1 prover) run one after the other in one test; in the second, an attacker peer
publishes 2000 correctly signed postings from an unfunded key (plus garbage) while the honest task is
posted, trained, verified and paid. Figures: seconds from claim to certificate at v0 (the node's own
``seconds_to_certificate``) and from posting to payment.

Run: .venv/bin/pytest tests/bench/test_bench_hostile.py --benchmark-enable -s   (docs/security.md)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from node import devnet as dn
from tests.integration.node_helpers import claims, running_devnet, wait_for
from tests.integration.test_hostile_network import _flood, make_flood


def _run(directory: Path, flood: bool) -> dict[str, float]:
    with running_devnet(directory, verifiers=2, provers=1, cheaters=0) as net:
        v0 = net.verifiers[0]
        messages = make_flood(net) if flood else []
        started = time.monotonic()

        async def scenario() -> None:
            attack = asyncio.create_task(_flood(net, v0, messages)) if flood else None
            if attack is not None:
                await asyncio.sleep(2.0)
            await asyncio.to_thread(dn.post_tasks, net, v0)
            if attack is not None:
                await attack

        asyncio.run(asyncio.wait_for(scenario(), 300))
        paid = wait_for(lambda: [c for c in claims(v0) if c["status"] == "paid"], 300, "claim paid")
        return {"to_certificate_s": float(paid[0]["seconds_to_certificate"]),
                "post_to_paid_s": round(time.monotonic() - started, 1)}


def test_claim_latency_quiet_vs_flood(benchmark: Any, tmp_path: Path) -> None:
    if benchmark.disabled:
        pytest.skip("a benchmark: make bench, or --benchmark-enable")
    results: dict[str, dict[str, float]] = {}

    def both() -> None:
        results["quiet"] = _run(tmp_path / "quiet", flood=False)
        results["flood"] = _run(tmp_path / "flood", flood=True)

    benchmark.pedantic(both, rounds=1, iterations=1)
    ratio = results["flood"]["to_certificate_s"] / max(results["quiet"]["to_certificate_s"], 1e-3)
    print(f"claim latency quiet {results['quiet']} flood {results['flood']} ratio {ratio:.2f}")


def test_peak_memory_fetching_from_a_lying_holder(benchmark: Any, tmp_path: Path) -> None:
    """Python heap peak (tracemalloc) of fetching a checkpoint with one 64 MiB tensor where the first holder
    states a 16x larger tensor, the second sends a flipped bit in every chunk and the third is honest. The
    in-process server has loaded its checkpoint before the measurement, so the peak is the fetcher's plus
    the server's copies of the chunks in flight."""
    if benchmark.disabled:
        pytest.skip("a benchmark: make bench, or --benchmark-enable")
    import hashlib
    import tracemalloc

    import numpy as np

    from node.chunks import ChunkFetcher, ChunkServer, compute_root_path
    from prover.checkpoint import read_checkpoint, write_checkpoint
    from protocol.claim import compute_commitment
    from protocol.messages import ChunkRequest, ChunkResponse, decode_message, encode_message
    from protocol.state import TensorLeaf, compute_state_root, get_sorted_leaves

    claim = hashlib.sha256(b"claim").digest()
    elements = 1 << 24  # a 64 MiB tensor (128 chunks); the shape liar states 16x that
    leaves = get_sorted_leaves([TensorLeaf("meta/step", "i64", (), np.int64(5).tobytes()),
                                TensorLeaf("param/a", "f32", (elements,), np.ones(elements, "<f4").tobytes())])
    root = compute_state_root(leaves)
    roots = [hashlib.sha256(b"r0").digest(), root]
    path = tmp_path / "ckpt.safetensors"
    write_checkpoint(path, leaves, root, b"\x00" * 32)
    server = ChunkServer(lambda c, i: (str(path), root, compute_root_path(roots, 1)))
    server.answer(encode_message(ChunkRequest(claim, 1, "param/a", 0)))  # loaded before measuring

    async def request(peer: str, addr: Any, protocol: str, payload: bytes, limit: int) -> bytes:
        raw = server.answer(payload)
        req = decode_message(payload)
        assert isinstance(req, ChunkRequest)
        if peer == "honest" or req.tensor != "param/a":
            return raw
        resp = decode_message(raw)
        assert isinstance(resp, ChunkResponse)
        if peer == "shape-liar":
            return encode_message(ChunkResponse(**{**resp.__dict__, "shape": (16 * elements,)}))
        return encode_message(ChunkResponse(**{**resp.__dict__, "data": bytes([resp.data[0] ^ 1]) + resp.data[1:]}))

    layout = [(leaf.name, leaf.dtype, leaf.shape) for leaf in leaves]
    dest = tmp_path / "fetched.safetensors"
    fetcher = ChunkFetcher(request)
    peaks: dict[str, float] = {}

    def measure() -> None:
        tracemalloc.start()
        asyncio.run(fetcher.fetch(claim, 1, root, compute_commitment(roots), 2, layout,
                                  [("shape-liar", None), ("bit-liar", None), ("honest", None)], dest))
        peaks["fetch"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    benchmark.pedantic(measure, rounds=1, iterations=1)
    assert read_checkpoint(dest, expected_root=root) == leaves
    print(f"tensor 64 MiB, shape liar states 1 GiB, bit liar flips a bit per chunk: peak Python heap "
          f"{peaks['fetch']:.1f} MiB; refused {fetcher.stats.refused} chunks, {fetcher.stats.chunks} fetched")
    benchmark.extra_info.update(peak_mib=round(peaks["fetch"], 1), refused=fetcher.stats.refused)
    assert peaks["fetch"] < 16  # a few chunks in flight (8 x 512 KiB, each encoded and decoded), not 64 MiB
