"""Bad input to every entry point reverts with a named reason and changes nothing."""

from __future__ import annotations

import hashlib

import pytest
from py_ecc.optimized_bls12_381 import field_modulus as P

from node.evm.contract import ContractRevert, compute_g1_point, compute_g2_point
from protocol import bls
from protocol.constants import VERDICT_ACCEPT, VERDICT_REJECT
from protocol.merkle import compute_merkle_proof
from protocol.vote import SUBJECT_CLAIM, SUBJECT_DISPUTE, compute_evidence_message

from .conftest import PARAMS, Chain, get_bls_key
from .helpers import accept_claim, make_claim, open_dispute, post_and_claim, sign_certificate, submit_claim

BOND = PARAMS.prover_bond


def _compress_g1(x: int, y: int) -> bytes:
    flags = 0x80 | (0x20 if y > (P - 1) // 2 else 0)
    raw = bytearray(x.to_bytes(48, "big"))
    raw[0] |= flags
    return bytes(raw)


def _sqrt(a: int) -> int | None:
    r = pow(a, (P + 1) // 4, P)
    return r if r * r % P == a else None


def _point_outside_subgroup() -> tuple[bytes, bytes]:
    """A point on y^2 = x^3 + 4 that is not in the prime-order subgroup (the cofactor is large)."""
    for x in range(1, 1000):
        y = _sqrt((x ** 3 + 4) % P)
        if y is not None:
            return _compress_g1(x, y), x.to_bytes(64, "big") + y.to_bytes(64, "big")
    raise AssertionError("no curve point found")


def expect_revert(reason: str, call, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContractRevert) as info:
        call(*args, **kwargs)
    assert reason in info.value.reason, info.value.reason


# --- registration -------------------------------------------------------------------------------------------


def test_register_rejects_malformed_keys(chain: Chain) -> None:
    newcomer = chain.as_account(16)
    sk = get_bls_key("newcomer")
    pk, pop = bls.compute_public_key(sk), bls.compute_pop(sk)
    point = compute_g1_point(pk)
    count = chain.client.get_verifier_count()
    expect_revert("public key must be 48 bytes", newcomer.register, pk[:47], pop, 10, point=point)
    expect_revert("public key must be 48 bytes", newcomer.register, pk + b"\x00", pop, 10, point=point)
    expect_revert("public key point must be 128 bytes", newcomer.register, pk, pop, 10, point=point[:127])
    expect_revert("signature must be 256 bytes", newcomer.register, pk, pop, 10,
                  pop_point=compute_g2_point(pop) + b"\x00")
    identity = b"\xc0" + b"\x00" * 47
    expect_revert("point at infinity", newcomer.register, identity, pop, 10, point=b"\x00" * 128)
    expect_revert("point at infinity", newcomer.register, pk, pop, 10, point=b"\x00" * 128)
    expect_revert("not in compressed form", newcomer.register, bytes([pk[0] & 0x1F]) + pk[1:], pop, 10, point=point)
    other = compute_g1_point(bls.compute_public_key(get_bls_key("other")))
    expect_revert("does not match the key", newcomer.register, pk, pop, 10, point=other)
    y = int.from_bytes(point[64:], "big")
    off_curve = point[:64] + ((y + 1) % P).to_bytes(64, "big")
    if ((y + 1) % P > (P - 1) // 2) != (y > (P - 1) // 2):
        off_curve = point[:64] + ((y - 1) % P).to_bytes(64, "big")
    expect_revert("not on the curve", newcomer.register, pk, pop, 10, point=off_curve)
    bad_pk, bad_point = _point_outside_subgroup()
    expect_revert("not in the G1 subgroup", newcomer.register, bad_pk, pop, 10, point=bad_point)
    expect_revert("proof of possession does not verify", newcomer.register, pk, bls.compute_pop(get_bls_key("x")), 10)
    expect_revert("stake below the minimum", newcomer.register, pk, pop, 0)
    taken = chain.verifier_keys[0]
    expect_revert("public key already registered", newcomer.register, bls.compute_public_key(taken),
                  bls.compute_pop(taken), 10)
    expect_revert("account already registered", chain.as_account(1).register, pk, pop, 10)
    assert chain.client.get_verifier_count() == count


def test_pop_is_not_a_vote_signature(chain: Chain) -> None:
    """A signature over the key under the vote DST is no proof of possession (domain separation)."""
    sk = get_bls_key("newcomer")
    pk = bls.compute_public_key(sk)
    expect_revert("proof of possession does not verify", chain.as_account(16).register, pk, bls.sign(sk, pk), 10)


# --- tasks and claims --------------------------------------------------------------------------------------


def test_post_task_reverts(chain: Chain) -> None:
    requester = chain.as_account(10)
    claim = make_claim("post")
    now = chain.now()
    expect_revert("reward must be positive", requester.post_task, claim.task_id, 0, now + 100, 5)
    expect_revert("already expired", requester.post_task, claim.task_id, 10, now - 1, 5)
    expect_revert("num_checkpoints out of range", requester.post_task, claim.task_id, 10, now + 100, 1)
    expect_revert("balance too low", requester.post_task, claim.task_id, 10, now + 100, 5, value=5)
    requester.post_task(claim.task_id, 10, now + 100, 5)
    expect_revert("task already posted", chain.as_account(12).post_task, claim.task_id, 10, now + 100, 5)


def test_claim_reverts_and_mempool_copy_is_refused(chain: Chain) -> None:
    requester, prover, thief = chain.as_account(10), chain.as_account(11), chain.as_account(12)
    claim = make_claim("claim-reverts")
    requester.post_task(claim.task_id, 100, chain.now() + 1000, claim.num_checkpoints)
    pk = bls.compute_public_key(claim.prover_key)
    signed_for_prover = bls.sign(claim.prover_key, prover.get_claim_binding_message(claim.claim_id,
                                                                                    chain.accounts[11].address))
    # a thief replaying the prover's transaction from its own account: the binding names the prover's account
    expect_revert("claim binding signature does not verify", thief.claim_task, claim.task_id, claim.claim_id,
                  claim.commitment, claim.num_checkpoints, pk, signed_for_prover, value=BOND)
    expect_revert("claim's lengths disagree", prover.claim_task, claim.task_id, claim.claim_id,
                  claim.commitment, claim.num_checkpoints + 1, pk, signed_for_prover, value=BOND)
    expect_revert("unknown task", prover.claim_task, b"\x07" * 32, claim.claim_id, claim.commitment,
                  claim.num_checkpoints, pk, signed_for_prover, value=BOND)
    expect_revert("balance too low", prover.claim_task, claim.task_id, claim.claim_id, claim.commitment,
                  claim.num_checkpoints, pk, signed_for_prover, value=BOND - 1, top_up=False)
    infinity = b"\x00" * 256
    expect_revert("point at infinity", prover.claim_task, claim.task_id, claim.claim_id, claim.commitment,
                  claim.num_checkpoints, pk, signed_for_prover, value=BOND, binding_point=infinity)
    submit_claim(prover, claim, BOND)
    second = make_claim("claim-reverts-second")
    expect_revert("no longer open for claims", thief.claim_task, claim.task_id, second.claim_id, claim.commitment,
                  claim.num_checkpoints, pk, signed_for_prover, value=BOND)
    expect_revert("task is no longer open for claims", submit_claim, prover, claim, BOND)
    assert chain.client.get_claim(claim.claim_id).prover == chain.accounts[11].address


# --- certificates --------------------------------------------------------------------------------------------


def test_certificate_reverts(chain: Chain) -> None:
    claim = make_claim("cert-reverts")
    post_and_claim(chain.as_account(10), chain.as_account(11), claim, 100, chain.now() + 5000, BOND)
    keys = chain.verifier_keys
    c = chain.client
    good = sign_certificate(keys[:3], SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT)
    expect_revert("less than the quorum", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT,
                  [0, 1], sign_certificate(keys[:2], SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT))
    expect_revert("aggregate signature does not verify", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_ACCEPT, [0, 1, 3], good)
    replay = sign_certificate(keys[:3], SUBJECT_CLAIM, b"\x01" * 32, VERDICT_ACCEPT)  # another subject's quorum
    expect_revert("aggregate signature does not verify", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_ACCEPT, [0, 1, 2], replay)
    expect_revert("signer index outside the registry", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_ACCEPT, [0, 1, 2, 7], good)
    expect_revert("no signers", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT, [], good)
    expect_revert("unknown verdict", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id, 2, [0, 1, 2], good)
    expect_revert("a reject certificate settles nothing", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_REJECT, [0, 1, 2], good)
    expect_revert("certificate for unknown claim", c.submit_certificate, SUBJECT_CLAIM, b"\x05" * 32,
                  VERDICT_ACCEPT, [0, 1, 2], good)
    expect_revert("certificate for unknown dispute", c.submit_certificate, SUBJECT_DISPUTE, b"\x05" * 32,
                  VERDICT_ACCEPT, [0, 1, 2], good)
    expect_revert("point at infinity", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT,
                  [0, 1, 2], good, signature_point=b"\x00" * 256)
    expect_revert("signature must be 256 bytes", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_ACCEPT, [0, 1, 2], good, signature_point=compute_g2_point(good)[:255])
    off = bytearray(compute_g2_point(good))
    off[255] ^= 1
    expect_revert("not a G2 point on the curve", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_ACCEPT, [0, 1, 2], good, signature_point=bytes(off))
    registry = c.get_registry()
    forged = type(registry)(registry.keys, (registry.stakes[0] * 10,) + registry.stakes[1:])
    expect_revert("registry does not match", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT,
                  [0, 1, 2], good, registry=forged)
    short = type(registry)(registry.keys[:-3], registry.stakes[:-1])
    expect_revert("wrong number of verifiers", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_ACCEPT, [0, 1, 2], good, registry=short)
    c.submit_certificate(SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT, [0, 1, 2], good)
    expect_revert("claim is already decided", c.submit_certificate, SUBJECT_CLAIM, claim.claim_id,
                  VERDICT_ACCEPT, [0, 1, 2], good)


def test_certificate_after_availability_deadline(chain: Chain) -> None:
    claim = make_claim("late-cert")
    post_and_claim(chain.as_account(10), chain.as_account(11), claim, 100, chain.now() + 5000, BOND)
    registered = chain.client.get_claim(claim.claim_id).registered_at
    chain.set_next_time(registered + PARAMS.availability_window)
    sig = sign_certificate(chain.verifier_keys[:3], SUBJECT_CLAIM, claim.claim_id, VERDICT_ACCEPT)
    expect_revert("after the availability deadline", chain.client.submit_certificate, SUBJECT_CLAIM,
                  claim.claim_id, VERDICT_ACCEPT, [0, 1, 2], sig)


# --- disputes and double votes ------------------------------------------------------------------------------


def test_open_dispute_reverts(chain: Chain) -> None:
    claim = make_claim("dispute-reverts", num_checkpoints=6)
    post_and_claim(chain.as_account(10), chain.as_account(11), claim, 100, chain.now() + 5000, BOND)
    sk = chain.verifier_keys[0]
    seg = 2
    claimed, replayed = claim.roots[seg + 1], hashlib.sha256(b"replayed").digest()
    path = compute_merkle_proof(list(claim.roots), seg + 1).path
    sig = bls.sign(sk, compute_evidence_message(claim.claim_id, seg, claimed, replayed))
    c = chain.client
    expect_revert("claim is not registered", c.open_dispute, b"\x09" * 32, 0, seg, claimed, path, replayed, sig)
    expect_revert("not a registered verifier", c.open_dispute, claim.claim_id, 9, seg, claimed, path, replayed, sig)
    expect_revert("segment outside the claim", c.open_dispute, claim.claim_id, 0, 5, claimed, path, replayed, sig)
    expect_revert("roots are equal", c.open_dispute, claim.claim_id, 0, seg, claimed, path, claimed, sig)
    expect_revert("not in the prover's commitment", c.open_dispute, claim.claim_id, 0, seg, claim.roots[seg],
                  path, replayed, sig)
    expect_revert("path too short", c.open_dispute, claim.claim_id, 0, seg, claimed, path[:-1],
                  replayed, sig)
    expect_revert("path too long", c.open_dispute, claim.claim_id, 0, seg, claimed,
                  list(path) + [b"\x00" * 32] * 70, replayed, sig)
    expect_revert("evidence signature does not verify", c.open_dispute, claim.claim_id, 1, seg, claimed, path,
                  replayed, sig)
    c.open_dispute(claim.claim_id, 0, seg, claimed, path, replayed, sig)
    other = bls.sign(chain.verifier_keys[1], compute_evidence_message(claim.claim_id, seg, claimed, replayed))
    expect_revert("already exists", c.open_dispute, claim.claim_id, 1, seg, claimed, path, replayed, other)


def test_dispute_after_challenge_window(chain: Chain) -> None:
    claim = make_claim("late-dispute")
    post_and_claim(chain.as_account(10), chain.as_account(11), claim, 100, chain.now() + 5000, BOND)
    accept_claim(chain.client, chain.verifier_keys, [0, 1, 2], claim.claim_id)
    certified = chain.client.get_claim(claim.claim_id).certified_at
    assert certified is not None
    chain.set_next_time(certified + PARAMS.challenge_window)
    with pytest.raises(ContractRevert, match="the challenge window has closed"):
        open_dispute(chain.client, chain.verifier_keys[3], 3, claim, segment=1)


def test_double_vote_reverts(chain: Chain) -> None:
    sk = chain.verifier_keys[2]
    subject = b"\x24" * 32
    from protocol.vote import compute_subject_message
    accept = bls.sign(sk, compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_ACCEPT))
    reject = bls.sign(sk, compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_REJECT))
    c = chain.client
    expect_revert("accept signature does not verify", c.report_double_vote, SUBJECT_CLAIM, subject, 2, reject, reject)
    expect_revert("reject signature does not verify", c.report_double_vote, SUBJECT_CLAIM, subject, 2, accept, accept)
    expect_revert("accept signature does not verify", c.report_double_vote, SUBJECT_DISPUTE, subject, 2, accept,
                  reject)
    expect_revert("accept signature does not verify", c.report_double_vote, SUBJECT_CLAIM, subject, 1, accept, reject)
    expect_revert("not a registered verifier", c.report_double_vote, SUBJECT_CLAIM, subject, 4, accept, reject)
    expect_revert("unknown subject kind", c.report_double_vote, 2, subject, 2, accept, reject)
    assert c.get_verifier(2).stake == 100


def test_deadline_pokes_revert_when_not_due(chain: Chain) -> None:
    claim = make_claim("pokes")
    post_and_claim(chain.as_account(10), chain.as_account(11), claim, 100, chain.now() + 5000, BOND)
    c = chain.client
    expect_revert("availability window has not passed", c.settle_claim, claim.claim_id)
    expect_revert("unknown claim", c.settle_claim, b"\x03" * 32)
    expect_revert("task is not open", c.refund_task, claim.task_id)
    expect_revert("unknown task", c.refund_task, b"\x03" * 32)
    expect_revert("unknown dispute", c.expire_dispute, b"\x03" * 32)
    dispute_id = open_dispute(c, chain.verifier_keys[0], 0, claim, segment=0)
    expect_revert("dispute window has not passed", c.expire_dispute, dispute_id)
    expect_revert("nothing to withdraw", c.withdraw, 0)
    expect_revert("balance too low", c.withdraw, 1)
    expect_revert("sender has no verifier", c.begin_unbonding)
    expect_revert("nothing to deposit", c.deposit, 0)
