"""The dispute game (SPEC.md §17): bisection to one step, then to one operator application.

A challenger who disagrees with a prover's segment opens a game. In each round the prover
publishes the state root at the midpoint of the interval still in dispute (it computes it
on demand by replaying from the segment's start checkpoint) and the challenger says whether
it agrees; the interval halves until one step is left. The prover then commits to the
operator trace of that step (§17.3) and the same halving runs over trace prefixes until one
operator application is left. The prover reveals that entry with proofs that each of its
inputs is an agreed earlier output; a referee executes that one operator and compares.

Every move is a signed, canonical message that names its game and round, so rounds map one
to one onto transactions of a settlement contract. Time is an argument: each party has a
chess clock; the party whose clock runs out loses (``process_timeout``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from . import bls
from .constants import BLS_PUBKEY_LEN, BLS_SIGNATURE_LEN, HASH_LEN, VERDICT_ACCEPT, VERDICT_REJECT, Digest
from .encoding import decode_canonical, encode_canonical
from .errors import DecodeError, InvalidInput, InvalidProof, InvalidSignature, InvalidTransition
from .merkle import EMPTY_ROOT, MerkleProof, compute_root_from_proof
from .optrace import (
    MAX_TRACE_ENTRIES,
    OP_STATE,
    OP_STATE_ROOT,
    append_peak,
    compute_entry_hash,
    compute_root_from_peaks,
    decode_entry,
    get_skeleton,
)

DOMAIN_DISPUTE_GAME: bytes = b"pol/v1/dispute-game"  # || canonical open body: the game id
DOMAIN_DISPUTE_MOVE: bytes = b"pol/v1/dispute-move"  # || game_id || canonical{round, kind, body}
MAX_MOVE_BYTES = 128 * 1024  # one gossip message (SPEC.md §16.6)
MAX_PATH = 64
MIN_CLOCK_S = 1

PROVER = "prover"
CHALLENGER = "challenger"
PHASE_STEPS, PHASE_OPS, PHASE_SETTLE, PHASE_DONE = "steps", "ops", "settle", "done"


class InvalidMove(InvalidInput):
    """A game move that is malformed, out of turn, late, badly signed or against the rules."""


class LateMove(InvalidMove):
    """A move sent after its party's clock ran out; the game is lost by timeout instead."""


@dataclass(frozen=True)
class Move:
    game_id: bytes
    round: int
    kind: str
    body: dict[str, Any]
    signer: bytes
    signature: bytes


@dataclass(frozen=True)
class ClaimView:
    """What an ``open`` move is checked against: the disputed claim as registered."""

    claim_id: bytes
    prover: bytes
    commitment: bytes
    num_checkpoints: int
    checkpoint_interval: int


@dataclass(frozen=True)
class Game:
    game_id: bytes
    claim_id: bytes
    segment: int
    prover: bytes
    challenger: bytes
    clock_s: int
    round: int  # the round number the next move must carry
    phase: str
    lo: int  # step whose root both agree on
    hi: int  # step whose root they dispute
    agreed_root: bytes  # root after step lo
    disputed_root: bytes  # the prover's root after step hi
    pending: bytes | None  # a root/prefix root the prover posted, awaiting the challenger
    trace_n: int
    a: int  # trace prefix length both agree on
    b: int  # trace prefix length in dispute
    agreed_prefix: bytes
    disputed_prefix: bytes
    revealed: bytes | None  # the encoded entry a, once the prover revealed it
    turn_since: int
    prover_clock: int
    challenger_clock: int
    winner: str | None = None
    reason: str = ""

    @property
    def mid(self) -> int:
        return (self.lo + self.hi) // 2 if self.phase == PHASE_STEPS else (self.a + self.b) // 2


# --- encoding and signatures -------------------------------------------------------------------

def compute_move_message(game_id: bytes, round_: int, kind: str, body: dict[str, Any]) -> bytes:
    return DOMAIN_DISPUTE_MOVE + game_id + encode_canonical({"round": round_, "kind": kind, "body": body})


def compute_game_id(open_body: dict[str, Any]) -> Digest:
    return Digest(hashlib.sha256(DOMAIN_DISPUTE_GAME + encode_canonical(open_body)).digest())


