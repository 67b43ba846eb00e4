"""The node: asyncio application around the pure protocol.

One ``Node`` owns a SQLite ``Store``, a ``ChainState`` (ledger + the messages behind it), a
``P2PNetwork`` (gossip topics + request protocols) and an aiohttp API. Every message, whether
it came by gossip, by sync or from this node, goes through ``handle_message``: size, decoding,
schema, signatures, known and staked signers, replay (message ids) and ledger rules are checked by
``protocol.messages.validate_gossip_message``; a rejected or ignored message changes nothing and is
logged with its reason. An accepted one is applied, logged durably, and then acted upon (aggregate
votes into certificates, verify claims, prove tasks).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from pol.keyfile import load_keyfile
from protocol import bls
from protocol.certificate import Certificate
from protocol.constants import MAX_GOSSIP_BYTES, MAX_SYNC_ITEMS
from protocol.encoding import encode_canonical
from protocol.errors import GossipIgnore, GossipReject, InvalidInput
from protocol.genesis import decode_genesis
from protocol.forced import ForcedErrorReveal
from protocol.ledger import TaskPosted
from protocol.messages import (
    ClaimAnnounced,
    Message,
    SyncRequest,
    SyncResponse,
    compute_message_id,
    decode_message,
    encode_message,
    validate_gossip_message,
)
from protocol.vote import (
    SUBJECT_CLAIM,
    SUBJECT_DISPUTE,
    DisputeVote,
    DoubleVoteProof,
    Vote,
    compute_dispute_id,
    compute_double_vote_proof,
    validate_double_vote,
)

from .chainstate import ChainState
from .config import ConfigError, NodeConfig
from .guard import Guard
from .limits import get_limits
from .store import Store

log = logging.getLogger(__name__)

TOPIC_TASKS, TOPIC_CLAIMS, TOPIC_VOTES, TOPIC_CERTS = "/pol/tasks/1", "/pol/claims/1", "/pol/votes/1", "/pol/certs/1"
TOPICS = (TOPIC_TASKS, TOPIC_CLAIMS, TOPIC_VOTES, TOPIC_CERTS)
TOPIC_OF: dict[type, str] = {TaskPosted: TOPIC_TASKS, ClaimAnnounced: TOPIC_CLAIMS, Vote: TOPIC_VOTES,
                             DisputeVote: TOPIC_VOTES, DoubleVoteProof: TOPIC_VOTES, Certificate: TOPIC_CERTS,
                             ForcedErrorReveal: TOPIC_CLAIMS}
PROTO_SYNC, PROTO_PROOF, PROTO_CHUNK = "/pol/sync/1", "/pol/proof/1", "/pol/chunk/2"
MAX_SYNC_RESPONSE = 900 * 1024


def make_topic_validator(topic: str) -> Any:
    """Stateless check run inside libp2p before relaying: size, canonical decoding, schema, topic.

    Stateful checks (signatures against the registry, ledger rules) run in the node, because a
    message that is merely early (a vote before its claim) must still be relayed.
    """
    allowed = tuple(t for t, top in TOPIC_OF.items() if top == topic)

    def validate(data: bytes) -> None:
        if len(data) > MAX_GOSSIP_BYTES:
            raise ValueError("oversized")
        msg = decode_message(data, MAX_GOSSIP_BYTES)
        if not isinstance(msg, allowed):
            raise ValueError(f"{type(msg).__name__} does not belong on {topic}")

    return validate


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.key = load_keyfile(config.key)
        self.pubkey = bls.compute_public_key(self.key.bls_secret_key)
        self.genesis = decode_genesis(config.genesis.read_bytes())
        self.chain = ChainState(self.genesis)  # validates the genesis (proofs of possession)
        if config.rpc_url:  # the contract holds the ledger; gossip is data (node.chainview)
            from .chainview import ChainBackedState

            self.chain = ChainBackedState(self.genesis)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.data_dir / "node.sqlite")
        self.net: Any = None
        self.http_port = 0
        self.started_at = time.time()
        self.stats: dict[str, int] = {"accepted": 0, "ignored": 0, "rejected": 0, "published": 0}
        try:
            self.limits = get_limits(config.extra)
        except ValueError as exc:
            raise ConfigError(f"node limits: {exc}") from None
        self.guard = Guard(self.limits)  # per-peer budgets, scores, bans, the pending index
        self._pending_event = asyncio.Event()
        self._sync_cursor: dict[str, int] = {}
        self._no_sync: dict[str, float] = {}  # peers without /pol/sync/1 -> when to ask again
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        from .work import Worker

        self.worker = Worker(self)
        self.settlement: Any = None  # node.settlement.Settlement when the config names a chain
        from .events import EventWatcher
        from .metrics import instrument

        self.metrics = instrument(self)  # wraps handle_message and the worker's replay/fetch on this instance
        self.watcher = EventWatcher(self)
        self.loop_alive_at = time.time()

    # --- time and identity -----------------------------------------------------------------

    def now(self) -> int:
        """Ledger time: whole seconds of the node's clock, passed into the pure functions."""
        return int(time.time())

    def get_name(self, pubkey: bytes) -> str:
        """Display name of an account: the config's ``[names]``, else a short public key."""
        return self.config.names.get(pubkey.hex()) or pubkey.hex()[:12]

    @property
    def verifier_index(self) -> int | None:
        for i, v in enumerate(self.chain.state.verifiers):
            if v.pubkey == self.pubkey:
                return i
        return None

    # --- lifecycle ---------------------------------------------------------------------------

    def replay_log(self) -> int:
        """Rebuild the state from the durable log (after a restart or a crash)."""
        count = 0
        for entry in self.store.entries():
            try:
                if entry.kind == "tick":
                    self.chain.tick(entry.now, entry.received_at)
                else:
                    self.chain.apply(decode_message(entry.data, MAX_GOSSIP_BYTES), entry.now, entry.received_at)
                count += 1
            except InvalidInput as exc:  # cannot happen unless the code changed between runs
                log.warning("log entry %d no longer applies: %s", entry.seq, exc)
        log.info("replayed %d log entries", count)
        return count

    async def run(self) -> None:
        from aiohttp import web

        from .auth import ensure_api_token
        from .http import build_app
        from .p2p import P2PConfig, P2PNetwork

        if self.config.rpc_url:  # before anything listens: a node refuses a chain it cannot trust
            await self.settlement_start()
        self.replay_log()
        from .startup import check_membership, start_http, start_p2p

        if not self.config.rpc_url:  # on a chain, stake lives in the contract (the settlement checks it)
            check_membership(self)
        validators = {topic: make_topic_validator(topic) for topic in TOPICS}
        self.net = P2PNetwork(P2PConfig(identity_seed=self.key.node_seed, listen_host=self.config.listen_host,
                                        listen_port=self.config.listen_port,
                                        bootstrap=self.config.bootstrap, topics=TOPICS,
                                        max_gossip_bytes=MAX_GOSSIP_BYTES,
                                        request_timeout_s=self.config.fetch_timeout_s,
                                        # relayed per author: twice what this node processes, so the node's
                                        # own budget still sees (and scores) a flooder before libp2p cuts it
                                        origin_rate_per_s=2 * self.limits.gossip_per_s,
                                        origin_burst=2 * self.limits.gossip_burst),
                              validators=validators)
        self.net.set_request_handler(PROTO_SYNC, self.guard.serving(self._serve_sync))
        self.net.set_request_handler(PROTO_PROOF, self.guard.serving(self.worker.serve_proof))
        self.net.set_request_handler(PROTO_CHUNK, self.guard.serving(self.worker.chunk_server.serve))
        await start_p2p(self)
        index = self.verifier_index
        if index is not None and self.genesis.verifiers[index].peer_id != self.net.peer_id:
            log.warning("this node's peer id %s differs from the genesis entry %s", self.net.peer_id,
                        self.genesis.verifiers[index].peer_id)
        runner = web.AppRunner(build_app(self, ensure_api_token(self.config.data_dir)), access_log=None)
        await runner.setup()
        self.http_port = await start_http(self, runner)
        log.info("node %s (%s) up: http %s:%d, p2p %s", self.config.role, self.pubkey.hex()[:12],
                 self.config.http_host, self.http_port, self.net.listen_addrs)
        (self.config.data_dir / "ready.json").write_text(encode_canonical({}).hex())  # marker for scripts
        self.watcher.check()  # records the replayed history without announcing it
        from .events import startup_line

        startup_line(self, f"http://{self.config.http_host}:{self.http_port}/")
        for coro in (self._gossip_loop(), self._tick_loop(), self._sync_loop(), self._pending_loop(),
                     self.watcher.run()):
            self.spawn(coro)
        if self.settlement is not None:
            self.spawn(self.settlement.run())
            self.settlement.on_view_changed()
        self.worker.resume()
        try:
            await self._stopping.wait()
        finally:
            log.info("node shutting down")
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await runner.cleanup()
            await self.net.stop()
            self.store.close()
            if self.settlement is not None:
                self.settlement.close()

    def stop(self) -> None:
        self._stopping.set()

    async def settlement_start(self) -> None:
        """Connect to the settlement chain of the config; ``ChainError`` when it cannot be trusted."""
        from .settlement import Settlement

        self.settlement = Settlement(self)
        await self.settlement.start()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed: %r", t.exception(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # --- messages ----------------------------------------------------------------------------

    async def handle_message(self, data: bytes, source: str, peer: str = "", parked_at: float | None = None) -> str:
        """Validate and apply one encoded message; returns 'accept', 'ignore: …' or 'reject: …'."""
        now = self.now()
        try:
            if self.store.has_message(compute_message_id(data)):
                raise GossipIgnore("duplicate message")
            proof = self._find_double_vote(data)
            if proof is not None:
                result = await self.publish_local(proof)
                self.stats["double_votes"] = self.stats.get("double_votes", 0) + 1
                log.warning("verifier %s signed both verdicts on %s; double-vote proof: %s", proof.verifier.hex()[:12],
                            proof.subject.hex()[:12], result)
                raise GossipIgnore(f"signer already cast the other verdict (double-vote proof: {result})")
            msg = self.settlement.validate(data, now) if self.settlement is not None else \
                validate_gossip_message(data, self.chain.state, now)
            self._check_vote_replay(msg)
        except GossipReject as exc:
            self.stats["rejected"] += 1
            if self.guard.should_log():  # rate-limited: a flood of garbage must not flood the log
                log.info("reject %s message from %s: %s", source, peer[-8:] or "-", exc.reason)
            return f"reject: {exc.reason}"
        except GossipIgnore as exc:
            self.stats["ignored"] += 1
            log.debug("ignore %s message from %s: %s", source, peer[-8:] or "-", exc.reason)
            self.guard.park(data, source, peer, exc.reason, parked_at)  # only if it waits for a known key
            return f"ignore: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - a bug must not let a peer crash the node
            self.stats["rejected"] += 1
            log.warning("unexpected error validating a %s message: %r", source, exc)
            return f"reject: internal error {type(exc).__name__}"
        return self._commit(msg, data, source, now)

    def _find_double_vote(self, data: bytes) -> DoubleVoteProof | None:
        """A valid proof if ``data`` is a vote whose signer already cast the other verdict on its subject.

        Checked before the ledger rules, so equivocation is caught even after the claim settled. Both
        signatures are verified (``validate_double_vote``): a forged second vote proves nothing.
        """
        if len(data) > MAX_GOSSIP_BYTES:
            return None
        try:
            msg = decode_message(data, MAX_GOSSIP_BYTES)
        except InvalidInput:
            return None
        if isinstance(msg, Vote):
            earlier: Any = self.chain.votes.get(msg.claim_id, {}).get(msg.verifier)
        elif isinstance(msg, DisputeVote):
            earlier = self.chain.dispute_votes.get(msg.dispute_id, {}).get(msg.verifier)
        else:
            return None
        if earlier is None or earlier.verdict == msg.verdict:
            return None
        try:
            proof = compute_double_vote_proof(earlier, msg)
            validate_double_vote(proof, self.chain.state.verifiers)
        except InvalidInput as exc:
            log.info("conflicting vote is no double-vote proof: %s", exc)
            return None
        return proof

    def _check_vote_replay(self, msg: Message) -> None:
        if isinstance(msg, Vote) and msg.verifier in self.chain.votes.get(msg.claim_id, {}):
            raise GossipIgnore("verifier already voted on this claim")
        if isinstance(msg, DisputeVote) and msg.verifier in self.chain.dispute_votes.get(msg.dispute_id, {}):
            raise GossipIgnore("verifier already voted on this dispute")
        if isinstance(msg, Certificate) and (msg.subject, msg.verdict) in self.chain.certificates:
            raise GossipIgnore("already have a certificate for this subject and verdict")

    def _commit(self, msg: Message, data: bytes, source: str, now: int) -> str:
        wall = time.time()
        try:
            self.chain.apply(msg, now, wall)  # in memory first: a refused message is never logged
        except InvalidInput as exc:
            self.stats["rejected"] += 1
            log.info("ledger refused %s from %s: %s", type(msg).__name__, source, exc)
            return f"reject: {exc}"
        self.store.append(compute_message_id(data), get_kind(msg), data, now, wall, source)
        self.stats["accepted"] += 1
        log.info("applied %s (%s)", describe(msg), source)
        if self.settlement is not None:
            self.settlement.on_message(msg, source)
        self._after_apply(msg)
        self.guard.unlock(msg)
        if self.guard.ready:
            self._pending_event.set()
        return "accept"

    async def publish_local(self, msg: Message) -> str:
        """Apply a message made by this node, then gossip it."""
        data = encode_message(msg)
        result = await self.handle_message(data, "local")
        if result == "accept" or result.startswith("ignore: duplicate"):
            await self.gossip(msg, data)
        return result

    async def gossip(self, msg: Message, data: bytes | None = None) -> None:
        data = data if data is not None else encode_message(msg)
        if self.net is None:  # not started (in-process use)
            return
        try:
            await self.net.publish(TOPIC_OF[type(msg)], data)
            self.stats["published"] += 1
        except Exception as exc:  # noqa: BLE001 - gossip is best effort; sync fills the gap
            log.warning("publish of %s failed: %r", describe(msg), exc)

    def _after_apply(self, msg: Message) -> None:
        if isinstance(msg, Vote):
            self._maybe_aggregate(msg.claim_id, SUBJECT_CLAIM)
            if msg.evidence is not None:
                dispute_id = compute_dispute_id(msg.claim_id, msg.evidence.segment)
                if dispute_id in self.chain.state.disputes:
                    self.worker.on_dispute(dispute_id)
        elif isinstance(msg, DisputeVote):
            self._maybe_aggregate(msg.dispute_id, SUBJECT_DISPUTE)
        elif isinstance(msg, ClaimAnnounced):
            self.worker.on_claim(msg)
        elif isinstance(msg, TaskPosted):
            self.worker.on_task(msg)

    def _maybe_aggregate(self, subject: bytes, kind: int) -> None:
        try:
            cert = self.chain.try_aggregate(subject, kind)
        except InvalidInput as exc:
            log.warning("aggregation failed: %s", exc)
            return
        if cert is not None:
            log.info("aggregated a certificate on %s with signers %s", subject.hex()[:12], list(cert.signers))
            self.spawn(self.publish_local(cert))

    # --- loops -------------------------------------------------------------------------------

    async def _gossip_loop(self) -> None:
        while True:
            item = await self.net.incoming.get()
            if not self.guard.admit(item.from_peer):  # over its budget (or banned): dropped unread
                self.stats["throttled"] = self.stats.get("throttled", 0) + 1
            else:
                self.guard.judge(item.from_peer, await self.handle_message(item.data, "gossip", item.from_peer))
            await self._disconnect_banned()

    async def _disconnect_banned(self) -> None:
        while self.guard.to_disconnect:
            peer = self.guard.to_disconnect.pop()
            self.stats["disconnected"] = self.stats.get("disconnected", 0) + 1
            try:
                self.net.ban(peer, self.limits.ban_s)  # in libp2p too: its gossip is no longer relayed
                await self.net.disconnect(peer)
            except Exception as exc:  # noqa: BLE001 - it may be gone already
                log.debug("disconnecting %s failed: %r", peer[-8:], exc)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            # Authors whose gossip libp2p dropped over budget lose score here too: a flood that never reaches
            # the node's own budget still gets its author banned and disconnected.
            dropped, self.net.over_budget = self.net.over_budget, {}
            for peer, count in dropped.items():
                self.stats["throttled"] = self.stats.get("throttled", 0) + count
                if self.guard.peers.penalize(peer, count * self.limits.throttle_penalty, time.monotonic()):
                    self.guard.to_disconnect.append(peer)
            await self._disconnect_banned()
            now = self.now()
            if self.chain.would_tick(now):
                wall = time.time()
                self.chain.tick(now, wall)
                self.store.append(None, "tick", b"", now, wall, "local")
                log.info("deadlines applied at %d: %s", now, self.chain.get_ledger_report()["claims"])
                # A void claim reopens its task (SPEC.md §16.5): provers may claim it again.
                for task_id, posting in list(self.chain.postings.items()):
                    record = self.chain.state.tasks.get(task_id)
                    if record is not None and record.status == "open":
                        self.worker.on_task(posting)

    async def _pending_loop(self) -> None:
        while True:
            await self._pending_event.wait()
            self._pending_event.clear()
            await asyncio.sleep(0.05)
            # Only what waited for something just applied is retried, each message once per key (an
            # unchanged queue is never re-validated, so its signatures are not checked again and again).
            for item in self.guard.take_ready():
                await self.handle_message(item.data, item.source, item.peer, parked_at=item.at)

    async def _redial_bootstrap(self) -> None:
        """Dial the bootstrap peers we are not connected to: libp2p gives up on one after three early
        failures (a peer still starting), and a node must not stay alone because it started first."""
        connected = set(self.net.connected_peers())
        for addr in self.config.bootstrap:
            if addr.rsplit("/p2p/", 1)[-1] in connected:
                continue
            try:
                await asyncio.wait_for(self.net.connect(addr), timeout=self.config.fetch_timeout_s)
                log.info("connected to bootstrap peer %s", addr)
            except Exception as exc:  # noqa: BLE001 - unreachable now; the next sync round tries again
                log.debug("bootstrap peer %s not reachable yet: %s", addr, exc)

    async def _sync_loop(self) -> None:
        from .p2p import ProtocolNotSupported

        while True:
            await asyncio.sleep(self.config.sync_interval_s * (0.5 + random.random()))
            now = time.monotonic()
            await self._redial_bootstrap()
            for peer in self.net.connected_peers():
                if self._no_sync.get(peer, 0.0) > now:
                    continue
                try:
                    await self.sync_from(peer)
                except ProtocolNotSupported:  # a standard libp2p peer: keep it, just do not ask again soon
                    self._no_sync[peer] = now + 60.0
                    if len(self._no_sync) > 4096:
                        self._no_sync.clear()
                except Exception as exc:  # noqa: BLE001 - a bad or absent peer only costs one round
                    log.debug("sync from %s failed: %r", peer[-8:], exc)
            await self._disconnect_banned()

    async def sync_from(self, peer: str) -> int:
        """Fetch everything ``peer`` logged since our cursor; returns how many items arrived."""
        got = 0
        for _ in range(20):  # bounded: at most 20 pages per round, and the peer's sync budget
            if not self.guard.admit(peer, "sync"):
                break
            since = self._sync_cursor.get(peer, 1)
            raw = await self.net.request(peer, PROTO_SYNC, encode_message(SyncRequest(since, MAX_SYNC_ITEMS)),
                                         timeout=self.config.fetch_timeout_s, max_response_bytes=1 << 20)
            resp = decode_message(raw)
            if not isinstance(resp, SyncResponse) or resp.next < since:
                raise GossipReject("bad sync response")
            for item in resp.items:
                self.guard.judge(peer, await self.handle_message(item, "sync", peer))
            got += len(resp.items)
            self._sync_cursor[peer] = resp.next
            if resp.complete:
                break
        return got

    async def _serve_sync(self, peer: str, request: bytes) -> bytes:
        req = decode_message(request, 1024)
        if not isinstance(req, SyncRequest):
            raise ValueError("expected a sync request")
        rows = self.store.messages_since(req.since, min(req.limit, MAX_SYNC_ITEMS))
        items, size, nxt = [], 0, req.since
        for seq, data in rows:
            if size + len(data) > MAX_SYNC_RESPONSE:
                break
            items.append(data)
            size += len(data)
            nxt = seq + 1
        complete = len(items) == len(rows) and len(rows) < min(req.limit, MAX_SYNC_ITEMS)
        return encode_message(SyncResponse(tuple(items), nxt, complete))


def get_kind(msg: Message) -> str:
    return {TaskPosted: "task_posted", ClaimAnnounced: "claim", Vote: "vote", DisputeVote: "dispute_vote",
            Certificate: "certificate", DoubleVoteProof: "double_vote", ForcedErrorReveal: "forced_reveal"}.get(type(msg), type(msg).__name__)


def describe(msg: Message) -> str:
    if isinstance(msg, Vote):
        return f"vote {'accept' if msg.verdict else 'reject'} on {msg.claim_id.hex()[:12]} by {msg.verifier.hex()[:8]}"
    if isinstance(msg, DisputeVote):
        return f"dispute vote {'upheld' if msg.verdict else 'failed'} on {msg.dispute_id.hex()[:12]}"
    if isinstance(msg, Certificate):
        kind = "claim" if msg.kind == SUBJECT_CLAIM else "dispute"
        return f"certificate {kind} {msg.subject.hex()[:12]} verdict {msg.verdict} signers {list(msg.signers)}"
    return get_kind(msg)
