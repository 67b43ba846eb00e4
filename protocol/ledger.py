"""The ledger's state transition (SPEC.md network chapter, §N.5).

``LedgerState`` is a frozen value. Every ``process_*`` function returns a *new* state, or
raises an ``InvalidInput`` subclass and leaves its argument untouched, so a node can fold
messages in any order it receives them and discard the ones that fail. Time is always
an argument. Money is conserved: the sum of balances, escrows, bonds, stakes and
``burned`` never changes (``get_total_money``).

Settlement is optimistic: an accept certificate starts a challenge window; the escrow goes
to the prover when the window closes with no dispute open. A reject vote with evidence
opens a dispute on one segment; a certificate on the dispute slashes the prover (upheld)
or the challenger (failed). Reject *certificates* are valid but settle nothing: money moves
only on a replay of a specific segment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TypeVar

from . import bls
from .certificate import Certificate, validate_certificate
from .claim import Claim, compute_claim_id, validate_claim_signature
from .constants import BPS, DOMAIN_TASK_POSTED, VERDICT_ACCEPT, VERDICT_REJECT
from .encoding import encode_canonical
from .errors import InsufficientFunds, InvalidCertificate, InvalidTransition, InvalidVote
from .forced import ForcedErrorReveal, is_lazy_accept, validate_forced_reveal
from .economics import compute_claim_bond, compute_claim_sample_milli
from .genesis import Genesis, Params, VerifierEntry, validate_genesis
from .task import compute_task_id, decode_task
from .vote import (
    SUBJECT_DISPUTE,
    ClaimContext,
    DoubleVoteProof,
    Vote,
    compute_dispute_id,
    get_staked_verifier_index,
    validate_double_vote,
    validate_vote,
)

K = TypeVar("K")
V = TypeVar("V")

TASK_OPEN, TASK_CLAIMED, TASK_PAID, TASK_REFUNDED = "open", "claimed", "paid", "refunded"
CLAIM_PENDING, CLAIM_ACCEPTED, CLAIM_PAID, CLAIM_SLASHED, CLAIM_VOID = "pending", "accepted", "paid", "slashed", "void"
DISPUTE_OPEN, DISPUTE_UPHELD, DISPUTE_FAILED, DISPUTE_EXPIRED, DISPUTE_MOOT = "open", "upheld", "failed", "expired", "moot"


@dataclass(frozen=True)
class TaskPosted:
    """A requester's signed offer: the task, its reward (escrowed) and an expiry."""

    task: bytes  # canonical task encoding (protocol.task.encode_task)
    requester: bytes  # BLS public key of a funded account
    reward: int
    expires_at: int  # seconds; an unclaimed task is refunded from then on
    signature: bytes  # over compute_task_posted_message(...)


@dataclass(frozen=True)
class TaskRecord:
    requester: bytes
    reward: int
    escrow: int  # reward while held, 0 once paid or refunded
    expires_at: int
    num_checkpoints: int
    total_steps: int
    checkpoint_interval: int
    status: str
    claim_id: bytes | None = None
    posting_id: bytes = b""  # compute_posting_id of the posting: claims must name it


@dataclass(frozen=True)
class ClaimRecord:
    task_id: bytes
    prover: bytes
    commitment: bytes
    num_checkpoints: int
    sample_milli: int  # mean segments per verifier (1/1000), fixed at registration: slashing cannot change it
    bond: int  # locked while the claim is undecided, 0 afterwards
    registered_at: int
    status: str
    certified_at: int | None = None


@dataclass(frozen=True)
class DisputeRecord:
    claim_id: bytes
    segment: int
    challenger: int  # verifier index
    claimed_root: bytes
    replayed_root: bytes
    opened_at: int
    status: str


@dataclass(frozen=True)
class LedgerState:
    params: Params
    genesis_time: int
    verifiers: tuple[VerifierEntry, ...]  # genesis order; stakes shrink when slashed
    balances: Mapping[bytes, int]
    tasks: Mapping[bytes, TaskRecord]
    claims: Mapping[bytes, ClaimRecord]
    disputes: Mapping[bytes, DisputeRecord]
    slashed_double_votes: frozenset[tuple[int, int, bytes]]  # (verifier, kind, subject)
    burned: int = 0
    # Revealed forced-error claims (§16.9): claim id -> checkpoint indices whose roots are pseudo-random.
    forced: Mapping[bytes, frozenset[int]] = field(default_factory=lambda: MappingProxyType({}))
    slashed_lazy: frozenset[tuple[int, bytes]] = frozenset()  # (verifier, claim id)


