"""``pol audit``: play the challenger's side of the dispute game (SPEC.md §17) offline.

The auditor replays the segment from its committed start checkpoint. If the replay ends at
the committed root there is nothing to dispute. Otherwise it plays the game against the
prover's *published answers* in DIR/steps/ (SPEC.md §14: ``seg-NNNNNN.roots``, the roots after
every step of a segment, and ``step-SSSSSSSS.trace``, the operator trace of one step with its
tensors, both written by the prover on demand, ``pol answer``). A round the directory holds no
answer for is a round the prover would lose by timeout. When the game reaches one operator,
the auditor settles it like a referee (executes that operator) and reports the step, the
operator, its tensors' names and shapes and the first elements that differ.

Offline, moves are signed with throw-away keys: the rules, rounds and bytes are those of a
live game, the signatures prove nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prover.steps import StepTrace, read_step_trace
from prover.training import Runtime
from prover.transcript import ProofDir, read_transcript
from protocol import bls
from protocol import dispute as D
from protocol.claim import compute_claim_id, compute_claim_training_seed, validate_claim_against_task
from protocol.claim import validate_claim_signature
from protocol.claim import validate_transcript_roots
from protocol.errors import InvalidCheckpoint, InvalidInput
from protocol.task import compute_task_id

from .dispute import Replayer, compute_open_move, get_task_skeleton, play_game, settle_game
from .replay import load_state

log = logging.getLogger(__name__)

ROOT_LEN = 32
MAX_DIFFS = 8
OFFLINE_CLOCK_S = 3600


@dataclass
class AuditReport:
    claim_id: str
    segment: int
    start_step: int
    end_step: int
    start_root: str
    claimed_end_root: str
    replayed_end_root: str = ""
    segment_ok: bool = False
    step_roots_available: bool = False
    step_roots_match_commitment: bool | None = None
    first_bad_step: int | None = None
    claimed_step_root: str | None = None
    replayed_step_root: str | None = None
    diverged: str | None = None
    seconds: float = 0.0
    steps: list[dict[str, object]] = field(default_factory=list)
    game: dict[str, Any] | None = None
    operator: dict[str, Any] | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finding(self) -> str:
        if self.segment_ok and self.first_bad_step is None:
            return "segment replays exactly; nothing was faked here"
        if self.diverged:
            return f"the committed start state diverges: {self.diverged}"
        if self.operator is not None:
            op = self.operator
            return (f"step {self.first_bad_step} was faked: operator {op['index']} ({op['op']}) of the step from "
                    f"state {op['step']} to {op['step'] + 1} gives {op['verdict']}")
        if self.first_bad_step is not None:
            reason = self.game["reason"] if self.game else ""
            if self.claimed_step_root == self.replayed_step_root:
                # The published step root is honest but the committed end root is not: the commitment
                # was altered after training, and the prover cannot defend it.
                return (f"step {self.first_bad_step} is disputed: the prover's published root after it equals the "
                        f"honest replay ({self.replayed_step_root}) but its committed segment end root "
                        f"({self.claimed_end_root}) does not; {reason}")
            return (f"step {self.first_bad_step} was faked: the prover's root after it is {self.claimed_step_root}, "
                    f"honest replay gives {self.replayed_step_root}; {reason}")
        if self.step_roots_available:
            # Says in words what the JSON says: the step roots exist and agree with the replay.
            return (f"segment end differs (claimed {self.claimed_end_root}, replayed {self.replayed_end_root}); "
                    "every step root the prover kept matches the honest replay, so the committed end root "
                    "was altered after training (it is not the prover's own last step root)")
        reason = f"; {self.game['reason']}" if self.game else ""
        return (f"segment end differs (claimed {self.claimed_end_root}, replayed {self.replayed_end_root}); "
                f"the prover kept no step roots, so the faked step cannot be narrowed down offline{reason}")


@dataclass
class DirProver:
    """The prover's side as its proof directory publishes it (None: no answer)."""

    pdir: ProofDir
    segment: int
    start_step: int
    roots: list[bytes] | None

    def root_at(self, step: int) -> bytes | None:
        if self.roots is None or not self.start_step < step <= self.start_step + len(self.roots):
            return None
        return self.roots[step - self.start_step - 1]

    def trace_of(self, step: int) -> StepTrace | None:
        try:
            return read_step_trace(self.pdir, step)
        except InvalidCheckpoint as exc:  # a malformed published answer is no answer
            log.warning("the prover's trace of step %d is unusable: %s", step, exc)
            return None


