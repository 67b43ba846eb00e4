"""The settlement contract on a real anvil chain: each entry point's happy path and money flow."""

from __future__ import annotations

import json

import pytest

from node.evm.anvil import has_eip2537
from node.evm.contract import ARTIFACT_PATH, ContractRevert, compile_settlement, compute_g1_point, load_artifact
from protocol import bls
from protocol.constants import VERDICT_ACCEPT, VERDICT_REJECT
from protocol.vote import SUBJECT_CLAIM, SUBJECT_DISPUTE, compute_subject_message

from .conftest import PARAMS, STAKES, Chain
from .helpers import accept_claim, get_money_in_contract, make_claim, open_dispute, post_and_claim, sign_certificate

REWARD = 5000
BOND = PARAMS.prover_bond


def assert_conserved(chain: Chain) -> None:
    held, accounted = get_money_in_contract(chain.client)
    assert held == accounted


def test_committed_artifact_is_the_compiled_source() -> None:
    fresh = compile_settlement()
    committed = load_artifact()
    assert fresh["bytecode"] == committed["bytecode"], f"stale {ARTIFACT_PATH.name}: run python -m node.evm.compile"
    assert json.dumps(fresh["abi"], sort_keys=True) == json.dumps(committed["abi"], sort_keys=True)
    from node.evm.compile import IMMUTABLES

    immutables = 32 * sum(1 for entry in fresh["abi"] if entry.get("type") == "function"
                          and entry["name"] in IMMUTABLES)
    assert immutables == len(IMMUTABLES) * 32
    # EIP-170: runtime code plus the immutables appended at deployment fit mainnet-like chains
    assert len(bytes.fromhex(fresh["bytecode_runtime"][2:])) + immutables <= 24576


def test_chain_has_bls_precompiles(chain: Chain) -> None:
    assert has_eip2537(chain.anvil.url)


def test_registry_views(chain: Chain) -> None:
    c = chain.client
    assert c.get_verifier_count() == len(STAKES) and c.get_total_stake() == sum(STAKES)
    for i, sk in enumerate(chain.verifier_keys):
        v = c.get_verifier(i)
        assert v.pubkey == bls.compute_public_key(sk) and v.account == chain.accounts[1 + i].address
    registry = c.get_registry()
    assert len(registry.keys) == 3 * len(STAKES) and registry.stakes == STAKES
    # SPEC.md §16.7 registry hash, computed here from the keys alone (not from the contract's words)
    from eth_utils import keccak
    from py_ecc.optimized_bls12_381 import Z1, add
    from py_ecc.optimized_bls12_381.optimized_curve import normalize
    from py_ecc.bls.g2_primitives import pubkey_to_G1

    h = b"\x00" * 32
    apk = Z1
    for sk, stake in zip(chain.verifier_keys, STAKES):
        point = compute_g1_point(bls.compute_public_key(sk))
        x, y = point[16:64], point[80:128]
        words = (int.from_bytes(x[:16], "big") << 128 | int.from_bytes(y[:16], "big"), int.from_bytes(x[16:], "big"),
                 int.from_bytes(y[16:], "big"), stake)
        h = keccak(h + keccak(b"".join(w.to_bytes(32, "big") for w in words)))
        apk = add(apk, pubkey_to_G1(bls.compute_public_key(sk)))
    assert bytes(c.contract.functions.registry_hash().call()) == h
    ax, ay = normalize(apk)
    assert bytes(c.contract.functions.apk_all().call()) == int(ax).to_bytes(64, "big") + int(ay).to_bytes(64, "big")
    assert_conserved(chain)


def test_honest_claim_is_paid_after_the_challenge_window(chain: Chain) -> None:
    requester, prover = chain.as_account(10), chain.as_account(11)
    claim = make_claim("honest")
    t0 = chain.now() + 10
    chain.set_next_time(t0)
    post_and_claim(requester, prover, claim, REWARD, t0 + 5000, BOND)
    assert chain.client.get_task(claim.task_id).status == "claimed"
    assert chain.client.get_claim(claim.claim_id).status == "pending"
    accept_claim(chain.as_account(12), chain.verifier_keys, [0, 1, 2], claim.claim_id)
    record = chain.client.get_claim(claim.claim_id)
    assert record.status == "accepted" and record.certified_at is not None
    chain.set_next_time(record.certified_at + PARAMS.challenge_window - 1)
    with pytest.raises(ContractRevert, match="challenge window has not passed"):
        chain.client.settle_claim(claim.claim_id)
    chain.set_next_time(record.certified_at + PARAMS.challenge_window)
    result = chain.client.settle_claim(claim.claim_id)
    assert [e.name for e in result.events] == ["ClaimPaid"]
    assert chain.client.get_claim(claim.claim_id).status == "paid"
    assert chain.client.get_task(claim.task_id).status == "paid"
    assert prover.get_balance(prover.account.address) == REWARD + BOND  # type: ignore[union-attr]
    assert_conserved(chain)
    before = chain.client.get_contract_balance()
    prover.withdraw(REWARD)
    assert chain.client.get_contract_balance() == before - REWARD
    assert prover.get_balance(prover.account.address) == BOND  # type: ignore[union-attr]
    assert_conserved(chain)


