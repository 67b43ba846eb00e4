"""Gossip admission inside the libp2p thread (private helper of :mod:`node.p2p`, trio side only).

py-libp2p 0.8.1 handles each received message as: parse the RPC, spawn a task, then ``push_msg``:
blacklist, seen cache, ed25519 signature, topic validators, deliver, relay. A budget checked in a topic
validator therefore runs after the signature check: every message over budget still costs a signature
check and a trio task, which is how a flood from one key stalled the attacked node's libp2p thread.

``GuardedPubsub.push_msg`` performs the same steps in this order instead, cheapest first:

1. a banned forwarder or author: dropped (nothing decoded, no signature checked);
2. a message already seen: dropped (duplicates from several forwarders cost nothing);
3. the forwarder's budget (the peer on the connection, authenticated by Noise) is charged;
4. the author's budget is looked at, not charged: when it is empty the message is dropped before its
   signature is checked. Charging only after the signature holds means a forger who names an honest
   author cannot drain that author's budget;
5. the signature; a bad one is held against the forwarder (it relayed what it could have checked);
6. the author's budget is charged, then the topic validators run; a rejection is held against the
   forwarder;
7. delivered and relayed as libp2p does.

``GossipGate`` holds the buckets, bans and counters; the node drains ``over_budget`` and ``rejected``
(peer id -> count) into its scores. Everything runs on the trio thread except ``ban`` (one dict swap).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID
from libp2p.exceptions import ValidationError
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import signature_validator
from multiaddr import Multiaddr

log = logging.getLogger(__name__)

_MAX_TRACKED = 4096


class _Buckets:
    """Token buckets per peer id (bytes), least recently seen forgotten past ``_MAX_TRACKED``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    def _refill(self, peer: bytes, now: float) -> list[float]:
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = [self.burst, now]
            if len(self._buckets) > _MAX_TRACKED:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(peer)
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        return bucket

    def has(self, peer: bytes, now: float) -> bool:
        return self.rate <= 0 or self._refill(peer, now)[0] >= 1

    def take(self, peer: bytes, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._refill(peer, now)
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True


class GossipGate:
    """Budgets and bans of gossip per author and per forwarder, with the counters the node reads."""

    def __init__(self, author_rate: float, author_burst: float, forwarder_rate: float,
                 forwarder_burst: float) -> None:
        self.authors = _Buckets(author_rate, author_burst)
        self.forwarders = _Buckets(forwarder_rate, forwarder_burst)
        self.my_id = b""
        self.banned: dict[bytes, float] = {}  # peer id bytes -> monotonic time the ban ends
        self.over_budget: dict[str, int] = {}  # peer -> messages dropped over its budget (drained by the node)
        self.rejected: dict[str, int] = {}  # forwarder -> invalid messages it sent us (drained by the node)
        self.counts = {"banned": 0, "duplicate": 0, "forwarder_over_budget": 0, "author_over_budget": 0,
                       "bad_signature": 0, "invalid": 0, "accepted": 0, "refused_connections": 0}

    def ban(self, peer: bytes, seconds: float) -> None:
        """Thread-safe: the dict is replaced, never mutated in place."""
        now = time.monotonic()
        banned = {k: v for k, v in self.banned.items() if v > now}
        banned[peer] = now + seconds
        self.banned = banned

    def is_banned(self, peer: bytes, now: float | None = None) -> bool:
        until = self.banned.get(peer)
        return until is not None and until > (time.monotonic() if now is None else now)

    @staticmethod
    def _count(table: dict[str, int], peer: bytes) -> None:
        name = ID(peer).to_base58()
        if name in table or len(table) < 1024:
            table[name] = table.get(name, 0) + 1

    def over(self, kind: str, peer: bytes) -> None:
        self.counts[kind] += 1
        self._count(self.over_budget, peer)

    def reject(self, kind: str, forwarder: bytes) -> None:
        self.counts[kind] += 1
        self._count(self.rejected, forwarder)


class GuardedPubsub(Pubsub):
    """Pubsub whose message handling applies ``gate`` before any signature is checked (module docstring)."""

    def __init__(self, *args: Any, gate: GossipGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    async def push_msg(self, msg_forwarder: ID, msg: Any) -> None:
        gate, now = self.gate, time.monotonic()
        forwarder, author = msg_forwarder.to_bytes(), bytes(msg.from_id)
        local = forwarder == gate.my_id  # our own publish: paced already, signed by us
        if not local and (gate.is_banned(forwarder, now) or gate.is_banned(author, now)):
            gate.counts["banned"] += 1
            return
        if self._is_msg_seen(msg):
            gate.counts["duplicate"] += 1
            return
        scorer = getattr(self.router, "scorer", None)  # GossipSub's own peer scores, kept as libp2p does
        topics = list(msg.topicIDs)
        if scorer is not None and not scorer.allow_publish(msg_forwarder, topics):
            return
        if not local:
            if not gate.forwarders.take(forwarder, now):
                gate.over("forwarder_over_budget", forwarder)
                return
            if not gate.authors.has(author, now):
                gate.over("author_over_budget", author)
                return
            if self.strict_signing and not signature_validator(msg):
                gate.reject("bad_signature", forwarder)
                return
            if not gate.authors.take(author, now):
                gate.over("author_over_budget", author)
                return
        try:
            await self.validate_msg(msg_forwarder, msg)
        except ValidationError:
            if not local:
                gate.reject("invalid", forwarder)
            if scorer is not None:
                for topic in topics:
                    scorer.on_invalid_message(msg_forwarder, topic)
            return
        self._mark_msg_seen(msg)
        if scorer is not None:
            for topic in topics:
                scorer.on_first_delivery(msg_forwarder, topic)
        if author == gate.my_id and not local:  # someone replays a message in our name
            return
        gate.counts["accepted"] += 1
        self.notify_subscriptions(msg)
        await self.router.publish(msg_forwarder, msg)


class BanNotifee(INotifee):
    """Closes a new connection from a banned peer as soon as it is up (libp2p has no per-peer gate)."""

    def __init__(self, gate: GossipGate) -> None:
        self.gate = gate

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self.gate.is_banned(peer.to_bytes()):
            self.gate.counts["refused_connections"] += 1
            log.debug("refusing a connection from banned peer %s", peer)
            try:
                await network.close_peer(peer)
            except Exception as exc:  # noqa: BLE001 - it may be gone already; never crash the swarm
                log.debug("closing the connection of banned %s failed: %r", peer, exc)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None
