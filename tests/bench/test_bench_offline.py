"""Offline proof-of-learning figures (issue: record, not timed tests).

Run with: make bench   (or .venv/bin/pytest tests/bench/test_bench_offline.py --benchmark-enable)
With benchmarks disabled (the default in `make test`) each function runs once as a smoke test.
"""

from __future__ import annotations

import hashlib
import numpy as np

import pytest

from prover.training import Runtime, compute_root, get_state_leaves, init_state, train_step
from protocol.state import TensorLeaf, compute_state_root
from protocol.task import parse_task_toml

STATE_BYTES = 64 << 20


@pytest.fixture(scope="module")
def big_state() -> list[TensorLeaf]:
    # Finite float32 values (random bytes would contain NaN patterns, which states may not hold).
    data = np.random.default_rng(0).standard_normal(STATE_BYTES // 4, dtype=np.float32).tobytes()
    leaves = [TensorLeaf(f"param/t{i}", "f32", (STATE_BYTES // 16 // 4,), data[i * STATE_BYTES // 16:(i + 1) *
              STATE_BYTES // 16]) for i in range(16)]
    leaves.append(TensorLeaf("meta/step", "i64", (), (0).to_bytes(8, "little")))
    return leaves


def test_bench_state_root_throughput(benchmark, big_state) -> None:  # type: ignore[no-untyped-def]
    """State-root hashing of 64 MiB of float32 state on one core (target >= 500 MB/s)."""
    root = benchmark(compute_state_root, big_state)
    assert len(root) == 32
    if benchmark.stats:
        mb_s = STATE_BYTES / benchmark.stats["median"] / 1e6
        benchmark.extra_info["MB_per_s"] = round(mb_s, 1)


def test_bench_raw_sha256_same_bytes(benchmark, big_state) -> None:  # type: ignore[no-untyped-def]
    """Baseline in the same run: plain SHA-256 over the same bytes."""
    def run() -> bytes:
        h = hashlib.sha256()
        for leaf in big_state:
            h.update(leaf.data)
        return h.digest()
    benchmark(run)


TASK = """
[task]
name = "bench-digits"
seed = 1
total_steps = 1000
checkpoint_interval = 20
batch_size = 64
[model]
family = "mlp"
hidden = [128]
[data]
adapter = "sklearn-digits"
sha256 = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
[optim]
name = "sgd"
lr = 0.1
momentum = 0.9
"""


@pytest.mark.parametrize("role", ["prover", "verifier"])
def test_bench_segment_prover_vs_verifier(benchmark, role: str) -> None:  # type: ignore[no-untyped-def]
    """One segment (20 steps) as the prover runs it (steps + checkpoint leaves + root) and as the
    verifier replays it (load state, steps, root): the two should be within a few percent."""
    task = parse_task_toml(TASK)
    rt = Runtime.for_task(task)

    def prover_segment() -> bytes:
        state = init_state(rt)
        for _ in range(task.checkpoint_interval):
            train_step(rt, state)
        get_state_leaves(state)
        return compute_root(state)

    def verifier_segment() -> bytes:
        from prover.training import get_state_from_leaves

        state = get_state_from_leaves(rt, get_state_leaves(init_state(rt)))
        for _ in range(task.checkpoint_interval):
            train_step(rt, state)
        return compute_root(state)

    root = benchmark(prover_segment if role == "prover" else verifier_segment)
    assert len(root) == 32
