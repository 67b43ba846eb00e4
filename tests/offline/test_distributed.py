"""Data-parallel proofs (SPEC.md §13.1): the state roots do not depend on the number of workers.

Real gloo processes on 127.0.0.1. One start-up of four worker processes
(tests/offline/dist_worker.py) trains every built-in family and three graph presets (shrunk, a few
steps) alone and with 1, 2, 4 workers (and 3, an uneven split, for the MLP) and compares every
step's root; it also
checks the sharded reductions on hostile groups and runs the negative control (ordinary DDP's
float32 all-reduce gives other bits). ``pol prove --workers 2`` is then run end to end: the
claim equals the single-process one, and a failing or interrupted run leaves no worker behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist

from gpu_ops import rowshard
from pol.keyfile import generate_keyfile, save_keyfile
from prover.distributed import DistributedError, prove_with_workers
from prover.prove import prove
from prover.transcript import ProofDir
from prover.builtin import resolve_task_path
from prover.checkpoint import read_checkpoint
from protocol.task import Task, format_task_toml, parse_task_toml

from .dist_worker import STEPS, WORLD

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (Linux /proc), to check that none is left behind."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return out


def _run_group(tmp: Path) -> dict[str, Any]:
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=60),  # type: ignore[attr-defined]
                          wait_for_workers=False)
    report = tmp / "report.json"
    procs = []
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(ROOT))
    try:
        for rank in range(WORLD):
            cmd = [sys.executable, "-m", "tests.offline.dist_worker", "--rank", str(rank),
                   "--store", f"127.0.0.1:{store.port}"] + (["--report", str(report)] if rank == 0 else [])
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        deadline = time.monotonic() + 400
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def group_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run_group(tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("family", sorted(STEPS))
def test_roots_identical_for_any_number_of_workers(group_report: dict[str, Any], family: str) -> None:
    roots = group_report["roots"][family]
    single = roots.pop("single")
    assert len(single) == STEPS[family] and len(set(single)) == len(single)  # training moved every step
    assert set(roots) >= {"1", "2", "4"}
    for workers, got in roots.items():
        assert got == single, f"{family}: {workers} workers reach other roots than one process"


def test_sharded_reductions_exact_on_hostile_groups(group_report: dict[str, Any]) -> None:
    # Zero on some workers only (the MAX must not let a local 0 win), subnormals, one huge value,
    # uneven splits of 10 rows over 3 and 4 workers.
    assert group_report["ops"] == {w: {"sum": True, "matmul": True} for w in ("2", "3", "4")}


def test_naive_float_allreduce_changes_bits(group_report: dict[str, Any]) -> None:
    """Negative control: averaging per-worker float32 gradients (ordinary DDP) is not the
    single-process result, so the identical roots above are owed to the exact reductions."""
    naive = group_report["naive"]
    for family in STEPS:
        assert naive[family]["2"] or naive[family]["4"], f"{family}: DDP gave the same bits"
    assert sum(len(v) for fam in naive.values() for v in fam.values()) >= 5, naive


def test_split_batch_contiguous_and_uneven() -> None:
    assert rowshard.split_batch(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert rowshard.split_batch(8, 1) == [(0, 8)]
    with pytest.raises(ValueError, match="workers"):
        rowshard.split_batch(3, 4)
    with pytest.raises(ValueError, match="workers"):
        rowshard.split_batch(3, 0)


@pytest.fixture(scope="module")
def small_task() -> Task:
    """A tiny text task (its data loads in milliseconds; every process here pays start-up only once)."""
    task = parse_task_toml(resolve_task_path("pydoc-transformer").read_text())
    model = dataclasses.replace(task.model, d_model=16, n_layers=1, n_heads=2, d_ff=32, context=8)
    sched = dataclasses.replace(task.schedule, warmup_steps=min(task.schedule.warmup_steps, 1))
    return dataclasses.replace(task, model=model, batch_size=6, total_steps=6, checkpoint_interval=3, schedule=sched)


def test_cli_prove_workers_same_claim(tmp_path: Path, small_task: Task) -> None:
    key = generate_keyfile()
    save_keyfile(tmp_path / "key.json", key)
    (tmp_path / "task.toml").write_text(format_task_toml(small_task))
    one = prove(small_task, tmp_path / "one", key.bls_secret_key)
    res = subprocess.run([sys.executable, "-m", "pol.cli", "prove", str(tmp_path / "task.toml"), "--out",
                          str(tmp_path / "two"), "--key", str(tmp_path / "key.json"), "--workers", "2", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["claim_id"] == one.claim_id.hex()
    assert ProofDir(tmp_path / "two").read_claim() == one.claim
    # The tensors themselves (the file's metadata map has no fixed key order, so not its bytes).
    for j in range(3):
        a, b = (read_checkpoint(tmp_path / d / "checkpoints" / f"ckpt-{j:06d}.safetensors") for d in ("one", "two"))
        assert [(x.name, x.data) for x in a] == [(x.name, x.data) for x in b]


def test_worker_failure_stops_every_worker(tmp_path: Path, small_task: Task) -> None:
    # The directory holds another task: worker 0 refuses it, and the supervisor ends the follower
    # (which is waiting for worker 0's state) instead of leaving it blocked.
    other = dataclasses.replace(small_task, seed=small_task.seed + 1)
    key = generate_keyfile().bls_secret_key
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "task.toml").write_text(format_task_toml(other))
    before = _children(os.getpid())
    with pytest.raises(DistributedError, match="worker 0: ProveError: .*another task"):
        prove_with_workers(small_task, tmp_path / "out", key, 2, timeout_s=300)
    assert _children(os.getpid()) == before


def test_interrupt_leaves_no_worker(tmp_path: Path, small_task: Task) -> None:
    """SIGINT (Ctrl-C) to `pol prove --workers 2`: the CLI ends its workers and exits 130."""
    key = generate_keyfile()
    save_keyfile(tmp_path / "key.json", key)
    long = dataclasses.replace(small_task, total_steps=100000, checkpoint_interval=1000)
    (tmp_path / "task.toml").write_text(format_task_toml(long))
    cli = subprocess.Popen([sys.executable, "-m", "pol.cli", "prove", str(tmp_path / "task.toml"), "--out",
                            str(tmp_path / "p"), "--key", str(tmp_path / "key.json"), "--workers", "2", "--quiet"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while len(workers) < 2 and time.monotonic() < deadline and cli.poll() is None:
            workers = _children(cli.pid)
            time.sleep(0.2)
        assert len(workers) == 2, f"workers did not start: {cli.poll()} {workers}"
        while not (tmp_path / "p" / "checkpoints" / "ckpt-000000.safetensors").exists() and \
                time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.2)  # interrupt while they train, not while they start
        time.sleep(0.5)
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 130, err[-2000:]
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
