"""The auditor names the first faked step of a segment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prover.prove as prove_mod
from prover.prove import prove
from prover.training import train_step as honest_step
from protocol.task import Task
from verifier.audit import audit_segment
from verifier.verify import REJECT, verify_dir


def test_honest_segment_audits_clean(proof_dir: Path) -> None:
    report = audit_segment(proof_dir, 2)
    assert report.segment_ok and report.first_bad_step is None and report.game is None
    assert not report.step_roots_available  # provers no longer hash every step by default
    assert [s["step"] for s in report.steps] == list(range(21, 31))


def test_first_faked_step_is_found(tmp_path: Path, tiny_task: Task, prover_key: bytes,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    faked_step = 17  # inside segment 1 (steps 11..20)

    def lazy_step(rt, state):  # type: ignore[no-untyped-def]
        loss = honest_step(rt, state)
        if state.step == faked_step:  # the prover "skips work": nudges weights instead of computing
            with torch.no_grad():
                state.params["fc0.bias"].add_(1e-3)
        return loss

    monkeypatch.setattr(prove_mod, "train_step", lazy_step)
    out = tmp_path / "lazy"
    prove(tiny_task, out, prover_key, keep_step_roots=True)
    monkeypatch.undo()

    assert verify_dir(out, segments=None, secret_key=None).verdict == REJECT
    report = audit_segment(out, 1)
    assert not report.segment_ok
    assert report.first_bad_step == faked_step
    assert report.step_roots_match_commitment is True  # self-consistent forgery, still localised
    assert report.claimed_step_root != report.replayed_step_root
    assert "step 17 was faked" in report.finding
    # Segments before the fake are honest.
    assert audit_segment(out, 0).segment_ok


def test_audit_without_step_roots_still_reports_segment(proof_dir: Path) -> None:
    from prover.recommit import perturb_checkpoint, recommit
    from prover.transcript import ProofDir

    pdir = ProofDir(proof_dir)
    assert not pdir.steps_dir.exists()
    perturb_checkpoint(pdir, 2)
    recommit(pdir, b"\x01" * 32)
    report = audit_segment(proof_dir, 1)
    assert not report.segment_ok and report.first_bad_step is None and not report.step_roots_available
    assert "cannot be narrowed down" in report.finding