def _put(mapping: Mapping[K, V], key: K, value: V) -> Mapping[K, V]:
    copy = dict(mapping)
    copy[key] = value
    return MappingProxyType(copy)


def _credit(balances: Mapping[bytes, int], account: bytes, amount: int) -> Mapping[bytes, int]:
    return _put(balances, account, balances.get(account, 0) + amount)


def _debit(balances: Mapping[bytes, int], account: bytes, amount: int, what: str) -> Mapping[bytes, int]:
    have = balances.get(account, 0)
    if have < amount:
        raise InsufficientFunds(f"{what}: account {account.hex()[:16]}… holds {have}, needs {amount}")
    return _put(balances, account, have - amount)


def _slash_stake(state: LedgerState, index: int, bps: int) -> LedgerState:
    entry = state.verifiers[index]
    amount = entry.stake * bps // BPS
    verifiers = state.verifiers[:index] + (replace(entry, stake=entry.stake - amount),) + state.verifiers[index + 1:]
    return replace(state, verifiers=verifiers, burned=state.burned + amount)


def get_initial_state(genesis: Genesis) -> LedgerState:
    """State at genesis; validates the document (proofs of possession included)."""
    validate_genesis(genesis)
    return LedgerState(
        params=genesis.params,
        genesis_time=genesis.genesis_time,
        verifiers=genesis.verifiers,
        balances=MappingProxyType({a.pubkey: a.balance for a in genesis.accounts}),
        tasks=MappingProxyType({}),
        claims=MappingProxyType({}),
        disputes=MappingProxyType({}),
        slashed_double_votes=frozenset(),
    )


def get_total_money(state: LedgerState) -> int:
    """Balances + escrows + bonds + stakes + burned: the same in every state of a network."""
    return (sum(state.balances.values()) + sum(t.escrow for t in state.tasks.values())
            + sum(c.bond for c in state.claims.values()) + sum(v.stake for v in state.verifiers) + state.burned)


def get_claim_context(state: LedgerState, claim_id: bytes) -> ClaimContext:
    claim = state.claims.get(claim_id)
    if claim is None:
        raise InvalidTransition(f"claim {claim_id.hex()[:16]}… is not registered")
    return ClaimContext(claim_id, claim.commitment, claim.num_checkpoints, claim.sample_milli)


def is_claim_settled(claim: ClaimRecord) -> bool:
    return claim.status in (CLAIM_PAID, CLAIM_SLASHED, CLAIM_VOID)


def is_dispute_open_on(state: LedgerState, claim_id: bytes) -> bool:
    return any(d.claim_id == claim_id and d.status == DISPUTE_OPEN for d in state.disputes.values())


# --- tasks and claims -----------------------------------------------------------------------


def compute_task_posted_message(task_id: bytes, requester: bytes, reward: int, expires_at: int) -> bytes:
    body = {"task_id": task_id, "requester": requester, "reward": reward, "expires_at": expires_at}
    return DOMAIN_TASK_POSTED + encode_canonical(body)


def compute_posting_id(posting: TaskPosted) -> bytes:
    """``SHA-256`` of the message the requester signed (SPEC.md §16.3). Claims name it, and it keys the
    run's randomness (§9), so one training run answers exactly one posting."""
    task_id = compute_task_id(decode_task(posting.task))
    return hashlib.sha256(compute_task_posted_message(task_id, posting.requester, posting.reward,
                                                      posting.expires_at)).digest()


def compute_task_posted(secret_key: bytes, task: bytes, reward: int, expires_at: int) -> TaskPosted:
    requester = bls.compute_public_key(secret_key)
    message = compute_task_posted_message(compute_task_id(decode_task(task)), requester, reward, expires_at)
    return TaskPosted(task, requester, reward, expires_at, bls.sign(secret_key, message))


def validate_task_posted(posting: TaskPosted) -> bytes:
    """Task decodes, reward positive, requester signed; returns the task id."""
    task_id = compute_task_id(decode_task(posting.task))
    if posting.reward <= 0:
        raise InvalidTransition("a task's reward must be positive")
    message = compute_task_posted_message(task_id, posting.requester, posting.reward, posting.expires_at)
    bls.validate_signature(posting.requester, message, posting.signature, "task posting signature")
    return task_id


