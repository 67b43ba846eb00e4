"""The Python API for auditors and scripts; the CLI is built on the same functions.

>>> from pathlib import Path
>>> from pol import api
>>> pdir = api.open_proof(Path("proof"))                           # doctest: +SKIP
>>> task, claim, entries = api.load_transcript(pdir)                # doctest: +SKIP
>>> rt = api.runtime(task, claim)                                         # doctest: +SKIP
>>> state = api.load_state(rt, pdir, 3, entries[3].root)            # doctest: +SKIP
>>> api.replay_segment(rt, state, 3, entries[4].root).ok            # doctest: +SKIP
True
"""

from __future__ import annotations

from pathlib import Path

from prover.checkpoint import decode_checkpoint, read_checkpoint
from prover.prove import prove
from prover.recommit import recommit
from prover.training import Runtime, TrainState, compute_root, get_state_leaves, init_state, train_step
from prover.transcript import ProofDir, TranscriptEntry, read_transcript
from protocol.claim import Claim, compute_claim_id, compute_claim_training_seed, compute_commitment, decode_claim, encode_claim
from protocol.merkle import MerkleProof, compute_merkle_proof, compute_merkle_root, validate_merkle_proof
from protocol.state import (
    TensorLeaf,
    compute_root_from_tensor_proof,
    compute_state_root,
    compute_tensor_proof,
)
from protocol.task import Task, compute_task_id, parse_task_toml
from verifier.replay import SegmentResult, check_init, load_state, replay_segment
from verifier.verify import VerifyReport, verify_dir

__all__ = [
    "Claim", "MerkleProof", "ProofDir", "Runtime", "SegmentResult", "Task", "TensorLeaf", "TrainState",
    "TranscriptEntry", "VerifyReport", "check_init", "compute_claim_id", "compute_commitment", "compute_merkle_proof",
    "compute_merkle_root", "compute_root", "compute_root_from_tensor_proof", "compute_state_root",
    "compute_task_id", "compute_tensor_proof", "decode_checkpoint", "decode_claim", "encode_claim",
    "get_state_leaves", "init_state", "load_state", "load_transcript", "open_proof", "parse_task_toml", "prove",
    "read_checkpoint", "recommit", "replay_segment", "runtime", "train_step", "validate_merkle_proof", "verify_dir",
]


def open_proof(path: Path) -> ProofDir:
    return ProofDir(Path(path))


def load_transcript(pdir: ProofDir) -> tuple[Task, Claim, list[TranscriptEntry]]:
    """Task, signed claim and transcript entries of a proof directory (signature not checked)."""
    task = pdir.read_task()
    return task, pdir.read_claim(), read_transcript(pdir, task)


def runtime(task: Task, claim: Claim | None = None) -> Runtime:
    """Data, model and parameter layout of a task (checks the dataset hash), keyed by the claim's
    run seed (SPEC.md §9); without a claim, by the bare task seed."""
    if claim is None:
        return Runtime.for_task(task)
    return Runtime.for_task(task, compute_claim_training_seed(claim))
