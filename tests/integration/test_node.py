"""Bad input never crashes a node or changes its state: in-process checks of every rejection path,
then a real node process fed garbage over gossip and request streams."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import msgpack

from node import devnet as dn
from node.app import Node
from node.config import load_config
from protocol import bls
from protocol.certificate import Certificate
from protocol.claim import ClaimBody, compute_claim_id, compute_signed_claim
from protocol.constants import MAX_GOSSIP_BYTES
from protocol.ledger import compute_posting_id, compute_task_posted, get_claim_context
from protocol.messages import ChunkRequest, compute_claim_announced, encode_message
from protocol.task import compute_task_id, encode_task
from protocol.vote import compute_vote

from .node_helpers import running_devnet, wait_for


def _posting(net: dn.Devnet) -> Any:
    assert net.requester is not None
    task = net.tasks[0] if net.tasks else dn.devnet_task(0)
    return compute_task_posted(net.requester.bls_secret_key, encode_task(task), 100, int(time.time()) + 600)


def test_every_bad_message_is_refused_without_state_change(tmp_path: Path) -> None:
    net = dn.create(tmp_path / "net", 2, 1, 0)
    config = load_config(tmp_path / "net" / "v0.toml")

    async def scenario() -> None:
        node = Node(config)
        money = node.chain.get_ledger_report()["total_money"]
        assert (await node.handle_message(b"\x00garbage", "gossip")).startswith("reject")
        assert (await node.handle_message(b"\x90" * (MAX_GOSSIP_BYTES + 1), "gossip")).startswith("reject")
        non_canonical = msgpack.packb({"body": {}, "type": "claim"})  # keys out of canonical order
        assert (await node.handle_message(non_canonical, "gossip")).startswith("reject")
        chunk = encode_message(ChunkRequest(b"\x00" * 32, 0, "param/w", 0))
        assert (await node.handle_message(chunk, "gossip")).startswith("reject")  # stream type on gossip
        posting = _posting(net)
        forged = posting.__class__(posting.task, posting.requester, posting.reward + 1, posting.expires_at,
                                   posting.signature)
        assert (await node.handle_message(encode_message(forged), "gossip")).startswith("reject")
        assert node.store.last_seq() == 0
        assert await node.handle_message(encode_message(posting), "gossip") == "accept"
        assert (await node.handle_message(encode_message(posting), "gossip")).startswith("ignore: duplicate")
        # A claim (commitment made up: the ledger cannot tell before replay) registers.
        task = net.tasks[0]
        prover = net.provers[0].key.bls_secret_key
        body = ClaimBody(compute_task_id(task), bls.compute_public_key(prover), os.urandom(32), os.urandom(32),
                         task.num_checkpoints, task.total_steps, task.checkpoint_interval, compute_posting_id(posting))
        offline = compute_signed_claim(prover, dataclasses.replace(body, posting_id=bytes(32)))
        assert (await node.handle_message(encode_message(compute_claim_announced(offline, (), prover)), "gossip")).startswith(
            "reject")  # a run for no posting (or another) is no work for this one
        claim = compute_signed_claim(prover, body)
        # Fetch hints swapped by whoever relays the claim (or unsigned) are refused: only the prover's count.
        signed = compute_claim_announced(claim, ("/ip4/127.0.0.1/tcp/1/p2p/prover",), prover)
        for bad in (dataclasses.replace(signed, fetch=("/ip4/127.0.0.1/tcp/2/p2p/liar",)),
                    dataclasses.replace(signed, fetch_signature=compute_claim_announced(claim, (), prover).fetch_signature),
                    compute_claim_announced(claim, signed.fetch, bls.compute_secret_key(os.urandom(32)))):
            result = await node.handle_message(encode_message(bad), "gossip")
            assert result.startswith("reject") and "InvalidFetchHints" in result, result
        assert await node.handle_message(encode_message(signed), "gossip") == "accept"
        claim_id = compute_claim_id(body)
        ctx = get_claim_context(node.chain.state, claim_id)
        # A vote by a key that is not a verifier, and a vote with a forged signature.
        outsider = compute_vote(bls.compute_secret_key(os.urandom(32)), ctx)
        assert (await node.handle_message(encode_message(outsider), "gossip")).startswith("reject")
        good = compute_vote(net.verifiers[1].key.bls_secret_key, ctx)
        bad_sig = good.__class__(**{**good.__dict__, "signature": outsider.signature})
        assert (await node.handle_message(encode_message(bad_sig), "gossip")).startswith("reject")
        # A certificate with one signer of two (below 2/3 of stake).
        cert = Certificate(0, claim_id, 1, (1,), good.signature)
        assert (await node.handle_message(encode_message(cert), "gossip")).startswith("reject")
        assert await node.handle_message(encode_message(good), "gossip") == "accept"
        assert (await node.handle_message(encode_message(good), "gossip")).startswith("ignore")
        seq = node.store.last_seq()
        assert seq == 3
        report = node.chain.get_ledger_report()
        assert report["total_money"] == money
        node.store.close()
        # Restart: the ledger folded from the log is identical.
        again = Node(config)
        again.replay_log()
        assert again.chain.get_ledger_report() == report
        assert len(again.chain.votes[claim_id]) == 1
        again.store.close()
        for task_obj in asyncio.all_tasks() - {asyncio.current_task()}:
            task_obj.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_node_process_survives_garbage_over_the_network(tmp_path: Path) -> None:
    from node.app import PROTO_PROOF, PROTO_SYNC, TOPICS
    from node.p2p import P2PConfig, P2PNetwork, RequestFailed

    with running_devnet(tmp_path / "net", verifiers=1, provers=0) as net:
        target = net.verifiers[0]

        async def attack() -> None:
            peer = P2PNetwork(P2PConfig(identity_seed=os.urandom(32), bootstrap=(target.addr,), topics=TOPICS,
                                        request_timeout_s=5))
            await peer.start()
            try:
                for payload in (b"", b"\xc1", msgpack.packb([1, 2, 3]), os.urandom(2000)):
                    for proto in (PROTO_SYNC, PROTO_PROOF):
                        try:
                            await peer.request(target.peer_id, proto, payload)
                            raise AssertionError(f"{proto} answered garbage {payload[:8]!r}")
                        except RequestFailed:
                            pass
                    for topic in TOPICS:
                        await peer.publish(topic, payload or b"\x00")
                await asyncio.sleep(1.5)
                status = dn.http_get(target, "/status", timeout=30)
                assert status["log_seq"] == 0
                # Still fully working: a valid posting gossiped by another peer is applied. (The garbage
                # sender itself is banned by now: each refused message costs it 10 points, SPEC §18.4.)
                honest = P2PNetwork(P2PConfig(identity_seed=os.urandom(32), bootstrap=(target.addr,),
                                              topics=TOPICS, request_timeout_s=5))
                await honest.start()
                try:
                    data = encode_message(_posting(net))
                    deadline = time.monotonic() + 40
                    while dn.http_get(target, "/status", timeout=30)["log_seq"] == 0:
                        assert time.monotonic() < deadline, "valid gossip after garbage was never applied"
                        await honest.publish(TOPICS[0], data)
                        await asyncio.sleep(1.0)
                finally:
                    await honest.stop()
            finally:
                await peer.stop()

        asyncio.run(asyncio.wait_for(attack(), 150))
        assert target.proc is not None and target.proc.poll() is None
        wait_for(lambda: dn.http_get(target, "/tasks")["tasks"], 5, "task listed")


def test_double_vote_is_detected_proven_and_slashed(tmp_path: Path) -> None:
    """Two validly signed, different votes by one verifier on one claim: the node builds a
    DoubleVoteProof, applies it (the ledger burns slash_double_vote_bps of the stake) and logs it."""
    from protocol.claim import compute_commitment
    from protocol.merkle import compute_merkle_proof
    from protocol.messages import decode_message
    from protocol.vote import DoubleVoteProof, compute_dispute_vote, compute_evidence

    net = dn.create(tmp_path / "net", 2, 1, 0)
    config = load_config(tmp_path / "net" / "v0.toml")

    async def scenario() -> None:
        node = Node(config)
        posting = _posting(net)
        assert await node.handle_message(encode_message(posting), "gossip") == "accept"
        task = net.tasks[0]
        prover = net.provers[0].key.bls_secret_key
        roots = [os.urandom(32) for _ in range(task.num_checkpoints)]
        body = ClaimBody(compute_task_id(task), bls.compute_public_key(prover), compute_commitment(roots),
                         roots[-1], task.num_checkpoints, task.total_steps, task.checkpoint_interval,
                         compute_posting_id(posting))
        assert await node.handle_message(encode_message(compute_claim_announced(compute_signed_claim(prover, body),
                                                                                (), prover)), "gossip") == "accept"
        claim_id = compute_claim_id(body)
        ctx = get_claim_context(node.chain.state, claim_id)
        cheater = net.verifiers[1].key.bls_secret_key
        accept = compute_vote(cheater, ctx)
        s = accept.segments[0]
        evidence = compute_evidence(cheater, claim_id, s, roots[s + 1], compute_merkle_proof(roots, s + 1).path,
                                    os.urandom(32))
        reject = compute_vote(cheater, ctx, evidence)
        stake = node.chain.state.verifiers[1].stake
        money = node.chain.get_ledger_report()["total_money"]
        assert await node.handle_message(encode_message(accept), "gossip") == "accept"
        # A forged "other verdict" (signature of someone else) proves nothing and slashes nobody.
        outsider = compute_vote(net.verifiers[0].key.bls_secret_key, ctx, compute_evidence(
            net.verifiers[0].key.bls_secret_key, claim_id, s, roots[s + 1], compute_merkle_proof(roots, s + 1).path,
            os.urandom(32)))
        forged = reject.__class__(**{**reject.__dict__, "signature": outsider.signature})
        assert (await node.handle_message(encode_message(forged), "gossip")).startswith("reject")
        assert node.chain.state.verifiers[1].stake == stake
        # The real second vote: detected, proven, applied.
        result = await node.handle_message(encode_message(reject), "gossip")
        assert result.startswith("ignore") and "double-vote proof: accept" in result
        params = node.chain.state.params
        assert node.chain.state.verifiers[1].stake == stake - stake * params.slash_double_vote_bps // 10000
        assert (1, 0, claim_id) in node.chain.state.slashed_double_votes
        assert node.chain.get_ledger_report()["total_money"] == money  # burned, not lost
        proofs = [e for e in node.store.entries() if e.kind == "double_vote"]
        assert len(proofs) == 1 and isinstance(decode_message(proofs[0].data), DoubleVoteProof)
        # Seeing the second vote again slashes nothing more.
        await node.handle_message(encode_message(reject), "gossip")
        assert node.chain.state.verifiers[1].stake == stake - stake * params.slash_double_vote_bps // 10000
        # Dispute votes too: both verdicts on one dispute.
        dispute_id = hashlib.sha256(b"no such dispute").digest()
        node.chain.dispute_votes[dispute_id] = {accept.verifier: compute_dispute_vote(cheater, dispute_id, 1)}
        await node.handle_message(encode_message(compute_dispute_vote(cheater, dispute_id, 0)), "gossip")
        assert (1, 1, dispute_id) in node.chain.state.slashed_double_votes
        node.store.close()
        again = Node(config)  # the slash is in the log: it survives a restart
        again.replay_log()
        assert again.chain.get_ledger_report() == node.chain.get_ledger_report()
        again.store.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
