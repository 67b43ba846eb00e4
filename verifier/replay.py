"""Replaying segments: the core a verifier and an auditor share."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from prover.checkpoint import Layout, read_checkpoint
from prover.training import (
    NonFiniteLoss,
    Runtime,
    TrainState,
    compute_root,
    get_state_arrays,
    get_state_from_leaves,
    init_state,
    train_step,
)
from prover.transcript import ProofDir
from protocol.errors import InvalidCheckpoint, InvalidSegment
from protocol.state import compute_state_root_from_arrays


@dataclass(frozen=True)
class SegmentResult:
    index: int
    start_step: int
    end_step: int
    claimed_root: bytes
    replayed_root: bytes
    seconds: float

    @property
    def ok(self) -> bool:
        return self.claimed_root == self.replayed_root


def check_init(rt: Runtime, pdir: ProofDir, committed_root: bytes) -> Layout:
    """The first checkpoint must be exactly the initial state of the run seed (SPEC.md §9: task id, prover
    key and posting), so work copied from another prover, task or posting fails here.

    Returns the layout (names, dtypes, shapes) every checkpoint of the task must have.
    """
    # Hashed from the state's own tensors and dropped before checkpoint 0 is read: one copy at a time.
    arrays = get_state_arrays(init_state(rt))
    layout: Layout = frozenset((name, "i64" if a.dtype == np.dtype("<i8") else "f32", tuple(a.shape))
                               for name, a in arrays.items())
    expected = compute_state_root_from_arrays(arrays)
    del arrays
    if committed_root != expected:
        raise InvalidCheckpoint(
            f"checkpoint 0 root {committed_root.hex()} is not the initial state of this task's seed "
            f"({expected.hex()}) for this prover and posting: the weights were not initialised from this run's "
            "seed (work of another task, prover or posting?)"
        )
    read_checkpoint(pdir.checkpoint(0), expected_root=committed_root, layout=layout)
    return layout


def load_state(rt: Runtime, pdir: ProofDir, index: int, committed_root: bytes,
               layout: Layout | None = None) -> TrainState:
    leaves = read_checkpoint(pdir.checkpoint(index), expected_root=committed_root, layout=layout, writable=True)
    state = get_state_from_leaves(rt, leaves)
    if state.step != index * rt.task.checkpoint_interval:
        raise InvalidCheckpoint(f"checkpoint {index} holds step {state.step}, expected "
                                f"{index * rt.task.checkpoint_interval}")
    return state


def replay_segment(rt: Runtime, state: TrainState, index: int, claimed_end_root: bytes) -> SegmentResult:
    """Run k steps from ``state`` (at the segment's start) and compare with the claimed end root."""
    start = time.perf_counter()
    first = state.step
    try:
        for _ in range(rt.task.checkpoint_interval):
            train_step(rt, state)
    except NonFiniteLoss as exc:
        # Honest training from an honest checkpoint never diverges inside a claimed run, so a
        # committed state that diverges is the prover's fault: the segment cannot end at the claimed root.
        raise InvalidSegment(index, claimed_end_root, b"\x00" * 32, str(exc)) from None
    replayed = compute_root(state)
    return SegmentResult(index, first, state.step, claimed_end_root, replayed, time.perf_counter() - start)


def validate_segment(result: SegmentResult) -> None:
    if not result.ok:
        raise InvalidSegment(result.index, result.claimed_root, result.replayed_root,
                             f"steps {result.start_step}..{result.end_step}")