def test_upheld_dispute_slashes_prover_and_pays_challenger(chain: Chain) -> None:
    requester, prover = chain.as_account(10), chain.as_account(11)
    claim = make_claim("cheat", num_checkpoints=9)
    post_and_claim(requester, prover, claim, REWARD, chain.now() + 5000, BOND)
    accept_claim(chain.client, chain.verifier_keys, [0, 1, 2], claim.claim_id)
    dispute_id = open_dispute(chain.client, chain.verifier_keys[3], 3, claim, segment=5)
    assert chain.client.get_dispute(dispute_id).status == "open"
    with pytest.raises(ContractRevert, match="a dispute on the claim is open"):
        chain.client.settle_claim(claim.claim_id)
    sig = sign_certificate(chain.verifier_keys[1:], SUBJECT_DISPUTE, dispute_id, VERDICT_ACCEPT)
    result = chain.client.submit_certificate(SUBJECT_DISPUTE, dispute_id, VERDICT_ACCEPT, [1, 2, 3], sig)
    assert [e.name for e in result.events] == ["DisputeUpheld"]
    assert chain.client.get_dispute(dispute_id).status == "upheld"
    assert chain.client.get_claim(claim.claim_id).status == "slashed"
    reward = BOND * PARAMS.challenger_reward_bps // 10_000
    assert chain.client.get_balance(chain.accounts[4].address) == reward
    assert requester.get_balance(requester.account.address) == REWARD  # type: ignore[union-attr]
    assert chain.client.get_burned() == BOND - reward
    with pytest.raises(ContractRevert, match="dispute is already resolved"):
        chain.client.submit_certificate(SUBJECT_DISPUTE, dispute_id, VERDICT_ACCEPT, [1, 2, 3], sig)
    assert_conserved(chain)


def test_failed_dispute_slashes_challenger_and_claim_continues(chain: Chain) -> None:
    requester, prover = chain.as_account(10), chain.as_account(11)
    claim = make_claim("false-alarm")
    post_and_claim(requester, prover, claim, REWARD, chain.now() + 5000, BOND)
    dispute_id = open_dispute(chain.client, chain.verifier_keys[0], 0, claim, segment=1)
    sig = sign_certificate(chain.verifier_keys[1:], SUBJECT_DISPUTE, dispute_id, VERDICT_REJECT)
    chain.client.submit_certificate(SUBJECT_DISPUTE, dispute_id, VERDICT_REJECT, [1, 2, 3], sig)
    assert chain.client.get_dispute(dispute_id).status == "failed"
    burned = STAKES[0] * PARAMS.slash_failed_challenge_bps // 10_000
    assert chain.client.get_verifier(0).stake == STAKES[0] - burned
    assert chain.client.get_registry().stakes[0] == STAKES[0] - burned
    # the slashed registry still certifies (its stored hash followed the slash)
    accept_claim(chain.client, chain.verifier_keys, [1, 2, 3], claim.claim_id)
    assert chain.client.get_claim(claim.claim_id).status == "accepted"
    assert_conserved(chain)


def test_expired_dispute_voids_claim(chain: Chain) -> None:
    requester, prover = chain.as_account(10), chain.as_account(11)
    claim = make_claim("withheld")
    post_and_claim(requester, prover, claim, REWARD, chain.now() + 5000, BOND)
    dispute_id = open_dispute(chain.client, chain.verifier_keys[2], 2, claim, segment=0)
    opened = chain.client.get_dispute(dispute_id).opened_at
    chain.set_next_time(opened + PARAMS.dispute_window)
    chain.client.expire_dispute(dispute_id)
    assert chain.client.get_dispute(dispute_id).status == "expired"
    assert chain.client.get_claim(claim.claim_id).status == "void"
    task = chain.client.get_task(claim.task_id)  # reopens with its escrow for another prover
    assert (task.status, task.escrow, task.claim_id) == ("open", REWARD, None)
    slash = BOND * PARAMS.slash_unavailable_bps // 10_000
    assert prover.get_balance(prover.account.address) == BOND - slash  # type: ignore[union-attr]
    assert chain.client.get_burned() == slash
    assert_conserved(chain)


