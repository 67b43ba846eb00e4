"""`pol devnet` end to end: real processes, one honest claim paid, one cheat slashed, clean exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_devnet_pays_honest_and_slashes_cheat(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pol.cli", "devnet", "--verifiers", "4", "--provers", "2", "--cheaters", "1",
         "--json", "--dir", str(tmp_path / "net"), "--timeout", "150"],
        cwd=REPO, capture_output=True, timeout=200)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = json.loads(proc.stdout)
    rows = {r["prover"]: r for r in report["claims"]}
    assert rows["p0"]["status"] == "paid" and not rows["p0"]["cheating"]
    assert rows["p0"]["seconds_to_certificate"] is not None
    assert rows["p1"]["status"] == "slashed" and rows["p1"]["cheating"]
    assert rows["p1"]["dispute"]["status"] == "upheld"
    assert report["consistent"] is True
    assert len(report["total_money"]) == 1  # money conserved and equal on every node
    # Each node logged to its own file.
    for name in ("v0", "v1", "v2", "v3", "p0", "p1"):
        assert (tmp_path / "net" / name / "node.log").stat().st_size > 0


def test_devnet_times_out_with_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pol.cli", "devnet", "--verifiers", "1", "--provers", "1", "--cheaters", "0",
         "--dir", str(tmp_path / "net"), "--timeout", "3"],
        cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert b"pol devnet:" in proc.stderr
