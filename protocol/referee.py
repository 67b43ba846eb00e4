"""Refereed mode (SPEC.md §17.6): one task, n provers, no sampling.

A requester posts a task for ``n >= 2`` provers. Each prover trains it and registers its own
signed claim with a bond. Training is a deterministic function of the task, so honest
provers commit to the same root: if every commitment is equal, the task settles at once with
no replay at all. If commitments differ, at least one is false; a prover whose commitment
differs from another's opens the dispute game (protocol.dispute) against it, on a segment
where both agree on the start root and differ at the end. The game's loser and everyone who
committed the same root are slashed, a share of each slashed bond going to the winner. When a
single commitment is left unslashed and no game is open, its provers share the reward.

A model of the rules, like ``protocol.ledger``: pure, money is conserved, time is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import hashlib

from . import bls
from . import dispute as D
from .claim import Claim, compute_claim_id, validate_claim_signature
from .constants import BPS, Digest
from .encoding import encode_canonical
from .errors import InsufficientFunds, InvalidTransition
from .merkle import MerkleProof, compute_root_from_proof
from .rng import compute_training_seed

DOMAIN_REFEREED_POST = b"pol/v1/refereed-post"  # || canonical{task_id, requester, reward, provers, ...}
DOMAIN_REFEREED_SEAL = b"pol/v1/refereed-seal"  # || prover || commitment: the sealed commitment
DOMAIN_REFEREED_SEAL_MSG = b"pol/v1/refereed-seal-msg"  # || task_id || seal: signed by the prover
MAX_PROVERS = 16

OPEN, CONTESTED, PAID, REFUNDED = "open", "contested", "paid", "refunded"


@dataclass(frozen=True)
class RefereedParams:
    bond: int = 1000  # locked per prover per claim
    winner_share_bps: int = 5000  # of each slashed bond, to the game's winner; the rest is burned
    clock_s: int = 3600  # each party's chess clock in a game
    contest_window_s: int = 7200  # after the last claim: time to open and finish games


@dataclass(frozen=True)
class RefereedPosting:
    task_id: bytes
    requester: bytes
    reward: int
    provers: int
    num_checkpoints: int
    checkpoint_interval: int
    seal_until: int  # provers seal their commitment before this time and reveal it from then on
    expires_at: int
    signature: bytes


@dataclass(frozen=True)
class ProverEntry:
    seal: bytes
    bond: int
    claim_id: bytes = b""  # empty until revealed
    commitment: bytes = b""
    slashed: bool = False


@dataclass(frozen=True)
class RefereedTask:
    posting: RefereedPosting
    escrow: int
    status: str
    claims: Mapping[bytes, ProverEntry]  # by prover key
    games: Mapping[bytes, D.Game]  # by game id
    last_claim_at: int | None = None


@dataclass(frozen=True)
class RefereeState:
    params: RefereedParams
    balances: Mapping[bytes, int]
    tasks: Mapping[bytes, RefereedTask]
    burned: int = 0


def _put(mapping: Mapping[Any, Any], key: Any, value: Any) -> Mapping[Any, Any]:
    copy = dict(mapping)
    copy[key] = value
    return MappingProxyType(copy)


def _add(balances: Mapping[bytes, int], who: bytes, amount: int) -> Mapping[bytes, int]:
    have = balances.get(who, 0)
    if have + amount < 0:
        raise InsufficientFunds(f"account {who.hex()[:16]}… holds {have}, needs {-amount}")
    return _put(balances, who, have + amount)


def get_initial_referee_state(params: RefereedParams, balances: Mapping[bytes, int]) -> RefereeState:
    return RefereeState(params, MappingProxyType(dict(balances)), MappingProxyType({}))


def get_total_money(state: RefereeState) -> int:
    locked = sum(t.escrow + sum(c.bond for c in t.claims.values()) for t in state.tasks.values())
    return sum(state.balances.values()) + locked + state.burned


def compute_posting_message(p: RefereedPosting) -> bytes:
    return DOMAIN_REFEREED_POST + encode_canonical({
        "task_id": p.task_id, "requester": p.requester, "reward": p.reward, "provers": p.provers,
        "num_checkpoints": p.num_checkpoints, "checkpoint_interval": p.checkpoint_interval,
        "seal_until": p.seal_until, "expires_at": p.expires_at})


def compute_signed_posting(secret_key: bytes, **fields: Any) -> RefereedPosting:
    unsigned = RefereedPosting(requester=bls.compute_public_key(secret_key), signature=b"", **fields)
    return replace(unsigned, signature=bls.sign(secret_key, compute_posting_message(unsigned)))


def compute_posting_id(p: RefereedPosting) -> Digest:
    """The posting id that every claim of this refereed task carries (SPEC.md §16.3 claims)."""
    return Digest(hashlib.sha256(compute_posting_message(p)).digest())


def compute_refereed_seed(p: RefereedPosting) -> int:
    """The run seed all n provers train with: §9's seed keyed by the requester instead of a prover,
    so honest runs are identical and their commitments equal."""
    return compute_training_seed(p.task_id, p.requester, compute_posting_id(p))


def process_post(state: RefereeState, p: RefereedPosting, now: int) -> RefereeState:
    if p.task_id in state.tasks:
        raise InvalidTransition("this task is already posted in refereed mode")
    if not 2 <= p.provers <= MAX_PROVERS:
        raise InvalidTransition(f"a refereed task needs 2..{MAX_PROVERS} provers, not {p.provers}")
    if p.reward <= 0 or not now < p.seal_until < p.expires_at or p.num_checkpoints < 2 or p.checkpoint_interval < 1:
        raise InvalidTransition("reward and lengths must be positive, and now < seal_until < expires_at")
    bls.validate_signature(p.requester, compute_posting_message(p), p.signature, "refereed posting")
    balances = _add(state.balances, p.requester, -p.reward)
    task = RefereedTask(p, p.reward, OPEN, MappingProxyType({}), MappingProxyType({}))
    return replace(state, balances=balances, tasks=_put(state.tasks, p.task_id, task))


def compute_seal(prover: bytes, commitment: bytes) -> Digest:
    return Digest(hashlib.sha256(DOMAIN_REFEREED_SEAL + prover + commitment).digest())


def compute_seal_message(task_id: bytes, seal: bytes) -> bytes:
    return DOMAIN_REFEREED_SEAL_MSG + task_id + seal


def process_seal(state: RefereeState, task_id: bytes, prover: bytes, seal: bytes, signature: bytes,
                 now: int) -> RefereeState:
    """A prover takes one of the n places with its sealed commitment and locks its bond. Sealing
    first keeps a prover from copying another's roots: nobody reveals before ``seal_until``."""
    task = state.tasks.get(task_id)
    if task is None or task.status != OPEN:
        raise InvalidTransition("no open refereed task")
    if now >= task.posting.seal_until:
        raise InvalidTransition("sealing closed at seal_until")
    if len(seal) != 32 or prover in task.claims:
        raise InvalidTransition("one 32-byte seal per prover")
    if len(task.claims) >= task.posting.provers:
        raise InvalidTransition(f"the task already has its {task.posting.provers} provers")
    bls.validate_signature(prover, compute_seal_message(task_id, seal), signature, "refereed seal")
    balances = _add(state.balances, prover, -state.params.bond)
    task = replace(task, claims=_put(task.claims, prover, ProverEntry(seal, state.params.bond)))
    return replace(state, balances=balances, tasks=_put(state.tasks, task_id, task))


