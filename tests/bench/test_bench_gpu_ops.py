"""Deterministic (fast gpu_ops path) vs native torch training steps, side by side.

With ``--benchmark-enable`` pytest-benchmark times each pair; by default (benchmarks
disabled) every step runs once, so this file also checks that both paths work.
Full comparison with RSS and verifier replay: ``python -m gpu_ops.bench`` (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gpu_ops import bench

TASKS = list(bench.DEFAULT_TASKS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("mode", ["det", "native"])
@pytest.mark.parametrize("task_name", TASKS)
def test_train_step(benchmark: Any, task_name: str, mode: str) -> None:
    rt = bench.get_runtime(task_name)
    step = bench.make_det_step(rt) if mode == "det" else bench.make_native_step(rt)
    counter = iter(range(10**9))
    step(next(counter))  # warm-up (kernel build, allocator)
    benchmark.group = task_name
    benchmark(lambda: step(next(counter)))


def test_run_bench_smoke() -> None:
    res = bench.run_bench(["digits-mlp"], steps=1, threads=1)
    row = res["tasks"][0]
    assert row["replay_roots_match"] is True
    assert row["det_ms_per_step"] > 0 and row["native_ms_per_step"] > 0 and row["rss_ratio"] > 0
