"""Economics-derived sampling (SPEC.md §16.2): the rule, its closed form, a Monte-Carlo check of the
detection formula with the real sample derivation, and the default parameters' cost and security."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from protocol.constants import BPS, MILLI
from protocol.economics import (
    SamplingImpossible,
    compute_cheat_gain,
    compute_claim_bond,
    compute_economics_row,
    compute_escape_probability,
    compute_sample_milli,
    get_sample_count,
)
from protocol.errors import InvalidGenesis
from protocol.genesis import Params, validate_params
from protocol.sampling import compute_verifier_sample


@pytest.mark.parametrize("honest", [1, 2, 6, 22])
@pytest.mark.parametrize(("reward", "bond"), [(100, 400), (100, 1000), (7, 10**6), (1000, 2001)])
def test_rate_is_the_smallest_meeting_the_closed_form(honest: int, reward: int, bond: int) -> None:
    params = Params()
    d = params.deterrence_bps / BPS
    milli = compute_sample_milli(reward, bond, honest, params)
    # Independent float evaluation of mu = 1 - (1 - D R / (R + B))^(1/k), rounded up to 1/1000.
    mu = 1 - (1 - d * reward / (reward + bond)) ** (1 / honest)
    assert abs(milli - mu * MILLI) <= 1.0 + 1e-9
    allowed = 1 - Fraction(params.deterrence_bps, BPS) * Fraction(reward, reward + bond)
    assert Fraction(MILLI - milli, MILLI) ** honest <= allowed  # the exact rule holds at the chosen rate
    if milli > 1:  # and fixed point costs at most one thousandth of a segment over the exact minimum
        assert Fraction(MILLI - milli + 2, MILLI) ** honest > allowed


@pytest.mark.parametrize("honest", [1, 2, 3, 22, 341, 1024])
@pytest.mark.parametrize("milli", [0, 1, 41, 500, 999, 1000])
def test_fixed_point_power_rounds_up_by_little(honest: int, milli: int) -> None:
    from protocol.economics import FIXED_ONE, compute_zero_replay_power

    exact = Fraction(max(MILLI - milli, 0), MILLI) ** honest * FIXED_ONE
    fixed = compute_zero_replay_power(milli, honest)
    assert exact <= fixed <= exact + 2 * honest  # units of 1e-18
    assert fixed * (2**63 * 2 * BPS) < 2**256  # every product of the rule fits a uint256


@pytest.mark.parametrize("segments", [1, 7, 100])
@pytest.mark.parametrize("honest", [1, 3, 22])
def test_every_fake_loses_at_least_d_minus_one_times_its_saving(segments: int, honest: int) -> None:
    params = Params()
    reward = 1000
    bond = compute_claim_bond(reward, params)
    milli = compute_sample_milli(reward, bond, honest, params)
    d = Fraction(params.deterrence_bps, BPS)
    for c in range(1, segments + 1):
        gain = compute_cheat_gain(segments, c, reward, bond, milli, honest)
        assert gain <= -(d - 1) * Fraction(c * reward, segments) < 0


def test_too_small_bond_is_refused_not_capped() -> None:
    with pytest.raises(SamplingImpossible, match="raise the bond"):
        compute_sample_milli(100, 150, 5, Params())  # D = 3 needs bond >= 200
    assert compute_sample_milli(100, 200, 5, Params()) == MILLI  # exactly enough: everyone replays one
    with pytest.raises(InvalidGenesis, match="bond_reward_bps"):
        validate_params(Params(deterrence_bps=50_000, bond_reward_bps=30_000))


def test_count_is_floor_or_ceil_of_the_rate() -> None:
    rng = random.Random(1)
    sigs = [rng.randbytes(96) for _ in range(4000)]
    counts = [get_sample_count(s, 2_300) for s in sigs]
    assert set(counts) == {2, 3}
    assert abs(counts.count(3) / len(sigs) - 0.3) < 0.03
    assert compute_verifier_sample(sigs[0], 5, 7_000) == [0, 1, 2, 3, 4]  # a floor above S replays all
    assert compute_verifier_sample(sigs[0], 5, 0) == []


@pytest.mark.parametrize(("segments", "corrupted", "honest", "milli"),
                         [(100, 1, 22, 200), (100, 30, 6, 142), (40, 3, 2, 1_500), (10, 10, 22, 41)])
def test_monte_carlo_matches_the_detection_formula(segments: int, corrupted: int, honest: int, milli: int) -> None:
    """Seeded simulation with the real per-verifier sample derivation (random stand-ins for the BLS
    signatures, which the derivation only hashes): detection frequency within 4 sigma of the formula."""
    rng = random.Random(segments * 1000 + corrupted)
    trials = 3000
    detected = 0
    for _ in range(trials):
        faked = set(rng.sample(range(segments), corrupted))
        if any(faked.intersection(compute_verifier_sample(rng.randbytes(96), segments, milli))
               for _ in range(honest)):
            detected += 1
    p = float(1 - compute_escape_probability(segments, corrupted, milli, honest))
    sigma = (p * (1 - p) / trials) ** 0.5
    assert abs(detected / trials - p) <= 4 * sigma + 1e-3


@pytest.mark.parametrize("verifiers", [4, 16, 64])
@pytest.mark.parametrize("segments", [100, 1_000, 100_000])
def test_defaults_replay_at_most_five_percent_and_every_fake_loses(verifiers: int, segments: int) -> None:
    row = compute_economics_row(verifiers, segments, 1000, Params())
    assert row.replay_fraction <= Fraction(5, 100)
    assert row.best_cheat_gain < 0
    assert row.escape_all <= 1 - Fraction(3 * 1000, 1000 + row.bond)  # (1 - mu)^k <= 1 - D R / (R + B)
