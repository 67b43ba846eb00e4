"""Progress display for the CLI (stderr, so --json output on stdout stays clean)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from tqdm import tqdm

from protocol.detection import compute_escape_probability


class StepProgress:
    """Training steps. A resumed run starts the bar at the resumed step, so the rate counts only the
    steps trained in this run (not the ones a previous run did)."""

    def __init__(self, total: int, desc: str, disable: bool = False) -> None:
        self._bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=disable, dynamic_ncols=True)
        self._started = False

    def update(self, step: int, loss: float) -> None:
        if not self._started:
            self._started = True
            start = max(step - 1, 0)
            # tqdm's rate is (n - initial) / elapsed: start both at the resumed step, the clock now.
            self._bar.initial = self._bar.n = self._bar.last_print_n = start
            self._bar.start_t = self._bar.last_print_t = time.time()
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    @property
    def rate(self) -> float | None:
        """Steps per second in this run (None before the first step)."""
        rate = self._bar.format_dict.get("rate")
        if rate is None and self._bar.n > self._bar.initial:
            elapsed = time.time() - self._bar.start_t
            rate = (self._bar.n - self._bar.initial) / elapsed if elapsed > 0 else None
        return rate

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.close()


class SegmentProgress:
    """Replayed segments of ``pol verify``; a mismatch is also printed as its own line."""

    def __init__(self, total: int | None, disable: bool = False) -> None:
        self._bar = tqdm(total=total, desc="replay", unit="segment", file=sys.stderr, disable=disable,
                         dynamic_ncols=True)
        self._disable = disable

    def update(self, result: Any) -> None:
        self._bar.update(1)
        self._bar.set_postfix(segment=result.index, refresh=False)
        if not result.ok and not self._disable:
            self._bar.write(f"  segment {result.index} (steps {result.start_step}..{result.end_step}): MISMATCH",
                            file=sys.stderr)

    def __enter__(self) -> "SegmentProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.close()


def describe_detection(num_segments: int, sampled: int) -> list[dict[str, Any]]:
    """The chance that replaying ``sampled`` of ``num_segments`` segments catches a faking prover, in words.

    "10% of segments" means ceil(0.1 * S) segments (at least one): rounding up never overstates the
    protection, since faking more segments only raises the chance of being caught.
    """
    if num_segments < 1 or sampled < 1:
        return []
    out = []
    for label, fraction in (("one segment", None), ("10% of segments", 0.10)):
        faked = 1 if fraction is None else max(1, math.ceil(fraction * num_segments))
        faked = min(faked, num_segments)
        catch = 1.0 - float(compute_escape_probability(num_segments, faked, min(sampled, num_segments)))
        if fraction is None:
            what = "faked one segment"
        else:
            what = (f"faked {label} ({faked} of {num_segments}; 10% rounded up to whole segments)")
        out.append({"faked_segments": faked, "num_segments": num_segments, "sampled": min(sampled, num_segments),
                    "catch_probability": catch,
                    "text": f"would catch a prover that {what} with probability {catch:.3g}"})
    return out
