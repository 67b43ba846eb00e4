"""The node's defences around ``Node.handle_message``: per-peer budgets, scores, bans and the pending index.

``Guard`` is what ``node/app.py`` calls at its few hooks: before handling a peer's gossip (``admit``), after
(``judge``), when a message is ignored as early (``park``), when one is applied (``unlock``), and around
every request it serves (``serving``). Keys a parked message waits for:

* a vote, or a claim certificate, on an unknown claim: ``b"claim" + claim_id``
* a claim on an unknown task: ``b"task" + task_id``
* a dispute vote, or a dispute certificate, on an unknown dispute: ``b"dispute" + dispute_id``

Anything else ignored (expired, unfunded, already settled) is dropped: nothing we could apply would change
the answer soon, and sync delivers it again if our view was behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.certificate import Certificate
from protocol.claim import compute_claim_id, decode_claim
from protocol.constants import MAX_GOSSIP_BYTES
from protocol.errors import InvalidInput
from protocol.ledger import TaskPosted
from protocol.messages import ClaimAnnounced, Message, decode_message
from protocol.task import compute_task_id, decode_task
from protocol.vote import SUBJECT_CLAIM, DisputeVote, Vote, compute_dispute_id

from .limits import NodeLimits, PeerBook, PendingIndex, PendingItem

log = logging.getLogger(__name__)

# Ignore reasons (protocol/messages.py) of gossip nobody can pay for: a flood of these is valid, signed and
# useless, and stays under any rate budget a node must allow honest peers, so its author pays in score.
_UNFUNDED = ("requester's balance does not cover", "prover's balance does not cover")
_WAITS = ("vote on a claim we have not seen", "claim names a task we have not seen",
          "dispute unknown or already resolved", "certificate on a subject we have not seen")


class Throttled(Exception):
    """A peer asked for more than its budget; it gets an error frame instead of an answer."""


class Guard:
    def __init__(self, limits: NodeLimits) -> None:
        self.limits = limits
        self.peers = PeerBook(limits)
        self.pending = PendingIndex(limits)
        self.ready: list[bytes] = []  # keys applied since the pending loop last ran
        self.to_disconnect: list[str] = []
        self._log_budget = _LogBudget()

    # --- gossip -----------------------------------------------------------------------------

    def admit(self, peer: str, kind: str = "gossip") -> bool:
        """Whether ``peer`` may have one more unit of ``kind`` now (False: drop it unread)."""
        now = time.monotonic()
        if self.peers.allow(peer, kind, now):
            return True
        if self.peers.is_banned(peer, now) and peer not in self.to_disconnect:
            self.to_disconnect.append(peer)
        return False

    def judge(self, peer: str, result: str, gossip: bool = False) -> None:
        """Score the peer by what its message turned out to be (``gossip``: ``peer`` is its signed author)."""
        if not peer:
            return
        now = time.monotonic()
        if result.startswith("reject"):
            if self.peers.reject(peer, now):
                self.to_disconnect.append(peer)
        elif gossip and result.startswith("ignore: ") and result[8:].startswith(_UNFUNDED):
            # Only gossip: a sync page is what the serving peer accepted, possibly on a ledger ahead of ours.
            if self.peers.penalize(peer, self.limits.unfunded_penalty, now):
                self.to_disconnect.append(peer)

    def park(self, data: bytes, source: str, peer: str, reason: str, at: float | None = None) -> bool:
        """Keep an early message under the key it waits for; False if it waits for nothing we know."""
        if not reason.startswith(_WAITS):
            return False
        key = get_wait_key(data)
        if key is None:
            return False
        return self.pending.add(key, PendingItem(data, source, peer, time.time() if at is None else at))

    def unlock(self, msg: Message) -> None:
        for key in get_unlocked_keys(msg):
            self.ready.append(key)

    def take_ready(self) -> list[PendingItem]:
        keys, self.ready = self.ready, []
        items: list[PendingItem] = []
        for key in keys:
            items += self.pending.take(key)
        return items

    # --- requests served --------------------------------------------------------------------

    def serving(self, handler: Callable[[str, bytes], Awaitable[bytes]]) -> Callable[[str, bytes], Awaitable[bytes]]:
        """Wrap a request handler so each peer is served within its budget."""

        async def guarded(peer: str, request: bytes) -> bytes:
            if not self.admit(peer, "serve"):
                raise Throttled(f"peer {peer[-8:]} is over its request budget")
            return await handler(peer, request)

        return guarded

    def should_log(self, now: float | None = None) -> bool:
        return self._log_budget.take(time.monotonic() if now is None else now)

    def report(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "pending_dropped": self.pending.dropped,
                "suppressed_log_lines": self._log_budget.suppressed, "peers": self.peers.report(time.monotonic())}


class _LogBudget:
    """At most ``per_s`` log lines per second about rejected messages (a flood must not flood the log)."""

    def __init__(self, per_s: float = 5.0, burst: float = 20.0) -> None:
        self.per_s, self.burst, self.tokens, self.at, self.suppressed = per_s, burst, burst, 0.0, 0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False


def get_wait_key(data: bytes) -> bytes | None:
    """What an early gossip message waits for (see the module docstring), or None."""
    try:
        msg = decode_message(data, MAX_GOSSIP_BYTES)
        if isinstance(msg, Vote):
            return b"claim" + msg.claim_id
        if isinstance(msg, DisputeVote):
            return b"dispute" + msg.dispute_id
        if isinstance(msg, Certificate):
            return (b"claim" if msg.kind == SUBJECT_CLAIM else b"dispute") + msg.subject
        if isinstance(msg, ClaimAnnounced):
            return b"task" + decode_claim(msg.claim).body.task_id
    except InvalidInput:
        return None
    return None


def get_unlocked_keys(msg: Message) -> list[bytes]:
    """Keys whose parked messages may apply now that ``msg`` has been applied."""
    if isinstance(msg, TaskPosted):
        return [b"task" + compute_task_id(decode_task(msg.task))]
    if isinstance(msg, ClaimAnnounced):
        return [b"claim" + compute_claim_id(decode_claim(msg.claim).body)]
    if isinstance(msg, Vote) and msg.evidence is not None:
        return [b"dispute" + compute_dispute_id(msg.claim_id, msg.evidence.segment)]
    return []
