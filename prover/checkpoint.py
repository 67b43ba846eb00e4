"""Checkpoint files: safetensors holding the canonical leaves of one training state.

Tensor names in the file are the leaf names (``param/...``, ``opt/<slot>/...``,
``meta/step``); the metadata carries the state root and task id for humans, but readers
always recompute the root from the tensors and compare it with the committed one.
Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash leaves
either the old file or the complete new one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from protocol.errors import InvalidCheckpoint
from protocol.state import TensorLeaf, compute_state_root

MAX_CHECKPOINT_BYTES = 2 << 30
_DTYPES = {np.dtype("float32"): "f32", np.dtype("int64"): "i64"}


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


def encode_checkpoint(leaves: list[TensorLeaf], root: bytes, task_id: bytes) -> bytes:
    arrays = {leaf.name: leaf.array() for leaf in leaves}
    meta = {"pol_root": root.hex(), "pol_task_id": task_id.hex()}
    return bytes(save(arrays, metadata=meta))


def write_checkpoint(path: Path, leaves: list[TensorLeaf], root: bytes, task_id: bytes) -> None:
    write_atomic(path, encode_checkpoint(leaves, root, task_id))


def decode_checkpoint(data: bytes, what: str = "checkpoint") -> list[TensorLeaf]:
    """Parse safetensors bytes into leaves; raises ``InvalidCheckpoint`` on any damage."""
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise InvalidCheckpoint(f"{what}: {len(data)} bytes exceed the limit")
    try:
        arrays = load(data)
    except (SafetensorError, ValueError, OSError, Exception) as exc:  # the parser raises several types
        raise InvalidCheckpoint(f"{what} is not a readable safetensors file: {exc}") from None
    leaves = []
    for name, arr in arrays.items():
        dtype = _DTYPES.get(arr.dtype)
        if dtype is None:
            raise InvalidCheckpoint(f"{what}: tensor {name} has unsupported dtype {arr.dtype}")
        leaves.append(TensorLeaf(name, dtype, tuple(int(d) for d in arr.shape),
                                 np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()))
    return leaves


def read_checkpoint(path: Path, expected_root: bytes | None = None) -> list[TensorLeaf]:
    """Read a checkpoint and, if given, check that it hashes to ``expected_root``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidCheckpoint(f"checkpoint {path.name} is missing") from None
    leaves = decode_checkpoint(data, f"checkpoint {path.name}")
    if expected_root is not None:
        root = compute_state_root(leaves)
        if root != expected_root:
            raise InvalidCheckpoint(
                f"checkpoint {path.name} hashes to {root.hex()}, but the transcript commits to {expected_root.hex()}"
            )
    return leaves
