"""Detection and stake arithmetic (SPEC.md §8).

A prover who fakes ``c`` of ``S`` segments escapes one verifier that replays ``m`` distinct
segments chosen uniformly with probability ``C(S-c, m) / C(S, m)``, which is at most
``(1 - c/S)^m``; independent verifiers multiply. Cheating is unprofitable when the escape
probability is below ``stake / (stake + reward)``.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb
from typing import Sequence


def compute_escape_probability(num_segments: int, corrupted: int, samples: int) -> Fraction:
    """Exact probability that ``samples`` distinct uniform picks all miss ``corrupted`` segments."""
    if not 0 <= corrupted <= num_segments:
        raise ValueError("corrupted must be in [0, num_segments]")
    samples = min(samples, num_segments)
    return Fraction(comb(num_segments - corrupted, samples), comb(num_segments, samples))


def compute_network_escape_probability(num_segments: int, corrupted: int, samples: Sequence[int]) -> Fraction:
    """Escape probability against several verifiers sampling independently."""
    result = Fraction(1)
    for m in samples:
        result *= compute_escape_probability(num_segments, corrupted, m)
    return result


def compute_min_samples(num_segments: int, corrupted: int, target: Fraction) -> int:
    """Smallest m whose escape probability is at most ``target`` (``num_segments`` if none)."""
    for m in range(1, num_segments + 1):
        if compute_escape_probability(num_segments, corrupted, m) <= target:
            return m
    return num_segments


def compute_break_even_escape(stake: int, reward: int) -> Fraction:
    """Escape probability below which faking work loses money in expectation."""
    if stake < 0 or reward <= 0:
        raise ValueError("stake must be >= 0 and reward > 0")
    return Fraction(stake, stake + reward)
