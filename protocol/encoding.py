"""Canonical msgpack (SPEC.md §2).

Every signed or hashed message has exactly one byte representation: maps with string keys
sorted by their UTF-8 bytes, integers in the shortest form, floats as float64, byte strings
as ``bin``. Decoding re-encodes and rejects anything that is not byte-identical, so a
message id can never be changed by re-encoding.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import DecodeError

_ALLOWED_SCALARS = (bool, int, float, str, bytes, type(None))


def _canonicalize(obj: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise DecodeError("nesting deeper than 32 levels")
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise DecodeError(f"map key {key!r} is not a string")
            items.append((key.encode("utf-8"), key, _canonicalize(value, depth + 1)))
        items.sort(key=lambda item: item[0])
        return {key: value for _, key, value in items}
    if isinstance(obj, (list, tuple)):
        return [_canonicalize(value, depth + 1) for value in obj]
    if isinstance(obj, _ALLOWED_SCALARS):
        if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
            raise DecodeError(f"integer {obj} out of 64-bit range")
        return obj
    raise DecodeError(f"type {type(obj).__name__} has no canonical encoding")


def encode_canonical(obj: Any) -> bytes:
    """Return the canonical msgpack bytes of ``obj`` (dicts, lists, scalars, bytes)."""
    packed: bytes = msgpack.packb(_canonicalize(obj), use_bin_type=True, use_single_float=False)
    return packed


def decode_canonical(data: bytes, max_bytes: int) -> Any:
    """Decode ``data`` and raise ``DecodeError`` unless it is canonical and small enough."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
        )
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise DecodeError(f"not valid msgpack: {type(exc).__name__}: {exc}") from None
    if encode_canonical(obj) != bytes(data):
        raise DecodeError("msgpack is valid but not canonical (key order, int width or float width)")
    return obj