def _read_step_roots(pdir: ProofDir, segment: int, k: int) -> list[bytes] | None:
    try:
        data = pdir.step_roots(segment).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != k * ROOT_LEN:
        raise InvalidCheckpoint(f"step-roots file of segment {segment} has {len(data)} bytes, expected {k * ROOT_LEN}")
    return [data[i:i + ROOT_LEN] for i in range(0, len(data), ROOT_LEN)]


def _tensor_name(entries: list[dict[str, Any]], m: int | None, o: int | None) -> str:
    if m is None or o is None:
        return "?"
    if m == 0 and o >= 1:
        return str(entries[0]["args"][0][o - 1])
    return f"e{m}.{entries[m]['op']}[{o}]" if m < len(entries) else f"e{m}[{o}]"


def _first_diffs(claimed: torch.Tensor | None, honest: torch.Tensor) -> list[dict[str, Any]]:
    if claimed is None or claimed.shape != honest.shape or claimed.dtype != honest.dtype:
        return []
    a, b = claimed.reshape(-1), honest.reshape(-1)
    ne = (a != b) if a.dtype != torch.float32 else ~((a == b) & (torch.signbit(a) == torch.signbit(b)))
    out = []
    for flat in torch.nonzero(ne).reshape(-1)[:MAX_DIFFS].tolist():
        index, rest = [], flat
        for d in reversed(honest.shape):
            index.append(rest % d)
            rest //= d
        out.append({"index": list(reversed(index)), "claimed": float(a[flat]), "honest": float(b[flat])})
    return out


def audit_segment(path: Path, segment: int) -> AuditReport:
    """Play the challenger against DIR's published answers. Raises ``InvalidInput`` if the proof is
    malformed before the segment can even be replayed (claim, transcript, start checkpoint)."""
    pdir = ProofDir(path)
    task = pdir.read_task()
    task_id = compute_task_id(task)
    claim = pdir.read_claim()
    validate_claim_signature(claim)
    validate_claim_against_task(claim, task, task_id)
    rt = Runtime.for_task(task, compute_claim_training_seed(claim))
    roots = [e.root for e in read_transcript(pdir, task)]
    validate_transcript_roots(claim, roots)
    if not 0 <= segment < task.num_segments:
        raise InvalidInput(f"segment {segment} does not exist; the claim has {task.num_segments}")
    k = task.checkpoint_interval
    start_step, end_step = segment * k, (segment + 1) * k
    report = AuditReport(claim_id=compute_claim_id(claim.body).hex(), segment=segment, start_step=start_step,
                         end_step=end_step, start_root=roots[segment].hex(), claimed_end_root=roots[segment + 1].hex())
    claimed_steps = _read_step_roots(pdir, segment, k)
    report.step_roots_available = claimed_steps is not None
    if claimed_steps is not None:
        report.step_roots_match_commitment = claimed_steps[-1] == roots[segment + 1]
    started = time.perf_counter()
    challenger = Replayer(rt, load_state(rt, pdir, segment, roots[segment]))
    try:
        replayed = [challenger.root_at(s) for s in range(start_step + 1, end_step + 1)]
    except Exception as exc:  # NonFiniteLoss: the committed start state diverges
        from prover.training import NonFiniteLoss

        if not isinstance(exc, NonFiniteLoss):
            raise
        report.diverged = str(exc)
        report.seconds = time.perf_counter() - started
        return report
    for i, r in enumerate(replayed):
        entry: dict[str, object] = {"step": start_step + i + 1, "replayed_root": r.hex() if r else ""}
        if claimed_steps is not None:
            entry["claimed_root"] = claimed_steps[i].hex()
        report.steps.append(entry)
    end = replayed[-1]
    assert end is not None
    report.replayed_end_root = end.hex()
    report.segment_ok = end == roots[segment + 1]
    if not report.segment_ok:
        _play(report, rt, pdir, claim, roots, segment, challenger, end, claimed_steps)
    report.seconds = time.perf_counter() - started
    return report


