"""Proving, honestly or not (the devnet's cheating prover).

``tamper``: train honestly, then alter the weights in one checkpoint (the middle one), recompute
its state root, rewrite the transcript, recompute the commitment and re-sign the claim. The claim
is perfectly well-formed; only replaying the segments around that checkpoint exposes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from prover.checkpoint import read_checkpoint, write_atomic, write_checkpoint
from prover.prove import prove
from prover.transcript import ProofDir, TranscriptEntry, append_transcript, read_transcript
from protocol import bls
from protocol.claim import Claim, ClaimBody, compute_commitment, compute_signed_claim
from protocol.state import TensorLeaf, compute_state_root
from protocol.task import Task, compute_task_id

log = logging.getLogger(__name__)
TAMPER_MARKER = "tampered"


def run_prove(task: Task, out: Path, secret_key: bytes, cheat: str = "") -> Claim:
    """Prove ``task`` into ``out`` (resuming if possible); with ``cheat="tamper"`` fake one checkpoint."""
    result = prove(task, out, secret_key)
    if cheat != "tamper":
        return result.claim
    if (out / TAMPER_MARKER).exists():
        return ProofDir(out).read_claim()
    return tamper(out, task, secret_key, task.num_checkpoints // 2)


def tamper(out: Path, task: Task, secret_key: bytes, index: int) -> Claim:
    pdir = ProofDir(out)
    entries = read_transcript(pdir, task)
    leaves = read_checkpoint(pdir.checkpoint(index), expected_root=entries[index].root)
    changed = ""
    for i, leaf in enumerate(leaves):
        if leaf.name.startswith("param/"):
            arr = leaf.array().copy()
            arr.flat[0] = np.float32(arr.flat[0] + np.float32(0.01))
            leaves[i] = TensorLeaf(leaf.name, leaf.dtype, leaf.shape, arr.astype("<f4").tobytes())
            changed = leaf.name
            break
    root = compute_state_root(leaves)
    write_checkpoint(pdir.checkpoint(index), leaves, root, compute_task_id(task))
    entries[index] = TranscriptEntry(index, entries[index].step, root, entries[index].loss)
    write_atomic(pdir.transcript_file, b"")
    for entry in entries:
        append_transcript(pdir, entry)
    roots = [e.root for e in entries]
    body = ClaimBody(task_id=compute_task_id(task), prover=bls.compute_public_key(secret_key),
                     commitment=compute_commitment(roots), final_root=roots[-1], num_checkpoints=len(roots),
                     total_steps=task.total_steps, checkpoint_interval=task.checkpoint_interval)
    claim = compute_signed_claim(secret_key, body)
    pdir.write_claim(claim)
    (out / TAMPER_MARKER).write_text(f"checkpoint {index}: {changed}\n")
    log.warning("CHEAT: altered %s in checkpoint %d and re-signed the claim", changed, index)
    return claim
