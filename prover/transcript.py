"""The proof directory and its transcript (SPEC.md §14).

``DIR/transcript.jsonl`` has one JSON object per durable checkpoint, appended and fsynced
only after the checkpoint file itself is durable::

    {"index": 3, "step": 75, "root": "<64 hex>", "file": "checkpoints/ckpt-000003.safetensors", "loss": 1.23}

A torn last line (power loss mid-append) is ignored and cut off on resume; every earlier
line must parse and be in sequence, otherwise the transcript is invalid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pol.files import read_regular_file, read_regular_text
from protocol.bounded import decode_json, get_int
from protocol.claim import Claim, decode_claim, encode_claim
from protocol.constants import HASH_LEN, MAX_CLAIM_BYTES, MAX_TASK_BYTES
from protocol.errors import DecodeError, InvalidCheckpoint, InvalidClaim, InvalidTask
from protocol.task import Task, parse_task_toml

from .checkpoint import get_checkpoint_name, write_atomic

TASK_FILE = "task.toml"
CLAIM_FILE = "claim.msgpack"
TRANSCRIPT_FILE = "transcript.jsonl"
CHECKPOINT_DIR = "checkpoints"
STEPS_DIR = "steps"
MAX_TRANSCRIPT_BYTES = 64 << 20
MAX_TRANSCRIPT_LINE = 1024  # an honest line is about 150 bytes


@dataclass(frozen=True)
class TranscriptEntry:
    index: int
    step: int
    root: bytes
    loss: float | None


@dataclass(frozen=True)
class ProofDir:
    """Paths of a proof directory."""

    path: Path

    @property
    def task_file(self) -> Path:
        return self.path / TASK_FILE

    @property
    def claim_file(self) -> Path:
        return self.path / CLAIM_FILE

    @property
    def transcript_file(self) -> Path:
        return self.path / TRANSCRIPT_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoint(self, index: int) -> Path:
        return self.checkpoint_dir / get_checkpoint_name(index)

    @property
    def steps_dir(self) -> Path:
        return self.path / STEPS_DIR

    def step_roots(self, segment: int) -> Path:
        """Roots after every step of ``segment`` (k x 32 bytes), kept for auditors."""
        return self.steps_dir / f"seg-{segment:06d}.roots"

    def read_task(self) -> Task:
        return parse_task_toml(read_regular_text(self.task_file, MAX_TASK_BYTES, InvalidTask, str(self.task_file)))

    def read_claim(self) -> Claim:
        if not self.claim_file.exists() and not self.claim_file.is_symlink():
            raise InvalidClaim(f"{self.claim_file} is missing: the proof was never completed")
        return decode_claim(read_regular_file(self.claim_file, MAX_CLAIM_BYTES, InvalidClaim, str(self.claim_file)))

    def write_claim(self, claim: Claim) -> None:
        write_atomic(self.claim_file, encode_claim(claim))


def parse_transcript(data: bytes, task: Task, *, allow_torn_tail: bool) -> tuple[list[TranscriptEntry], int]:
    """Entries and the byte length of the valid prefix. Raises ``InvalidCheckpoint`` when malformed."""
    if len(data) > MAX_TRANSCRIPT_BYTES:
        raise InvalidCheckpoint("transcript exceeds the size limit")
    entries: list[TranscriptEntry] = []
    offset = 0
    lines = data.split(b"\n")
    for n, line in enumerate(lines):
        is_last = n == len(lines) - 1
        if is_last:
            if line and not allow_torn_tail:
                raise InvalidCheckpoint("transcript's last line is incomplete (no newline)")
            break
        try:
            if len(line) > MAX_TRANSCRIPT_LINE:
                raise ValueError(f"longer than {MAX_TRANSCRIPT_LINE} bytes")
            obj = decode_json(line, MAX_TRANSCRIPT_LINE, max_depth=1)
            if not isinstance(obj, dict) or not isinstance(obj.get("root"), str) or len(obj["root"]) != 2 * HASH_LEN:
                raise ValueError("not an object with a 64-digit root")
            loss = obj.get("loss")
            if loss is not None and (not isinstance(loss, (int, float)) or isinstance(loss, bool)):
                raise ValueError("loss is not a number")
            entry = TranscriptEntry(get_int(obj.get("index"), "index", 0, task.num_checkpoints),
                                    get_int(obj.get("step"), "step", 0, task.total_steps),
                                    bytes.fromhex(obj["root"]), None if loss is None else float(loss))
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            raise InvalidCheckpoint(f"transcript line {n + 1} is malformed: {exc}") from None
        j = len(entries)
        if entry.index != j or entry.step != j * task.checkpoint_interval or len(entry.root) != 32:
            raise InvalidCheckpoint(
                f"transcript line {n + 1}: expected checkpoint {j} at step {j * task.checkpoint_interval}, "
                f"found index {entry.index} at step {entry.step}"
            )
        entries.append(entry)
        offset += len(line) + 1
    if len(entries) > task.num_checkpoints:
        raise InvalidCheckpoint(f"transcript has {len(entries)} entries, the task has {task.num_checkpoints}")
    return entries, offset


def read_transcript(pdir: ProofDir, task: Task, *, allow_torn_tail: bool = False) -> list[TranscriptEntry]:
    if allow_torn_tail and not pdir.transcript_file.exists() and not pdir.transcript_file.is_symlink():
        return []
    data = read_regular_file(pdir.transcript_file, MAX_TRANSCRIPT_BYTES, InvalidCheckpoint, str(pdir.transcript_file))
    entries, valid = parse_transcript(data, task, allow_torn_tail=allow_torn_tail)
    if allow_torn_tail and valid != len(data):
        with open(pdir.transcript_file, "r+b") as fh:  # drop the torn record before appending again
            fh.truncate(valid)
            fh.flush()
            os.fsync(fh.fileno())
    return entries


def encode_transcript_line(entry: TranscriptEntry) -> bytes:
    record = {
        "index": entry.index,
        "step": entry.step,
        "root": entry.root.hex(),
        "file": f"{CHECKPOINT_DIR}/{get_checkpoint_name(entry.index)}",
        "loss": entry.loss,
    }
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def append_transcript(pdir: ProofDir, entry: TranscriptEntry) -> None:
    line = encode_transcript_line(entry)
    with open(pdir.transcript_file, "ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
