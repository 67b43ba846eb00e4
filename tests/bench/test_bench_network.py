"""Network benchmarks: verification of a 100-signer aggregate certificate per BLS backend, and a
checkpoint fetched over libp2p from another process by the node's chunk protocol (``/pol/chunk/2``,
512 KiB chunks, each checked on arrival against its two Merkle paths and the state root, written to disk).

Run: .venv/bin/pytest tests/bench/test_bench_network.py -s   (prints the figures; docs/network.md)
Time from claim to certificate is measured by `pol devnet --json` (seconds_to_certificate).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol import bls
from protocol.certificate import compute_certificate, validate_certificate
from protocol.genesis import Params, VerifierEntry
from protocol.vote import ClaimContext, compute_vote

SIGNERS = 100


@pytest.fixture(scope="module")
def certificate() -> tuple[object, list[VerifierEntry]]:
    previous = bls.get_backend()
    bls.set_backend("auto")
    try:
        keys = [bls.compute_secret_key(hashlib.sha256(b"bench/%d" % i).digest()) for i in range(SIGNERS)]
        verifiers = [VerifierEntry(bls.compute_public_key(k), b"", 1, f"p{i}") for i, k in enumerate(keys)]
        ctx = ClaimContext(hashlib.sha256(b"claim").digest(), hashlib.sha256(b"c").digest(), 9, 1)
        votes = [compute_vote(k, ctx) for k in keys]
        return compute_certificate(votes, verifiers), verifiers
    finally:
        bls.set_backend(previous)


@pytest.mark.parametrize("backend", bls.get_available_backends())
def test_verify_100_signer_certificate(backend: str, certificate: tuple[object, list[VerifierEntry]]) -> None:
    cert, verifiers = certificate
    previous = bls.get_backend()
    bls.set_backend(backend)
    try:
        rounds = 1 if backend == "py_ecc" else 50
        start = time.perf_counter()
        for _ in range(rounds):
            validate_certificate(cert, verifiers, Params())  # type: ignore[arg-type]
        per = (time.perf_counter() - start) / rounds
    finally:
        bls.set_backend(previous)
    print(f"\n{backend}: verify {SIGNERS}-signer certificate {per * 1000:.2f} ms (mean of {rounds})")
    assert per < 30.0


# --- checkpoint transfer over libp2p -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
CKPT_TENSORS, CKPT_TENSOR_BYTES = 16, 4 << 20  # 64 MiB of f32 in 16 tensors of 4 MiB
CLAIM_ID = hashlib.sha256(b"bench-claim").digest()


def _make_checkpoint(directory: Path) -> dict[str, object]:
    from node.chunks import compute_root_path  # noqa: F401 - import check
    from prover.checkpoint import write_checkpoint
    from protocol.claim import compute_commitment
    from protocol.state import TensorLeaf, compute_state_root, get_sorted_leaves

    rng = np.random.default_rng(7)
    leaves = [TensorLeaf("meta/step", "i64", (), np.int64(100).tobytes())]
    for i in range(CKPT_TENSORS):
        arr = rng.standard_normal(CKPT_TENSOR_BYTES // 4).astype("<f4")
        leaves.append(TensorLeaf(f"param/w{i:02d}", "f32", (CKPT_TENSOR_BYTES // 4,), arr.tobytes()))
    leaves = get_sorted_leaves(leaves)
    root = compute_state_root(leaves)
    roots = [hashlib.sha256(b"r0").digest(), root, hashlib.sha256(b"r2").digest()]
    write_checkpoint(directory / "ckpt.safetensors", leaves, root, b"\x00" * 32)
    meta = {"roots": [r.hex() for r in roots], "layout": [[leaf.name, leaf.dtype, list(leaf.shape)] for leaf in leaves],
            "commitment": compute_commitment(roots).hex(), "bytes": sum(len(x.data) for x in leaves)}
    (directory / "meta.json").write_text(json.dumps(meta))
    return meta


def serve_checkpoint(directory: Path) -> None:
    """Child process: serve ``directory/ckpt.safetensors`` over /pol/chunk/2 until stdin closes."""
    from node.chunks import PROTO_CHUNK, ChunkServer, compute_root_path
    from node.p2p import P2PConfig, P2PNetwork

    meta = json.loads((directory / "meta.json").read_text())
    roots = [bytes.fromhex(r) for r in meta["roots"]]
    server = ChunkServer(lambda c, i: (str(directory / "ckpt.safetensors"), roots[1], compute_root_path(roots, 1))
                         if (c, i) == (CLAIM_ID, 1) else None)

    async def main() -> None:
        net = P2PNetwork(P2PConfig(identity_seed=hashlib.sha256(b"bench-server").digest()))
        net.set_request_handler(PROTO_CHUNK, server.serve)
        await net.start()
        print(json.dumps({"peer_id": net.peer_id, "addr": net.listen_addrs[0]}), flush=True)
        await asyncio.to_thread(sys.stdin.read)
        await net.stop()

    asyncio.run(main())


def test_bench_checkpoint_transfer_over_libp2p(tmp_path: Path) -> None:
    from node.chunks import ChunkFetcher
    from node.p2p import P2PConfig, P2PNetwork

    meta = _make_checkpoint(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from tests.bench.test_bench_network import "
                             "serve_checkpoint; from pathlib import Path; serve_checkpoint(Path(sys.argv[1]))",
                             str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env)
    loop = asyncio.new_event_loop()
    net = P2PNetwork(P2PConfig(identity_seed=hashlib.sha256(b"bench-client").digest()))
    roots = [bytes.fromhex(r) for r in meta["roots"]]  # type: ignore[attr-defined]
    layout = [(n, d, tuple(s)) for n, d, s in meta["layout"]]  # type: ignore[attr-defined]
    size: int = meta["bytes"]  # type: ignore[assignment]
    try:
        assert proc.stdout is not None
        hello = json.loads(proc.stdout.readline())

        async def request(peer: str, addr: str | None, protocol: str, payload: bytes, limit: int) -> bytes:
            return await net.request(peer, protocol, payload, timeout=60, max_response_bytes=limit)

        async def fetch_once() -> float:
            fetcher = ChunkFetcher(request)
            started = time.perf_counter()
            dest = tmp_path / "fetched.safetensors"
            await fetcher.fetch(CLAIM_ID, 1, roots[1], bytes.fromhex(meta["commitment"]), 3,  # type: ignore
                                layout, [(hello["peer_id"], None)], dest)
            seconds = time.perf_counter() - started
            assert fetcher.stats.bytes == size and fetcher.stats.chunks == CKPT_TENSORS * 8 + 1
            dest.unlink()
            return seconds

        loop.run_until_complete(asyncio.wait_for(net.start(), 30))
        loop.run_until_complete(asyncio.wait_for(net.connect(hello["addr"]), 30))
        loop.run_until_complete(asyncio.wait_for(fetch_once(), 120))  # warm-up (server loads and hashes)
        times = [loop.run_until_complete(asyncio.wait_for(fetch_once(), 120)) for _ in range(5)]
    finally:
        loop.run_until_complete(net.stop())
        loop.close()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rates = [size / t / 1e6 for t in times]
    print(f"\n{size >> 20} MiB checkpoint ({CKPT_TENSORS} tensors) over /pol/chunk/2 in 512 KiB chunks, each verified: "
          f"median {statistics.median(times):.2f} s = {statistics.median(rates):.0f} MB/s "
          f"(min {min(rates):.0f}, max {max(rates):.0f}; 5 runs); load average {os.getloadavg()[0]:.1f}")
