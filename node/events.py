"""Plain log lines for the operator: one at start-up, then one per money event and decision.

The ``pol.events`` logger is what ``pol node`` shows on the terminal by default (the full node log goes
to ``log_file``). Lines come from comparing the node's ledger view with what was last seen, so every
path that changes the state (gossip, sync, local votes, deadline ticks, a replayed log) is covered
without hooks in the message code, and a restart does not repeat history (the first look only records).

Each record carries ``event`` and the ids involved as ``extra`` fields, which ``--log-format json``
prints as keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from protocol.constants import VERDICT_ACCEPT
from protocol.vote import SUBJECT_CLAIM

if TYPE_CHECKING:
    from .app import Node

events = logging.getLogger("pol.events")
POLL_S = 0.25


def emit(event: str, text: str, **fields: Any) -> None:
    events.info(text, extra={"event": event, "fields": fields})


class EventWatcher:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self._claims: set[bytes] = set()
        self._votes: set[tuple[bytes, bytes]] = set()
        self._dispute_votes: set[tuple[bytes, bytes]] = set()
        self._certs: set[tuple[bytes, int]] = set()
        self._claim_status: dict[bytes, str] = {}
        self._dispute_status: dict[bytes, str] = {}
        self._stakes: dict[bytes, int] = {}
        self._seen: tuple[int, int] = (-1, -1)
        self._quiet = True

    def name(self, key: bytes) -> str:
        return self.node.get_name(key)

    def check(self) -> None:
        """Compare the ledger view with the last look and log what changed."""
        chain = self.node.chain
        stamp = (chain.applied, id(chain.state))
        if stamp == self._seen:
            return
        self._seen = stamp
        state, me = chain.state, self.node.pubkey
        for claim_id, info in chain.claims.items():
            if claim_id not in self._claims:
                self._claims.add(claim_id)
                body = info.claim.body
                posting = chain.postings.get(body.task_id)
                task = state.tasks.get(body.task_id)
                self._say("claim_seen", f"claim seen {claim_id.hex()[:12]} by {self.name(body.prover)} on task "
                          f"{body.task_id.hex()[:12]} (reward {task.reward if task else '?'}, bond "
                          f"{state.params.prover_bond}, {body.num_checkpoints - 1} segments)",
                          claim=claim_id.hex(), prover=body.prover.hex(), posted=posting is not None)
        for claim_id, by in chain.votes.items():
            for verifier, vote in by.items():
                if (claim_id, verifier) in self._votes:
                    continue
                self._votes.add((claim_id, verifier))
                self._note_metric(vote)
                verdict = "accept" if vote.verdict == VERDICT_ACCEPT else "reject"
                if verifier == me:
                    seg = "" if vote.evidence is None else f", evidence segment {vote.evidence.segment}"
                    self._say("vote_cast", f"vote cast: {verdict} on claim {claim_id.hex()[:12]} (replayed segments "
                              f"{list(vote.segments)}{seg})", claim=claim_id.hex(), verdict=verdict)
                else:
                    events.debug("vote seen: %s on claim %s by %s", verdict, claim_id.hex()[:12], self.name(verifier))
        for dispute_id, by in chain.dispute_votes.items():
            for verifier, dvote in by.items():
                if (dispute_id, verifier) in self._dispute_votes:
                    continue
                self._dispute_votes.add((dispute_id, verifier))
                self._note_metric(dvote)
                verdict = "upheld" if dvote.verdict == VERDICT_ACCEPT else "failed"
                if verifier == me:
                    self._say("vote_cast", f"vote cast: dispute {dispute_id.hex()[:12]} {verdict}",
                              dispute=dispute_id.hex(), verdict=verdict)
        for key, cert in chain.certificates.items():
            if key in self._certs:
                continue
            self._certs.add(key)
            self._note_metric(cert)
            subject, verdict_code = key
            if cert.kind == SUBJECT_CLAIM:
                kind, verdict = "claim", "accept" if verdict_code == VERDICT_ACCEPT else "reject"
            else:
                kind, verdict = "dispute", "upheld" if verdict_code == VERDICT_ACCEPT else "failed"
            signed = sum(state.verifiers[i].stake for i in cert.signers if i < len(state.verifiers))
            total = sum(v.stake for v in state.verifiers)
            self._say("certificate", f"certificate formed: {kind} {subject.hex()[:12]} {verdict}, signers "
                      f"{', '.join(self.name(state.verifiers[i].pubkey) for i in cert.signers if i < len(state.verifiers))}"
                      f" (stake {signed} of {total})", subject=subject.hex(), kind=kind, verdict=verdict)
        for claim_id, record in state.claims.items():
            old = self._claim_status.get(claim_id)
            if old == record.status:
                continue
            self._claim_status[claim_id] = record.status
            task = state.tasks.get(record.task_id)
            reward = task.reward if task else "?"
            prover = self.name(record.prover)
            if record.status == "paid":
                self._money("escrow_released", f"escrow released: {reward} paid to {prover} for claim "
                            f"{claim_id.hex()[:12]}", claim=claim_id.hex(), prover=record.prover.hex(), amount=reward)
            elif record.status == "slashed":
                self._money("bond_slashed", f"stake slashed: prover {prover} loses its bond "
                            f"{state.params.prover_bond} on claim {claim_id.hex()[:12]}; escrow {reward} refunded "
                            "to the requester", claim=claim_id.hex(), prover=record.prover.hex())
            elif record.status == "void":
                self._money("claim_void", f"claim {claim_id.hex()[:12]} by {prover} void (no certificate in time); "
                            "escrow refunded", claim=claim_id.hex())
            elif record.status == "accepted" and old is not None:
                self._say("claim_accepted", f"claim {claim_id.hex()[:12]} accepted; escrow waits out the "
                          "challenge window", claim=claim_id.hex())
        for dispute_id, d in state.disputes.items():
            old = self._dispute_status.get(dispute_id)
            if old == d.status:
                continue
            self._dispute_status[dispute_id] = d.status
            if d.status == "open":
                self._say("dispute_opened", f"dispute opened {dispute_id.hex()[:12]} on claim {d.claim_id.hex()[:12]}"
                          f" segment {d.segment}", dispute=dispute_id.hex(), claim=d.claim_id.hex())
            else:
                self._money(f"dispute_{d.status}", f"dispute {dispute_id.hex()[:12]} {d.status}",
                            dispute=dispute_id.hex())
        for v in state.verifiers:
            old_stake = self._stakes.get(v.pubkey)
            self._stakes[v.pubkey] = v.stake
            if old_stake is not None and v.stake < old_stake:
                self._money("stake_slashed", f"stake slashed: verifier {self.name(v.pubkey)} loses "
                            f"{old_stake - v.stake} (stake now {v.stake})", verifier=v.pubkey.hex(),
                            amount=old_stake - v.stake)
        self._quiet = False

    def _note_metric(self, msg: Any) -> None:
        metrics = getattr(self.node, "metrics", None)
        if metrics is not None and not self._quiet:
            metrics.note_applied(msg)

    def _say(self, event: str, text: str, **fields: Any) -> None:
        if not self._quiet:  # the first look only records what the replayed log already holds
            emit(event, text, **fields)

    def _money(self, event: str, text: str, **fields: Any) -> None:
        metrics = getattr(self.node, "metrics", None)
        if metrics is not None and not self._quiet:
            metrics.events.labels(event).inc()
        self._say(event, text, **fields)

    async def run(self) -> None:
        failed_at = 0.0
        while True:
            self.node.loop_alive_at = time.time()
            try:
                self.check()
            except Exception:  # noqa: BLE001 - reporting must never stop the node
                if time.time() - failed_at > 60:  # once a minute at most: a bug here must not flood the log
                    failed_at = time.time()
                    logging.getLogger(__name__).exception("event report failed")
            await asyncio.sleep(POLL_S)


def startup_line(node: "Node", http_url: str) -> None:
    idx = node.verifier_index
    stake = node.chain.state.verifiers[idx].stake if idx is not None else 0
    balance = node.chain.state.balances.get(node.pubkey, 0)
    role = node.config.role + (f" #{idx}" if idx is not None else "")
    addrs = list(node.config.announce_addrs) or list(node.net.listen_addrs)
    emit("started", f"node up: {role} {node.get_name(node.pubkey)}, peer id {node.net.peer_id}, "
         f"p2p {', '.join(addrs)}, api {http_url}, stake {stake}, balance {balance}",
         peer_id=node.net.peer_id, listen_addrs=node.net.listen_addrs, announce_addrs=list(node.config.announce_addrs),
         role=node.config.role, stake=stake, balance=balance, public_key=node.pubkey.hex(), http=http_url)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus ``event`` and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "message": record.getMessage()}
        if hasattr(record, "event"):
            doc["event"] = record.event
            doc.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, sort_keys=True)