def process_claim(state: RefereeState, claim: Claim, now: int) -> RefereeState:
    """Reveal one sealed prover's claim (from ``seal_until`` until expiry)."""
    b = claim.body
    task = state.tasks.get(b.task_id)
    if task is None or task.status != OPEN:
        raise InvalidTransition("no open refereed task for this claim")
    if not task.posting.seal_until <= now < task.posting.expires_at:
        raise InvalidTransition("claims are revealed from seal_until until the posting expires")
    if (b.num_checkpoints, b.checkpoint_interval) != (task.posting.num_checkpoints, task.posting.checkpoint_interval):
        raise InvalidTransition("the claim's lengths differ from the posting's")
    if b.posting_id != compute_posting_id(task.posting):
        raise InvalidTransition("the claim does not answer this refereed posting")
    entry = task.claims.get(b.prover)
    if entry is None or entry.commitment:
        raise InvalidTransition("this prover sealed nothing, or already revealed")
    if compute_seal(b.prover, b.commitment) != entry.seal:
        raise InvalidTransition("the claim's commitment is not the one this prover sealed")
    validate_claim_signature(claim)
    entry = replace(entry, claim_id=compute_claim_id(b), commitment=b.commitment)
    task = replace(task, claims=_put(task.claims, b.prover, entry), last_claim_at=now)
    if len(task.claims) == task.posting.provers and all(c.commitment for c in task.claims.values()):
        task = replace(task, status=CONTESTED)
    state = replace(state, tasks=_put(state.tasks, b.task_id, task))
    if task.status == CONTESTED and len({c.commitment for c in task.claims.values()}) == 1:
        return _pay(state, b.task_id)  # every commitment equal: settled with no replay at all
    return state


