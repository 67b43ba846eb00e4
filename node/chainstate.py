"""The node's view of the network: the ledger state plus the messages behind it.

``ChainState.apply`` folds one already-validated message (or a tick) into the pure
``protocol.ledger`` state with the ``now`` it is given, and records what the HTTP API and the
devnet report: task postings, claims and their fetch hints, votes, certificates, timings.
It performs no I/O: ``node.app`` logs every entry to SQLite *before* applying it, and on restart
re-applies the log in order with the recorded times, which reproduces the state exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from protocol.certificate import Certificate, compute_certificate, get_signed_stake, validate_certificate
from protocol.claim import Claim, compute_claim_id, decode_claim
from protocol.constants import VERDICT_ACCEPT
from protocol.errors import InvalidInput
from protocol.genesis import Genesis, get_total_stake, get_verifier_index, is_quorum
from protocol.economics import compute_claim_bond
from protocol.forced import ForcedErrorReveal
from protocol.ledger import (
    LedgerState,
    TaskPosted,
    get_initial_state,
    get_total_money,
    process_certificate,
    process_claim,
    process_double_vote,
    process_reject_vote,
    process_task_posted,
    process_tick,
    process_forced_reveal,
    process_lazy_vote,
)
from protocol.messages import ClaimAnnounced, Message
from protocol.task import compute_task_id, decode_task
from protocol.vote import SUBJECT_CLAIM, DisputeVote, DoubleVoteProof, Vote, compute_dispute_id

log = logging.getLogger(__name__)


@dataclass
class ClaimInfo:
    claim: Claim
    fetch: tuple[str, ...]
    announced_at: float  # wall clock when this node applied the claim
    certified_at: float | None = None  # wall clock of the first certificate on it
    certificate_verdict: int | None = None
    settled_at: float | None = None


@dataclass
class ChainState:
    genesis: Genesis
    state: LedgerState = field(init=False)
    postings: dict[bytes, TaskPosted] = field(default_factory=dict)
    claims: dict[bytes, ClaimInfo] = field(default_factory=dict)
    votes: dict[bytes, dict[bytes, Vote]] = field(default_factory=dict)  # claim id -> verifier -> vote
    dispute_votes: dict[bytes, dict[bytes, DisputeVote]] = field(default_factory=dict)
    certificates: dict[tuple[bytes, int], Certificate] = field(default_factory=dict)  # (subject, verdict)
    applied: int = 0

    def __post_init__(self) -> None:
        self.state = get_initial_state(self.genesis)

    # --- folding -------------------------------------------------------------------------

    def apply(self, msg: Message, now: int, wall: float) -> None:
        """Fold one message; raises ``InvalidInput`` (state unchanged) when the ledger refuses it."""
        if isinstance(msg, TaskPosted):
            self.state = process_task_posted(self.state, msg, now)
            self.postings[compute_task_id(decode_task(msg.task))] = msg
        elif isinstance(msg, ClaimAnnounced):
            claim = decode_claim(msg.claim)
            claim_id = compute_claim_id(claim.body)
            self.state = process_claim(self.state, claim, now)
            self.claims.setdefault(claim_id, ClaimInfo(claim, msg.fetch, wall))
        elif isinstance(msg, Vote):
            if msg.evidence is not None:
                try:
                    self.state = process_reject_vote(self.state, msg, now)
                except InvalidInput as exc:  # e.g. the claim settled meanwhile: still a valid vote
                    log.info("reject vote opens no dispute: %s", exc)
            self.votes.setdefault(msg.claim_id, {})[msg.verifier] = msg
        elif isinstance(msg, DisputeVote):
            self.dispute_votes.setdefault(msg.dispute_id, {})[msg.verifier] = msg
        elif isinstance(msg, Certificate):
            self.state = process_certificate(self.state, msg, now)
            self.certificates.setdefault((msg.subject, msg.verdict), msg)
            info = self.claims.get(msg.subject)
            if info is not None and info.certified_at is None:
                info.certified_at, info.certificate_verdict = wall, msg.verdict
        elif isinstance(msg, DoubleVoteProof):
            self.state = process_double_vote(self.state, msg, now)
        elif isinstance(msg, ForcedErrorReveal):
            # Every accept vote this node holds on a revealed forced error is checked for laziness (§16.9).
            self.state = process_forced_reveal(self.state, msg, now)
            for vote in self.votes.get(msg.claim_id, {}).values():
                try:
                    self.state = process_lazy_vote(self.state, vote, now)
                except InvalidInput as exc:
                    log.info("vote by %s is no proof of laziness: %s", vote.verifier.hex()[:8], exc)
        else:
            raise TypeError(f"{type(msg).__name__} is not a ledger message")
        self.applied += 1
        self._mark_settled(wall)

    def tick(self, now: int, wall: float) -> bool:
        """Apply deadlines; True when the state changed (the caller logs the tick)."""
        new = process_tick(self.state, now)
        if new is self.state:
            return False
        self.state = new
        self._mark_settled(wall)
        return True

    def would_tick(self, now: int) -> bool:
        return process_tick(self.state, now) is not self.state

    def _mark_settled(self, wall: float) -> None:
        for claim_id, info in self.claims.items():
            record = self.state.claims.get(claim_id)
            if info.settled_at is None and record is not None and record.status in ("paid", "slashed", "void"):
                info.settled_at = wall

    # --- aggregation ---------------------------------------------------------------------

    def try_aggregate(self, subject: bytes, kind: int) -> Certificate | None:
        """A certificate on ``subject`` if some verdict reached quorum and none is known yet."""
        pool: dict[bytes, Any] = self.votes.get(subject, {}) if kind == SUBJECT_CLAIM else \
            self.dispute_votes.get(subject, {})
        verifiers, params = self.state.verifiers, self.state.params
        total = get_total_stake(verifiers)
        for verdict in (VERDICT_ACCEPT, 1 - VERDICT_ACCEPT):
            if (subject, verdict) in self.certificates:
                continue
            votes = [v for v in pool.values() if v.verdict == verdict
                     and (i := get_verifier_index(verifiers, v.verifier)) is not None and verifiers[i].stake > 0]
            if not votes:
                continue
            signers = sorted({get_verifier_index(verifiers, v.verifier) for v in votes})  # type: ignore[type-var]
            if not is_quorum(get_signed_stake(signers, verifiers), total, params):  # type: ignore[arg-type]
                continue
            cert = compute_certificate(votes, verifiers)
            validate_certificate(cert, verifiers, params)
            return cert
        return None

    # --- reports -------------------------------------------------------------------------

    def get_claim_report(self, claim_id: bytes) -> dict[str, Any]:
        info = self.claims[claim_id]
        record = self.state.claims.get(claim_id)
        votes = self.votes.get(claim_id, {})
        dispute = None
        for dispute_id, d in self.state.disputes.items():
            if d.claim_id == claim_id:
                dispute = {"id": dispute_id.hex(), "segment": d.segment, "status": d.status,
                           "challenger": d.challenger, "votes": len(self.dispute_votes.get(dispute_id, {}))}
        certs = [{"verdict": "accept" if verdict == VERDICT_ACCEPT else "reject", "signers": list(c.signers)}
                 for (subject, verdict), c in self.certificates.items() if subject == claim_id]
        disputes = {d_id for d_id, d in self.state.disputes.items() if d.claim_id == claim_id}
        certs += [{"verdict": "upheld" if verdict == VERDICT_ACCEPT else "failed", "signers": list(c.signers)}
                  for (subject, verdict), c in self.certificates.items() if subject in disputes]
        task = self.state.tasks.get(info.claim.body.task_id)
        return {
            "claim_id": claim_id.hex(),
            "task_id": info.claim.body.task_id.hex(),
            "prover": info.claim.body.prover.hex(),
            "status": record.status if record else "unregistered",
            "votes_accept": sum(1 for v in votes.values() if v.verdict == VERDICT_ACCEPT),
            "votes_reject": sum(1 for v in votes.values() if v.verdict != VERDICT_ACCEPT),
            "certificates": certs,
            "dispute": dispute,
            "reward": task.reward if task else None,
            "bond": compute_claim_bond(task.reward, self.state.params) if task else None,  # locked at claim
            "sample_milli": record.sample_milli if record else None,
            "announced_at": info.announced_at,
            "certified_at": info.certified_at,
            "settled_at": info.settled_at,
            "seconds_to_certificate": None if info.certified_at is None else
            round(info.certified_at - info.announced_at, 3),
        }

    def get_ledger_report(self) -> dict[str, Any]:
        s = self.state
        return {
            "balances": {k.hex(): v for k, v in sorted(s.balances.items())},
            "stakes": [v.stake for v in s.verifiers],
            "escrow": sum(t.escrow for t in s.tasks.values()),
            "bonds": sum(c.bond for c in s.claims.values()),
            "burned": s.burned,
            "total_money": get_total_money(s),
            "tasks": {k.hex(): t.status for k, t in sorted(s.tasks.items())},
            "claims": {k.hex(): c.status for k, c in sorted(s.claims.items())},
            "disputes": {k.hex(): d.status for k, d in sorted(s.disputes.items())},
        }


def get_dispute_id_for(vote: Vote) -> bytes | None:
    return None if vote.evidence is None else compute_dispute_id(vote.claim_id, vote.evidence.segment)
