"""Peer-to-peer layer: the only module of the project that imports libp2p and trio.

py-libp2p is trio-only, the node is asyncio, so the libp2p host runs in one dedicated thread under
``trio.run`` and everything crosses that boundary through two primitives: asyncio -> trio via the
trio token (``_call``), trio -> asyncio via ``loop.call_soon_threadsafe`` / ``run_coroutine_threadsafe``.
Pitfall numbers (P1..P11) refer to the list of py-libp2p 0.8.1 pitfalls in docs/network.md.

Interface (all methods are called from the asyncio loop that ran ``start()``)::

    GossipMessage(topic, data, from_peer, received_at)            # from_peer = signed originator
    P2PConfig(identity_seed, listen_host, listen_port, bootstrap, topics, max_gossip_bytes,
              request_timeout_s, max_request_bytes, max_response_bytes, publish_rate_per_s,
              incoming_queue_size)
    net = P2PNetwork(config, validators={topic: fn(data) -> None, raises to reject})
    net.set_request_handler(protocol, async handler(peer_id, request) -> response)  # before start()
    await net.start(); net.peer_id; net.listen_addrs             # addrs end in /p2p/<peer_id>
    net.incoming                                                 # asyncio.Queue[GossipMessage]
    await net.publish(topic, data)                               # paced; ValueError if too big/rejected
    await net.request(peer_id, protocol, payload, timeout=None, max_response_bytes=None) -> bytes
    await net.connect(multiaddr); net.connected_peers(); await net.disconnect(peer_id); await net.stop()
    net.ban(peer_id, seconds)                                    # its gossip is dropped and not relayed
    net.over_budget, net.rejected                                # peer -> count, drained by the node

Gossip admission (budgets per author and per forwarder, bans, the order of the checks) is in
``node._p2p_gossip``: over-budget and banned gossip is dropped before its signature is checked.

Errors: ``PeerUnavailable`` (no connection could be made), ``RequestFailed(reason)`` (timeout, transport
failure after one redial, remote handler error, integrity failure) and its subclasses ``ResponseTooLarge``
and ``ProtocolNotSupported`` (the peer does not speak the protocol; the connection is kept).
Own published messages are not echoed into ``incoming``; gossip is best effort (P3), so callers should
reconcile with requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import ProtocolNotSupportedError
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from node import _p2p_framing as framing
from node._p2p_gossip import BanNotifee, GossipGate, GuardedPubsub

log = logging.getLogger(__name__)

# libp2p silences itself at import unless LIBP2P_DEBUG is set, and also stops propagation, which hides
# its warnings from the node's handlers; keep WARNING but let them reach the application's logging.
if not os.environ.get("LIBP2P_DEBUG"):
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    logging.getLogger("libp2p").propagate = True
    # This one pins itself to INFO and logs "initiating N new dials" on every cycle.
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.NOTSET)

T = TypeVar("T")
RequestHandler = Callable[[str, bytes], Coroutine[Any, Any, bytes]]
GOSSIP_PROTOCOLS = (TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0"))
_SHUTDOWN_GRACE_S = 5.0
_CLEANUP_S = 2.0
_MAX_INBOUND = 16


class P2PError(Exception):
    """Base class of the errors this module raises."""


class PeerUnavailable(P2PError):
    def __init__(self, peer_id: str, reason: str) -> None:
        super().__init__(f"peer {peer_id} unavailable: {reason}")
        self.peer_id = peer_id
        self.reason = reason


class RequestFailed(P2PError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolNotSupported(RequestFailed):
    """The peer is connected and healthy but does not speak the protocol (a standard libp2p peer)."""


class ResponseTooLarge(RequestFailed):
    pass


@dataclass(frozen=True)
class GossipMessage:
    topic: str
    data: bytes
    from_peer: str
    received_at: float


@dataclass(frozen=True)
class P2PConfig:
    identity_seed: bytes
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    bootstrap: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    max_gossip_bytes: int = 256 * 1024
    request_timeout_s: float = 30.0
    max_request_bytes: int = 64 * 1024
    max_response_bytes: int = 256 * 1024 * 1024
    publish_rate_per_s: float = 100.0
    incoming_queue_size: int = 10_000
    # Gossip accepted (and relayed) per originating peer, checked before its signature; 0 disables. Excess
    # is neither delivered nor relayed, so one flooder cannot fill every peer's links.
    origin_rate_per_s: float = 0.0
    origin_burst: float = 0.0
    # New (not yet seen) gossip accepted per forwarding peer, whoever the authors; 0 disables.
    forwarder_rate_per_s: float = 0.0
    forwarder_burst: float = 0.0

    def __post_init__(self) -> None:
        if len(self.identity_seed) != 32:
            raise ValueError("identity_seed must be 32 bytes")
        positive = (self.max_gossip_bytes, self.request_timeout_s, self.max_request_bytes,
                    self.max_response_bytes, self.publish_rate_per_s, self.incoming_queue_size)
        if min(positive) <= 0:
            raise ValueError("limits, timeouts and rates must be positive")


class _TokenBucket:
    """Paces publishes: py-libp2p drops silently past 32 queued RPCs per peer (P3)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, min(rate, 20.0))
        self._tokens = self._capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self._rate)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        # Yamux reports a killed peer as a clean EOF (P9): without the END frame this is a truncation.
        return "stream closed before the end-of-response marker (truncated)"
    return repr(exc)