def test_unclaimed_task_refund_and_pending_claim_void(chain: Chain) -> None:
    requester, prover = chain.as_account(10), chain.as_account(11)
    lonely, unserved = make_claim("lonely"), make_claim("unserved")
    t0 = chain.now() + 10
    chain.set_next_time(t0)
    requester.post_task(lonely.task_id, REWARD, t0 + 50, lonely.num_checkpoints)
    post_and_claim(requester, prover, unserved, REWARD, t0 + 5000, BOND)
    chain.set_next_time(t0 + 50)
    chain.client.refund_task(lonely.task_id)
    assert chain.client.get_task(lonely.task_id).status == "refunded"
    registered = chain.client.get_claim(unserved.claim_id).registered_at
    chain.set_next_time(registered + PARAMS.availability_window)
    chain.client.settle_claim(unserved.claim_id)
    assert chain.client.get_claim(unserved.claim_id).status == "void"
    assert chain.client.get_task(unserved.task_id).status == "open"  # another prover may take it
    assert requester.get_balance(requester.account.address) == REWARD  # type: ignore[union-attr]
    chain.set_next_time(t0 + 5000)
    chain.client.refund_task(unserved.task_id)
    assert requester.get_balance(requester.account.address) == 2 * REWARD  # type: ignore[union-attr]
    assert_conserved(chain)


def test_double_vote_is_slashed_once(chain: Chain) -> None:
    sk = chain.verifier_keys[1]
    subject = b"\x42" * 32
    accept = bls.sign(sk, compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_ACCEPT))
    reject = bls.sign(sk, compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_REJECT))
    anyone = chain.as_account(15)
    result = anyone.report_double_vote(SUBJECT_CLAIM, subject, 1, accept, reject)
    assert [e.name for e in result.events] == ["DoubleVoteSlashed"]
    assert chain.client.get_verifier(1).stake == STAKES[1] - STAKES[1] * PARAMS.slash_double_vote_bps // 10_000
    assert chain.client.is_double_vote_slashed(1, SUBJECT_CLAIM, subject)
    with pytest.raises(ContractRevert, match="double vote already slashed"):
        anyone.report_double_vote(SUBJECT_CLAIM, subject, 1, accept, reject)
    assert_conserved(chain)


def test_unbonding_then_withdrawal(chain: Chain) -> None:
    verifier = chain.as_account(4)  # verifier 3
    result = verifier.begin_unbonding()
    exit_at = result.events[0].args["exit_at"]
    assert chain.client.get_total_stake() == sum(STAKES) - STAKES[3]
    assert chain.client.get_registry().stakes[3] == 0
    with pytest.raises(ContractRevert, match="verifier is already unbonding"):
        verifier.begin_unbonding()
    chain.set_next_time(exit_at - 1)
    with pytest.raises(ContractRevert, match="unbonding delay has not passed"):
        verifier.withdraw_stake()
    chain.set_next_time(exit_at)
    verifier.withdraw_stake()
    assert verifier.get_balance(chain.accounts[4].address) == STAKES[3]
    with pytest.raises(ContractRevert, match="stake already withdrawn"):
        verifier.withdraw_stake()
    # three of four verifiers remain, all of their stake signs: still a quorum without verifier 3
    claim = make_claim("after-exit")
    post_and_claim(chain.as_account(10), chain.as_account(11), claim, REWARD, chain.now() + 5000, BOND)
    accept_claim(chain.client, chain.verifier_keys, [0, 1], claim.claim_id)
    assert_conserved(chain)


def test_certificate_from_protocol_votes_verifies_on_chain(chain: Chain) -> None:
    """Votes and their aggregate made by protocol/vote.py and protocol/certificate.py, unchanged."""
    from protocol.certificate import compute_certificate
    from protocol.genesis import VerifierEntry
    from protocol.vote import ClaimContext, compute_vote

    claim = make_claim("protocol-votes")
    post_and_claim(chain.as_account(10), chain.as_account(11), claim, REWARD, chain.now() + 5000, BOND)
    ctx = ClaimContext(claim.claim_id, claim.commitment, claim.num_checkpoints, 1)
    entries = [VerifierEntry(bls.compute_public_key(sk), b"", stake, f"p{i}")
               for i, (sk, stake) in enumerate(zip(chain.verifier_keys, STAKES))]
    cert = compute_certificate([compute_vote(chain.verifier_keys[i], ctx) for i in (3, 0, 2)], entries)
    assert cert.signers == (0, 2, 3)
    chain.client.submit_certificate(cert.kind, cert.subject, cert.verdict, cert.signers, cert.signature)
    assert chain.client.get_claim(claim.claim_id).status == "accepted"


def test_chain_without_bls_precompiles_is_refused() -> None:
    from node.evm.anvil import MissingPrecompiles, check_eip2537, find_anvil, start_anvil

    if find_anvil() is None:
        pytest.skip("anvil is not installed (run `make anvil`)")
    with start_anvil(extra_args=("--hardfork", "cancun")) as old_chain:
        assert not has_eip2537(old_chain.url)
        with pytest.raises(MissingPrecompiles, match="no EIP-2537"):
            check_eip2537(old_chain.url)
