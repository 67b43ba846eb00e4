"""Votes on claims and disputes, and proofs of double voting (SPEC.md network chapter, §N.3).

A verifier's *verdict signature* is over ``DOMAIN_VOTE || claim_id || verdict``: the same
bytes for every verifier with the same verdict, so votes aggregate with FastAggregateVerify
into one certificate signature. A reject vote also carries *evidence*: the segment whose
replay differs, the prover's claimed end root with its Merkle path to the claim's
commitment, and the replayed root. The evidence is bound by a second signature over
``DOMAIN_EVIDENCE || claim_id || canonical(segment, claimed_root, replayed_root)``. Hashing
the evidence into the verdict message instead would give each reject vote a different
message and make reject votes impossible to aggregate; the second signature keeps the
verdict aggregatable and still lets the ledger slash a challenger whose evidence is false.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import bls
from .constants import (
    BLS_PUBKEY_LEN,
    BLS_SIGNATURE_LEN,
    DOMAIN_DISPUTE_ID,
    DOMAIN_DISPUTE_VOTE,
    DOMAIN_EVIDENCE,
    DOMAIN_VOTE,
    HASH_LEN,
    MAX_CHECKPOINTS,
    MAX_SAMPLES,
    MAX_VOTE_BYTES,
    VERDICT_ACCEPT,
    VERDICT_REJECT,
    Digest,
)
from .encoding import decode_canonical, encode_canonical
from .errors import InvalidProof, InvalidVote
from .genesis import VerifierEntry, get_field, get_list, get_uint, get_verifier_index, validate_keys
from .merkle import MerkleProof, compute_root_from_proof
from .sampling import compute_sample_message, compute_sample_proof, compute_verifier_sample

SUBJECT_CLAIM = 0  # a vote or certificate on a claim id
SUBJECT_DISPUTE = 1  # a vote or certificate on a dispute id
MAX_PATH = 64  # Merkle path nodes; a tree of MAX_CHECKPOINTS leaves needs 17


@dataclass(frozen=True)
class ClaimContext:
    """What a vote is checked against; the ledger keeps it per registered claim."""

    claim_id: bytes
    commitment: bytes  # Merkle root over the claim's checkpoint state roots
    num_checkpoints: int
    sample_milli: int  # mean segments per verifier in 1/1000; each verifier's count comes from its VRF

    @property
    def num_segments(self) -> int:
        return self.num_checkpoints - 1


@dataclass(frozen=True)
class Evidence:
    segment: int  # segment s replays checkpoint s to checkpoint s + 1
    claimed_root: bytes  # the prover's state root of checkpoint s + 1
    claimed_root_path: tuple[bytes, ...]  # Merkle path of that root in the claim's commitment
    replayed_root: bytes  # the root the verifier's replay produced
    signature: bytes  # over compute_evidence_message(...)


@dataclass(frozen=True)
class Vote:
    claim_id: bytes
    verifier: bytes  # BLS public key
    verdict: int  # VERDICT_ACCEPT or VERDICT_REJECT
    sample_signature: bytes  # SampleProof signature over DOMAIN_SAMPLE || claim_id
    segments: tuple[int, ...]  # the replayed sample, ascending
    evidence: Evidence | None  # present exactly when verdict is reject
    signature: bytes  # over compute_vote_message(claim_id, verdict)


@dataclass(frozen=True)
class DisputeVote:
    """A verifier's finding after replaying a disputed segment: accept = upheld (fraud)."""

    dispute_id: bytes
    verifier: bytes
    verdict: int
    signature: bytes  # over compute_dispute_vote_message(dispute_id, verdict)


@dataclass(frozen=True)
class DoubleVoteProof:
    """Two valid signatures by one verifier on both verdicts of one subject."""

    kind: int  # SUBJECT_CLAIM or SUBJECT_DISPUTE
    subject: bytes  # claim id or dispute id
    verifier: bytes
    accept_signature: bytes
    reject_signature: bytes


# --- messages that get signed -------------------------------------------------------------


def compute_subject_message(kind: int, subject: bytes, verdict: int) -> bytes:
    """Bytes every voter of ``verdict`` on ``subject`` signs; identical across voters."""
    if kind not in (SUBJECT_CLAIM, SUBJECT_DISPUTE) or verdict not in (VERDICT_ACCEPT, VERDICT_REJECT):
        raise InvalidVote(f"unknown subject kind {kind} or verdict {verdict}")
    domain = DOMAIN_VOTE if kind == SUBJECT_CLAIM else DOMAIN_DISPUTE_VOTE
    return domain + subject + bytes([verdict])


