"""Real node processes under attack while an honest claim goes through.

A devnet (2 verifiers, 1 prover) runs on 127.0.0.1. While the honest task is posted, trained, verified and
paid, an attacker joins the gossip mesh with its own libp2p peer and publishes 2000 correctly signed task
postings from an unfunded key plus garbage on every topic, and a local process throws bad requests at the
HTTP API (no token, wrong content type, 200 KB of nested brackets, an undecodable task, an oversized body).
Afterwards: every node is alive, the honest claim is paid exactly once, no money appeared or vanished, and
nothing the attacker sent was applied.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from node import devnet as dn
from node.auth import read_api_token
from protocol import bls
from protocol.ledger import TaskPosted, compute_task_posted
from protocol.messages import encode_message
from protocol.task import encode_task

from .node_helpers import claims, running_devnet, wait_for

FLOOD = 2000


def _post_raw(node: dn.NodeSpec, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(node.url + "/tasks", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _http_attacks(net: dn.Devnet, node: dn.NodeSpec) -> dict[str, int]:
    token = read_api_token(net.directory / node.name)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    task = net.tasks[0].__class__(**{**net.tasks[0].__dict__, "seed": 77})
    good = encode_message(compute_task_posted(net.requester.bls_secret_key, encode_task(task), 1,
                                              int(time.time()) + 600)).hex()
    bad_task = encode_message(TaskPosted(b"\x81\xa1x\x01", net.requester.public_key, 1, int(time.time()) + 600,
                                         bytes(96))).hex()
    cases = {
        "no token": (json.dumps({"message": good}).encode(), {"Content-Type": "application/json"}),
        "wrong token": (json.dumps({"message": good}).encode(), {**auth, "Authorization": "Bearer " + "0" * 64}),
        "text/plain": (json.dumps({"message": good}).encode(), {**auth, "Content-Type": "text/plain"}),
        "nested": (b"[" * 120_000 + b"]" * 120_000, auth),  # SIGSEGV of the node before
        "not json": (b"\xff\xfe", auth),
        "undecodable task": (json.dumps({"message": bad_task}).encode(), auth),  # HTTP 500 before
        "not hex": (json.dumps({"message": "zz"}).encode(), auth),
        "extra keys": (json.dumps({"message": good, "x": 1}).encode(), auth),
        "oversized": (b'{"message": "' + b"00" * 300_000 + b'"}', auth),
    }
    out = {}
    for name, (body, headers) in cases.items():
        status, doc = _post_raw(node, body, headers)
        assert 400 <= status < 500, (name, status, doc)
        out[name] = status
    return out


def make_flood(net: dn.Devnet) -> list[bytes]:
    """FLOOD correctly signed postings of distinct tasks from a key that holds no money (made in advance:
    signing them during the attack would take the attacker's CPU time from the nodes on a small machine)."""
    unfunded = bls.compute_secret_key(os.urandom(32))
    base = net.tasks[0]
    out = []
    for i in range(FLOOD):
        variant = base.__class__(**{**base.__dict__, "seed": 900_000 + i})
        out.append(encode_message(compute_task_posted(unfunded, encode_task(variant), 100, int(time.time()) + 900)))
    return out


async def _flood(net: dn.Devnet, target: dn.NodeSpec, messages: list[bytes] | None = None,
                 garbage: bool = True) -> int:
    from node.app import TOPIC_TASKS, TOPICS
    from node.p2p import P2PConfig, P2PNetwork

    attacker = P2PNetwork(P2PConfig(identity_seed=os.urandom(32), bootstrap=(target.addr,), topics=TOPICS,
                                    publish_rate_per_s=400.0, request_timeout_s=5))
    await attacker.start()
    try:
        deadline = time.monotonic() + 20
        while target.peer_id not in attacker.connected_peers():
            assert time.monotonic() < deadline, "attacker never connected"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # let the mesh form
        sent = 0
        for i, data in enumerate(messages if messages is not None else make_flood(net)):
            await attacker.publish(TOPIC_TASKS, data)
            sent += 1
            if garbage and i % 100 == 0:
                for topic in TOPICS:  # garbage: dropped by the topic validators, never relayed
                    try:
                        await attacker.publish(topic, os.urandom(64))
                    except ValueError:
                        pass
        return sent
    finally:
        await attacker.stop()


def test_honest_claim_paid_during_flood_and_http_attacks(tmp_path: Path) -> None:
    with running_devnet(tmp_path / "net", verifiers=2, provers=1, cheaters=0) as net:
        v0 = net.verifiers[0]
        prover = net.provers[0]
        money = dn.http_get(v0, "/ledger")["total_money"]
        statuses = _http_attacks(net, v0)

        messages = make_flood(net)

        async def scenario() -> None:
            flood = asyncio.create_task(_flood(net, v0, messages))
            await asyncio.sleep(2.0)
            await asyncio.to_thread(dn.post_tasks, net, v0)  # the honest task, posted during the flood
            sent = await flood
            assert sent == FLOOD

        asyncio.run(asyncio.wait_for(scenario(), 240))
        paid = wait_for(lambda: [c for c in claims(v0) if c["status"] == "paid"], 150, "honest claim paid")
        assert len(paid) == 1
        for node in net.nodes:
            assert node.proc is not None and node.proc.poll() is None, f"{node.name} died"
        assert dn.wait_consistent(net, time.monotonic() + 30)
        ledger = dn.http_get(v0, "/ledger")
        assert ledger["total_money"] == money
        assert ledger["balances"][prover.key.public_key.hex()] == dn.PROVER_BALANCE + dn.REWARD
        assert len(ledger["tasks"]) == 1  # none of the 2000 unfunded postings
        status = dn.http_get(v0, "/status")
        assert status["guard"]["pending"] <= 1
        print(f"http attacks: {statuses}; seconds to certificate under flood: {paid[0]['seconds_to_certificate']};"
              f" stats {status['stats']}")
