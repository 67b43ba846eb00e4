"""The node's view of a settlement contract: its confirmed events folded into a ``LedgerState``.

With a settlement chain the contract decides every status and moves every unit of money; gossip
only carries what the chain does not hold (a task's full spec, a claim's body and fetch hints,
votes). ``fold_events`` turns the contract's events, in chain order, into the same ``LedgerState``
the gossip model uses, so the worker, the HTTP API and the devnet read one shape either way:

- ``verifiers`` are the registered ones in registration order (the contract's indices), with
  their active stake (0 once unbonding); ``pop`` and ``peer_id`` come from the genesis when it
  lists the key;
- ``balances`` are keyed by the 20-byte account address (the contract's accounts), not BLS keys;
- times (``registered_at``, ``certified_at``, ``opened_at``) are block timestamps.

A task's step counts come from its gossiped posting; until that arrives the task shows 0 steps
and nobody works on it. ``sample_milli`` is fixed when the claim's event is folded, from the
stakes at that point of the chain, so every node derives the same number.

``ChainBackedState`` is the ``ChainState`` of a node in chain mode: gossip is recorded but moves no
money, ``set_events`` rebuilds the state (after new confirmed events or a reorg), and there are no
local deadline ticks (deadlines are transactions: ``node.settlement``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from protocol.certificate import Certificate
from protocol.claim import compute_claim_id, decode_claim
from protocol.constants import VERDICT_ACCEPT
from protocol.errors import InvalidInput
from protocol.forced import ForcedErrorReveal
from protocol.economics import compute_claim_sample_milli
from protocol.genesis import Genesis, VerifierEntry
from protocol.ledger import (
    CLAIM_ACCEPTED,
    CLAIM_PAID,
    CLAIM_PENDING,
    CLAIM_SLASHED,
    CLAIM_VOID,
    DISPUTE_EXPIRED,
    DISPUTE_FAILED,
    DISPUTE_MOOT,
    DISPUTE_OPEN,
    DISPUTE_UPHELD,
    TASK_CLAIMED,
    TASK_OPEN,
    TASK_PAID,
    TASK_REFUNDED,
    ClaimRecord,
    DisputeRecord,
    LedgerState,
    TaskPosted,
    TaskRecord,
    compute_posting_id,
)
from protocol.messages import ClaimAnnounced, Message
from protocol.task import Task, compute_task_id, decode_task
from protocol.vote import DisputeVote, DoubleVoteProof, Vote

from .chainstate import ChainState, ClaimInfo
from .follower import ChainEvent

log = logging.getLogger(__name__)


def _b(value: Any) -> bytes:
    """An event field as bytes: hex strings (``0x``…, addresses included) decode, bytes pass."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


@dataclass
class FoldExtras:
    """What the fold learns beyond ``LedgerState``: who gets paid, and the transactions behind each subject."""

    verifier_accounts: dict[int, bytes] = field(default_factory=dict)
    claim_accounts: dict[bytes, bytes] = field(default_factory=dict)  # claim id -> prover account
    exiting: set[int] = field(default_factory=set)
    txs: dict[bytes, list[dict[str, Any]]] = field(default_factory=dict)  # subject -> [{event, tx, block}]


