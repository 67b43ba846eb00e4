"""Progress display for the CLI (stderr, so --json output on stdout stays clean)."""

from __future__ import annotations

import sys
from typing import Any, Callable

from tqdm import tqdm


class StepProgress:
    def __init__(self, total: int, desc: str, disable: bool = False) -> None:
        self._bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=disable, dynamic_ncols=True)
        self._last = 0

    def update(self, step: int, loss: float) -> None:
        self._bar.update(step - self._last if self._last else step - self._bar.n)
        self._last = step
        self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.close()


def segment_printer() -> Callable[[Any], None]:
    def show(result: Any) -> None:
        mark = "ok" if result.ok else "MISMATCH"
        print(f"  segment {result.index:4d}  steps {result.start_step}..{result.end_step}  "
              f"{result.seconds:6.2f}s  {mark}", file=sys.stderr)

    return show
