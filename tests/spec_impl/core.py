"""SPEC.md §2, §4–§7, §9, §12 re-implemented from the text alone (no import of protocol/ or gpu_ops/).

This is the second implementation the test vectors are checked against: it shares no code
with the project, so a vector that both produce was not merely copied from one of them.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Any, Sequence

import numpy as np


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- §2 canonical msgpack (encoder only: a decoder is "decode, re-encode, compare") ---

def pack(obj: Any) -> bytes:
    if obj is None:
        return b"\xc0"
    if obj is True:
        return b"\xc3"
    if obj is False:
        return b"\xc2"
    if isinstance(obj, int):
        return _pack_int(obj)
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        raw = obj.encode("utf-8")
        n = len(raw)
        if n < 32:
            return bytes([0xA0 | n]) + raw
        return _sized(n, (0xD9, 0xDA, 0xDB)) + raw
    if isinstance(obj, (bytes, bytearray)):
        return _sized(len(obj), (0xC4, 0xC5, 0xC6)) + bytes(obj)
    if isinstance(obj, (list, tuple)):
        n = len(obj)
        head = bytes([0x90 | n]) if n < 16 else _sized(n, (None, 0xDC, 0xDD))
        return head + b"".join(pack(v) for v in obj)
    if isinstance(obj, dict):
        items = sorted(((k.encode("utf-8"), v) for k, v in obj.items()), key=lambda kv: kv[0])
        n = len(items)
        head = bytes([0x80 | n]) if n < 16 else _sized(n, (None, 0xDE, 0xDF))
        return head + b"".join(pack(k.decode("utf-8")) + pack(v) for k, v in items)
    raise TypeError(f"no canonical msgpack for {type(obj).__name__}")


def _sized(n: int, tags: tuple[int | None, int, int]) -> bytes:
    if n < 256 and tags[0] is not None:
        return bytes([tags[0], n])
    if n < 65536:
        return bytes([tags[1]]) + struct.pack(">H", n)
    return bytes([tags[2]]) + struct.pack(">I", n)


def _pack_int(v: int) -> bytes:
    if v >= 0:  # the unsigned family for every non-negative integer
        if v < 128:
            return bytes([v])
        for tag, fmt, limit in ((0xCC, ">B", 2**8), (0xCD, ">H", 2**16), (0xCE, ">I", 2**32), (0xCF, ">Q", 2**64)):
            if v < limit:
                return bytes([tag]) + struct.pack(fmt, v)
        raise ValueError("integer too large")
    if v >= -32:
        return struct.pack(">b", v)
    for tag, fmt, limit in ((0xD0, ">b", 2**7), (0xD1, ">h", 2**15), (0xD2, ">i", 2**31), (0xD3, ">q", 2**63)):
        if v >= -limit:
            return bytes([tag]) + struct.pack(fmt, v)
    raise ValueError("integer too small")


# --- §4 Merkle trees (RFC 6962) ---

def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    if not hashes:
        return sha256(b"")
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return sha256(b"\x01" + merkle_root_of_hashes(hashes[:k]) + merkle_root_of_hashes(hashes[k:]))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    return merkle_root_of_hashes([sha256(b"\x00" + leaf) for leaf in leaves])


def merkle_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]), bottom-up."""
    hashes = [sha256(b"\x00" + leaf) for leaf in leaves]

    def path(m: int, hs: Sequence[bytes]) -> list[bytes]:
        if len(hs) <= 1:
            return []
        k = _split(len(hs))
        if m < k:
            return path(m, hs[:k]) + [merkle_root_of_hashes(hs[k:])]
        return path(m - k, hs[k:]) + [merkle_root_of_hashes(hs[:k])]

    return path(index, hashes)


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2; None when the path cannot belong to a tree of ``size`` leaves."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = sha256(b"\x00" + leaf)
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


# --- §5 leaves and state roots ---

TENSOR_CHUNK_BYTES = 2**19


