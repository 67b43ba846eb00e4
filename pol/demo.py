"""`pol demo`: prove the default task, verify it, then show a forged proof being rejected."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from prover.builtin import resolve_task_path
from prover.prove import prove
from prover.recommit import perturb_checkpoint, recommit
from prover.transcript import ProofDir
from protocol.task import parse_task_toml
from verifier.verify import ACCEPT, verify_dir

from .keyfile import generate_keyfile
from .progress import StepProgress

DEFAULT_TASK = "digits-mlp"


def run_demo(args: argparse.Namespace) -> int:
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        return _run_demo(args, work, keep=True)
    with tempfile.TemporaryDirectory(prefix="pol-demo-") as tmp:  # nothing left behind
        return _run_demo(args, Path(tmp), keep=False)


def _run_demo(args: argparse.Namespace, work: Path, keep: bool) -> int:
    task = parse_task_toml(resolve_task_path(DEFAULT_TASK).read_text())
    prover_key = generate_keyfile().bls_secret_key
    verifier_key = generate_keyfile().bls_secret_key
    honest = work / "honest"
    with StepProgress(task.total_steps, f"prove {task.name}", disable=args.json) as bar:
        prove(task, honest, prover_key, progress=bar.update)

    rows = []
    t0 = time.perf_counter()
    report = verify_dir(honest, segments=4, secret_key=verifier_key)
    rows.append(("honest prover", report, time.perf_counter() - t0))

    cheat = work / "cheater"
    shutil.rmtree(cheat, ignore_errors=True)
    shutil.copytree(honest, cheat)
    forged_index = task.num_segments // 2
    perturb_checkpoint(ProofDir(cheat), forged_index)
    recommit(ProofDir(cheat), prover_key)
    t0 = time.perf_counter()
    report_c = verify_dir(cheat, segments=None, secret_key=verifier_key)
    rows.append((f"cheater (checkpoint {forged_index} altered, re-committed, re-signed)", report_c,
                 time.perf_counter() - t0))

    if args.json:
        print(json.dumps({"workdir": str(work) if keep else None, "results": [
            {"who": who, "seconds": round(sec, 3), **rep.to_json()} for who, rep, sec in rows]}, indent=2))
    else:
        print(f"\nproof directories under {work}\n" if keep else "\n(temporary proof directories removed; "
              "keep them with --workdir DIR)\n")
        print(f"{'prover':62} {'verdict':8} {'segments':>9} {'seconds':>8}  reason")
        for who, rep, sec in rows:
            print(f"{who:62} {rep.verdict.upper():8} {len(rep.segments):>9} {sec:8.2f}  {rep.reason or ''}")
    ok = report.verdict == ACCEPT and report_c.verdict != ACCEPT
    return 0 if ok else 1
