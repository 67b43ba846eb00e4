"""SPEC.md §10 operators in numpy, written from the text alone (no import of gpu_ops/ or protocol/).

Every binary32 operation is one numpy float32 ufunc call on float32 operands (numpy rounds each
once and never contracts a multiply and an add), so these programs are the text, step by step.
"""

from __future__ import annotations

import math

import numpy as np

f32 = np.float32
f64 = np.float64


def bits(v: int) -> np.float32:
    return np.array([v], dtype=np.uint32).view(np.float32)[0]


LOG2E, C1, C2, HI, LO, SQRTHF = (bits(v) for v in (0x3FB8AA3B, 0x3F318000, 0xB95E8083, 0x42B17218, 0xC2CFF1B5,
                                                   0x3F3504F3))
P = [bits(v) for v in (0x39506967, 0x3AB743CE, 0x3C088908, 0x3D2AA9C1, 0x3E2AAAAA, 0x3F000000)]
L = [bits(v) for v in (0x3D9021BB, 0xBDEBD1B8, 0x3DEF251A, 0xBDFE5D4F, 0x3E11E9BF, 0xBE2AAE50, 0x3E4CCEAC,
                       0xBE7FFFFC, 0x3EAAAAAA)]
ONE, HALF, TWO = f32(1.0), f32(0.5), f32(2.0)
GELU_K = f32(math.sqrt(2.0 / math.pi))
GELU_C = f32(0.044715)
GELU_C3 = f32(3.0 * 0.044715)


def _pow2_f32(k: np.ndarray) -> np.ndarray:
    return ((k.astype(np.int32) + 127) << 23).astype(np.int32).view(np.float32)


def exp(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=f32)
    with np.errstate(all="ignore"):
        xc = np.minimum(np.maximum(x, LO), HI)
        n = np.floor(xc * LOG2E + HALF)
        r = xc - n * C1
        r = r - n * C2
        p = np.full_like(x, P[0])
        for c in P[1:]:
            p = p * r + c
        y = p * (r * r) + r + ONE
        ni = np.where(np.isnan(n), 0, n).astype(np.int64)
        n1 = np.floor_divide(ni, 2)
        y = y * _pow2_f32(n1) * _pow2_f32(ni - n1)
    y = np.where(x > HI, f32(np.inf), y)
    y = np.where(x < LO, f32(0.0), y)
    return np.where(np.isnan(x), x, y).astype(f32)


def log(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=f32)
    with np.errstate(all="ignore"):
        tiny = x < bits(0x00800000)
        xs = np.where(tiny, x * f32(2.0**23), x)
        b = xs.view(np.int32)
        e = ((b >> 23) & 0xFF) - 126
        m = ((b & 0x007FFFFF) | (126 << 23)).astype(np.int32).view(f32)
        e = np.where(tiny, e - 23, e)
        small = m < SQRTHF
        e = np.where(small, e - 1, e)
        m = np.where(small, m + m, m)
        z = m - ONE
        p = np.full_like(x, L[0])
        for c in L[1:]:
            p = p * z + c
        y = (p * z) * (z * z)
        fe = e.astype(f32)
        y = y + fe * C2
        y = y - HALF * (z * z)
        y = z + y
        y = y + fe * C1
    y = np.where(x == f32(0.0), f32(-np.inf), y)
    y = np.where(x < f32(0.0), f32(np.nan), y)
    y = np.where(np.isposinf(x), x, y)
    return np.where(np.isnan(x), x, y).astype(f32)


def tanh(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=f32)
    with np.errstate(all="ignore"):
        return (ONE - TWO / (exp(x + x) + ONE)).astype(f32)


