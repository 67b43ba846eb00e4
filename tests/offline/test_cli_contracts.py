"""The CLI's shared contracts: exit codes, words for verdicts, quiet pipes, re-signing, versions, temp dirs."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from math import comb
from pathlib import Path

import pytest

from pol.progress import StepProgress, describe_detection
from prover.transcript import ProofDir


def pol(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pol.cli", *args], capture_output=True, text=True, timeout=300,
                          **kw)  # type: ignore[call-overload]


def test_verify_of_empty_or_unfinished_dir_is_an_error_not_a_reject(tmp_path: Path, proof_dir: Path) -> None:
    r = pol("verify", str(tmp_path))
    assert r.returncode == 2 and "not a proof directory" in r.stderr and "Traceback" not in r.stderr
    ProofDir(proof_dir).claim_file.unlink()
    r = pol("verify", str(proof_dir))
    assert r.returncode == 2 and "claim" in r.stderr


def test_verify_states_detection_probability_in_words(proof_dir: Path) -> None:
    r = pol("verify", str(proof_dir), "--segments", "2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "accept"
    ten = doc["detection"][1]
    # 4 segments: 10% rounds up to 1 faked segment; 2 sampled of 4 miss it with C(3,2)/C(4,2) = 1/2.
    assert ten["faked_segments"] == 1 and abs(ten["catch_probability"] - (1 - comb(3, 2) / comb(4, 2))) < 1e-12
    r = pol("verify", str(proof_dir), "--segments", "2", "--quiet")
    assert "would catch a prover that faked 10% of segments" in r.stdout and "rounded up" in r.stdout


def test_describe_detection_rounding() -> None:
    d = describe_detection(25, 5)[1]
    assert d["faked_segments"] == 3  # ceil(2.5)
    assert abs(d["catch_probability"] - (1 - comb(22, 5) / comb(25, 5))) < 1e-12


def test_json_into_closed_pipe_is_quiet(proof_dir: Path) -> None:
    cmd = f"{sys.executable} -m pol.cli inspect {proof_dir} --json | head -c1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.stdout == "{" and "BrokenPipe" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_prove_refuses_to_resign_a_finished_proof_with_another_key(proof_dir: Path, tmp_path: Path) -> None:
    # The run is bound to its prover key (SPEC §11): another key cannot re-sign it, only start afresh.
    k = tmp_path / "other.json"
    assert pol("keys", "new", "--out", str(k)).returncode == 0
    before = ProofDir(proof_dir).claim_file.read_bytes()
    task = str(ProofDir(proof_dir).task_file)
    r = pol("prove", task, "--out", str(proof_dir), "--key", str(k), "--quiet")
    assert r.returncode == 2 and "another prover key" in r.stderr and "Traceback" not in r.stderr
    assert ProofDir(proof_dir).claim_file.read_bytes() == before


def test_version_and_verbose_after_subcommand(proof_dir: Path) -> None:
    r = pol("--version")
    assert r.returncode == 0 and r.stdout.startswith("pol ")
    r = pol("inspect", str(proof_dir), "-v", "--json")
    assert r.returncode == 0, r.stderr
    r = pol("keys", "new", "--out", str(proof_dir / "k.json"), "-vv")
    assert r.returncode == 0, r.stderr


def test_audit_json_verdict_is_a_word(proof_dir: Path) -> None:
    r = pol("audit", str(proof_dir), "--segment", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verdict"] == "accept"


def test_resumed_prove_rate_counts_only_this_runs_steps() -> None:
    bar = StepProgress(1000, "t")
    bar.update(901, 0.5)  # resumed at step 900
    for step in range(902, 911):
        bar.update(step, 0.5)
    fmt = bar._bar.format_dict
    assert fmt["n"] == 910 and fmt["initial"] == 900  # tqdm's rate divides n - initial = 10 steps
    rate = bar.rate
    assert rate is not None and rate > 10 / max(fmt["elapsed"], 1e-9) * 0.5
    bar.__exit__(None, None, None)


def test_demo_leaves_no_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from pol import demo

    from .conftest import tiny_task_toml

    task = tmp_path / "tiny.toml"
    task.write_text(tiny_task_toml())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(demo, "DEFAULT_TASK", str(task))  # the demo's flow on a 40-step task
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert demo.run_demo(argparse.Namespace(workdir=None, json=True)) == 0
    assert json.loads(capsys.readouterr().out)["workdir"] is None
    assert list(scratch.iterdir()) == []


def test_audit_text_agrees_with_its_json(proof_dir: Path, prover_key: bytes) -> None:
    from prover.recommit import perturb_checkpoint, recommit

    perturb_checkpoint(ProofDir(proof_dir), 3)
    recommit(ProofDir(proof_dir), prover_key)
    # Provers keep no step roots by default; the prover publishes them for the disputed segment.
    pol("answer", str(proof_dir), "--segment", "2")
    r = pol("audit", str(proof_dir), "--segment", "2", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["verdict"] == "reject" and doc["step_roots_available"] is True
    assert "kept no step roots" not in doc["finding"]
    assert doc["replayed_end_root"] in doc["finding"] or doc["claimed_end_root"] in doc["finding"]
    text = pol("audit", str(proof_dir), "--segment", "2").stdout
    assert doc["finding"] in text
