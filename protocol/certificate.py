"""Certificates: votes of one verdict aggregated into one BLS signature (SPEC.md network chapter, §N.4).

A certificate names its subject (a claim id or a dispute id), the verdict, the signers as
a strictly increasing list of verifier indices in genesis order, and the aggregate of
their verdict signatures. It is valid when every signer is a registered verifier with
stake, the signers hold at least the quorum of all stake (``3 * signed >= 2 * total`` for
2/3, in exact integers) and FastAggregateVerify accepts the aggregate over the signers'
keys and the verdict message. Proofs of possession checked at genesis make FastAggregateVerify
safe against rogue keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import bls
from .constants import BLS_SIGNATURE_LEN, HASH_LEN, MAX_CERTIFICATE_BYTES, MAX_VERIFIERS, Digest
from .encoding import decode_canonical, encode_canonical
from .errors import InvalidCertificate, InvalidVote
from .genesis import (
    Params,
    VerifierEntry,
    get_field,
    get_list,
    get_total_stake,
    get_uint,
    get_verifier_index,
    is_quorum,
    validate_keys,
)
from .vote import SUBJECT_CLAIM, SUBJECT_DISPUTE, DisputeVote, Vote, compute_subject_message


@dataclass(frozen=True)
class Certificate:
    kind: int  # SUBJECT_CLAIM or SUBJECT_DISPUTE
    subject: bytes  # claim id or dispute id
    verdict: int  # VERDICT_ACCEPT (accept / upheld) or VERDICT_REJECT (reject / failed)
    signers: tuple[int, ...]  # verifier indices, strictly increasing
    signature: bytes  # aggregate of the signers' verdict signatures


def get_signed_stake(signers: Sequence[int], verifiers: Sequence[VerifierEntry]) -> int:
    return sum(verifiers[index].stake for index in signers)


def compute_certificate(votes: Sequence[Vote | DisputeVote], verifiers: Sequence[VerifierEntry]) -> Certificate:
    """Aggregate already-validated votes that share subject and verdict.

    A verifier appearing twice is counted once (its signature is deterministic). Quorum is
    not checked here: ``validate_certificate`` decides whether the result is usable.
    """
    if not votes:
        raise InvalidCertificate("a certificate needs at least one vote")
    subjects = {(SUBJECT_CLAIM, v.claim_id) if isinstance(v, Vote) else (SUBJECT_DISPUTE, v.dispute_id)
                for v in votes}
    verdicts = {v.verdict for v in votes}
    if len(subjects) != 1 or len(verdicts) != 1:
        raise InvalidCertificate("votes in one certificate share subject and verdict")
    by_index: dict[int, bytes] = {}
    for v in votes:
        index = get_verifier_index(verifiers, v.verifier)
        if index is None:
            raise InvalidCertificate(f"vote signer {v.verifier.hex()[:16]}… is not a registered verifier")
        by_index[index] = v.signature
    signers = tuple(sorted(by_index))
    ((kind, subject),) = subjects
    return Certificate(kind=kind, subject=subject, verdict=verdicts.pop(), signers=signers,
                       signature=bls.aggregate_signatures([by_index[i] for i in signers]))


def validate_certificate(cert: Certificate, verifiers: Sequence[VerifierEntry], params: Params) -> None:
    """Raise ``InvalidCertificate`` unless ``cert`` carries a quorum of valid signatures."""
    try:
        message = compute_subject_message(cert.kind, cert.subject, cert.verdict)
    except InvalidVote as exc:  # an unknown kind or verdict
        raise InvalidCertificate(str(exc)) from None
    if not cert.signers:
        raise InvalidCertificate("certificate has no signers")
    for a, b in zip(cert.signers, cert.signers[1:], strict=False):
        if a >= b:
            raise InvalidCertificate("signer indices must be strictly increasing (distinct, canonical)")
    if cert.signers[0] < 0 or cert.signers[-1] >= len(verifiers):
        raise InvalidCertificate(f"signer index outside the registry of {len(verifiers)} verifiers")
    for index in cert.signers:
        if verifiers[index].stake <= 0:
            raise InvalidCertificate(f"signer {index} has no stake")
    signed, total = get_signed_stake(cert.signers, verifiers), get_total_stake(verifiers)
    if not is_quorum(signed, total, params):
        raise InvalidCertificate(
            f"signers hold {signed} of {total} stake, below the quorum "
            f"{params.quorum_numerator}/{params.quorum_denominator}"
        )
    keys = [verifiers[index].pubkey for index in cert.signers]
    if not bls.is_valid_aggregate(keys, message, cert.signature):
        raise InvalidCertificate("aggregate signature does not verify over the signers' keys")


def get_certificate_document(cert: Certificate) -> dict[str, Any]:
    return {"kind": cert.kind, "subject": cert.subject, "verdict": cert.verdict, "signers": list(cert.signers),
            "signature": cert.signature}


def parse_certificate(doc: Any) -> Certificate:
    """Certificate from its canonical document; schema only (no stake, no signature)."""
    what = "certificate"
    d = validate_keys(doc, {"kind", "subject", "verdict", "signers", "signature"}, what, InvalidCertificate)
    signers = get_list(d, "signers", what, InvalidCertificate, MAX_VERIFIERS)
    for index in signers:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_VERIFIERS:
            raise InvalidCertificate("certificate.signers holds something that is not a verifier index")
    return Certificate(
        kind=get_uint(d, "kind", what, InvalidCertificate, maximum=SUBJECT_DISPUTE),
        subject=get_field(d, "subject", bytes, what, InvalidCertificate, HASH_LEN),
        verdict=get_uint(d, "verdict", what, InvalidCertificate, maximum=1),
        signers=tuple(signers),
        signature=get_field(d, "signature", bytes, what, InvalidCertificate, BLS_SIGNATURE_LEN),
    )


def encode_certificate(cert: Certificate) -> bytes:
    return encode_canonical(get_certificate_document(cert))


def decode_certificate(data: bytes) -> Certificate:
    return parse_certificate(decode_canonical(data, MAX_CERTIFICATE_BYTES))


def compute_certificate_id(cert: Certificate) -> Digest:
    return Digest(hashlib.sha256(encode_certificate(cert)).digest())
