"""`pol prove` killed with SIGKILL at arbitrary moments resumes to the same final root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pol.keyfile import generate_keyfile, save_keyfile

from .conftest import tiny_task_toml


def _run_prove(task: Path, out: Path, key: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "pol.cli", "prove", str(task), "--out", str(out), "--key", str(key), "--json",
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )


def _final(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def test_kill_and_resume_gives_same_final_root(tmp_path: Path) -> None:
    task = tmp_path / "task.toml"
    task.write_text(tiny_task_toml(steps=120))
    key = tmp_path / "key.json"
    save_keyfile(key, generate_keyfile())

    reference = _final(_run_prove(task, tmp_path / "ref", key))

    out = tmp_path / "killed"
    transcript = out / "transcript.jsonl"
    kills = 0
    # Kill after 1, 3, 6 durable checkpoints and once immediately at start-up.
    for target_lines, delay in ((0, 0.5), (2, 0.0), (5, 0.03), (8, 0.011)):
        proc = _run_prove(task, out, key)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                lines = transcript.read_bytes().count(b"\n") if transcript.exists() else 0
                if lines >= target_lines:
                    break
                time.sleep(0.005)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert kills >= 2, "the run finished before it could be killed; make the task longer"
    resumed = _final(_run_prove(task, out, key))
    assert resumed["resumed_from_step"] > 0
    assert resumed["final_root"] == reference["final_root"]
    assert resumed["commitment"] == reference["commitment"]
    assert resumed["claim_id"] == reference["claim_id"]


def test_torn_transcript_tail_is_cut_and_resumed(tmp_path: Path, prover_key: bytes, tiny_task) -> None:  # type: ignore[no-untyped-def]
    from prover.prove import prove

    ref = prove(tiny_task, tmp_path / "a", prover_key)
    out = tmp_path / "b"
    prove(tiny_task, out, prover_key)
    t = out / "transcript.jsonl"
    lines = t.read_bytes().splitlines(keepends=True)
    t.write_bytes(b"".join(lines[:2]) + lines[2][:17])  # torn third record, no newline
    (out / "claim.msgpack").unlink()
    again = prove(tiny_task, out, prover_key)
    assert again.resumed_from_step == 10
    assert again.claim.body.final_root == ref.claim.body.final_root
