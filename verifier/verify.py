"""``pol verify``: check a proof directory and replay sampled segments (SPEC.md §15).

Checks run in a fixed order and the first failure decides the verdict:

1. ``task``        the task file parses, names built-in parts, and the dataset hash matches
2. ``claim``       the claim decodes, is signed by its prover key, names this task
3. ``transcript``  the transcript parses and its roots hash to the claim's commitment
4. ``init``        checkpoint 0 is the initial state of the run seed (task seed, prover, posting)
5. ``final``       the final checkpoint (the delivered model) is present, hashes to the final root,
                   holds step T and exactly the task's tensors
6. ``segment``     each sampled segment's start checkpoint matches its root and replaying
                   k steps from it reproduces the next root bit for bit

A ``ReplayError`` (our environment, not the prover) is an error, never a reject.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prover.training import Runtime
from prover.transcript import ProofDir, read_transcript
from protocol import bls
from protocol.claim import Claim, compute_claim_id, compute_claim_training_seed, validate_claim_against_task
from protocol.claim import validate_claim_signature
from protocol.claim import validate_transcript_roots
from protocol.budget import validate_task_cost
from protocol.constants import MAX_SEGMENT_FLOPS
from protocol.detection import compute_escape_probability
from protocol.errors import InvalidClaim, InvalidInput, InvalidSegment, InvalidTask
from protocol.sampling import SampleProof, compute_sample_proof, compute_segment_sample
from protocol.task import compute_task_id

from .replay import SegmentResult, check_init, load_state, replay_segment, validate_segment

# Replaying loads the whole state: offline verification, like a node (node/limits.py), declines a larger one unless
# told otherwise (the protocol allows up to MAX_STATE_BYTES, 2 GiB).
DEFAULT_MAX_STATE_BYTES = 256 * 1024 * 1024

log = logging.getLogger(__name__)

ACCEPT = "accept"
REJECT = "reject"


@dataclass
class VerifyReport:
    verdict: str = REJECT
    failed_check: str | None = None
    reason: str | None = None
    claim_id: bytes | None = None
    task_id: bytes | None = None
    task_name: str | None = None
    total_steps: int = 0
    checkpoint_interval: int = 0
    posting_id: bytes | None = None
    prover: bytes | None = None
    num_segments: int = 0
    sample: list[int] = field(default_factory=list)
    sample_proof: SampleProof | None = None
    segments: list[SegmentResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        s = self.num_segments
        esc = {}
        if s and self.sample:
            # 10% of S segments rounds up to whole segments (at least one), as `pol verify` states.
            for label, c in (("one_segment_faked", 1), ("ten_percent_faked", min(s, max(1, -(-s // 10))))):
                esc[label] = float(compute_escape_probability(s, c, len(self.sample)))
        return {
            "verdict": self.verdict,
            "failed_check": self.failed_check,
            "reason": self.reason,
            "claim_id": self.claim_id.hex() if self.claim_id else None,
            "task_id": self.task_id.hex() if self.task_id else None,
            "task_name": self.task_name,
            "total_steps": self.total_steps,
            "checkpoint_interval": self.checkpoint_interval,
            "posting_id": self.posting_id.hex() if self.posting_id else None,
            "prover": self.prover.hex() if self.prover else None,
            "num_segments": s,
            "sample": self.sample,
            "sample_proof": None if self.sample_proof is None else {
                "verifier": self.sample_proof.verifier.hex(), "signature": self.sample_proof.signature.hex()},
            "escape_probability": esc,
            "segments": [
                {"index": r.index, "start_step": r.start_step, "end_step": r.end_step, "ok": r.ok,
                 "claimed_root": r.claimed_root.hex(), "replayed_root": r.replayed_root.hex(),
                 "seconds": round(r.seconds, 4)}
                for r in self.segments
            ],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


SegmentCallback = Callable[[SegmentResult], None]


def verify_dir(path: Path, *, segments: int | None, secret_key: bytes | None,
               on_segment: SegmentCallback | None = None, expected_task_id: bytes | None = None,
               expected_posting_id: bytes | None = None, max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
               max_segment_flops: int = MAX_SEGMENT_FLOPS) -> VerifyReport:
    """Verify the proof in ``path``. ``segments=None`` replays every segment.

    ``expected_task_id`` is the task the caller asked about: a proof of any other task (another
    length, seed or name) is rejected at check ``task`` whatever the directory's own task file says.
    ``expected_posting_id`` likewise pins the posting the claim must answer.

    Returns a report with verdict accept or reject. Raises ``ReplayError`` (or OSError) when
    the verifier itself cannot proceed; ``OverBudget`` (a ``ReplayError``) when the task's state or
    segment compute exceeds the given budget, checked before anything is allocated.
    """
    report = VerifyReport()
    pdir = ProofDir(path)
    clock = time.perf_counter
    check = "task"
    try:
        t0 = clock()
        task = pdir.read_task()
        report.task_id = compute_task_id(task)
        report.task_name = task.name
        report.total_steps, report.checkpoint_interval = task.total_steps, task.checkpoint_interval
        report.num_segments = task.num_segments
        if expected_task_id is not None and report.task_id != expected_task_id:
            raise InvalidTask(
                f"the proof is of task {report.task_id.hex()} ({task.name}, {task.total_steps} steps, interval "
                f"{task.checkpoint_interval}), not of the task asked for, {expected_task_id.hex()}")
        validate_task_cost(task, max_state_bytes, max_segment_flops)  # before the dataset or any tensor
        rt = Runtime.for_task(task)  # checks the dataset hash
        report.timings["load_task"] = clock() - t0

        check = "claim"
        t0 = clock()
        claim: Claim = pdir.read_claim()
        report.claim_id = compute_claim_id(claim.body)
        validate_claim_signature(claim)
        validate_claim_against_task(claim, task, report.task_id)
        report.posting_id, report.prover = claim.body.posting_id, claim.body.prover
        if expected_posting_id is not None and claim.body.posting_id != expected_posting_id:
            raise InvalidClaim(f"the claim answers posting {claim.body.posting_id.hex()}, not "
                               f"{expected_posting_id.hex()}")
        rt = rt.with_seed(compute_claim_training_seed(claim))
        report.timings["claim"] = clock() - t0

        check = "transcript"
        entries = read_transcript(pdir, task)
        roots = [e.root for e in entries]
        validate_transcript_roots(claim, roots)

        check = "init"
        t0 = clock()
        layout = check_init(rt, pdir, roots[0])
        report.timings["init"] = clock() - t0

        check = "final"
        t0 = clock()
        load_state(rt, pdir, task.num_segments, roots[-1])  # the delivered model: present, intact, at step T
        report.timings["final"] = clock() - t0

        check = "sample"
        key = secret_key if secret_key is not None else bls.compute_secret_key(secrets.token_bytes(32))
        report.sample_proof = compute_sample_proof(key, report.claim_id)
        count = task.num_segments if segments is None else segments
        report.sample = compute_segment_sample(report.sample_proof.signature, task.num_segments, count)
        log.info("claim %s: replaying segments %s of %d", report.claim_id.hex()[:16], report.sample,
                 task.num_segments)

        check = "segment"
        t0 = clock()
        for j in report.sample:
            state = load_state(rt, pdir, j, roots[j], layout)
            result = replay_segment(rt, state, j, roots[j + 1])
            report.segments.append(result)
            if on_segment is not None:
                on_segment(result)
            validate_segment(result)
            log.info("segment %d (steps %d..%d) matches: %s", j, result.start_step, result.end_step,
                     result.replayed_root.hex()[:16])
        report.timings["replay"] = clock() - t0
    except InvalidSegment as exc:
        report.failed_check, report.reason = "segment", str(exc)
        log.warning("REJECT claim: %s", exc)
        return report
    except InvalidInput as exc:
        report.failed_check, report.reason = check, str(exc)
        log.warning("REJECT claim at check %r: %s", check, exc)
        return report
    report.verdict = ACCEPT
    return report
