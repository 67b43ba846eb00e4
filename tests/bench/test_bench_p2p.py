"""Throughput of node.p2p request/response: a 64 MiB response from a peer process to this process.

Run for numbers: ``.venv/bin/pytest -q tests/bench/test_bench_p2p.py --benchmark-enable -s``.
With the project's default ``--benchmark-disable`` the transfer still runs (once) and is verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from node.p2p import P2PConfig, P2PNetwork  # noqa: E402 - after the sys.path fix-up


def _load_peer_harness() -> Any:
    # tests/ is not a package, so load the integration harness by path rather than by import name.
    spec = importlib.util.spec_from_file_location("p2p_peer_harness", REPO / "tests/integration/p2p_peer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIZE = 64 << 20


def test_bench_p2p_transfer_64mib(benchmark: Any) -> None:
    harness = _load_peer_harness()
    peer = harness.PeerProcess("--serve")
    loop = asyncio.new_event_loop()
    net = P2PNetwork(P2PConfig(identity_seed=hashlib.sha256(b"pol-p2p-bench").digest()))
    request = json.dumps({"size": SIZE, "seed": 11}).encode()
    durations: list[float] = []

    async def fetch() -> bytes:
        started = time.perf_counter()
        data = await net.request(peer.peer_id, harness.PROTO_BLOB, request, timeout=120)
        durations.append(time.perf_counter() - started)
        return data

    try:
        loop.run_until_complete(asyncio.wait_for(net.start(), 30))
        loop.run_until_complete(asyncio.wait_for(net.connect(peer.addrs[0]), 30))
        if not benchmark.disabled:
            loop.run_until_complete(fetch())  # warm-up: the peer generates and caches the blob
            durations.clear()
        data = benchmark.pedantic(lambda: loop.run_until_complete(fetch()), rounds=5, iterations=1)
        assert len(data) == SIZE
        assert hashlib.sha256(data).digest() == hashlib.sha256(harness.blob(SIZE, 11)).digest()
        rates = [SIZE / seconds / 1e6 for seconds in durations]
        benchmark.extra_info["MB_per_s_median"] = round(statistics.median(rates), 1)
        benchmark.extra_info["MB_per_s_best"] = round(max(rates), 1)
        print(f"\n64 MiB over node.p2p: median {statistics.median(rates):.0f} MB/s, "
              f"best {max(rates):.0f} MB/s over {len(rates)} transfer(s)")
    finally:
        loop.run_until_complete(net.stop())
        loop.close()
        peer.close()
