"""How many segments each verifier replays, derived from the money at stake (SPEC.md §16.2).

A prover that fakes ``c`` of ``S`` segments saves at most ``c/S`` of the training cost, which a
rational prover never values above the reward ``R`` (it would not take the task otherwise). It is
caught when any honest verifier of the certificate samples a faked segment, and then loses the
reward and its bond ``B``. Every certificate holds at least ``k`` honest verifiers
(``compute_min_honest_signers``), each replaying a random number of segments with mean
``sample_milli / 1000``: ``floor`` or ``ceil`` of it, drawn from its own VRF output (§7). The rule asks
the expected penalty to be at least ``D = deterrence_bps / BPS`` times the largest possible saving
for every ``c >= 1``:

    P_detect(c) * (R + B) >= D * (c / S) * R                                           (*)

``P_detect(c) / c`` never increases with ``c`` (``1 - P_detect`` is a product of convex decreasing
miss probabilities, so ``P_detect`` is concave and zero at ``c = 0``), so (*) holds for every ``c``
once it holds for ``c = S``, where ``P_detect(S) = 1 - P(a verifier replays nothing)^k``. For a mean
below one sample that is ``1 - (1 - mu)^k``, and the smallest sufficient ``mu`` has a closed form.

The ledger's rule is integer arithmetic in 10^18 fixed point that fits 256 bits, so a contract computes
the same ``sample_milli``; the reports (``compute_escape_probability``, ...) are exact rationals.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction
from math import comb
from typing import Sequence

from .constants import BPS, DOMAIN_SAMPLE_COUNT, MILLI
from .genesis import Params, VerifierEntry, compute_min_honest_signers


class SamplingImpossible(ValueError):
    """No per-verifier sample rate meets the deterrence target with this bond: the bond must grow."""


def compute_claim_bond(reward: int, params: Params) -> int:
    """The prover's bond for a claim on a task of ``reward``: ``max(prover_bond, reward * bond_reward_bps /
    BPS)``. The reward prices the task's compute, so the bond scales linearly with it."""
    return max(params.prover_bond, reward * params.bond_reward_bps // BPS)


def get_sample_count(sample_signature: bytes, sample_milli: int) -> int:
    """Segments one verifier replays: ``floor(mu)`` plus one with probability ``frac(mu)``, from its VRF.

    ``u = u64le(SHA-256(DOMAIN_SAMPLE_COUNT || signature)[0:8]) mod 1000``; the count is
    ``sample_milli // 1000 + (1 if u < sample_milli % 1000 else 0)``.
    """
    if sample_milli < 0:
        raise ValueError("sample_milli must be >= 0")
    u = int.from_bytes(hashlib.sha256(DOMAIN_SAMPLE_COUNT + sample_signature).digest()[:8], "little") % MILLI
    return sample_milli // MILLI + (1 if u < sample_milli % MILLI else 0)


FIXED_ONE = 10**18  # fixed point for the rate rule: every product fits 256 bits, so a contract computes it too


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def compute_zero_replay_power(sample_milli: int, honest: int) -> int:
    """``P(a verifier replays nothing)^honest`` in units of ``FIXED_ONE``, rounded up at every product.

    ``P = (1000 - sample_milli)/1000`` (0 from 1000 on); the power is square-and-multiply over the bits
    of ``honest``, most significant first, each product ``ceil(x * y / FIXED_ONE)``. Rounding up only
    overstates the escape chance, so the rate it yields is never below the exact rule's.
    """
    if sample_milli >= MILLI:
        return 0
    base = (MILLI - sample_milli) * (FIXED_ONE // MILLI)
    result = FIXED_ONE
    for bit in bin(honest)[2:]:
        result = _ceil_div(result * result, FIXED_ONE)
        if bit == "1":
            result = _ceil_div(result * base, FIXED_ONE)
    return result


def compute_sample_milli(reward: int, bond: int, honest: int, params: Params) -> int:
    """Smallest mean sample count (in 1/1000 segments) per verifier that satisfies (*), at least
    ``min_sample_milli``: the smallest ``x`` in [0, 1000] with
    ``compute_zero_replay_power(x, k) * (R + B) * BPS <= FIXED_ONE * ((R + B) * BPS - deterrence_bps * R)``.
    Raises ``SamplingImpossible`` when no rate does (the bond is too small for D)."""
    if reward <= 0 or bond < 0 or honest < 1:
        raise ValueError("reward must be positive, bond non-negative, honest signers at least 1")
    total = (reward + bond) * BPS
    allowed = FIXED_ONE * (total - params.deterrence_bps * reward)  # (1 - D R / (R + B)) * FIXED_ONE * total
    if allowed < 0:
        d = Fraction(params.deterrence_bps, BPS)
        raise SamplingImpossible(
            f"bond {bond} is too small for deterrence {d}: it must be at least (D - 1) x reward = "
            f"{(d - 1) * reward}; raise the bond (bond_reward_bps), no sample rate can make up for it")
    low, high = 0, MILLI  # at MILLI every verifier replays at least one segment: the power is 0
    while low < high:
        mid = (low + high) // 2
        if compute_zero_replay_power(mid, honest) * total <= allowed:
            high = mid
        else:
            low = mid + 1
    return max(low, params.min_sample_milli)


def compute_claim_sample_milli(reward: int, bond: int, verifiers: Sequence[VerifierEntry], params: Params) -> int:
    """``compute_sample_milli`` with the certificate's guaranteed honest signers (§16.2)."""
    return compute_sample_milli(reward, bond, compute_min_honest_signers(verifiers, params), params)


def compute_escape_probability(num_segments: int, corrupted: int, sample_milli: int, honest: int) -> Fraction:
    """Exact probability that ``honest`` independent verifiers all miss ``corrupted`` faked segments, each
    replaying ``floor(mu)`` or ``ceil(mu)`` distinct uniform segments (hypergeometric miss)."""
    s, c = num_segments, corrupted
    if not 0 <= c <= s or s <= 0:
        raise ValueError("need 0 <= corrupted <= num_segments and num_segments > 0")
    base, frac = divmod(sample_milli, MILLI)

    def miss(m: int) -> Fraction:
        m = min(m, s)
        return Fraction(comb(s - c, m), comb(s, m))

    one = Fraction(MILLI - frac, MILLI) * miss(base) + Fraction(frac, MILLI) * miss(base + 1)
    return one**honest


def compute_cheat_gain(num_segments: int, corrupted: int, reward: int, bond: int, sample_milli: int,
                       honest: int) -> Fraction:
    """Expected gain over honest work of faking ``corrupted`` segments: the saving (at most c/S of the
    reward) minus the chance of being caught times reward plus bond. Negative means cheating loses."""
    caught = 1 - compute_escape_probability(num_segments, corrupted, sample_milli, honest)
    return Fraction(corrupted * reward, num_segments) - caught * (reward + bond)


@dataclass(frozen=True)
class EconomicsRow:
    verifiers: int
    honest: int
    num_segments: int
    reward: int
    bond: int
    sample_milli: int
    replay_fraction: Fraction  # expected network-wide replayed segments / S
    escape_one: Fraction  # a one-segment fake escapes every honest verifier
    escape_all: Fraction  # a fully faked run escapes
    best_cheat_gain: Fraction  # max over c >= 1 of the expected gain, per unit of reward
    best_cheat_segments: int


def compute_economics_row(verifiers: int, num_segments: int, reward: int, params: Params,
                          stakes: Sequence[int] | None = None) -> EconomicsRow:
    """One line of ``pol economics``: equal stakes unless ``stakes`` is given."""
    entries = [VerifierEntry(b"", b"", st, "x") for st in (stakes or [1] * verifiers)]
    honest = compute_min_honest_signers(entries, params)
    bond = compute_claim_bond(reward, params)
    milli = compute_sample_milli(reward, bond, honest, params)
    replayed = Fraction(len(entries) * min(milli, num_segments * MILLI), MILLI)
    # The gain is convex in c (P_detect is concave), so its maximum over [1, S] is at an end.
    best, best_c = max((compute_cheat_gain(num_segments, c, reward, bond, milli, honest), c)
                       for c in sorted({1, num_segments}))
    return EconomicsRow(len(entries), honest, num_segments, reward, bond, milli, replayed / num_segments,
                        compute_escape_probability(num_segments, 1, milli, honest),
                        compute_escape_probability(num_segments, num_segments, milli, honest),
                        best / reward, best_c)