def _pay(state: RefereeState, task_id: bytes) -> RefereeState:
    """Pay the reward to the unslashed provers (equal shares, remainder to the requester) and
    return their bonds."""
    task = state.tasks[task_id]
    winners = sorted(k for k, c in task.claims.items() if not c.slashed)
    balances = state.balances
    share = task.escrow // len(winners)
    claims = dict(task.claims)
    for k in winners:
        balances = _add(balances, k, share + claims[k].bond)
        claims[k] = replace(claims[k], bond=0)
    balances = _add(balances, task.posting.requester, task.escrow - share * len(winners))
    task = replace(task, escrow=0, status=PAID, claims=MappingProxyType(claims))
    return replace(state, balances=balances, tasks=_put(state.tasks, task_id, task))


def process_open_game(state: RefereeState, task_id: bytes, open_move: D.Move, challenger_start_path: list[bytes],
                      challenger_end_path: list[bytes], now: int) -> RefereeState:
    """A prover challenges another prover's claim. Its own commitment must hold the same start
    root and, at the end of the segment, the root it names as its own."""
    task = state.tasks.get(task_id)
    if task is None or task.status != CONTESTED:
        raise InvalidTransition("games open only on a task whose claims are all in and differ")
    body = open_move.body
    defender, challenger = body.get("prover"), body.get("challenger")
    if not isinstance(defender, bytes) or not isinstance(challenger, bytes) or defender not in task.claims \
            or challenger not in task.claims:
        raise InvalidTransition("both players must be provers of this task")
    d, c = task.claims[defender], task.claims[challenger]
    if d.slashed or c.slashed:
        raise InvalidTransition("a slashed prover takes no further part")
    if d.commitment == c.commitment:
        raise InvalidTransition("the two provers committed the same root: there is nothing to dispute")
    p = task.posting
    view = D.ClaimView(d.claim_id, defender, d.commitment, p.num_checkpoints, p.checkpoint_interval)
    game = D.process_open(open_move, view, now)
    seg = game.segment
    for index, root, path in ((seg, body["start_root"], challenger_start_path),
                              (seg + 1, body["challenger_root"], challenger_end_path)):
        proof = MerkleProof(index, p.num_checkpoints, tuple(Digest(bytes(x)) for x in path))
        if compute_root_from_proof(root, proof) != c.commitment:
            raise D.InvalidMove(f"the challenger's own commitment does not hold that root at checkpoint {index}")
    if game.game_id in task.games:
        raise InvalidTransition("this game is already open")
    task = replace(task, games=_put(task.games, game.game_id, game))
    return replace(state, tasks=_put(state.tasks, task_id, task))