def process_task_posted(state: LedgerState, posting: TaskPosted, now: int) -> LedgerState:
    """Escrow the reward from the requester's balance. Posting the same offer again is a no-op."""
    task_id = validate_task_posted(posting)
    existing = state.tasks.get(task_id)
    if existing is not None:
        if (existing.requester, existing.reward, existing.expires_at) == (
                posting.requester, posting.reward, posting.expires_at):
            return state
        raise InvalidTransition(f"task {task_id.hex()[:16]}… was already posted with other terms")
    if not state.genesis_time <= now < posting.expires_at:
        raise InvalidTransition("task posting is before genesis or already expired")
    task = decode_task(posting.task)
    record = TaskRecord(posting.requester, posting.reward, posting.reward, posting.expires_at,
                        task.num_checkpoints, task.total_steps, task.checkpoint_interval, TASK_OPEN,
                        posting_id=compute_posting_id(posting))
    balances = _debit(state.balances, posting.requester, posting.reward, "task reward")
    return replace(state, balances=balances, tasks=_put(state.tasks, task_id, record))


def process_claim(state: LedgerState, claim: Claim, now: int) -> LedgerState:
    """Register the first valid claim on an open task; lock the prover's bond. Idempotent."""
    claim_id = compute_claim_id(claim.body)
    if claim_id in state.claims:
        return state
    validate_claim_signature(claim)
    body = claim.body
    task = state.tasks.get(body.task_id)
    if task is None:
        raise InvalidTransition(f"claim names unknown task {body.task_id.hex()[:16]}…")
    if task.status != TASK_OPEN or now >= task.expires_at:
        raise InvalidTransition("task is no longer open for claims")
    if (body.num_checkpoints, body.total_steps, body.checkpoint_interval) != (
            task.num_checkpoints, task.total_steps, task.checkpoint_interval):
        raise InvalidTransition("claim's lengths disagree with its task")
    if body.posting_id != task.posting_id:
        # The run's randomness is keyed by the posting (SPEC.md §9): a run for another posting, or an
        # offline run, is not work for this one.
        raise InvalidTransition(f"claim answers posting {body.posting_id.hex()[:16]}…, the task's posting is "
                                f"{task.posting_id.hex()[:16]}…")
    bond = compute_claim_bond(task.reward, state.params)
    samples = compute_claim_sample_milli(task.reward, bond, state.verifiers, state.params)
    record = ClaimRecord(body.task_id, body.prover, body.commitment, body.num_checkpoints, samples, bond, now,
                         CLAIM_PENDING)
    balances = _debit(state.balances, body.prover, bond, "prover bond")
    tasks = _put(state.tasks, body.task_id, replace(task, status=TASK_CLAIMED, claim_id=claim_id))
    return replace(state, balances=balances, tasks=tasks, claims=_put(state.claims, claim_id, record))


# --- settlement -----------------------------------------------------------------------------


def _settle(state: LedgerState, claim_id: bytes, status: str, escrow_to: bytes, bond_to: dict[bytes, int]) -> LedgerState:
    """Close a claim: escrow to one account, the bond split as ``bond_to``, the rest burned."""
    claim = state.claims[claim_id]
    task = state.tasks[claim.task_id]
    assert sum(bond_to.values()) <= claim.bond  # internal invariant, never input-dependent
    balances = _credit(state.balances, escrow_to, task.escrow)
    for account, amount in bond_to.items():
        balances = _credit(balances, account, amount)
    burned = state.burned + claim.bond - sum(bond_to.values())
    task_status = TASK_PAID if escrow_to == claim.prover else TASK_REFUNDED
    tasks = _put(state.tasks, claim.task_id, replace(task, escrow=0, status=task_status))
    claims = _put(state.claims, claim_id, replace(claim, bond=0, status=status))
    disputes = state.disputes
    for dispute_id, dispute in state.disputes.items():
        if dispute.claim_id == claim_id and dispute.status == DISPUTE_OPEN:
            disputes = _put(disputes, dispute_id, replace(dispute, status=DISPUTE_MOOT))
    return replace(state, balances=balances, tasks=tasks, claims=claims, disputes=disputes, burned=burned)


