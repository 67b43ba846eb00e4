"""10^5 fuzzed messages across every message type, in process against the real decoders and validators.

Mutations: byte flips, truncations, extensions, splices of two messages (decoder level), and structural
ones that decode a valid envelope, replace one value anywhere in it by a value of another type or an
extreme (deep nesting, huge or negative integers, long strings, NaN), and re-encode canonically, so the
case reaches the schema and the validators. The only allowed outcomes are ``InvalidInput`` from the
decoder and ``GossipReject``/``GossipIgnore`` (or acceptance) from the validator; anything else is a crash.
"""

from __future__ import annotations

import random
import time
from typing import Any

from test_messages_fuzz import T0, Fixture, fx  # noqa: F401 - fx is the shared fixture

from protocol.encoding import decode_canonical, encode_canonical
from protocol.errors import GossipIgnore, GossipReject, InvalidInput
from protocol.messages import decode_message, encode_message, validate_gossip_message

CASES = 100_000
_EXTREMES: list[Any] = [None, True, -1, 0, 2**64 - 1, -(2**63), 1.5, float("nan"), float("inf"), "", "x" * 5000,
                        b"", b"\x00" * 97, [], {}, [[[[[[[[[[[[]]]]]]]]]]]], {"type": "vote"}, "\n", "a\n"]


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _leaves(v, path + (i,))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _replace(copy[head], rest, value)
    return copy


def _mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # flip bytes
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 1:
        return data[: rng.randrange(len(data))]
    if kind == 2:
        return data + rng.randbytes(rng.randint(1, 64))
    if kind == 3:
        cut = rng.randrange(len(data))
        return data[:cut] + other[rng.randrange(len(other)):]
    doc = decode_canonical(data, 1 << 20)
    path = rng.choice(_leaves(doc))
    if kind == 4:
        value = rng.choice(_EXTREMES)
    else:  # a value of the same type, nudged: small ints, one byte off, one element dropped
        old: Any = doc
        for p in path:
            old = old[p]
        if isinstance(old, bool):
            value = not old
        elif isinstance(old, int):
            value = old + rng.choice([-1, 1, 2**32, -(2**32)])
        elif isinstance(old, bytes) and old:
            value = old[:-1] + bytes([old[-1] ^ 1])
        elif isinstance(old, list) and old:
            value = old[:-1]
        else:
            value = rng.choice(_EXTREMES)
    try:
        return encode_canonical(_replace(doc, path, value))
    except InvalidInput:
        return data[::-1]  # the value has no canonical encoding (NaN is fine, e.g. 2^64 is not)


def test_fuzzed_messages_never_crash(fx: Fixture) -> None:  # noqa: F811
    rng = random.Random(20261201)
    encoded = [encode_message(m) for m in fx.samples.values()]
    states = (fx.empty, fx.state)
    crashes: list[str] = []
    outcomes = {"decode_error": 0, "reject": 0, "ignore": 0, "accept": 0}
    originals = set(encoded)
    mutated_accepted: list[str] = []  # a changed message that still passes: some field is not signed
    started = time.perf_counter()
    for i in range(CASES):
        data = _mutate(rng, encoded[i % len(encoded)], rng.choice(encoded))
        try:
            decode_message(data)
        except InvalidInput:
            outcomes["decode_error"] += 1
        except Exception as exc:  # noqa: BLE001 - what this test looks for
            crashes.append(f"decode {data[:40].hex()}: {exc!r}")
        try:
            validate_gossip_message(data, states[i % 2], T0)
            outcomes["accept"] += 1
            if data not in originals:
                mutated_accepted.append(decode_canonical(data, 1 << 20).get("type", "?"))
        except GossipReject:
            outcomes["reject"] += 1
        except GossipIgnore:
            outcomes["ignore"] += 1
        except Exception as exc:  # noqa: BLE001
            crashes.append(f"validate {data[:40].hex()}: {exc!r}")
    elapsed = time.perf_counter() - started
    print(f"{CASES} fuzz cases in {elapsed:.1f} s: {outcomes}; crashes: {len(crashes)}")
    assert not crashes, crashes[:5]
    assert not mutated_accepted, f"accepted mutations: {sorted(set(mutated_accepted))}"
    assert outcomes["reject"] > CASES // 2 and outcomes["accept"] < CASES // 10