def _update_game(state: RefereeState, task_id: bytes, game: D.Game) -> RefereeState:
    task = state.tasks[task_id]
    task = replace(task, games=_put(task.games, game.game_id, game))
    state = replace(state, tasks=_put(state.tasks, task_id, task))
    return _apply_outcome(state, task_id, game) if game.winner is not None else state


def _game(state: RefereeState, task_id: bytes, game_id: bytes) -> D.Game:
    task = state.tasks.get(task_id)
    if task is None or game_id not in task.games:
        raise InvalidTransition("unknown game")
    return task.games[game_id]


def process_game_move(state: RefereeState, task_id: bytes, move: D.Move, now: int) -> RefereeState:
    return _update_game(state, task_id, D.process_move(_game(state, task_id, move.game_id), move, now))


def process_game_timeout(state: RefereeState, task_id: bytes, game_id: bytes, now: int) -> RefereeState:
    return _update_game(state, task_id, D.process_timeout(_game(state, task_id, game_id), now))


def process_game_settlement(state: RefereeState, task_id: bytes, game_id: bytes, skeleton: dict[str, Any],
                            recomputed: list[bytes | None]) -> RefereeState:
    return _update_game(state, task_id, D.process_settlement(_game(state, task_id, game_id), skeleton, recomputed))


def _apply_outcome(state: RefereeState, task_id: bytes, game: D.Game) -> RefereeState:
    """Slash every prover who committed the loser's root; the winner gets its share of each bond."""
    task = state.tasks[task_id]
    loser, winner = (game.prover, game.challenger) if game.winner == D.CHALLENGER else (game.challenger, game.prover)
    bad = task.claims[loser].commitment
    claims, balances, burned = dict(task.claims), state.balances, state.burned
    for k, c in task.claims.items():
        if c.commitment == bad and not c.slashed:
            to_winner = c.bond * state.params.winner_share_bps // BPS
            balances = _add(balances, winner, to_winner)
            burned += c.bond - to_winner
            claims[k] = replace(c, bond=0, slashed=True)
    task = replace(task, claims=MappingProxyType(claims))
    return replace(state, balances=balances, burned=burned, tasks=_put(state.tasks, task_id, task))


def process_tick(state: RefereeState, task_id: bytes, now: int) -> RefereeState:
    """Settle a contested task once no game is running: a single unslashed commitment is paid;
    after the contest window with several left (nobody proved which is false), or none, the
    requester gets the escrow back and the unslashed bonds return."""
    task = state.tasks.get(task_id)
    if task is None:
        raise InvalidTransition("unknown task")
    if task.status == OPEN and now >= task.posting.expires_at:
        return _refund(state, task_id)  # a sealer that never revealed loses its bond (burned)
    if task.status != CONTESTED or any(g.winner is None for g in task.games.values()):
        return state
    left = {c.commitment for c in task.claims.values() if not c.slashed}
    if len(left) == 1:
        return _pay(state, task_id)
    assert task.last_claim_at is not None
    if not left or now >= task.last_claim_at + state.params.contest_window_s:
        return _refund(state, task_id)
    return state


def _refund(state: RefereeState, task_id: bytes) -> RefereeState:
    task = state.tasks[task_id]
    balances = _add(state.balances, task.posting.requester, task.escrow)
    claims, burned = dict(task.claims), state.burned
    for k, c in task.claims.items():
        if c.commitment:
            balances = _add(balances, k, c.bond)
        else:
            burned += c.bond
        claims[k] = replace(c, bond=0)
    task = replace(task, escrow=0, status=REFUNDED, claims=MappingProxyType(claims))
    return replace(state, balances=balances, burned=burned, tasks=_put(state.tasks, task_id, task))
