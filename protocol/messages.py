"""Gossip and stream envelopes and their validation (SPEC.md network chapter, §N.6).

Every message on the wire is the canonical msgpack of ``{"type": <name>, "body": <map>}``.
Gossip topics carry task postings, claims, votes, dispute votes, certificates and
double-vote proofs; request/response streams carry sync and checkpoint-chunk messages.
``validate_gossip_*`` raise ``GossipReject`` (invalid for everyone: penalise the sender) or
``GossipIgnore`` (useless to us now: drop quietly), each check under a ``# [REJECT]`` or
``# [IGNORE]`` comment, in the style of the Ethereum consensus p2p spec.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, TypeVar

from .certificate import Certificate, get_certificate_document, parse_certificate, validate_certificate
from .claim import Claim, compute_claim_id, decode_claim, encode_claim, validate_claim_signature
from .constants import (
    BLS_PUBKEY_LEN,
    BLS_SIGNATURE_LEN,
    DOMAIN_FETCH_HINTS,
    DOMAIN_MESSAGE_ID,
    HASH_LEN,
    MAX_CHECKPOINTS,
    MAX_CLAIM_BYTES,
    MAX_FETCH_HINT_LEN,
    MAX_FETCH_HINTS,
    MAX_GOSSIP_BYTES,
    MAX_STREAM_BYTES,
    MAX_SYNC_ITEMS,
    MAX_TASK_BYTES,
    MAX_TENSOR_ELEMENTS,
    TENSOR_CHUNK_BYTES,
    Digest,
)
from .encoding import decode_canonical, encode_canonical
from . import bls
from .errors import GossipIgnore, GossipReject, InvalidFetchHints, InvalidInput, InvalidMessage, InvalidProof
from .economics import compute_claim_bond
from .forced import ForcedErrorReveal, validate_forced_reveal
from .genesis import get_field, get_list, get_uint, validate_keys
from .ledger import (
    CLAIM_PENDING,
    DISPUTE_OPEN,
    TASK_OPEN,
    LedgerState,
    TaskPosted,
    get_claim_context,
    is_claim_settled,
    validate_task_posted,
)
from .merkle import MerkleProof, compute_leaf_hash, compute_root_from_proof
from .task import compute_task_id, decode_task
from .state import DTYPES, compute_root_from_chunk
from .vote import (
    MAX_PATH,
    SUBJECT_CLAIM,
    DisputeVote,
    DoubleVoteProof,
    Vote,
    get_dispute_vote_document,
    get_double_vote_document,
    get_staked_verifier_index,
    get_vote_document,
    parse_dispute_vote,
    parse_double_vote,
    parse_vote,
    validate_dispute_vote,
    validate_double_vote,
    validate_vote,
)

T = TypeVar("T")
_TENSOR_NAME = re.compile(r"[a-z0-9_./-]{1,128}")  # the same rule as protocol.state


@dataclass(frozen=True)
class ClaimAnnounced:
    claim: bytes  # protocol.claim.encode_claim bytes
    fetch: tuple[str, ...]  # where checkpoints can be fetched: libp2p peer ids or multiaddrs
    fetch_signature: bytes  # the prover's BLS signature over compute_fetch_hints_message (SPEC.md §16.6)


@dataclass(frozen=True)
class SyncRequest:
    since: int  # first sequence number wanted, in the responder's own log of accepted gossip
    limit: int


@dataclass(frozen=True)
class SyncResponse:
    items: tuple[bytes, ...]  # encoded gossip envelopes, in the responder's log order
    next: int  # the sequence number to ask for next
    complete: bool  # True when nothing after ``next`` exists yet


@dataclass(frozen=True)
class ChunkRequest:
    claim_id: bytes
    checkpoint: int
    tensor: str
    chunk: int  # index of a TENSOR_CHUNK_BYTES chunk of the tensor's bytes (SPEC.md §5.2)


@dataclass(frozen=True)
class ChunkResponse:
    claim_id: bytes
    checkpoint: int
    tensor: str
    dtype: str
    shape: tuple[int, ...]
    chunk: int
    data: bytes  # the chunk's bytes
    chunk_path: tuple[bytes, ...]  # Merkle path of the chunk under the tensor's chunk root
    state_root: bytes  # root of the checkpoint
    state_root_path: tuple[bytes, ...]  # Merkle path of state_root in the claim's commitment
    tensor_proof: MerkleProof  # the tensor's leaf under state_root


Message = (TaskPosted | ClaimAnnounced | Vote | DisputeVote | Certificate | DoubleVoteProof | ForcedErrorReveal
           | SyncRequest | SyncResponse | ChunkRequest | ChunkResponse)
GOSSIP_TYPES = ("task_posted", "claim", "vote", "dispute_vote", "certificate", "double_vote", "forced_reveal")
MAX_REVEAL_ROOTS = 2048  # real roots in one forced_reveal: 2048 x ~40 bytes stays far below MAX_GOSSIP_BYTES
STREAM_TYPES = ("sync_request", "sync_response", "chunk_request", "chunk_response")


# --- documents ------------------------------------------------------------------------------


def _hashes(doc: dict[str, Any], key: str, what: str) -> tuple[bytes, ...]:
    path = get_list(doc, key, what, InvalidMessage, MAX_PATH)
    if not all(isinstance(node, bytes) and len(node) == HASH_LEN for node in path):
        raise InvalidMessage(f"{what}.{key} nodes must be 32-byte strings")
    return tuple(path)


def _parse_task_posted(doc: Any) -> TaskPosted:
    w = "task_posted"
    d = validate_keys(doc, {"task", "requester", "reward", "expires_at", "signature"}, w, InvalidMessage)
    task = get_field(d, "task", bytes, w, InvalidMessage)
    if len(task) > MAX_TASK_BYTES:
        raise InvalidMessage(f"task_posted.task exceeds {MAX_TASK_BYTES} bytes")
    return TaskPosted(task, get_field(d, "requester", bytes, w, InvalidMessage, BLS_PUBKEY_LEN),
                      get_uint(d, "reward", w, InvalidMessage), get_uint(d, "expires_at", w, InvalidMessage),
                      get_field(d, "signature", bytes, w, InvalidMessage, BLS_SIGNATURE_LEN))


def _parse_claim(doc: Any) -> ClaimAnnounced:
    d = validate_keys(doc, {"claim", "fetch", "fetch_signature"}, "claim", InvalidMessage)
    claim = get_field(d, "claim", bytes, "claim", InvalidMessage)
    if len(claim) > MAX_CLAIM_BYTES:
        raise InvalidMessage(f"claim.claim exceeds {MAX_CLAIM_BYTES} bytes")
    fetch = get_list(d, "fetch", "claim", InvalidMessage, MAX_FETCH_HINTS)
    if not all(isinstance(h, str) and 0 < len(h) <= MAX_FETCH_HINT_LEN and h.isascii() for h in fetch):
        raise InvalidMessage("claim.fetch hints are short ASCII strings")
    return ClaimAnnounced(claim, tuple(fetch), get_field(d, "fetch_signature", bytes, "claim", InvalidMessage,
                                                         BLS_SIGNATURE_LEN))


def _parse_forced_reveal(doc: Any) -> ForcedErrorReveal:
    w = "forced_reveal"
    d = validate_keys(doc, {"claim_id", "secret", "real_roots"}, w, InvalidMessage)
    pairs = []
    for item in get_list(d, "real_roots", w, InvalidMessage, MAX_REVEAL_ROOTS):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                and not isinstance(item[0], bool) and 0 <= item[0] < 2**32
                and isinstance(item[1], bytes) and len(item[1]) == HASH_LEN):
            raise InvalidMessage("forced_reveal.real_roots holds [index, 32-byte root] pairs")
        pairs.append((item[0], item[1]))
    return ForcedErrorReveal(get_field(d, "claim_id", bytes, w, InvalidMessage, HASH_LEN),
                             get_field(d, "secret", bytes, w, InvalidMessage, HASH_LEN), tuple(pairs))


def _parse_sync_request(doc: Any) -> SyncRequest:
    d = validate_keys(doc, {"since", "limit"}, "sync_request", InvalidMessage)
    limit = get_uint(d, "limit", "sync_request", InvalidMessage, maximum=MAX_SYNC_ITEMS)
    if limit == 0:
        raise InvalidMessage("sync_request.limit must be positive")
    return SyncRequest(get_uint(d, "since", "sync_request", InvalidMessage), limit)


def _parse_sync_response(doc: Any) -> SyncResponse:
    w = "sync_response"
    d = validate_keys(doc, {"items", "next", "complete"}, w, InvalidMessage)
    items = get_list(d, "items", w, InvalidMessage, MAX_SYNC_ITEMS)
    if not all(isinstance(item, bytes) and len(item) <= MAX_GOSSIP_BYTES for item in items):
        raise InvalidMessage("sync_response.items are encoded gossip messages")
    return SyncResponse(tuple(items), get_uint(d, "next", w, InvalidMessage),
                        get_field(d, "complete", bool, w, InvalidMessage))


def _tensor_name(d: dict[str, Any], w: str) -> str:
    name: str = get_field(d, "tensor", str, w, InvalidMessage)
    if not _TENSOR_NAME.fullmatch(name):
        raise InvalidMessage(f"{w}.tensor {name[:40]!r} is not a tensor name")
    return name


# Chunks of the largest tensor: MAX_TENSOR_ELEMENTS 8-byte elements in TENSOR_CHUNK_BYTES pieces.
MAX_TENSOR_CHUNKS = MAX_TENSOR_ELEMENTS * 8 // TENSOR_CHUNK_BYTES


def _parse_chunk_request(doc: Any) -> ChunkRequest:
    w = "chunk_request"
    d = validate_keys(doc, {"claim_id", "checkpoint", "tensor", "chunk"}, w, InvalidMessage)
    return ChunkRequest(get_field(d, "claim_id", bytes, w, InvalidMessage, HASH_LEN),
                        get_uint(d, "checkpoint", w, InvalidMessage, maximum=MAX_CHECKPOINTS),
                        _tensor_name(d, w), get_uint(d, "chunk", w, InvalidMessage, maximum=MAX_TENSOR_CHUNKS))


def _parse_chunk_response(doc: Any) -> ChunkResponse:
    w = "chunk_response"
    d = validate_keys(doc, {"claim_id", "checkpoint", "tensor", "dtype", "shape", "chunk", "data", "chunk_path",
                            "state_root", "state_root_path", "tensor_index", "tensor_count", "tensor_path"},
                      w, InvalidMessage)
    dtype = get_field(d, "dtype", str, w, InvalidMessage)
    if dtype not in DTYPES:
        raise InvalidMessage(f"chunk_response.dtype {dtype[:16]!r} is not one of {sorted(DTYPES)}")
    shape = get_list(d, "shape", w, InvalidMessage, 8)
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_TENSOR_ELEMENTS for x in shape):
        raise InvalidMessage("chunk_response.shape holds a bad dimension")
    data = get_field(d, "data", bytes, w, InvalidMessage)
    if len(data) > TENSOR_CHUNK_BYTES:
        raise InvalidMessage("chunk_response.data exceeds the chunk size")
    proof = MerkleProof(get_uint(d, "tensor_index", w, InvalidMessage), get_uint(d, "tensor_count", w, InvalidMessage),
                        tuple(Digest(h) for h in _hashes(d, "tensor_path", w)))
    return ChunkResponse(get_field(d, "claim_id", bytes, w, InvalidMessage, HASH_LEN),
                         get_uint(d, "checkpoint", w, InvalidMessage, maximum=MAX_CHECKPOINTS), _tensor_name(d, w),
                         dtype, tuple(shape), get_uint(d, "chunk", w, InvalidMessage, maximum=MAX_TENSOR_CHUNKS), data,
                         _hashes(d, "chunk_path", w), get_field(d, "state_root", bytes, w, InvalidMessage, HASH_LEN),
                         _hashes(d, "state_root_path", w), proof)


_PARSERS: dict[str, Callable[[Any], Message]] = {
    "task_posted": _parse_task_posted, "claim": _parse_claim, "vote": parse_vote,
    "dispute_vote": parse_dispute_vote, "certificate": parse_certificate, "double_vote": parse_double_vote,
    "forced_reveal": _parse_forced_reveal, "sync_request": _parse_sync_request, "sync_response": _parse_sync_response,
    "chunk_request": _parse_chunk_request, "chunk_response": _parse_chunk_response,
}


def get_message_document(msg: Message) -> dict[str, Any]:
    """The ``{"type", "body"}`` envelope of a message."""
    if isinstance(msg, TaskPosted):
        body: dict[str, Any] = {"task": msg.task, "requester": msg.requester, "reward": msg.reward,
                                "expires_at": msg.expires_at, "signature": msg.signature}
        return {"type": "task_posted", "body": body}
    if isinstance(msg, ClaimAnnounced):
        return {"type": "claim", "body": {"claim": msg.claim, "fetch": list(msg.fetch),
                                          "fetch_signature": msg.fetch_signature}}
    if isinstance(msg, Vote):
        return {"type": "vote", "body": get_vote_document(msg)}
    if isinstance(msg, DisputeVote):
        return {"type": "dispute_vote", "body": get_dispute_vote_document(msg)}
    if isinstance(msg, Certificate):
        return {"type": "certificate", "body": get_certificate_document(msg)}
    if isinstance(msg, DoubleVoteProof):
        return {"type": "double_vote", "body": get_double_vote_document(msg)}
    if isinstance(msg, ForcedErrorReveal):
        return {"type": "forced_reveal", "body": {"claim_id": msg.claim_id, "secret": msg.secret,
                                                  "real_roots": [[j, root] for j, root in msg.real_roots]}}
    if isinstance(msg, SyncRequest):
        return {"type": "sync_request", "body": {"since": msg.since, "limit": msg.limit}}
    if isinstance(msg, SyncResponse):
        return {"type": "sync_response", "body": {"items": list(msg.items), "next": msg.next,
                                                  "complete": msg.complete}}
    if isinstance(msg, ChunkRequest):
        return {"type": "chunk_request", "body": {"claim_id": msg.claim_id, "checkpoint": msg.checkpoint,
                                                  "tensor": msg.tensor, "chunk": msg.chunk}}
    return {"type": "chunk_response", "body": {
        "claim_id": msg.claim_id, "checkpoint": msg.checkpoint, "tensor": msg.tensor, "dtype": msg.dtype,
        "shape": list(msg.shape), "chunk": msg.chunk, "data": msg.data, "chunk_path": list(msg.chunk_path),
        "state_root": msg.state_root,
        "state_root_path": list(msg.state_root_path), "tensor_index": msg.tensor_proof.index,
        "tensor_count": msg.tensor_proof.size, "tensor_path": list(msg.tensor_proof.path)}}


def encode_message(msg: Message) -> bytes:
    return encode_canonical(get_message_document(msg))


def decode_message(data: bytes, max_bytes: int = MAX_STREAM_BYTES) -> Message:
    """Decode any envelope; raises ``DecodeError`` or another ``InvalidInput`` subclass, nothing else."""
    doc = validate_keys(decode_canonical(data, max_bytes), {"type", "body"}, "envelope", InvalidMessage)
    kind = doc["type"]
    if not isinstance(kind, str) or kind not in _PARSERS:
        raise InvalidMessage(f"unknown message type {str(kind)[:32]!r}")
    return _PARSERS[kind](doc["body"])


def compute_message_id(data: bytes) -> Digest:
    """Gossip de-duplication id of an encoded envelope (canonical, so one id per message)."""
    return Digest(hashlib.sha256(DOMAIN_MESSAGE_ID + data).digest())


# --- stream validation ----------------------------------------------------------------------


def validate_chunk_response(resp: ChunkResponse, request: ChunkRequest, commitment: bytes,
                            num_checkpoints: int) -> Digest:
    """The response answers ``request``, its state root is the claim's committed one for that checkpoint,
    and the chunk itself leads to that root through its two paths (SPEC.md §5.2): each chunk is checked
    alone, on arrival. Returns the chunk's leaf hash ``H(0x00 || data)`` (the fetcher keeps it)."""
    if (resp.claim_id, resp.checkpoint, resp.tensor, resp.chunk) != (
            request.claim_id, request.checkpoint, request.tensor, request.chunk):
        raise InvalidMessage("chunk response does not answer the request")
    if not 0 <= request.checkpoint < num_checkpoints:
        raise InvalidMessage(f"checkpoint {request.checkpoint} outside the claim's {num_checkpoints}")
    proof = MerkleProof(request.checkpoint, num_checkpoints, tuple(Digest(h) for h in resp.state_root_path))
    if compute_root_from_proof(resp.state_root, proof) != commitment:
        raise InvalidProof("chunk's state root is not the claim's committed root for that checkpoint")
    chunk_hash = compute_leaf_hash(resp.data)
    found = compute_root_from_chunk(resp.tensor, resp.dtype, resp.shape, resp.chunk, resp.data, resp.chunk_path,
                                    resp.tensor_proof, chunk_hash)
    if found != resp.state_root:
        raise InvalidProof(f"chunk {resp.chunk} of tensor {resp.tensor} does not lead to the checkpoint's state root")
    return chunk_hash