def _is_unsupported(exc: BaseException) -> bool:
    """True when multistream-select refused the protocol (the peer answered "na")."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ProtocolNotSupportedError) or "not supported" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _CallHandle:
    """Lets the asyncio side cancel a trio task it started, even before that task began running."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class P2PNetwork:
    def __init__(self, config: P2PConfig, *, validators: dict[str, Callable[[bytes], None]] | None = None):
        self.config = config
        self.peer_id = ""
        self.listen_addrs: list[str] = []
        self.incoming: asyncio.Queue[GossipMessage] = asyncio.Queue(config.incoming_queue_size)
        self._validators = dict(validators or {})
        self._handlers: dict[str, RequestHandler] = {}
        self._bucket = _TokenBucket(config.publish_rate_per_s)
        self._known_addrs: dict[ID, list[multiaddr.Multiaddr]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._host: Any = None
        self._pubsub: GuardedPubsub | None = None
        self._running = False
        self._dropped = 0
        self._inbound: trio.Semaphore | None = None
        self.gate = GossipGate(config.origin_rate_per_s, config.origin_burst, config.forwarder_rate_per_s,
                               config.forwarder_burst)
        # Gossip crosses to asyncio in batches: one wake-up of the loop per batch, not per message. Each
        # wake-up is a syscall that hands the GIL over, and under a flood the libp2p thread then waited for
        # it behind the node's CPU-bound threads message after message.
        self._inbox: deque[GossipMessage] = deque()
        self._inbox_lock = threading.Lock()
        self._inbox_wake = False

    # ---------------------------------------------------------------- asyncio-facing API

    def set_request_handler(self, protocol: str, handler: RequestHandler) -> None:
        if self._thread is not None:
            raise RuntimeError("register request handlers before start()")
        self._handlers[protocol] = handler

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("P2PNetwork can only be started once")
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="p2p-trio", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            await self.stop()
            raise
        self._running = True
        log.info("p2p node %s listening on %s", self.peer_id, ", ".join(self.listen_addrs))

    async def stop(self) -> None:
        thread, self._running = self._thread, False
        if thread is None:
            return
        if self._token is not None and self._stop_event is not None:
            try:
                self._token.run_sync_soon(self._stop_event.set)
            except trio.RunFinishedError:
                pass
        await asyncio.to_thread(thread.join, _SHUTDOWN_GRACE_S + 5.0)
        if thread.is_alive():
            log.warning("p2p thread did not stop within %.0f s", _SHUTDOWN_GRACE_S + 5.0)

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self.config.max_gossip_bytes:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds {self.config.max_gossip_bytes}")
        validator = self._validators.get(topic)
        if validator is not None:
            try:
                validator(data)
            except Exception as exc:
                # Pubsub would drop it silently on the local validation pass; tell the caller instead.
                raise ValueError(f"message rejected by the local {topic} validator: {exc!r}") from exc
        await self._bucket.acquire()
        await self._call(self._publish_trio, topic, data)

    async def request(self, peer_id: str, protocol: str, payload: bytes, *, timeout: float | None = None,
                      max_response_bytes: int | None = None) -> bytes:
        if len(payload) > self.config.max_request_bytes:
            raise ValueError(f"request of {len(payload)} bytes exceeds {self.config.max_request_bytes}")
        limit = min(max_response_bytes or self.config.max_response_bytes, self.config.max_response_bytes)
        seconds = timeout if timeout is not None else self.config.request_timeout_s
        peer = ID.from_base58(peer_id)
        return await self._call(self._request_trio, peer, TProtocol(protocol), payload, seconds, limit)

    async def connect(self, addr: str) -> None:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        self._remember(info)
        await self._call(self._connect_trio, info)

    def ban(self, peer_id: str, seconds: float) -> None:
        """For ``seconds``: drop (never relay) gossip authored or forwarded by ``peer_id`` before anything is
        decoded, and close any new connection from it; thread-safe (one dict swap)."""
        self.gate.ban(ID.from_base58(peer_id).to_bytes(), seconds)

    @property
    def origin_dropped(self) -> int:
        """Gossip dropped unread: banned peer, or author/forwarder over budget."""
        c = self.gate.counts
        return c["banned"] + c["author_over_budget"] + c["forwarder_over_budget"]

    @property
    def over_budget(self) -> dict[str, int]:
        """Peer -> gossip dropped over its budget since the node last drained this (assign ``{}`` to drain)."""
        return self.gate.over_budget

    @over_budget.setter
    def over_budget(self, value: dict[str, int]) -> None:
        self.gate.over_budget = value

    @property
    def rejected(self) -> dict[str, int]:
        """Forwarder -> gossip with a bad signature or refused by a validator (assign ``{}`` to drain)."""
        return self.gate.rejected

    @rejected.setter
    def rejected(self, value: dict[str, int]) -> None:
        self.gate.rejected = value

    def gossip_counts(self) -> dict[str, int]:
        """What libp2p's thread did with received gossip, by outcome (for /status)."""
        return dict(self.gate.counts)

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (a peer that exhausted its budget or its score)."""
        await self._call(self._drop_connection, ID.from_base58(peer_id))

    def connected_peers(self) -> list[str]:
        if self._host is None or not self._running:
            return []
        # Copying the dict is a single C-level operation under the GIL; the values are only read.
        connections = dict(self._host.get_network().connections)
        return sorted(str(peer) for peer, conns in connections.items() if conns)

    # ---------------------------------------------------------------- bridge

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` as a task in the trio thread; cancelling the awaiting coroutine cancels it."""
        if not self._running or self._token is None or self._loop is None:
            raise P2PError("p2p network is not running")
        loop, nursery = self._loop, self._nursery
        assert nursery is not None
        future: asyncio.Future[T] = loop.create_future()
        handle = _CallHandle()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def report(result: Any = None, error: BaseException | None = None) -> None:
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the asyncio loop is already closed: nobody is waiting
                pass

        async def runner() -> None:
            if handle.cancelled:
                return
            try:
                with trio.CancelScope() as handle.scope:
                    result = await fn(*args)
                    report(result)
                    return
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting asyncio caller
                report(error=exc)
                return
            except BaseException as exc:
                report(error=P2PError(f"p2p call aborted: {exc!r}"))
                # Only trio's own cancellation may propagate: anything else reaching the nursery kills the host.
                if isinstance(exc, trio.Cancelled):
                    raise
                return
            report(error=P2PError("cancelled"))

        try:
            self._token.run_sync_soon(nursery.start_soon, runner)
        except trio.RunFinishedError:
            raise P2PError("p2p network is not running") from None
        try:
            return await future
        except asyncio.CancelledError:
            try:
                self._token.run_sync_soon(handle.cancel)
            except trio.RunFinishedError:
                pass
            raise

    async def _on_asyncio(self, handler: RequestHandler, peer: str, request: bytes) -> bytes:
        """Await an asyncio coroutine from trio; trio cancellation (timeouts) cancels the asyncio task."""
        assert self._loop is not None
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        cfuture = asyncio.run_coroutine_threadsafe(handler(peer, request), self._loop)
        cfuture.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            cfuture.cancel()
            raise
        return cfuture.result()

    # ---------------------------------------------------------------- trio side

    def _thread_main(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop

        def fail(exc: BaseException) -> None:
            if not ready.done():
                ready.set_exception(P2PError(f"p2p host failed to start: {exc!r}"))

        try:
            trio.run(self._trio_main, ready)
        except BaseException as exc:  # noqa: BLE001 - the thread must never die silently
            log.error("p2p host stopped with an error: %r", exc)
            try:
                loop.call_soon_threadsafe(fail, exc)
            except RuntimeError:
                pass
        finally:
            self._running = False

    async def _trio_main(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        cfg = self.config
        self._stop_event = trio.Event()  # before the token: stop() relies on that order
        self._token = trio.lowlevel.current_trio_token()
        self._inbound = trio.Semaphore(_MAX_INBOUND)
        key_pair = ed25519_key_pair(cfg.identity_seed)
        listen = multiaddr.Multiaddr(f"/ip4/{cfg.listen_host}/tcp/{cfg.listen_port}")
        host = new_host(
            key_pair=key_pair,
            # Noise only: the default list also offers plaintext, which lets a dialer claim any id (P1).
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=[listen],
            bootstrap=list(cfg.bootstrap) or None,
            # The defaults (min 50 / low watermark 100 connections) make the auto-connector dial every
            # address in the peerstore; this network is small and explicitly bootstrapped.
            connection_config=ConnectionConfig(min_connections=0, low_watermark=0),
        )
        for addr in cfg.bootstrap:
            self._remember(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        router = GossipSub(protocols=list(GOSSIP_PROTOCOLS), degree=6, degree_low=4, degree_high=12,
                           heartbeat_interval=1, spam_protection_enabled=False)  # P11, P2
        pubsub = GuardedPubsub(host, router, strict_signing=True, gate=self.gate,
                               max_inbound_rpc_size=max(1 << 20, 2 * cfg.max_gossip_bytes))
        host.get_network().register_notifee(BanNotifee(self.gate))
        for topic in set(cfg.topics) | set(self._validators):
            pubsub.set_topic_validator(topic, self._gossip_validator(topic), False)
        for protocol in self._handlers:
            host.set_stream_handler(TProtocol(protocol), self._stream_handler(protocol))

        with trio.CancelScope() as outer:
            # Pubsub must be registered before host.run() dials the bootstrap peers (P10).
            async with background_trio_service(pubsub), host.run(listen_addrs=[listen]), \
                    background_trio_service(router), trio.open_nursery() as nursery:
                with trio.fail_after(10):
                    await pubsub.wait_until_ready()
                self._host, self._pubsub, self._nursery = host, pubsub, nursery
                for topic in cfg.topics:
                    nursery.start_soon(self._pump, topic, await pubsub.subscribe(topic))
                self.peer_id = host.get_id().to_base58()
                self.gate.my_id = host.get_id().to_bytes()
                self.listen_addrs = [f"{addr}/p2p/{self.peer_id}" for addr in host.get_transport_addrs()]
                self._loop.call_soon_threadsafe(_resolve, ready)
                await self._stop_event.wait()
                # Closing libp2p services can hang on half-dead connections; bound the clean shutdown.
                outer.deadline = trio.current_time() + _SHUTDOWN_GRACE_S
                nursery.cancel_scope.cancel()

    async def _pump(self, topic: str, subscription: Any) -> None:
        """Drain a subscription at once: its channel holds only 32 messages (P4)."""
        assert self._loop is not None
        my_id = self._host.get_id().to_bytes()
        async for msg in subscription:
            if msg.from_id == my_id:
                continue
            item = GossipMessage(topic, bytes(msg.data), ID(msg.from_id).to_base58(), time.time())
            with self._inbox_lock:
                if len(self._inbox) >= self.config.incoming_queue_size:
                    self._dropped += 1
                    continue
                self._inbox.append(item)
                if self._inbox_wake:  # a wake-up is already on its way: the batch grows
                    continue
                self._inbox_wake = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:
                return

    def _deliver(self) -> None:
        with self._inbox_lock:
            items, self._inbox_wake = list(self._inbox), False
            self._inbox.clear()
        for item in items:
            try:
                self.incoming.put_nowait(item)
            except asyncio.QueueFull:
                self._dropped += 1
                log.warning("incoming gossip queue full: dropped message on %s (%d dropped so far)",
                            item.topic, self._dropped)

    def _gossip_validator(self, topic: str) -> Callable[[ID, Any], bool]:
        user = self._validators.get(topic)
        limit = self.config.max_gossip_bytes

        def validate(forwarder: ID, msg: Any) -> bool:
            # Bans and budgets were applied before the signature check (GuardedPubsub.push_msg).
            if len(msg.data) > limit:
                log.debug("rejected gossip on %s from %s: %d bytes > %d", topic, forwarder, len(msg.data), limit)
                return False
            if user is None:
                return True
            try:
                user(bytes(msg.data))
            except BaseException as exc:  # noqa: BLE001 - any failure rejects; must never reach pubsub
                log.debug("rejected gossip on %s from %s: %r", topic, forwarder, exc)
                return False
            return True

        return validate

    async def _publish_trio(self, topic: str, data: bytes) -> None:
        assert self._pubsub is not None
        await self._pubsub.publish(topic, data)

    async def _connect_trio(self, info: PeerInfo) -> None:
        # An explicit dial is not refused by libp2p's 60 s "recently failed" cache: a bootstrap peer that was
        # still starting when we first dialed it must be reachable as soon as it listens.
        unblock = getattr(self._host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        try:
            with trio.fail_after(self.config.request_timeout_s):
                await self._host.connect(info)
        except Exception as exc:
            raise PeerUnavailable(info.peer_id.to_base58(), f"connect failed: {exc!r}") from exc

    def _remember(self, info: PeerInfo) -> None:
        known = self._known_addrs.setdefault(info.peer_id, [])
        known.extend(a for a in info.addrs if a not in known)

    async def _drop_connection(self, peer: ID) -> None:
        """Close every connection to ``peer``: an aborted Yamux transfer can poison the connection (P7)."""
        with trio.move_on_after(_CLEANUP_S) as scope:
            scope.shield = True
            try:
                await self._host.disconnect(peer)
            except Exception as exc:  # noqa: BLE001 - best effort, the connection may already be gone
                log.debug("disconnect from %s failed: %r", peer, exc)

    async def _redial(self, peer: ID, deadline: float, cause: str) -> None:
        await self._drop_connection(peer)
        addrs = list(self._known_addrs.get(peer, []))
        try:
            addrs += [a for a in self._host.get_peerstore().addrs(peer) if a not in addrs]
        except Exception as exc:  # noqa: BLE001 - the peerstore raises when it has no entry
            log.debug("no peerstore addresses for %s: %r", peer, exc)
        if not addrs:
            raise PeerUnavailable(peer.to_base58(), f"{cause}; no known address to redial")
        try:
            with trio.fail_at(deadline):
                await self._host.connect(PeerInfo(peer, addrs))
        except Exception as exc:
            raise PeerUnavailable(peer.to_base58(), f"{cause}; redial failed: {exc!r}") from exc

    async def _request_trio(self, peer: ID, protocol: TProtocol, payload: bytes, seconds: float,
                            limit: int) -> bytes:
        deadline = trio.current_time() + seconds
        for attempt in (1, 2):
            stream, clean = None, False
            try:
                with trio.fail_at(deadline):
                    stream = await self._host.new_stream(peer, [protocol])
                    response = await framing.fetch(stream, payload, limit)
                clean = True
                return response
            except framing.RemoteError as refusal:  # the stream ended cleanly: the connection is healthy
                clean = True
                error = ResponseTooLarge if refusal.code == framing.ERR_TOO_LARGE else RequestFailed
                raise error(f"{peer} refused {protocol}: {refusal.reason}") from None
            except trio.TooSlowError:
                await self._drop_connection(peer)  # an aborted Yamux transfer can poison it (P7)
                raise RequestFailed(f"{protocol} request to {peer} timed out after {seconds:.1f} s") from None
            except framing.LimitExceeded as exc:
                await self._drop_connection(peer)
                raise ResponseTooLarge(f"response from {peer} to {protocol}: {exc}") from None
            except framing.FramingError as exc:
                await self._drop_connection(peer)
                raise RequestFailed(f"protocol violation by {peer} on {protocol}: {exc}") from None
            except Exception as exc:  # transport failure: StreamFailure, SwarmException, StreamEOF, ...
                if _is_unsupported(exc):
                    # Multistream answered "na": the connection is fine. Dropping it would cut off every
                    # peer that only speaks the standard protocols (gossip) and not our optional ones.
                    clean = True
                    raise ProtocolNotSupported(f"{peer} does not support {protocol}") from None
                cause = _describe(exc)
                log.debug("%s request to %s failed (attempt %d): %s", protocol, peer, attempt, cause)
                if attempt == 2:
                    await self._drop_connection(peer)
                    raise RequestFailed(f"{protocol} request to {peer} failed after redial: {cause}") from exc
                await self._redial(peer, deadline, cause)  # P7: disconnect + redial recovers the connection
            finally:
                if stream is not None:
                    await self._finish(stream, clean)
        raise AssertionError("unreachable")

    async def _finish(self, stream: Any, clean: bool) -> None:
        with trio.move_on_after(_CLEANUP_S) as scope:
            scope.shield = True
            try:
                await (stream.close() if clean else stream.reset())
            except Exception as exc:  # noqa: BLE001 - the stream may already be dead; cleanup is best effort
                log.debug("closing stream failed: %r", exc)

    def _stream_handler(self, protocol: str) -> Callable[[Any], Awaitable[None]]:
        cfg, handler = self.config, self._handlers[protocol]

        async def handle(stream: Any) -> None:
            peer, clean, inbound = "?", False, self._inbound
            assert inbound is not None
            try:
                peer = stream.muxed_conn.peer_id.to_base58()
                if inbound.value == 0:
                    # Each response can hold max_response_bytes in memory: refuse rather than queue.
                    await framing.refuse(stream, framing.ERR_BUSY, "too many concurrent requests", 5.0)
                    clean = True
                    return
                async with inbound:
                    await framing.serve(stream, lambda request: self._on_asyncio(handler, peer, request),
                                        max_request=cfg.max_request_bytes, max_response=cfg.max_response_bytes,
                                        timeout=cfg.request_timeout_s)
                clean = True
            except framing.HandlerFailed as exc:
                clean = True
                log.warning("%s handler failed for %s: %s", protocol, peer, exc)
            except BaseException as exc:  # anything escaping a stream handler kills the host (P6)
                log.debug("serving %s to %s failed: %r", protocol, peer, exc)
                if isinstance(exc, trio.Cancelled):
                    raise
            finally:
                await self._finish(stream, clean)

        return handle
