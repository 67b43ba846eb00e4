"""Every message of the dispute game is validated (protocol/dispute.py, protocol/optrace.py, SPEC.md §17).

Pure tests: synthetic roots and a synthetic three-entry trace, real BLS signatures.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from protocol import bls
from protocol import dispute as D
from protocol.encoding import encode_canonical
from protocol.merkle import (
    EMPTY_ROOT,
    compute_leaf_hash,
    compute_merkle_proof,
    compute_merkle_root,
    compute_root_from_leaf_hashes,
)
from protocol.optrace import append_peak, compute_peaks, compute_root_from_peaks, encode_entry, get_skeleton

PROVER_SK = bls.compute_secret_key(b"dispute test prover".ljust(32, b"."))
CHALL_SK = bls.compute_secret_key(b"dispute test challenger".ljust(32, b"."))
OTHER_SK = bls.compute_secret_key(b"dispute test bystander".ljust(32, b"."))
PROVER, CHALL = bls.compute_public_key(PROVER_SK), bls.compute_public_key(CHALL_SK)
T0 = 1_000


def h(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


ROOTS = [h(f"root{i}") for i in range(5)]  # checkpoints 0..4, one step per segment below


def claim_view(k: int = 1) -> D.ClaimView:
    return D.ClaimView(h("claim"), PROVER, compute_merkle_root(ROOTS), len(ROOTS), k)


def open_body(segment: int = 2, **over: Any) -> dict[str, Any]:
    named, segment = segment, min(segment, len(ROOTS) - 2)  # paths of an existing segment
    body = {"claim_id": h("claim"), "segment": named, "prover": PROVER, "challenger": CHALL,
            "start_root": ROOTS[segment], "start_root_path": list(compute_merkle_proof(ROOTS, segment).path),
            "end_root": ROOTS[segment + 1], "end_root_path": list(compute_merkle_proof(ROOTS, segment + 1).path),
            "challenger_root": h("honest end"), "clock_s": 100}
    body.update(over)
    return body


def open_game(k: int = 1, **over: Any) -> D.Game:
    body = open_body(**over)
    return D.process_open(D.compute_signed_move(CHALL_SK, D.compute_game_id(body), 0, "open", body), claim_view(k), T0)


def move(game: D.Game, kind: str, body: dict[str, Any], sk: bytes | None = None, round_: int | None = None) -> D.Move:
    if sk is None:
        sk = PROVER_SK if D.get_expected_move(game)[0] == D.PROVER else CHALL_SK  # type: ignore[index]
    return D.compute_signed_move(sk, game.game_id, game.round if round_ is None else round_, kind, body)


# A synthetic trace of the step 2 -> 3: the state, one relu, the new state's root.
W, Y = h("w tensor"), h("relu out")
E0 = {"i": 0, "op": "state", "args": [["param/w"]], "in": [], "out": [[ROOTS[2], "root", []], [W, "f32", [2]]]}
E1 = {"i": 1, "op": "relu.forward", "args": [{"t": 0, "grad": False}], "in": [[W, "f32", [2], 0, 1]],
      "out": [[Y, "f32", [2]]]}
E2 = {"i": 2, "op": "state_root", "args": [["param/w"]], "in": [[Y, "f32", [2], 1, 0]],
      "out": [[ROOTS[3], "root", []]]}
ENC = [encode_entry(e) for e in (E0, E1, E2)]
HASHES = [compute_leaf_hash(e) for e in ENC]


def trace_body(enc: list[bytes] = ENC) -> dict[str, Any]:
    hs = [compute_leaf_hash(e) for e in enc]
    from protocol.merkle import compute_proof_from_leaf_hashes as proof

    return {"n": len(enc), "root": compute_merkle_root(enc), "first": enc[0], "first_path": list(proof(hs, 0).path),
            "last": enc[-1], "last_path": list(proof(hs, len(enc) - 1).path)}


def to_reveal() -> D.Game:
    """Play to the reveal of entry 1: the challenger agrees with prefix 1, disputes prefix 2."""
    g = open_game()
    g = D.process_move(g, move(g, "trace", trace_body()), T0 + 1)
    assert (g.a, g.b) == (0, 3)
    g = D.process_move(g, move(g, "prefix", {"length": 1, "root": compute_merkle_root(ENC[:1])}), T0 + 2)
    g = D.process_move(g, move(g, "choose", {"agree": True}), T0 + 3)
    g = D.process_move(g, move(g, "prefix", {"length": 2, "root": compute_merkle_root(ENC[:2])}), T0 + 4)
    g = D.process_move(g, move(g, "choose", {"agree": False}), T0 + 5)
    assert (g.a, g.b) == (1, 2) and D.get_expected_move(g) == (D.PROVER, "reveal")
    return g


def reveal_body(**over: Any) -> dict[str, Any]:
    body = {"entry": ENC[1], "peaks": list(compute_peaks(HASHES[:1])),
            "inputs": [{"entry": ENC[0], "path": list(compute_merkle_proof(ENC[:1], 0).path)}]}
    body.update(over)
    return body


# --- the trace commitment ------------------------------------------------------------------------

@pytest.mark.parametrize("n", range(0, 40))
def test_peaks_fold_to_the_rfc6962_root_and_extend_by_one_leaf(n: int) -> None:
    leaves = [h(f"leaf{i}") for i in range(n + 1)]
    peaks = compute_peaks(leaves[:n])
    assert compute_root_from_peaks(peaks) == (compute_root_from_leaf_hashes(leaves[:n]) if n else EMPTY_ROOT)
    assert compute_root_from_peaks(append_peak(peaks, n, leaves[n])) == compute_root_from_leaf_hashes(leaves)


def test_peaks_of_a_known_tree_match_an_independent_construction() -> None:
    # 3 leaves: RFC 6962 root = node(node(l0, l1), l2); the peaks are node(l0, l1) and l2.
    l0, l1, l2 = (compute_leaf_hash(bytes([i])) for i in range(3))
    node = lambda a, b: hashlib.sha256(b"\x01" + a + b).digest()  # noqa: E731
    assert compute_peaks([l0, l1, l2]) == [node(l0, l1), l2]
    assert compute_root_from_peaks([node(l0, l1), l2]) == node(node(l0, l1), l2)


# --- opening -------------------------------------------------------------------------------------

def test_open_starts_the_step_bisection() -> None:
    g = open_game(k=4)
    assert (g.lo, g.hi, g.round, g.phase) == (8, 12, 1, D.PHASE_STEPS)
    assert g.agreed_root == ROOTS[2] and g.disputed_root == ROOTS[3]
    assert D.get_expected_move(g) == (D.PROVER, "root") and g.mid == 10


@pytest.mark.parametrize("over, reason", [
    ({"challenger_root": ROOTS[3]}, "nothing is disputed"),
    ({"segment": 4}, "does not exist"),
    ({"end_root": h("forged")}, "end_root_path"),
    ({"start_root_path": []}, "start_root_path"),
    ({"prover": CHALL}, "another prover"),
    ({"clock_s": 0}, "clock_s"),
    ({"claim_id": h("other claim")}, "another claim"),
])
def test_bad_opens_are_refused(over: dict[str, Any], reason: str) -> None:
    with pytest.raises(D.InvalidMove, match=reason):
        open_game(**over)


def test_open_needs_the_challengers_signature_and_its_own_id() -> None:
    body = open_body()
    forged = D.compute_signed_move(OTHER_SK, D.compute_game_id(body), 0, "open", body)
    with pytest.raises(D.InvalidMove, match="signed by the challenger"):
        D.process_open(forged, claim_view(), T0)
    wrong_id = D.compute_signed_move(CHALL_SK, h("x"), 0, "open", body)
    with pytest.raises(D.InvalidMove, match="game_id"):
        D.process_open(wrong_id, claim_view(), T0)
    good = D.compute_signed_move(CHALL_SK, D.compute_game_id(body), 0, "open", body)
    tampered = replace(good, signature=D.compute_signed_move(CHALL_SK, good.game_id, 0, "open",
                                                             open_body(clock_s=99)).signature)
    with pytest.raises(D.InvalidMove, match="signature"):
        D.process_open(tampered, claim_view(), T0)
    self_body = open_body(challenger=PROVER)
    with pytest.raises(D.InvalidMove, match="cannot challenge itself"):
        D.process_open(D.compute_signed_move(PROVER_SK, D.compute_game_id(self_body), 0, "open", self_body),
                       claim_view(), T0)


# --- rounds, turns, signatures, clocks -----------------------------------------------------------

def test_step_bisection_halves_and_moves_are_checked() -> None:
    g = open_game(k=4)
    m1 = move(g, "root", {"step": 10, "root": h("r10")})
    g1 = D.process_move(g, m1, T0 + 5)
    assert g1.pending == h("r10") and D.get_expected_move(g1) == (D.CHALLENGER, "choose")
    with pytest.raises(D.InvalidMove, match="round 1"):  # a replayed move
        D.process_move(g1, m1, T0 + 6)
    with pytest.raises(D.InvalidMove, match="signed by the challenger"):
        D.process_move(g1, move(g1, "choose", {"agree": True}, sk=PROVER_SK), T0 + 6)
    with pytest.raises(D.InvalidMove, match="expects a choose"):
        D.process_move(g1, move(g1, "root", {"step": 10, "root": h("x")}, sk=CHALL_SK), T0 + 6)
    with pytest.raises(D.InvalidMove, match="round 7"):
        D.process_move(g1, move(g1, "choose", {"agree": True}, round_=7), T0 + 6)
    bad_sig = replace(move(g1, "choose", {"agree": True}), body={"agree": False})
    with pytest.raises(D.InvalidMove, match="signature"):
        D.process_move(g1, bad_sig, T0 + 6)
    with pytest.raises(D.InvalidMove, match="agree must be a boolean"):
        D.process_move(g1, move(g1, "choose", {"agree": 1}), T0 + 6)
    g2 = D.process_move(g1, move(g1, "choose", {"agree": False}), T0 + 6)
    assert (g2.lo, g2.hi, g2.disputed_root) == (8, 10, h("r10"))
    with pytest.raises(D.InvalidMove, match="midpoint"):
        D.process_move(g2, move(g2, "root", {"step": 10, "root": h("x")}), T0 + 7)
    g3 = D.process_move(g2, move(g2, "root", {"step": 9, "root": h("r9")}), T0 + 7)
    g4 = D.process_move(g3, move(g3, "choose", {"agree": True}), T0 + 8)
    assert (g4.lo, g4.hi, g4.agreed_root) == (9, 10, h("r9")) and D.get_expected_move(g4) == (D.PROVER, "trace")
    assert g4.prover_clock == 100 - 5 - 1 and g4.challenger_clock == 100 - 1 - 1  # chess clocks


def test_moves_for_another_game_or_dated_backwards_are_refused() -> None:
    g = open_game(k=4)
    other = D.compute_signed_move(PROVER_SK, h("other game"), 1, "root", {"step": 10, "root": h("r")})
    with pytest.raises(D.InvalidMove, match="another game"):
        D.process_move(g, other, T0 + 1)
    with pytest.raises(D.InvalidMove, match="before the previous"):
        D.process_move(g, move(g, "root", {"step": 10, "root": h("r")}), T0 - 1)


def test_late_answers_are_refused_and_the_silent_party_loses() -> None:
    g = open_game(k=4)
    g = D.process_move(g, move(g, "root", {"step": 10, "root": h("r")}), T0 + 30)
    # The challenger has its full 100 s; the prover spent 30 of its own.
    assert D.get_deadline(g) == T0 + 30 + 100
    with pytest.raises(D.LateMove):
        D.process_move(g, move(g, "choose", {"agree": True}), T0 + 131)
    with pytest.raises(D.InvalidTransition):
        D.process_timeout(g, T0 + 130)
    done = D.process_timeout(g, T0 + 131)
    assert done.winner == D.PROVER and "challenger did not move" in done.reason
    with pytest.raises(D.InvalidMove, match="no move is expected"):
        D.process_move(done, move(g, "choose", {"agree": True}), T0 + 131)


# --- wire format ---------------------------------------------------------------------------------

def test_moves_round_trip_and_malformed_ones_are_refused() -> None:
    g = open_game(k=4)
    m = move(g, "root", {"step": 10, "root": h("r")})
    assert D.decode_move(D.encode_move(m)) == m
    doc = {"game_id": m.game_id, "round": 1, "kind": "root", "body": m.body, "signer": m.signer,
           "signature": m.signature}
    with pytest.raises(D.InvalidMove, match="unknown move kind"):
        D.decode_move(encode_canonical(dict(doc, kind="resign")))
    with pytest.raises(D.InvalidMove, match="exactly"):
        D.decode_move(encode_canonical(dict(doc, body={"step": 10})))
    with pytest.raises(D.InvalidMove, match="exactly"):
        D.decode_move(encode_canonical(dict(doc, extra=1)))
    with pytest.raises(D.InvalidMove, match="does not decode"):
        D.decode_move(D.encode_move(m)[:-3])
    with pytest.raises(D.InvalidMove, match="signature must be 96"):
        D.decode_move(encode_canonical(dict(doc, signature=b"\x00" * 95)))
    import msgpack
    noncanon = msgpack.packb(dict(reversed(list(doc.items()))), use_bin_type=True)
    with pytest.raises(D.InvalidMove, match="not canonical"):
        D.decode_move(noncanon)


# --- the operator phase --------------------------------------------------------------------------

def test_trace_must_bind_the_agreed_and_the_disputed_root() -> None:
    g = open_game()
    assert D.get_expected_move(g) == (D.PROVER, "trace")  # one-step segment: straight to the trace
    wrong_first = dict(E0, out=[[h("other"), "root", []], [W, "f32", [2]]])
    with pytest.raises(D.InvalidMove, match="entry 0 must be the state op"):
        D.process_move(g, move(g, "trace", trace_body([encode_entry(wrong_first)] + ENC[1:])), T0 + 1)
    wrong_last = dict(E2, out=[[h("honest"), "root", []]])
    with pytest.raises(D.InvalidMove, match="disputed root"):
        D.process_move(g, move(g, "trace", trace_body(ENC[:2] + [encode_entry(wrong_last)])), T0 + 1)
    body = trace_body()
    with pytest.raises(D.InvalidMove, match="last"):
        D.process_move(g, move(g, "trace", dict(body, last_path=body["first_path"])), T0 + 1)
    with pytest.raises(D.InvalidMove, match="at least"):
        D.process_move(g, move(g, "trace", dict(body, n=1)), T0 + 1)
    with pytest.raises(D.InvalidMove, match="first"):
        D.process_move(g, move(g, "trace", dict(body, first=b"\x93garbage")), T0 + 1)


def test_a_valid_reveal_waits_for_the_referee() -> None:
    g = D.process_move(to_reveal(), move(to_reveal(), "reveal", reveal_body()), T0 + 6)
    assert g.phase == D.PHASE_SETTLE and g.revealed == ENC[1] and D.get_expected_move(g) is None


@pytest.mark.parametrize("over, reason", [
    ({"entry": ENC[2]}, "must be entry 1"),
    ({"peaks": []}, "peaks do not fold"),
    ({"peaks": [h("x")]}, "peaks do not fold"),
    ({"inputs": []}, "one source proof per input"),
    ({"inputs": [None]}, "source proof must be a map"),
    ({"inputs": [{"entry": ENC[0], "path": [h("x")]}]}, "input 0 source"),
    ({"entry": encode_entry(dict(E1, args=[{"t": 0, "grad": True}]))}, "not the prover's root"),
    ({"entry": encode_entry(dict(E1, **{"in": [[W, "f32", [2], None, None]]}))}, "not the prover's root"),
])
def test_bad_reveals_are_refused(over: dict[str, Any], reason: str) -> None:
    g = to_reveal()
    with pytest.raises(D.InvalidMove, match=reason):
        D.process_move(g, move(g, "reveal", reveal_body(**over)), T0 + 6)


def test_reveal_whose_input_is_not_the_named_output_is_refused() -> None:
    # A prover whose trace feeds relu a value that no agreed entry produced cannot prove its input.
    fake_in = dict(E1, **{"in": [[h("made up"), "f32", [2], 0, 1]]})
    enc = [ENC[0], encode_entry(fake_in), ENC[2]]
    g = open_game()
    g = D.process_move(g, move(g, "trace", trace_body(enc)), T0 + 1)
    g = D.process_move(g, move(g, "prefix", {"length": 1, "root": compute_merkle_root(enc[:1])}), T0 + 2)
    g = D.process_move(g, move(g, "choose", {"agree": True}), T0 + 3)
    g = D.process_move(g, move(g, "prefix", {"length": 2, "root": compute_merkle_root(enc[:2])}), T0 + 4)
    g = D.process_move(g, move(g, "choose", {"agree": False}), T0 + 5)
    with pytest.raises(D.InvalidMove, match="does not equal output 1 of entry 0"):
        D.process_move(g, move(g, "reveal", reveal_body(entry=enc[1])), T0 + 6)


def test_settlement_executes_one_operator() -> None:
    g = D.process_move(to_reveal(), move(to_reveal(), "reveal", reveal_body()), T0 + 6)
    skeleton = get_skeleton(E1)
    won = D.process_settlement(g, skeleton, [Y])
    assert won.winner == D.PROVER and D.get_dispute_verdict(won) == 0  # the dispute failed
    lost = D.process_settlement(g, skeleton, [h("honest relu")])
    assert lost.winner == D.CHALLENGER and "relu.forward" in lost.reason
    assert D.get_dispute_verdict(lost) == 1  # upheld: the prover's root is false
    with pytest.raises(D.InvalidTransition):
        D.get_dispute_verdict(g)
    other_op = dict(skeleton, op="tanh.forward")
    assert D.process_settlement(g, other_op, [Y]).winner == D.CHALLENGER
    with pytest.raises(D.InvalidTransition):
        D.process_settlement(to_reveal(), skeleton, [Y])


def test_mutated_moves_never_raise_anything_but_invalid_input() -> None:
    import random

    from protocol.errors import InvalidInput

    rng = random.Random(7)
    g = open_game()
    valid = [D.encode_move(move(g, "trace", trace_body()))]
    g_rev = to_reveal()
    valid.append(D.encode_move(move(g_rev, "reveal", reveal_body())))
    for _ in range(300):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            m = D.decode_move(bytes(data))
            D.process_move(g if m.kind == "trace" else g_rev, m, T0 + 6)
        except InvalidInput:
            pass


def test_signed_moves_with_hostile_bodies_are_refused_cleanly() -> None:
    """A party signs whatever it likes: wrong types in every field must be refused, never crash."""
    import random

    from protocol.errors import InvalidInput

    rng = random.Random(11)
    pool: list[Any] = [None, -1, 0, 3, 2**40, "x", b"", b"\x00" * 32, [], {}, [b"\x00" * 32], [None], 1.5, True,
                       ENC[0], [{"entry": 1, "path": 2}], {"entry": ENC[0], "path": []}]
    g_trace, g_rev = open_game(), to_reveal()
    g_steps = open_game(k=4)
    cases = [(g_steps, "root", ["step", "root"]), (g_trace, "trace", sorted(D._BODY_KEYS["trace"])),
             (g_rev, "reveal", ["entry", "peaks", "inputs"])]
    for _ in range(150):
        g, kind, keys = rng.choice(cases)
        good = {"root": {"step": 10, "root": h("r")}, "trace": trace_body(), "reveal": reveal_body()}[kind]
        body = dict(good)
        for key in rng.sample(keys, rng.randint(1, len(keys))):
            body[key] = rng.choice(pool)
        try:
            D.process_move(g, move(g, kind, body), T0 + 6)
        except InvalidInput:
            pass
