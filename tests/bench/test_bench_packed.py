"""Checkpoints of the 10.9M-parameter stdlib-gpt10m task (AdamW: 131 MB of tensors): hashing, writing and
reading a state with one copy of it in memory. Figures and the commands for step times and peak RSS are in
docs/datasets.md.

Run with: make bench (or .venv/bin/pytest tests/bench/test_bench_packed.py --benchmark-enable). These
allocate hundreds of MB, so with benchmarks disabled (``make test``) they skip.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest

from gpu_ops import nn
from prover.builtin import resolve_task_path
from prover.checkpoint import read_checkpoint, write_checkpoint_arrays
from prover.training import Runtime, TrainState, compute_root, get_state_arrays, get_state_from_leaves
from protocol.task import parse_task_toml

TASK = "stdlib-gpt10m"


@functools.lru_cache(maxsize=1)
def _gpt10m() -> tuple[Runtime, TrainState]:
    task = parse_task_toml(resolve_task_path(TASK).read_text())
    specs = tuple(nn.get_param_specs(task, 0, task.data.packed.classes if task.data.packed else 256))
    params = nn.init_params(list(specs), 1)
    state = TrainState(params, {slot: {k: v.clone() for k, v in params.items()}
                                for slot in ("exp_avg", "exp_avg_sq")})
    # The checkpoint code needs the task and parameter specs only, never the data set.
    rt = Runtime(task, None, specs, None, 1, task)  # type: ignore[arg-type]
    return rt, state


def _skip_unless_enabled(benchmark: Any) -> None:
    if benchmark.disabled:
        pytest.skip("allocates hundreds of MB: run with make bench")


@pytest.fixture()
def gpt10m(benchmark: Any) -> tuple[Runtime, TrainState]:
    _skip_unless_enabled(benchmark)  # before the state is built
    return _gpt10m()


def _state_bytes(state: TrainState) -> int:
    return sum(a.nbytes for a in get_state_arrays(state).values())


def test_bench_gpt10m_state_root(benchmark: Any, gpt10m: tuple[Runtime, TrainState]) -> None:
    _skip_unless_enabled(benchmark)
    _, state = gpt10m
    root = benchmark.pedantic(compute_root, args=(state,), rounds=3, iterations=1)
    assert len(root) == 32
    benchmark.extra_info.update(state_bytes=_state_bytes(state),
                                MB_per_s=round(_state_bytes(state) / benchmark.stats["median"] / 1e6, 1))


def test_bench_gpt10m_checkpoint_write(benchmark: Any, gpt10m: tuple[Runtime, TrainState], tmp_path: Path) -> None:
    _skip_unless_enabled(benchmark)
    _, state = gpt10m
    root = compute_root(state)
    path = tmp_path / "ckpt.safetensors"
    size = benchmark.pedantic(write_checkpoint_arrays, args=(path, get_state_arrays(state), root, b"\0" * 32),
                              rounds=3, iterations=1)
    assert path.stat().st_size == size
    benchmark.extra_info.update(file_bytes=size)


def test_bench_gpt10m_checkpoint_load_and_check(benchmark: Any, gpt10m: tuple[Runtime, TrainState],
                                                tmp_path: Path) -> None:
    """Read, hash against the committed root and rebuild the state (what a replay does per segment)."""
    _skip_unless_enabled(benchmark)
    rt, state = gpt10m
    root = compute_root(state)
    path = tmp_path / "ckpt.safetensors"
    write_checkpoint_arrays(path, get_state_arrays(state), root, b"\0" * 32)

    def load() -> TrainState:
        return get_state_from_leaves(rt, read_checkpoint(path, expected_root=root, writable=True))

    loaded = benchmark.pedantic(load, rounds=3, iterations=1)
    assert compute_root(dataclasses.replace(loaded)) == root
