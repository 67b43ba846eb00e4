"""``pol conformance DIR``: check a proof directory written by any implementation against SPEC.md.

Unlike ``pol verify`` this replays no training. It checks what a writer must get right byte for
byte (SPEC.md §3, §5, §6, §13, §14): file layout and names, canonical encodings, the transcript's
exact line format, every checkpoint against its root and the task's tensor list, the commitment,
the claim and its signature, the step-roots files, and that checkpoint 0 is the task's initial
state derived from the seed. Every check runs (one failure does not hide the next) and each
names the rule it enforces.
"""

from __future__ import annotations

import json
import re
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from prover.checkpoint import decode_checkpoint, get_checkpoint_name
from prover.training import Runtime, compute_root, get_state_from_leaves, init_state
from prover.transcript import (
    CHECKPOINT_DIR,
    STEPS_DIR,
    ProofDir,
    TranscriptEntry,
    encode_transcript_line,
    parse_transcript,
)
from protocol.claim import (
    Claim,
    compute_claim_training_seed,
    decode_claim,
    encode_claim,
    validate_claim_against_task,
    validate_claim_signature,
    validate_transcript_roots,
)
from protocol.errors import InvalidInput, PolError
from protocol.state import compute_state_root, get_step
from protocol.task import Task, compute_task_id, get_task_canonical

_CKPT_RE = re.compile(r"^ckpt-(\d{6})\.safetensors$")
_SEG_RE = re.compile(r"^seg-(\d{6})\.roots$")
_SAFETENSORS_DTYPES = {"F32", "I64"}
_LOSS_RE = re.compile(rb'"loss": (null|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?), ')


@dataclass(frozen=True)
class CheckResult:
    check: str
    ok: bool
    detail: str


@dataclass
class ConformanceReport:
    path: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.results.append(CheckResult(check, ok, detail))
        return ok

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "ok": self.ok,
                "checks": [{"check": r.check, "ok": r.ok, "detail": r.detail} for r in self.results]}


