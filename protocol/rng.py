"""Counter-based randomness: Philox4x32-10 (Salmon et al., SC'11; SPEC.md §9).

Every random number in training (initial weights, data order, dropout masks) is a pure
function of (task seed, stream, counter), so any device reproduces it and a replay can
start at any step without carrying generator state.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .constants import BLS_PUBKEY_LEN, DOMAIN_TRAINING_SEED, HASH_LEN

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)

STREAM_INIT = 1
STREAM_DATA = 2
STREAM_DROPOUT = 3


def compute_training_seed(task_id: bytes, prover: bytes, posting_id: bytes) -> int:
    """The Philox key of a run: ``u64le(SHA-256(DOMAIN_TRAINING_SEED || task_id || prover ||
    posting_id)[0:8])`` (SPEC.md §9). ``task_id`` hashes the whole task, its seed included.

    Keying every stream by the task, the prover's public key and the posting it answers makes the
    training a function of who trains what for whom: checkpoints copied from another prover, from a
    relabelled task or from a run for another posting do not start from this run's initial state.
    """
    if len(task_id) != HASH_LEN or len(prover) != BLS_PUBKEY_LEN or len(posting_id) != HASH_LEN:
        raise ValueError("task_id and posting_id are 32-byte hashes, prover a 48-byte BLS key")
    digest = hashlib.sha256(DOMAIN_TRAINING_SEED + task_id + prover + posting_id).digest()
    return int.from_bytes(digest[:8], "little")


def compute_philox4x32(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of each row of ``counters`` (uint32, shape [n, 4]) under a 64-bit key."""
    c = counters.astype(np.uint64)
    c0, c1, c2, c3 = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    k0, k1 = key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> _SHIFT, p0 & _MASK
        hi1, lo1 = p1 >> _SHIFT, p1 & _MASK
        c0 = hi1 ^ c1 ^ np.uint64(k0)
        c1 = lo1
        c2 = hi0 ^ c3 ^ np.uint64(k1)
        c3 = lo0
        k0 = (k0 + _W0) & 0xFFFFFFFF
        k1 = (k1 + _W1) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def compute_random_u32(seed: int, stream: int, a: int, b: int, n: int) -> np.ndarray:
    """``n`` uint32 words for (seed, stream, a, b): block i has counter (i, a, b, stream)."""
    if not 0 <= seed < 2**64:
        raise ValueError("seed must fit in 64 bits")
    blocks = (n + 3) // 4
    counters = np.zeros((blocks, 4), dtype=np.uint32)
    counters[:, 0] = np.arange(blocks, dtype=np.uint32)
    counters[:, 1] = a & 0xFFFFFFFF
    counters[:, 2] = b & 0xFFFFFFFF
    counters[:, 3] = stream & 0xFFFFFFFF
    key = (seed & 0xFFFFFFFF, seed >> 32)
    return compute_philox4x32(counters, key).reshape(-1)[:n]


def compute_uniform_f64(seed: int, stream: int, a: int, b: int, n: int) -> np.ndarray:
    """Uniform values in (0, 1): ``(u32 >> 8) * 2^-24 + 2^-25``, exact in float64."""
    words = compute_random_u32(seed, stream, a, b, n)
    return (words >> np.uint32(8)).astype(np.float64) * 2.0**-24 + 2.0**-25


def compute_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """Fisher-Yates shuffle of ``range(n)`` for one epoch: for i from n-1 down to 1, swap i with
    ``u32[n-1-i] mod (i+1)``. The tiny modulo bias is part of the definition."""
    words = compute_random_u32(seed, STREAM_DATA, epoch, 0, max(n - 1, 0))
    perm = list(range(n))
    for j, i in enumerate(range(n - 1, 0, -1)):
        k = int(words[j]) % (i + 1)
        perm[i], perm[k] = perm[k], perm[i]
    return np.asarray(perm, dtype=np.int64)
