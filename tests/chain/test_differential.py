"""Differential tests: the same random actions applied to protocol/ledger.py (the model) and to the
deployed contract end in the same balances, stakes, statuses and burned total (SPEC.md §16.7).

Identities: model accounts are BLS keys; on chain each is an Ethereum account. Model balances are
the contract's internal balances (both start from the same deposits). Block times are set exactly,
so the model's ``now`` is the block's timestamp. Deadlines: the model applies them in
``process_tick``; on chain the harness sends the poke the tick implies (expire_dispute,
settle_claim, refund_task) in the same order. Each example runs in an anvil snapshot.

CI runs a few examples; ``POL_CHAIN_EXAMPLES=200 make soak`` (or pytest with the variable) runs more.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.evm.contract import ContractRevert
from protocol import bls
from protocol.certificate import Certificate
from protocol.claim import ClaimBody, compute_claim_id, compute_commitment, compute_signed_claim
from protocol.constants import OFFLINE_POSTING_ID, VERDICT_ACCEPT, VERDICT_REJECT
from protocol.errors import InvalidInput
from protocol.genesis import Account, Genesis, Params, VerifierEntry
from protocol.ledger import (
    LedgerState,
    compute_task_posted,
    get_initial_state,
    get_total_money,
    process_certificate,
    process_claim,
    process_double_vote,
    process_reject_vote,
    process_task_posted,
    process_tick,
)
from protocol.merkle import compute_merkle_proof
from protocol.task import compute_task_id, decode_task, encode_task, parse_task_toml
from protocol.vote import (
    SUBJECT_CLAIM,
    SUBJECT_DISPUTE,
    ClaimContext,
    DoubleVoteProof,
    compute_evidence,
    compute_subject_message,
    compute_vote,
)

from .conftest import PARAMS, STAKES, Chain, get_bls_key

EXAMPLES = int(os.environ.get("POL_CHAIN_EXAMPLES", "3"))
MODEL_PARAMS = Params(challenge_window_s=PARAMS.challenge_window, availability_window_s=PARAMS.availability_window,
                      dispute_window_s=PARAMS.dispute_window, prover_bond=PARAMS.prover_bond,
                      slash_double_vote_bps=PARAMS.slash_double_vote_bps,
                      slash_failed_challenge_bps=PARAMS.slash_failed_challenge_bps,
                      challenger_reward_bps=PARAMS.challenger_reward_bps,
                      slash_unavailable_bps=PARAMS.slash_unavailable_bps, bond_reward_bps=PARAMS.bond_reward_bps,
                      deterrence_bps=10_000 + PARAMS.bond_reward_bps,
                      min_sample_milli=4_000)  # every verifier samples all 4 segments: a reject always has one
TASK_TOML = """
[task]
name = "chain-diff"
seed = {seed}
total_steps = 40
checkpoint_interval = 10
batch_size = 8
[model]
family = "mlp"
[data]
adapter = "sklearn-digits"
sha256 = "{sha}"
[optim]
[schedule]
"""
REQUESTER_FUNDS, PROVER_FUNDS = 20_000, 3_000
REQUESTER_ACCOUNT, PROVER_ACCOUNTS = 10, (11, 12)
TASKS = tuple(encode_task(parse_task_toml(TASK_TOML.format(seed=s, sha="cd" * 32))) for s in (1, 2, 3))


@dataclass
class World:
    chain: Chain
    requester: bytes  # BLS secret keys
    provers: tuple[bytes, ...]
    address: dict[bytes, str]  # model account (BLS public key) -> Ethereum account
    state: LedgerState
    claims: list[tuple[ClaimBody, tuple[bytes, ...], bytes]]  # (body, roots, prover key) tried so far


def _initial_model(chain: Chain) -> tuple[LedgerState, bytes, tuple[bytes, ...], dict[bytes, str]]:
    if "diff_model" not in chain.cache:
        requester = get_bls_key("diff-requester")
        provers = tuple(get_bls_key(f"diff-prover-{i}") for i in range(len(PROVER_ACCOUNTS)))
        verifiers = tuple(VerifierEntry(bls.compute_public_key(sk), pop, stake, f"peer{i}")
                          for i, (sk, pop, stake) in enumerate(zip(chain.verifier_keys, chain.cache["pops"], STAKES)))
        accounts = (Account(bls.compute_public_key(requester), REQUESTER_FUNDS),
                    *(Account(bls.compute_public_key(p), PROVER_FUNDS) for p in provers))
        genesis = Genesis("chain-diff", 1_000, MODEL_PARAMS, verifiers, accounts)
        address = {bls.compute_public_key(requester): chain.accounts[REQUESTER_ACCOUNT].address}
        for p, index in zip(provers, PROVER_ACCOUNTS):
            address[bls.compute_public_key(p)] = chain.accounts[index].address
        for i, v in enumerate(verifiers):
            address[v.pubkey] = chain.accounts[1 + i].address
        chain.cache["diff_model"] = (get_initial_state(genesis), requester, provers, address)
    result: tuple[LedgerState, bytes, tuple[bytes, ...], dict[bytes, str]] = chain.cache["diff_model"]
    return result


def _claim_of(world: World, task_slot: int, prover_slot: int) -> tuple[ClaimBody, tuple[bytes, ...], bytes]:
    task = decode_task(TASKS[task_slot])
    num = task.num_checkpoints
    roots = tuple(hashlib.sha256(f"{task_slot}/{prover_slot}/{i}".encode()).digest() for i in range(num))
    key = world.provers[prover_slot]
    record = world.state.tasks.get(compute_task_id(task))
    posting_id = record.posting_id if record else OFFLINE_POSTING_ID  # the posting this run answers (§16.3)
    body = ClaimBody(compute_task_id(task), bls.compute_public_key(key), compute_commitment(roots), roots[-1], num,
                     task.total_steps, task.checkpoint_interval, posting_id)
    return body, roots, key


def _both(world: World, model_step: Any, chain_step: Any) -> None:
    """Apply one action to both; either both accept or both refuse (a refusal changes nothing)."""
    try:
        new_state = model_step(world.state)
        model_error: Exception | None = None
    except InvalidInput as exc:
        new_state, model_error = world.state, exc
    try:
        chain_step()
        chain_error: Exception | None = None
    except ContractRevert as exc:
        chain_error = exc
    if (model_error is None) != (chain_error is None) and not (new_state is world.state and chain_error):
        raise AssertionError(f"model: {model_error!r}; chain: {chain_error!r}")
    world.state = new_state


def _next_time(world: World, dt: int = 1) -> int:
    now = world.chain.now() + dt
    world.chain.set_next_time(now)
    return now


def act_post(world: World, task_slot: int, reward: int, life: int) -> None:
    now = _next_time(world)
    posting = compute_task_posted(world.requester, TASKS[task_slot], reward, now + life)
    task = decode_task(TASKS[task_slot])
    client = world.chain.as_account(REQUESTER_ACCOUNT)
    _both(world, lambda s: process_task_posted(s, posting, now),
          lambda: client.post_task(compute_task_id(task), reward, now + life, task.num_checkpoints, value=0))


def act_claim(world: World, task_slot: int, prover_slot: int, forged: bool) -> None:
    now = _next_time(world)
    body, roots, key = _claim_of(world, task_slot, prover_slot)
    world.claims.append((body, roots, key))
    signer = get_bls_key("forger") if forged else key
    claim = compute_signed_claim(signer, body)
    claim_id = compute_claim_id(body)
    client = world.chain.as_account(PROVER_ACCOUNTS[prover_slot])
    binding = bls.sign(signer, client.get_claim_binding_message(claim_id, client.account.address))  # type: ignore[union-attr]
    _both(world, lambda s: process_claim(s, claim, now),
          lambda: client.claim_task(body.task_id, claim_id, body.commitment, body.num_checkpoints,
                                    bls.compute_public_key(key), binding, top_up=False))


def _certificate(world: World, kind: int, subject: bytes, verdict: int, signers: tuple[int, ...],
                 forged: bool) -> Certificate:
    keys = [world.chain.verifier_keys[i] for i in signers]
    message = compute_subject_message(kind, subject, verdict if not forged else 1 - verdict)
    return Certificate(kind, subject, verdict, signers, bls.aggregate_signatures([bls.sign(k, message) for k in keys]))


def act_accept(world: World, claim_slot: int, signers: tuple[int, ...], forged: bool) -> None:
    if not world.claims:
        return
    now = _next_time(world)
    claim_id = compute_claim_id(world.claims[claim_slot % len(world.claims)][0])
    cert = _certificate(world, SUBJECT_CLAIM, claim_id, VERDICT_ACCEPT, signers, forged)
    _both(world, lambda s: process_certificate(s, cert, now),
          lambda: world.chain.client.submit_certificate(SUBJECT_CLAIM, claim_id, VERDICT_ACCEPT, signers, cert.signature))


def act_dispute(world: World, claim_slot: int, verifier: int, forged: bool, pick: int = 0) -> None:
    if not world.claims:
        return
    now = _next_time(world)
    body, roots, _ = world.claims[claim_slot % len(world.claims)]
    claim_id = compute_claim_id(body)
    record = world.state.claims.get(claim_id)
    samples = record.sample_milli if record else MODEL_PARAMS.min_sample_milli
    ctx = ClaimContext(claim_id, body.commitment, body.num_checkpoints, samples)
    sk = world.chain.verifier_keys[verifier]
    sample = compute_vote(sk, ctx).segments
    segment = sample[pick % len(sample)]
    path = compute_merkle_proof(list(roots), segment + 1).path
    evidence = compute_evidence(get_bls_key("forger") if forged else sk, claim_id, segment, roots[segment + 1], path,
                                b"\xee" * 32)
    vote = compute_vote(sk, ctx, evidence)
    _both(world, lambda s: process_reject_vote(s, vote, now),
          lambda: world.chain.client.open_dispute(claim_id, verifier, segment, evidence.claimed_root,
                                                  evidence.claimed_root_path, evidence.replayed_root,
                                                  evidence.signature))


def act_resolve(world: World, dispute_slot: int, verdict: int, signers: tuple[int, ...], forged: bool) -> None:
    disputes = sorted(world.state.disputes)
    if not disputes:
        return
    now = _next_time(world)
    dispute_id = disputes[dispute_slot % len(disputes)]
    cert = _certificate(world, SUBJECT_DISPUTE, dispute_id, verdict, signers, forged)
    _both(world, lambda s: process_certificate(s, cert, now),
          lambda: world.chain.client.submit_certificate(SUBJECT_DISPUTE, dispute_id, verdict, signers, cert.signature))


def act_double_vote(world: World, verifier: int, claim_slot: int, forged: bool) -> None:
    now = _next_time(world)
    subject = compute_claim_id(world.claims[claim_slot % len(world.claims)][0]) if world.claims else b"\x31" * 32
    sk = world.chain.verifier_keys[verifier]
    accept = bls.sign(sk, compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_ACCEPT))
    reject = bls.sign(get_bls_key("forger") if forged else sk,
                      compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_REJECT))
    proof = DoubleVoteProof(SUBJECT_CLAIM, subject, bls.compute_public_key(sk), accept, reject)
    _both(world, lambda s: process_double_vote(s, proof, now),
          lambda: world.chain.client.report_double_vote(SUBJECT_CLAIM, subject, verifier, accept, reject))


def act_time(world: World, dt: int) -> None:
    """Time passes; the model ticks, and the chain gets the pokes that tick implies, in its order."""
    now = world.chain.now() + dt
    before = world.state
    after = process_tick(before, now)
    client = world.chain.client
    pokes: list[Any] = []
    for dispute_id in sorted(after.disputes):
        if before.disputes[dispute_id].status == "open" and after.disputes[dispute_id].status == "expired":
            pokes.append((client.expire_dispute, dispute_id))
    for claim_id in sorted(after.claims):
        if before.claims[claim_id].status != after.claims[claim_id].status:
            pokes.append((client.settle_claim, claim_id))
    for task_id in sorted(after.tasks):
        if before.tasks[task_id].status != "refunded" and after.tasks[task_id].status == "refunded":
            pokes.append((client.refund_task, task_id))
    t = now
    for poke, key in pokes:
        if poke == client.settle_claim and client.get_claim(key).status in ("paid", "void", "slashed"):
            continue  # settled already by the dispute expiry just above, as in the model
        world.chain.set_next_time(t)
        poke(key)
        t += 1
    if not pokes:
        world.chain.mine_at(now)
    world.state = after


def assert_same(world: World, everything: bool) -> None:
    """Balances, stakes, burned and money after every step; tasks, claims, disputes when ``everything``."""
    s, c = world.state, world.chain.client
    for pubkey, address in world.address.items():
        assert s.balances.get(pubkey, 0) == c.get_balance(address), f"balance of {address}"
    assert [v.stake for v in s.verifiers] == [c.get_verifier(i).stake for i in range(len(s.verifiers))]
    assert s.burned == c.get_burned()
    assert get_total_money(s) == REQUESTER_FUNDS + PROVER_FUNDS * len(PROVER_ACCOUNTS) + sum(STAKES)
    assert c.get_contract_balance() == get_total_money(s)
    if not everything:
        return
    for task_id, task in s.tasks.items():
        on_chain = c.get_task(task_id)
        assert (task.status, task.escrow, task.claim_id) == (on_chain.status, on_chain.escrow, on_chain.claim_id)
    for claim_id, claim in s.claims.items():
        on_chain_claim = c.get_claim(claim_id)
        assert (claim.status, claim.bond, claim.registered_at, claim.certified_at) == (
            on_chain_claim.status, on_chain_claim.bond, on_chain_claim.registered_at, on_chain_claim.certified_at)
    for dispute_id, dispute in s.disputes.items():
        on_chain_dispute = c.get_dispute(dispute_id)
        assert (dispute.status, dispute.challenger, dispute.segment) == (
            on_chain_dispute.status, on_chain_dispute.challenger, on_chain_dispute.segment)


signers_st = st.sampled_from([(0, 1, 2), (1, 2, 3), (0, 1, 2, 3), (0, 1), (2, 3), (3,)])
action_st = st.one_of(
    st.tuples(st.just("post"), st.integers(0, 2), st.sampled_from([500, 2_000, 12_000]), st.sampled_from([200, 3_000])),
    st.tuples(st.just("claim"), st.integers(0, 2), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("accept"), st.integers(0, 3), signers_st, st.booleans()),
    st.tuples(st.just("dispute"), st.integers(0, 3), st.integers(0, 3), st.booleans(), st.integers(0, 3)),
    st.tuples(st.just("resolve"), st.integers(0, 3), st.sampled_from([VERDICT_ACCEPT, VERDICT_REJECT]), signers_st,
              st.booleans()),
    st.tuples(st.just("double"), st.integers(0, 3), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("time"), st.sampled_from([30, 120, 600, 1_100])),
)
ACTIONS = {"post": act_post, "claim": act_claim, "accept": act_accept, "dispute": act_dispute,
           "resolve": act_resolve, "double": act_double_vote, "time": act_time}


def run_sequence(chain: Chain, actions: list[tuple[Any, ...]]) -> LedgerState:
    state, requester, provers, address = _initial_model(chain)
    snapshot = chain.rpc("evm_snapshot")
    try:
        start = chain.now() + 10
        state = replace(state, genesis_time=start)
        chain.set_next_time(start)
        chain.as_account(REQUESTER_ACCOUNT).deposit(REQUESTER_FUNDS)
        for index in PROVER_ACCOUNTS:
            chain.as_account(index).deposit(PROVER_FUNDS)
        world = World(chain, requester, provers, address, state, [])
        for i, action in enumerate(actions):
            ACTIONS[action[0]](world, *action[1:])
            assert_same(world, everything=action[0] == "time" or i == len(actions) - 1)
        return world.state
    finally:
        assert chain.rpc("evm_revert", snapshot) is True


def test_scripted_life_of_claims(chain: Chain) -> None:
    """A fixed sequence through every path: paid, upheld, failed, expired, refunded, double vote."""
    final = run_sequence(chain, [
        ("post", 0, 2_000, 3_000), ("post", 1, 2_000, 3_000), ("post", 2, 500, 200),
        ("claim", 0, 0, False), ("claim", 0, 1, False), ("claim", 1, 1, True), ("claim", 1, 1, False),
        ("accept", 0, (0, 1, 2), False), ("accept", 1, (0, 1), False), ("dispute", 2, 3, False),
        ("dispute", 2, 2, False, 1), ("resolve", 0, VERDICT_REJECT, (0, 1, 2), False),
        ("double", 1, 0, False), ("double", 1, 0, False), ("double", 2, 0, True),
        ("time", 120), ("time", 600), ("time", 1_100), ("time", 1_500),  # the void claim's task reopens, expires
    ])
    assert sorted(t.status for t in final.tasks.values()) == ["paid", "refunded", "refunded"]
    assert sorted(c.status for c in final.claims.values()) == ["paid", "void"]
    assert sorted(d.status for d in final.disputes.values()) == ["expired", "failed"]
    assert final.burned > 0 and len(final.slashed_double_votes) == 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(actions=st.lists(action_st, min_size=3, max_size=int(os.environ.get("POL_CHAIN_STEPS", "8"))))
def test_model_and_contract_agree(chain: Chain, actions: list[tuple[Any, ...]]) -> None:
    run_sequence(chain, actions)
