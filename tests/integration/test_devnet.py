"""`pol devnet` end to end: real processes settling on a local anvil chain, one honest claim paid, one
cheat slashed, every settlement step a transaction with its gas, clean exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_devnet_pays_honest_and_slashes_cheat(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pol.cli", "devnet", "--verifiers", "4", "--provers", "2", "--cheaters", "1",
         "--json", "--dir", str(tmp_path / "net"), "--timeout", "300"],
        cwd=REPO, capture_output=True, timeout=360)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = json.loads(proc.stdout)
    rows = {r["prover"]: r for r in report["claims"]}
    assert rows["p0"]["status"] == "paid" and not rows["p0"]["cheating"]
    assert rows["p0"]["seconds_to_certificate"] is not None
    assert rows["p1"]["status"] == "slashed" and rows["p1"]["cheating"]
    assert rows["p1"]["dispute"]["status"] == "upheld"
    assert report["consistent"] is True
    assert len(report["total_money"]) == 1  # money conserved and equal on every node
    # Settled on chain: each step is a mined transaction with its gas, read back from the chain.
    assert report["settlement"]["contract"].startswith("0x") and report["settlement"]["deploy_gas"] > 0
    steps = {name: [s["step"] for s in rows[name]["chain_steps"]] for name in ("p0", "p1")}
    assert steps["p0"] == ["post_task", "ClaimRegistered", "ClaimAccepted", "ClaimPaid"]
    assert steps["p1"][:2] == ["post_task", "ClaimRegistered"] and "DisputeOpened" in steps["p1"]
    assert steps["p1"][-1] == "DisputeUpheld" and "ClaimAccepted" not in steps["p1"]
    for name in ("p0", "p1"):
        for step in rows[name]["chain_steps"]:
            assert step["tx"].startswith("0x") and len(step["tx"]) == 66 and step["gas"] > 21000
        assert rows[name]["block_seconds_to_payout"] >= 0
    # Every node reported what it sent (GET /settlement); together that is the network's cost.
    gas = report["settlement"]["gas_by_node"]
    assert all(isinstance(gas[name], int) for name in ("requester", "v0", "v1", "v2", "v3", "p0", "p1"))
    assert gas["p0"] > 0 and gas["p1"] > 0  # each prover paid for its own claim
    assert report["settlement"]["network_gas_per_claim"] >= min(rows[n]["gas_total"] for n in ("p0", "p1"))
    # Each node logged to its own file; no transaction was refused for a reason other than a lost race.
    for name in ("v0", "v1", "v2", "v3", "p0", "p1"):
        log = (tmp_path / "net" / name / "node.log").read_text()
        assert log and "refused by the contract" not in log, name


def test_devnet_times_out_with_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pol.cli", "devnet", "--verifiers", "1", "--provers", "1", "--cheaters", "0",
         "--dir", str(tmp_path / "net"), "--timeout", "3"],
        cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert b"pol devnet:" in proc.stderr
