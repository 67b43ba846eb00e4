"""State roots hashed straight from arrays (protocol.state.compute_state_root_from_arrays) equal
the roots of the byte leaves, and reject the same bad states with the same errors."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from protocol.errors import InvalidCheckpoint
from protocol.merkle import compute_root_from_leaf_hashes
from protocol.state import (
    STEP_TENSOR,
    TensorLeaf,
    compute_array_leaf_hash,
    compute_state_root,
    compute_state_root_from_arrays,
)


def _leaves(arrays: dict[str, np.ndarray]) -> list[TensorLeaf]:
    return [TensorLeaf(n, "i64" if a.dtype == np.int64 else "f32", a.shape, a.tobytes()) for n, a in arrays.items()]


def test_spec_text_leaf_hash() -> None:
    """The leaf hash as SPEC.md §5 words it (0x00 || header || chunk root), built by hand: a tensor of one
    chunk has chunk root H(0x00 || bytes); one of three chunks (the last short) the RFC 6962 tree over them."""
    sha = hashlib.sha256
    w = np.array([[1.5, -0.0], [2.0, 3.25]], dtype="<f4")
    header = b"pol/v1/tensor" + struct.pack("<H", 7) + b"param/w" + struct.pack("<B", 3) + b"f32"
    header += struct.pack("<B", 2) + struct.pack("<Q", 2) + struct.pack("<Q", 2)
    one_chunk = sha(b"\x00" + w.tobytes()).digest()
    assert compute_array_leaf_hash("param/w", w) == sha(b"\x00" + header + one_chunk).digest()
    big = np.arange(2 * (1 << 17) + 3, dtype="<f4")  # 2 chunks of 2^19 bytes and one of 12 bytes
    raw = big.tobytes()
    c0, c1, c2 = (sha(b"\x00" + raw[i << 19:(i + 1) << 19]).digest() for i in range(3))
    root = sha(b"\x01" + sha(b"\x01" + c0 + c1).digest() + c2).digest()
    header = b"pol/v1/tensor" + struct.pack("<H", 9) + b"param/big" + struct.pack("<B", 3) + b"f32"
    header += struct.pack("<B", 1) + struct.pack("<Q", big.size)
    assert compute_array_leaf_hash("param/big", big) == sha(b"\x00" + header + root).digest()


def test_roots_equal_the_byte_leaves() -> None:
    rng = np.random.default_rng(3)
    arrays = {
        STEP_TENSOR: np.array(41, dtype="<i8"),
        "param/big": rng.standard_normal(3 * (1 << 20) + 17).astype("<f4"),  # several hashing chunks
        "param/w": rng.standard_normal((7, 5)).astype("<f4"),
        "opt/exp_avg/w": np.zeros((7, 5), dtype="<f4"),
        "param/empty": np.zeros((0, 3), dtype="<f4"),
        "param/huge": np.array([3.4e38, 3.4e38, -3.4e38], dtype="<f4"),  # a float32 sum overflows: still finite
    }
    root = compute_state_root_from_arrays(arrays)
    assert root == compute_state_root(_leaves(arrays))
    assert root == compute_root_from_leaf_hashes(
        [compute_array_leaf_hash(n, arrays[n]) for n in sorted(arrays, key=str.encode)])
    arrays["param/w"][3, 2] = -0.0  # a different state gives another root
    assert compute_state_root_from_arrays(arrays) != root


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected_in_any_chunk(bad: float) -> None:
    big = np.ones(2 * (1 << 20) + 5, dtype="<f4")
    big[-1] = bad
    with pytest.raises(InvalidCheckpoint, match="NaN or Inf"):
        compute_state_root_from_arrays({STEP_TENSOR: np.array(1, dtype="<i8"), "param/big": big})


def test_bad_states_rejected() -> None:
    step = np.array(1, dtype="<i8")
    w = np.ones((4, 4), dtype="<f4")
    with pytest.raises(InvalidCheckpoint, match="no scalar i64"):
        compute_state_root_from_arrays({"param/w": w})
    with pytest.raises(InvalidCheckpoint, match="not allowed"):
        compute_state_root_from_arrays({STEP_TENSOR: step, "Param/W": w})
    with pytest.raises(InvalidCheckpoint, match="C-contiguous"):
        compute_state_root_from_arrays({STEP_TENSOR: step, "param/w": w.T[::2]})
    with pytest.raises(InvalidCheckpoint, match="dtype"):
        compute_state_root_from_arrays({STEP_TENSOR: step, "param/w": w.astype(">f4")})
    with pytest.raises(InvalidCheckpoint, match="dtype"):
        compute_state_root_from_arrays({STEP_TENSOR: step, "param/w": w.astype(np.float64)})


def test_prover_root_equals_leaf_root() -> None:
    """prover.training.compute_root (hashed from the tensors' memory) = the root of the copied leaves."""
    from gpu_ops.bench import get_runtime
    from prover import training

    rt = get_runtime("digits-mlp")
    state = training.init_state(rt)
    training.train_step(rt, state)
    assert training.compute_root(state) == compute_state_root(training.get_state_leaves(state))


def test_byte_leaves_finite_check() -> None:
    """validate_tensor_leaf's one-pass finite check: overflowing sums of finite values pass, any
    NaN/inf fails (also past the first chunk)."""
    step = TensorLeaf(STEP_TENSOR, "i64", (), np.int64(1).tobytes())
    big = np.full(3 * (1 << 20), 3.0e38, dtype="<f4")  # its float32 sum overflows to inf
    compute_state_root([step, TensorLeaf("param/big", "f32", big.shape, big.tobytes())])
    for bad in (np.nan, np.inf, -np.inf):
        v = big.copy()
        v[-2] = bad
        with pytest.raises(InvalidCheckpoint, match="NaN or Inf"):
            compute_state_root([step, TensorLeaf("param/big", "f32", v.shape, v.tobytes())])
