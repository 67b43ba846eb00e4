"""The dispute game on real training (SPEC.md §17): narrowed to one step and one operator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gpu_ops.functional as F
import prover.prove as prove_mod
from pol.keyfile import generate_keyfile
from prover.prove import prove
from prover.training import Runtime, train_step
from prover.transcript import ProofDir, read_transcript
from protocol import dispute as D
from protocol.claim import compute_claim_training_seed
from protocol.task import Task
from verifier.dispute import (
    LyingChallenger,
    Replayer,
    compute_open_move,
    get_claim_view,
    get_task_skeleton,
    play_game,
    settle_game,
)
from verifier.replay import load_state
from verifier.verify import REJECT, verify_dir

FAKED_STEP = 16  # the step taken from state 16 (segment 1 covers steps 10..19)
SEGMENT = 1


@contextlib.contextmanager
def fake_first_matmul(step: int) -> Iterator[None]:
    """At FAKED_STEP, the first matrix product of the step (fc0's forward) is off by 1e-3 in one
    element of row 0: a lazy prover that fakes one operator, and whose trace is consistent with it."""
    if step != FAKED_STEP:
        yield
        return
    real = F._matmul
    calls = [0]

    def faked(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = real(a, b, bias)
        calls[0] += 1
        if calls[0] == 1:
            y = y.clone()
            y[0, int(torch.argmax(y[0]))] += 1e-3  # a unit the relu passes on, whatever the run's seed
        return y

    F._matmul = faked  # type: ignore[assignment]
    try:
        yield
    finally:
        F._matmul = real  # type: ignore[assignment]


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return generate_keyfile().bls_secret_key, generate_keyfile().bls_secret_key


@pytest.fixture(scope="module")
def faked_dir(tmp_path_factory: pytest.TempPathFactory, tiny_task: Task, keys: tuple[bytes, bytes]) -> Path:
    def lazy_step(rt: Runtime, state: Any) -> float:
        with fake_first_matmul(state.step):
            return train_step(rt, state)

    out = tmp_path_factory.mktemp("dispute") / "faked"
    mp = pytest.MonkeyPatch()
    mp.setattr(prove_mod, "train_step", lazy_step)
    try:
        prove(tiny_task, out, keys[0])
    finally:
        mp.undo()
    return out


class Clock:
    def __init__(self, start: int = 1000, tick: int = 1) -> None:
        self.now, self.tick = start, tick

    def __call__(self) -> int:
        self.now += self.tick
        return self.now


def _setup(pdir_path: Path, challenger_sk: bytes, fake: Any, claimed_end: bytes | None = None
           ) -> tuple[Runtime, D.Game, bytes, Replayer, Replayer]:
    pdir = ProofDir(pdir_path)
    task = pdir.read_task()
    claim = pdir.read_claim()
    rt = Runtime.for_task(task, compute_claim_training_seed(claim))
    roots = [e.root for e in read_transcript(pdir, task)]
    start = load_state(rt, pdir, SEGMENT, roots[SEGMENT])
    prover = Replayer(rt, start, fake=fake)
    challenger = Replayer(rt, start)
    honest_end = challenger.root_at((SEGMENT + 1) * task.checkpoint_interval)
    assert honest_end is not None
    move = compute_open_move(claim, roots, SEGMENT, challenger_sk, claimed_end or honest_end, clock_s=3600)
    game = D.process_open(move, get_claim_view(claim), now=1000)
    return rt, game, D.encode_move(move), prover, challenger


def test_faked_operator_is_narrowed_to_that_operator(faked_dir: Path, keys: tuple[bytes, bytes]) -> None:
    assert verify_dir(faked_dir, segments=None, secret_key=None).verdict == REJECT
    rt, game, open_bytes, prover, challenger = _setup(faked_dir, keys[1], fake_first_matmul)
    run = play_game(game, prover, keys[0], challenger, keys[1], Clock(), open_bytes)
    g = run.game
    assert g.phase == D.PHASE_SETTLE and (g.lo, g.hi) == (FAKED_STEP, FAKED_STEP + 1)
    st = settle_game(rt, g, get_task_skeleton(rt), lambda h: challenger.trace_of(g.lo).tensors.get(h),  # type: ignore[union-attr]
                     lambda: challenger.state_at(g.lo))
    assert st.entry["op"] == "linear.forward" and st.entry["i"] == 2  # fc0's forward: state, batch, then it
    assert st.game.winner == D.CHALLENGER and "linear.forward" in st.game.reason
    assert st.claimed[0] != st.recomputed[0]
    # The referee ran one operator, the prover's reveal moves were few and small.
    assert run.rounds <= 2 + 2 * 4 + 1 + 2 * 4 + 1
    assert run.bytes < 20_000


@pytest.mark.parametrize("lie_at", [1, 5])  # a lie about a half of the steps, or of the operator trace
def test_honest_prover_beats_a_lying_challenger(proof_dir: Path, prover_key: bytes, keys: tuple[bytes, bytes],
                                                lie_at: int) -> None:
    rt, game, open_bytes, prover, honest = _setup(proof_dir, keys[1], None, claimed_end=b"\x07" * 32)
    # The challenger opens with a false root, then lies once more (choose rounds 0-3 are over steps).
    liar = LyingChallenger(honest, frozenset({lie_at}))
    run = play_game(game, prover, prover_key, liar, keys[1], Clock(), open_bytes)
    assert run.game.phase == D.PHASE_SETTLE
    st = settle_game(rt, run.game, get_task_skeleton(rt), lambda h: prover.trace_of(run.game.lo).tensors.get(h),  # type: ignore[union-attr]
                     lambda: prover.state_at(run.game.lo))
    assert st.game.winner == D.PROVER and "challenger was wrong" in st.game.reason


def test_prover_that_stops_answering_loses_by_timeout(faked_dir: Path, keys: tuple[bytes, bytes]) -> None:
    _, game, _, prover, _ = _setup(faked_dir, keys[1], fake_first_matmul)
    root = prover.root_at(game.mid)
    assert root is not None
    g = D.process_move(game, D.compute_signed_move(keys[0], game.game_id, 1, "root", {"step": game.mid, "root": root}),
                       1010)
    g = D.process_move(g, D.compute_signed_move(keys[1], g.game_id, 2, "choose", {"agree": True}), 1020)
    # The prover is silent now. Before its clock runs out nobody can claim the game ...
    with pytest.raises(D.InvalidTransition):
        D.process_timeout(g, 1020 + g.prover_clock)
    # ... after it, the challenger wins, and a late answer is refused.
    late = D.compute_signed_move(keys[0], g.game_id, 3, "root", {"step": g.mid, "root": b"\x00" * 32})
    with pytest.raises(D.LateMove):
        D.process_move(g, late, 1020 + g.prover_clock + 1)
    done = D.process_timeout(g, 1020 + g.prover_clock + 1)
    assert done.winner == D.CHALLENGER and "prover did not move in time" in done.reason


def test_pol_audit_names_the_operator_and_writes_a_report(faked_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from pol.cli import main
    from prover.steps import publish_answers
    from verifier.audit import audit_segment

    pdir = tmp_path / "proof"
    shutil.copytree(faked_dir, pdir)
    # Without published answers the prover would lose round 1 by timeout; the auditor says so.
    bare = audit_segment(pdir, SEGMENT)
    assert bare.first_bad_step is None and bare.game is not None and bare.game["winner"] == D.CHALLENGER
    publish_answers(ProofDir(pdir), SEGMENT, trace_steps=[FAKED_STEP], fake=fake_first_matmul)
    report = audit_segment(pdir, SEGMENT)
    assert report.first_bad_step == FAKED_STEP + 1 and report.game is not None
    assert report.game["winner"] == D.CHALLENGER and report.operator is not None
    op = report.operator
    assert (op["step"], op["index"], op["op"]) == (FAKED_STEP, 2, "linear.forward")
    assert [t["name"] for t in op["inputs"]] == ["e1.batch[0]", "param/fc0.weight", "param/fc0.bias"]
    assert op["outputs"][0]["shape"] == [32, 32]
    diffs = op["outputs"][0]["first_differences"]
    assert diffs[0]["index"][0] == 0 and len(diffs) == 1  # exactly the element the prover faked
    assert [t["match"] for t in report.trace[:3]] == [True, True, False]
    out = tmp_path / "audit.html"
    assert main(["audit", str(pdir), "--segment", str(SEGMENT), "--report", str(out), "--json"]) == 1
    page = out.read_text()
    assert "<svg" in page and "linear.forward" in page and "param/fc0.weight" in page
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["operator"]["index"] == 2 and doc["first_bad_step"] == FAKED_STEP + 1


def _seal(state: Any, task_id: bytes, sk: bytes, claim: Any, now: int) -> Any:
    from protocol import bls
    from protocol import referee as R

    pk = bls.compute_public_key(sk)
    seal = R.compute_seal(pk, claim.body.commitment)
    return R.process_seal(state, task_id, pk, seal, bls.sign(sk, R.compute_seal_message(task_id, seal)), now)


def test_refereed_seals_stop_copying_and_unrevealed_seals_are_burned(tiny_task: Task) -> None:
    from protocol import bls
    from protocol import referee as R
    from protocol.claim import compute_claim_body, compute_signed_claim
    from protocol.task import compute_task_id

    sks = [bls.compute_secret_key(f"refereed party {i}".encode().ljust(32, b".")) for i in range(4)]
    requester, a, b, c = sks
    pks = [bls.compute_public_key(k) for k in sks]
    task_id = compute_task_id(tiny_task)
    posting = R.compute_signed_posting(requester, task_id=task_id, reward=100, provers=2, num_checkpoints=5,
                                       checkpoint_interval=10, seal_until=100, expires_at=1000)
    state = R.get_initial_referee_state(R.RefereedParams(bond=10), {pk: 1000 for pk in pks})
    total = R.get_total_money(state)
    state = R.process_post(state, posting, now=1)
    roots = [bytes([i]) * 32 for i in range(5)]
    claim = {k: compute_signed_claim(k, compute_claim_body(tiny_task, task_id, bls.compute_public_key(k), roots,
                                                           R.compute_posting_id(posting))) for k in (a, b)}
    with pytest.raises(R.InvalidTransition, match="sealed nothing"):
        R.process_claim(state, claim[a], now=150)  # no seal, no claim
    state = _seal(state, task_id, a, claim[a], now=10)
    with pytest.raises(R.InvalidTransition, match="revealed from seal_until"):
        R.process_claim(state, claim[a], now=50)  # nobody reveals before seal_until
    with pytest.raises(Exception, match="signature"):
        R.process_seal(state, task_id, pks[2], b"\x01" * 32, bls.sign(a, b"x"), now=20)
    # b seals a guess, then sees a's roots after seal_until: copying them does not match its seal.
    state = R.process_seal(state, task_id, pks[2], b"\x02" * 32,
                           bls.sign(b, R.compute_seal_message(task_id, b"\x02" * 32)), now=20)
    with pytest.raises(R.InvalidTransition, match="sealing closed"):
        _seal(state, task_id, c, claim[a], now=100)
    state = R.process_claim(state, claim[a], now=100)
    with pytest.raises(R.InvalidTransition, match="not the one this prover sealed"):
        R.process_claim(state, claim[b], now=101)
    state = R.process_tick(state, task_id, now=1000)  # expired with one place never revealed
    assert state.tasks[task_id].status == R.REFUNDED
    assert state.balances[pks[2]] == 990 and state.balances[pks[1]] == 1000 and state.burned == 10
    assert R.get_total_money(state) == total


def _refereed_run(task: Task, out: Path, sk: bytes, posting: Any, lazy: bool) -> ProofDir:
    from protocol import referee as R

    def lazy_step(rt: Runtime, state: Any) -> float:
        with fake_first_matmul(state.step):
            return train_step(rt, state)

    mp = pytest.MonkeyPatch()
    if lazy:
        mp.setattr(prove_mod, "train_step", lazy_step)
    try:
        prove(task, out, sk, posting_id=R.compute_posting_id(posting), run_seed=R.compute_refereed_seed(posting))
    finally:
        mp.undo()
    return ProofDir(out)


def test_refereed_mode_pays_the_honest_prover_and_slashes_the_faker(
        tmp_path: Path, prover_key: bytes, keys: tuple[bytes, bytes], tiny_task: Task) -> None:
    from protocol import bls
    from protocol import referee as R
    from protocol.merkle import compute_merkle_proof
    from protocol.task import compute_task_id

    requester = bls.compute_secret_key(b"refereed requester".ljust(32, b"."))
    honest_pk, faker_pk = bls.compute_public_key(prover_key), bls.compute_public_key(keys[0])
    params = R.RefereedParams(bond=1000, winner_share_bps=5000, clock_s=600)
    state = R.get_initial_referee_state(params, {bls.compute_public_key(requester): 500, honest_pk: 2000,
                                                 faker_pk: 2000})
    total = R.get_total_money(state)
    task_id = compute_task_id(tiny_task)
    posting = R.compute_signed_posting(requester, task_id=task_id, reward=300, provers=2, num_checkpoints=5,
                                       checkpoint_interval=10, seal_until=200, expires_at=10_000)
    state = R.process_post(state, posting, now=100)
    # Both provers train the posting's shared run; one of them fakes one operator.
    honest = _refereed_run(tiny_task, tmp_path / "honest", prover_key, posting, lazy=False)
    faked = _refereed_run(tiny_task, tmp_path / "faked", keys[0], posting, lazy=True)
    state = _seal(state, task_id, prover_key, honest.read_claim(), now=110)
    state = _seal(state, task_id, keys[0], faked.read_claim(), now=120)
    state = R.process_claim(state, honest.read_claim(), now=210)
    state = R.process_claim(state, faked.read_claim(), now=220)
    assert state.tasks[task_id].status == R.CONTESTED  # commitments differ: straight to the game

    h_roots = [e.root for e in read_transcript(honest, tiny_task)]
    f_roots = [e.root for e in read_transcript(faked, tiny_task)]
    first_diff = next(i for i, (a, b) in enumerate(zip(h_roots, f_roots)) if a != b)
    seg = first_diff - 1
    assert seg == SEGMENT
    open_move = compute_open_move(faked.read_claim(), f_roots, seg, prover_key, h_roots[seg + 1], clock_s=600)
    state = R.process_open_game(state, task_id, open_move, list(compute_merkle_proof(h_roots, seg).path),
                                list(compute_merkle_proof(h_roots, seg + 1).path), now=230)
    game = state.tasks[task_id].games[open_move.game_id]

    rt = Runtime.for_task(tiny_task, R.compute_refereed_seed(posting))
    start = load_state(rt, faked, seg, f_roots[seg])
    faker, challenger = Replayer(rt, start, fake=fake_first_matmul), Replayer(rt, start)
    run = play_game(game, faker, keys[0], challenger, prover_key, Clock(230), D.encode_move(open_move))
    for i, data in enumerate(run.moves[1:]):  # the same moves, through the refereed-mode rules
        state = R.process_game_move(state, task_id, D.decode_move(data), now=231 + i)
    g = state.tasks[task_id].games[open_move.game_id]
    assert g.phase == D.PHASE_SETTLE
    st = settle_game(rt, g, get_task_skeleton(rt), lambda h: challenger.trace_of(g.lo).tensors.get(h),  # type: ignore[union-attr]
                     lambda: challenger.state_at(g.lo))
    state = R.process_game_settlement(state, task_id, g.game_id, get_task_skeleton(rt)[st.entry["i"]], st.recomputed)
    assert state.tasks[task_id].claims[faker_pk].slashed
    state = R.process_tick(state, task_id, now=500)
    assert state.tasks[task_id].status == R.PAID
    assert state.balances[honest_pk] == 2000 + 300 + 500  # reward, own bond back, half the faker's bond
    assert state.balances[faker_pk] == 1000 and state.burned == 500
    assert R.get_total_money(state) == total


def test_refereed_mode_with_equal_commitments_settles_without_replay(tmp_path: Path, prover_key: bytes,
                                                                    tiny_task: Task) -> None:
    from protocol import bls
    from protocol import referee as R
    from protocol.claim import compute_claim_body, compute_signed_claim
    from protocol.task import compute_task_id

    requester = bls.compute_secret_key(b"refereed requester".ljust(32, b"."))
    second = bls.compute_secret_key(b"second honest prover".ljust(32, b"."))
    task_id = compute_task_id(tiny_task)
    posting = R.compute_signed_posting(requester, task_id=task_id, reward=301, provers=2, num_checkpoints=5,
                                       checkpoint_interval=10, seal_until=100, expires_at=10_000)
    first = _refereed_run(tiny_task, tmp_path / "first", prover_key, posting, lazy=False)
    roots = [e.root for e in read_transcript(first, tiny_task)]
    # A second honest prover trains the same shared run and necessarily commits to the same roots.
    claim2 = compute_signed_claim(second, compute_claim_body(tiny_task, task_id, bls.compute_public_key(second), roots,
                                                             R.compute_posting_id(posting)))
    state = R.get_initial_referee_state(R.RefereedParams(), {bls.compute_public_key(requester): 301,
                                                             bls.compute_public_key(prover_key): 1000,
                                                             bls.compute_public_key(second): 1000})
    state = R.process_post(state, posting, now=1)
    state = _seal(state, task_id, prover_key, first.read_claim(), now=2)
    state = _seal(state, task_id, second, claim2, now=3)
    state = R.process_claim(state, first.read_claim(), now=101)
    with pytest.raises(R.InvalidTransition):
        R.process_claim(state, first.read_claim(), now=102)  # one claim per prover
    state = R.process_claim(state, claim2, now=103)
    assert state.tasks[task_id].status == R.PAID and not state.tasks[task_id].games
    assert state.balances[bls.compute_public_key(second)] == 1150
    assert state.balances[bls.compute_public_key(requester)] == 1  # the indivisible remainder


def test_pol_answer_publishes_on_demand_roots_that_match_the_commitment(proof_dir: Path) -> None:
    from pol.cli import main
    from verifier.audit import audit_segment

    assert main(["answer", str(proof_dir), "--segment", "1", "--trace-step", "12", "--json"]) == 0
    pdir = ProofDir(proof_dir)
    roots = [e.root for e in read_transcript(pdir, pdir.read_task())]
    assert pdir.step_roots(1).read_bytes()[-32:] == roots[2]
    from prover.steps import read_step_trace

    tr = read_step_trace(pdir, 12)
    assert tr is not None and tr.entries[0]["op"] == "state" and tr.entries[-1]["op"] == "state_root"
    report = audit_segment(proof_dir, 1)
    assert report.segment_ok and report.step_roots_match_commitment is True and report.game is None


def test_audit_treats_a_forged_published_trace_as_no_answer(faked_dir: Path, tmp_path: Path) -> None:
    import shutil

    from prover.steps import get_trace_path, publish_answers
    from verifier.audit import audit_segment

    pdir = tmp_path / "proof"
    shutil.copytree(faked_dir, pdir)
    publish_answers(ProofDir(pdir), SEGMENT, trace_steps=[FAKED_STEP], fake=fake_first_matmul)
    path = get_trace_path(ProofDir(pdir), FAKED_STEP)
    path.write_bytes(path.read_bytes()[:-7])  # a truncated answer
    report = audit_segment(pdir, SEGMENT)
    assert report.first_bad_step == FAKED_STEP + 1 and report.operator is None
    assert report.game is not None and report.game["winner"] == D.CHALLENGER
    assert "prover did not move in time" in report.game["reason"]
