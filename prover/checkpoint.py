"""Checkpoint files: safetensors holding the canonical leaves of one training state.

Tensor names in the file are the leaf names (``param/...``, ``opt/<slot>/...``,
``meta/step``); the metadata carries the state root and task id for humans, but readers
always recompute the root from the tensors and compare it with the committed one.
Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash leaves
either the old file or the complete new one.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pol.files import open_regular_file
from protocol.bounded import decode_json, get_int
from protocol.constants import MAX_SAFETENSORS_HEADER, MAX_STATE_BYTES, MAX_TENSOR_ELEMENTS, MAX_TENSORS_PER_STATE
from protocol.errors import DecodeError, InvalidCheckpoint
from protocol.state import TensorLeaf, compute_state_root

# The largest checkpoint of a valid task: MAX_STATE_BYTES of tensors after the 8-byte length and the header.
MAX_CHECKPOINT_BYTES = 8 + MAX_SAFETENSORS_HEADER + MAX_STATE_BYTES


def get_checkpoint_name(index: int) -> str:
    return f"ckpt-{index:06d}.safetensors"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


_ST_NAMES = {np.dtype("<f4"): ("F32", 4), np.dtype("<i8"): ("I64", 8)}


def encode_safetensors_header(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    """The 8-byte length and JSON header of a safetensors file holding ``arrays``, and the tensor order.

    Written here rather than by the safetensors library, whose metadata order varies from one process
    to the next: the same state gives the same file bytes in every process (8-byte tensors first, then
    by name, as safetensors orders them; metadata keys sorted; header padded with spaces to 8 bytes)."""
    order = sorted(arrays, key=lambda k: (-_ST_NAMES[arrays[k].dtype][1], k))
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in order:
        arr = arrays[name]
        header[name] = {"dtype": _ST_NAMES[arr.dtype][0], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, order


def encode_safetensors(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    head, order = encode_safetensors_header(arrays, metadata)
    return head + b"".join(np.ascontiguousarray(arrays[name]).tobytes() for name in order)


def encode_checkpoint(leaves: list[TensorLeaf], root: bytes, task_id: bytes) -> bytes:
    arrays = {leaf.name: leaf.array() for leaf in leaves}
    return encode_safetensors(arrays, {"pol_root": root.hex(), "pol_task_id": task_id.hex()})


def write_checkpoint(path: Path, leaves: list[TensorLeaf], root: bytes, task_id: bytes) -> None:
    write_atomic(path, encode_checkpoint(leaves, root, task_id))



def write_checkpoint_arrays(path: Path, arrays: dict[str, np.ndarray], root: bytes, task_id: bytes) -> int:
    """Write a checkpoint straight from the tensors' memory (no copy of the state); returns its size.

    The same bytes as ``encode_checkpoint``, written to a temporary file, synced and renamed like
    ``write_atomic``."""
    head, order = encode_safetensors_header(arrays, {"pol_root": root.hex(), "pol_task_id": task_id.hex()})
    tmp = path.with_name(path.name + ".tmp")
    size = len(head)
    with open(tmp, "wb") as fh:
        fh.write(head)
        for name in order:
            arr = arrays[name]
            fh.write(np.ascontiguousarray(arr).data.cast("B"))
            size += arr.nbytes
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size


Layout = frozenset[tuple[str, str, tuple[int, ...]]]  # (name, dtype, shape) of every tensor
_ST_DTYPES = {"F32": ("f32", 4), "I64": ("i64", 8)}


def get_layout(leaves: list[TensorLeaf]) -> Layout:
    return frozenset((leaf.name, leaf.dtype, leaf.shape) for leaf in leaves)


def _parse_header(fh: BinaryIO, size: int, what: str, layout: Layout | None) -> list[tuple[str, str, tuple[int, ...], int]]:
    """Validate the safetensors header alone; returns (name, dtype, shape, nbytes) in file order.

    Everything that decides how much is read (names, dtypes, shapes, offsets, the file size) is checked
    here, before any tensor byte is read; a repeated name is refused (readers that keep the first or
    the last occurrence would see different states).
    """
    if size < 8:
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: too short for a safetensors header")
    n = int.from_bytes(fh.read(8), "little")
    if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: header length {n} is too large for a file of {size} bytes")
    try:
        header = decode_json(fh.read(n), MAX_SAFETENSORS_HEADER, max_depth=3)
    except DecodeError as exc:
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: bad safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: safetensors header is not an object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS_PER_STATE:
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: {len(header)} tensors exceed the limit of {MAX_TENSORS_PER_STATE}")
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise InvalidCheckpoint(f"{what} is not a readable safetensors file: tensor {name[:64]!r} has a malformed header entry")
        dtype, itemsize = _ST_DTYPES.get(info["dtype"], ("", 0)) if isinstance(info["dtype"], str) else ("", 0)
        shape, offsets = info["shape"], info["data_offsets"]
        if not dtype:
            raise InvalidCheckpoint(f"{what} is not a readable safetensors file: tensor {name[:64]!r} has unsupported dtype {str(info['dtype'])[:16]!r}")
        try:
            shape_t = tuple(get_int(d, f"{name[:64]} shape", 0, MAX_TENSOR_ELEMENTS) for d in shape)
            begin, end = (get_int(o, f"{name[:64]} offset", 0, size) for o in offsets)
        except (DecodeError, TypeError, ValueError) as exc:
            raise InvalidCheckpoint(f"{what} is not a readable safetensors file: tensor {name[:64]!r}: {exc}") from None
        if len(shape_t) > 8 or math.prod(shape_t) > MAX_TENSOR_ELEMENTS:
            raise InvalidCheckpoint(f"{what} is not a readable safetensors file: tensor {name[:64]!r} has a bad shape {list(shape_t)[:9]}")
        entries.append((begin, end, name, dtype, shape_t, math.prod(shape_t) * itemsize))
    entries.sort()
    position = 0
    for begin, end, name, _, _, nbytes in entries:
        if begin != position or end - begin != nbytes:
            raise InvalidCheckpoint(f"{what} is not a readable safetensors file: tensor {name[:64]!r} does not sit at the next offset with its size")
        position = end
    if position != size - 8 - n:
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: tensors hold {position} bytes but the file has {size - 8 - n} after the header")
    if position > MAX_STATE_BYTES + 8:
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: {position} tensor bytes exceed the limit of {MAX_STATE_BYTES}")
    if layout is not None:
        found = frozenset((name, dtype, shape) for _, _, name, dtype, shape, _ in entries)
        if found != layout:
            missing = sorted(x[0] for x in layout - found)[:5]
            extra = sorted(x[0] for x in found - layout)[:5]
            raise InvalidCheckpoint(f"{what}: tensors differ from the task's (missing or different: {missing}, "
                                    f"unexpected or different: {extra})")
    return [(name, dtype, shape, nbytes) for _, _, name, dtype, shape, nbytes in entries]


def _read_leaves(fh: BinaryIO, size: int, what: str, layout: Layout | None,
                 writable: bool = False) -> list[TensorLeaf]:
    leaves = []
    for name, dtype, shape, nbytes in _parse_header(fh, size, what, layout):
        if writable:
            # Read in place into a buffer a state then uses as is (training.get_state_from_leaves): loading
            # a checkpoint to train on never holds two copies of it.
            buf = bytearray(nbytes)
            got = fh.readinto(buf)  # type: ignore[attr-defined]  # an open file, not any BinaryIO
            data: bytes = buf  # type: ignore[assignment]
        else:
            data = fh.read(nbytes)
            got = len(data)
        if got != nbytes:
            raise InvalidCheckpoint(f"{what} is not a readable safetensors file: truncated in tensor {name}")
        leaves.append(TensorLeaf(name, dtype, shape, data))
    return leaves


def decode_checkpoint(data: bytes, what: str = "checkpoint", layout: Layout | None = None) -> list[TensorLeaf]:
    """Parse safetensors bytes into leaves; raises ``InvalidCheckpoint`` on any damage."""
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise InvalidCheckpoint(f"{what}: {len(data)} bytes exceed the limit")
    return _read_leaves(io.BytesIO(data), len(data), what, layout)


def read_checkpoint(path: Path, expected_root: bytes | None = None, layout: Layout | None = None,
                    writable: bool = False) -> list[TensorLeaf]:
    """Read a checkpoint and, if given, check its layout (from the header, before reading tensors)
    and that it hashes to ``expected_root``.

    ``writable``: the leaves' data are bytearrays that a state built from them takes over without a copy
    (for loading a state to train on; such leaves are not for encoding into messages)."""
    what = f"checkpoint {path.name}"
    with open_regular_file(path, MAX_CHECKPOINT_BYTES, InvalidCheckpoint, what) as fh:
        leaves = _read_leaves(fh, os.fstat(fh.fileno()).st_size, what, layout, writable)
        if fh.read(1):
            raise InvalidCheckpoint(f"{what} grew while being read")
    if expected_root is not None:
        root = compute_state_root(leaves)
        if root != expected_root:
            raise InvalidCheckpoint(
                f"checkpoint {path.name} hashes to {root.hex()}, but the transcript commits to {expected_root.hex()}"
            )
    return leaves
