"""Honest proofs are accepted; each kind of forgery is rejected with its specific reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pol.keyfile import generate_keyfile
from prover.prove import prove
from prover.recommit import perturb_checkpoint, recommit
from prover.transcript import ProofDir
from protocol import bls
from protocol.claim import compute_claim_signing_message, encode_claim
from protocol.sampling import compute_sample_proof, compute_segment_sample
from protocol.claim import compute_claim_id
from verifier.verify import ACCEPT, REJECT, verify_dir

from .conftest import tiny_task_toml


def _verify(path: Path, segments: int | None = None, key: bytes | None = None):  # type: ignore[no-untyped-def]
    return verify_dir(path, segments=segments, secret_key=key)


def test_honest_proof_accepted_all_segments(proof_dir: Path) -> None:
    report = _verify(proof_dir)
    assert report.verdict == ACCEPT, report.reason
    assert [r.index for r in report.segments] == [0, 1, 2, 3]
    assert all(r.ok for r in report.segments)


def test_checkpoint_changed_after_commitment(proof_dir: Path) -> None:
    perturb_checkpoint(ProofDir(proof_dir), 2)  # no recommit: the transcript still has the old root
    report = _verify(proof_dir)
    assert report.verdict == REJECT
    assert report.failed_check == "segment"
    assert "checkpoint ckpt-000002.safetensors hashes to" in (report.reason or "")


def test_claim_resigned_with_another_key(proof_dir: Path) -> None:
    pdir = ProofDir(proof_dir)
    claim = pdir.read_claim()
    other = generate_keyfile().bls_secret_key
    forged = dataclasses.replace(claim, signature=bls.sign(other, compute_claim_signing_message(claim.body)))
    pdir.claim_file.write_bytes(encode_claim(forged))
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "claim"
    assert "BLS signature does not verify" in (report.reason or "")


def test_recommitted_altered_weights_caught_by_replay(proof_dir: Path, prover_key: bytes) -> None:
    pdir = ProofDir(proof_dir)
    perturb_checkpoint(pdir, 2)
    recommit(pdir, prover_key)  # a self-consistent, correctly signed transcript over altered weights
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "segment"
    # Segment 1 ends at the altered checkpoint: replaying it exposes the forgery.
    assert report.reason is not None and report.reason.startswith("segment 1:")


def test_sampled_verifier_catches_forgery_when_sampled(proof_dir: Path, prover_key: bytes) -> None:
    pdir = ProofDir(proof_dir)
    perturb_checkpoint(pdir, 2)
    claim = recommit(pdir, prover_key)
    claim_id = compute_claim_id(claim.body)
    # Find a verifier key whose one-segment sample hits segment 1 or 2 (both touch checkpoint 2).
    for _ in range(50):
        key = generate_keyfile().bls_secret_key
        sample = compute_segment_sample(compute_sample_proof(key, claim_id).signature, 4, 1)
        if sample[0] in (1, 2):
            break
    else:  # pragma: no cover - probability 2^-50
        pytest.fail("no key sampled the forged segment")
    report = _verify(proof_dir, segments=1, key=key)
    assert report.sample == sample
    assert report.verdict == REJECT and report.failed_check == "segment"


def test_other_seed_rejected_at_init(tmp_path: Path, prover_key: bytes) -> None:
    from protocol.task import parse_task_toml

    out = tmp_path / "p"
    prove(parse_task_toml(tiny_task_toml(seed=6)), out, prover_key)
    (out / "task.toml").write_text(tiny_task_toml(seed=5))  # claim the seed-5 task
    recommit(ProofDir(out), prover_key)
    report = _verify(out, segments=1)
    assert report.verdict == REJECT and report.failed_check == "init"
    assert "not the initial state of this task's seed" in (report.reason or "")


def test_other_learning_rate_rejected_by_replay(tmp_path: Path, prover_key: bytes) -> None:
    from protocol.task import parse_task_toml

    out = tmp_path / "p"
    prove(parse_task_toml(tiny_task_toml(lr=0.05)), out, prover_key)
    (out / "task.toml").write_text(tiny_task_toml(lr=0.1))
    recommit(ProofDir(out), prover_key)
    report = _verify(out, segments=1)
    # The run seed hashes the whole task (SPEC.md §9), so even the initial state differs.
    assert report.verdict == REJECT and report.failed_check == "init"


def test_dataset_hash_mismatch_rejected(proof_dir: Path) -> None:
    (proof_dir / "task.toml").write_text(tiny_task_toml(sha="ab" * 32))
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "task"
    assert "dataset hash mismatch" in (report.reason or "")


def test_truncated_checkpoint_rejected(proof_dir: Path) -> None:
    ckpt = ProofDir(proof_dir).checkpoint(1)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "segment"
    assert "not a readable safetensors file" in (report.reason or "")


@pytest.mark.parametrize("payload", [b"", b"\x81\xa4body\xc0", b"garbage" * 10])
def test_malformed_claim_rejected(proof_dir: Path, payload: bytes) -> None:
    ProofDir(proof_dir).claim_file.write_bytes(payload)
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "claim"


def test_truncated_claim_rejected(proof_dir: Path) -> None:
    f = ProofDir(proof_dir).claim_file
    f.write_bytes(f.read_bytes()[:-7])
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "claim"


def test_transcript_not_matching_commitment(proof_dir: Path) -> None:
    t = ProofDir(proof_dir).transcript_file
    lines = t.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(lines[1].split('"root": "')[1][:8], "00000000")
    t.write_text("".join(lines))
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "transcript"
    assert "commitment" in (report.reason or "")


def test_sample_is_derived_from_verifier_signature(proof_dir: Path) -> None:
    key = generate_keyfile().bls_secret_key
    a = _verify(proof_dir, segments=2, key=key)
    b = _verify(proof_dir, segments=2, key=key)
    assert a.sample == b.sample and len(a.sample) == 2
    assert a.sample_proof is not None
    # Anyone can check the sample from the public key and signature alone.
    msg = b"pol/v1/sample" + (a.claim_id or b"")
    assert bls.is_valid_signature(a.sample_proof.verifier, msg, a.sample_proof.signature)
    assert compute_segment_sample(a.sample_proof.signature, 4, 2) == a.sample


def test_committed_state_that_diverges_is_the_provers_fault(proof_dir: Path, prover_key: bytes) -> None:
    """Huge (finite) weights committed in checkpoint 1: replaying segment 1 gives a NaN loss, which
    is an InvalidSegment (reject), not our ReplayError."""
    import numpy as np

    from prover.checkpoint import decode_checkpoint, write_checkpoint
    from prover.training import Runtime
    from protocol.errors import InvalidSegment
    from protocol.state import TensorLeaf, compute_state_root
    from verifier.replay import load_state, replay_segment

    pdir = ProofDir(proof_dir)
    out = []
    for leaf in decode_checkpoint(pdir.checkpoint(1).read_bytes()):
        if leaf.name == "param/fc0.weight":
            huge = np.full(leaf.shape, 3e38, dtype="<f4")
            leaf = TensorLeaf(leaf.name, leaf.dtype, leaf.shape, huge.tobytes())
        out.append(leaf)
    write_checkpoint(pdir.checkpoint(1), out, compute_state_root(out), b"\0" * 32)
    recommit(pdir, prover_key)
    task = pdir.read_task()
    roots = [line.split('"root": "')[1][:64] for line in pdir.transcript_file.read_text().splitlines()]
    rt = Runtime.for_task(task)
    state = load_state(rt, pdir, 1, bytes.fromhex(roots[1]))
    with pytest.raises(InvalidSegment, match="diverges"):
        replay_segment(rt, state, 1, bytes.fromhex(roots[2]))
