"""Data-parallel step time: one process vs 1, 2 and 4 gloo workers (SPEC.md §13.1, issue #11 item 4).

Run with: .venv/bin/pytest tests/bench/test_bench_distributed.py --benchmark-enable --benchmark-only
Each benchmark times one whole training step of a built-in task (its real size): the step
command goes to every worker, each trains on its share of the batch with the exact
cross-worker reductions, and the round trip ends when all have answered. ``single`` is the
plain in-process step (no shard, no collectives). Every process runs one torch thread
(``POL_BENCH_THREADS``). Starting workers costs seconds, so with benchmarks
disabled (``make test``) this file is skipped: tests/offline/test_distributed.py covers the path.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from prover.training import Runtime, init_state, train_step

from .dist_bench_worker import SEED, bench_task

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("digits-mlp", "digits-cnn", "pydoc-transformer")
# One torch thread per process everywhere, so the figures compare worker counts and nothing else
# (POL_BENCH_THREADS to change it; thread counts never change the bits).
THREADS = int(os.environ.get("POL_BENCH_THREADS", "1"))


class _Group:
    def __init__(self, task: str, world: int) -> None:
        self.store = dist.TCPStore("127.0.0.1", 0, None, True,  # type: ignore[attr-defined]
                                   timeout=datetime.timedelta(seconds=120), wait_for_workers=False)
        threads = THREADS
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(ROOT))
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "tests.bench.dist_bench_worker", "--rank", str(r), "--world", str(world),
             "--store", f"127.0.0.1:{self.store.port}", "--task", task, "--threads", str(threads)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for r in range(world)]
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def step(self) -> str:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("step\n")
            p.stdin.flush()
        answers = []
        for p in self.procs:
            assert p.stdout is not None
            answers.append(p.stdout.readline().split())
        assert all(a and a[0] == "ok" for a in answers), answers
        return answers[0][1]

    def close(self) -> None:
        for p in self.procs:
            if p.stdin is not None and p.poll() is None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture()
def needs_benchmark(benchmark) -> None:  # type: ignore[no-untyped-def]
    if benchmark.disabled:
        pytest.skip("starts worker processes: run with --benchmark-enable (tests/offline/test_distributed.py "
                    "checks the same path in make test)")


@pytest.fixture()
def group(request: pytest.FixtureRequest) -> Iterator[_Group]:
    task, world = request.param
    g = _Group(task, world)
    try:
        yield g
    finally:
        g.close()


@pytest.mark.parametrize("task", TASKS)
def test_bench_step_single_process(benchmark, needs_benchmark, task: str) -> None:  # type: ignore[no-untyped-def]
    """Baseline: the plain step in this process (no shard, no collectives), all cores' threads."""
    torch.set_num_threads(THREADS)
    rt = Runtime.for_task(bench_task(task), SEED)
    state = init_state(rt)
    benchmark.extra_info.update(task=task, workers=0)
    benchmark.pedantic(train_step, args=(rt, state), rounds=8, warmup_rounds=1)


@pytest.mark.parametrize("group", [(t, w) for t in TASKS for w in (1, 2, 4)], indirect=True,
                         ids=[f"{t}-{w}w" for t in TASKS for w in (1, 2, 4)])
def test_bench_step_workers(benchmark, needs_benchmark, group: _Group) -> None:  # type: ignore[no-untyped-def]
    """One data-parallel step over W persistent gloo workers (round trip of all of them)."""
    benchmark.extra_info.update(workers=len(group.procs))
    benchmark.pedantic(group.step, rounds=8, warmup_rounds=1)
