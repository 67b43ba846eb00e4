"""Votes, certificates, genesis and the sample-count formula (protocol/vote.py, certificate.py, genesis.py).

``make_network`` is shared with the other files of this folder (imported by module name).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, replace

import pytest

from protocol import bls
from protocol.certificate import (
    Certificate,
    compute_certificate,
    decode_certificate,
    encode_certificate,
    validate_certificate,
)
from protocol.constants import OFFLINE_POSTING_ID
from protocol.ledger import TaskPosted, compute_posting_id
from protocol.claim import Claim, ClaimBody, compute_claim_id, compute_commitment, compute_signed_claim
from protocol.encoding import encode_canonical
from protocol.errors import DecodeError, InvalidCertificate, InvalidGenesis, InvalidVote
from protocol.genesis import (
    Account,
    Genesis,
    Params,
    VerifierEntry,
    compute_min_honest_signers,
    decode_genesis,
    encode_genesis,
    validate_genesis,
)
from protocol.merkle import compute_merkle_proof
from protocol.sampling import compute_segment_sample
from protocol.task import compute_task_id, decode_task, encode_task, parse_task_toml
from protocol.vote import (
    ClaimContext,
    Vote,
    compute_double_vote_proof,
    compute_evidence,
    compute_vote,
    compute_vote_message,
    decode_vote,
    encode_vote,
    validate_double_vote,
    validate_vote,
)

TASK_TOML = """
[task]
name = "net-test"
seed = {seed}
total_steps = 400
checkpoint_interval = 25
batch_size = 8
[model]
family = "mlp"
[data]
adapter = "sklearn-digits"
sha256 = "{sha}"
[optim]
[schedule]
"""
STAKES = (3, 3, 2, 1)  # total 9: {0,1} hold exactly 2/3, {0,2} hold 5/9
# Eleven segments per verifier (a floor far above the economic rate), so every vote has segments to dispute.
PARAMS = Params(min_sample_milli=11_000, prover_bond=1000, challenge_window_s=100,
                availability_window_s=1000, dispute_window_s=500)


def _key(tag: str) -> bytes:
    return bls.compute_secret_key(hashlib.sha256(tag.encode()).digest())


@dataclass(frozen=True)
class Network:
    verifier_keys: tuple[bytes, ...]
    requester_key: bytes
    prover_key: bytes
    genesis: Genesis

    def pk(self, secret_key: bytes) -> bytes:
        return bls.compute_public_key(secret_key)


def make_network(stakes: tuple[int, ...] = STAKES, params: Params = PARAMS) -> Network:
    keys = tuple(_key(f"verifier-{i}") for i in range(len(stakes)))
    verifiers = tuple(
        VerifierEntry(bls.compute_public_key(sk), bls.compute_pop(sk), stake, f"peer{i}")
        for i, (sk, stake) in enumerate(zip(keys, stakes, strict=True))
    )
    requester, prover = _key("requester"), _key("prover")
    accounts = (Account(bls.compute_public_key(requester), 10_000), Account(bls.compute_public_key(prover), 5_000))
    genesis = Genesis("testnet", 1_000, params, verifiers, accounts)
    return Network(keys, requester, prover, genesis)


def make_task(seed: int = 1) -> bytes:
    return encode_task(parse_task_toml(TASK_TOML.format(seed=seed, sha="ab" * 32)))


def make_claim(prover_key: bytes, task: bytes | TaskPosted, salt: bytes = b"") -> tuple[Claim, list[bytes]]:
    """A signed claim on ``task`` (answering it, if it is a posting) over made-up checkpoint roots;
    returns (claim, roots)."""
    posting_id = compute_posting_id(task) if isinstance(task, TaskPosted) else OFFLINE_POSTING_ID
    task = task.task if isinstance(task, TaskPosted) else task
    roots = [hashlib.sha256(salt + i.to_bytes(4, "big")).digest() for i in range(17)]
    body = ClaimBody(compute_task_id(decode_task(task)), bls.compute_public_key(prover_key), compute_commitment(roots),
                     roots[-1], 17, 400, 25, posting_id)
    return compute_signed_claim(prover_key, body), roots


def make_reject_vote(secret_key: bytes, ctx: ClaimContext, roots: list[bytes], segment: int | None = None) -> Vote:
    """A reject vote with correct evidence on the first (or given) sampled segment."""
    sample = compute_vote(secret_key, ctx).segments
    seg = sample[0] if segment is None else segment
    path = compute_merkle_proof(roots, seg + 1).path
    evidence = compute_evidence(secret_key, ctx.claim_id, seg, roots[seg + 1], path, b"\xee" * 32)
    return compute_vote(secret_key, ctx, evidence)


@pytest.fixture(scope="module")
def net() -> Network:
    return make_network()


@pytest.fixture(scope="module")
def ctx_roots(net: Network) -> tuple[ClaimContext, list[bytes]]:
    claim, roots = make_claim(net.prover_key, make_task())
    ctx = ClaimContext(compute_claim_id(claim.body), claim.body.commitment, 17, 5000)  # five segments each
    return ctx, roots


# --- genesis and sample counts ------------------------------------------------------------


def test_genesis_roundtrip_and_pop(net: Network) -> None:
    validate_genesis(net.genesis)
    assert decode_genesis(encode_genesis(net.genesis)) == net.genesis
    # A verifier whose proof of possession belongs to another key is refused.
    v = net.genesis.verifiers
    swapped = (replace(v[0], pop=v[1].pop),) + v[1:]
    with pytest.raises(InvalidGenesis, match="proof of possession"):
        validate_genesis(replace(net.genesis, verifiers=swapped))
    with pytest.raises(InvalidGenesis, match="quorum"):
        validate_genesis(replace(net.genesis, params=replace(PARAMS, quorum_numerator=1, quorum_denominator=2)))


def _stakes(*values: int) -> list[VerifierEntry]:
    return [VerifierEntry(b"", b"", value, f"p{i}") for i, value in enumerate(values)]


@pytest.mark.parametrize(("stakes", "expected"), [
    ((3, 3, 2, 1), 2),  # honest signers hold > 3 of 9: one verifier of stake 3 is not enough
    ((1, 1, 1, 1), 2),  # > 4/3
    ((10, 1, 1, 1), 1),  # > 13/3: the big one alone
    ((1,) * 9, 4),  # > 3
    ((5,), 1),
])
def test_min_honest_signers(stakes: tuple[int, ...], expected: int) -> None:
    assert compute_min_honest_signers(_stakes(*stakes), Params()) == expected


# --- votes -------------------------------------------------------------------------------


def test_verdict_message_identical_across_voters(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, _ = ctx_roots
    a, b = (compute_vote(sk, ctx) for sk in net.verifier_keys[:2])
    assert a.segments != b.segments  # each verifier's sample comes from its own signature
    message = compute_vote_message(ctx.claim_id, 1)
    assert bls.is_valid_signature(a.verifier, message, a.signature)
    assert bls.is_valid_signature(b.verifier, message, b.signature)


def test_vote_roundtrip_and_validate(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, roots = ctx_roots
    verifiers = net.genesis.verifiers
    accept = compute_vote(net.verifier_keys[0], ctx)
    reject = make_reject_vote(net.verifier_keys[1], ctx, roots)
    for vote in (accept, reject):
        assert decode_vote(encode_vote(vote)) == vote
        validate_vote(vote, ctx, verifiers)
    assert len(accept.segments) == 5
    assert list(accept.segments) == compute_segment_sample(accept.sample_signature, 16, 5)


def test_vote_rejections(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, _ = ctx_roots
    verifiers = net.genesis.verifiers
    sk0, sk1 = net.verifier_keys[:2]
    vote = compute_vote(sk0, ctx)
    other = compute_vote(sk1, ctx)
    cases = {
        "derived from the sample": replace(vote, segments=vote.segments[:-1]),
        "sample signature": replace(vote, sample_signature=other.sample_signature, segments=other.segments),
        "verdict signature": replace(vote, signature=other.signature),
        "not a registered verifier": replace(vote, verifier=bls.compute_public_key(_key("stranger"))),
        "carries evidence": replace(vote, verdict=0),
        "another claim": replace(vote, claim_id=b"\x00" * 32),
    }
    for reason, bad in cases.items():
        with pytest.raises(InvalidVote, match=reason):
            validate_vote(bad, ctx, verifiers)
    no_stake = (replace(verifiers[0], stake=0),) + verifiers[1:]
    with pytest.raises(InvalidVote, match="no stake"):
        validate_vote(vote, ctx, no_stake)
    # More samples than required is as wrong as fewer: the count is part of the rule.
    with pytest.raises(InvalidVote, match="derived"):
        validate_vote(vote, replace(ctx, sample_milli=6000), verifiers)


def test_evidence_rejections(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, roots = ctx_roots
    verifiers = net.genesis.verifiers
    sk = net.verifier_keys[1]
    good = make_reject_vote(sk, ctx, roots)
    e = good.evidence
    assert e is not None
    unsampled = next(s for s in range(16) if s not in good.segments)
    cases = {
        "not in the verifier's sample": make_reject_vote(sk, ctx, roots, segment=unsampled),
        # The evidence signature covers the replayed root: a relay cannot swap it.
        "evidence signature": replace(good, evidence=replace(e, replayed_root=b"\xdd" * 32)),
        "committed root": replace(good, evidence=replace(e, claimed_root=b"\x01" * 32)),
        "evidence path": replace(good, evidence=replace(e, claimed_root_path=e.claimed_root_path[:-1])),
        "no mismatch": replace(good, evidence=replace(e, replayed_root=e.claimed_root)),
        "accept vote carries none": replace(good, evidence=None),
    }
    for reason, bad in cases.items():
        with pytest.raises(InvalidVote, match=reason):
            validate_vote(bad, ctx, verifiers)


def test_vote_decoding_is_strict(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, _ = ctx_roots
    doc = {f.name: getattr(compute_vote(net.verifier_keys[0], ctx), f.name) for f in dataclasses.fields(Vote)}
    doc["segments"] = list(doc["segments"])
    decode_vote(encode_canonical(doc))
    for key, value in [("verdict", 2), ("verdict", True), ("claim_id", b"x"), ("segments", [True]),
                       ("segments", list(range(5000))), ("extra", 1)]:
        with pytest.raises((InvalidVote, DecodeError)):
            decode_vote(encode_canonical({**doc, key: value}))


def test_double_vote_proof(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, roots = ctx_roots
    sk = net.verifier_keys[2]
    proof = compute_double_vote_proof(compute_vote(sk, ctx), make_reject_vote(sk, ctx, roots))
    assert validate_double_vote(proof, net.genesis.verifiers) == 2
    with pytest.raises(InvalidVote, match="reject signature"):
        validate_double_vote(replace(proof, reject_signature=proof.accept_signature), net.genesis.verifiers)
    with pytest.raises(InvalidVote):
        compute_double_vote_proof(compute_vote(sk, ctx), compute_vote(sk, ctx))


# --- certificates ------------------------------------------------------------------------


def _accept_votes(net: Network, ctx: ClaimContext, indices: list[int]) -> list[Vote]:
    return [compute_vote(net.verifier_keys[i], ctx) for i in indices]


def test_certificate_quorum_boundary(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, _ = ctx_roots
    verifiers = net.genesis.verifiers
    exact = compute_certificate(_accept_votes(net, ctx, [1, 0]), verifiers)
    assert exact.signers == (0, 1)  # sorted
    validate_certificate(exact, verifiers, PARAMS)  # 6 of 9 is exactly 2/3: enough
    assert decode_certificate(encode_certificate(exact)) == exact
    below = compute_certificate(_accept_votes(net, ctx, [0, 2]), verifiers)  # 5 of 9
    with pytest.raises(InvalidCertificate, match="below the quorum"):
        validate_certificate(below, verifiers, PARAMS)
    # One unit of stake less on verifier 1 moves the same signers below 2/3 (5 of 8).
    shaved = (verifiers[0], replace(verifiers[1], stake=2)) + verifiers[2:]
    with pytest.raises(InvalidCertificate, match="below the quorum"):
        validate_certificate(exact, shaved, PARAMS)


def test_certificate_aggregate_binds_signer_set(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, _ = ctx_roots
    verifiers = net.genesis.verifiers
    three = compute_certificate(_accept_votes(net, ctx, [0, 1, 2]), verifiers)
    validate_certificate(three, verifiers, PARAMS)
    two = compute_certificate(_accept_votes(net, ctx, [0, 1]), verifiers)
    cases = {
        "aggregate": replace(three, signers=(0, 1)),  # a signer removed from the list only
        "aggregate ": replace(two, signers=(0, 1, 3)),  # a signer added who did not sign
        "strictly increasing": replace(two, signers=(0, 0, 1)),
        "increasing": replace(two, signers=(1, 0)),
        "outside": replace(two, signers=(0, 1, 9)),
        "no signers": replace(two, signers=()),
        "verdict": replace(two, verdict=7),
    }
    for reason, bad in cases.items():
        with pytest.raises(InvalidCertificate, match=reason.strip()):
            validate_certificate(bad, verifiers, PARAMS)
    # The verdict is in the signed message: flipping it breaks the aggregate.
    with pytest.raises(InvalidCertificate, match="aggregate"):
        validate_certificate(replace(three, verdict=0), verifiers, PARAMS)


def test_certificate_needs_staked_signers(net: Network, ctx_roots: tuple[ClaimContext, list[bytes]]) -> None:
    ctx, _ = ctx_roots
    verifiers = net.genesis.verifiers
    cert = compute_certificate(_accept_votes(net, ctx, [0, 1, 3]), verifiers)
    slashed = verifiers[:3] + (replace(verifiers[3], stake=0),)
    with pytest.raises(InvalidCertificate, match="no stake"):
        validate_certificate(cert, slashed, PARAMS)
    with pytest.raises(InvalidCertificate):
        compute_certificate([], verifiers)
    mixed = _accept_votes(net, ctx, [0]) + _accept_votes(net, replace(ctx, claim_id=b"\x02" * 32), [1])
    with pytest.raises(InvalidCertificate, match="share"):
        compute_certificate(mixed, verifiers)


def test_certificate_decoding_is_strict() -> None:
    good = Certificate(0, b"\x00" * 32, 1, (0, 1), b"\x00" * 96)
    assert decode_certificate(encode_certificate(good)) == good
    for doc in [{"kind": 0}, {**dataclasses.asdict(good), "signers": [0, True]},
                {**dataclasses.asdict(good), "kind": 5}, {**dataclasses.asdict(good), "subject": b"\x00"}]:
        doc = {k: list(v) if isinstance(v, tuple) else v for k, v in doc.items()}
        with pytest.raises((InvalidCertificate, DecodeError)):
            decode_certificate(encode_canonical(doc))
