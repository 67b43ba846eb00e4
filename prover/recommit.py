"""Re-commit and re-sign a proof directory from its checkpoint files.

Auditors use this to rebuild a transcript from checkpoints; the devnet and the tests use it
(with ``perturb_checkpoint``) to play a dishonest prover whose transcript is internally
consistent and correctly signed, so that only replay can expose it.
"""

from __future__ import annotations

import numpy as np

from protocol import bls
from protocol.claim import Claim, compute_claim_body, compute_signed_claim
from protocol.constants import OFFLINE_POSTING_ID
from protocol.state import TensorLeaf, compute_state_root
from protocol.task import compute_task_id

from .checkpoint import decode_checkpoint, write_atomic, write_checkpoint
from .transcript import ProofDir, TranscriptEntry, encode_transcript_line, read_transcript


def recommit(pdir: ProofDir, secret_key: bytes, posting_id: bytes | None = None) -> Claim:
    """Recompute every checkpoint root, rewrite the transcript and sign a fresh claim.

    The claim answers ``posting_id``, by default the posting of the claim already in the directory.
    """
    task = pdir.read_task()
    if posting_id is None:
        posting_id = pdir.read_claim().body.posting_id if pdir.claim_file.exists() else OFFLINE_POSTING_ID
    old = read_transcript(pdir, task)
    entries = []
    for e in old:
        leaves = decode_checkpoint(pdir.checkpoint(e.index).read_bytes())
        entries.append(TranscriptEntry(e.index, e.step, compute_state_root(leaves), e.loss))
    write_atomic(pdir.transcript_file, b"".join(encode_transcript_line(e) for e in entries))
    body = compute_claim_body(task, compute_task_id(task), bls.compute_public_key(secret_key),
                              [e.root for e in entries], posting_id)
    claim = compute_signed_claim(secret_key, body)
    pdir.write_claim(claim)
    return claim


def perturb_checkpoint(pdir: ProofDir, index: int, tensor: str | None = None, delta: float = 1e-3) -> str:
    """Add ``delta`` to one weight of checkpoint ``index`` (rewriting the file); returns the tensor name."""
    leaves = decode_checkpoint(pdir.checkpoint(index).read_bytes())
    params = sorted(leaf.name for leaf in leaves if leaf.name.startswith("param/"))
    name = tensor or params[0]
    out: list[TensorLeaf] = []
    for leaf in leaves:
        if leaf.name == name:
            arr = leaf.array().copy()
            arr.reshape(-1)[0] += np.float32(delta)
            leaf = TensorLeaf(leaf.name, leaf.dtype, leaf.shape, arr.astype("<f4").tobytes())
        out.append(leaf)
    task = pdir.read_task()
    write_checkpoint(pdir.checkpoint(index), out, compute_state_root(out), compute_task_id(task))
    return name
