"""Hostile files: nested documents, FIFOs, devices, sparse giants, duplicate tensors, odd numbers.

Each test names the attack it replays; before the fixes each one crashed, hung or ate memory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from prover.checkpoint import MAX_CHECKPOINT_BYTES, decode_checkpoint, read_checkpoint
from prover.transcript import ProofDir
from protocol.bounded import decode_json, get_json_depth
from protocol.budget import get_task_cost, validate_task_cost
from protocol.constants import MAX_STATE_BYTES
from protocol.presets import get_preset_task
from protocol.errors import DecodeError, InvalidCheckpoint, InvalidTask, OverBudget
from protocol.task import parse_task, parse_task_toml
from verifier.verify import REJECT, verify_dir

from .conftest import tiny_task_toml

REPO = Path(__file__).resolve().parents[2]


def _pol(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pol.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_recursion_limit_is_sane_after_importing_bls() -> None:
    # py-ecc sets 100000 at import; the C JSON decoder then overflows the stack on deep input
    out = subprocess.run([sys.executable, "-c", "import sys, protocol.bls; print(sys.getrecursionlimit())"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0 and int(out.stdout) <= 4000


def test_deep_json_refused_before_parsing_even_with_a_huge_recursion_limit() -> None:
    code = ("import sys; sys.setrecursionlimit(1000000)\n"
            "from protocol.bounded import decode_json\nfrom protocol.errors import DecodeError\n"
            "try:\n    decode_json(b'[' * 400000, 1 << 20)\nexcept DecodeError as e:\n    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr[-500:]  # -11 (SIGSEGV) before the fix
    assert "nested 400000 levels" in out.stdout


def test_json_depth_ignores_brackets_in_strings_and_limits_hold() -> None:
    assert get_json_depth(b'{"a": "[[[[{{{{", "b": [1, [2]]}') == 3
    assert decode_json(b'{"a": [1, 2.5, "x"]}', 100) == {"a": [1, 2.5, "x"]}
    for bad in (b"1e999", b"[NaN]", b'{"a": 1, "a": 2}', b"[" * 40 + b"]" * 40, b"\xff", b"[1,"):
        with pytest.raises(DecodeError):
            decode_json(bad, 1000)
    with pytest.raises(DecodeError, match="exceeds"):
        decode_json(b"[1]" * 100, 10)


def test_verify_survives_a_transcript_of_nested_brackets(proof_dir: Path) -> None:
    (proof_dir / "transcript.jsonl").write_bytes(b"[" * 200_000 + b"\n")
    out = _pol("verify", str(proof_dir), "--json")
    assert out.returncode == 1, out.stderr[-800:]  # a reject, not a SIGSEGV (-11)
    doc = json.loads(out.stdout)
    assert doc["failed_check"] == "transcript"


def test_transcript_integer_of_1e999_is_a_reject_not_a_traceback(proof_dir: Path) -> None:
    path = proof_dir / "transcript.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"index": 1', b'"index": 1e999')
    path.write_bytes(b"\n".join(lines))
    report = verify_dir(proof_dir, segments=1, secret_key=None)
    assert report.verdict == REJECT and report.failed_check == "transcript"
    assert "1e999" in (report.reason or "")
    path.write_bytes(b"\n".join(lines).replace(b"1e999", b"1" + b"0" * 400))
    report = verify_dir(proof_dir, segments=1, secret_key=None)
    assert report.failed_check == "transcript" and "outside" in (report.reason or "")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_task_file_that_is_a_fifo_does_not_hang(proof_dir: Path) -> None:
    (proof_dir / "task.toml").unlink()
    os.mkfifo(proof_dir / "task.toml")
    out = _pol("verify", str(proof_dir), "--json", timeout=60)  # hung forever before
    assert out.returncode == 1 and "not a regular file" in out.stdout


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_task_file_linked_to_dev_zero_is_refused(proof_dir: Path) -> None:
    (proof_dir / "task.toml").unlink()
    (proof_dir / "task.toml").symlink_to("/dev/zero")
    report = verify_dir(proof_dir, segments=1, secret_key=None)  # read until out of memory before
    assert report.failed_check == "task" and "not a regular file" in (report.reason or "")
    (proof_dir / "claim.msgpack").unlink()
    (proof_dir / "claim.msgpack").symlink_to("/dev/zero")
    with pytest.raises(InvalidCheckpoint, match="not a regular file"):
        read_checkpoint(Path("/dev/zero"))


def test_sparse_giant_checkpoint_rejected_from_its_size(proof_dir: Path) -> None:
    ckpt = ProofDir(proof_dir).checkpoint(1)
    with open(ckpt, "r+b") as fh:
        fh.truncate(4 << 30)  # sparse: costs no disk, but read whole it is 4 GiB of memory
    with pytest.raises(InvalidCheckpoint, match="limit"):
        read_checkpoint(ckpt)
    assert MAX_CHECKPOINT_BYTES < 4 << 30


def _safetensors(entries: list[tuple[str, str, list[int], int, int]], payload: bytes) -> bytes:
    # Written by hand: safetensors' own writer cannot produce a repeated name.
    parts = [f'"{n}": {{"dtype": "{dt}", "shape": {sh}, "data_offsets": [{a}, {b}]}}' for n, dt, sh, a, b in entries]
    header = ("{" + ", ".join(parts) + "}").encode()
    return struct.pack("<Q", len(header)) + header + payload


def test_duplicate_tensor_name_in_header_is_refused() -> None:
    step = struct.pack("<q", 0)
    data = _safetensors([("meta/step", "I64", [], 0, 8), ("meta/step", "I64", [], 8, 16)], step + step)
    with pytest.raises(InvalidCheckpoint, match="repeats the key"):
        decode_checkpoint(data)


def test_header_lies_are_refused_before_reading_tensors() -> None:
    step = struct.pack("<q", 0)
    cases = {
        "gap": _safetensors([("meta/step", "I64", [], 8, 16)], step * 2),
        "short": _safetensors([("param/w", "F32", [1000, 1000], 0, 4_000_000)], b"\0" * 16),
        "shape vs bytes": _safetensors([("param/w", "F32", [3], 0, 8)], b"\0" * 8),
        "float dim": _safetensors([("param/w", "F32", [2.0], 0, 8)], b"\0" * 8),
        "huge dim": _safetensors([("param/w", "F32", [10**30], 0, 8)], b"\0" * 8),
        "dtype": _safetensors([("param/w", "F16", [4], 0, 8)], b"\0" * 8),
        "header length": struct.pack("<Q", 2**63) + b"{}",
    }
    for label, data in cases.items():
        with pytest.raises(InvalidCheckpoint):
            decode_checkpoint(data, label)


def test_checkpoint_layout_is_checked_against_the_task(proof_dir: Path) -> None:
    ckpt = ProofDir(proof_dir).checkpoint(0)
    leaves = read_checkpoint(ckpt)
    layout = frozenset((leaf.name, leaf.dtype, leaf.shape) for leaf in leaves)
    assert read_checkpoint(ckpt, layout=layout) == leaves
    other = frozenset((n, d, s if n == "meta/step" else (1,) + s) for n, d, s in layout)
    with pytest.raises(InvalidCheckpoint, match="differ from the task"):
        read_checkpoint(ckpt, layout=other)


def test_task_name_with_trailing_newline_is_invalid() -> None:
    text = tiny_task_toml().replace('name = "tiny-digits"', 'name = "tiny-digits\\n"')
    with pytest.raises(InvalidTask, match="in full"):
        parse_task_toml(text)


def test_task_integer_fields_of_1e999_and_deep_toml_are_invalid() -> None:
    for text in (tiny_task_toml().replace("seed = 5", "seed = 1e999"),
                 tiny_task_toml().replace("seed = 5", "seed = 18446744073709551616"),
                 tiny_task_toml().replace("lr = 0.1", "lr = nan"),
                 tiny_task_toml() + "\n[schedule]\nwarmup_steps = " + "[" * 5000 + "]" * 5000 + "\n"):
        with pytest.raises(InvalidTask):
            parse_task_toml(text)


def test_largest_model_is_refused_at_parse_time_and_every_valid_task_fits_the_reader() -> None:
    # GPT-2 medium's shape: 4.3 GB of AdamW state, past MAX_STATE_BYTES (2 GiB); refused from the text alone
    big = get_preset_task("gpt2", {"d_model": 1024, "n_layers": 24, "n_heads": 16, "context": 1024, "vocab": 50257},
                          "00" * 32)
    with pytest.raises(InvalidTask, match="state of 4,.* exceeds the protocol limit"):
        parse_task(big)
    # whatever passes validation fits the checkpoint reader: proved means verifiable
    assert MAX_CHECKPOINT_BYTES >= MAX_STATE_BYTES + 8
    task = parse_task_toml(tiny_task_toml())
    cost = get_task_cost(task)
    assert cost.state_bytes == (64 * 32 + 32 + 32 * 10 + 10) * 2 * 4 + 8  # params + momentum, step
    with pytest.raises(OverBudget):
        validate_task_cost(task, max_state_bytes=cost.state_bytes - 1)


def test_verify_declines_over_budget_before_loading_anything(proof_dir: Path) -> None:
    with pytest.raises(OverBudget):
        verify_dir(proof_dir, segments=1, secret_key=None, max_state_bytes=100)


def test_pol_verify_declines_a_state_above_its_budget_and_says_how_to_raise_it(proof_dir: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pol.cli", "verify", str(proof_dir), "--max-state-bytes", "100"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "exceeds this node's budget of 100" in r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "pol.cli", "verify", str(proof_dir), "--max-state-bytes", "lots"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--max-state-bytes" in r.stderr