def _void(state: LedgerState, claim_id: bytes, slash_bps: int | None = None) -> LedgerState:
    """No fraud proven but no acceptance either: the bond goes back less the unavailability slash (burned),
    and the task reopens with its escrow, so a prover that claims and never serves cannot take the task from
    the others; an expired task is refunded by the same tick (``process_tick`` step 4)."""
    claim = state.claims[claim_id]
    task = state.tasks[claim.task_id]
    slash = claim.bond * (state.params.slash_unavailable_bps if slash_bps is None else slash_bps) // BPS
    balances = _credit(state.balances, claim.prover, claim.bond - slash)
    tasks = _put(state.tasks, claim.task_id, replace(task, status=TASK_OPEN, claim_id=None))
    claims = _put(state.claims, claim_id, replace(claim, bond=0, status=CLAIM_VOID))
    disputes = state.disputes
    for dispute_id, dispute in state.disputes.items():
        if dispute.claim_id == claim_id and dispute.status == DISPUTE_OPEN:
            disputes = _put(disputes, dispute_id, replace(dispute, status=DISPUTE_MOOT))
    return replace(state, balances=balances, tasks=tasks, claims=claims, disputes=disputes,
                   burned=state.burned + slash)


def process_certificate(state: LedgerState, cert: Certificate, now: int) -> LedgerState:
    """Apply a claim or dispute certificate. Applying it again changes nothing."""
    if cert.kind == SUBJECT_DISPUTE:
        return process_dispute_resolution(state, cert, now)
    claim = state.claims.get(cert.subject)
    if claim is None:
        raise InvalidTransition(f"certificate for unknown claim {cert.subject.hex()[:16]}…")
    validate_certificate(cert, state.verifiers, state.params)
    if cert.verdict == VERDICT_REJECT or claim.status != CLAIM_PENDING:
        return state  # reject quorums settle nothing; a decided claim stays decided
    if now >= claim.registered_at + state.params.availability_window_s:
        raise InvalidTransition("accept certificate arrived after the claim's availability deadline")
    return replace(state, claims=_put(state.claims, cert.subject, replace(claim, status=CLAIM_ACCEPTED,
                                                                          certified_at=now)))


def process_tick(state: LedgerState, now: int) -> LedgerState:
    """Apply every deadline that ``now`` has reached, in key order (deterministic)."""
    p = state.params
    for dispute_id in sorted(state.disputes):
        dispute = state.disputes[dispute_id]
        if dispute.status == DISPUTE_OPEN and now >= dispute.opened_at + p.dispute_window_s:
            # Nobody could settle the replay (e.g. the prover withheld data): no fraud proven,
            # no payment either.
            state = replace(state, disputes=_put(state.disputes, dispute_id, replace(dispute, status=DISPUTE_EXPIRED)))
            if not is_claim_settled(state.claims[dispute.claim_id]):
                state = _void(state, dispute.claim_id)
    for claim_id in sorted(state.claims):
        claim = state.claims[claim_id]
        if is_claim_settled(claim) or is_dispute_open_on(state, claim_id):
            continue
        if claim.status == CLAIM_ACCEPTED and claim.certified_at is not None \
                and now >= claim.certified_at + p.challenge_window_s:
            state = _settle(state, claim_id, CLAIM_PAID, claim.prover, {claim.prover: claim.bond})
        elif claim.status == CLAIM_PENDING and now >= claim.registered_at + p.availability_window_s:
            state = _void(state, claim_id)
    for task_id in sorted(state.tasks):
        task = state.tasks[task_id]
        if task.status == TASK_OPEN and now >= task.expires_at:
            balances = _credit(state.balances, task.requester, task.escrow)
            state = replace(state, balances=balances,
                            tasks=_put(state.tasks, task_id, replace(task, escrow=0, status=TASK_REFUNDED)))
    return state


# --- disputes and slashing ------------------------------------------------------------------


def process_reject_vote(state: LedgerState, vote: Vote, now: int) -> LedgerState:
    """A valid reject vote opens a dispute on its evidence's segment (once per segment)."""
    if vote.verdict != VERDICT_REJECT or vote.evidence is None:
        raise InvalidVote("only a reject vote with evidence opens a dispute")
    validate_vote(vote, get_claim_context(state, vote.claim_id), state.verifiers)
    dispute_id = compute_dispute_id(vote.claim_id, vote.evidence.segment)
    existing = state.disputes.get(dispute_id)
    if existing is not None:
        # One dispute per segment, held by its first valid challenger in the ledger's order of
        # events: the settlement contract's order on chain (SPEC.md §16.7), which every node shares.
        return state
    claim = state.claims[vote.claim_id]
    if is_claim_settled(claim):
        raise InvalidTransition("claim is already settled")
    if claim.certified_at is not None and now >= claim.certified_at + state.params.challenge_window_s:
        raise InvalidTransition("the challenge window has closed")
    dispute = DisputeRecord(vote.claim_id, vote.evidence.segment, get_staked_verifier_index(state.verifiers, vote.verifier),
                            vote.evidence.claimed_root, vote.evidence.replayed_root, now, DISPUTE_OPEN)
    return replace(state, disputes=_put(state.disputes, dispute_id, dispute))


