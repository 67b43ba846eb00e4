"""Time one checkpoint fetch over /pol/chunk/2 between two libp2p hosts in this process (docs/datasets.md).

Usage: python tools/bench_fetch_checkpoint.py PROOF/checkpoints OUT.safetensors   (fetches checkpoint 1)
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import sys
import time
from pathlib import Path

from node.chunks import PROTO_CHUNK, ChunkFetcher, ChunkServer, compute_root_path
from node.p2p import P2PConfig, P2PNetwork
from prover.checkpoint import read_checkpoint
from protocol.claim import compute_commitment
from protocol.state import compute_state_root

CLAIM = hashlib.sha256(b"bench-fetch").digest()


async def fetch(files: list[Path], roots: list[bytes], layout: list[tuple[str, str, tuple[int, ...]]],
                dest: Path) -> None:
    server = ChunkServer(lambda c, i: (str(files[i]), roots[i], compute_root_path(roots, i)) if c == CLAIM else None)
    holder = P2PNetwork(P2PConfig(identity_seed=hashlib.sha256(b"holder").digest()))
    fetcher_net = P2PNetwork(P2PConfig(identity_seed=hashlib.sha256(b"fetcher").digest()))
    holder.set_request_handler(PROTO_CHUNK, server.serve)
    await holder.start()
    await fetcher_net.start()
    try:
        await fetcher_net.connect(holder.listen_addrs[0])

        async def request(peer: str, addr: str | None, proto: str, payload: bytes, limit: int) -> bytes:
            return bytes(await fetcher_net.request(peer, proto, payload, timeout=60, max_response_bytes=limit))

        started = time.perf_counter()
        await ChunkFetcher(request).fetch(CLAIM, 1, roots[1], compute_commitment(roots), len(roots), layout,
                                          [(holder.peer_id, None)], dest)
        seconds = time.perf_counter() - started
        size = dest.stat().st_size
        print(f"fetched {size} bytes in {seconds:.2f} s ({size / seconds / 1e6:.1f} MB/s)")
        assert compute_state_root(read_checkpoint(dest)) == roots[1]
    finally:
        await fetcher_net.stop()
        await holder.stop()


def main() -> None:
    files = sorted(Path(sys.argv[1]).glob("ckpt-*.safetensors"))
    roots = []
    for f in files:
        leaves = read_checkpoint(f)
        roots.append(compute_state_root(leaves))
    layout = [(leaf.name, leaf.dtype, leaf.shape) for leaf in sorted(leaves, key=lambda x: x.name.encode())]
    del leaves
    asyncio.run(fetch(files, roots, layout, Path(sys.argv[2])))
    print("peak RSS MB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


if __name__ == "__main__":
    main()
