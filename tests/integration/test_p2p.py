"""node.p2p across real processes on 127.0.0.1: gossip through a relay, bulk transfer, limits, failures.

Each test runs its own P2PNetwork inside this process under ``asyncio.run`` and talks to peer processes
(tests/integration/p2p_peer.py). Every loop and wait is bounded; every process is closed in a finally.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from node.p2p import P2PConfig, P2PNetwork, PeerUnavailable, RequestFailed, ResponseTooLarge

from .p2p_peer import PROTO_BLOB, PROTO_ECHO, PROTO_FAIL, PROTO_SLOW, PeerProcess, blob

TOPIC = "/pol/test/1"
SERVER_MAX_RESPONSE = 64 << 20


def seed(name: str) -> bytes:
    return hashlib.sha256(b"pol-p2p-test/" + name.encode()).digest()


def arun(coro: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def running(name: str, **config: Any) -> AsyncIterator[P2PNetwork]:
    validators = config.pop("validators", None)
    net = P2PNetwork(P2PConfig(identity_seed=seed(name), **config), validators=validators)
    await net.start()
    try:
        yield net
    finally:
        await net.stop()
        await net.stop()  # idempotent


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def next_gossip(net: P2PNetwork, timeout: float) -> Any:
    return await asyncio.wait_for(net.incoming.get(), timeout)


def blob_request(size: int, blob_seed: int) -> bytes:
    return json.dumps({"size": size, "seed": blob_seed}).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[PeerProcess]:
    peer = PeerProcess("--serve", "--topic", TOPIC, "--seed", seed("server").hex(),
                       "--max-response", str(SERVER_MAX_RESPONSE))
    try:
        yield peer
    finally:
        peer.close()


def test_gossip_through_relay_with_topic_validator(server: PeerProcess) -> None:
    far = PeerProcess("--topic", TOPIC, "--bootstrap", server.addrs[0], "--seed", seed("far").hex())
    try:
        arun(_gossip_through_relay(server, far))
    finally:
        far.close()


async def _gossip_through_relay(server: PeerProcess, far: PeerProcess) -> None:
    def validator(data: bytes) -> None:
        if data.startswith(b"bad"):
            raise ValueError("bad prefix")
        if data.startswith(b"weird"):
            raise KeyError("any exception type must reject, not crash")

    async with running("near", bootstrap=tuple(server.addrs), topics=(TOPIC,),
                       validators={TOPIC: validator}) as near:
        await wait_until(lambda: server.peer_id in near.connected_peers(), 15, "bootstrap connection")
        # near -> relay -> far; the mesh needs a heartbeat or two, so publish until far has one.
        deadline = time.monotonic() + 20
        for attempt in range(1000):
            await near.publish(TOPIC, b"hello-%d" % attempt)
            try:
                event = await asyncio.to_thread(
                    far.wait_event, lambda e: e["event"] == "gossip" and e["topic"] == TOPIC, 0.5)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "far peer never received gossip through the relay"
        assert event["from_peer"] == near.peer_id
        assert far.peer_id not in near.connected_peers(), "far must be reached only through the relay"

        # far -> relay -> near, with messages near's validator rejects in between.
        for data in (b"good-1", b"bad-1", b"weird-1", b"good-2"):
            far.send(cmd="publish", topic=TOPIC, data=data.hex())
        received: list[bytes] = []
        while b"good-2" not in received:
            message = await next_gossip(near, 10)
            assert message.topic == TOPIC and message.from_peer == far.peer_id
            received.append(message.data)
        await asyncio.sleep(0.5)  # anything still in flight would land now
        while not near.incoming.empty():
            received.append(near.incoming.get_nowait().data)
        assert received == [b"good-1", b"good-2"]

        with pytest.raises(ValueError, match="validator"):
            await near.publish(TOPIC, b"bad-local")
        with pytest.raises(ValueError, match="exceeds"):
            await near.publish(TOPIC, bytes(near.config.max_gossip_bytes + 1))


def test_large_response_is_transferred_intact(server: PeerProcess) -> None:
    async def scenario() -> None:
        async with running("bulk") as net:
            await net.connect(server.addrs[0])
            assert server.peer_id in net.connected_peers()
            size = 48 << 20
            started = time.monotonic()
            data = await net.request(server.peer_id, PROTO_BLOB, blob_request(size, 7))
            elapsed = time.monotonic() - started
            assert len(data) == size
            assert hashlib.sha256(data).digest() == hashlib.sha256(blob(size, 7)).digest()
            print(f"48 MiB in {elapsed:.2f} s = {size / elapsed / 1e6:.0f} MB/s")
            assert await net.request(server.peer_id, PROTO_ECHO, b"ping") == b"ping"

    arun(scenario())


def test_response_limits_are_enforced(server: PeerProcess) -> None:
    async def scenario() -> None:
        async with running("limits", max_response_bytes=128 << 20) as net:
            await net.connect(server.addrs[0])
            # The client's per-call limit travels with the request: refused before any data is sent.
            with pytest.raises(ResponseTooLarge, match="exceeds limit 1048576"):
                await net.request(server.peer_id, PROTO_BLOB, blob_request(2 << 20, 1),
                                  max_response_bytes=1 << 20)
            # The server's own limit (64 MiB) is below the client's (128 MiB).
            with pytest.raises(ResponseTooLarge, match=f"exceeds limit {SERVER_MAX_RESPONSE}"):
                await net.request(server.peer_id, PROTO_BLOB, blob_request(SERVER_MAX_RESPONSE + 1, 1))
            with pytest.raises(ValueError, match="exceeds"):
                await net.request(server.peer_id, PROTO_ECHO, bytes(net.config.max_request_bytes + 1))
            # A refusal ends the stream cleanly: the connection stays usable.
            assert await net.request(server.peer_id, PROTO_ECHO, b"still here") == b"still here"

    arun(scenario())


def test_failing_handler_does_not_kill_the_server(server: PeerProcess) -> None:
    async def scenario() -> None:
        async with running("fail") as net:
            await net.connect(server.addrs[0])
            for _ in range(3):
                with pytest.raises(RequestFailed, match="handler failed: RuntimeError"):
                    await net.request(server.peer_id, PROTO_FAIL, b"x")
                assert await net.request(server.peer_id, PROTO_ECHO, b"next") == b"next"

    arun(scenario())
    assert server.proc.poll() is None


def test_timeout_then_next_request_recovers(server: PeerProcess) -> None:
    async def scenario() -> None:
        async with running("timeout") as net:
            await net.connect(server.addrs[0])
            started = time.monotonic()
            with pytest.raises(RequestFailed, match="timed out"):
                await net.request(server.peer_id, PROTO_SLOW, b"3", timeout=0.5)
            assert time.monotonic() - started < 3.0
            # The aborted stream may have poisoned the connection (P7); the next request redials.
            assert await net.request(server.peer_id, PROTO_ECHO, b"again") == b"again"
            # Cancelling from the asyncio side cancels the trio task behind it.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(net.request(server.peer_id, PROTO_SLOW, b"3"), 0.3)
            assert await net.request(server.peer_id, PROTO_ECHO, b"after cancel") == b"after cancel"

    arun(scenario())


def test_unknown_peer_is_unavailable() -> None:
    async def scenario() -> None:
        async with running("lonely") as net, running("stranger") as stranger:
            started = time.monotonic()
            with pytest.raises(PeerUnavailable):
                await net.request(stranger.peer_id, PROTO_ECHO, b"x", timeout=5)
            with pytest.raises(PeerUnavailable):
                await net.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{stranger.peer_id}")
            assert time.monotonic() - started < 10

    arun(scenario())


def test_peer_killed_mid_transfer_fails_clearly(server: PeerProcess) -> None:
    # 64 frames of 1 MiB, 50 ms apart: about 3 s, so the kill lands mid-transfer.
    victim = PeerProcess("--serve", "--throttle-s", "0.05", "--seed", seed("victim").hex())
    try:
        arun(_killed_mid_transfer(server, victim))
    finally:
        victim.close()


async def _killed_mid_transfer(server: PeerProcess, victim: PeerProcess) -> None:
    async with running("survivor") as net:
        await net.connect(victim.addrs[0])
        await net.connect(server.addrs[0])
        transfer = asyncio.create_task(net.request(victim.peer_id, PROTO_BLOB, blob_request(64 << 20, 3)))
        await asyncio.to_thread(victim.wait_event, lambda e: e["event"] == "serving", 10)
        await asyncio.sleep(0.5)
        assert not transfer.done()
        victim.kill()
        killed_at = time.monotonic()
        with pytest.raises((RequestFailed, PeerUnavailable)) as failure:
            await asyncio.wait_for(transfer, 15)
        print(f"after SIGKILL: {type(failure.value).__name__}: {failure.value} "
              f"({time.monotonic() - killed_at:.2f} s)")
        assert "truncated" in str(failure.value) or isinstance(failure.value, PeerUnavailable)
        assert await net.request(server.peer_id, PROTO_ECHO, b"other peer") == b"other peer"


def test_plaintext_dialer_cannot_connect(server: PeerProcess) -> None:
    dialer = PeerProcess("--plaintext-dial", server.addrs[0])
    try:
        result = dialer.wait_event(lambda e: e["event"] == "dial", 30)
    finally:
        dialer.close()
    assert result["control_ok"], f"control dial failed, the probe proves nothing: {result}"
    assert not result["target_ok"], "a plaintext-only peer connected to a P2PNetwork"

    async def scenario() -> None:
        async with running("introspect") as net:
            offered = net._host.get_network().upgrader.security_multistream.transports
            assert list(offered) == ["/noise"]

    arun(scenario())
