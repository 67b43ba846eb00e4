"""``pol conformance DIR``: an honest proof directory conforms; each kind of damage is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pol.cli import main
from prover.transcript import ProofDir
from verifier.conformance import check_conformance


def pol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pol.cli", *args], capture_output=True, text=True, timeout=300)


def failed(path: Path) -> set[str]:
    return {r.check for r in check_conformance(path).results if not r.ok}


def test_honest_directory_conforms_cli(proof_dir: Path) -> None:
    r = pol("conformance", str(proof_dir), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    assert {c["check"] for c in doc["checks"]} >= {"task", "layout.files", "claim.signature", "transcript.format",
                                                  "commitment", "init", "checkpoints", "step_roots"}


def test_cli_exit_codes_in_process(proof_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", str(proof_dir / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    ProofDir(proof_dir).step_roots(0).unlink(missing_ok=True)  # steps/ is optional: no file is no failure
    assert main(["conformance", str(proof_dir)]) == 0
    assert "conforms to SPEC.md" in capsys.readouterr().out
    ProofDir(proof_dir).steps_dir.mkdir(exist_ok=True)
    ProofDir(proof_dir).step_roots(99).write_bytes(b"\x00" * 32)  # but not a segment the task lacks
    assert main(["conformance", str(proof_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL layout.step_roots" in out and "does NOT conform" in out


def test_task_file_not_normalized(proof_dir: Path) -> None:
    path = ProofDir(proof_dir).task_file
    path.write_text(path.read_text().replace("ops_version = 1\n", ""))  # same task id, default left out
    assert failed(proof_dir) == {"task.normalized"}


def test_transcript_loss_may_be_any_json_number(proof_dir: Path) -> None:
    path = ProofDir(proof_dir).transcript_file
    lines = path.read_bytes().split(b"\n")
    loss = json.loads(lines[1])["loss"]
    lines[1] = lines[1].replace(repr(loss).encode(), f"{loss:.20e}".encode())
    path.write_bytes(b"\n".join(lines))
    assert failed(proof_dir) == set()


def test_transcript_line_not_canonical(proof_dir: Path) -> None:
    path = ProofDir(proof_dir).transcript_file
    lines = path.read_bytes().split(b"\n")
    lines[1] = json.dumps(json.loads(lines[1]), separators=(",", ":")).encode()  # same content, compact
    path.write_bytes(b"\n".join(lines))
    assert failed(proof_dir) == {"transcript.format"}


def test_checkpoint_metadata_and_step_roots(proof_dir: Path) -> None:
    pdir = ProofDir(proof_dir)
    data = bytearray(pdir.checkpoint(2).read_bytes())
    at = data.index(b'"pol_root":"') + len(b'"pol_root":"')
    data[at] = ord("0") if data[at] != ord("0") else ord("1")  # metadata names another root; tensors intact
    pdir.checkpoint(2).write_bytes(bytes(data))
    pdir.steps_dir.mkdir(exist_ok=True)
    pdir.step_roots(1).write_bytes(b"\x00" * 31)  # a step-roots file present must be k roots long
    bad = failed(proof_dir)
    assert bad == {"checkpoints", "step_roots"}, bad


def test_tampered_claim_and_missing_checkpoint(proof_dir: Path) -> None:
    pdir = ProofDir(proof_dir)
    data = bytearray(pdir.claim_file.read_bytes())
    data[-1] ^= 1  # flips a signature bit
    pdir.claim_file.write_bytes(bytes(data))
    pdir.checkpoint(1).unlink()
    report = check_conformance(proof_dir)
    bad = {r.check for r in report.results if not r.ok}
    assert bad == {"claim", "layout.checkpoints", "init"}, bad
    assert not report.ok and "missing [1]" in next(r.detail for r in report.results if r.check == "layout.checkpoints")


def test_garbage_anywhere_is_a_failed_check_never_a_crash(proof_dir: Path) -> None:
    pdir = ProofDir(proof_dir)
    pdir.checkpoint(0).write_bytes(b"\x10" + b"\x00" * 7)  # header length beyond the file
    pdir.checkpoint(3).write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00[1,2,3]")  # header not an object
    pdir.steps_dir.mkdir(exist_ok=True)
    pdir.step_roots(2).write_bytes(b"")
    assert failed(proof_dir) == {"checkpoints", "step_roots"}
    pdir.claim_file.write_bytes(b"\xc1\xff")
    pdir.transcript_file.write_bytes(b"\xff\xfe{\n")
    assert {"claim", "transcript.parse"} <= failed(proof_dir)
    pdir.transcript_file.unlink()
    (proof_dir / "steps").rename(proof_dir / "steps.old")
    assert {"transcript.parse"} <= failed(proof_dir)
    pdir.checkpoint_dir.rename(proof_dir / "checkpoints.old")
    assert {"layout.files", "layout.checkpoints", "transcript.parse"} <= failed(proof_dir)
    pdir.task_file.write_bytes(b"\xff")
    assert "task" in failed(proof_dir)