def _safetensors_header(data: bytes) -> dict[str, object]:
    """The JSON header of a safetensors file (the reader we use drops ``__metadata__``)."""
    if len(data) < 8:
        raise ValueError("shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"header length {n} exceeds the file")
    header = json.loads(data[8:8 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header


def _check_layout(report: ConformanceReport, pdir: ProofDir, task: Task | None) -> None:
    missing = [p.name for p in (pdir.task_file, pdir.transcript_file, pdir.claim_file) if not p.is_file()]
    if not pdir.checkpoint_dir.is_dir():
        missing.append(CHECKPOINT_DIR + "/")
    report.add("layout.files", not missing, f"missing {missing}" if missing else "task.toml, transcript.jsonl, "
               "claim.msgpack and checkpoints/ present")
    if task is None:
        return
    s = task.num_segments
    have_ckpt = {int(m.group(1)) for p in pdir.checkpoint_dir.glob("*") if (m := _CKPT_RE.match(p.name))} \
        if pdir.checkpoint_dir.is_dir() else set()
    want = set(range(s + 1))
    report.add("layout.checkpoints", have_ckpt == want,
               f"checkpoints 0..{s} present" if have_ckpt == want else
               f"missing {sorted(want - have_ckpt)[:8]}, unexpected {sorted(have_ckpt - want)[:8]}")
    have_seg = {int(m.group(1)) for p in pdir.steps_dir.glob("*") if (m := _SEG_RE.match(p.name))} \
        if pdir.steps_dir.is_dir() else set()
    # steps/ serves auditors and is optional; the files present must belong to the task's segments.
    unexpected = sorted(have_seg - set(range(s)))
    report.add("layout.step_roots", not unexpected,
               f"unexpected step-roots files {unexpected[:8]}" if unexpected else
               f"{len(have_seg)} of {s} step-roots files present ({STEPS_DIR}/ is optional)")


def _check_transcript(report: ConformanceReport, pdir: ProofDir, task: Task) -> list[TranscriptEntry] | None:
    try:
        data = pdir.transcript_file.read_bytes()
        entries, _ = parse_transcript(data, task, allow_torn_tail=False)
    except (OSError, PolError) as exc:
        report.add("transcript.parse", False, str(exc))
        return None
    report.add("transcript.parse", len(entries) == task.num_checkpoints,
               f"{len(entries)} lines, the task has {task.num_checkpoints} checkpoints")
    bad = []
    for j, (line, entry) in enumerate(zip(data.split(b"\n"), entries)):
        # The loss is informational: any JSON number is fine, the rest of the line is exact.
        m = _LOSS_RE.search(line)
        token = m.group(1) if m else b"?"
        expected = encode_transcript_line(TranscriptEntry(entry.index, entry.step, entry.root, None))
        expected = expected.replace(b'"loss": null', b'"loss": ' + token)
        if (j == 0) != (entry.loss is None):
            bad.append(f"line {j + 1}: loss must be null exactly for checkpoint 0")
        elif line + b"\n" != expected:
            bad.append(f"line {j + 1} is not in the form {expected!r}")
    report.add("transcript.format", not bad, "; ".join(bad[:3]) if bad else
               "every line is the sorted-key JSON object of SPEC.md §14")
    return entries


def _check_checkpoints(report: ConformanceReport, pdir: ProofDir, rt: Runtime, task_id: bytes,
                       roots: list[bytes]) -> None:
    bad: list[str] = []
    for j, root in enumerate(roots):
        path = pdir.checkpoint(j)
        try:
            data = path.read_bytes()
            header = _safetensors_header(data)
            meta = header.get("__metadata__")
            dtypes = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
            if not dtypes <= _SAFETENSORS_DTYPES:
                raise ValueError(f"dtypes {sorted(map(str, dtypes))}, allowed F32 and I64")
            if not isinstance(meta, dict) or meta.get("pol_root") != root.hex() or \
                    meta.get("pol_task_id") != task_id.hex():
                raise ValueError("__metadata__ must carry pol_root (its state root) and pol_task_id")
            leaves = decode_checkpoint(data, get_checkpoint_name(j))
            got = compute_state_root(leaves)
            if got != root:
                raise ValueError(f"hashes to {got.hex()}, the transcript says {root.hex()}")
            get_state_from_leaves(rt, leaves)  # exactly the task's names, dtypes and shapes
            if get_step(leaves) != j * rt.task.checkpoint_interval:
                raise ValueError(f"holds step {get_step(leaves)}, expected {j * rt.task.checkpoint_interval}")
        except (OSError, ValueError, PolError) as exc:
            bad.append(f"{get_checkpoint_name(j)}: {exc}")
    report.add("checkpoints", not bad, "; ".join(bad[:3]) if bad else
               f"all {len(roots)} checkpoints hash to their roots and hold the task's tensors")


def _check_step_roots(report: ConformanceReport, pdir: ProofDir, task: Task, roots: list[bytes]) -> None:
    bad = []
    k = task.checkpoint_interval
    present = 0
    for j in range(task.num_segments):
        path = pdir.step_roots(j)
        if not path.exists():
            continue
        present += 1
        try:
            data = path.read_bytes()
        except OSError as exc:
            bad.append(f"segment {j}: {exc}")
            continue
        if len(data) != 32 * k:
            bad.append(f"segment {j}: {len(data)} bytes, expected {32 * k}")
        elif data[-32:] != roots[j + 1]:
            bad.append(f"segment {j}: last step root is not r_{j + 1}")
    report.add("step_roots", not bad, "; ".join(bad[:3]) if bad else
               f"{present} files of {k} roots, each ending at its checkpoint root")


def _runtime(task: Task, claim: Claim | None) -> Runtime | None:
    """The run the claim commits to: every random stream is keyed by the claim's run seed (SPEC.md
    §9: task id, prover key, posting id). Without a valid claim there is no run to check."""
    if claim is None:
        return None
    return Runtime.for_task(task, compute_claim_training_seed(claim))


def check_conformance(path: Path) -> ConformanceReport:
    """Run every check on the proof directory at ``path``; never raises on bad content."""
    report = ConformanceReport(str(path))
    pdir = ProofDir(path)
    task: Task | None = None
    try:
        task = pdir.read_task()
        report.add("task", True, f"task.toml parses; task id {compute_task_id(task).hex()}")
        raw = tomllib.loads(pdir.task_file.read_text(encoding="utf-8"))
        normalized = raw == get_task_canonical(task)
        report.add("task.normalized", normalized, "task.toml holds every key of the normalized task (§3)"
                   if normalized else "task.toml is not the normalized task: some keys are left to their defaults")
    except (OSError, PolError) as exc:
        report.add("task", False, str(exc))
    _check_layout(report, pdir, task)
    if task is None:
        return report
    task_id = compute_task_id(task)
    claim: Claim | None = None
    try:
        data = pdir.claim_file.read_bytes()
        claim = decode_claim(data)
        report.add("claim.encoding", encode_claim(claim) == data, "canonical msgpack of {body, signature}")
        validate_claim_signature(claim)
        report.add("claim.signature", True, "BLS signature of DOMAIN_CLAIM || body verifies under body.prover")
        validate_claim_against_task(claim, task, task_id)
        report.add("claim.task", True, "task id, steps, interval and checkpoint count agree with task.toml")
    except (OSError, InvalidInput) as exc:
        report.add("claim", False, str(exc))
        claim = None
    entries = _check_transcript(report, pdir, task)
    if entries is None or len(entries) != task.num_checkpoints:
        return report
    roots = [e.root for e in entries]
    if claim is not None:
        try:
            validate_transcript_roots(claim, roots)
            report.add("commitment", True, "transcript roots hash to the commitment; last root is final_root")
        except InvalidInput as exc:
            report.add("commitment", False, str(exc))
    try:
        rt = _runtime(task, claim)  # a ReplayError (our data is missing) propagates: not the directory's fault
    except InvalidInput as exc:
        report.add("dataset", False, str(exc))
        return report
    if rt is None:
        report.add("init", False, "not checked: the initial state is keyed by a valid claim's run seed (§9)")
        return report
    expected = compute_root(init_state(rt))
    report.add("init", roots[0] == expected,
               "r_0 is the initial state of the task's seed" if roots[0] == expected else
               f"r_0 is {roots[0].hex()}, the seed gives {expected.hex()}")
    _check_checkpoints(report, pdir, rt, task_id, roots)
    _check_step_roots(report, pdir, task, roots)
    return report
