"""Proving, honestly or not (the devnet's cheating prover).

``tamper``: train honestly, then alter the weights in one checkpoint (the middle one), recompute
its state root, rewrite the transcript, recompute the commitment and re-sign the claim. The claim
is perfectly well-formed; only replaying the segments around that checkpoint exposes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prover.prove import prove
from prover.recommit import perturb_checkpoint, recommit
from prover.transcript import ProofDir
from protocol.claim import Claim
from protocol.constants import OFFLINE_POSTING_ID
from protocol.task import Task

log = logging.getLogger(__name__)
TAMPER_MARKER = "tampered"


def run_prove(task: Task, out: Path, secret_key: bytes, cheat: str = "",
              posting_id: bytes = OFFLINE_POSTING_ID) -> Claim:
    """Prove ``task`` for ``posting_id`` into ``out`` (resuming if possible); with ``cheat="tamper"`` fake
    one checkpoint."""
    result = prove(task, out, secret_key, posting_id=posting_id)
    if cheat != "tamper":
        return result.claim
    if (out / TAMPER_MARKER).exists():
        return ProofDir(out).read_claim()
    return tamper(out, task, secret_key, task.num_checkpoints // 2)


def tamper(out: Path, task: Task, secret_key: bytes, index: int) -> Claim:
    pdir = ProofDir(out)
    changed = perturb_checkpoint(pdir, index, delta=0.01)
    claim = recommit(pdir, secret_key)
    (out / TAMPER_MARKER).write_text(f"checkpoint {index}: {changed}\n")
    log.warning("CHEAT: altered %s in checkpoint %d and re-signed the claim", changed, index)
    return claim
