"""Segment selection from a verifier's own signature (SPEC.md §7).

A verifier signs ``DOMAIN_SAMPLE || claim_id``. BLS signatures are deterministic and
unforgeable, so the signature is a verifiable random function output: the prover cannot
predict it before committing, the verifier cannot grind it, and anyone holding the
verifier's public key can check which segments it had to replay.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import bls
from .constants import DOMAIN_SAMPLE, DOMAIN_SAMPLE_SEED


@dataclass(frozen=True)
class SampleProof:
    verifier: bytes  # BLS public key
    signature: bytes  # over DOMAIN_SAMPLE || claim_id


def compute_sample_message(claim_id: bytes) -> bytes:
    return DOMAIN_SAMPLE + claim_id


def compute_sample_proof(secret_key: bytes, claim_id: bytes) -> SampleProof:
    return SampleProof(
        verifier=bls.compute_public_key(secret_key),
        signature=bls.sign(secret_key, compute_sample_message(claim_id)),
    )


def validate_sample_proof(proof: SampleProof, claim_id: bytes) -> None:
    bls.validate_signature(proof.verifier, compute_sample_message(claim_id), proof.signature,
                           "segment-sample signature")


def compute_verifier_sample(signature: bytes, num_segments: int, sample_milli: int) -> list[int]:
    """A verifier's segments for a claim whose mean rate is ``sample_milli`` (SPEC.md §16.2): its count
    (``protocol.economics.get_sample_count``) drawn from the same signature, then ``compute_segment_sample``."""
    from .economics import get_sample_count

    return compute_segment_sample(signature, num_segments, get_sample_count(signature, sample_milli))


def compute_segment_sample(signature: bytes, num_segments: int, count: int) -> list[int]:
    """``count`` distinct segment indices in ``[0, num_segments)``, ascending.

    Candidate i is ``u64le(SHA-256(seed || u64le(i))[:8]) mod num_segments`` with
    ``seed = SHA-256(DOMAIN_SAMPLE_SEED || signature)``; repeats are skipped.
    """
    if num_segments <= 0:
        raise ValueError("a claim has at least one segment")
    if count <= 0:
        return []
    if count >= num_segments:
        return list(range(num_segments))
    seed = hashlib.sha256(DOMAIN_SAMPLE_SEED + signature).digest()
    chosen: list[int] = []
    i = 0
    while len(chosen) < count:
        digest = hashlib.sha256(seed + i.to_bytes(8, "little")).digest()
        candidate = int.from_bytes(digest[:8], "little") % num_segments
        if candidate not in chosen:
            chosen.append(candidate)
        i += 1
    return sorted(chosen)
