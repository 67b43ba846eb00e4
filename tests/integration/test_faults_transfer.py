"""A prover that vanishes (SIGKILL) while a verifier is fetching its checkpoints, with real processes.

1. Another verifier already fetched the checkpoints: the fetch resumes from it at the same chunk, the
   claim certifies and the prover is paid.
2. No other holder: the fetch cannot finish, no certificate forms, and at the availability deadline
   the claim is void: the escrow goes back to the requester and the prover earns nothing.

Paced requests (``fetch_chunks_per_s``) make each transfer last seconds, so the kill lands mid-transfer.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node import devnet as dn

from .node_helpers import claims, wait_for


def _start(net: dn.Devnet, nodes: list[dn.NodeSpec]) -> None:
    for n in nodes:
        dn.start_node(net, n)
    dn.wait_ready(net, nodes, time.monotonic() + 90)


def _chunks_from(node: dn.NodeSpec, peer: dn.NodeSpec) -> int:
    return int(dn.http_get(node, "/status")["chunks"]["by_peer"].get(peer.peer_id, 0))


def _kill_mid_transfer(fetcher: dn.NodeSpec, prover: dn.NodeSpec, timeout: float) -> dict[str, Any]:
    wait_for(lambda: _chunks_from(fetcher, prover) >= 3, timeout, "chunks fetched from the prover", interval=0.05)
    dn.stop_node(prover, signal.SIGKILL)
    status = dn.http_get(fetcher, "/status")["chunks"]
    return dict(status)


def test_prover_vanishes_fetch_resumes_from_other_verifier(tmp_path: Path) -> None:
    # Two equal verifiers: the certificate needs both, and both replay every segment (samples = S).
    net = dn.create(tmp_path / "net", 2, 1, 0, extra_config={"fetch_chunks_per_s": 5})
    v0, v1 = net.verifiers
    prover = net.provers[0]
    try:
        _start(net, [v0, prover])
        dn.post_tasks(net, v0)
        v0_key = v0.key.public_key.hex()
        wait_for(lambda: any(v["verifier"] == v0_key for v in dn.http_get(v0, "/votes")["votes"]), 90,
                 "v0 fetched every checkpoint and voted")
        assert claims(v0)[0]["sample_milli"] >= (net.tasks[0].num_checkpoints - 1) * 1000  # devnet: replay all
        _start(net, [v1])
        at_kill = _kill_mid_transfer(v1, prover, 60)
        assert at_kill["fetching"], f"the prover died after the transfer, not during it: {at_kill}"
        paid = wait_for(lambda: [c for c in claims(v1) if c["status"] == "paid"], 90, "claim paid after the kill")
        status = dn.http_get(v1, "/status")["chunks"]
        assert status["resumes"] >= 1
        assert status["by_peer"].get(v0.peer_id, 0) > 0  # the rest came from the other verifier
        assert paid[0]["certificates"][0]["signers"] == [0, 1]
        assert dn.wait_consistent(net, time.monotonic() + 20)
        ledger = dn.http_get(v1, "/ledger")
        assert ledger["balances"][prover.key.public_key.hex()] == dn.PROVER_BALANCE + dn.REWARD
        # The requester gets the trained model from a verifier (each fetched and checked the final state to
        # vote), although the prover is gone.
        model = tmp_path / "model.safetensors"
        got = subprocess.run([sys.executable, "-m", "pol.cli", "fetch-model", v1.url, "--claim", paid[0]["claim_id"],
                              "--out", str(model), "--json"], capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr
        from safetensors.torch import load_file

        assert set(load_file(str(model))) == {"fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"}
    finally:
        dn.stop_all(net)
    for n in net.nodes:
        assert n.proc is None or n.proc.poll() is not None


def test_prover_vanishes_without_other_holder_claim_voids(tmp_path: Path) -> None:
    net = dn.create(tmp_path / "net", 1, 1, 0, availability_window_s=20, extra_config={"fetch_chunks_per_s": 5})
    v0, prover = net.verifiers[0], net.provers[0]
    assert net.requester is not None
    try:
        _start(net, net.nodes)
        dn.post_tasks(net, v0)
        _kill_mid_transfer(v0, prover, 90)
        void = wait_for(lambda: [c for c in claims(v0) if c["status"] == "void"], 60, "claim void at the deadline")
        assert void[0]["certificates"] == [] and void[0]["votes_accept"] == 0
        ledger = dn.http_get(v0, "/ledger")
        # The task reopens with its escrow until it expires (SPEC.md §16.5); the prover that did not serve its
        # data gets its bond back less slash_unavailable_bps, and no reward.
        assert ledger["balances"][net.requester.public_key.hex()] == dn.REQUESTER_BALANCE - dn.REWARD
        slash = dn.BOND * net.params.slash_unavailable_bps // 10_000
        assert slash > 0
        assert ledger["balances"][prover.key.public_key.hex()] == dn.PROVER_BALANCE - slash
        assert ledger["escrow"] == dn.REWARD and ledger["bonds"] == 0 and ledger["burned"] == slash
        assert ledger["tasks"][void[0]["task_id"]] == "open"
        assert "unavailable" in dn.http_get(v0, "/status")["skipped"].get(void[0]["claim_id"], "unavailable")
    finally:
        dn.stop_all(net)
    for n in net.nodes:
        assert n.proc is None or n.proc.poll() is not None