def compute_vote_message(claim_id: bytes, verdict: int) -> bytes:
    return compute_subject_message(SUBJECT_CLAIM, claim_id, verdict)


def compute_dispute_vote_message(dispute_id: bytes, verdict: int) -> bytes:
    return compute_subject_message(SUBJECT_DISPUTE, dispute_id, verdict)


def compute_evidence_message(claim_id: bytes, segment: int, claimed_root: bytes, replayed_root: bytes) -> bytes:
    body = {"segment": segment, "claimed_root": claimed_root, "replayed_root": replayed_root}
    return DOMAIN_EVIDENCE + claim_id + encode_canonical(body)


def compute_dispute_id(claim_id: bytes, segment: int) -> Digest:
    """One dispute per (claim, segment): the question is whether the prover's root is right."""
    return Digest(hashlib.sha256(DOMAIN_DISPUTE_ID + claim_id + segment.to_bytes(8, "big")).digest())


# --- construction (what an honest verifier does) -------------------------------------------


def compute_evidence(
    secret_key: bytes, claim_id: bytes, segment: int, claimed_root: bytes,
    claimed_root_path: Sequence[bytes], replayed_root: bytes,
) -> Evidence:
    message = compute_evidence_message(claim_id, segment, claimed_root, replayed_root)
    return Evidence(segment, claimed_root, tuple(claimed_root_path), replayed_root, bls.sign(secret_key, message))


def compute_vote(secret_key: bytes, claim: ClaimContext, evidence: Evidence | None = None) -> Vote:
    """Sign an accept vote, or a reject vote when ``evidence`` is given."""
    proof = compute_sample_proof(secret_key, claim.claim_id)
    sample_signature = proof.signature
    segments = tuple(compute_verifier_sample(sample_signature, claim.num_segments, claim.sample_milli))
    verdict = VERDICT_ACCEPT if evidence is None else VERDICT_REJECT
    return Vote(
        claim_id=claim.claim_id,
        verifier=proof.verifier,
        verdict=verdict,
        sample_signature=sample_signature,
        segments=segments,
        evidence=evidence,
        signature=bls.sign(secret_key, compute_vote_message(claim.claim_id, verdict)),
    )


def compute_double_vote_proof(first: Vote | DisputeVote, second: Vote | DisputeVote) -> DoubleVoteProof:
    """Pack two votes of one verifier with opposite verdicts on one subject (not yet validated)."""
    subjects = [(SUBJECT_CLAIM, v.claim_id) if isinstance(v, Vote) else (SUBJECT_DISPUTE, v.dispute_id)
                for v in (first, second)]
    if subjects[0] != subjects[1] or first.verifier != second.verifier or first.verdict == second.verdict:
        raise InvalidVote("a double vote is two verdicts of one verifier on one subject")
    accept, reject = (first, second) if first.verdict == VERDICT_ACCEPT else (second, first)
    return DoubleVoteProof(subjects[0][0], subjects[0][1], first.verifier, accept.signature, reject.signature)


def compute_dispute_vote(secret_key: bytes, dispute_id: bytes, verdict: int) -> DisputeVote:
    return DisputeVote(
        dispute_id=dispute_id,
        verifier=bls.compute_public_key(secret_key),
        verdict=verdict,
        signature=bls.sign(secret_key, compute_dispute_vote_message(dispute_id, verdict)),
    )


# --- validation ---------------------------------------------------------------------------


def get_staked_verifier_index(verifiers: Sequence[VerifierEntry], pubkey: bytes) -> int:
    """Index of a verifier with stake; raises ``InvalidVote`` otherwise."""
    index = get_verifier_index(verifiers, pubkey)
    if index is None:
        raise InvalidVote(f"signer {pubkey.hex()[:16]}… is not a registered verifier")
    if verifiers[index].stake <= 0:
        raise InvalidVote(f"verifier {index} has no stake left")
    return index


def _require_signature(public_key: bytes, message: bytes, signature: bytes, what: str) -> None:
    if not bls.is_valid_signature(public_key, message, signature):
        raise InvalidVote(f"{what} does not verify under {public_key.hex()[:16]}…")