def compute_fetch_hints_message(claim_id: bytes, fetch: tuple[str, ...]) -> bytes:
    """What the prover signs for its fetch hints: ``DOMAIN_FETCH_HINTS || claim_id || canonical(list)``."""
    return DOMAIN_FETCH_HINTS + claim_id + encode_canonical(list(fetch))


def validate_fetch_hints(msg: ClaimAnnounced, claim: Claim) -> None:
    """Raise ``InvalidFetchHints`` unless the claim's prover signed exactly these hints for this claim."""
    message = compute_fetch_hints_message(compute_claim_id(claim.body), msg.fetch)
    if not bls.is_valid_signature(claim.body.prover, message, msg.fetch_signature):
        raise InvalidFetchHints("fetch hints are not signed by the claim's prover")


# --- gossip validation ----------------------------------------------------------------------


def _or_reject(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn``; a spec violation it finds becomes ``GossipReject`` with the same reason."""
    try:
        return fn(*args)
    except InvalidInput as exc:
        raise GossipReject(f"{type(exc).__name__}: {exc}") from None


def validate_gossip_task_posted(msg: TaskPosted, state: LedgerState, now: int) -> None:
    # The checks that need no signature come first: a flood of postings from an unfunded key, or
    # replays of a posted task, cost one decode each and no pairing.
    # [REJECT] the task decodes and the reward is positive
    task_id = _or_reject(lambda: compute_task_id(decode_task(msg.task)))
    if msg.reward <= 0:
        raise GossipReject("a task's reward must be positive")
    # [IGNORE] the task is not already posted
    if task_id in state.tasks:
        raise GossipIgnore("task already posted")
    # [IGNORE] the posting has not expired
    if now >= msg.expires_at:
        raise GossipIgnore("task posting has expired")
    # [IGNORE] the requester can pay (our view of balances may lag the sender's)
    if state.balances.get(msg.requester, 0) < msg.reward:
        raise GossipIgnore("requester's balance does not cover the reward")
    # [REJECT] the requester signed the posting
    _or_reject(validate_task_posted, msg)


def validate_gossip_claim(msg: ClaimAnnounced, state: LedgerState, now: int) -> Claim:
    # [REJECT] the claim decodes
    claim = _or_reject(decode_claim, msg.claim)
    body = claim.body
    # [IGNORE] the claim is not already registered
    if compute_claim_id(body) in state.claims:
        raise GossipIgnore("claim already registered")
    task = state.tasks.get(body.task_id)
    # [IGNORE] the task is known (it may still be on its way)
    if task is None:
        raise GossipIgnore("claim names a task we have not seen")
    # [IGNORE] the task is open
    if task.status != TASK_OPEN or now >= task.expires_at:
        raise GossipIgnore("task is no longer open")
    # [REJECT] the claim's lengths match the task's
    if (body.num_checkpoints, body.total_steps, body.checkpoint_interval) != (
            task.num_checkpoints, task.total_steps, task.checkpoint_interval):
        raise GossipReject("claim's lengths disagree with its task")
    # [REJECT] the claim answers the task's posting (SPEC.md §16.3): a run keyed to another is no work for it.
    # A view that does not track posting ids (a chain view folds contract events) leaves it to the contract.
    if task.posting_id and body.posting_id != task.posting_id:
        raise GossipReject("claim answers another posting than the task's")
    # [IGNORE] the prover can post the bond (before the signature: an unfunded flood costs no pairing)
    if state.balances.get(body.prover, 0) < compute_claim_bond(task.reward, state.params):
        raise GossipIgnore("prover's balance does not cover the bond")
    # [REJECT] the prover signed the claim
    _or_reject(validate_claim_signature, claim)
    # [REJECT] the prover signed the fetch hints (nobody who re-gossips the claim can swap them)
    _or_reject(validate_fetch_hints, msg, claim)
    return claim


def validate_gossip_vote(msg: Vote, state: LedgerState, now: int) -> None:
    claim = state.claims.get(msg.claim_id)
    # [IGNORE] the claim is known (votes can overtake claims)
    if claim is None:
        raise GossipIgnore("vote on a claim we have not seen")
    # [IGNORE] the claim is not settled
    if is_claim_settled(claim):
        raise GossipIgnore("claim already settled")
    # [REJECT] the signer is a verifier with stake
    _or_reject(get_staked_verifier_index, state.verifiers, msg.verifier)
    # [REJECT] the sample, the segments, the verdict signature and any evidence are valid
    _or_reject(validate_vote, msg, get_claim_context(state, msg.claim_id), state.verifiers)


def validate_gossip_dispute_vote(msg: DisputeVote, state: LedgerState, now: int) -> None:
    dispute = state.disputes.get(msg.dispute_id)
    # [IGNORE] the dispute is known and still open
    if dispute is None or dispute.status != DISPUTE_OPEN:
        raise GossipIgnore("dispute unknown or already resolved")
    # [REJECT] the signer is a staked verifier and the signature verifies
    _or_reject(validate_dispute_vote, msg, state.verifiers)


def validate_gossip_certificate(msg: Certificate, state: LedgerState, now: int) -> None:
    subjects = state.claims if msg.kind == SUBJECT_CLAIM else state.disputes
    # [IGNORE] the subject (claim or dispute) is known
    if msg.subject not in subjects:
        raise GossipIgnore("certificate on a subject we have not seen")
    # [IGNORE] the subject is still undecided
    claim = state.claims.get(msg.subject)
    dispute = state.disputes.get(msg.subject)
    if (claim is not None and claim.status != CLAIM_PENDING) or (dispute is not None and dispute.status != DISPUTE_OPEN):
        raise GossipIgnore("subject already decided")
    # [REJECT] signers distinct and staked, quorum of stake, aggregate signature verifies
    _or_reject(validate_certificate, msg, state.verifiers, state.params)


def validate_gossip_double_vote(msg: DoubleVoteProof, state: LedgerState, now: int) -> None:
    # [REJECT] both signatures are by one registered verifier on opposite verdicts of one subject
    index = _or_reject(validate_double_vote, msg, state.verifiers)
    # [IGNORE] the verifier has not already been slashed for this subject
    if (index, msg.kind, msg.subject) in state.slashed_double_votes:
        raise GossipIgnore("equivocation already punished")


def validate_gossip_forced_reveal(msg: ForcedErrorReveal, state: LedgerState, now: int) -> None:
    # [IGNORE] the claim is known and not yet revealed
    claim = state.claims.get(msg.claim_id)
    if claim is None:
        raise GossipIgnore("reveal names a claim we have not seen")
    if msg.claim_id in state.forced:
        raise GossipIgnore("forced error already revealed")
    # [REJECT] the reveal reproduces the claim's commitment
    _or_reject(validate_forced_reveal, msg, claim.commitment, claim.num_checkpoints)


def validate_gossip_message(data: bytes, state: LedgerState, now: int, seen: AbstractSet[bytes] = frozenset()) -> Message:
    """Full gossip check of raw bytes; returns the decoded message when it should be relayed."""
    # [REJECT] the message fits the gossip size limit
    if len(data) > MAX_GOSSIP_BYTES:
        raise GossipReject(f"gossip message of {len(data)} bytes exceeds {MAX_GOSSIP_BYTES}")
    # [IGNORE] the message has not been seen before
    if compute_message_id(data) in seen:
        raise GossipIgnore("duplicate message")
    # [REJECT] the bytes are a canonical envelope of a known type with a valid schema
    msg = _or_reject(decode_message, data, MAX_GOSSIP_BYTES)
    if isinstance(msg, TaskPosted):
        validate_gossip_task_posted(msg, state, now)
    elif isinstance(msg, ClaimAnnounced):
        validate_gossip_claim(msg, state, now)
    else:
        validate_gossip_verdict_message(msg, state, now)
    return msg


def validate_gossip_verdict_message(msg: Message, state: LedgerState, now: int) -> None:
    """The gossip checks of every message but postings and claims (votes, certificates, proofs,
    reveals): the same whether the ledger is this model or the settlement contract's view."""
    if isinstance(msg, Vote):
        validate_gossip_vote(msg, state, now)
    elif isinstance(msg, DisputeVote):
        validate_gossip_dispute_vote(msg, state, now)
    elif isinstance(msg, Certificate):
        validate_gossip_certificate(msg, state, now)
    elif isinstance(msg, DoubleVoteProof):
        validate_gossip_double_vote(msg, state, now)
    elif isinstance(msg, ForcedErrorReveal):
        validate_gossip_forced_reveal(msg, state, now)
    else:
        # [REJECT] stream messages never travel on gossip
        raise GossipReject(f"{type(msg).__name__} is a stream message, not gossip")


def compute_claim_announced(claim: Claim, fetch: tuple[str, ...], secret_key: bytes) -> ClaimAnnounced:
    """The claims-topic message for ``claim`` with ``fetch`` hints signed by the prover's ``secret_key``."""
    signature = bls.sign(secret_key, compute_fetch_hints_message(compute_claim_id(claim.body), fetch))
    return ClaimAnnounced(encode_claim(claim), fetch, signature)