def _play(report: AuditReport, rt: Runtime, pdir: ProofDir, claim: Any, roots: list[bytes], segment: int,
          challenger: Replayer, honest_end: bytes, claimed_steps: list[bytes] | None) -> None:
    prover_sk, challenger_sk = bls.compute_secret_key(b"pol audit: offline prover".ljust(32, b".")), \
        bls.compute_secret_key(b"pol audit: offline challenger".ljust(32, b"."))
    move = compute_open_move(claim, roots, segment, challenger_sk, honest_end, OFFLINE_CLOCK_S)
    view = D.ClaimView(compute_claim_id(claim.body), bls.compute_public_key(prover_sk), claim.body.commitment,
                       claim.body.num_checkpoints, claim.body.checkpoint_interval)
    body = dict(move.body, prover=view.prover)
    move = D.compute_signed_move(challenger_sk, D.compute_game_id(body), 0, "open", body)
    game = D.process_open(move, view, now=0)
    prover = DirProver(pdir, segment, report.start_step, claimed_steps)
    clock = iter(range(1, 10_000))
    run = play_game(game, prover, prover_sk, challenger, challenger_sk, lambda: next(clock), D.encode_move(move))
    g = run.game
    report.game = {"rounds": run.rounds, "bytes": run.bytes, "phase": g.phase, "winner": g.winner, "reason": g.reason,
                   "agreed_step": g.lo, "disputed_step": g.hi, "trace_entries": g.trace_n,
                   "agreed_entries": g.a if g.trace_n else None}
    if g.hi - g.lo == 1 and claimed_steps is not None:
        report.first_bad_step = g.hi
        report.claimed_step_root = claimed_steps[g.hi - report.start_step - 1].hex()
        report.replayed_step_root = (challenger.root_at(g.hi) or b"").hex()
    honest_tr = challenger.trace_of(g.lo) if g.hi - g.lo == 1 else None
    prover_tr = prover.trace_of(g.lo) if honest_tr is not None else None
    if honest_tr is not None and prover_tr is not None:
        report.trace = [
            {"index": i, "op": e["op"], "match": i < len(prover_tr.entries) and prover_tr.encoded[i] == enc}
            for i, (e, enc) in enumerate(zip(honest_tr.entries, honest_tr.encoded))
        ]
    if g.phase != D.PHASE_SETTLE or honest_tr is None or prover_tr is None:
        return
    def fetch(h: bytes) -> torch.Tensor | None:  # inputs are agreed values: either side can serve them
        t = honest_tr.tensors.get(h)
        return t if t is not None else prover_tr.tensors.get(h)

    st = settle_game(rt, g, get_task_skeleton(rt), fetch, lambda: challenger.state_at(g.lo))
    report.game.update(phase=st.game.phase, winner=st.game.winner, reason=st.game.reason,
                       referee_seconds=st.seconds)
    e, entries = st.entry, prover_tr.entries
    outs = []
    for o, (ref, honest) in enumerate(zip(e["out"], st.outputs)):
        if ref is None:
            continue
        claimed_t = prover_tr.tensors.get(ref[0])
        outs.append({"name": f"e{e['i']}.{e['op']}[{o}]", "dtype": ref[1], "shape": ref[2],
                     "claimed_hash": ref[0].hex(), "honest_hash": st.recomputed[o].hex() if st.recomputed[o] else None,
                     "first_differences": _first_diffs(claimed_t, honest) if isinstance(honest, torch.Tensor) else []})
    report.operator = {
        "step": g.lo, "index": e["i"], "op": e["op"], "args": _jsonable(e["args"]),
        "inputs": [{"name": _tensor_name(entries, r[3], r[4]), "dtype": r[1], "shape": r[2], "hash": r[0].hex(),
                    "source": [r[3], r[4]]} for r in e["in"]],
        "outputs": outs,
        "verdict": ("the prover's output" if st.game.winner == D.PROVER else "an output that differs from executing it"),
        "winner": st.game.winner,
    }
    report.first_bad_step = g.hi
    if claimed_steps is None:
        report.claimed_step_root = g.disputed_root.hex()
        report.replayed_step_root = (challenger.root_at(g.hi) or b"").hex()


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v
