"""``pol audit``: replay one segment step by step and name the first step that was faked.

The prover keeps the root after every step (``DIR/steps/seg-NNNNNN.roots``, SPEC.md §14).
An auditor replays the disputed segment from its committed start checkpoint, computes the
same roots, and reports the first step whose claimed root differs from the replayed one,
together with everything a third party needs to check the finding: the committed start
root, the step, both roots, and whether the prover's step roots even agree with its own
commitment at the segment end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from prover.training import NonFiniteLoss, Runtime, compute_root, train_step
from prover.transcript import ProofDir, read_transcript
from protocol.claim import compute_claim_training_seed, compute_claim_id, validate_claim_against_task, validate_claim_signature
from protocol.claim import validate_transcript_roots
from protocol.errors import InvalidCheckpoint, InvalidInput
from protocol.task import compute_task_id

from .replay import load_state

log = logging.getLogger(__name__)

ROOT_LEN = 32


@dataclass
class AuditReport:
    claim_id: str
    segment: int
    start_step: int
    end_step: int
    start_root: str
    claimed_end_root: str
    replayed_end_root: str = ""
    segment_ok: bool = False
    step_roots_available: bool = False
    step_roots_match_commitment: bool | None = None
    first_bad_step: int | None = None
    claimed_step_root: str | None = None
    replayed_step_root: str | None = None
    diverged: str | None = None
    seconds: float = 0.0
    steps: list[dict[str, object]] = field(default_factory=list)

    @property
    def finding(self) -> str:
        if self.segment_ok and self.first_bad_step is None:
            return "segment replays exactly; nothing was faked here"
        if self.first_bad_step is not None:
            return (f"step {self.first_bad_step} was faked: the prover's root after it is {self.claimed_step_root}, "
                    f"honest replay gives {self.replayed_step_root}")
        if self.diverged:
            return f"the committed start state diverges: {self.diverged}"
        return (f"segment end differs (claimed {self.claimed_end_root}, replayed {self.replayed_end_root}); "
                "the prover kept no step roots, so the faked step cannot be narrowed down")


def _read_step_roots(pdir: ProofDir, segment: int, k: int) -> list[bytes] | None:
    try:
        data = pdir.step_roots(segment).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != k * ROOT_LEN:
        raise InvalidCheckpoint(f"step-roots file of segment {segment} has {len(data)} bytes, expected {k * ROOT_LEN}")
    return [data[i:i + ROOT_LEN] for i in range(0, len(data), ROOT_LEN)]


def audit_segment(path: Path, segment: int) -> AuditReport:
    """Replay ``segment`` step by step. Raises ``InvalidInput`` if the proof is malformed
    before the segment can even be replayed (claim, transcript, start checkpoint)."""
    pdir = ProofDir(path)
    task = pdir.read_task()
    task_id = compute_task_id(task)
    claim = pdir.read_claim()
    validate_claim_signature(claim)
    validate_claim_against_task(claim, task, task_id)
    rt = Runtime.for_task(task, compute_claim_training_seed(claim))
    roots = [e.root for e in read_transcript(pdir, task)]
    validate_transcript_roots(claim, roots)
    if not 0 <= segment < task.num_segments:
        raise InvalidInput(f"segment {segment} does not exist; the claim has {task.num_segments}")
    k = task.checkpoint_interval
    report = AuditReport(
        claim_id=compute_claim_id(claim.body).hex(), segment=segment, start_step=segment * k,
        end_step=(segment + 1) * k, start_root=roots[segment].hex(), claimed_end_root=roots[segment + 1].hex(),
    )
    claimed_steps = _read_step_roots(pdir, segment, k)
    report.step_roots_available = claimed_steps is not None
    if claimed_steps is not None:
        report.step_roots_match_commitment = claimed_steps[-1] == roots[segment + 1]
    state = load_state(rt, pdir, segment, roots[segment])
    started = time.perf_counter()
    replayed = b""
    for i in range(k):
        try:
            loss = train_step(rt, state)
        except NonFiniteLoss as exc:
            report.diverged = str(exc)
            report.first_bad_step = state.step + 1 if claimed_steps is not None else None
            break
        replayed = compute_root(state)
        entry: dict[str, object] = {"step": state.step, "replayed_root": replayed.hex(), "loss": loss}
        if claimed_steps is not None:
            entry["claimed_root"] = claimed_steps[i].hex()
            if claimed_steps[i] != replayed and report.first_bad_step is None:
                report.first_bad_step = state.step
                report.claimed_step_root = claimed_steps[i].hex()
                report.replayed_step_root = replayed.hex()
                log.warning("segment %d: first faked step is %d", segment, state.step)
        report.steps.append(entry)
    report.seconds = time.perf_counter() - started
    report.replayed_end_root = replayed.hex() if report.diverged is None else ""
    report.segment_ok = report.diverged is None and replayed == roots[segment + 1]
    return report
