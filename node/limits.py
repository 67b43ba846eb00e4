"""What this node accepts from its peers and tasks: budgets, per-peer token buckets, scores, pending index.

Everything here is bookkeeping with time passed in (no I/O), so it is tested without a network.

* ``NodeLimits``: the node's budgets, read from optional keys of the node TOML (``get_limits``).
* ``PeerBook``: per peer and per kind of work (``gossip``, ``sync``, ``serve``) a token bucket; a peer over
  budget is throttled (its message dropped unread) and loses score, as does a peer whose message is
  rejected; a peer whose score falls to ``ban_score`` is banned for ``ban_s`` and disconnected. Scores
  recover with time, so an honest peer that once sent something odd is not punished forever.
* ``PendingIndex``: ignored-but-early gossip kept by what it waits for (a claim id, a task id, a dispute
  id), retried only when that thing is applied, bounded in total and per peer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from protocol.constants import MAX_ACTIVATION_BYTES, MAX_SEGMENT_FLOPS, MAX_STATE_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeLimits:
    # A task whose checkpoint is larger is not verified here. The protocol allows 2 GiB (GPT-2 small with AdamW);
    # a node loads the whole state to replay it, so operators raise this only on machines that can hold it.
    max_state_bytes: int = 256 * 1024 * 1024
    max_segment_flops: int = 10**12  # nor one whose segment replay needs more (minutes on a CPU core)
    max_activation_bytes: int = 1 << 32  # nor a model graph whose step holds more activations (4 GiB)
    gossip_per_s: float = 20.0  # messages per originating peer, sustained (a node publishes a few per claim)
    gossip_burst: float = 200.0
    forward_per_s: float = 200.0  # new gossip relayed to us by one connected peer, whatever its authors
    forward_burst: float = 2000.0
    sync_pages_per_s: float = 2.0  # sync pages requested from one peer (each <= 256 items, 900 KiB)
    sync_pages_burst: float = 20.0
    serve_per_s: float = 400.0  # chunk/proof/sync requests served to one peer
    serve_burst: float = 800.0
    reject_penalty: float = 10.0
    unfunded_penalty: float = 1.0  # gossip of a posting or claim its signer cannot pay for (useless, cheap to make)
    throttle_penalty: float = 1.0
    ban_score: float = -100.0
    score_recovery_per_s: float = 1.0
    ban_s: float = 300.0
    pending_max: int = 4000
    pending_per_peer: int = 400
    pending_ttl_s: float = 300.0


_INTEGER_LIMITS = ("max_state_bytes", "max_segment_flops", "max_activation_bytes", "pending_max", "pending_per_peer")


def get_limits(extra: Mapping[str, Any]) -> NodeLimits:
    """Limits from the node TOML's optional keys (same names as the fields); unknown keys are not ours."""
    values: dict[str, Any] = {}
    for f in fields(NodeLimits):
        if f.name not in extra:
            continue
        value = extra[f.name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
            raise ValueError(f"{f.name} must be a non-negative number, got {value!r}")
        if f.name in _INTEGER_LIMITS:
            if not isinstance(value, int):
                raise ValueError(f"{f.name} must be an integer")
            if f.name == "max_state_bytes" and value > MAX_STATE_BYTES:
                raise ValueError(f"max_state_bytes above the protocol limit {MAX_STATE_BYTES}")
            if f.name == "max_segment_flops" and value > MAX_SEGMENT_FLOPS:
                raise ValueError(f"max_segment_flops above the protocol limit {MAX_SEGMENT_FLOPS}")
            if f.name == "max_activation_bytes" and value > MAX_ACTIVATION_BYTES:
                raise ValueError(f"max_activation_bytes above the protocol limit {MAX_ACTIVATION_BYTES}")
        values[f.name] = value if f.name in _INTEGER_LIMITS else float(value)
    if "ban_score" in extra:  # a negative number in the file
        values["ban_score"] = float(extra["ban_score"])
    return NodeLimits(**values)


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class PeerBook:
    """Token buckets and scores per peer (bounded: the least recently seen peers are forgotten)."""

    MAX_PEERS = 4096

    def __init__(self, limits: NodeLimits) -> None:
        self.limits = limits
        self._rates = {"gossip": (limits.gossip_per_s, limits.gossip_burst),
                       "sync": (limits.sync_pages_per_s, limits.sync_pages_burst),
                       "serve": (limits.serve_per_s, limits.serve_burst)}
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._scores: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer -> (score, at)
        self.banned: dict[str, float] = {}  # peer -> until
        self.throttled: dict[str, int] = {}
        self.rejected: dict[str, int] = {}

    def allow(self, peer: str, kind: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``peer``'s ``kind`` bucket; False (throttled) if it is empty or banned."""
        if self.is_banned(peer, now):
            return False
        rate, burst = self._rates[kind]
        key = (peer, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
            if len(self._buckets) > 3 * self.MAX_PEERS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < cost:
            self.throttled[peer] = self.throttled.get(peer, 0) + 1
            self.penalize(peer, self.limits.throttle_penalty, now)
            return False
        bucket.tokens -= cost
        return True

    def score(self, peer: str, now: float) -> float:
        score, at = self._scores.get(peer, (0.0, now))
        return min(0.0, score + (now - at) * self.limits.score_recovery_per_s)

    def penalize(self, peer: str, points: float, now: float) -> bool:
        """Lower ``peer``'s score; True when this made it cross the ban threshold (disconnect it now)."""
        if not peer:
            return False
        score = self.score(peer, now) - points
        self._scores[peer] = (score, now)
        self._scores.move_to_end(peer)
        if len(self._scores) > self.MAX_PEERS:
            self._scores.popitem(last=False)
        if score <= self.limits.ban_score and not self.is_banned(peer, now):
            self.banned[peer] = now + self.limits.ban_s
            self._scores[peer] = (0.0, now)  # a clean slate after the ban
            log.warning("peer %s banned for %.0f s (score %.0f)", peer[-8:], self.limits.ban_s, score)
            return True
        return False

    def reject(self, peer: str, now: float) -> bool:
        self.rejected[peer] = self.rejected.get(peer, 0) + 1
        return self.penalize(peer, self.limits.reject_penalty, now)

    def is_banned(self, peer: str, now: float) -> bool:
        until = self.banned.get(peer)
        if until is None:
            return False
        if now >= until:
            del self.banned[peer]
            return False
        return True

    def report(self, now: float) -> dict[str, Any]:
        peers = set(self.throttled) | set(self.rejected) | set(self.banned)
        return {p: {"score": round(self.score(p, now), 1), "throttled": self.throttled.get(p, 0),
                    "rejected": self.rejected.get(p, 0), "banned": self.is_banned(p, now)}
                for p in sorted(peers)[:256]}


@dataclass(frozen=True)
class PendingItem:
    data: bytes
    source: str
    peer: str
    at: float


class PendingIndex:
    """Early gossip by the key it waits for; each item is retried once its key appears, never before."""

    def __init__(self, limits: NodeLimits) -> None:
        self.limits = limits
        self._by_key: dict[bytes, list[PendingItem]] = {}
        self._order: deque[tuple[bytes, PendingItem]] = deque()  # insertion order, for eviction
        self._per_peer: dict[str, int] = {}
        self._count = 0
        self.dropped = 0

    def __len__(self) -> int:
        return self._count

    def add(self, key: bytes, item: PendingItem) -> bool:
        if self._per_peer.get(item.peer, 0) >= self.limits.pending_per_peer:
            self.dropped += 1
            return False
        while self._count >= self.limits.pending_max and self._order:
            self._evict_oldest()
        self._by_key.setdefault(key, []).append(item)
        self._order.append((key, item))
        self._per_peer[item.peer] = self._per_peer.get(item.peer, 0) + 1
        self._count += 1
        return True

    def _forget(self, item: PendingItem) -> None:
        self._count -= 1
        left = self._per_peer.get(item.peer, 1) - 1
        if left > 0:
            self._per_peer[item.peer] = left
        else:
            self._per_peer.pop(item.peer, None)

    def _evict_oldest(self) -> None:
        key, item = self._order.popleft()
        items = self._by_key.get(key)
        if items and item in items:
            items.remove(item)
            if not items:
                del self._by_key[key]
            self._forget(item)
            self.dropped += 1

    def take(self, key: bytes, now: float | None = None) -> list[PendingItem]:
        """Remove and return the items waiting for ``key`` that are not older than the TTL."""
        now = time.time() if now is None else now
        items = self._by_key.pop(key, [])
        for item in items:
            self._forget(item)
        if items:
            taken = set(map(id, items))
            self._order = deque(x for x in self._order if id(x[1]) not in taken)
        return [i for i in items if now - i.at <= self.limits.pending_ttl_s]
