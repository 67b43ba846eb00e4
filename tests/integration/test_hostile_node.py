"""Hostile peers against one node, in process (real SQLite, real BLS, real validators): floods from an
unfunded key, early messages parked by what they wait for, per-peer budgets, scores and bans."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from node import devnet as dn
from node.app import Node
from node.config import load_config
from node.limits import NodeLimits, PeerBook, PendingIndex, PendingItem, get_limits
from protocol import bls
from protocol.claim import ClaimBody, compute_claim_id, compute_signed_claim
from protocol.ledger import compute_posting_id, compute_task_posted, get_claim_context
from protocol.messages import compute_claim_announced, encode_message
from protocol.task import compute_task_id, encode_task
from protocol.vote import compute_vote


class _CountingBls:
    """Counts pairing checks (the backend calls) while calling the real implementation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real_one, real_agg = bls._verify, bls._verify_aggregate

        def one(*args: Any) -> bool:
            self.calls += 1
            return real_one(*args)

        def agg(*args: Any) -> bool:
            self.calls += 1
            return real_agg(*args)

        monkeypatch.setattr(bls, "_verify", one)
        monkeypatch.setattr(bls, "_verify_aggregate", agg)


def _flood(net: dn.Devnet, n: int) -> list[bytes]:
    """n correctly signed postings of distinct tasks from a key that holds no money."""
    unfunded = bls.compute_secret_key(os.urandom(32))
    task = net.tasks[0]
    out = []
    for i in range(n):
        variant = task.__class__(**{**task.__dict__, "seed": 10_000 + i})
        out.append(encode_message(compute_task_posted(unfunded, encode_task(variant), 100, int(time.time()) + 600)))
    return out


