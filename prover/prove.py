"""``pol prove``: train deterministically, checkpoint every k steps, commit and sign.

Crash-safe: each checkpoint is written atomically and only then appended to the
transcript. Restarting on the same directory resumes from the last checkpoint whose file
hashes to its transcript root, so a run killed at any instant ends with the same final
root as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from protocol import bls
from protocol.claim import Claim, compute_claim_body, compute_claim_id, compute_signed_claim
from protocol.constants import OFFLINE_POSTING_ID
from protocol.errors import InvalidCheckpoint, PolError
from protocol.rng import compute_training_seed
from protocol.state import compute_state_root, compute_state_root_from_arrays
from protocol.task import Task, compute_task_id, format_task_toml

from .checkpoint import read_checkpoint, write_atomic, write_checkpoint_arrays
from .training import (
    Runtime,
    TrainState,
    check_device,
    get_state_arrays,
    get_state_from_leaves,
    get_state_leaves,
    init_state,
    move_state,
    train_step,
)
from .transcript import ProofDir, TranscriptEntry, append_transcript, read_transcript

log = logging.getLogger(__name__)

# Called after every step with (step, loss); the CLI draws its progress bar with it.
ProgressFn = Callable[[int, float], None]


class StepSync(Protocol):
    """Keeps the other workers of a data-parallel proof in step with this one (prover/distributed.py)."""

    def start(self, rt: Runtime, state: TrainState) -> None:
        """The state training starts (or resumes) from, before the first step."""

    def checkpoint(self, state: TrainState, root: bytes) -> None:
        """Every worker reached ``root`` after step ``state.step``; called before the checkpoint is written."""


class ProveError(PolError):
    """The output directory cannot be used for this task (operator error)."""


@dataclass(frozen=True)
class ProveResult:
    claim: Claim
    claim_id: bytes
    task_id: bytes
    resumed_from_step: int
    seconds: float
    final_loss: float | None


def _prepare_dir(pdir: ProofDir, task: Task, task_id: bytes) -> None:
    pdir.path.mkdir(parents=True, exist_ok=True)
    pdir.checkpoint_dir.mkdir(exist_ok=True)
    if pdir.task_file.exists():
        existing = pdir.read_task()
        if compute_task_id(existing) != task_id:
            raise ProveError(
                f"{pdir.path} already holds a proof of another task ({compute_task_id(existing).hex()[:16]}…); "
                "use a fresh directory"
            )
    else:
        write_atomic(pdir.task_file, format_task_toml(task).encode())


def _resume(rt: Runtime, pdir: ProofDir) -> tuple[TrainState, list[TranscriptEntry]]:
    entries = read_transcript(pdir, rt.task, allow_torn_tail=True)
    if entries:
        from .training import compute_root

        if entries[0].root != compute_root(init_state(rt)):
            # The run is keyed by prover and posting (SPEC.md §9): another key's checkpoints are useless here.
            raise ProveError(f"{pdir.path} holds a run of this task for another prover key or posting; "
                             "use a fresh directory")
    while entries:
        last = entries[-1]
        try:
            leaves = read_checkpoint(pdir.checkpoint(last.index), expected_root=last.root, writable=True)
            state = get_state_from_leaves(rt, leaves)
            log.info("resuming from checkpoint %d (step %d)", last.index, state.step)
            return state, entries
        except InvalidCheckpoint as exc:
            # Cannot happen with our write order unless the disk lost data; fail loudly rather than guess.
            raise ProveError(f"checkpoint {last.index} in the transcript is unusable: {exc}") from None
    return init_state(rt), []


def prove(task: Task, out: Path, secret_key: bytes, progress: ProgressFn | None = None,
          posting_id: bytes = OFFLINE_POSTING_ID, keep_step_roots: bool = False,
          run_seed: int | None = None, sync: StepSync | None = None, device: str = "cpu") -> ProveResult:
    """Run (or resume) the proof of ``task`` in ``out`` and write the signed claim.

    ``posting_id`` names the task posting the claim answers (SPEC.md §16.3); with it and the prover's
    key it keys every random stream (§9). The default is the offline id, which no ledger accepts.

    The state is hashed at checkpoints only. A dispute asks for roots inside a segment, which
    the prover then computes on demand (prover.steps); ``keep_step_roots`` hashes after every
    step instead and writes them to DIR/steps/ as it goes (costly: a full state hash per step).
    ``run_seed`` replaces the prover-keyed seed: refereed mode (SPEC.md §17.6), where all
    provers of a posting train the same run. ``sync``: this process is rank 0 of a data-parallel
    proof (SPEC.md §13.1; it must run inside ``gpu_ops.rowshard.sharded``), the others follow it.
    ``device``: "cpu" or "cuda" (parameters, optimizer state and batches on that device, every op on its
    kernels: docs/gpu.md); the proof is the same bytes either way. Raises DeviceUnavailable first when
    the device cannot be used here.
    """
    dev = check_device(device)
    started = time.perf_counter()
    task_id = compute_task_id(task)
    prover = bls.compute_public_key(secret_key)
    rt = Runtime.for_task(task, compute_training_seed(task_id, prover, posting_id) if run_seed is None else run_seed)
    pdir = ProofDir(out)
    _prepare_dir(pdir, task, task_id)
    state, entries = _resume(rt, pdir)
    move_state(state, dev)
    resumed_from = state.step
    k = task.checkpoint_interval
    if not entries:
        arrays = get_state_arrays(state)  # on CUDA: the one host copy, hashed and written, then dropped
        root = compute_state_root_from_arrays(arrays)
        write_checkpoint_arrays(pdir.checkpoint(0), arrays, root, task_id)
        del arrays
        entries.append(TranscriptEntry(0, 0, root, None))
        append_transcript(pdir, entries[-1])
    if sync is not None:
        sync.start(rt, state)
    loss: float | None = entries[-1].loss
    step_roots: list[bytes] = []  # roots after each step of the current segment, if kept
    if keep_step_roots:
        pdir.steps_dir.mkdir(exist_ok=True)
    while state.step < task.total_steps:
        loss = train_step(rt, state)
        if progress is not None:
            progress(state.step, loss)
        if keep_step_roots:
            step_roots.append(compute_state_root(get_state_leaves(state)))
        if state.step % k == 0:
            index = state.step // k
            # hashed and written from the tensors' own memory (CPU: no second copy of the state; CUDA: one host copy)
            arrays = get_state_arrays(state)
            root = compute_state_root_from_arrays(arrays)
            if sync is not None:
                sync.checkpoint(state, root)
            if keep_step_roots:
                write_atomic(pdir.step_roots(index - 1), b"".join(step_roots))
                step_roots = []
            write_checkpoint_arrays(pdir.checkpoint(index), arrays, root, task_id)
            del arrays
            entries.append(TranscriptEntry(index, state.step, root, loss))
            append_transcript(pdir, entries[-1])
            log.debug("checkpoint %d at step %d: root %s loss %.4f", index, state.step, root.hex(), loss)
    roots = [e.root for e in entries]
    body = compute_claim_body(task, task_id, prover, roots, posting_id)
    claim = compute_signed_claim(secret_key, body)
    pdir.write_claim(claim)
    log.info("claim %s signed: %d checkpoints, final root %s", compute_claim_id(body).hex(), len(roots),
             roots[-1].hex())
    return ProveResult(claim, compute_claim_id(body), task_id, resumed_from, time.perf_counter() - started, loss)
