"""Prometheus metrics and health of a node (``GET /metrics``, ``GET /health``).

Each node has its own ``CollectorRegistry`` (tests run several nodes in one process). Two kinds of
figures:

* event counters and histograms, updated as things happen: messages by source, result and reason;
  votes; certificates; replays and their seconds; checkpoint fetches, their bytes and seconds;
* ledger and network gauges, read from the node's state at scrape time by ``_StateCollector``:
  peers, stakes, this node's balance, earnings and slashes, claims by status, fetched/served bytes.

Hooks: ``instrument(node)`` wraps ``Node.handle_message``, ``Worker.replay`` and
``Worker._fetch_checkpoint_now`` on the instance, so the node and worker code stay free of metric
calls; ``note_applied`` is called by ``node.events`` for every applied message.
"""

from __future__ import annotations

import functools
import re
import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from protocol.certificate import Certificate
from protocol.constants import VERDICT_ACCEPT
from protocol.vote import SUBJECT_CLAIM, DisputeVote, Vote

if TYPE_CHECKING:
    from .app import Node

CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_REASONS = 40  # distinct reason labels kept; more collapse into "other" (a peer must not blow up the series)
_HEXISH = re.compile(r"\b(0x)?[0-9a-f]{8,}\b|\b\d+(\.\d+)?\b")
READY_MAX_TICK_LAG_S = 30.0


def get_reason_label(result: str) -> tuple[str, str]:
    """('accept'|'ignore'|'reject', a short reason without ids or numbers) from a handle_message result."""
    verdict, _, reason = result.partition(":")
    reason = _HEXISH.sub("N", reason.strip().lower())
    reason = reason.split(";")[0].split("(")[0].strip()[:60] or "-"
    return verdict.strip() or "reject", reason


