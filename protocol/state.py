"""Canonical training state and its root (SPEC.md §5).

A training state is a set of named tensors: parameters (``param/...``), optimizer slots
(``opt/<slot>/...``) and the step counter (``meta/step``). Each tensor becomes one Merkle
leaf whose data is a small header followed by the tensor's raw little-endian bytes; the
state root is the Merkle root over the leaves in byte order of their names. A verifier that
holds one tensor and its proof can check it against the root alone.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .constants import (
    DOMAIN_LEAF,
    MAX_TENSOR_ELEMENTS,
    MAX_TENSORS_PER_STATE,
    Digest,
)
from .errors import InvalidCheckpoint
from .merkle import (
    MerkleProof,
    compute_proof_from_leaf_hashes,
    compute_root_from_leaf_hashes,
    compute_root_from_proof,
)

DTYPES: Mapping[str, np.dtype] = {"f32": np.dtype("<f4"), "i64": np.dtype("<i8")}
STEP_TENSOR = "meta/step"
_NAME_RE = re.compile(r"[a-z0-9_./-]{1,128}")


@dataclass(frozen=True)
class TensorLeaf:
    """One named tensor as canonical bytes: ``data`` is C-order little-endian."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=DTYPES[self.dtype]).reshape(self.shape)


def compute_leaf_header(name: str, dtype: str, shape: Sequence[int]) -> bytes:
    """Header bytes that precede the raw tensor bytes inside a leaf."""
    name_b = name.encode("ascii")
    header = DOMAIN_LEAF + struct.pack("<H", len(name_b)) + name_b
    header += struct.pack("<B", len(dtype)) + dtype.encode("ascii")
    header += struct.pack("<B", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
    return header


def validate_tensor_leaf(leaf: TensorLeaf, check_data: bool = True) -> None:
    """Raises InvalidCheckpoint naming the problem; ``check_data=False`` checks name, dtype and
    shape only (the caller checks the bytes itself)."""
    if not _NAME_RE.fullmatch(leaf.name):
        raise InvalidCheckpoint(f"tensor name {leaf.name!r} is not allowed")
    if leaf.dtype not in DTYPES:
        raise InvalidCheckpoint(f"tensor {leaf.name}: dtype {leaf.dtype!r} is not one of {sorted(DTYPES)}")
    if len(leaf.shape) > 8 or any((not isinstance(d, int)) or d < 0 for d in leaf.shape):
        raise InvalidCheckpoint(f"tensor {leaf.name}: bad shape {leaf.shape}")
    count = 1
    for d in leaf.shape:
        count *= d
    if count > MAX_TENSOR_ELEMENTS:
        raise InvalidCheckpoint(f"tensor {leaf.name}: {count} elements exceed the limit")
    if not check_data:
        return
    if len(leaf.data) != count * DTYPES[leaf.dtype].itemsize:
        raise InvalidCheckpoint(
            f"tensor {leaf.name}: {len(leaf.data)} bytes for shape {leaf.shape} and dtype {leaf.dtype}"
        )
    if leaf.dtype == "f32" and not bool(np.isfinite(leaf.array()).all()):
        raise InvalidCheckpoint(f"tensor {leaf.name} holds NaN or Inf; such a state is never valid")


def compute_tensor_leaf_hash(leaf: TensorLeaf) -> Digest:
    """``H(0x00 || header || raw bytes)``, streamed so large tensors are not copied."""
    h = hashlib.sha256(b"\x00")
    h.update(compute_leaf_header(leaf.name, leaf.dtype, leaf.shape))
    h.update(leaf.data)
    return Digest(h.digest())


# Elements per chunk when a leaf is checked and hashed straight from an array: few enough calls
# that their overhead is nothing, a size that stays in the last-level cache between the two reads.
_CHUNK = 1 << 20


def _dtype_of_array(arr: np.ndarray) -> str:
    for name, dt in DTYPES.items():
        if arr.dtype == dt:
            return name
    raise InvalidCheckpoint(f"array dtype {arr.dtype} is not one of {sorted(DTYPES)} (little-endian)")


def compute_array_leaf_hash(name: str, arr: np.ndarray) -> Digest:
    """``compute_tensor_leaf_hash`` of the leaf (name, arr's dtype, arr's shape, arr's bytes), read
    straight from the array's memory (no copy), with the checks of ``validate_tensor_leaf``.

    ``arr`` must be C-contiguous little-endian float32 or int64; the finite check and the hash
    share one pass over cache-sized chunks."""
    if not arr.flags.c_contiguous:
        raise InvalidCheckpoint(f"tensor {name}: array is not C-contiguous")
    dtype = _dtype_of_array(arr)
    shape = tuple(int(d) for d in arr.shape)
    validate_tensor_leaf(TensorLeaf(name, dtype, shape, b""), check_data=False)
    h = hashlib.sha256(b"\x00")
    h.update(compute_leaf_header(name, dtype, shape))
    flat = arr.reshape(-1)
    for i in range(0, flat.size, _CHUNK):
        part = flat[i:i + _CHUNK]
        # One fast pass: a NaN or inf element makes the float32 sum non-finite. A finite sum proves
        # every element finite; a non-finite one (also possible by overflow) gets the exact check.
        if dtype == "f32" and not math.isfinite(part.sum()) and not bool(np.isfinite(part).all()):
            raise InvalidCheckpoint(f"tensor {name} holds NaN or Inf; such a state is never valid")
        h.update(part.data)
    return Digest(h.digest())


def compute_state_root_from_arrays(arrays: Mapping[str, np.ndarray]) -> Digest:
    """``compute_state_root`` of the state whose leaves are the named arrays (SPEC.md §5.3), hashed
    from the arrays' memory without building byte copies. Same checks, same root."""
    if len(arrays) > MAX_TENSORS_PER_STATE:
        raise InvalidCheckpoint(f"{len(arrays)} tensors exceed the limit of {MAX_TENSORS_PER_STATE}")
    names = sorted(arrays, key=lambda n: n.encode("ascii", "replace"))
    step = arrays.get(STEP_TENSOR)
    if step is None or step.dtype != DTYPES["i64"] or step.shape != ():
        raise InvalidCheckpoint(f"state has no scalar i64 {STEP_TENSOR}")
    return compute_root_from_leaf_hashes([compute_array_leaf_hash(n, arrays[n]) for n in names])


def get_sorted_leaves(leaves: Sequence[TensorLeaf]) -> list[TensorLeaf]:
    """Leaves in canonical order; raises on duplicates, bad leaves or a missing step."""
    if len(leaves) > MAX_TENSORS_PER_STATE:
        raise InvalidCheckpoint(f"{len(leaves)} tensors exceed the limit of {MAX_TENSORS_PER_STATE}")
    ordered = sorted(leaves, key=lambda leaf: leaf.name.encode("ascii", "replace"))
    for a, b in zip(ordered, ordered[1:]):
        if a.name == b.name:
            raise InvalidCheckpoint(f"tensor {a.name} appears twice")
    for leaf in ordered:
        validate_tensor_leaf(leaf)
    if not any(leaf.name == STEP_TENSOR and leaf.dtype == "i64" and leaf.shape == () for leaf in ordered):
        raise InvalidCheckpoint(f"state has no scalar i64 {STEP_TENSOR}")
    return ordered


def compute_state_leaf_hashes(leaves: Sequence[TensorLeaf]) -> list[Digest]:
    return [compute_tensor_leaf_hash(leaf) for leaf in get_sorted_leaves(leaves)]


def compute_state_root(leaves: Sequence[TensorLeaf]) -> Digest:
    """Merkle root of a training state (SPEC.md §5.3)."""
    return compute_root_from_leaf_hashes(compute_state_leaf_hashes(leaves))


def compute_tensor_proof(leaves: Sequence[TensorLeaf], name: str) -> MerkleProof:
    ordered = get_sorted_leaves(leaves)
    names = [leaf.name for leaf in ordered]
    if name not in names:
        raise KeyError(name)
    hashes = [compute_tensor_leaf_hash(leaf) for leaf in ordered]
    return compute_proof_from_leaf_hashes(hashes, names.index(name))


def compute_root_from_tensor_proof(leaf: TensorLeaf, proof: MerkleProof) -> Digest:
    """Root implied by one tensor and its proof (lets a fetcher check tensors one at a time)."""
    validate_tensor_leaf(leaf)
    header = compute_leaf_header(leaf.name, leaf.dtype, leaf.shape)
    # compute_root_from_proof leaf-hashes its argument; the header+data is the leaf data.
    return compute_root_from_proof(header + leaf.data, proof)


def get_step(leaves: Sequence[TensorLeaf]) -> int:
    for leaf in leaves:
        if leaf.name == STEP_TENSOR:
            return int(leaf.array())
    raise InvalidCheckpoint(f"state has no {STEP_TENSOR}")
