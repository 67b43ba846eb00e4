"""Forced errors: claims built to be wrong, so that a verifier that accepts without working is caught
(SPEC.md §16.9, after Truebit's forced errors).

A tester (any funded prover) registers an ordinary-looking claim whose checkpoint roots it draws
from a secret: ``r_j = H(DOMAIN_FORCED_ROOT || secret || u64le(j))`` for every index j outside a set
of real roots it chooses (by default the initial state, so that the cheap ``init`` check passes, and
every other even index, so that fetching a sampled start succeeds half of the time). A
pseudo-random root is the state root of no state (finding one is a SHA-256 preimage), so no
checkpoint hashes to it and no replay ends in it: every segment with a pseudo-random end point is
false, and an honest verifier never accepts such a claim (it cannot fetch the final state, and a
sampled segment either cannot be fetched or does not replay).

After the votes the tester reveals the secret and the real roots. The ledger recomputes the
commitment from them, which proves which segments are false without any replay. An accept vote on
the claim whose sample holds such a segment, or any accept vote when the final root is
pseudo-random, is then proof that its verifier voted without doing the work, and it is slashed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from .constants import DOMAIN_FORCED_ROOT, HASH_LEN
from .errors import InvalidTransition
from .merkle import compute_merkle_root


@dataclass(frozen=True)
class ForcedErrorReveal:
    claim_id: bytes
    secret: bytes  # 32 bytes
    real_roots: tuple[tuple[int, bytes], ...]  # (checkpoint index, state root), strictly increasing indices


def compute_forced_root(secret: bytes, index: int) -> bytes:
    return hashlib.sha256(DOMAIN_FORCED_ROOT + secret + index.to_bytes(8, "little")).digest()


def compute_forced_roots(secret: bytes, num_checkpoints: int, real: Mapping[int, bytes]) -> list[bytes]:
    """Checkpoint roots of a forced-error claim: ``real[j]`` where given, pseudo-random elsewhere."""
    return [real[j] if j in real else compute_forced_root(secret, j) for j in range(num_checkpoints)]


def validate_forced_reveal(reveal: ForcedErrorReveal, commitment: bytes, num_checkpoints: int) -> frozenset[int]:
    """Check that the reveal reproduces ``commitment``; returns the indices whose roots are pseudo-random.

    Raises ``InvalidTransition`` when the secret is malformed, the real indices are not strictly
    increasing within range, the commitment differs, or no segment is provably false.
    """
    if len(reveal.secret) != HASH_LEN:
        raise InvalidTransition("a forced-error secret is 32 bytes")
    indices = [j for j, _ in reveal.real_roots]
    if indices != sorted(set(indices)) or any(not 0 <= j < num_checkpoints for j in indices):
        raise InvalidTransition("real roots must have strictly increasing indices inside the claim")
    if any(len(root) != HASH_LEN for _, root in reveal.real_roots):
        raise InvalidTransition("a state root is 32 bytes")
    real = dict(reveal.real_roots)
    if compute_merkle_root(compute_forced_roots(reveal.secret, num_checkpoints, real)) != commitment:
        raise InvalidTransition("the reveal does not reproduce the claim's commitment: not a forced error")
    pseudo = frozenset(range(num_checkpoints)) - frozenset(real)
    if not pseudo:
        raise InvalidTransition("a forced error needs at least one pseudo-random root")
    return pseudo


def is_lazy_accept(segments: tuple[int, ...] | list[int], pseudo: frozenset[int], num_checkpoints: int) -> bool:
    """Whether an accept vote with ``segments`` on a revealed forced-error claim proves the voter lazy:
    it accepted the final state (pseudo-random, so never fetched) or a segment with a pseudo-random
    end point (never fetched, or never replayed)."""
    if num_checkpoints - 1 in pseudo:
        return True
    return any(j in pseudo or j + 1 in pseudo for j in segments)