def validate_evidence(evidence: Evidence, vote: Vote, claim: ClaimContext) -> None:
    """The evidence is signed, names a sampled segment and opens the prover's own root."""
    if evidence.segment not in vote.segments:
        raise InvalidVote(f"evidence segment {evidence.segment} is not in the verifier's sample")
    if evidence.claimed_root == evidence.replayed_root:
        raise InvalidVote("evidence shows no mismatch: claimed and replayed roots are equal")
    proof = MerkleProof(index=evidence.segment + 1, size=claim.num_checkpoints,
                        path=tuple(Digest(node) for node in evidence.claimed_root_path))
    try:
        found = compute_root_from_proof(evidence.claimed_root, proof)
    except InvalidProof as exc:
        raise InvalidVote(f"evidence path: {exc}") from None
    if found != claim.commitment:
        raise InvalidVote("evidence's claimed root is not the prover's committed root for that checkpoint")
    message = compute_evidence_message(vote.claim_id, evidence.segment, evidence.claimed_root, evidence.replayed_root)
    _require_signature(vote.verifier, message, evidence.signature, "evidence signature")


def validate_vote(vote: Vote, claim: ClaimContext, verifiers: Sequence[VerifierEntry]) -> None:
    """Raise ``InvalidVote`` unless ``vote`` is a valid vote of a staked verifier on ``claim``.

    Checks, cheapest first: claim id, verdict/evidence shape, signer registered and staked,
    segments equal the sample derived from the sample signature, then the BLS signatures.
    """
    if vote.claim_id != claim.claim_id:
        raise InvalidVote("vote is for another claim")
    if vote.verdict not in (VERDICT_ACCEPT, VERDICT_REJECT):
        raise InvalidVote(f"verdict {vote.verdict} is neither accept nor reject")
    if (vote.verdict == VERDICT_REJECT) != (vote.evidence is not None):
        raise InvalidVote("a reject vote carries evidence and an accept vote carries none")
    get_staked_verifier_index(verifiers, vote.verifier)
    expected = compute_verifier_sample(vote.sample_signature, claim.num_segments, claim.sample_milli)
    if list(vote.segments) != expected:
        raise InvalidVote(f"segments {list(vote.segments)[:8]}… are not the {len(expected)} derived "
                          f"from the sample signature")
    _require_signature(vote.verifier, compute_sample_message(vote.claim_id), vote.sample_signature,
                       "segment-sample signature")
    _require_signature(vote.verifier, compute_vote_message(vote.claim_id, vote.verdict), vote.signature,
                       "verdict signature")
    if vote.evidence is not None:
        validate_evidence(vote.evidence, vote, claim)


def validate_dispute_vote(vote: DisputeVote, verifiers: Sequence[VerifierEntry]) -> None:
    if vote.verdict not in (VERDICT_ACCEPT, VERDICT_REJECT):
        raise InvalidVote(f"verdict {vote.verdict} is neither upheld nor failed")
    get_staked_verifier_index(verifiers, vote.verifier)
    _require_signature(vote.verifier, compute_dispute_vote_message(vote.dispute_id, vote.verdict),
                       vote.signature, "dispute vote signature")


def validate_double_vote(proof: DoubleVoteProof, verifiers: Sequence[VerifierEntry]) -> int:
    """Raise ``InvalidVote`` unless the proof shows equivocation; returns the verifier index.

    A zero-stake verifier can still be proven to equivocate (the slash is then zero).
    """
    index = get_verifier_index(verifiers, proof.verifier)
    if index is None:
        raise InvalidVote("double-vote proof names a key that is not a registered verifier")
    accept = compute_subject_message(proof.kind, proof.subject, VERDICT_ACCEPT)
    reject = compute_subject_message(proof.kind, proof.subject, VERDICT_REJECT)
    _require_signature(proof.verifier, accept, proof.accept_signature, "accept signature")
    _require_signature(proof.verifier, reject, proof.reject_signature, "reject signature")
    return index


# --- canonical documents ------------------------------------------------------------------


def get_vote_document(vote: Vote) -> dict[str, Any]:
    evidence = None
    if vote.evidence is not None:
        e = vote.evidence
        evidence = {"segment": e.segment, "claimed_root": e.claimed_root, "claimed_root_path": list(e.claimed_root_path),
                    "replayed_root": e.replayed_root, "signature": e.signature}
    return {"claim_id": vote.claim_id, "verifier": vote.verifier, "verdict": vote.verdict,
            "sample_signature": vote.sample_signature, "segments": list(vote.segments),
            "evidence": evidence, "signature": vote.signature}


