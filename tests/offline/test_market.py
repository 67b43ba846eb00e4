"""Holes in what a claim is worth (issue 8): work theft, relabelled tasks, the undelivered model and
a verifier that is not told what it verifies. Each test fails on the code before the fix."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pol.keyfile import generate_keyfile, save_keyfile
from prover.prove import ProveError, prove
from prover.recommit import recommit
from prover.transcript import ProofDir
from protocol.constants import OFFLINE_POSTING_ID
from protocol.task import compute_task_id, parse_task_toml
from verifier.verify import ACCEPT, REJECT, verify_dir

from .conftest import tiny_task_toml


def _verify(path: Path, **kw):  # type: ignore[no-untyped-def]
    return verify_dir(path, segments=kw.pop("segments", 1), secret_key=None, **kw)


def test_claim_names_its_posting_and_offline_is_default(proof_dir: Path) -> None:
    claim = ProofDir(proof_dir).read_claim()
    assert claim.body.posting_id == OFFLINE_POSTING_ID
    assert _verify(proof_dir).verdict == ACCEPT


def test_stolen_proof_resigned_by_thief_is_rejected(proof_dir: Path) -> None:
    thief = generate_keyfile().bls_secret_key
    claim = recommit(ProofDir(proof_dir), thief)  # same checkpoints, the thief's key and signature
    assert claim.body.commitment == claim.body.commitment
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "init", report.reason
    assert "not the initial state" in (report.reason or "")


def test_run_for_one_posting_cannot_answer_another(tmp_path: Path, tiny_task, prover_key: bytes) -> None:  # type: ignore[no-untyped-def]
    a, b = bytes([1]) * 32, bytes([2]) * 32
    out = tmp_path / "a"
    first = prove(tiny_task, out, prover_key, posting_id=a)
    assert first.claim.body.posting_id == a
    recommit(ProofDir(out), prover_key, posting_id=b)  # relabel the same run as work for posting b
    report = _verify(out)
    assert report.verdict == REJECT and report.failed_check == "init"
    # The same prover, task and posting always give the same run; the offline run differs from it.
    other = prove(tiny_task, tmp_path / "off", prover_key)
    assert other.claim.body.commitment != first.claim.body.commitment
    # A directory holding a run for another posting is not resumed into this one.
    with pytest.raises(ProveError, match="another prover key or posting"):
        prove(tiny_task, tmp_path / "off", prover_key, posting_id=a)


def test_relabelled_task_is_new_work(proof_dir: Path, prover_key: bytes) -> None:
    """Renaming a task gives a new task id; the old run must not be a valid proof of it."""
    (proof_dir / "task.toml").write_text(tiny_task_toml().replace('"tiny-digits"', '"tiny-digits-2"'))
    recommit(ProofDir(proof_dir), prover_key)
    report = _verify(proof_dir)
    assert report.verdict == REJECT and report.failed_check == "init"


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_final_checkpoint_must_be_delivered(proof_dir: Path, damage: str) -> None:
    final = ProofDir(proof_dir).checkpoint(4)
    if damage == "delete":
        final.unlink()
    else:
        data = bytearray(final.read_bytes())
        data[-5] ^= 0xFF  # a weight of the delivered model
        final.write_bytes(bytes(data))
    report = _verify(proof_dir, segments=1)  # whichever segment is sampled, the final state is checked
    assert report.verdict == REJECT and report.failed_check == "final", report.reason


def test_verify_with_task_rejects_a_shorter_or_other_task(proof_dir: Path, tmp_path: Path) -> None:
    asked = parse_task_toml(tiny_task_toml(steps=400))
    report = _verify(proof_dir, expected_task_id=compute_task_id(asked))
    assert report.verdict == REJECT and report.failed_check == "task"
    assert "40 steps" in (report.reason or "") and compute_task_id(asked).hex() in (report.reason or "")
    same = parse_task_toml(tiny_task_toml())
    assert _verify(proof_dir, expected_task_id=compute_task_id(same)).verdict == ACCEPT


def _pol(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``pol`` command line in this process (torch is already imported: seconds, not minutes)."""
    from pol.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["pol", *args], code, out.getvalue(), err.getvalue())


