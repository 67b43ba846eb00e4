"""Canonical training state and its root (SPEC.md §5).

A training state is a set of named tensors: parameters (``param/...``), optimizer slots
(``opt/<slot>/...``) and the step counter (``meta/step``). Each tensor becomes one Merkle
leaf whose data is a small header followed by its *chunk root*: the Merkle root over
``TENSOR_CHUNK_BYTES``-sized chunks of the tensor's raw little-endian bytes. The state root is
the Merkle root over the leaves in byte order of their names. A holder of one chunk, its path
under the chunk root and the tensor's proof under the state root can check that chunk alone.
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
    TENSOR_CHUNK_BYTES,
    Digest,
)
from .errors import InvalidCheckpoint
from .errors import InvalidProof
from .merkle import (
    MerkleProof,
    compute_leaf_hash,
    compute_proof_from_leaf_hashes,
    compute_root_from_leaf_hash,
    compute_root_from_leaf_hashes,
)

DTYPES: Mapping[str, np.dtype] = {"f32": np.dtype("<f4"), "i64": np.dtype("<i8")}
STEP_TENSOR = "meta/step"
_NAME_RE = re.compile(r"[a-z0-9_./-]{1,128}")
# Elements per piece of the finite check: few enough calls that their overhead is nothing.
_CHUNK = 1 << 20


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


def is_all_finite(arr: np.ndarray) -> bool:
    """True iff no element of the float array is NaN or +-inf.

    One fast pass per chunk: a NaN or inf element makes the float32 sum non-finite, so a finite
    sum proves every element finite; a non-finite sum (also possible by overflow of finite
    values) gets the exact element-wise check."""
    flat = arr.reshape(-1)
    for i in range(0, flat.size, _CHUNK):
        part = flat[i:i + _CHUNK]
        if not math.isfinite(part.sum()) and not bool(np.isfinite(part).all()):
            return False
    return True


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
    if leaf.dtype == "f32" and not is_all_finite(leaf.array()):
        raise InvalidCheckpoint(f"tensor {leaf.name} holds NaN or Inf; such a state is never valid")


def get_chunk_count(nbytes: int) -> int:
    """Chunks of a tensor of ``nbytes`` raw bytes: ``max(1, ceil(nbytes / TENSOR_CHUNK_BYTES))`` (an empty
    tensor has one empty chunk)."""
    return max(1, -(-nbytes // TENSOR_CHUNK_BYTES))


def get_chunk_length(nbytes: int, index: int) -> int:
    """Bytes of chunk ``index`` of a tensor of ``nbytes`` bytes (every chunk but the last is full)."""
    if not 0 <= index < get_chunk_count(nbytes):
        raise IndexError(f"chunk {index} outside a tensor of {get_chunk_count(nbytes)} chunks")
    return min(TENSOR_CHUNK_BYTES, nbytes - index * TENSOR_CHUNK_BYTES)


def get_tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count * DTYPES[dtype].itemsize


def compute_chunk_hashes(data: bytes | memoryview) -> list[Digest]:
    """Leaf hashes ``H(0x00 || chunk)`` of the tensor bytes' chunks, read in place (no copies)."""
    view = memoryview(data).cast("B")
    out = []
    for i in range(get_chunk_count(len(view))):
        h = hashlib.sha256(b"\x00")
        h.update(view[i * TENSOR_CHUNK_BYTES:(i + 1) * TENSOR_CHUNK_BYTES])
        out.append(Digest(h.digest()))
    return out


def compute_leaf_data(name: str, dtype: str, shape: Sequence[int], chunk_root: bytes) -> bytes:
    """The tensor's leaf data: header || chunk root (SPEC.md §5.2)."""
    return compute_leaf_header(name, dtype, shape) + chunk_root


def compute_tensor_leaf_hash(leaf: TensorLeaf) -> Digest:
    """``H(0x00 || header || chunk root of the raw bytes)``; the bytes are hashed in place."""
    chunk_root = compute_root_from_leaf_hashes(compute_chunk_hashes(leaf.data))
    return compute_leaf_hash(compute_leaf_data(leaf.name, leaf.dtype, leaf.shape, chunk_root))


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
    flat = arr.reshape(-1)
    raw = flat.data.cast("B")
    # Pieces of _CHUNK elements (a multiple of TENSOR_CHUNK_BYTES): one finite check per piece (few numpy
    # calls), then its chunks are hashed while the piece is still in cache.
    step = _CHUNK * arr.itemsize
    hashes: list[Digest] = []
    for start in range(0, max(len(raw), 1), step):
        if dtype == "f32" and not is_all_finite(flat[start // 4:(start + step) // 4]):
            raise InvalidCheckpoint(f"tensor {name} holds NaN or Inf; such a state is never valid")
        hashes += compute_chunk_hashes(raw[start:start + step])
    return compute_leaf_hash(compute_leaf_data(name, dtype, shape, compute_root_from_leaf_hashes(hashes)))


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
    """Root implied by one tensor and its proof (lets a holder check tensors one at a time)."""
    validate_tensor_leaf(leaf)
    return compute_root_from_leaf_hash(compute_tensor_leaf_hash(leaf), proof)


def compute_chunk_proof(data: bytes | memoryview, index: int) -> MerkleProof:
    """Path of chunk ``index`` of the tensor bytes ``data`` under their chunk root."""
    return compute_proof_from_leaf_hashes(compute_chunk_hashes(data), index)


def compute_root_from_chunk(name: str, dtype: str, shape: Sequence[int], index: int, data: bytes,
                            chunk_path: Sequence[bytes], tensor_proof: MerkleProof,
                            chunk_hash: bytes | None = None) -> Digest:
    """State root implied by chunk ``index`` of tensor (name, dtype, shape), the chunk's path under the
    tensor's chunk root and the tensor's proof under the state root (SPEC.md §5.2). ``chunk_hash``, when
    the caller has it, is ``H(0x00 || data)`` (saves hashing the chunk twice).

    Raises ``InvalidCheckpoint`` for a bad name, dtype or shape, ``InvalidProof`` for a chunk of the wrong
    length or a path that cannot belong to the tensor's chunk tree."""
    validate_tensor_leaf(TensorLeaf(name, dtype, tuple(shape), b""), check_data=False)
    nbytes = get_tensor_nbytes(dtype, shape)
    count = get_chunk_count(nbytes)
    if not 0 <= index < count:
        raise InvalidProof(f"chunk {index} outside tensor {name}'s {count} chunks")
    if len(data) != get_chunk_length(nbytes, index):
        raise InvalidProof(f"chunk {index} of tensor {name} has {len(data)} bytes, "
                           f"not {get_chunk_length(nbytes, index)}")
    leaf_hash = compute_leaf_hash(data) if chunk_hash is None else Digest(bytes(chunk_hash))
    chunk_root = compute_root_from_leaf_hash(leaf_hash,
                                             MerkleProof(index, count, tuple(Digest(bytes(p)) for p in chunk_path)))
    return compute_root_from_leaf_hash(compute_leaf_hash(compute_leaf_data(name, dtype, shape, chunk_root)),
                                       tensor_proof)


def get_step(leaves: Sequence[TensorLeaf]) -> int:
    for leaf in leaves:
        if leaf.name == STEP_TENSOR:
            return int(leaf.array())
    raise InvalidCheckpoint(f"state has no {STEP_TENSOR}")
