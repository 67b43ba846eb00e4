"""Merkle trees over SHA-256 as in RFC 6962 §2.1 (SPEC.md §4).

Leaves are hashed as ``H(0x00 || data)`` and interior nodes as ``H(0x01 || left || right)``,
so a leaf can never pass for an interior node. A tree of n leaves splits at the largest
power of two below n; no padding is ever hashed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from .constants import HASH_LEN, Digest
from .errors import InvalidProof

EMPTY_ROOT: Digest = Digest(hashlib.sha256(b"").digest())


def compute_leaf_hash(data: bytes) -> Digest:
    return Digest(hashlib.sha256(b"\x00" + data).digest())


def compute_node_hash(left: bytes, right: bytes) -> Digest:
    return Digest(hashlib.sha256(b"\x01" + left + right).digest())


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root_of_hashes(hashes: Sequence[bytes]) -> Digest:
    n = len(hashes)
    if n == 1:
        return Digest(bytes(hashes[0]))
    k = _split(n)
    return compute_node_hash(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


def compute_merkle_root(leaves: Sequence[bytes]) -> Digest:
    """Root over the leaf *data* items (each is leaf-hashed first)."""
    if not leaves:
        return EMPTY_ROOT
    return _root_of_hashes([compute_leaf_hash(leaf) for leaf in leaves])


@dataclass(frozen=True)
class MerkleProof:
    """Audit path for leaf ``index`` in a tree of ``size`` leaves, bottom-up."""

    index: int
    size: int
    path: tuple[Digest, ...]


def _path(index: int, hashes: Sequence[bytes]) -> list[Digest]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return _path(index, hashes[:k]) + [_root_of_hashes(hashes[k:])]
    return _path(index - k, hashes[k:]) + [_root_of_hashes(hashes[:k])]


def compute_merkle_proof(leaves: Sequence[bytes], index: int) -> MerkleProof:
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaves)} leaves")
    hashes = [compute_leaf_hash(leaf) for leaf in leaves]
    return MerkleProof(index=index, size=len(leaves), path=tuple(_path(index, hashes)))


def compute_root_from_proof(leaf: bytes, proof: MerkleProof) -> Digest:
    """Recompute the root implied by ``leaf`` and ``proof`` (RFC 9162 §2.1.3.2)."""
    return compute_root_from_leaf_hash(compute_leaf_hash(leaf), proof)


def compute_root_from_leaf_hash(leaf_hash: bytes, proof: MerkleProof) -> Digest:
    """``compute_root_from_proof`` for a leaf given by its hash ``H(0x00 || data)``."""
    if not 0 <= proof.index < proof.size:
        raise InvalidProof(f"leaf index {proof.index} outside a tree of {proof.size} leaves")
    for node in proof.path:
        if len(node) != HASH_LEN:
            raise InvalidProof("proof node is not 32 bytes")
    fn, sn = proof.index, proof.size - 1
    result = Digest(bytes(leaf_hash))
    for node in proof.path:
        if sn == 0:
            raise InvalidProof("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            result = compute_node_hash(node, result)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            result = compute_node_hash(result, node)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("proof is shorter than the tree is deep")
    return result


def validate_merkle_proof(leaf: bytes, proof: MerkleProof, root: bytes) -> None:
    """Raise ``InvalidProof`` unless ``leaf`` sits at ``proof.index`` under ``root``."""
    found = compute_root_from_proof(leaf, proof)
    if found != root:
        raise InvalidProof(
            f"leaf {proof.index} of {proof.size} leads to root {found.hex()}, expected {root.hex()}"
        )


def compute_root_from_leaf_hashes(hashes: Sequence[bytes]) -> Digest:
    """Root over already leaf-hashed items (used when leaves are hashed incrementally)."""
    if not hashes:
        return EMPTY_ROOT
    return _root_of_hashes(hashes)


def compute_proof_from_leaf_hashes(hashes: Sequence[bytes], index: int) -> MerkleProof:
    if not 0 <= index < len(hashes):
        raise IndexError(f"leaf index {index} outside a tree of {len(hashes)} leaves")
    return MerkleProof(index=index, size=len(hashes), path=tuple(_path(index, hashes)))
