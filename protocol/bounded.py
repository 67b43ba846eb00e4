"""Parsing with explicit bounds (SPEC.md §18.1): depth and size are checked before a parser runs.

The C JSON decoder recurses once per nesting level; with a raised interpreter recursion limit a
document of 200 KB of brackets overflows the C stack. ``decode_json`` counts the nesting depth
first (strings skipped) and refuses deep documents before ``json.loads`` sees them, whatever the
recursion limit. JSON numbers that are not finite (``1e999``) are refused too.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from .errors import DecodeError

MAX_JSON_DEPTH = 32
# A JSON string: quote, then any run of non-quote/non-backslash or escaped characters, then quote.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def get_json_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text, ignoring brackets inside strings."""
    stripped = _STRING.sub(b"", data)
    arr = np.frombuffer(stripped, dtype=np.uint8)
    steps = np.zeros(arr.shape, dtype=np.int64)
    steps[(arr == ord("[")) | (arr == ord("{"))] = 1
    steps[(arr == ord("]")) | (arr == ord("}"))] = -1
    if steps.size == 0:
        return 0
    return int(np.cumsum(steps).max(initial=0))


def _no_constant(name: str) -> Any:
    raise DecodeError(f"JSON constant {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")) or value != value:
        raise DecodeError(f"JSON number {text[:32]} is not a finite float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DecodeError(f"JSON object repeats the key {key[:64]!r}")
        out[key] = value
    return out


def decode_json(data: bytes | str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON with a size and depth limit; repeated keys, NaN and infinities are refused."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise DecodeError(f"JSON of {len(raw)} bytes exceeds the limit of {max_bytes}")
    depth = get_json_depth(raw)
    if depth > max_depth:
        raise DecodeError(f"JSON nested {depth} levels deep; the limit is {max_depth}")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DecodeError(f"not valid JSON: {exc}") from None


def get_int(value: Any, what: str, minimum: int, maximum: int) -> int:
    """``value`` as an int in [minimum, maximum]; bools and floats are refused."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{what} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise DecodeError(f"{what} = {value} is outside [{minimum}, {maximum}]")
    return value
