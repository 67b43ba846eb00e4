"""Envelopes, gossip validation and decoder fuzzing (protocol/messages.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vote_cert import make_claim, make_network, make_reject_vote, make_task

from protocol.certificate import compute_certificate
from protocol.claim import compute_claim_id
from protocol.constants import MAX_GOSSIP_BYTES, TENSOR_CHUNK_BYTES
from protocol.encoding import encode_canonical
from protocol.errors import GossipIgnore, GossipReject, InvalidInput, InvalidMessage, InvalidProof
from protocol.ledger import (
    LedgerState,
    compute_task_posted,
    get_claim_context,
    get_initial_state,
    process_claim,
    process_task_posted,
)
from protocol.merkle import compute_merkle_proof
from protocol.messages import (
    ChunkRequest,
    ChunkResponse,
    Message,
    SyncRequest,
    SyncResponse,
    compute_claim_announced,
    compute_message_id,
    decode_message,
    encode_message,
    validate_chunk_response,
    validate_gossip_message,
)
from protocol.state import TensorLeaf, compute_chunk_proof, compute_state_root, compute_tensor_proof
from protocol.forced import ForcedErrorReveal
from protocol.vote import compute_double_vote_proof, compute_vote

T0 = 2_000
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class Fixture:
    empty: LedgerState  # genesis, task posted, nothing claimed
    state: LedgerState  # claim registered
    samples: dict[str, Message]


@pytest.fixture(scope="module")
def fx() -> Fixture:
    net = make_network()
    genesis = get_initial_state(net.genesis)
    posting = compute_task_posted(net.requester_key, make_task(), 100, T0 + 5_000)
    claim, roots = make_claim(net.prover_key, posting)
    empty = process_task_posted(genesis, posting, T0)
    state = process_claim(empty, claim, T0)
    ctx = get_claim_context(state, compute_claim_id(claim.body))
    vote = compute_vote(net.verifier_keys[0], ctx)
    reject = make_reject_vote(net.verifier_keys[1], ctx, roots)
    cert = compute_certificate([vote, compute_vote(net.verifier_keys[1], ctx)], net.genesis.verifiers)
    leaf = TensorLeaf("param/w", "f32", (2, 3), np.arange(6, dtype="<f4").tobytes())
    samples: dict[str, Message] = {
        "task_posted": posting, "claim": compute_claim_announced(claim, ("peer0",), net.prover_key), "vote": vote,
        "reject": reject, "certificate": cert,
        "double_vote": compute_double_vote_proof(compute_vote(net.verifier_keys[1], ctx), reject),
        "forced_reveal": ForcedErrorReveal(ctx.claim_id, b"\x01" * 32, ((0, b"\x02" * 32), (3, b"\x03" * 32))),
        "sync_request": SyncRequest(5, 10), "sync_response": SyncResponse((b"abc",), 6, True),
        "chunk_request": ChunkRequest(ctx.claim_id, 3, "param/w", 0),
        "chunk_response": ChunkResponse(ctx.claim_id, 3, leaf.name, leaf.dtype, leaf.shape, 0, leaf.data, (),
                                        b"\x00" * 32, (), compute_merkle_proof([b"a", b"b"], 0)),
    }
    return Fixture(empty, state, samples)


def test_roundtrip_every_type(fx: Fixture) -> None:
    for name, msg in fx.samples.items():
        data = encode_message(msg)
        assert decode_message(data) == msg, name
        assert encode_message(decode_message(data)) == data


def test_gossip_accepts_valid_and_classifies_failures(fx: Fixture) -> None:
    vote = fx.samples["vote"]
    data = encode_message(vote)
    assert validate_gossip_message(data, fx.state, T0) == vote
    assert validate_gossip_message(encode_message(fx.samples["reject"]), fx.state, T0) == fx.samples["reject"]
    assert validate_gossip_message(encode_message(fx.samples["certificate"]), fx.state, T0)
    assert validate_gossip_message(encode_message(fx.samples["claim"]), fx.empty, T0)
    assert validate_gossip_message(encode_message(fx.samples["double_vote"]), fx.state, T0)
    ignores = {
        "duplicate": lambda: validate_gossip_message(data, fx.state, T0, seen={compute_message_id(data)}),
        "have not seen": lambda: validate_gossip_message(data, fx.empty, T0),
        "already posted": lambda: validate_gossip_message(encode_message(fx.samples["task_posted"]), fx.state, T0),
        "already registered": lambda: validate_gossip_message(encode_message(fx.samples["claim"]), fx.state, T0),
    }
    for reason, call in ignores.items():
        with pytest.raises(GossipIgnore, match=reason):
            call()
    assert isinstance(vote, type(fx.samples["reject"]))
    cert = fx.samples["certificate"]
    rejects = {
        "exceeds": b"\x00" * (MAX_GOSSIP_BYTES + 1),
        "DecodeError": b"\xc1",
        "verdict signature": encode_message(replace(vote, signature=fx.samples["reject"].signature)),  # type: ignore[union-attr]
        "below the quorum": encode_message(replace(cert, signers=cert.signers[:1])),  # type: ignore[type-var]
        "stream message": encode_message(fx.samples["sync_request"]),
        "unknown message type": encode_canonical({"type": "nope", "body": {}}),
    }
    for reason, raw in rejects.items():
        with pytest.raises(GossipReject, match=reason):
            validate_gossip_message(raw, fx.state, T0)


def test_chunk_response_checks_commitment_and_each_chunk() -> None:
    n = 2 * TENSOR_CHUNK_BYTES // 4 + 600  # three chunks, the last one 2400 bytes
    leaves = [TensorLeaf("param/w", "f32", (n,), np.linspace(0, 1, n, dtype="<f4").tobytes()),
              TensorLeaf("meta/step", "i64", (), np.array(25, dtype="<i8").tobytes())]
    state_root = compute_state_root(leaves)
    checkpoint_roots = [b"\x01" * 32, state_root, b"\x03" * 32]
    from protocol.claim import compute_commitment

    commitment = compute_commitment(checkpoint_roots)
    path = compute_merkle_proof(checkpoint_roots, 1).path
    tensor_proof = compute_tensor_proof(leaves, "param/w")
    data = leaves[0].data
    chunks = []
    for k in range(3):
        request = ChunkRequest(b"\x07" * 32, 1, "param/w", k)
        piece = data[k * TENSOR_CHUNK_BYTES:(k + 1) * TENSOR_CHUNK_BYTES]
        response = ChunkResponse(request.claim_id, 1, "param/w", "f32", (n,), k, piece,
                                 compute_chunk_proof(data, k).path, state_root, path, tensor_proof)
        validate_chunk_response(response, request, commitment, 3)
        chunks.append(response)
    assert len(chunks[2].data) == 2400  # the last chunk is short
    request = ChunkRequest(b"\x07" * 32, 1, "param/w", 0)
    with pytest.raises(InvalidProof, match="committed root"):
        validate_chunk_response(replace(chunks[0], state_root=b"\x03" * 32), request, commitment, 3)
    with pytest.raises(InvalidProof, match="bytes, not"):
        validate_chunk_response(replace(chunks[0], data=chunks[0].data[:-4]), request, commitment, 3)
    with pytest.raises(InvalidProof, match="does not lead"):  # another chunk's bytes under chunk 0's path
        validate_chunk_response(replace(chunks[0], data=chunks[1].data), request, commitment, 3)
    with pytest.raises(InvalidMessage, match="does not answer"):
        validate_chunk_response(chunks[1], request, commitment, 3)
    too_big = encode_canonical({"type": "chunk_request", "body": {
        "claim_id": b"\x07" * 32, "checkpoint": 1, "tensor": "param/w", "chunk": 2**40}})
    with pytest.raises(InvalidMessage, match="chunk"):
        decode_message(too_big)


def _assert_decodes_or_invalid(data: bytes) -> None:
    try:
        decode_message(data)
    except InvalidInput:
        pass


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    _assert_decodes_or_invalid(data)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                     st.text(max_size=20), st.binary(max_size=100))
_docs = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=6)),
                     max_leaves=30)


@FUZZ
@given(st.sampled_from(["task_posted", "claim", "vote", "dispute_vote", "certificate", "double_vote",
                        "forced_reveal", "sync_request", "sync_response", "chunk_request", "chunk_response", "x"]), _docs)
def test_fuzz_structured_documents(kind: str, body: object) -> None:
    _assert_decodes_or_invalid(encode_canonical({"type": kind, "body": body}))


@FUZZ
@given(st.data())
def test_fuzz_mutated_valid_messages(fx: Fixture, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(fx.samples)))
    raw = bytearray(encode_message(fx.samples[name]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw)
    _assert_decodes_or_invalid(mutated)
    try:  # gossip validation of the same bytes: only Reject or Ignore, never anything else
        validate_gossip_message(mutated, fx.state, T0)
    except (GossipReject, GossipIgnore):
        pass


@FUZZ
@given(st.data())
def test_fuzz_field_substitution(fx: Fixture, data: st.DataObject) -> None:
    """Valid envelopes with one body field (or a nested evidence field) replaced by anything."""
    from protocol.messages import get_message_document

    doc = get_message_document(fx.samples[data.draw(st.sampled_from(sorted(fx.samples)))])
    body = doc["body"]
    if body.get("evidence") and data.draw(st.booleans()):
        body = body["evidence"]
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(_docs)
    _assert_decodes_or_invalid(encode_canonical(doc))