def fold_events(genesis: Genesis, events: list[ChainEvent], tasks: dict[bytes, Task],
                posting_ids: dict[bytes, bytes] | None = None) -> tuple[LedgerState, FoldExtras]:
    """The contract's state as the ``LedgerState`` model sees it, from its events in chain order."""
    by_key = {v.pubkey: v for v in genesis.verifiers}
    posting_ids = posting_ids or {}
    verifiers: list[VerifierEntry] = []
    balances: dict[bytes, int] = {}
    task_records: dict[bytes, TaskRecord] = {}
    claims: dict[bytes, ClaimRecord] = {}
    disputes: dict[bytes, DisputeRecord] = {}
    double: set[tuple[int, int, bytes]] = set()
    burned = 0
    extras = FoldExtras()

    def credit(account: bytes, amount: int) -> None:
        balances[account] = balances.get(account, 0) + amount

    def set_stake(index: int, stake: int) -> None:
        verifiers[index] = replace(verifiers[index], stake=stake)

    def moot_others(claim_id: bytes) -> None:
        for d_id, d in list(disputes.items()):
            if d.claim_id == claim_id and d.status == DISPUTE_OPEN:
                disputes[d_id] = replace(d, status=DISPUTE_MOOT)

    def settle(claim_id: bytes, status: str, paid: bool) -> None:
        claim = claims[claim_id]
        task = task_records[claim.task_id]
        task_records[claim.task_id] = replace(task, escrow=0, status=TASK_PAID if paid else TASK_REFUNDED)
        claims[claim_id] = replace(claim, bond=0, status=status)
        moot_others(claim_id)

    for ev in events:
        a, name = ev.args, ev.name
        subject: bytes | None = None
        if name == "Deposited":
            credit(_b(a["account"]), int(a["amount"]))
        elif name == "Withdrawn":
            credit(_b(a["account"]), -int(a["amount"]))
        elif name == "VerifierRegistered":
            pubkey, index = _b(a["pubkey"]), int(a["index"])
            known = by_key.get(pubkey)
            while len(verifiers) <= index:  # indices are dense; this only guards a malformed log
                verifiers.append(VerifierEntry(b"", b"", 0, ""))
            verifiers[index] = VerifierEntry(pubkey, known.pop if known else b"", int(a["stake"]),
                                             known.peer_id if known else "")
            extras.verifier_accounts[index] = _b(a["account"])
        elif name == "UnbondingStarted":
            extras.exiting.add(int(a["index"]))
            set_stake(int(a["index"]), 0)
        elif name == "StakeWithdrawn":
            credit(_b(a["account"]), int(a["amount"]))
            set_stake(int(a["index"]), 0)
        elif name == "TaskPosted":
            subject = task_id = _b(a["task_id"])
            credit(_b(a["requester"]), -int(a["reward"]))
            spec = tasks.get(task_id)
            task_records[task_id] = TaskRecord(
                _b(a["requester"]), int(a["reward"]), int(a["reward"]), int(a["expires_at"]),
                int(a["num_checkpoints"]), spec.total_steps if spec else 0,
                spec.checkpoint_interval if spec else 0, TASK_OPEN, posting_id=posting_ids.get(task_id, b""))
        elif name == "TaskRefunded":
            subject = task_id = _b(a["task_id"])
            credit(_b(a["requester"]), int(a["amount"]))
            task_records[task_id] = replace(task_records[task_id], escrow=0, status=TASK_REFUNDED)
        elif name == "ClaimRegistered":
            subject = claim_id = _b(a["claim_id"])
            task_id, account, bond = _b(a["task_id"]), _b(a["prover"]), int(a["bond"])
            credit(account, -bond)
            task = task_records[task_id]
            task_records[task_id] = replace(task, status=TASK_CLAIMED, claim_id=claim_id)
            samples = compute_claim_sample_milli(task.reward, bond, verifiers, genesis.params)
            claims[claim_id] = ClaimRecord(task_id, _b(a["prover_pubkey"]), _b(a["commitment"]),
                                           int(a["num_checkpoints"]), samples, bond, ev.block_time, CLAIM_PENDING)
            extras.claim_accounts[claim_id] = account
        elif name == "ClaimAccepted":
            subject = claim_id = _b(a["claim_id"])
            claims[claim_id] = replace(claims[claim_id], status=CLAIM_ACCEPTED, certified_at=ev.block_time)
        elif name == "ClaimPaid":
            subject = claim_id = _b(a["claim_id"])
            credit(_b(a["prover"]), int(a["reward"]) + int(a["bond"]))
            settle(claim_id, CLAIM_PAID, paid=True)
        elif name == "ClaimVoided":
            # No fraud proven: the bond goes back less the unavailability slash and the task reopens with
            # its escrow (refund is 0; refund_task returns the escrow once the task expires).
            subject = claim_id = _b(a["claim_id"])
            claim = claims[claim_id]
            task = task_records[claim.task_id]
            credit(task.requester, int(a["refund"]))
            credit(extras.claim_accounts[claim_id], int(a["bond_returned"]))
            burned += int(a["bond_burned"])
            task_records[claim.task_id] = replace(task, escrow=task.escrow - int(a["refund"]), status=TASK_OPEN,
                                                  claim_id=None)
            claims[claim_id] = replace(claim, bond=0, status=CLAIM_VOID)
            moot_others(claim_id)
        elif name == "DisputeOpened":
            subject = dispute_id = _b(a["dispute_id"])
            disputes[dispute_id] = DisputeRecord(_b(a["claim_id"]), int(a["segment"]), int(a["challenger"]),
                                                 _b(a["claimed_root"]), _b(a["replayed_root"]), ev.block_time,
                                                 DISPUTE_OPEN)
        elif name == "DisputeUpheld":
            subject = dispute_id = _b(a["dispute_id"])
            dispute = disputes[dispute_id]
            claim = claims[dispute.claim_id]
            disputes[dispute_id] = replace(dispute, status=DISPUTE_UPHELD)
            credit(extras.verifier_accounts[dispute.challenger], int(a["challenger_reward"]))
            credit(task_records[claim.task_id].requester, int(a["refund"]))
            burned += int(a["bond_burned"])
            settle(dispute.claim_id, CLAIM_SLASHED, paid=False)
        elif name == "DisputeFailed":
            subject = dispute_id = _b(a["dispute_id"])
            disputes[dispute_id] = replace(disputes[dispute_id], status=DISPUTE_FAILED)
            index, amount = int(a["challenger"]), int(a["stake_burned"])
            set_stake(index, verifiers[index].stake - amount)
            burned += amount
        elif name == "DisputeExpired":
            subject = dispute_id = _b(a["dispute_id"])
            disputes[dispute_id] = replace(disputes[dispute_id], status=DISPUTE_EXPIRED)
        elif name == "DoubleVoteSlashed":
            index, amount = int(a["verifier"]), int(a["stake_burned"])
            subject = _b(a["subject"])
            double.add((index, int(a["kind"]), subject))
            set_stake(index, max(0, verifiers[index].stake - amount))
            burned += amount
        else:
            log.debug("event %s changes nothing in the view", name)
        if subject is not None:
            extras.txs.setdefault(subject, []).append(
                {"event": name, "tx": "0x" + ev.tx_hash.hex(), "block": ev.block_number, "time": ev.block_time})
    state = LedgerState(
        params=genesis.params, genesis_time=genesis.genesis_time, verifiers=tuple(verifiers),
        balances=MappingProxyType(balances), tasks=MappingProxyType(task_records),
        claims=MappingProxyType(claims), disputes=MappingProxyType(disputes),
        slashed_double_votes=frozenset(double), burned=burned)
    return state, extras


