"""A peer flooding gossip is cut off inside libp2p before its messages cost a signature check; an honest
peer is still served meanwhile; a banned peer's connections are closed.

Three P2PNetworks in this process on 127.0.0.1 (real hosts, Noise, Yamux, GossipSub): a target with a
small per-author budget, a flooder and an honest peer, both connected to the target. Assertions are on
counts and on the order of the checks (what a message was dropped for), not on wall time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from node.p2p import P2PConfig, P2PNetwork, PeerUnavailable

from .test_p2p import arun, seed, wait_until

TOPIC = "/pol/test/flood"
ECHO = "/test/echo/1"
RATE, BURST = 0.01, 5.0  # the target's budget per author (refills one message per 100 s)
FLOOD = 300


@asynccontextmanager
async def three_nets(validated: list[bytes]) -> AsyncIterator[tuple[P2PNetwork, P2PNetwork, P2PNetwork]]:
    def validator(data: bytes) -> None:  # runs after the signature check, so it counts signature checks
        validated.append(data)

    async def echo(peer: str, request: bytes) -> bytes:
        return request

    target = P2PNetwork(P2PConfig(identity_seed=seed("flood-target"), topics=(TOPIC,), origin_rate_per_s=RATE,
                                  origin_burst=BURST, forwarder_rate_per_s=1000.0, forwarder_burst=1000.0),
                        validators={TOPIC: validator})
    target.set_request_handler(ECHO, echo)
    async with AsyncExitStack() as stack:
        await target.start()
        stack.push_async_callback(target.stop)
        peers = []
        for name, rate in (("flooder", 200.0), ("honest", 100.0)):
            net = P2PNetwork(P2PConfig(identity_seed=seed(f"flood-{name}"), topics=(TOPIC,),
                                       bootstrap=(target.listen_addrs[0],), publish_rate_per_s=rate,
                                       request_timeout_s=20.0))
            await net.start()
            stack.push_async_callback(net.stop)
            peers.append(net)
        flooder, honest = peers
        await wait_until(lambda: {flooder.peer_id, honest.peer_id} <= set(target.connected_peers()), 20,
                         "both peers connected to the target")
        await asyncio.sleep(2.0)  # GossipSub mesh (heartbeat 1 s)
        yield target, flooder, honest


def forged(author: str, seqno: int, data: bytes) -> Any:
    """A gossip message in ``author``'s name with a signature that cannot verify."""
    return rpc_pb2.Message(from_id=ID.from_base58(author).to_bytes(), data=data, seqno=seqno.to_bytes(8, "big"),
                           topicIDs=[TOPIC], signature=os.urandom(64))


async def settled(target: P2PNetwork) -> dict[str, int]:
    """The target's gossip counters once the flood's messages in flight have all arrived (bounded)."""
    deadline = time.monotonic() + 20
    last = target.gossip_counts()
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = target.gossip_counts()
        if now == last:
            return now
        last = now
    raise AssertionError(f"gossip still arriving after 20 s: {last}")


async def inject(target: P2PNetwork, forwarder: str, msg: Any) -> None:
    """Hand ``msg`` to the target's pubsub as if ``forwarder`` had sent it (in the libp2p thread)."""
    await target._call(target._pubsub.push_msg, ID.from_base58(forwarder), msg)  # type: ignore[union-attr]


def test_flooder_dropped_before_signature_check_while_honest_peer_is_served() -> None:
    validated: list[bytes] = []

    async def scenario() -> None:
        async with three_nets(validated) as (target, flooder, honest):
            started = time.monotonic()

            async def flood() -> None:
                for i in range(FLOOD):
                    await flooder.publish(TOPIC, b"flood %d" % i)

            attack = asyncio.create_task(flood())
            answers = []
            for i in range(10):  # requests to the flooded peer, interleaved with the flood
                answers.append(await target_echo(honest, target, b"honest request %d" % i))
            for i in range(3):
                await honest.publish(TOPIC, b"honest %d" % i)
            await attack
            await wait_until(lambda: sum(d.startswith(b"honest ") for d in validated) == 3, 20,
                             "the honest peer's gossip delivered")
            counts = await settled(target)
            elapsed = time.monotonic() - started
            assert answers == [b"honest request %d" % i for i in range(10)]

            flood_checked = sum(d.startswith(b"flood") for d in validated)
            # Only the flooder's budget reached the signature check; the rest was dropped before it.
            assert 1 <= flood_checked <= BURST + RATE * elapsed + 1, (flood_checked, elapsed)
            assert counts["author_over_budget"] >= 10, counts
            assert target.over_budget.get(flooder.peer_id, 0) == counts["author_over_budget"]
            assert honest.peer_id not in target.over_budget

            # Order of the checks: the flooder's budget is empty, so even a message in its name that carries
            # a bad signature is dropped for the budget, before its signature would be checked.
            before = target.gossip_counts()
            await inject(target, flooder.peer_id, forged(flooder.peer_id, 10**9, b"flood forged"))
            after = target.gossip_counts()
            assert after["author_over_budget"] >= before["author_over_budget"] + 1
            assert after["bad_signature"] == before["bad_signature"]

            # A forger naming the honest author costs signature checks, is held against the forwarder that
            # sent it, and leaves the honest author's budget untouched.
            for i in range(20):
                await inject(target, flooder.peer_id, forged(honest.peer_id, 10**9 + i, b"forged in the honest name"))
            forged_counts = target.gossip_counts()
            assert forged_counts["bad_signature"] == after["bad_signature"] + 20
            assert target.rejected.get(flooder.peer_id) == 20
            assert not any(d == b"forged in the honest name" for d in validated)
            for i in range(3, 5):  # the rest of the honest burst (5) is still there
                await honest.publish(TOPIC, b"honest %d" % i)
            await wait_until(lambda: sum(d.startswith(b"honest ") for d in validated) == 5, 20,
                             "the rest of the honest burst delivered")
            got = [target.incoming.get_nowait().data for _ in range(target.incoming.qsize())]
            assert [d for d in got if d.startswith(b"honest ")] == [b"honest %d" % i for i in range(5)]

    arun(scenario(), timeout=120)


async def target_echo(honest: P2PNetwork, target: P2PNetwork, payload: bytes) -> bytes:
    return await honest.request(target.peer_id, ECHO, payload, timeout=20.0)


def test_banned_peer_is_disconnected_and_refused() -> None:
    validated: list[bytes] = []

    async def scenario() -> None:
        async with three_nets(validated) as (target, flooder, honest):
            target.ban(flooder.peer_id, 60)
            await target.disconnect(flooder.peer_id)
            await wait_until(lambda: flooder.peer_id not in target.connected_peers(), 10, "flooder disconnected")
            try:
                await flooder.connect(target.listen_addrs[0])
            except PeerUnavailable:
                pass  # refused during the handshake: as good as closed after it
            await wait_until(lambda: target.gossip_counts()["refused_connections"] >= 1
                             and flooder.peer_id not in target.connected_peers(), 10,
                             "the banned peer's new connection closed")
            # Whatever it still manages to send is dropped before anything is decoded; the honest peer is served.
            await inject(target, honest.peer_id, forged(flooder.peer_id, 1, b"flood after ban"))
            assert target.gossip_counts()["banned"] >= 1
            assert await target_echo(honest, target, b"still served") == b"still served"
            await honest.publish(TOPIC, b"honest after ban")
            await wait_until(lambda: b"honest after ban" in validated, 20, "honest gossip after the ban")
            assert not any(d.startswith(b"flood") for d in validated)

    arun(scenario(), timeout=90)
