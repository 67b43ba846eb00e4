"""Dispute figures (docs/disputes.md): a game on a 25-step segment of the largest example task,
the referee's cost against a segment replay, and the prover's cost of hashing every step.

Run with: .venv/bin/pytest tests/bench/test_bench_disputes.py --benchmark-enable -s
With benchmarks disabled (the default in `make test`) the training figures run a short
smoke version and the game is skipped (tests/offline/test_dispute_game.py plays it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gpu_ops.functional as F
from prover.steps import copy_state
from prover.training import Runtime, compute_root, get_state_leaves, init_state, train_step
from protocol import bls
from protocol import dispute as D
from protocol.claim import compute_claim_body, compute_signed_claim
from protocol.state import compute_state_root
from protocol.task import compute_task_id, parse_task_toml
from verifier.dispute import (
    Replayer,
    compute_open_move,
    get_claim_view,
    get_task_skeleton,
    play_game,
    settle_game,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
K = 25


def _task(name: str, k: int = K) -> Any:
    text = (EXAMPLES / f"{name}.toml").read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("total_steps"):
            line = f"total_steps = {2 * k}"
        elif line.startswith("checkpoint_interval"):
            line = f"checkpoint_interval = {k}"
        elif line.startswith("warmup_steps"):
            line = "warmup_steps = 5"
        lines.append(line)
    return parse_task_toml("\n".join(lines))


@pytest.mark.parametrize("task_name", ["digits-mlp", "pydoc-transformer"])
@pytest.mark.parametrize("hashing", ["checkpoint-only", "every-step"])
def test_bench_prover_segment_hashing(benchmark, task_name: str, hashing: str) -> None:  # type: ignore[no-untyped-def]
    """A prover's segment of 25 steps: state hashed at the checkpoint only (the default now), or
    after every step (the old default, kept by `pol prove --keep-step-roots`)."""
    task = _task(task_name)
    rt = Runtime.for_task(task)
    start = init_state(rt)
    steps = K if not benchmark.disabled else 2

    def segment() -> bytes:
        state = copy_state(start)
        for _ in range(steps):
            train_step(rt, state)
            if hashing == "every-step":
                compute_state_root(get_state_leaves(state))
        return compute_root(state)

    root = benchmark.pedantic(segment, rounds=5 if not benchmark.disabled else 1, iterations=1)
    assert len(root) == 32


@contextlib.contextmanager
def _no_fake(step: int) -> Iterator[None]:
    yield


def _fake_nth_matmul(at_step: int, nth: int) -> Any:
    @contextlib.contextmanager
    def fake(step: int) -> Iterator[None]:
        if step != at_step:
            yield
            return
        real, calls = F._matmul, [0]

        def faked(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
            y = real(a, b, bias)
            calls[0] += 1
            if calls[0] == nth:
                y = y.clone()
                y.view(-1)[-1] += 1e-3  # the last position: its output feeds every later op
            return y

        F._matmul = faked  # type: ignore[assignment]
        try:
            yield
        finally:
            F._matmul = real  # type: ignore[assignment]
    return fake


def test_bench_dispute_game_largest_example(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The transformer example with 25-step segments; the prover fakes one matrix product (the
    7th of step 37: the second layer's qkv projection, its last element off by 1e-3). Records rounds, bytes, wall time and the
    referee's compute against replaying the segment."""
    if benchmark.disabled:
        pytest.skip("figures only with --benchmark-enable; tests/offline/test_dispute_game.py plays the game")
    task = _task("pydoc-transformer")
    rt = Runtime.for_task(task)
    prover_sk = bls.compute_secret_key(b"bench prover".ljust(32, b"."))
    chall_sk = bls.compute_secret_key(b"bench challenger".ljust(32, b"."))
    init = init_state(rt)
    honest0 = Replayer(rt, init)
    start = honest0.state_at(K)  # segment 1 starts at step 25
    fake = _fake_nth_matmul(37, 7)
    faked_end = Replayer(rt, start, fake=fake).root_at(2 * K)
    assert faked_end is not None
    roots = [compute_root(init), compute_root(start), faked_end]
    claim = compute_signed_claim(prover_sk, compute_claim_body(task, compute_task_id(task),
                                                               bls.compute_public_key(prover_sk), roots))
    result: dict[str, Any] = {}

    def run() -> None:
        t0 = time.perf_counter()
        prover, challenger = Replayer(rt, start, fake=fake), Replayer(rt, start)
        honest_end = challenger.root_at(2 * K)
        assert honest_end is not None
        move = compute_open_move(claim, roots, 1, chall_sk, honest_end, clock_s=3600)
        game = D.process_open(move, get_claim_view(claim), 0)
        clock = iter(range(1, 10_000))
        run_ = play_game(game, prover, prover_sk, challenger, chall_sk, lambda: next(clock), D.encode_move(move))
        t_game = time.perf_counter() - t0
        t1 = time.perf_counter()
        skeleton = get_task_skeleton(rt)
        t_skeleton = time.perf_counter() - t1
        g = run_.game
        st = settle_game(rt, g, skeleton, lambda h: challenger.trace_of(g.lo).tensors.get(h),  # type: ignore[union-attr]
                         lambda: challenger.state_at(g.lo))
        t2 = time.perf_counter()
        s = copy_state(start)
        for _ in range(K):
            train_step(rt, s)
        compute_root(s)
        t_segment = time.perf_counter() - t2
        result.update(rounds=run_.rounds, bytes=run_.bytes, game_s=round(t_game, 3), step=g.lo,
                      entry=st.entry["i"], op=st.entry["op"], trace_entries=g.trace_n, winner=st.game.winner,
                      settle_op_s=round(st.seconds, 5), skeleton_s=round(t_skeleton, 3),
                      segment_replay_s=round(t_segment, 3),
                      prover_steps_replayed=prover.steps_replayed, challenger_steps_replayed=challenger.steps_replayed)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\ndispute game:", result)
    assert result["winner"] == D.CHALLENGER and result["step"] == 37 and result["op"] == "linear.forward"