class NodeMetrics:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter("pol_messages", "Messages handled, by source, result and reason",
                                ["source", "result", "reason"], registry=r)
        self.votes = Counter("pol_votes", "Votes applied to the ledger view, by verdict and whether this node cast them",
                             ["kind", "verdict", "mine"], registry=r)
        self.certificates = Counter("pol_certificates", "Certificates applied, by subject kind and verdict",
                                    ["kind", "verdict"], registry=r)
        self.replays = Counter("pol_replays", "Segment replays run by this node, by result", ["result"], registry=r)
        self.replay_seconds = Histogram("pol_replay_seconds", "Wall seconds of one segment replay", registry=r,
                                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.fetches = Counter("pol_checkpoint_fetches", "Checkpoint fetches from peers, by result", ["result"],
                               registry=r)
        self.fetch_seconds = Histogram("pol_checkpoint_fetch_seconds", "Wall seconds to fetch one checkpoint",
                                       registry=r, buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60))
        self.fetch_rate = Gauge("pol_checkpoint_fetch_bytes_per_second", "Throughput of the last checkpoint fetch",
                                registry=r)
        self.events = Counter("pol_money_events", "Money events seen (escrow released, bond slashed, stake "
                              "slashed, dispute resolved)", ["event"], registry=r)
        self._reasons: set[str] = set()
        r.register(_StateCollector(node))

    def note_result(self, source: str, result: str) -> None:
        verdict, reason = get_reason_label(result)
        if reason not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                reason = "other"
            else:
                self._reasons.add(reason)
        self.messages.labels(source=source if source in ("gossip", "sync", "local", "http") else "other",
                             result=verdict, reason=reason).inc()

    def note_applied(self, msg: Any) -> None:
        mine = str(getattr(msg, "verifier", b"") == self.node.pubkey).lower()
        if isinstance(msg, Vote):
            self.votes.labels("claim", "accept" if msg.verdict == VERDICT_ACCEPT else "reject", mine).inc()
        elif isinstance(msg, DisputeVote):
            self.votes.labels("dispute", "upheld" if msg.verdict == VERDICT_ACCEPT else "failed", mine).inc()
        elif isinstance(msg, Certificate):
            kind = "claim" if msg.kind == SUBJECT_CLAIM else "dispute"
            words = ("accept", "reject") if kind == "claim" else ("upheld", "failed")
            self.certificates.labels(kind, words[0] if msg.verdict == VERDICT_ACCEPT else words[1]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def instrument(node: "Node") -> NodeMetrics:
    """Attach metrics to ``node`` (before it runs) by wrapping three of its methods on the instance."""
    metrics = NodeMetrics(node)
    handle = node.handle_message

    @functools.wraps(handle)
    async def handle_message(data: bytes, source: str, peer: str = "") -> str:
        result = await handle(data, source, peer)
        metrics.note_result(source, result)
        return result

    node.handle_message = handle_message  # type: ignore[method-assign]
    worker = node.worker
    replay = worker.replay

    @functools.wraps(replay)
    async def timed_replay(claim_id: bytes, rt: Any, roots: list[bytes], s: int) -> bytes:
        cached = (claim_id, s) in getattr(worker, "_replays", {})
        t0 = time.perf_counter()
        try:
            root = await replay(claim_id, rt, roots, s)
        except Exception:
            metrics.replays.labels("error").inc()
            raise
        if not cached:
            metrics.replay_seconds.observe(time.perf_counter() - t0)
            metrics.replays.labels("match" if root == roots[s + 1] else "mismatch").inc()
        return root

    worker.replay = timed_replay  # type: ignore[method-assign]
    fetch = worker._fetch_checkpoint_now

    @functools.wraps(fetch)
    async def timed_fetch(claim_id: bytes, index: int, root: bytes, rt: Any) -> str:
        before, t0 = worker.fetcher.stats.bytes, time.perf_counter()
        try:
            path = await fetch(claim_id, index, root, rt)
        except Exception:
            metrics.fetches.labels("failed").inc()
            raise
        seconds = time.perf_counter() - t0
        metrics.fetches.labels("ok").inc()
        metrics.fetch_seconds.observe(seconds)
        if seconds > 0:
            metrics.fetch_rate.set((worker.fetcher.stats.bytes - before) / seconds)
        return path

    worker._fetch_checkpoint_now = timed_fetch  # type: ignore[method-assign]
    return metrics


class _StateCollector(Collector):
    """Figures read from the node at scrape time: always consistent with /ledger and /status."""

    def __init__(self, node: "Node") -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        node = self.node
        state = node.chain.state
        genesis_stake = {v.pubkey: v.stake for v in node.genesis.verifiers}
        genesis_balance = {a.pubkey: a.balance for a in node.genesis.accounts}
        g = GaugeMetricFamily("pol_peers", "Connected libp2p peers")
        g.add_metric([], len(node.net.connected_peers()) if node.net is not None else 0)
        yield g
        g = GaugeMetricFamily("pol_up_seconds", "Seconds since the node started")
        g.add_metric([], time.time() - node.started_at)
        yield g
        g = GaugeMetricFamily("pol_verifier_stake", "Stake of each genesis verifier now", labels=["verifier", "name"])
        for i, v in enumerate(state.verifiers):
            g.add_metric([str(i), node.get_name(v.pubkey)], v.stake)
        yield g
        g = GaugeMetricFamily("pol_total_stake", "Sum of all verifier stakes")
        g.add_metric([], sum(v.stake for v in state.verifiers))
        yield g
        own_balance = state.balances.get(node.pubkey, 0)
        own_stake = next((v.stake for v in state.verifiers if v.pubkey == node.pubkey), 0)
        g = GaugeMetricFamily("pol_balance", "This node's spendable balance")
        g.add_metric([], own_balance)
        yield g
        g = GaugeMetricFamily("pol_stake", "This node's stake (0 unless a staked verifier)")
        g.add_metric([], own_stake)
        yield g
        c = CounterMetricFamily("pol_earnings", "This node's balance gained since genesis (rewards, slashed bonds)")
        c.add_metric([], max(0, own_balance - genesis_balance.get(node.pubkey, 0)))
        yield c
        c = CounterMetricFamily("pol_slashed", "This node's stake lost to slashing since genesis")
        c.add_metric([], max(0, genesis_stake.get(node.pubkey, 0) - own_stake))
        yield c
        c = CounterMetricFamily("pol_slashed_network", "Stake plus prover bonds burned or slashed network-wide")
        c.add_metric([], state.burned)
        yield c
        g = GaugeMetricFamily("pol_claims", "Claims in the ledger by status", labels=["status"])
        counts: dict[str, int] = {}
        for record in state.claims.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        for status in ("pending", "accepted", "paid", "slashed", "void"):
            g.add_metric([status], counts.pop(status, 0))
        for status, n in counts.items():
            g.add_metric([status], n)
        yield g
        g = GaugeMetricFamily("pol_disputes", "Disputes by status", labels=["status"])
        dcounts: dict[str, int] = {}
        for d in state.disputes.values():
            dcounts[d.status] = dcounts.get(d.status, 0) + 1
        for status, n in sorted(dcounts.items()):
            g.add_metric([status], n)
        yield g
        g = GaugeMetricFamily("pol_tasks", "Task postings known")
        g.add_metric([], len(state.tasks))
        yield g
        g = GaugeMetricFamily("pol_log_entries", "Entries in the node's durable message log")
        g.add_metric([], node.store.last_seq())
        yield g
        fetcher = node.worker.fetcher.stats
        c = CounterMetricFamily("pol_fetch_bytes", "Checkpoint tensor bytes fetched from peers")
        c.add_metric([], fetcher.bytes)
        yield c
        c = CounterMetricFamily("pol_fetch_chunks", "Chunks fetched from peers")
        c.add_metric([], fetcher.chunks)
        yield c
        c = CounterMetricFamily("pol_served_bytes", "Checkpoint tensor bytes served to peers")
        c.add_metric([], node.worker.chunk_server.served_bytes)
        yield c


def get_health(node: "Node") -> tuple[bool, dict[str, Any]]:
    """Liveness is answering at all; readiness: p2p started, peers (when others exist), recent ticks."""
    checks: dict[str, Any] = {}
    checks["p2p"] = node.net is not None and bool(getattr(node.net, "listen_addrs", None))
    others = len(node.config.bootstrap) > 0
    peers = len(node.net.connected_peers()) if node.net is not None else 0
    checks["peers"] = peers
    checks["has_peers"] = peers > 0 or not others
    lag = time.time() - getattr(node, "last_tick_at", time.time())
    checks["tick_lag_s"] = round(lag, 2)
    checks["ticking"] = lag < max(READY_MAX_TICK_LAG_S, 10 * node.config.tick_s)
    idx = node.verifier_index
    checks["staked"] = idx is not None and node.chain.state.verifiers[idx].stake > 0
    ready = bool(checks["p2p"] and checks["has_peers"] and checks["ticking"])
    return ready, {"live": True, "ready": ready, "role": node.config.role, "checks": checks}
