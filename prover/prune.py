"""Pruning checkpoints once a claim is settled (``pol prune``, node option ``prune_settled``).

While a claim is pending or disputable, every checkpoint must stay available: any verifier may sample
any segment, and a dispute replays one. Once it is settled (paid, slashed or void) only two remain
useful: checkpoint 0 (anyone can recompute it from the run seed, but it costs nothing to keep) and the
final checkpoint S, the delivered model (``pol fetch-model``). Everything in between, and the step
roots and traces of ``steps/``, can go.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from .transcript import ProofDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    files: int
    bytes: int


def prune_proof_dir(path: Path, keep_final: bool = True) -> PruneResult:
    """Delete the intermediate checkpoints (1 .. S-1) and ``steps/`` of the proof directory ``path``.

    Only a finished proof (one with a claim) is pruned: an unfinished one still resumes from its last
    checkpoint. Returns what was removed."""
    pdir = ProofDir(path)
    claim = pdir.read_claim()  # raises if there is no claim: nothing is deleted
    last = claim.body.num_checkpoints - 1
    keep = {pdir.checkpoint(0).name} | ({pdir.checkpoint(last).name} if keep_final else set())
    files = size = 0
    if pdir.checkpoint_dir.is_dir():
        for f in sorted(pdir.checkpoint_dir.iterdir()):
            if f.name in keep or not f.is_file():
                continue
            size += f.stat().st_size
            f.unlink()
            files += 1
    if pdir.steps_dir.is_dir():
        for f in pdir.steps_dir.iterdir():
            if f.is_file():
                size += f.stat().st_size
                files += 1
        shutil.rmtree(pdir.steps_dir)
    log.info("pruned %s: %d files, %d bytes", path, files, size)
    return PruneResult(files, size)


def prune_fetched(directory: Path) -> PruneResult:
    """Delete a directory of checkpoints fetched for one claim (a verifier's copies)."""
    files = size = 0
    if directory.is_dir():
        for f in directory.iterdir():
            if f.is_file():
                size += f.stat().st_size
                files += 1
        shutil.rmtree(directory)
    return PruneResult(files, size)
