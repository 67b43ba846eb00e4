"""`pol inspect --eval/--plot`: per-checkpoint evaluation and the loss-curve PNG."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from pol.evaluate import evaluate_proof


def test_eval_shows_learning(proof_dir: Path) -> None:
    evals, eval_set = evaluate_proof(proof_dir)
    assert [e.step for e in evals] == [0, 10, 20, 30, 40]
    # Independent anchor: an untrained 10-class classifier sits near chance, cross-entropy ~ ln(10).
    assert abs(evals[0].eval_loss - math.log(10)) < 0.3 and evals[0].eval_accuracy < 0.3
    assert evals[-1].eval_loss < evals[0].eval_loss and evals[-1].eval_accuracy > 0.6
    assert "not held-out" in eval_set


def test_inspect_plot_writes_png_and_json(proof_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    r = subprocess.run([sys.executable, "-m", "pol.cli", "inspect", str(proof_dir), "--plot", str(png), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert all("eval_accuracy" in c for c in doc["checkpoints"]) and doc["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
