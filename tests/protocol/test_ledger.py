"""The ledger's state transition (protocol/ledger.py): settlement, disputes, slashing, conservation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vote_cert import PARAMS, Network, make_claim, make_network, make_reject_vote, make_task

from protocol import bls
from protocol.certificate import Certificate, compute_certificate
from protocol.claim import Claim, compute_claim_id, compute_signed_claim
from protocol.errors import InsufficientFunds, InvalidInput, InvalidTransition, InvalidVote
from protocol.ledger import (
    CLAIM_ACCEPTED,
    CLAIM_PAID,
    CLAIM_SLASHED,
    CLAIM_VOID,
    DISPUTE_FAILED,
    DISPUTE_OPEN,
    DISPUTE_UPHELD,
    LedgerState,
    TaskPosted,
    compute_task_posted,
    get_claim_context,
    get_initial_state,
    get_total_money,
    process_certificate,
    process_claim,
    process_double_vote,
    process_reject_vote,
    process_task_posted,
    process_tick,
)
from protocol.vote import (
    DoubleVoteProof,
    Vote,
    compute_dispute_id,
    compute_dispute_vote,
    compute_double_vote_proof,
    compute_vote,
)

T0 = 2_000  # after genesis_time = 1000
REWARD = 100
BOND = PARAMS.prover_bond


@dataclass(frozen=True)
class World:
    net: Network
    genesis_state: LedgerState
    posting: TaskPosted
    claim: Claim
    roots: list[bytes]
    state: LedgerState  # task posted at T0, claim registered at T0
    accept_cert: Certificate
    reject_vote: Vote  # by verifier 2, with evidence
    upheld: Certificate  # dispute certificate of verifiers 0, 1
    failed: Certificate
    double: DoubleVoteProof  # verifier 3


@pytest.fixture(scope="module")
def world() -> World:
    net = make_network()
    genesis_state = get_initial_state(net.genesis)
    posting = compute_task_posted(net.requester_key, make_task(), REWARD, T0 + 5_000)
    claim, roots = make_claim(net.prover_key, posting)
    state = process_claim(process_task_posted(genesis_state, posting, T0), claim, T0)
    ctx = get_claim_context(state, compute_claim_id(claim.body))
    verifiers = net.genesis.verifiers
    accept_cert = compute_certificate([compute_vote(net.verifier_keys[i], ctx) for i in (0, 1)], verifiers)
    reject_vote = make_reject_vote(net.verifier_keys[2], ctx, roots)
    assert reject_vote.evidence is not None
    dispute_id = compute_dispute_id(ctx.claim_id, reject_vote.evidence.segment)
    upheld = compute_certificate([compute_dispute_vote(net.verifier_keys[i], dispute_id, 1) for i in (0, 1)], verifiers)
    failed = compute_certificate([compute_dispute_vote(net.verifier_keys[i], dispute_id, 0) for i in (0, 1)], verifiers)
    double = compute_double_vote_proof(compute_vote(net.verifier_keys[3], ctx),
                                       make_reject_vote(net.verifier_keys[3], ctx, roots))
    return World(net, genesis_state, posting, claim, roots, state, accept_cert, reject_vote, upheld, failed, double)


def _pk(secret_key: bytes) -> bytes:
    return bls.compute_public_key(secret_key)


def test_post_and_claim_lock_funds(world: World) -> None:
    net, s = world.net, world.state
    requester, prover = _pk(net.requester_key), _pk(net.prover_key)
    assert s.balances[requester] == 10_000 - REWARD
    assert s.balances[prover] == 5_000 - BOND
    assert get_total_money(s) == get_total_money(world.genesis_state) == 10_000 + 5_000 + 9
    # The economic rate (k = 2, R = 100, B = 1000, D = 3: (1 - mu)^2 <= 1 - 300/1100) is below PARAMS' floor.
    assert s.claims[compute_claim_id(world.claim.body)].sample_milli == 11_000


def test_accept_pays_after_window_only(world: World) -> None:
    net = world.net
    s = process_certificate(world.state, world.accept_cert, T0 + 10)
    claim_id = compute_claim_id(world.claim.body)
    assert s.claims[claim_id].status == CLAIM_ACCEPTED
    assert process_tick(s, T0 + 10 + PARAMS.challenge_window_s - 1) == s
    paid = process_tick(s, T0 + 10 + PARAMS.challenge_window_s)
    assert paid.claims[claim_id].status == CLAIM_PAID
    assert paid.balances[_pk(net.prover_key)] == 5_000 + REWARD
    assert paid.balances[_pk(net.requester_key)] == 10_000 - REWARD
    assert get_total_money(paid) == get_total_money(world.state)
    assert process_tick(paid, T0 + 10**6) == paid  # paying is not repeated


def test_certificate_is_idempotent(world: World) -> None:
    once = process_certificate(world.state, world.accept_cert, T0 + 10)
    assert process_certificate(once, world.accept_cert, T0 + 20) is once
    # Another valid signer set for the same verdict changes nothing either.
    ctx = get_claim_context(world.state, world.accept_cert.subject)
    other = compute_certificate([compute_vote(world.net.verifier_keys[i], ctx) for i in (0, 1, 2)],
                                world.net.genesis.verifiers)
    assert process_certificate(once, other, T0 + 30) is once


def test_reject_certificate_settles_nothing(world: World) -> None:
    ctx = get_claim_context(world.state, world.accept_cert.subject)
    votes = [make_reject_vote(world.net.verifier_keys[i], ctx, world.roots) for i in (0, 1)]
    assert process_certificate(world.state, compute_certificate(votes, world.net.genesis.verifiers), T0) is world.state


def test_invalid_input_leaves_state_untouched(world: World) -> None:
    before = world.state
    snapshot = (dict(before.balances), dict(before.tasks), dict(before.claims), before.verifiers)
    rich = compute_task_posted(world.net.requester_key, make_task(seed=2), 10**6, T0 + 5_000)
    with pytest.raises(InsufficientFunds):
        process_task_posted(before, rich, T0)
    forged = replace(compute_task_posted(world.net.requester_key, make_task(seed=3), 10, T0 + 5_000), reward=11)
    with pytest.raises(InvalidInput, match="signature"):
        process_task_posted(before, forged, T0)
    with pytest.raises(InvalidTransition, match="other terms"):
        terms = compute_task_posted(world.net.requester_key, world.posting.task, REWARD, world.posting.expires_at + 1)
        process_task_posted(before, terms, T0)
    second, _ = make_claim(world.net.prover_key, world.posting, salt=b"second")
    with pytest.raises(InvalidTransition, match="no longer open"):
        process_claim(before, second, T0)
    with pytest.raises(InvalidVote):
        process_reject_vote(before, replace(world.reject_vote, signature=world.accept_cert.signature), T0)
    assert (dict(before.balances), dict(before.tasks), dict(before.claims), before.verifiers) == snapshot
    # Re-posting the same offer and re-registering the same claim are no-ops.
    assert process_task_posted(before, world.posting, T0 + 1) is before
    assert process_claim(before, world.claim, T0 + 1) is before


def test_unavailable_claim_reopens_task_and_costs_its_prover(world: World) -> None:
    deadline = T0 + PARAMS.availability_window_s
    assert process_tick(world.state, deadline - 1) == world.state
    void = process_tick(world.state, deadline)
    claim_id = compute_claim_id(world.claim.body)
    assert void.claims[claim_id].status == CLAIM_VOID
    slash = BOND * PARAMS.slash_unavailable_bps // 10_000
    assert slash > 0  # a claim that is never served is not free
    assert void.balances[_pk(world.net.prover_key)] == 5_000 - slash
    assert void.burned == world.state.burned + slash
    # The task reopens with its escrow until it expires, then the requester is refunded.
    assert void.tasks[world.claim.body.task_id].status == "open"
    assert void.balances[_pk(world.net.requester_key)] == 10_000 - REWARD
    refunded = process_tick(void, world.posting.expires_at)
    assert refunded.balances[_pk(world.net.requester_key)] == 10_000
    assert get_total_money(refunded) == get_total_money(world.state)
    with pytest.raises(InvalidTransition, match="availability deadline"):
        process_certificate(world.state, world.accept_cert, deadline)


def test_griefer_that_never_serves_cannot_keep_the_task(world: World) -> None:
    """A griefer claims first and serves nothing: it loses part of its bond, and the honest prover's claim
    (same posting) is registered after the void and paid."""
    net = world.net
    griefer_key = net.prover_key  # the funded account plays the griefer; the honest prover gets funds from it
    honest_key = bls.compute_secret_key(b"honest prover seed material 32b!")
    honest, _ = make_claim(honest_key, world.posting, salt=b"honest")
    with pytest.raises(InvalidTransition, match="no longer open"):
        process_claim(world.state, honest, T0 + 1)  # first claim wins while it is pending
    void = process_tick(world.state, T0 + PARAMS.availability_window_s)
    # The honest prover needs a bond: move it from the funded account (a plain transfer, modelled here).
    balances = dict(void.balances)
    balances[_pk(griefer_key)] -= BOND
    balances[_pk(honest_key)] = BOND
    from types import MappingProxyType
    funded = replace(void, balances=MappingProxyType(balances))
    now = T0 + PARAMS.availability_window_s + 1
    s = process_claim(funded, honest, now)
    honest_id = compute_claim_id(honest.body)
    assert s.tasks[honest.body.task_id].claim_id == honest_id
    ctx = get_claim_context(s, honest_id)
    cert = compute_certificate([compute_vote(net.verifier_keys[i], ctx) for i in (0, 1)], net.genesis.verifiers)
    s = process_tick(process_certificate(s, cert, now + 1), now + 1 + PARAMS.challenge_window_s)
    assert s.claims[honest_id].status == CLAIM_PAID
    assert s.balances[_pk(honest_key)] == BOND + REWARD
    assert get_total_money(s) == get_total_money(world.state)


def test_claim_for_another_posting_is_refused(world: World) -> None:
    """One run answers one posting: a claim naming the offline id or another posting is refused."""
    s = process_tick(world.state, T0 + PARAMS.availability_window_s)  # reopened task
    other = compute_task_posted(world.net.requester_key, make_task(seed=9), REWARD, T0 + 5_000)
    for posting_like in (world.posting.task, other):
        claim, _ = make_claim(world.net.prover_key, posting_like, salt=b"elsewhere")
        body = replace(claim.body, task_id=world.claim.body.task_id)
        claim = compute_signed_claim(world.net.prover_key, body)
        with pytest.raises(InvalidTransition, match="posting"):
            process_claim(s, claim, T0 + PARAMS.availability_window_s + 1)


def test_unclaimed_task_expires(world: World) -> None:
    s = process_task_posted(world.genesis_state, world.posting, T0)
    assert process_tick(s, world.posting.expires_at).balances == world.genesis_state.balances


def test_dispute_upheld_slashes_prover(world: World) -> None:
    s = process_certificate(world.state, world.accept_cert, T0 + 10)
    s = process_reject_vote(s, world.reject_vote, T0 + 20)
    assert process_reject_vote(s, world.reject_vote, T0 + 21) is s  # one dispute per segment
    (dispute_id,) = s.disputes
    assert s.disputes[dispute_id].status == DISPUTE_OPEN
    # The open dispute holds the payout past the window.
    assert process_tick(s, T0 + 10 + PARAMS.challenge_window_s) == s
    after = process_certificate(s, world.upheld, T0 + 30)
    claim_id = compute_claim_id(world.claim.body)
    assert after.disputes[dispute_id].status == DISPUTE_UPHELD
    assert after.claims[claim_id].status == CLAIM_SLASHED
    challenger = world.net.genesis.verifiers[2].pubkey
    assert after.balances[challenger] == BOND * PARAMS.challenger_reward_bps // 10_000 == 500
    assert after.burned == 500
    assert after.balances[_pk(world.net.requester_key)] == 10_000
    assert after.balances[_pk(world.net.prover_key)] == 5_000 - BOND
    assert get_total_money(after) == get_total_money(world.state)
    assert process_certificate(after, world.upheld, T0 + 40) is after
    assert process_certificate(after, world.failed, T0 + 40) is after  # a resolved dispute stays resolved


def test_dispute_failed_slashes_challenger_then_pays(world: World) -> None:
    s = process_certificate(world.state, world.accept_cert, T0 + 10)
    s = process_reject_vote(s, world.reject_vote, T0 + 20)
    after = process_certificate(s, world.failed, T0 + 30)
    (dispute,) = after.disputes.values()
    assert dispute.status == DISPUTE_FAILED
    assert after.verifiers[2].stake == 2 - 2 * PARAMS.slash_failed_challenge_bps // 10_000
    paid = process_tick(after, T0 + 10 + PARAMS.challenge_window_s)
    assert paid.claims[compute_claim_id(world.claim.body)].status == CLAIM_PAID
    assert get_total_money(paid) == get_total_money(world.state)


def test_dispute_expiry_voids_claim(world: World) -> None:
    s = process_reject_vote(world.state, world.reject_vote, T0 + 20)
    void = process_tick(s, T0 + 20 + PARAMS.dispute_window_s)
    assert void.claims[compute_claim_id(world.claim.body)].status == CLAIM_VOID
    assert void.verifiers == world.state.verifiers  # the challenger is not punished either


def test_reject_vote_after_window_is_too_late(world: World) -> None:
    s = process_certificate(world.state, world.accept_cert, T0 + 10)
    with pytest.raises(InvalidTransition, match="challenge window"):
        process_reject_vote(s, world.reject_vote, T0 + 10 + PARAMS.challenge_window_s)


def test_double_vote_slashes_once(world: World) -> None:
    s = process_double_vote(world.state, world.double, T0)
    assert s.verifiers[3].stake == 1 - 1 * PARAMS.slash_double_vote_bps // 10_000 == 1  # 5000 bps of 1 rounds to 0
    v = world.genesis_state.verifiers
    state = replace(world.genesis_state, verifiers=v[:3] + (replace(v[3], stake=4),))
    proof = world.double
    slashed = process_double_vote(state, proof, T0)
    assert slashed.verifiers[3].stake == 2 and slashed.burned == 2
    assert process_double_vote(slashed, proof, T0 + 1) is slashed
    assert get_total_money(slashed) == get_total_money(state)


# --- conservation under arbitrary sequences -------------------------------------------------

OPS = ("accept", "reject_vote", "upheld", "failed", "double", "tick", "repost", "reclaim")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 3_000)), max_size=12))
def test_money_is_conserved(world: World, ops: list[tuple[str, int]]) -> None:
    state = world.state
    total = get_total_money(state)
    now = T0
    for op, dt in ops:
        now += dt
        before = state
        try:
            if op == "accept":
                state = process_certificate(state, world.accept_cert, now)
            elif op == "reject_vote":
                state = process_reject_vote(state, world.reject_vote, now)
            elif op == "upheld":
                state = process_certificate(state, world.upheld, now)
            elif op == "failed":
                state = process_certificate(state, world.failed, now)
            elif op == "double":
                state = process_double_vote(state, world.double, now)
            elif op == "tick":
                state = process_tick(state, now)
            elif op == "repost":
                state = process_task_posted(state, world.posting, now)
            else:
                state = process_claim(state, world.claim, now)
        except InvalidInput:
            assert state is before
        assert get_total_money(state) == total
        assert all(v >= 0 for v in state.balances.values())
        assert all(v.stake >= 0 for v in state.verifiers)
    # Once everything is past every deadline, no money is left in escrow or bonds.
    final = process_tick(state, now + 10**6)
    assert all(t.escrow == 0 for t in final.tasks.values()) and all(c.bond == 0 for c in final.claims.values())
    assert get_total_money(final) == total
