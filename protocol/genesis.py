"""Genesis document, stake registry and sample-count arithmetic (SPEC.md network chapter, §N.1-N.2).

The genesis document fixes everything a node must agree on before the first message: the
verifier set in order (BLS key, proof of possession, stake, libp2p peer id), the opening
balances of requesters and provers, and the protocol parameters. Verifier *indices* are
positions in this list; certificates name signers by index. Money is an integer amount of
one unit; every fraction of money is given in basis points (1/10000), so all arithmetic is exact.

This module also holds the small schema helpers that every network decoder uses, so that
each of them rejects the same things with the same kind of message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import bls
from .constants import (
    BLS_PUBKEY_LEN,
    BLS_SIGNATURE_LEN,
    BPS,
    DOMAIN_GENESIS,
    MAX_ACCOUNTS,
    MAX_AMOUNT,
    MAX_GENESIS_BYTES,
    MAX_PEER_ID_LEN,
    MAX_SAMPLES,
    MILLI,
    MAX_VERIFIERS,
    SPEC_VERSION,
    Digest,
)
from .encoding import decode_canonical, encode_canonical
from .errors import DecodeError, InvalidGenesis, InvalidInput

# --- schema helpers ---------------------------------------------------------------------


def validate_keys(doc: Any, keys: set[str], what: str, error: type[InvalidInput]) -> dict[str, Any]:
    """``doc`` must be a map with exactly ``keys``; returns it typed."""
    if not isinstance(doc, dict):
        raise DecodeError(f"{what} must be a map")
    if set(doc) != keys:
        raise error(f"{what} keys {sorted(doc)} differ from {sorted(keys)}")
    return doc


def get_field(
    doc: dict[str, Any], key: str, kind: type, what: str, error: type[InvalidInput], length: int | None = None
) -> Any:
    """``doc[key]`` checked for type (bool is never an int) and, for bytes/str, exact length."""
    value: Any = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise error(f"{what}.{key} must be {kind.__name__}, got {type(value).__name__}")
    size = len(doc[key]) if length is not None else None  # doc[key] is Any; value is narrowed
    if size != length:
        raise error(f"{what}.{key} must be {length} long, got {size}")
    return value


def get_uint(doc: dict[str, Any], key: str, what: str, error: type[InvalidInput], maximum: int = MAX_AMOUNT) -> int:
    """A non-negative integer field no larger than ``maximum``."""
    value: int = get_field(doc, key, int, what, error)
    if not 0 <= value <= maximum:
        raise error(f"{what}.{key} = {value} is outside [0, {maximum}]")
    return value


def get_list(doc: dict[str, Any], key: str, what: str, error: type[InvalidInput], max_len: int) -> list[Any]:
    value: list[Any] = get_field(doc, key, list, what, error)
    if len(value) > max_len:
        raise error(f"{what}.{key} has {len(value)} items, the limit is {max_len}")
    return value


# --- containers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """Protocol parameters; every node of a network uses the genesis values."""

    challenge_window_s: int = 600  # an accepted claim pays out this long after its certificate
    availability_window_s: int = 3600  # a claim with no accept certificate by then is void
    dispute_window_s: int = 3600  # a dispute with no resolution certificate by then voids the claim
    quorum_numerator: int = 2  # a certificate needs signed stake * den >= total stake * num
    quorum_denominator: int = 3
    prover_bond: int = 1000  # locked by a prover per claim
    slash_double_vote_bps: int = 5000  # of the equivocating verifier's stake, burned
    slash_failed_challenge_bps: int = 1000  # of the challenger's stake, burned
    challenger_reward_bps: int = 5000  # of a slashed prover bond, paid to the challenger; rest burned
    slash_unavailable_bps: int = 1000  # of the bond of a prover whose claim went void, burned
    deterrence_bps: int = 30000  # expected penalty of any fake >= this x its largest saving (§16.2)
    bond_reward_bps: int = 40000  # a claim's bond is at least this share of the task's reward
    min_sample_milli: int = 0
    slash_lazy_bps: int = 2000  # of a verifier's stake, burned when it accepted a revealed forced error  # floor on the mean segments per verifier, in 1/1000 (devnets: replay all)


@dataclass(frozen=True)
class VerifierEntry:
    pubkey: bytes  # BLS public key, 48 bytes
    pop: bytes  # proof of possession of the secret key, 96 bytes
    stake: int
    peer_id: str  # libp2p peer id (base58 text); the node shell checks it against the Noise session


@dataclass(frozen=True)
class Account:
    pubkey: bytes  # requesters and provers are BLS keys too: they sign postings and claims
    balance: int


@dataclass(frozen=True)
class Genesis:
    network: str
    genesis_time: int  # seconds; no message is valid before it
    params: Params
    verifiers: tuple[VerifierEntry, ...]
    accounts: tuple[Account, ...]
    version: int = SPEC_VERSION


_PARAM_KEYS = tuple(Params.__dataclass_fields__)


def get_genesis_document(genesis: Genesis) -> dict[str, Any]:
    return {
        "version": genesis.version,
        "network": genesis.network,
        "genesis_time": genesis.genesis_time,
        "params": {key: getattr(genesis.params, key) for key in _PARAM_KEYS},
        "verifiers": [
            {"pubkey": v.pubkey, "pop": v.pop, "stake": v.stake, "peer_id": v.peer_id} for v in genesis.verifiers
        ],
        "accounts": [{"pubkey": a.pubkey, "balance": a.balance} for a in genesis.accounts],
    }


def encode_genesis(genesis: Genesis) -> bytes:
    return encode_canonical(get_genesis_document(genesis))


def compute_genesis_id(genesis: Genesis) -> Digest:
    """Network id: peers with different genesis documents must not talk."""
    return Digest(hashlib.sha256(DOMAIN_GENESIS + encode_genesis(genesis)).digest())


def decode_genesis(data: bytes) -> Genesis:
    """Parse a genesis document (schema only; ``validate_genesis`` checks its meaning)."""
    doc = validate_keys(decode_canonical(data, MAX_GENESIS_BYTES),
                        {"version", "network", "genesis_time", "params", "verifiers", "accounts"},
                        "genesis", InvalidGenesis)
    p = validate_keys(doc["params"], set(_PARAM_KEYS), "genesis.params", InvalidGenesis)
    params = Params(**{key: get_uint(p, key, "params", InvalidGenesis) for key in _PARAM_KEYS})
    verifiers = []
    for raw in get_list(doc, "verifiers", "genesis", InvalidGenesis, MAX_VERIFIERS):
        v = validate_keys(raw, {"pubkey", "pop", "stake", "peer_id"}, "verifier", InvalidGenesis)
        verifiers.append(VerifierEntry(
            pubkey=get_field(v, "pubkey", bytes, "verifier", InvalidGenesis, BLS_PUBKEY_LEN),
            pop=get_field(v, "pop", bytes, "verifier", InvalidGenesis, BLS_SIGNATURE_LEN),
            stake=get_uint(v, "stake", "verifier", InvalidGenesis),
            peer_id=get_field(v, "peer_id", str, "verifier", InvalidGenesis),
        ))
    accounts = []
    for raw in get_list(doc, "accounts", "genesis", InvalidGenesis, MAX_ACCOUNTS):
        a = validate_keys(raw, {"pubkey", "balance"}, "account", InvalidGenesis)
        accounts.append(Account(
            pubkey=get_field(a, "pubkey", bytes, "account", InvalidGenesis, BLS_PUBKEY_LEN),
            balance=get_uint(a, "balance", "account", InvalidGenesis),
        ))
    return Genesis(
        version=get_field(doc, "version", int, "genesis", InvalidGenesis),
        network=get_field(doc, "network", str, "genesis", InvalidGenesis),
        genesis_time=get_uint(doc, "genesis_time", "genesis", InvalidGenesis),
        params=params,
        verifiers=tuple(verifiers),
        accounts=tuple(accounts),
    )


def validate_params(params: Params) -> None:
    """Raise ``InvalidGenesis`` unless the parameters are internally consistent."""
    num, den = params.quorum_numerator, params.quorum_denominator
    # A quorum above one half makes two conflicting certificates share an equivocating signer.
    if not (den > 0 and 2 * num > den and num <= den):
        raise InvalidGenesis(f"quorum {num}/{den} must be in (1/2, 1]")
    for key in ("slash_double_vote_bps", "slash_failed_challenge_bps", "challenger_reward_bps",
                "slash_unavailable_bps", "slash_lazy_bps"):
        if not 0 <= getattr(params, key) <= BPS:
            raise InvalidGenesis(f"{key} must be in [0, {BPS}]")
    if params.deterrence_bps < BPS:
        raise InvalidGenesis("deterrence_bps must be at least BPS: a penalty below the saving invites fakes")
    # Sampling can meet deterrence D only if bond >= (D - 1) x reward (SPEC.md §16.2): refuse a genesis
    # whose bond rule cannot, rather than cap the samples silently later.
    if params.bond_reward_bps < params.deterrence_bps - BPS:
        raise InvalidGenesis("bond_reward_bps must be >= deterrence_bps - BPS, or no sample rate deters fakes")
    if not 0 <= params.min_sample_milli <= MAX_SAMPLES * MILLI:
        raise InvalidGenesis(f"min_sample_milli must be in [0, {MAX_SAMPLES * MILLI}]")
    if params.prover_bond <= 0:
        raise InvalidGenesis("prover_bond must be positive: an unbonded prover risks nothing by cheating")
    for key in ("challenge_window_s", "availability_window_s", "dispute_window_s"):
        if getattr(params, key) <= 0:
            raise InvalidGenesis(f"{key} must be positive")


def validate_genesis(genesis: Genesis) -> None:
    """Raise ``InvalidGenesis`` unless the document is usable: checks every proof of possession."""
    if genesis.version != SPEC_VERSION:
        raise InvalidGenesis(f"genesis version {genesis.version} is not {SPEC_VERSION}")
    if not 1 <= len(genesis.network) <= 64 or not genesis.network.isascii():
        raise InvalidGenesis("network name must be 1-64 ASCII characters")
    validate_params(genesis.params)
    if not 1 <= len(genesis.verifiers) <= MAX_VERIFIERS:
        raise InvalidGenesis(f"a network has 1 to {MAX_VERIFIERS} verifiers")
    keys = [v.pubkey for v in genesis.verifiers]
    if len(set(keys)) != len(keys):
        raise InvalidGenesis("a verifier key appears twice")
    peers = [v.peer_id for v in genesis.verifiers]
    if len(set(peers)) != len(peers):
        raise InvalidGenesis("a verifier peer id appears twice")
    accounts = [a.pubkey for a in genesis.accounts]
    if len(set(accounts)) != len(accounts):
        raise InvalidGenesis("an account key appears twice")
    for index, v in enumerate(genesis.verifiers):
        if v.stake <= 0:
            raise InvalidGenesis(f"verifier {index} has no stake")
        if not 1 <= len(v.peer_id) <= MAX_PEER_ID_LEN or not v.peer_id.isascii() or not v.peer_id.isalnum():
            raise InvalidGenesis(f"verifier {index}: peer id must be 1-{MAX_PEER_ID_LEN} ASCII letters/digits")
        # Without a proof of possession, a rogue key pk' = pk_x - sum(others) forges aggregates.
        if not bls.is_valid_pop(v.pubkey, v.pop):
            raise InvalidGenesis(f"verifier {index}: proof of possession does not verify")
    total = sum(v.stake for v in genesis.verifiers) + sum(a.balance for a in genesis.accounts)
    if total > MAX_AMOUNT:
        raise InvalidGenesis(f"total money {total} exceeds {MAX_AMOUNT}")


# --- registry accessors and arithmetic ----------------------------------------------------


def get_verifier_index(verifiers: Sequence[VerifierEntry], pubkey: bytes) -> int | None:
    """Position of ``pubkey`` in the registry, or None if it is not a verifier."""
    for index, v in enumerate(verifiers):
        if v.pubkey == pubkey:
            return index
    return None


def get_total_stake(verifiers: Sequence[VerifierEntry]) -> int:
    return sum(v.stake for v in verifiers)


def is_quorum(signed_stake: int, total_stake: int, params: Params) -> bool:
    """``signed/total >= num/den`` in exact integers (3*signed >= 2*total for 2/3)."""
    if total_stake <= 0:
        return False
    return signed_stake * params.quorum_denominator >= total_stake * params.quorum_numerator


def compute_min_honest_signers(verifiers: Sequence[VerifierEntry], params: Params) -> int:
    """Fewest honest verifiers that every certificate must contain.

    Assume Byzantine stake ``B < (1 - q) T`` for quorum ``q = num/den``. A certificate holds
    signed stake ``>= q T``, so its honest part exceeds ``(2q - 1) T``. The answer is the
    smallest k whose k largest stakes exceed that: no smaller honest set can be the overlap.
    """
    total = get_total_stake(verifiers)
    num, den = params.quorum_numerator, params.quorum_denominator
    covered = 0
    stakes = sorted((v.stake for v in verifiers if v.stake > 0), reverse=True)
    for count, stake in enumerate(stakes, start=1):
        covered += stake
        if covered * den > (2 * num - den) * total:
            return count
    return max(1, len(stakes))