def test_cli_verify_task_flag_and_output_names_the_task(proof_dir: Path, tmp_path: Path) -> None:
    long_task = tmp_path / "long.toml"
    long_task.write_text(tiny_task_toml(steps=400))
    res = _pol("verify", str(proof_dir), "--segments", "1", "--task", str(long_task))
    assert res.returncode == 1, res.stderr
    first = res.stdout.splitlines()[0]
    tid = compute_task_id(parse_task_toml(tiny_task_toml())).hex()
    assert first.startswith(f"task {tid}") and "40 steps" in first and "interval 10" in first
    assert "REJECT: check 'task'" in res.stdout
    res = _pol("verify", str(proof_dir), "--segments", "1", "--task", tid, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert (doc["task_id"], doc["total_steps"], doc["checkpoint_interval"]) == (tid, 40, 10)


def test_cli_prove_with_posting_hex(tmp_path: Path) -> None:
    key = tmp_path / "k.json"
    save_keyfile(key, generate_keyfile())
    task = tmp_path / "t.toml"
    task.write_text(tiny_task_toml(steps=10))
    posting = "ab" * 32
    res = _pol("prove", str(task), "--out", str(tmp_path / "p"), "--key", str(key), "--posting", posting, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["posting_id"] == posting
    res = _pol("verify", str(tmp_path / "p"), "--posting", "cd" * 32, "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["failed_check"] == "claim"
    res = _pol("prove", str(task), "--out", str(tmp_path / "q"), "--key", str(key), "--posting", "nonsense")
    assert res.returncode == 2 and "posting" in res.stderr
    shutil.rmtree(tmp_path / "p")


def test_fetch_model_from_proof_dir_loads_in_plain_torch(proof_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from prover.checkpoint import read_checkpoint

    claim = ProofDir(proof_dir).read_claim()
    from protocol.claim import compute_claim_id

    out = tmp_path / "model.safetensors"
    res = _pol("fetch-model", str(proof_dir), "--claim", compute_claim_id(claim.body).hex(), "--out", str(out),
               "--json")
    assert res.returncode == 0, res.stderr
    tensors = load_file(str(out))
    final = {leaf.name: leaf for leaf in read_checkpoint(ProofDir(proof_dir).checkpoint(4))}
    assert set(tensors) == {"fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"}
    for name, t in tensors.items():
        assert t.dtype == torch.float32
        assert torch.equal(t, torch.from_numpy(final[f"param/{name}"].array().copy()))
    # A garbled final checkpoint is refused and nothing is written.
    ckpt = ProofDir(proof_dir).checkpoint(4)
    data = bytearray(ckpt.read_bytes())
    data[-5] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    bad = tmp_path / "bad.safetensors"
    res = _pol("fetch-model", str(proof_dir), "--out", str(bad))
    assert res.returncode == 2 and "commits to" in res.stderr, res.stderr
    assert not bad.exists()


def test_fetch_model_from_a_node_reads_no_more_than_the_tasks_state(proof_dir: Path, tmp_path: Path) -> None:
    """A node that answers /model with endless bytes: given the task, the client stops at the task's own
    checkpoint size (header bound + state bytes), not the protocol's 2 GiB, and writes nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from protocol.claim import compute_claim_id

    claim_bytes = (proof_dir / "claim.msgpack").read_bytes()
    claim_id = compute_claim_id(ProofDir(proof_dir).read_claim().body).hex()
    sent: list[int] = []

    class Flood(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.end_headers()
            if self.path.endswith("/claim"):
                self.wfile.write(claim_bytes)
                return
            total = 0
            try:
                while total < 64 << 20:  # bounded: 64 MiB at most, far above this task's state
                    self.wfile.write(b"\0" * (1 << 20))
                    total += 1 << 20
            except (BrokenPipeError, ConnectionResetError):
                pass
            sent.append(total)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flood)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "model.safetensors"
        res = _pol("fetch-model", f"http://127.0.0.1:{server.server_address[1]}", "--claim", claim_id,
                   "--task", str(proof_dir / "task.toml"), "--out", str(out))
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 2 and "sent more than" in res.stderr, res.stderr
    limit = int(res.stderr.split("sent more than ")[1].split()[0])
    assert limit < 2 << 20  # the tiny task's state plus the 1 MiB header bound
    assert not out.exists()


def test_cli_economics_table_json_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "econ.png"
    res = _pol("economics", "--verifiers", "4", "64", "--segments", "100", "--json", "--plot", str(png))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [r["verifiers"] for r in doc["rows"]] == [4, 64]
    assert all(r["replay_fraction"] <= 0.05 and r["best_cheat_gain"] < 0 for r in doc["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = _pol("economics", "--deterrence-bps", "50000", "--bond-reward-bps", "20000")
    assert res.returncode == 2 and "cannot deter" in res.stderr


def test_thief_front_running_in_the_ledger_loses_and_the_prover_is_paid(tmp_path: Path, tiny_task) -> None:  # type: ignore[no-untyped-def]
    """End to end without a network: a thief copies an honest proof for the same posting, re-signs it and
    registers first. Verification (the real replay) rejects the copy, so it gets no certificate and goes void
    at a cost to the thief; the task reopens and the honest prover's claim is registered, certified and paid."""
    from protocol import bls
    from protocol.certificate import compute_certificate
    from protocol.claim import compute_claim_id
    from protocol.errors import InvalidTransition
    from protocol.genesis import Account, Genesis, Params, VerifierEntry
    from protocol.ledger import (
        CLAIM_PAID,
        CLAIM_VOID,
        compute_posting_id,
        compute_task_posted,
        get_claim_context,
        get_initial_state,
        get_total_money,
        process_certificate,
        process_claim,
        process_task_posted,
        process_tick,
    )
    from protocol.task import encode_task
    from protocol.vote import compute_vote

    keys = [bls.compute_secret_key(bytes([i]) * 32) for i in range(5)]
    verifier_keys, requester, honest, thief = keys[:2], keys[2], keys[3], keys[4]
    params = Params(availability_window_s=100, challenge_window_s=10)
    genesis = Genesis("theft", 0, params, tuple(
        VerifierEntry(bls.compute_public_key(k), bls.compute_pop(k), 100, f"v{i}") for i, k in enumerate(verifier_keys)),
        tuple(Account(bls.compute_public_key(k), 100_000) for k in (requester, honest, thief)))
    posting = compute_task_posted(requester, encode_task(tiny_task), 1000, 10_000)
    state = process_task_posted(get_initial_state(genesis), posting, 1)
    honest_dir, thief_dir = tmp_path / "honest", tmp_path / "thief"
    prove(tiny_task, honest_dir, honest, posting_id=compute_posting_id(posting))
    shutil.copytree(honest_dir, thief_dir)
    stolen = recommit(ProofDir(thief_dir), thief)
    honest_claim = ProofDir(honest_dir).read_claim()

    state = process_claim(state, stolen, 2)  # the thief is first
    with pytest.raises(InvalidTransition, match="no longer open"):
        process_claim(state, honest_claim, 3)
    assert _verify(thief_dir).verdict == REJECT  # no honest verifier signs an accept vote for the copy
    state = process_tick(state, 2 + params.availability_window_s)
    assert state.claims[compute_claim_id(stolen.body)].status == CLAIM_VOID
    assert state.balances[bls.compute_public_key(thief)] < 100_000  # stealing cost the thief

    now = 3 + params.availability_window_s
    state = process_claim(state, honest_claim, now)
    assert _verify(honest_dir).verdict == ACCEPT
    ctx = get_claim_context(state, compute_claim_id(honest_claim.body))
    cert = compute_certificate([compute_vote(k, ctx) for k in verifier_keys], genesis.verifiers)
    state = process_tick(process_certificate(state, cert, now + 1), now + 1 + params.challenge_window_s)
    assert state.claims[ctx.claim_id].status == CLAIM_PAID
    assert state.balances[bls.compute_public_key(honest)] == 100_000 + 1000
    assert get_total_money(state) == get_total_money(get_initial_state(genesis))


def test_posting_file_forms(tmp_path: Path, tiny_task) -> None:  # type: ignore[no-untyped-def]
    from pol.cli import CliError, _read_posting_id
    from protocol import bls
    from protocol.ledger import compute_posting_id, compute_task_posted
    from protocol.messages import encode_message
    from protocol.task import encode_task

    posting = compute_task_posted(bls.compute_secret_key(b"r" * 32), encode_task(tiny_task), 10, 10**9)
    data = encode_message(posting)
    (tmp_path / "p.bin").write_bytes(data)
    (tmp_path / "p.hex").write_text(data.hex() + "\n")
    (tmp_path / "p.id").write_text(compute_posting_id(posting).hex() + "\n")
    for name in ("p.bin", "p.hex", "p.id"):
        assert _read_posting_id(str(tmp_path / name), tiny_task) == compute_posting_id(posting)
    with pytest.raises(CliError, match="another task"):
        _read_posting_id(str(tmp_path / "p.bin"), parse_task_toml(tiny_task_toml(seed=77)))