def sqrt(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.sqrt(np.asarray(x, dtype=f32).astype(f64)).astype(f32)


def gelu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, th) of §10.4."""
    x = np.asarray(x, dtype=f32)
    with np.errstate(all="ignore"):
        th = tanh(GELU_K * (x + GELU_C * ((x * x) * x)))
        return ((HALF * x) * (ONE + th)).astype(f32), th


FOPI, DP1, DP2, DP3 = (bits(v) for v in (0x3FA2F983, 0x3F490000, 0x397DA000, 0x33222169))
SIN_S = [bits(v) for v in (0xB94CA1F9, 0x3C08839E, 0xBE2AAAA3)]
COS_K = [bits(v) for v in (0x37CCF5CE, 0xBAB6061A, 0x3D2AAAA5)]


def _octant(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """§10.4 sin/cos: (ys, yc, j, flip, inside the domain)."""
    a = np.abs(np.asarray(x, dtype=f32))
    with np.errstate(all="ignore"):
        inside = a <= f32(8192.0)
        a = np.where(inside, a, f32(0.0)).astype(f32)
        q = np.floor(a * FOPI).astype(f32)
        j = q.astype(np.int64)
        odd = j % 2 == 1
        j = np.where(odd, j + 1, j) % 8
        q = np.where(odd, q + ONE, q).astype(f32)
        flip = j > 3
        j = np.where(flip, j - 4, j)
        r = ((a - q * DP1) - q * DP2) - q * DP3
        z = r * r
        ys = (((SIN_S[0] * z + SIN_S[1]) * z + SIN_S[2]) * z) * r + r
        yc = (((COS_K[0] * z + COS_K[1]) * z + COS_K[2]) * z) * z
        yc = (yc - HALF * z) + ONE
    return ys.astype(f32), yc.astype(f32), j, flip, inside


def sin(x: np.ndarray) -> np.ndarray:
    ys, yc, j, flip, inside = _octant(x)
    y = np.where((j == 1) | (j == 2), yc, ys)
    y = np.where(flip != np.signbit(np.asarray(x, dtype=f32)), -y, y)
    return np.where(inside, y, f32(np.nan)).astype(f32)


def cos(x: np.ndarray) -> np.ndarray:
    ys, yc, j, flip, inside = _octant(x)
    y = np.where((j == 1) | (j == 2), ys, yc)
    y = np.where(flip != (j > 1), -y, y)
    return np.where(inside, y, f32(np.nan)).astype(f32)


def relu(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=f32)
    return np.where(x > f32(0.0), x, f32(0.0)).astype(f32)


# --- §10.1–10.3 exact reductions ---

def maxexp(a: np.ndarray) -> int:
    m = float(np.max(np.abs(a.astype(f64)))) if a.size else 0.0
    return math.frexp(m)[1]


def _ceil_log2(n: int) -> int:
    return (n - 1).bit_length()


def exact_sum_group(values: np.ndarray) -> np.float32:
    """One group: Python integers, so no binary64 summation at all."""
    v = np.asarray(values, dtype=f32).reshape(-1)
    n = v.size
    p = 52 - _ceil_log2(n) if n > 1 else 52
    e = maxexp(v)
    total = sum(int(math.trunc(math.ldexp(float(x), p - e))) for x in v)
    return f32(math.ldexp(float(total), e - p) + 0.0)


def exact_sum(x: np.ndarray, axis: int) -> np.ndarray:
    """Exact sum along ``axis``: each 1-D slice along it is one group.

    Vectorised with int64: every |q_i| < 2^P and n·2^P ≤ 2^52, so the integer sum cannot overflow
    (``exact_sum_group`` is the same rule with Python integers)."""
    x = np.asarray(x, dtype=f32)
    moved = np.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    p = 52 - _ceil_log2(n) if n > 1 else 52
    e = np.frexp(np.max(np.abs(moved.astype(f64)), axis=-1, keepdims=True))[1].astype(np.int64)
    q = np.trunc(np.ldexp(moved.astype(f64), p - e)).astype(np.int64)
    total = q.sum(axis=-1, keepdims=True)
    return (np.ldexp(total.astype(f64), e - p) + 0.0).astype(f32)[..., 0]


def exact_mean_rows(x: np.ndarray) -> np.ndarray:
    """Mean of each row of [R, F], kept as [R, 1]."""
    return (exact_sum(x, -1) / f32(x.shape[-1])).astype(f32)[:, None]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact-slice matmul of [M, K] by [K, N]: integer products, summed exactly."""
    a = np.asarray(a, dtype=f32)
    b = np.asarray(b, dtype=f32)
    k = a.shape[1]
    t = (53 - _ceil_log2(k)) // 2 if k > 1 else 26
    ea = np.frexp(np.max(np.abs(a.astype(f64)), axis=1))[1].astype(np.int64)
    eb = np.frexp(np.max(np.abs(b.astype(f64)), axis=0))[1].astype(np.int64)
    ai = np.trunc(np.ldexp(a.astype(f64), (t - ea)[:, None]))
    bi = np.trunc(np.ldexp(b.astype(f64), (t - eb)[None, :]))
    # Integer-valued binary64 operands whose partial sums stay below 2^53: exact in any order
    # (SPEC.md §10.3), so a binary64 GEMM gives the same integers as int64 arithmetic, faster.
    s = (ai @ bi) + 0.0
    return np.ldexp(np.ldexp(s, (ea - t)[:, None]), (eb - t)[None, :]).astype(f32)
