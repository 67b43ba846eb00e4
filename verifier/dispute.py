"""Playing the dispute game of SPEC.md §17: prover and challenger strategies, a driver that
runs a whole game through the pure rules of ``protocol.dispute``, and the referee's settlement
(execute one operator).

The strategies replay from the segment's committed start state on demand: a prover answers a
midpoint root or a step's trace by replaying, exactly as it would in a live game. Tests give a
prover a faked operator, or a challenger a lie, and check who loses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from gpu_ops.trace import compute_tensor_hash
from prover.steps import StepTrace, compute_output_hashes, compute_step_trace, copy_state, execute_entry
from prover.training import Runtime, TrainState, compute_root, init_state, train_step
from protocol import dispute as D
from protocol.claim import Claim, compute_claim_id
from protocol.errors import InvalidInput
from protocol.merkle import compute_leaf_hash, compute_merkle_proof, compute_merkle_root, compute_proof_from_leaf_hashes
from protocol.optrace import compute_peaks, decode_entry, get_skeleton

log = logging.getLogger(__name__)


class ProverSide(Protocol):
    def root_at(self, step: int) -> bytes | None: ...
    def trace_of(self, step: int) -> StepTrace | None: ...


class ChallengerSide(Protocol):
    def agrees_root(self, step: int, root: bytes) -> bool: ...
    def agrees_prefix(self, step: int, length: int, root: bytes) -> bool: ...


@dataclass
class Replayer:
    """Replays a segment from its start state, caching step roots and traces. ``fake(step)`` is a
    context manager entered around the replay of step ``step`` (a test's dishonest prover)."""

    rt: Runtime
    start: TrainState
    fake: Callable[[int], Any] | None = None
    _roots: dict[int, bytes] = field(default_factory=dict)
    _traces: dict[int, StepTrace] = field(default_factory=dict)
    _cursor: TrainState | None = None
    steps_replayed: int = 0

    def _run(self, step: int, fn: Callable[[], Any]) -> Any:
        if self.fake is None:
            return fn()
        with self.fake(step):
            return fn()

    def state_at(self, step: int) -> TrainState:
        # Continue from the furthest state replayed so far when it is not past ``step``: one
        # replay of the segment then answers every round of the bisection.
        base = self._cursor if self._cursor is not None and self._cursor.step <= step else self.start
        state = copy_state(base)
        while state.step < step:
            self._run(state.step, lambda: train_step(self.rt, state))
            self.steps_replayed += 1
            self._roots.setdefault(state.step, compute_root(state))
        if self._cursor is None or state.step > self._cursor.step:
            self._cursor = copy_state(state)
        return state

    def root_at(self, step: int) -> bytes | None:
        if step == self.start.step:
            return compute_root(self.start)
        if step not in self._roots:
            self.state_at(step)
        return self._roots[step]

    def trace_of(self, step: int) -> StepTrace | None:
        if step not in self._traces:
            state = self.state_at(step)
            self._traces[step] = self._run(step, lambda: compute_step_trace(self.rt, state))
        return self._traces[step]

    def agrees_root(self, step: int, root: bytes) -> bool:
        return self.root_at(step) == root

    def agrees_prefix(self, step: int, length: int, root: bytes) -> bool:
        tr = self.trace_of(step)
        return tr is not None and compute_merkle_root(tr.encoded[:length]) == root


@dataclass
class LyingChallenger:
    """An honest replayer that gives the wrong answer in the listed (0-based) choose rounds."""

    inner: Replayer
    lie_at: frozenset[int]
    _n: int = 0

    def _answer(self, honest: bool) -> bool:
        n, self._n = self._n, self._n + 1
        return (not honest) if n in self.lie_at else honest

    def agrees_root(self, step: int, root: bytes) -> bool:
        return self._answer(self.inner.agrees_root(step, root))

    def agrees_prefix(self, step: int, length: int, root: bytes) -> bool:
        return self._answer(self.inner.agrees_prefix(step, length, root))


@dataclass
class GameRun:
    game: D.Game
    moves: list[bytes]
    seconds: float

    @property
    def rounds(self) -> int:
        return len(self.moves)

    @property
    def bytes(self) -> int:
        return sum(len(m) for m in self.moves)


def compute_reveal_body(tr: StepTrace, a: int) -> dict[str, Any]:
    """The prover's last move: entry ``a``, the peaks of the first ``a`` entries, and for each
    input the source entry with its inclusion proof in that prefix."""
    hashes = [compute_leaf_hash(e) for e in tr.encoded]
    entry = tr.entries[a]
    inputs = []
    for ref in entry["in"]:
        m = ref[3]
        if m is None:
            inputs.append(None)
            continue
        proof = compute_proof_from_leaf_hashes(hashes[:a], m)
        inputs.append({"entry": tr.encoded[m], "path": list(proof.path)})
    return {"entry": tr.encoded[a], "peaks": list(compute_peaks(hashes[:a])), "inputs": inputs}


def compute_trace_body(tr: StepTrace) -> dict[str, Any]:
    hashes = [compute_leaf_hash(e) for e in tr.encoded]
    n = len(hashes)
    return {"n": n, "root": compute_merkle_root(tr.encoded), "first": tr.encoded[0],
            "first_path": list(compute_proof_from_leaf_hashes(hashes, 0).path), "last": tr.encoded[-1],
            "last_path": list(compute_proof_from_leaf_hashes(hashes, n - 1).path)}


def play_game(game: D.Game, prover: ProverSide, prover_sk: bytes, challenger: ChallengerSide, challenger_sk: bytes,
              clock: Callable[[], int], open_move: bytes, max_moves: int = 200) -> GameRun:
    """Drive ``game`` until the prover reveals, a party cannot answer (it then loses by timeout
    at ``game.turn_since + clock`` + 1), or the game ends."""
    started = time.perf_counter()
    moves = [open_move]
    for _ in range(max_moves):
        expected = D.get_expected_move(game)
        if expected is None:
            break
        party, kind = expected
        body: dict[str, Any] | None
        if kind == "root":
            root = prover.root_at(game.mid)
            body = None if root is None else {"step": game.mid, "root": root}
        elif kind == "prefix":
            tr = prover.trace_of(game.lo)
            body = None if tr is None else {"length": game.mid, "root": compute_merkle_root(tr.encoded[:game.mid])}
        elif kind == "trace":
            tr = prover.trace_of(game.lo)
            body = None if tr is None else compute_trace_body(tr)
        elif kind == "reveal":
            tr = prover.trace_of(game.lo)
            body = None if tr is None else compute_reveal_body(tr, game.a)
        else:
            assert game.pending is not None
            if game.phase == D.PHASE_STEPS:
                body = {"agree": challenger.agrees_root(game.mid, game.pending)}
            else:
                body = {"agree": challenger.agrees_prefix(game.lo, game.mid, game.pending)}
        if body is None:  # this party cannot answer: its clock runs out
            deadline = D.get_deadline(game)
            assert deadline is not None
            game = D.process_timeout(game, deadline + 1)
            break
        sk = prover_sk if party == D.PROVER else challenger_sk
        move = D.compute_signed_move(sk, game.game_id, game.round, kind, body)
        try:
            game = D.process_move(game, move, clock())
        except D.InvalidMove as exc:  # an answer the rules refuse is no answer: that party's clock runs out
            log.info("round %d: the %s's %s move is refused: %s", game.round, party, kind, exc)
            deadline = D.get_deadline(game)
            assert deadline is not None
            game = replace(D.process_timeout(game, deadline + 1),
                           reason=f"the {party}'s {kind} move of round {game.round} is refused ({exc}); "
                                  f"it did not move in time")
            break
        moves.append(D.encode_move(move))
    return GameRun(game, moves, time.perf_counter() - started)


@dataclass
class Settlement:
    game: D.Game
    entry: dict[str, Any]
    claimed: list[bytes | None]
    recomputed: list[bytes | None]
    outputs: list[torch.Tensor | bytes | None]
    seconds: float


def get_task_skeleton(rt: Runtime) -> list[dict[str, Any]]:
    """The task's trace without hashes: the same for every step (one traced step, once per task)."""
    return [get_skeleton(e) for e in compute_step_trace(rt, init_state(rt)).entries]


def settle_game(rt: Runtime, game: D.Game, skeleton: list[dict[str, Any]],
                fetch: Callable[[bytes], torch.Tensor | None], agreed_state: Callable[[], TrainState]) -> Settlement:
    """The referee: fetch the revealed operator's inputs by hash (checking each), execute it once,
    and decide. ``agreed_state`` is only called when the disputed entry is entry 0."""
    assert game.revealed is not None
    entry = decode_entry(game.revealed)
    started = time.perf_counter()
    index = entry["i"]
    canonical = skeleton[index] if index < len(skeleton) else {}
    claimed = [None if r is None else r[0] for r in entry["out"]]
    if get_skeleton(entry) != canonical:  # never execute an operator the task does not prescribe
        decided = D.process_settlement(game, canonical, [])
        return Settlement(decided, entry, claimed, [], [], time.perf_counter() - started)
    inputs = []
    for j, ref in enumerate(entry["in"]):
        t = fetch(ref[0])
        if t is None or compute_tensor_hash(t) != ref[0] or list(t.shape) != ref[2]:
            raise InvalidInput(f"input {j} of entry {entry['i']} was not served with its agreed hash and shape")
        inputs.append(t)
    state = None
    if entry["i"] == 0:
        state = agreed_state()
        if compute_root(state) != game.agreed_root:
            raise InvalidInput("the state served for entry 0 does not hash to the agreed root")
    outputs = execute_entry(rt, game.lo, entry, inputs, state)
    recomputed = compute_output_hashes(outputs)
    decided = D.process_settlement(game, canonical, recomputed)
    return Settlement(decided, entry, claimed, recomputed, outputs, time.perf_counter() - started)


def get_claim_view(claim: Claim) -> D.ClaimView:
    b = claim.body
    return D.ClaimView(compute_claim_id(b), b.prover, b.commitment, b.num_checkpoints, b.checkpoint_interval)


def compute_open_move(claim: Claim, roots: list[bytes], segment: int, challenger_sk: bytes, challenger_root: bytes,
                      clock_s: int) -> D.Move:
    """The challenger's signed ``open`` of segment ``segment`` (roots are the claim's checkpoint roots)."""
    from protocol import bls

    view = get_claim_view(claim)
    body = {
        "claim_id": view.claim_id, "segment": segment, "prover": view.prover,
        "challenger": bls.compute_public_key(challenger_sk), "start_root": roots[segment],
        "start_root_path": list(compute_merkle_proof(roots, segment).path), "end_root": roots[segment + 1],
        "end_root_path": list(compute_merkle_proof(roots, segment + 1).path), "challenger_root": challenger_root,
        "clock_s": clock_s,
    }
    return D.compute_signed_move(challenger_sk, D.compute_game_id(body), 0, "open", body)