def test_unfunded_flood_costs_no_signature_checks_and_parks_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    net = dn.create(tmp_path / "net", 2, 1, 0)
    config = load_config(tmp_path / "net" / "v0.toml")
    flood = _flood(net, 2000)
    counter = _CountingBls(monkeypatch)

    async def scenario() -> None:
        node = Node(config)
        money = node.chain.get_ledger_report()["total_money"]
        started = time.perf_counter()
        results = [await node.handle_message(data, "gossip", "flooder") for data in flood]
        elapsed = time.perf_counter() - started
        assert all(r == "ignore: requester's balance does not cover the reward" for r in results)
        assert counter.calls == 0  # before: one pairing per posting, then again on every accepted message
        assert len(node.guard.pending) == 0  # before: all 2000 queued and re-validated
        assert node.store.last_seq() == 0 and node.chain.get_ledger_report()["total_money"] == money
        # The honest requester is still served at once.
        posting = compute_task_posted(net.requester.bls_secret_key, encode_task(net.tasks[0]), 100,
                                      int(time.time()) + 600)
        assert await node.handle_message(encode_message(posting), "gossip") == "accept"
        print(f"2000 unfunded postings handled in {elapsed:.2f} s")
        node.store.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_early_vote_waits_for_its_claim_and_is_validated_once(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    net = dn.create(tmp_path / "net", 2, 1, 0)
    config = load_config(tmp_path / "net" / "v0.toml")
    counter = _CountingBls(monkeypatch)

    async def scenario() -> None:
        node = Node(config)
        req = net.requester.bls_secret_key
        deadline = int(time.time()) + 600
        task = net.tasks[0]
        posting_msg = compute_task_posted(req, encode_task(task), 100, deadline)
        posting = encode_message(posting_msg)
        other_task = task.__class__(**{**task.__dict__, "seed": 4242})
        unrelated = encode_message(compute_task_posted(req, encode_task(other_task), 100, deadline))
        prover = net.provers[0].key.bls_secret_key
        body = ClaimBody(compute_task_id(task), bls.compute_public_key(prover), os.urandom(32), os.urandom(32),
                         task.num_checkpoints, task.total_steps, task.checkpoint_interval,
                         compute_posting_id(posting_msg))
        claim = encode_message(compute_claim_announced(compute_signed_claim(prover, body), (), prover))
        # The claim arrives before its task: parked under the task's key, retried when the task is applied.
        assert (await node.handle_message(claim, "gossip", "p1")).startswith("ignore: claim names a task")
        assert len(node.guard.pending) == 1
        assert await node.handle_message(posting, "gossip") == "accept"
        assert [i.data for i in node.guard.take_ready()] == [claim]
        # A vote before its claim (its context taken from a second node that has the claim).
        helper_dir = tmp_path / "helper"
        helper = Node(load_config(tmp_path / "net" / "v1.toml").__class__(
            **{**load_config(tmp_path / "net" / "v1.toml").__dict__, "data_dir": helper_dir}))
        assert await helper.handle_message(posting, "gossip") == "accept"
        assert await helper.handle_message(claim, "gossip") == "accept"
        ctx = get_claim_context(helper.chain.state, compute_claim_id(body))
        vote = encode_message(compute_vote(net.verifiers[1].key.bls_secret_key, ctx))
        helper.store.close()
        before = counter.calls
        assert (await node.handle_message(vote, "gossip", "p2")).startswith("ignore: vote on a claim")
        assert counter.calls == before  # nothing verified yet: it is parked under the claim's key
        assert await node.handle_message(unrelated, "gossip") == "accept"
        assert node.guard.take_ready() == []  # an unrelated message retries nothing
        assert counter.calls == before + 1  # the unrelated posting's own signature, once (validation + ledger)
        assert await node.handle_message(claim, "gossip", "p1") == "accept"
        ready = node.guard.take_ready()
        assert [i.data for i in ready] == [vote]
        assert await node.handle_message(vote, "gossip", "p2") == "accept"
        assert len(node.guard.pending) == 0
        node.store.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_peer_book_throttles_then_bans_and_recovers() -> None:
    limits = NodeLimits(gossip_per_s=10, gossip_burst=20, ban_score=-30, ban_s=5, throttle_penalty=1,
                        reject_penalty=10, score_recovery_per_s=1)
    book = PeerBook(limits)
    allowed = sum(book.allow("spammer", "gossip", 100.0) for _ in range(25))
    assert allowed == 20 and book.throttled["spammer"] == 5
    assert book.allow("honest", "gossip", 100.0)  # budgets are per peer
    assert not book.reject("spammer", 100.0) and not book.reject("spammer", 100.0)
    assert book.reject("spammer", 100.0)  # -5 - 30 <= -30: banned now
    assert book.is_banned("spammer", 101.0) and not book.allow("spammer", "gossip", 101.0)
    assert not book.is_banned("spammer", 106.0) and book.allow("spammer", "gossip", 106.0)
    assert book.score("spammer", 106.0) == 0.0


def test_pending_index_is_bounded_per_peer_and_in_total() -> None:
    limits = NodeLimits(pending_max=10, pending_per_peer=4, pending_ttl_s=60)
    index = PendingIndex(limits)
    for i in range(6):
        index.add(b"k", PendingItem(bytes([i]), "gossip", "greedy", 0.0))
    assert len(index) == 4 and index.dropped == 2
    for i in range(12):
        index.add(bytes([i]), PendingItem(b"x", "gossip", f"p{i}", 0.0))
    assert len(index) == 10
    assert index.take(b"nothing") == [] and index.take(bytes([11]), now=100.0) == []  # past the TTL


def test_limits_from_config_are_validated() -> None:
    assert get_limits({"gossip_per_s": 5, "max_state_bytes": 1 << 20}).gossip_per_s == 5.0
    for bad in ({"gossip_per_s": "fast"}, {"max_state_bytes": 1 << 40}, {"pending_max": 1.5},
                {"gossip_burst": float("nan")}, {"serve_per_s": True}):
        with pytest.raises(ValueError):
            get_limits(bad)