def process_dispute_resolution(state: LedgerState, cert: Certificate, now: int) -> LedgerState:
    """Upheld: prover's bond slashed (challenger paid a share), requester refunded.
    Failed: the challenger's stake is slashed. A resolved dispute ignores later certificates."""
    if cert.kind != SUBJECT_DISPUTE:
        raise InvalidCertificate("not a dispute certificate")
    dispute = state.disputes.get(cert.subject)
    if dispute is None:
        raise InvalidTransition(f"certificate for unknown dispute {cert.subject.hex()[:16]}…")
    validate_certificate(cert, state.verifiers, state.params)
    if dispute.status != DISPUTE_OPEN:
        return state
    p = state.params
    if cert.verdict == VERDICT_ACCEPT:
        state = replace(state, disputes=_put(state.disputes, cert.subject, replace(dispute, status=DISPUTE_UPHELD)))
        claim = state.claims[dispute.claim_id]
        task = state.tasks[claim.task_id]
        challenger = state.verifiers[dispute.challenger].pubkey
        return _settle(state, dispute.claim_id, CLAIM_SLASHED, task.requester,
                       {challenger: claim.bond * p.challenger_reward_bps // BPS})
    state = replace(state, disputes=_put(state.disputes, cert.subject, replace(dispute, status=DISPUTE_FAILED)))
    return _slash_stake(state, dispute.challenger, p.slash_failed_challenge_bps)


def process_double_vote(state: LedgerState, proof: DoubleVoteProof, now: int) -> LedgerState:
    """Slash a verifier that signed both verdicts on one subject; once per (verifier, subject)."""
    index = validate_double_vote(proof, state.verifiers)
    key = (index, proof.kind, proof.subject)
    if key in state.slashed_double_votes:
        return state
    state = replace(state, slashed_double_votes=state.slashed_double_votes | {key})
    return _slash_stake(state, index, state.params.slash_double_vote_bps)



# --- forced errors (§16.9) ------------------------------------------------------------------


def process_forced_reveal(state: LedgerState, reveal: ForcedErrorReveal, now: int) -> LedgerState:
    """Record a revealed forced-error claim. An undecided one becomes void with its whole bond back (a test,
    not an unavailable claim) and its task reopens; a settled one stays settled. Revealing again is a no-op."""
    if reveal.claim_id in state.forced:
        return state
    claim = state.claims.get(reveal.claim_id)
    if claim is None:
        raise InvalidTransition(f"reveal for unknown claim {reveal.claim_id.hex()[:16]}…")
    pseudo = validate_forced_reveal(reveal, claim.commitment, claim.num_checkpoints)
    if not is_claim_settled(claim):
        state = _void(state, reveal.claim_id, slash_bps=0)
    return replace(state, forced=_put(state.forced, reveal.claim_id, pseudo))


def process_lazy_vote(state: LedgerState, vote: Vote, now: int) -> LedgerState:
    """Slash a verifier whose valid accept vote on a revealed forced error proves it did not do the work:
    ``stake · slash_lazy_bps / BPS`` burned, once per (verifier, claim)."""
    pseudo = state.forced.get(vote.claim_id)
    if pseudo is None:
        raise InvalidTransition("the vote's claim is not a revealed forced error")
    if vote.verdict != VERDICT_ACCEPT:
        raise InvalidVote("only an accept vote on a forced error is evidence of laziness")
    claim = state.claims[vote.claim_id]
    index = get_staked_verifier_index(state.verifiers, vote.verifier)
    if (index, vote.claim_id) in state.slashed_lazy:
        return state
    validate_vote(vote, get_claim_context(state, vote.claim_id), state.verifiers)
    if not is_lazy_accept(vote.segments, pseudo, claim.num_checkpoints):
        raise InvalidVote("the vote's sample touches no false segment and the final state is real: not lazy")
    state = replace(state, slashed_lazy=state.slashed_lazy | {(index, vote.claim_id)})
    return _slash_stake(state, index, state.params.slash_lazy_bps)
