"""Checkpoint files are the same bytes in every process, and a standard safetensors reader reads them.

The safetensors library orders ``__metadata__`` keys differently from one process to the next, so
checkpoints written with it differed in their header bytes (never in their roots); pol writes the
header itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from prover.checkpoint import encode_checkpoint, encode_safetensors, write_checkpoint_arrays
from protocol.state import TensorLeaf

_WRITE = """
import sys
import numpy as np
from prover.checkpoint import write_checkpoint_arrays
arrays = {"param/b": np.linspace(-1, 1, 7, dtype=np.float32), "meta/step": np.array(5, dtype=np.int64),
          "opt/m/b": np.full(7, 0.25, dtype=np.float32), "param/a": np.arange(6, dtype=np.float32).reshape(2, 3)}
write_checkpoint_arrays(__import__("pathlib").Path(sys.argv[1]), arrays, bytes(range(32)), bytes(32))
"""


def _arrays() -> dict[str, np.ndarray]:
    return {"param/b": np.linspace(-1, 1, 7, dtype=np.float32), "meta/step": np.array(5, dtype=np.int64),
            "opt/m/b": np.full(7, 0.25, dtype=np.float32), "param/a": np.arange(6, dtype=np.float32).reshape(2, 3)}


def test_checkpoint_bytes_identical_across_processes(tmp_path: Path) -> None:
    outs = []
    for seed in ("1", "2", "3", "4"):
        out = tmp_path / f"ckpt-{seed}.safetensors"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", _WRITE, str(out)], check=True, env=env, timeout=120)
        outs.append(out.read_bytes())
    assert all(o == outs[0] for o in outs[1:])
    back = load(outs[0])  # the safetensors library as an independent reader
    arrays = _arrays()
    assert set(back) == set(arrays)
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype and np.array_equal(back[name], arr)


def test_header_layout_matches_safetensors_library() -> None:
    # With a single metadata key the library's order is fixed, so its bytes are a reference for ours.
    arrays = _arrays()
    assert encode_safetensors(arrays, {"pol_root": "ab" * 32}) == bytes(save(arrays, metadata={"pol_root": "ab" * 32}))


def test_streamed_writer_equals_in_memory_encoding(tmp_path: Path) -> None:
    arrays = _arrays()
    leaves = [TensorLeaf(name, "i64" if arr.dtype == np.int64 else "f32", tuple(arr.shape), arr.tobytes())
              for name, arr in arrays.items()]
    root, task_id = bytes(range(32)), bytes(32)
    size = write_checkpoint_arrays(tmp_path / "c.safetensors", arrays, root, task_id)
    data = (tmp_path / "c.safetensors").read_bytes()
    assert size == len(data)
    assert data == encode_checkpoint(leaves, root, task_id)
