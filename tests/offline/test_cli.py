"""The CLI's exit codes, JSON output and error messages (run as a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prover.recommit import perturb_checkpoint, recommit
from prover.transcript import ProofDir


def pol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pol.cli", *args], capture_output=True, text=True, timeout=300)


def test_verify_accept_json(proof_dir: Path) -> None:
    r = pol("verify", str(proof_dir), "--segments", "2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "accept" and len(doc["segments"]) == 2
    assert all(s["ok"] for s in doc["segments"])
    assert set(doc["escape_probability"]) == {"one_segment_faked", "ten_percent_faked"}


def test_verify_reject_exit_1_names_check_and_segment(proof_dir: Path, prover_key: bytes) -> None:
    perturb_checkpoint(ProofDir(proof_dir), 3)
    recommit(ProofDir(proof_dir), prover_key)
    r = pol("verify", str(proof_dir), "--segments", "all")
    assert r.returncode == 1
    assert "REJECT: check 'segment' failed" in r.stdout and "segment 2:" in r.stdout


def test_verify_error_exit_2_without_traceback(tmp_path: Path) -> None:
    r = pol("verify", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "is not a directory" in r.stderr and "Traceback" not in r.stderr
    r = pol("verify", str(tmp_path), "--segments", "zero")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_bad_key_file_is_a_clear_error(proof_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "key.json"
    bad.write_text("{not json")
    r = pol("verify", str(proof_dir), "--key", str(bad))
    assert r.returncode == 2 and "malformed" in r.stderr and "Traceback" not in r.stderr


def test_keys_new_refuses_overwrite(tmp_path: Path) -> None:
    k = tmp_path / "k.json"
    assert pol("keys", "new", "--out", str(k)).returncode == 0
    assert oct(k.stat().st_mode & 0o777) == "0o600"
    r = pol("keys", "new", "--out", str(k))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr


def test_inspect_json(proof_dir: Path) -> None:
    r = pol("inspect", str(proof_dir), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    claim = ProofDir(proof_dir).read_claim()
    assert doc["final_root"] == claim.body.final_root.hex()
    assert len(doc["checkpoints"]) == 5 and doc["checkpoints"][-1]["step"] == 40


def test_prove_unknown_model_family_is_refused(tmp_path: Path) -> None:
    t = tmp_path / "t.toml"
    t.write_text('[task]\nname="x"\nseed=1\ntotal_steps=10\ncheckpoint_interval=5\nbatch_size=4\n'
                 '[model]\nfamily="resnet-from-the-internet"\n[data]\nadapter="sklearn-digits"\n'
                 f'sha256="{"0" * 64}"\n')
    k = tmp_path / "k.json"
    pol("keys", "new", "--out", str(k))
    r = pol("prove", str(t), "--out", str(tmp_path / "o"), "--key", str(k))
    assert r.returncode == 2 and "unknown model family" in r.stderr
