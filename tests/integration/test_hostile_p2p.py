"""Peers that are not ours: a standard libp2p peer without /pol/sync/1 stays connected.

Runs a P2PNetwork in this process against a peer process (tests/integration/p2p_peer.py) that serves only
its test protocols. Before the fix, "protocol not supported" counted as a transport failure: the
connection was dropped and redialled, and the node's sync loop cut off such a peer every round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from node.p2p import ProtocolNotSupported

from .p2p_peer import PROTO_ECHO, PeerProcess
from .test_p2p import arun, running, seed


@pytest.fixture(scope="module")
def plain_peer() -> Iterator[PeerProcess]:
    peer = PeerProcess("--serve", "--topic", "/pol/test/1", "--seed", seed("plain").hex())
    try:
        yield peer
    finally:
        peer.close()


def test_unsupported_protocol_keeps_the_connection(plain_peer: PeerProcess) -> None:
    async def scenario() -> None:
        async with running("asker") as net:
            await net.connect(plain_peer.addrs[0])
            for _ in range(5):
                started = time.monotonic()
                with pytest.raises(ProtocolNotSupported, match="does not support /pol/sync/1"):
                    await net.request(plain_peer.peer_id, "/pol/sync/1", b"x", timeout=5)
                assert time.monotonic() - started < 4  # answered at once, no timeout, no redial
                assert plain_peer.peer_id in net.connected_peers()
                await asyncio.sleep(0.2)
            assert await net.request(plain_peer.peer_id, PROTO_ECHO, b"still here") == b"still here"

    arun(scenario())


def test_gossip_per_author_budget_and_ban_stop_delivery_and_relay(plain_peer: PeerProcess) -> None:
    """A receiver with a per-author budget delivers at most burst + rate*t of one author's messages;
    once the author is banned, nothing of it is delivered (and so nothing relayed)."""
    topic = "/pol/test/1"

    async def scenario() -> None:
        async with running("budgeted", topics=(topic,), origin_rate_per_s=1.0, origin_burst=20.0) as net:
            await net.connect(plain_peer.addrs[0])
            await asyncio.sleep(2.0)  # mesh
            for i in range(60):
                plain_peer.send(cmd="publish", topic=topic, data=bytes([i]).hex())
                await asyncio.sleep(0.01)
            await asyncio.sleep(2.0)
            got = net.incoming.qsize()
            assert 15 <= got <= 25, got  # the burst (20) and about one per second, not 60
            assert net.origin_dropped >= 35
            net.ban(plain_peer.peer_id, 60)
            while not net.incoming.empty():
                net.incoming.get_nowait()
            await asyncio.sleep(3.0)  # the budget refills
            plain_peer.send(cmd="publish", topic=topic, data="ff")
            await asyncio.sleep(1.5)
            assert net.incoming.empty()

    arun(scenario())
