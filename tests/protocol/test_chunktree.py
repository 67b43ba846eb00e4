"""The chunk tree inside a tensor's leaf (SPEC.md §5.2): chunk counts and lengths at the boundaries, every
chunk checked alone against the state root, and a flipped byte in chunk k refused at chunk k only."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from protocol.constants import TENSOR_CHUNK_BYTES as C
from protocol.errors import InvalidCheckpoint, InvalidProof
from protocol.merkle import compute_merkle_root
from protocol.state import (
    TensorLeaf,
    compute_chunk_hashes,
    compute_chunk_proof,
    compute_root_from_chunk,
    compute_state_root,
    compute_tensor_leaf_hash,
    compute_tensor_proof,
    get_chunk_count,
    get_chunk_length,
)


def test_chunk_count_and_lengths_at_the_boundaries() -> None:
    assert C & (C - 1) == 0 and C % 8 == 0  # a power of two: no element straddles two chunks
    assert [get_chunk_count(n) for n in (0, 1, C - 1, C, C + 1, 3 * C)] == [1, 1, 1, 1, 2, 3]
    assert get_chunk_length(0, 0) == 0 and get_chunk_length(C, 0) == C
    assert [get_chunk_length(2 * C + 12, k) for k in range(3)] == [C, C, 12]
    with pytest.raises(IndexError):
        get_chunk_length(C, 1)


def test_chunk_root_is_the_merkle_root_of_the_chunks() -> None:
    raw = np.arange((2 * C + 12) // 4, dtype="<f4").tobytes()
    chunks = [raw[:C], raw[C:2 * C], raw[2 * C:]]
    assert compute_chunk_hashes(raw) == [hashlib.sha256(b"\x00" + c).digest() for c in chunks]
    empty = hashlib.sha256(b"\x00").digest()  # one empty chunk, not the root of zero leaves
    assert compute_chunk_hashes(b"") == [empty]
    assert compute_merkle_root(chunks) != compute_merkle_root([raw])


def _state(n_elements: int) -> tuple[list[TensorLeaf], bytes]:
    raw = np.linspace(-1, 1, n_elements, dtype="<f4").tobytes()
    leaves = [TensorLeaf("param/w", "f32", (n_elements,), raw),
              TensorLeaf("param/e", "f32", (0, 4), b""),
              TensorLeaf("meta/step", "i64", (), np.int64(9).tobytes())]
    return leaves, compute_state_root(leaves)


def test_each_chunk_checks_alone_and_a_flipped_byte_fails_at_its_chunk() -> None:
    leaves, root = _state(3 * C // 4 - 7)  # three chunks, the last 28 bytes short of full
    raw = leaves[0].data
    proof = compute_tensor_proof(leaves, "param/w")
    n = get_chunk_count(len(raw))
    pieces = [raw[k * C:(k + 1) * C] for k in range(n)]
    paths = [compute_chunk_proof(raw, k).path for k in range(n)]
    for k in range(n):
        assert compute_root_from_chunk("param/w", "f32", (len(raw) // 4,), k, pieces[k], paths[k], proof) == root
    for bad_k in range(n):
        flipped = bytearray(pieces[bad_k])
        flipped[len(flipped) // 3] ^= 0x40
        for k in range(n):
            data = bytes(flipped) if k == bad_k else pieces[k]
            found = compute_root_from_chunk("param/w", "f32", (len(raw) // 4,), k, data, paths[k], proof)
            assert (found == root) == (k != bad_k)


def test_wrong_length_index_shape_or_path_is_refused() -> None:
    leaves, root = _state(C // 4 + 3)  # two chunks, the last 12 bytes
    raw = leaves[0].data
    proof = compute_tensor_proof(leaves, "param/w")
    shape = (len(raw) // 4,)
    last = compute_chunk_proof(raw, 1).path
    with pytest.raises(InvalidProof, match="bytes, not 12"):
        compute_root_from_chunk("param/w", "f32", shape, 1, raw[C:] + b"\x00\x00\x00\x00", last, proof)
    with pytest.raises(InvalidProof, match="outside"):
        compute_root_from_chunk("param/w", "f32", shape, 2, b"", last, proof)
    with pytest.raises(InvalidProof, match="shorter|longer"):
        compute_root_from_chunk("param/w", "f32", shape, 1, raw[C:], last + last, proof)
    with pytest.raises(InvalidCheckpoint):
        compute_root_from_chunk("param/w", "f64", shape, 1, raw[C:], last, proof)
    # The same bytes under another stated shape lead elsewhere: the shape is inside the leaf.
    assert compute_root_from_chunk("param/w", "f32", (1, shape[0]), 1, raw[C:], last, proof) != root
    # The empty tensor has one empty chunk with an empty path.
    e_proof = compute_tensor_proof(leaves, "param/e")
    assert compute_root_from_chunk("param/e", "f32", (0, 4), 0, b"", (), e_proof) == root
    assert compute_tensor_leaf_hash(leaves[1]) != compute_tensor_leaf_hash(TensorLeaf("param/e", "f32", (4, 0), b""))
