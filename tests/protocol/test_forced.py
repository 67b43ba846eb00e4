"""Forced errors catch lazy verifiers (SPEC.md §16.9): ledger rules with real signatures, and a seeded
simulation of a verifier that never replays, against the stated number of claims."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from test_vote_cert import PARAMS, make_network, make_task

from protocol import bls
from protocol.claim import ClaimBody, compute_claim_id, compute_commitment, compute_signed_claim
from protocol.constants import MILLI
from protocol.errors import InvalidTransition, InvalidVote
from protocol.forced import ForcedErrorReveal, compute_forced_roots, is_lazy_accept
from protocol.ledger import (
    CLAIM_VOID,
    compute_posting_id,
    compute_task_posted,
    get_claim_context,
    get_initial_state,
    get_total_money,
    process_claim,
    process_forced_reveal,
    process_lazy_vote,
    process_task_posted,
)
from protocol.sampling import compute_verifier_sample
from protocol.task import compute_task_id, decode_task
from protocol.vote import compute_vote

T0 = 2_000
SECRET = bytes(range(32))


def _forced_world(params=PARAMS, real_final: bool = False):  # type: ignore[no-untyped-def]
    net = make_network(stakes=(3000, 3000, 2000, 1000), params=params)
    posting = compute_task_posted(net.requester_key, make_task(seed=4), 100, T0 + 5_000)
    state = process_task_posted(get_initial_state(net.genesis), posting, T0)
    n = 17
    real = {j: bytes([j]) * 32 for j in range(0, n, 2)}  # r_0 (the initial state) and every even index
    if not real_final:
        real.pop(n - 1)
    roots = compute_forced_roots(SECRET, n, real)
    body = ClaimBody(compute_task_id(decode_task(posting.task)), bls.compute_public_key(net.prover_key),
                     compute_commitment(roots), roots[-1], n, 400, 25, compute_posting_id(posting))
    claim = compute_signed_claim(net.prover_key, body)
    state = process_claim(state, claim, T0)
    reveal = ForcedErrorReveal(compute_claim_id(body), SECRET, tuple(sorted(real.items())))
    return net, state, claim, reveal


def test_lazy_accept_on_a_forced_error_is_slashed() -> None:
    net, state, claim, reveal = _forced_world()
    claim_id = compute_claim_id(claim.body)
    ctx = get_claim_context(state, claim_id)
    lazy = compute_vote(net.verifier_keys[2], ctx)  # accepted without fetching or replaying anything
    with pytest.raises(InvalidTransition, match="not a revealed forced error"):
        process_lazy_vote(state, lazy, T0 + 10)
    with pytest.raises(InvalidTransition, match="not a forced error"):
        process_forced_reveal(state, replace(reveal, secret=bytes(32)), T0 + 10)
    revealed = process_forced_reveal(state, reveal, T0 + 10)
    assert process_forced_reveal(revealed, reveal, T0 + 11) is revealed
    # The test claim is void with its whole bond back and the task reopens for real provers.
    assert revealed.claims[claim_id].status == CLAIM_VOID
    assert revealed.balances[bls.compute_public_key(net.prover_key)] == 5_000
    assert revealed.tasks[claim.body.task_id].status == "open"
    slashed = process_lazy_vote(revealed, lazy, T0 + 20)
    before, after = revealed.verifiers[2].stake, slashed.verifiers[2].stake
    assert after == before - before * PARAMS.slash_lazy_bps // 10_000 < before
    assert process_lazy_vote(slashed, lazy, T0 + 30) is slashed  # once per (verifier, claim)
    assert get_total_money(slashed) == get_total_money(state)
    forged = replace(lazy, signature=compute_vote(net.verifier_keys[3], ctx).signature)
    with pytest.raises(InvalidVote):
        process_lazy_vote(revealed, forged, T0 + 20)  # a vote the verifier never signed proves nothing


def test_accept_touching_only_real_segments_is_not_lazy() -> None:
    pseudo = frozenset({3})
    assert not is_lazy_accept([0, 1, 4, 10], pseudo, 17)  # segments 0..1 and 4.. never touch root 3
    assert is_lazy_accept([2], pseudo, 17) and is_lazy_accept([3], pseudo, 17)
    assert is_lazy_accept([], frozenset({16}), 17)  # the final state was never fetched


def _claims_until_caught(rng: random.Random, forced_fraction: float, segments: int, milli: int,
                         fetches: bool, limit: int) -> int | None:
    """A verifier that never replays: it accepts every claim (after fetching its sampled starts and the
    final state, if ``fetches``; then it abstains when a fetch fails). Returns the claim that caught it."""
    n = segments + 1
    for i in range(1, limit + 1):
        if rng.random() >= forced_fraction:
            continue  # a real claim: accepting it unchecked costs nothing today
        real_final = fetches  # the tester serves a real final state to catch verifiers that fetch
        real = set(range(0, n - 1, 2)) | ({n - 1} if real_final else set())
        pseudo = frozenset(range(n)) - real
        sample = compute_verifier_sample(rng.randbytes(96), segments, milli)
        if fetches and ((n - 1) in pseudo or any(j in pseudo for j in sample)):
            continue  # a fetch failed: it abstains, like an honest verifier would
        if is_lazy_accept(sample, pseudo, n):
            return i
    return None


@pytest.mark.parametrize(("fetches", "milli"), [(False, 41), (True, 368)])
def test_never_replaying_verifier_is_caught_within_the_stated_claims(fetches: bool, milli: int) -> None:
    """Stated bound (SPEC §16.9): with forced fraction f and per-forced-claim catch chance q, a never-replaying
    verifier is caught within ceil(ln 0.01 / ln(1 - f q)) claims with probability >= 99%. q = 1 for one that
    does not fetch; q >= min(1, mu) / 2 for one that fetches its sample and the final state (alternating roots)."""
    f = 0.05
    mu = milli / MILLI
    q = 1.0 if not fetches else min(1.0, mu) / 2
    stated = math.ceil(math.log(0.01) / math.log(1 - f * q))
    rng = random.Random(8 + fetches)
    trials = 400
    caught = sum(_claims_until_caught(rng, f, 100, milli, fetches, stated) is not None for _ in range(trials))
    assert caught / trials >= 0.99 - 3 * math.sqrt(0.99 * 0.01 / trials)