def _get_verdict(doc: dict[str, Any], what: str) -> int:
    verdict = get_uint(doc, "verdict", what, InvalidVote, maximum=1)
    return verdict


def parse_vote(doc: Any) -> Vote:
    """Vote from its canonical document; schema and sizes only, no signatures."""
    d = validate_keys(doc, {"claim_id", "verifier", "verdict", "sample_signature", "segments", "evidence",
                            "signature"}, "vote", InvalidVote)
    segments = get_list(d, "segments", "vote", InvalidVote, MAX_SAMPLES)
    for s in segments:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < MAX_CHECKPOINTS:
            raise InvalidVote("vote.segments holds something that is not a segment index")
    evidence = None
    if d["evidence"] is not None:
        e = validate_keys(d["evidence"], {"segment", "claimed_root", "claimed_root_path", "replayed_root",
                                          "signature"}, "evidence", InvalidVote)
        path = get_list(e, "claimed_root_path", "evidence", InvalidVote, MAX_PATH)
        if not all(isinstance(node, bytes) and len(node) == HASH_LEN for node in path):
            raise InvalidVote("evidence.claimed_root_path nodes must be 32-byte strings")
        evidence = Evidence(
            segment=get_uint(e, "segment", "evidence", InvalidVote, maximum=MAX_CHECKPOINTS),
            claimed_root=get_field(e, "claimed_root", bytes, "evidence", InvalidVote, HASH_LEN),
            claimed_root_path=tuple(path),
            replayed_root=get_field(e, "replayed_root", bytes, "evidence", InvalidVote, HASH_LEN),
            signature=get_field(e, "signature", bytes, "evidence", InvalidVote, BLS_SIGNATURE_LEN),
        )
    return Vote(
        claim_id=get_field(d, "claim_id", bytes, "vote", InvalidVote, HASH_LEN),
        verifier=get_field(d, "verifier", bytes, "vote", InvalidVote, BLS_PUBKEY_LEN),
        verdict=_get_verdict(d, "vote"),
        sample_signature=get_field(d, "sample_signature", bytes, "vote", InvalidVote, BLS_SIGNATURE_LEN),
        segments=tuple(segments),
        evidence=evidence,
        signature=get_field(d, "signature", bytes, "vote", InvalidVote, BLS_SIGNATURE_LEN),
    )


def encode_vote(vote: Vote) -> bytes:
    return encode_canonical(get_vote_document(vote))


def decode_vote(data: bytes) -> Vote:
    return parse_vote(decode_canonical(data, MAX_VOTE_BYTES))


def get_dispute_vote_document(vote: DisputeVote) -> dict[str, Any]:
    return {"dispute_id": vote.dispute_id, "verifier": vote.verifier, "verdict": vote.verdict,
            "signature": vote.signature}


def parse_dispute_vote(doc: Any) -> DisputeVote:
    d = validate_keys(doc, {"dispute_id", "verifier", "verdict", "signature"}, "dispute vote", InvalidVote)
    return DisputeVote(
        dispute_id=get_field(d, "dispute_id", bytes, "dispute vote", InvalidVote, HASH_LEN),
        verifier=get_field(d, "verifier", bytes, "dispute vote", InvalidVote, BLS_PUBKEY_LEN),
        verdict=_get_verdict(d, "dispute vote"),
        signature=get_field(d, "signature", bytes, "dispute vote", InvalidVote, BLS_SIGNATURE_LEN),
    )


def get_double_vote_document(proof: DoubleVoteProof) -> dict[str, Any]:
    return {"kind": proof.kind, "subject": proof.subject, "verifier": proof.verifier,
            "accept_signature": proof.accept_signature, "reject_signature": proof.reject_signature}


def parse_double_vote(doc: Any) -> DoubleVoteProof:
    what = "double-vote proof"
    d = validate_keys(doc, {"kind", "subject", "verifier", "accept_signature", "reject_signature"}, what, InvalidVote)
    return DoubleVoteProof(
        kind=get_uint(d, "kind", what, InvalidVote, maximum=SUBJECT_DISPUTE),
        subject=get_field(d, "subject", bytes, what, InvalidVote, HASH_LEN),
        verifier=get_field(d, "verifier", bytes, what, InvalidVote, BLS_PUBKEY_LEN),
        accept_signature=get_field(d, "accept_signature", bytes, what, InvalidVote, BLS_SIGNATURE_LEN),
        reject_signature=get_field(d, "reject_signature", bytes, what, InvalidVote, BLS_SIGNATURE_LEN),
    )
