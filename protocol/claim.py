"""Claims: what a prover signs after training (SPEC.md §6).

The claim body binds the task id, the prover's BLS key, the Merkle commitment over all
checkpoint state roots and the final root. The prover signs ``DOMAIN_CLAIM || body``; the
claim id hashes the body under another domain, so it is independent of the signature.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from . import bls
from .constants import (
    BLS_PUBKEY_LEN,
    BLS_SIGNATURE_LEN,
    DOMAIN_CLAIM,
    DOMAIN_CLAIM_ID,
    HASH_LEN,
    MAX_CLAIM_BYTES,
    OFFLINE_POSTING_ID,
    SPEC_VERSION,
    Digest,
)
from .encoding import decode_canonical, encode_canonical
from .errors import DecodeError, InvalidClaim
from .merkle import compute_merkle_root
from .rng import compute_training_seed
from .task import Task


@dataclass(frozen=True)
class ClaimBody:
    task_id: bytes
    prover: bytes  # BLS public key, 48 bytes
    commitment: bytes  # Merkle root over checkpoint state roots, in step order
    final_root: bytes
    num_checkpoints: int
    total_steps: int
    checkpoint_interval: int
    # Hash of the task posting this claim answers (SPEC.md §16.3); keys the run's randomness (§9).
    posting_id: bytes = OFFLINE_POSTING_ID
    version: int = SPEC_VERSION


@dataclass(frozen=True)
class Claim:
    body: ClaimBody
    signature: bytes


def get_claim_body_document(body: ClaimBody) -> dict[str, Any]:
    return {
        "version": body.version,
        "task_id": body.task_id,
        "prover": body.prover,
        "commitment": body.commitment,
        "final_root": body.final_root,
        "num_checkpoints": body.num_checkpoints,
        "total_steps": body.total_steps,
        "checkpoint_interval": body.checkpoint_interval,
        "posting_id": body.posting_id,
    }


def encode_claim_body(body: ClaimBody) -> bytes:
    return encode_canonical(get_claim_body_document(body))


def compute_claim_id(body: ClaimBody) -> Digest:
    return Digest(hashlib.sha256(DOMAIN_CLAIM_ID + encode_claim_body(body)).digest())


def compute_claim_signing_message(body: ClaimBody) -> bytes:
    return DOMAIN_CLAIM + encode_claim_body(body)


def compute_commitment(checkpoint_roots: Sequence[bytes]) -> Digest:
    return compute_merkle_root(list(checkpoint_roots))


def compute_claim_body(task: Task, task_id: bytes, prover: bytes, checkpoint_roots: Sequence[bytes],
                       posting_id: bytes = OFFLINE_POSTING_ID) -> ClaimBody:
    """The claim body committing to ``checkpoint_roots`` (r_0 .. r_S, in step order) of ``task``."""
    return ClaimBody(
        posting_id=posting_id,
        task_id=task_id,
        prover=prover,
        commitment=compute_commitment(checkpoint_roots),
        final_root=checkpoint_roots[-1],
        num_checkpoints=len(checkpoint_roots),
        total_steps=task.total_steps,
        checkpoint_interval=task.checkpoint_interval,
    )


def encode_claim(claim: Claim) -> bytes:
    return encode_canonical({"body": get_claim_body_document(claim.body), "signature": claim.signature})


def _field(doc: dict[str, Any], key: str, kind: type, length: int | None = None) -> Any:
    if key not in doc:
        raise InvalidClaim(f"claim is missing {key}")
    value: Any = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidClaim(f"claim field {key} must be {kind.__name__}")
    if length is not None and isinstance(value, bytes) and len(value) != length:
        raise InvalidClaim(f"claim field {key} must be {length} bytes, got {len(value)}")
    return value


def decode_claim(data: bytes) -> Claim:
    """Parse a signed claim; raises ``DecodeError``/``InvalidClaim`` (signature not yet checked)."""
    doc = decode_canonical(data, MAX_CLAIM_BYTES)
    if not isinstance(doc, dict) or set(doc) != {"body", "signature"}:
        raise DecodeError("a claim is a map with exactly the keys body and signature")
    b = doc["body"]
    if not isinstance(b, dict):
        raise DecodeError("claim body must be a map")
    expected = {"version", "task_id", "prover", "commitment", "final_root", "num_checkpoints",
                "total_steps", "checkpoint_interval", "posting_id"}
    if set(b) != expected:
        raise InvalidClaim(f"claim body keys {sorted(b)} differ from {sorted(expected)}")
    body = ClaimBody(
        version=_field(b, "version", int),
        task_id=_field(b, "task_id", bytes, HASH_LEN),
        prover=_field(b, "prover", bytes, BLS_PUBKEY_LEN),
        commitment=_field(b, "commitment", bytes, HASH_LEN),
        final_root=_field(b, "final_root", bytes, HASH_LEN),
        num_checkpoints=_field(b, "num_checkpoints", int),
        total_steps=_field(b, "total_steps", int),
        checkpoint_interval=_field(b, "checkpoint_interval", int),
        posting_id=_field(b, "posting_id", bytes, HASH_LEN),
    )
    if body.version != SPEC_VERSION:
        raise InvalidClaim(f"claim version {body.version} is not supported (expected {SPEC_VERSION})")
    return Claim(body=body, signature=_field(doc, "signature", bytes, BLS_SIGNATURE_LEN))


def compute_signed_claim(secret_key: bytes, body: ClaimBody) -> Claim:
    return Claim(body=body, signature=bls.sign(secret_key, compute_claim_signing_message(body)))


def validate_claim_signature(claim: Claim) -> None:
    bls.validate_signature(claim.body.prover, compute_claim_signing_message(claim.body), claim.signature,
                           "claim signature")


def compute_claim_training_seed(claim: Claim) -> int:
    """The Philox key of the run this claim commits to (SPEC.md §9): task id, prover, posting."""
    return compute_training_seed(claim.body.task_id, claim.body.prover, claim.body.posting_id)


def validate_claim_against_task(claim: Claim, task: Task, task_id: bytes) -> None:
    """The claim must name this task and agree with its lengths."""
    body = claim.body
    if body.task_id != task_id:
        raise InvalidClaim(f"claim is for task {body.task_id.hex()}, the task file hashes to {task_id.hex()}")
    if (body.total_steps, body.checkpoint_interval, body.num_checkpoints) != (
        task.total_steps, task.checkpoint_interval, task.num_checkpoints
    ):
        raise InvalidClaim("claim's steps, interval or checkpoint count disagree with the task")


def validate_transcript_roots(claim: Claim, checkpoint_roots: Sequence[bytes]) -> None:
    """The transcript's roots must be exactly those the claim commits to."""
    if len(checkpoint_roots) != claim.body.num_checkpoints:
        raise InvalidClaim(
            f"transcript has {len(checkpoint_roots)} checkpoint roots, the claim commits to "
            f"{claim.body.num_checkpoints}"
        )
    if compute_commitment(checkpoint_roots) != claim.body.commitment:
        raise InvalidClaim("transcript roots do not hash to the claim's commitment")
    if checkpoint_roots[-1] != claim.body.final_root:
        raise InvalidClaim("claim's final root is not the last checkpoint root")