def compute_signed_move(secret_key: bytes, game_id: bytes, round_: int, kind: str, body: dict[str, Any]) -> Move:
    signature = bls.sign(secret_key, compute_move_message(game_id, round_, kind, body))
    return Move(game_id, round_, kind, body, bls.compute_public_key(secret_key), signature)


def encode_move(move: Move) -> bytes:
    data = encode_canonical({"game_id": move.game_id, "round": move.round, "kind": move.kind, "body": move.body,
                             "signer": move.signer, "signature": move.signature})
    if len(data) > MAX_MOVE_BYTES:
        raise InvalidMove(f"move of {len(data)} bytes exceeds {MAX_MOVE_BYTES}")
    return data


def _bytes(v: Any, n: int, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != n:
        raise InvalidMove(f"{what} must be {n} bytes")
    return v


def _uint(v: Any, what: str, limit: int = 2**63) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < limit:
        raise InvalidMove(f"{what} must be an unsigned integer below {limit}")
    return v


def _path(v: Any, what: str) -> tuple[Digest, ...]:
    if not isinstance(v, list) or len(v) > MAX_PATH:
        raise InvalidMove(f"{what} must be a list of at most {MAX_PATH} hashes")
    return tuple(Digest(_bytes(x, HASH_LEN, what)) for x in v)


def decode_move(data: bytes) -> Move:
    try:
        doc = decode_canonical(data, MAX_MOVE_BYTES)
    except DecodeError as exc:
        raise InvalidMove(f"move does not decode: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"game_id", "round", "kind", "body", "signer", "signature"}:
        raise InvalidMove("move must be a map with exactly game_id, round, kind, body, signer, signature")
    if not isinstance(doc["kind"], str) or doc["kind"] not in _BODY_KEYS:
        raise InvalidMove(f"unknown move kind {doc['kind']!r}")
    if not isinstance(doc["body"], dict) or set(doc["body"]) != _BODY_KEYS[doc["kind"]]:
        raise InvalidMove(f"{doc['kind']} body must have exactly {sorted(_BODY_KEYS[doc['kind']])}")
    return Move(_bytes(doc["game_id"], HASH_LEN, "game_id"), _uint(doc["round"], "round"), doc["kind"], doc["body"],
                _bytes(doc["signer"], BLS_PUBKEY_LEN, "signer"),
                _bytes(doc["signature"], BLS_SIGNATURE_LEN, "signature"))


_BODY_KEYS: dict[str, set[str]] = {
    "open": {"claim_id", "segment", "prover", "challenger", "start_root", "start_root_path", "end_root",
             "end_root_path", "challenger_root", "clock_s"},
    "root": {"step", "root"},
    "choose": {"agree"},
    "trace": {"n", "root", "first", "first_path", "last", "last_path"},
    "prefix": {"length", "root"},
    "reveal": {"entry", "peaks", "inputs"},
}


def _check_signature(move: Move) -> None:
    msg = compute_move_message(move.game_id, move.round, move.kind, move.body)
    try:
        bls.validate_signature(move.signer, msg, move.signature, f"{move.kind} move of round {move.round}")
    except InvalidSignature as exc:
        raise InvalidMove(str(exc)) from None


# --- opening -----------------------------------------------------------------------------------

def process_open(move: Move, claim: ClaimView, now: int) -> Game:
    """Start a game from the challenger's signed ``open`` move (round 0)."""
    if move.kind != "open" or move.round != 0:
        raise InvalidMove("a game starts with an open move in round 0")
    b = move.body
    if set(b) != _BODY_KEYS["open"]:
        raise InvalidMove(f"open body must have exactly {sorted(_BODY_KEYS['open'])}")
    if move.game_id != compute_game_id(b):
        raise InvalidMove("game_id is not the hash of the open body")
    if _bytes(b["claim_id"], HASH_LEN, "claim_id") != claim.claim_id:
        raise InvalidMove("open names another claim")
    if _bytes(b["prover"], BLS_PUBKEY_LEN, "prover") != claim.prover:
        raise InvalidMove("open names another prover than the claim's")
    challenger = _bytes(b["challenger"], BLS_PUBKEY_LEN, "challenger")
    if challenger == claim.prover:
        raise InvalidMove("a prover cannot challenge itself")
    if move.signer != challenger:
        raise InvalidMove("open must be signed by the challenger it names")
    segments = claim.num_checkpoints - 1
    segment = _uint(b["segment"], "segment")
    if segment >= segments:
        raise InvalidMove(f"segment {segment} does not exist; the claim has {segments}")
    clock_s = _uint(b["clock_s"], "clock_s", 2**32)
    if clock_s < MIN_CLOCK_S:
        raise InvalidMove(f"clock_s must be at least {MIN_CLOCK_S}")
    start_root = _bytes(b["start_root"], HASH_LEN, "start_root")
    end_root = _bytes(b["end_root"], HASH_LEN, "end_root")
    challenger_root = _bytes(b["challenger_root"], HASH_LEN, "challenger_root")
    if challenger_root == end_root:
        raise InvalidMove("the challenger's end root equals the prover's: nothing is disputed")
    for index, root, key in ((segment, start_root, "start_root_path"), (segment + 1, end_root, "end_root_path")):
        proof = MerkleProof(index, claim.num_checkpoints, _path(b[key], key))
        try:
            found = compute_root_from_proof(root, proof)
        except InvalidProof as exc:
            raise InvalidMove(f"{key}: {exc}") from None
        if found != claim.commitment:
            raise InvalidMove(f"{key} does not lead to the claim's commitment")
    _check_signature(move)
    k = claim.checkpoint_interval
    return Game(
        game_id=move.game_id, claim_id=claim.claim_id, segment=segment, prover=claim.prover, challenger=challenger,
        clock_s=clock_s, round=1, phase=PHASE_STEPS, lo=segment * k, hi=(segment + 1) * k, agreed_root=start_root,
        disputed_root=end_root, pending=None, trace_n=0, a=0, b=0, agreed_prefix=EMPTY_ROOT,
        disputed_prefix=EMPTY_ROOT, revealed=None, turn_since=now, prover_clock=clock_s, challenger_clock=clock_s,
    )


# --- whose turn --------------------------------------------------------------------------------

def get_expected_move(game: Game) -> tuple[str, str] | None:
    """(party, kind) of the next move, or None once the prover has revealed or the game is over."""
    if game.phase == PHASE_STEPS:
        if game.pending is not None:
            return CHALLENGER, "choose"
        return (PROVER, "root") if game.hi - game.lo > 1 else (PROVER, "trace")
    if game.phase == PHASE_OPS:
        if game.pending is not None:
            return CHALLENGER, "choose"
        return (PROVER, "prefix") if game.b - game.a > 1 else (PROVER, "reveal")
    return None


def _clock(game: Game, party: str) -> int:
    return game.prover_clock if party == PROVER else game.challenger_clock


def get_deadline(game: Game) -> int | None:
    """The time after which the party to move has lost, or None when no party is to move."""
    expected = get_expected_move(game)
    return None if expected is None else game.turn_since + _clock(game, expected[0])


def process_timeout(game: Game, now: int) -> Game:
    """Decide a game whose party to move let its clock run out."""
    deadline = get_deadline(game)
    if deadline is None or game.winner is not None:
        raise InvalidTransition("no party is to move in this game")
    if now <= deadline:
        raise InvalidTransition(f"the clock of the party to move runs until {deadline}, now is {now}")
    loser = get_expected_move(game)[0]  # type: ignore[index]
    winner = CHALLENGER if loser == PROVER else PROVER
    return replace(game, phase=PHASE_DONE, winner=winner, reason=f"the {loser} did not move in time (round {game.round})")


# --- moves -------------------------------------------------------------------------------------

def validate_move(game: Game, move: Move, now: int) -> str:
    """Everything a move must satisfy besides its body; returns the mover's party."""
    expected = get_expected_move(game)
    if expected is None:
        raise InvalidMove(f"game is in phase {game.phase}: no move is expected")
    party, kind = expected
    if move.game_id != game.game_id:
        raise InvalidMove("move is for another game")
    if move.round != game.round:
        raise InvalidMove(f"move is for round {move.round}, the game is at round {game.round}")
    if move.kind != kind:
        raise InvalidMove(f"round {game.round} expects a {kind} move from the {party}, got {move.kind}")
    if move.signer != (game.prover if party == PROVER else game.challenger):
        raise InvalidMove(f"round {game.round} must be signed by the {party}")
    if now < game.turn_since:
        raise InvalidMove("move is dated before the previous one")
    if now > game.turn_since + _clock(game, party):
        raise LateMove(f"the {party}'s clock ran out at {game.turn_since + _clock(game, party)}; now is {now}")
    _check_signature(move)
    return party


def process_move(game: Game, move: Move, now: int) -> Game:
    """Apply one signed move; raises ``InvalidMove`` and changes nothing if it breaks a rule."""
    party = validate_move(game, move, now)
    spent = now - game.turn_since
    g = replace(game, round=game.round + 1, turn_since=now,
                prover_clock=game.prover_clock - (spent if party == PROVER else 0),
                challenger_clock=game.challenger_clock - (spent if party == CHALLENGER else 0))
    b = move.body
    if move.kind == "root":
        if _uint(b["step"], "step") != game.mid:
            raise InvalidMove(f"the root must be for step {game.mid}, the midpoint of {game.lo}..{game.hi}")
        return replace(g, pending=_bytes(b["root"], HASH_LEN, "root"))
    if move.kind == "prefix":
        if _uint(b["length"], "length") != game.mid:
            raise InvalidMove(f"the prefix must have length {game.mid}, the midpoint of {game.a}..{game.b}")
        return replace(g, pending=_bytes(b["root"], HASH_LEN, "root"))
    if move.kind == "choose":
        agree = b["agree"]
        if not isinstance(agree, bool):
            raise InvalidMove("agree must be a boolean")
        assert game.pending is not None
        if game.phase == PHASE_STEPS:
            if agree:
                return replace(g, lo=game.mid, agreed_root=game.pending, pending=None)
            return replace(g, hi=game.mid, disputed_root=game.pending, pending=None)
        if agree:
            return replace(g, a=game.mid, agreed_prefix=game.pending, pending=None)
        return replace(g, b=game.mid, disputed_prefix=game.pending, pending=None)
    if move.kind == "trace":
        return _process_trace(g, b)
    return _process_reveal(g, b)


def _entry_at(data: Any, index: int, size: int, path: Any, root: bytes, what: str) -> dict[str, Any]:
    if not isinstance(data, bytes):
        raise InvalidMove(f"{what} must be an encoded entry")
    try:
        entry = decode_entry(data)
        found = compute_root_from_proof(data, MerkleProof(index, size, _path(path, f"{what} path")))
    except (DecodeError, InvalidProof) as exc:
        raise InvalidMove(f"{what}: {exc}") from None
    if found != root:
        raise InvalidMove(f"{what} is not entry {index} under the committed trace root")
    if entry["i"] != index:
        raise InvalidMove(f"{what} says it is entry {entry['i']}, expected {index}")
    return entry


def _process_trace(g: Game, b: dict[str, Any]) -> Game:
    n = _uint(b["n"], "n", MAX_TRACE_ENTRIES + 1)
    if n < 2:
        raise InvalidMove("a step's trace has at least the state entry and the state-root entry")
    root = _bytes(b["root"], HASH_LEN, "root")
    first = _entry_at(b["first"], 0, n, b["first_path"], root, "first")
    last = _entry_at(b["last"], n - 1, n, b["last_path"], root, "last")
    if first["op"] != OP_STATE or not first["out"] or first["out"][0] != [g.agreed_root, "root", []]:
        raise InvalidMove("entry 0 must be the state op whose first output is the agreed root")
    if last["op"] != OP_STATE_ROOT or len(last["out"]) != 1 or last["out"][0] != [g.disputed_root, "root", []]:
        raise InvalidMove("the last entry must be the state_root op that outputs the disputed root")
    return replace(g, phase=PHASE_OPS, trace_n=n, a=0, b=n, agreed_prefix=EMPTY_ROOT, disputed_prefix=root)


def _process_reveal(g: Game, b: dict[str, Any]) -> Game:
    data = b["entry"]
    if not isinstance(data, bytes):
        raise InvalidMove("entry must be an encoded trace entry")
    try:
        entry = decode_entry(data)
    except DecodeError as exc:
        raise InvalidMove(f"entry: {exc}") from None
    if entry["i"] != g.a:
        raise InvalidMove(f"the revealed entry must be entry {g.a}, got {entry['i']}")
    peaks = _path(b["peaks"], "peaks")
    try:
        if compute_root_from_peaks(peaks) != g.agreed_prefix or len(peaks) != bin(g.a).count("1"):
            raise InvalidMove(f"peaks do not fold to the agreed root of the first {g.a} entries")
        extended = compute_root_from_peaks(append_peak(peaks, g.a, compute_entry_hash(data)))
    except InvalidProof as exc:
        raise InvalidMove(f"peaks: {exc}") from None
    if extended != g.disputed_prefix:
        raise InvalidMove(f"agreed prefix plus this entry is not the prover's root of the first {g.a + 1} entries")
    if g.a == 0 and entry["op"] != OP_STATE:
        raise InvalidMove("entry 0 must be the state op")
    inputs = b["inputs"]
    if not isinstance(inputs, list) or len(inputs) != len(entry["in"]):
        raise InvalidMove("inputs must give one source proof per input of the entry")
    for j, (ref, src) in enumerate(zip(entry["in"], inputs)):
        h, m, o = ref[0], ref[3], ref[4]
        if m is None:
            raise InvalidMove(f"input {j} names no source: its value cannot be checked against agreed outputs")
        if not isinstance(src, dict) or set(src) != {"entry", "path"}:
            raise InvalidMove(f"input {j}: source proof must be a map with entry and path")
        source = _entry_at(src["entry"], m, g.a, src["path"], g.agreed_prefix, f"input {j} source")
        outs = source["out"]
        if o >= len(outs) or outs[o] is None or outs[o][0] != h or outs[o][1] != ref[1]:
            raise InvalidMove(f"input {j} does not equal output {o} of entry {m}")
    return replace(g, phase=PHASE_SETTLE, revealed=data)


# --- settlement --------------------------------------------------------------------------------

def process_settlement(game: Game, canonical_skeleton: dict[str, Any], recomputed: list[bytes | None]) -> Game:
    """Decide the game from a referee's execution of the revealed operator.

    ``canonical_skeleton`` is the task's entry at that index without hashes (the same for every
    step of a task); ``recomputed`` are the output hashes of executing the operator on the
    revealed inputs. The prover wins only if its entry is the canonical operator and its
    outputs are exactly the recomputed ones.
    """
    if game.phase != PHASE_SETTLE or game.revealed is None:
        raise InvalidTransition(f"game is in phase {game.phase}, not waiting for a settlement")
    entry = decode_entry(game.revealed)
    where = f"step {game.lo}, operator {entry['i']} ({entry['op']})"
    if get_skeleton(entry) != canonical_skeleton:
        return replace(game, phase=PHASE_DONE, winner=CHALLENGER,
                       reason=f"{where}: the prover's entry is not the operator the task prescribes there")
    claimed = [None if ref is None else ref[0] for ref in entry["out"]]
    if claimed != list(recomputed):
        return replace(game, phase=PHASE_DONE, winner=CHALLENGER,
                       reason=f"{where}: the prover's output differs from executing the operator")
    return replace(game, phase=PHASE_DONE, winner=PROVER,
                   reason=f"{where}: executing the operator gives the prover's output; the challenger was wrong")


def get_dispute_verdict(game: Game) -> int:
    """The §16.3 dispute vote a verifier casts on dispute ``(claim_id, segment)`` once the game
    is decided: upheld (1) when the challenger won, failed (0) when the prover did."""
    if game.winner is None:
        raise InvalidTransition("the game is not decided yet")
    return VERDICT_ACCEPT if game.winner == CHALLENGER else VERDICT_REJECT
