"""The delivered model: the final checkpoint of a claim, checked and exported for plain torch.

A requester pays for the parameters after the last step. They are the tensors ``param/<name>``
of checkpoint S, whose state root is the claim's signed ``final_root`` (SPEC.md §6, §15 check
``final``). ``export_model`` checks that root and writes a standard safetensors file holding the
parameters alone under their torch names (``fc0.weight``, ...), loadable by
``safetensors.torch.load_file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from protocol.claim import Claim, compute_claim_id, validate_claim_signature
from protocol.errors import InvalidCheckpoint, InvalidClaim
from protocol.state import STEP_TENSOR, compute_state_root

from .checkpoint import decode_checkpoint, encode_safetensors, write_atomic
from .transcript import ProofDir

PARAM_PREFIX = "param/"


@dataclass(frozen=True)
class ExportedModel:
    claim_id: bytes
    task_id: bytes
    final_root: bytes
    step: int
    tensors: int
    parameters: int
    bytes_written: int


def export_model(claim: Claim, checkpoint: bytes, out: Path, expected_claim_id: bytes | None = None) -> ExportedModel:
    """Check ``checkpoint`` (safetensors bytes) against ``claim`` and write its parameters to ``out``.

    Raises ``InvalidClaim`` if the claim is not the one asked for or is not signed by its prover, and
    ``InvalidCheckpoint`` if the checkpoint is damaged, is not the claim's final state, or holds no
    parameters. Nothing is written unless every check passes.
    """
    claim_id = compute_claim_id(claim.body)
    if expected_claim_id is not None and claim_id != expected_claim_id:
        raise InvalidClaim(f"the source holds claim {claim_id.hex()}, not {expected_claim_id.hex()}")
    validate_claim_signature(claim)
    leaves = decode_checkpoint(checkpoint, "final checkpoint")
    root = compute_state_root(leaves)
    if root != claim.body.final_root:
        raise InvalidCheckpoint(f"final checkpoint hashes to {root.hex()}, the claim commits to "
                                f"{claim.body.final_root.hex()}: the delivered model is not the trained one")
    step_leaf = next((leaf for leaf in leaves if leaf.name == STEP_TENSOR), None)
    step = int(step_leaf.array()) if step_leaf is not None and step_leaf.dtype == "i64" else -1
    if step != claim.body.total_steps:
        raise InvalidCheckpoint(f"final checkpoint holds step {step}, the claim has {claim.body.total_steps} steps")
    params = {leaf.name[len(PARAM_PREFIX):]: leaf.array() for leaf in leaves if leaf.name.startswith(PARAM_PREFIX)}
    if not params:
        raise InvalidCheckpoint("final checkpoint holds no parameters")
    data = encode_safetensors(params, {"pol_claim_id": claim_id.hex(), "pol_task_id": claim.body.task_id.hex(),
                                        "pol_final_root": root.hex(), "pol_step": str(step)})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    return ExportedModel(claim_id, claim.body.task_id, root, step, len(params),
                         sum(int(a.size) for a in params.values()), len(data))


def read_final_from_dir(path: Path) -> tuple[Claim, bytes]:
    """The signed claim and the final checkpoint's bytes of a proof directory."""
    pdir = ProofDir(path)
    claim = pdir.read_claim()
    final = pdir.checkpoint(claim.body.num_checkpoints - 1)
    try:
        return claim, final.read_bytes()
    except FileNotFoundError:
        raise InvalidCheckpoint(f"the final checkpoint {final.name} is missing from {path}") from None
