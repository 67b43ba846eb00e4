"""Faults with real processes: SIGKILL of a verifier mid-replay and of a node after settlement.

The killed verifier restarts from its SQLite log, rejoins, still casts its vote, and every node ends
with the same ledger in which the prover was paid exactly once.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from node import devnet as dn

from .node_helpers import claims, running_devnet, wait_for

REWARD = dn.REWARD


def test_sigkill_mid_replay_and_after_settlement(tmp_path: Path) -> None:
    # Two equal verifiers: a certificate needs both, so the claim settles only if the victim votes.
    with running_devnet(tmp_path / "net", verifiers=2, provers=1, cheaters=0) as net:
        v0, victim = net.verifiers[0], net.verifiers[1]
        prover = net.provers[0]
        dn.post_tasks(net, v0)
        # Kill the victim as soon as it has the claim: it is fetching or replaying now.
        wait_for(lambda: claims(victim), 90, "claim at the victim", interval=0.05)
        dn.stop_node(victim, signal.SIGKILL)
        dn.start_node(net, victim)
        dn.wait_ready(net, [victim], time.monotonic() + 60)
        settled = wait_for(lambda: [c for c in claims(v0) if c["status"] == "paid"], 90, "claim paid")
        claim_id = settled[0]["claim_id"]
        # The restarted verifier still voted: its vote reaches the others.
        victim_key = victim.key.public_key.hex()
        wait_for(lambda: any(v["verifier"] == victim_key and v["claim_id"] == claim_id
                             for v in dn.http_get(v0, "/votes")["votes"]), 60, "the victim's vote")
        assert dn.wait_consistent(net, time.monotonic() + 20)
        ledger = dn.http_get(v0, "/ledger")
        assert ledger["balances"][prover.key.public_key.hex()] == dn.PROVER_BALANCE + REWARD  # paid once
        # SIGKILL another verifier after settlement: its ledger is rebuilt from the log, unchanged.
        other = net.verifiers[1]
        before = dn.get_ledger_view(other)
        dn.stop_node(other, signal.SIGKILL)
        dn.start_node(net, other)
        dn.wait_ready(net, [other], time.monotonic() + 60)
        time.sleep(2)  # a few ticks and a sync round
        assert dn.get_ledger_view(other) == before
        assert dn.http_get(other, "/ledger")["balances"][prover.key.public_key.hex()] == dn.PROVER_BALANCE + REWARD