def tensor_chunks(raw: bytes) -> list[bytes]:
    """§5.2: max(1, ceil(L / C)) chunks of C bytes, the last one short (empty for an empty tensor)."""
    n = max(1, (len(raw) + TENSOR_CHUNK_BYTES - 1) // TENSOR_CHUNK_BYTES)
    return [raw[i * TENSOR_CHUNK_BYTES:min((i + 1) * TENSOR_CHUNK_BYTES, len(raw))] for i in range(n)]


def chunk_root(raw: bytes) -> bytes:
    return merkle_root(tensor_chunks(raw))


def leaf_data(name: str, dtype: str, shape: Sequence[int], raw: bytes) -> bytes:
    nb = name.encode("ascii")
    out = b"pol/v1/tensor" + struct.pack("<H", len(nb)) + nb + struct.pack("<B", len(dtype)) + dtype.encode("ascii")
    out += struct.pack("<B", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
    return out + chunk_root(raw)


def state_root(tensors: dict[str, np.ndarray], step: int) -> bytes:
    """Root of params/slots (f32 arrays keyed by leaf name) plus ``meta/step``."""
    items = {name: leaf_data(name, "f32", arr.shape, np.ascontiguousarray(arr, dtype="<f4").tobytes())
             for name, arr in tensors.items()}
    items["meta/step"] = leaf_data("meta/step", "i64", (), struct.pack("<q", step))
    return merkle_root([items[k] for k in sorted(items, key=lambda s: s.encode("ascii"))])


# --- §3 and §6 ids ---

def task_id(normalized: dict[str, Any]) -> bytes:
    return sha256(b"pol/v1/task" + pack(normalized))


def claim_body_bytes(body: dict[str, Any]) -> bytes:
    return pack(body)


def claim_id(body: dict[str, Any]) -> bytes:
    return sha256(b"pol/v1/claim-id" + pack(body))


def training_seed(task_id_: bytes, prover: bytes, posting_id: bytes) -> int:
    """§9 run seed: every random stream of a claimed run is keyed by it, never by the task's seed."""
    return int.from_bytes(sha256(b"pol/v1/training-seed" + task_id_ + prover + posting_id)[:8], "little")


# --- §7 segment sample ---

def segment_sample(signature: bytes, num_segments: int, count: int) -> list[int]:
    if count >= num_segments:
        return list(range(num_segments))
    seed = sha256(b"pol/v1/sample-seed" + signature)
    chosen: list[int] = []
    i = 0
    while len(chosen) < count:
        c = int.from_bytes(sha256(seed + struct.pack("<Q", i))[:8], "little") % num_segments
        if c not in chosen:
            chosen.append(c)
        i += 1
    return sorted(chosen)


# --- §9 Philox4x32-10 and the streams built on it ---

INIT, DATA, DROPOUT = 1, 2, 3
_MASK = 0xFFFFFFFF


def philox_block(counter: Sequence[int], key: Sequence[int]) -> list[int]:
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & _MASK, p1 & _MASK, ((p0 >> 32) ^ c3 ^ k1) & _MASK, p0 & _MASK
        k0 = (k0 + 0x9E3779B9) & _MASK
        k1 = (k1 + 0xBB67AE85) & _MASK
    return [c0, c1, c2, c3]


def random_u32(seed: int, stream: int, a: int, b: int, n: int) -> np.ndarray:
    """Vectorised over blocks with uint64 lanes (same arithmetic as ``philox_block``)."""
    blocks = (n + 3) // 4
    m = np.uint64(_MASK)
    c0 = np.arange(blocks, dtype=np.uint64)
    c1 = np.full(blocks, a % 2**32, dtype=np.uint64)
    c2 = np.full(blocks, b % 2**32, dtype=np.uint64)
    c3 = np.full(blocks, stream, dtype=np.uint64)
    k0, k1 = seed % 2**32, seed // 2**32
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0)), p1 & m, ((p0 >> np.uint64(32)) ^ c3
                                                                                  ^ np.uint64(k1)), p0 & m
        k0 = (k0 + 0x9E3779B9) & _MASK
        k1 = (k1 + 0xBB67AE85) & _MASK
    return np.stack([c0, c1, c2, c3], axis=1).reshape(-1)[:n].astype(np.uint32)


def uniform(seed: int, stream: int, a: int, b: int, n: int) -> np.ndarray:
    w = random_u32(seed, stream, a, b, n)
    return (w >> np.uint32(8)).astype(np.float64) * 2.0**-24 + 2.0**-25


def permutation(seed: int, epoch: int, n: int) -> list[int]:
    w = random_u32(seed, DATA, epoch, 0, max(n - 1, 0))
    order = list(range(n))
    for j, i in enumerate(range(n - 1, 0, -1)):
        k = int(w[j]) % (i + 1)
        order[i], order[k] = order[k], order[i]
    return order


# --- §12 datasets ---

def dataset_hash(adapter: str, canonical: bytes) -> bytes:
    return sha256(b"pol/v1/dataset" + adapter.encode("ascii") + b"\x00" + canonical)


@functools.lru_cache(maxsize=1)
def digits_table() -> tuple[np.ndarray, np.ndarray]:
    """(pixels u8 [1797, 64], labels u8 [1797]) from scikit-learn's shipped CSV, last column = label."""
    import gzip
    import importlib.resources

    raw = gzip.decompress(importlib.resources.files("sklearn.datasets").joinpath("data/digits.csv.gz").read_bytes())
    rows = [[int(v) for v in line.split(",")] for line in raw.decode("ascii").splitlines() if line.strip()]
    table = np.array(rows, dtype=np.int64)
    return table[:, :64].astype(np.uint8), table[:, 64].astype(np.uint8)


@functools.lru_cache(maxsize=1)
def pydoc_text() -> bytes:
    import pydoc_data.topics as topics

    return "\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")


def image_batch_indices(seed: int, step: int, batch: int, n: int) -> list[int]:
    out = []
    perms: dict[int, list[int]] = {}
    for p in range(step * batch, step * batch + batch):
        e = p // n
        if e not in perms:
            perms[e] = permutation(seed, e, n)
        out.append(perms[e][p % n])
    return out