class ChainBackedState(ChainState):
    """``ChainState`` whose ledger is the contract's (``set_events``); gossip is recorded, never folded."""

    def __post_init__(self) -> None:
        self.events: list[ChainEvent] = []
        self.extras = FoldExtras()
        self.task_specs: dict[bytes, Task] = {}
        self.state, self.extras = fold_events(self.genesis, [], {})

    def set_events(self, events: list[ChainEvent], wall: float) -> None:
        """Rebuild the view from the contract's confirmed events (all of them, in chain order)."""
        self.events = list(events)
        self._refold(wall)

    def _refold(self, wall: float) -> None:
        try:
            self.state, self.extras = fold_events(self.genesis, self.events, self.task_specs,
                                                  {t: compute_posting_id(p) for t, p in self.postings.items()})
        except (KeyError, IndexError, ValueError, InvalidInput) as exc:  # a log the fold cannot place
            log.error("contract events do not fold into a ledger view: %r", exc)
            return
        self._sync_claim_times(wall)

    def _sync_claim_times(self, wall: float) -> None:
        """Wall-clock times of the chain's acceptance and settlement as this node first saw them;
        a reorg that undid one clears it."""
        for claim_id, info in self.claims.items():
            record = self.state.claims.get(claim_id)
            if record is None or record.certified_at is None:
                info.certified_at = info.certificate_verdict = None
            elif info.certified_at is None:
                info.certified_at, info.certificate_verdict = wall, VERDICT_ACCEPT
            if record is None or record.status not in (CLAIM_PAID, CLAIM_SLASHED, CLAIM_VOID):
                info.settled_at = None
        self._mark_settled(wall)

    def apply(self, msg: Message, now: int, wall: float) -> None:
        if isinstance(msg, TaskPosted):
            task = decode_task(msg.task)
            task_id = compute_task_id(task)
            self.postings.setdefault(task_id, msg)
            self.task_specs.setdefault(task_id, task)
            self._refold(wall)
        elif isinstance(msg, ClaimAnnounced):
            claim = decode_claim(msg.claim)
            self.claims.setdefault(compute_claim_id(claim.body), ClaimInfo(claim, msg.fetch, wall))
            self._sync_claim_times(wall)
        elif isinstance(msg, Vote):
            self.votes.setdefault(msg.claim_id, {})[msg.verifier] = msg
        elif isinstance(msg, DisputeVote):
            self.dispute_votes.setdefault(msg.dispute_id, {})[msg.verifier] = msg
        elif isinstance(msg, Certificate):
            self.certificates.setdefault((msg.subject, msg.verdict), msg)  # certified_at: when the chain says so
        elif isinstance(msg, DoubleVoteProof):
            pass  # the contract slashes (node.settlement submits the proof); nothing to record here
        elif isinstance(msg, ForcedErrorReveal):
            pass  # relayed; the contract has no forced-error entry point, so it moves no money (§16.8)
        else:
            raise TypeError(f"{type(msg).__name__} is not a ledger message")
        self.applied += 1

    def tick(self, now: int, wall: float) -> bool:
        return False  # deadlines are contract calls, applied by whoever submits them first

    def would_tick(self, now: int) -> bool:
        return False

    def get_claim_report(self, claim_id: bytes) -> dict[str, Any]:
        """The model's claim report plus the contract events behind it (task, claim, its disputes)."""
        report = super().get_claim_report(claim_id)
        record = self.state.claims.get(claim_id)
        subjects = [self.claims[claim_id].claim.body.task_id, claim_id]
        subjects += [d_id for d_id, d in self.state.disputes.items() if d.claim_id == claim_id]
        txs = sorted((tx for s in subjects for tx in self.extras.txs.get(s, [])), key=lambda t: (t["block"], t["tx"]))
        report["chain_txs"] = txs
        report["registered_block_time"] = record.registered_at if record else None
        settled = [t["time"] for t in txs if t["event"] in ("ClaimPaid", "ClaimVoided", "DisputeUpheld")]
        report["settled_block_time"] = settled[0] if settled else None
        return report

    def get_ledger_report(self) -> dict[str, Any]:
        report = super().get_ledger_report()
        report["settlement"] = "chain"
        report["events"] = len(self.events)
        return report
