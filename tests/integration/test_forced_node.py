"""A node catches a lazy verifier with a forced error (SPEC.md §16.9): the forced claim, the lazy accept vote and
the reveal travel as gossip into a real node (SQLite log, restart replay), which slashes the lazy verifier."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from node import devnet as dn
from node.app import Node
from node.config import load_config
from protocol import bls
from protocol.claim import ClaimBody, compute_claim_id, compute_commitment, compute_signed_claim
from protocol.forced import ForcedErrorReveal, compute_forced_roots
from protocol.ledger import compute_posting_id, compute_task_posted, get_claim_context
from protocol.messages import compute_claim_announced, encode_message
from protocol.task import compute_task_id, encode_task
from protocol.vote import compute_vote


def test_node_slashes_a_lazy_accept_on_a_revealed_forced_error(tmp_path: Path) -> None:
    net = dn.create(tmp_path / "net", 2, 1, 0)
    config = load_config(tmp_path / "net" / "v0.toml")
    assert net.requester is not None
    task = net.tasks[0]
    posting = compute_task_posted(net.requester.bls_secret_key, encode_task(task), 100, int(time.time()) + 600)
    tester = net.provers[0].key.bls_secret_key
    secret = os.urandom(32)
    n = task.num_checkpoints
    real = {j: os.urandom(32) for j in range(0, n - 1, 2)}  # the final root is pseudo-random
    roots = compute_forced_roots(secret, n, real)
    body = ClaimBody(compute_task_id(task), bls.compute_public_key(tester), compute_commitment(roots), roots[-1], n,
                     task.total_steps, task.checkpoint_interval, compute_posting_id(posting))
    claim = compute_signed_claim(tester, body)
    claim_id = compute_claim_id(body)
    reveal = ForcedErrorReveal(claim_id, secret, tuple(sorted(real.items())))

    async def scenario() -> None:
        node = Node(config)
        assert await node.handle_message(encode_message(posting), "gossip") == "accept"
        assert await node.handle_message(encode_message(compute_claim_announced(claim, (), tester)), "gossip") == "accept"
        lazy = compute_vote(net.verifiers[1].key.bls_secret_key, get_claim_context(node.chain.state, claim_id))
        assert await node.handle_message(encode_message(lazy), "gossip") == "accept"
        stake = node.chain.state.verifiers[1].stake
        money = node.chain.get_ledger_report()["total_money"]
        wrong = ForcedErrorReveal(claim_id, os.urandom(32), reveal.real_roots)
        assert (await node.handle_message(encode_message(wrong), "gossip")).startswith("reject")
        assert await node.handle_message(encode_message(reveal), "gossip") == "accept"
        params = node.chain.state.params
        assert node.chain.state.verifiers[1].stake == stake - stake * params.slash_lazy_bps // 10_000
        assert node.chain.state.verifiers[0].stake == stake  # the node itself never voted
        assert node.chain.state.claims[claim_id].status == "void"
        assert node.chain.get_ledger_report()["total_money"] == money
        assert (await node.handle_message(encode_message(reveal), "gossip")).startswith("ignore")
        report = node.chain.get_ledger_report()
        node.store.close()
        again = Node(config)  # the reveal is in the log: the slash survives a restart
        again.replay_log()
        assert again.chain.get_ledger_report() == report
        again.store.close()
        for task_obj in asyncio.all_tasks() - {asyncio.current_task()}:
            task_obj.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 60))
