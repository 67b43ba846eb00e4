"""The operator trace commitment of one training step (SPEC.md §17.3). Pure, no torch.

A step's trace is a list of entries ``e_0 .. e_{n-1}`` (canonical msgpack maps). The prover
commits to the Merkle root (SPEC.md §4) of any prefix of them; because RFC 6962 trees are
built left to right, the root of the first ``a + 1`` entries follows from the *peaks* of the
first ``a`` (the roots of the perfect subtrees that the binary digits of ``a`` describe) and
the new leaf alone. That makes the last round of the game compact: one entry, ``popcount(a)``
peaks, and one inclusion proof per input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .constants import HASH_LEN, Digest
from .encoding import decode_canonical, encode_canonical
from .errors import DecodeError, InvalidProof
from .merkle import EMPTY_ROOT, compute_leaf_hash, compute_node_hash

MAX_ENTRY_BYTES = 64 * 1024
MAX_TRACE_ENTRIES = 1 << 20
MAX_ENTRY_TENSORS = 1024
MAX_NDIM = 8
OP_STATE = "state"  # e_0: the agreed state's tensors; out[0] is the state root itself
OP_STATE_ROOT = "state_root"  # e_{n-1}: hashes the new state; out[0] is the new state root
DTYPES = ("f32", "i64", "bool", "root")
_OP_RE = re.compile(r"^[a-z0-9_]{1,32}(\.(forward|backward))?$")


def _check_tensor_ref(ref: Any, with_source: bool, where: str) -> None:
    n = 5 if with_source else 3
    if not isinstance(ref, list) or len(ref) != n:
        raise DecodeError(f"{where}: expected a list of {n} items")
    h, dtype, shape = ref[0], ref[1], ref[2]
    if not isinstance(h, bytes) or len(h) != HASH_LEN:
        raise DecodeError(f"{where}: hash is not 32 bytes")
    if dtype not in DTYPES:
        raise DecodeError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
        raise DecodeError(f"{where}: shape must be at most {MAX_NDIM} non-negative ints")
    if with_source:
        m, o = ref[3], ref[4]
        if (m is None) != (o is None):
            raise DecodeError(f"{where}: source entry and output index must both be set or both nil")
        if m is not None and not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_TRACE_ENTRIES
                                     for v in (m, o)):
            raise DecodeError(f"{where}: source indices must be uints")


def validate_entry(entry: Any) -> dict[str, Any]:
    """Check the schema of a decoded entry; raises ``DecodeError`` naming the field."""
    if not isinstance(entry, dict) or set(entry) != {"i", "op", "args", "in", "out"}:
        raise DecodeError("trace entry must be a map with exactly i, op, args, in, out")
    i = entry["i"]
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < MAX_TRACE_ENTRIES:
        raise DecodeError("trace entry index out of range")
    if not isinstance(entry["op"], str) or not _OP_RE.match(entry["op"]):
        raise DecodeError(f"trace entry op {entry['op']!r} is not an operator name")
    if not isinstance(entry["args"], list):
        raise DecodeError("trace entry args must be a list")
    for key in ("in", "out"):
        if not isinstance(entry[key], list) or len(entry[key]) > MAX_ENTRY_TENSORS:
            raise DecodeError(f"trace entry {key} must be a list of at most {MAX_ENTRY_TENSORS}")
    for j, ref in enumerate(entry["in"]):
        _check_tensor_ref(ref, True, f"input {j}")
        if ref[3] is not None and ref[3] >= i:
            raise DecodeError(f"input {j} names entry {ref[3]}, which is not before entry {i}")
    for j, ref in enumerate(entry["out"]):
        if ref is not None:
            _check_tensor_ref(ref, False, f"output {j}")
    return entry


def encode_entry(entry: dict[str, Any]) -> bytes:
    data = encode_canonical(entry)
    if len(data) > MAX_ENTRY_BYTES:
        raise DecodeError(f"trace entry of {len(data)} bytes exceeds {MAX_ENTRY_BYTES}")
    return data


def decode_entry(data: bytes) -> dict[str, Any]:
    return validate_entry(decode_canonical(data, MAX_ENTRY_BYTES))


def compute_entry_hash(data: bytes) -> Digest:
    """The Merkle leaf hash of an encoded entry."""
    return compute_leaf_hash(data)


def get_skeleton(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without its tensor hashes: what the task alone determines (op, constants,
    shapes, dtypes, and which earlier output feeds each input)."""
    return {
        "i": entry["i"], "op": entry["op"], "args": entry["args"],
        "in": [ref[1:] for ref in entry["in"]],
        "out": [None if ref is None else ref[1:] for ref in entry["out"]],
    }


def compute_peaks(leaf_hashes: Sequence[bytes]) -> list[Digest]:
    """Roots of the perfect subtrees of the tree over ``leaf_hashes``, largest first."""
    peaks: list[Digest] = []
    for n, h in enumerate(leaf_hashes):
        peaks = append_peak(peaks, n, h)
    return peaks


def append_peak(peaks: Sequence[bytes], size: int, leaf_hash: bytes) -> list[Digest]:
    """Peaks of the tree of ``size + 1`` leaves, from the peaks of ``size`` leaves and one leaf."""
    if len(peaks) != bin(size).count("1"):
        raise InvalidProof(f"a tree of {size} leaves has {bin(size).count('1')} peaks, got {len(peaks)}")
    out = [Digest(bytes(p)) for p in peaks]
    node = Digest(bytes(leaf_hash))
    s = size
    while s & 1:
        node = compute_node_hash(out.pop(), node)
        s >>= 1
    out.append(node)
    return out


def compute_root_from_peaks(peaks: Sequence[bytes]) -> Digest:
    """The RFC 6962 root: the peaks folded right to left."""
    if not peaks:
        return EMPTY_ROOT
    root = Digest(bytes(peaks[-1]))
    for p in reversed(peaks[:-1]):
        root = compute_node_hash(p, root)
    return root
