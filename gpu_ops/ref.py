"""Reference primitives in plain torch: the oracle every fast path must match bit for bit.

Allowed building blocks (SPEC.md §10.1): float32/float64 add, sub, mul, div as single torch
calls (each rounds once; torch never contracts a lone add or mul into an FMA), conversions
with round-to-nearest-even, comparisons, select, floor/trunc, abs, max (order-free), integer
and bit operations, float64 sqrt (correctly rounded), and float64 sums of integer-valued
terms whose every partial sum is an integer below 2^53 (exact in any order).
Forbidden: torch's own exp/log/tanh/sqrt(float32)/softmax/matmul(float32), fused ops
(addcmul, lerp, add with alpha, addmm) and torch.optim. Every constant operand lives on the device
of the tensor it meets (``const``): on CUDA, torch divides by a CPU scalar through its reciprocal.
"""

from __future__ import annotations

import functools
import math
import struct

import torch

F32 = torch.float32
F64 = torch.float64


def pow2_f64(k: torch.Tensor) -> torch.Tensor:
    """Exact 2**k in float64 for integer tensor k in [-1022, 1023], built from bits."""
    return ((k.to(torch.int64) + 1023) << 52).view(F64)


def pow2_f32(k: torch.Tensor) -> torch.Tensor:
    """Exact 2**k in float32 for integer tensor k in [-126, 127], built from bits."""
    return ((k.to(torch.int32) + 127) << 23).view(F32)


def max_exponent(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Smallest integer e with |x| < 2**e for every element of the reduced group (0 if all zero)."""
    a = x.abs()
    m = a.amax() if dim is None else a.amax(dim=dim, keepdim=True)
    _, e = torch.frexp(m)
    return e.to(torch.int64)


def grid_bits(n: int) -> int:
    """Grid precision P for exact sums of n terms: n * 2**P <= 2**52."""
    return 52 - max(0, math.ceil(math.log2(n))) if n > 1 else 52


def exact_sum(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Order-free float32 sum (SPEC.md §10.2).

    Each term is truncated to the grid 2**(e-P) (e from the group's max |x|, P from the
    group size), the integer-valued float64 terms are summed (exact in any order), and
    the total is rounded once to float32.
    """
    n = x.numel() if dim is None else x.shape[dim]
    p = grid_bits(n)
    e = max_exponent(x, dim)
    q = torch.trunc(x.to(F64) * pow2_f64(p - e))
    # "+ 0.0" makes an exact zero +0 whatever order or BLAS path produced it (SPEC.md §10.2).
    s = (q.sum() if dim is None else q.sum(dim=dim, keepdim=True)) + 0.0
    out = (s * pow2_f64(e - p)).to(F32)
    if dim is not None and not keepdim:
        out = out.squeeze(dim)
    return out


def exact_mean(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    n = x.numel() if dim is None else x.shape[dim]
    return exact_sum(x, dim, keepdim) / const(float(n), x)


def slice_bits(k: int) -> int:
    """Slice width t for an exact matmul with inner dimension k: k * 2**(2t) <= 2**53."""
    return (53 - max(0, math.ceil(math.log2(k)))) // 2 if k > 1 else 26


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact-slice matmul (SPEC.md §10.3), batched over leading dims like torch.matmul.

    Rows of ``a`` and columns of ``b`` are truncated to t-bit integers relative to their own
    max exponent; the integer products are summed exactly by a float64 GEMM (any blocking or
    thread count gives the same integers) and scaled back, then rounded once to float32.
    Row i of the result depends only on row i of ``a``: batch-invariant by construction.
    """
    k = a.shape[-1]
    t = slice_bits(k)
    ea = max_exponent(a, -1)  # [..., m, 1]
    eb = max_exponent(b, -2)  # [..., 1, n]
    ai = torch.trunc(a.to(F64) * pow2_f64(t - ea))
    bi = torch.trunc(b.to(F64) * pow2_f64(t - eb))
    # "+ 0.0": an exact zero is +0; BLAS paths disagree on the sign of an all-(-0) sum (SPEC.md §10.3).
    s = torch.matmul(ai, bi) + 0.0
    return (s * pow2_f64(ea - t) * pow2_f64(eb - t)).to(F32)


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt: float64 sqrt then one rounding (double is wide enough)."""
    return torch.sqrt(x.to(F64)).to(F32)


# Cephes expf/logf coefficients as float32 (SPEC.md §10.4 lists their bit patterns).
_LOG2E = 1.44269504088896341
_EXP_C1 = 0.693359375
_EXP_C2 = -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_EXP_HI = 88.72283935546875  # float32 below which exp is finite
_EXP_LO = -103.972084045410  # float32 below which exp rounds to +0
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
          -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_SQRTHF = 0.707106781186547524
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4


def const(v: float, like: torch.Tensor | None = None) -> torch.Tensor:
    """f32(v) as a 0-dim tensor on the device of ``like`` (the CPU without it).

    A constant always lives on its operands' device. This matters beyond tidiness: ATen's CUDA
    division by a *CPU* scalar (``div_true_kernel_cuda``, also for Python numbers) multiplies by
    the scalar's reciprocal, which is not the correctly rounded quotient the spec asks for; with
    both operands on the GPU it divides. Cached per value bits and device (constants are never
    written to), so a step does not copy the same scalar to the device again and again.
    """
    return _const(struct.pack("<d", v), torch.device("cpu") if like is None else like.device)


@functools.lru_cache(maxsize=4096)
def _const(bits: bytes, device: torch.device) -> torch.Tensor:
    return torch.tensor(struct.unpack("<d", bits)[0], dtype=F32, device=device)


def _c(v: float, like: torch.Tensor | None = None) -> torch.Tensor:
    return const(v, like)


def exp(x: torch.Tensor) -> torch.Tensor:
    """Deterministic float32 exp: Cephes range reduction and polynomial, each op rounded once."""
    x = x.to(F32)
    xc = torch.clamp(x, _EXP_LO, _EXP_HI)
    n = torch.floor(xc * _c(_LOG2E, x) + _c(0.5, x))
    r = xc - n * _c(_EXP_C1, x)
    r = r - n * _c(_EXP_C2, x)
    p = _c(_EXP_P[0], x)
    for coef in _EXP_P[1:]:
        p = p * r + _c(coef, x)
    r2 = r * r
    y = p * r2 + r + _c(1.0, x)
    # 2**n may be subnormal; split it into two normal factors so nothing is lost early.
    ni = n.to(torch.int32)
    n1 = torch.div(ni, 2, rounding_mode="floor")
    y = y * pow2_f32(n1) * pow2_f32(ni - n1)
    y = torch.where(x > _c(_EXP_HI, x), torch.full_like(y, math.inf), y)
    y = torch.where(x < _c(_EXP_LO, x), torch.zeros_like(y), y)
    return torch.where(torch.isnan(x), x, y)


def log(x: torch.Tensor) -> torch.Tensor:
    """Deterministic float32 natural log for x > 0 (Cephes logf); log(0) = -inf, x < 0 -> NaN."""
    x = x.to(F32)
    tiny = x < _c(1.1754943508222875e-38, x)
    # Scale subnormals into the normal range first so the exponent split below is exact.
    xs = torch.where(tiny, x * _c(2.0**23, x), x)
    bits = xs.view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 126
    m = ((bits & 0x007FFFFF) | (126 << 23)).view(F32)  # mantissa in [0.5, 1)
    e = torch.where(tiny, e - 23, e)
    small = m < _c(_SQRTHF, x)
    e = torch.where(small, e - 1, e)
    m = torch.where(small, m + m, m)
    z = m - _c(1.0, x)
    z2 = z * z
    p = _c(_LOG_P[0], x)
    for coef in _LOG_P[1:]:
        p = p * z + _c(coef, x)
    y = p * z * z2
    fe = e.to(F32)
    y = y + fe * _c(_LN2_LO, x)
    y = y - _c(0.5, x) * z2
    y = z + y
    y = y + fe * _c(_LN2_HI, x)
    y = torch.where(x == _c(0.0, x), torch.full_like(y, -math.inf), y)
    y = torch.where(x < _c(0.0, x), torch.full_like(y, math.nan), y)
    y = torch.where(torch.isinf(x) & (x > 0), x, y)
    return torch.where(torch.isnan(x), x, y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 1 - 2 / (exp(2x) + 1), with the deterministic exp."""
    one = _c(1.0, x)
    return one - _c(2.0, x) / (exp(x + x) + one)


# Cephes sinf/cosf with the 24-bit Cody-Waite split of pi/4 (SPEC.md §10.4 lists the bits).
_FOPI = 1.27323954473516
_DP1, _DP2, _DP3 = 0.78515625, 2.4187564849853515625e-4, 3.77489497744594108e-8
_SIN_P = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
_COS_P = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
SINCOS_MAX = 8192.0  # the domain |x| <= 8192; NaN beyond it


def _sincos_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ys, yc, j, flip, ok): both polynomials of the reduced argument and the octant."""
    a = x.abs()
    ok = a <= _c(SINCOS_MAX, x)  # False for NaN and inf
    a = torch.where(ok, a, torch.zeros_like(a))  # keeps the integer conversion in range
    q = torch.floor(a * _c(_FOPI, x))
    j = q.to(torch.int32)
    odd = (j & 1) == 1
    j = torch.where(odd, j + 1, j) & 7
    q = torch.where(odd, q + _c(1.0, x), q)
    flip = j > 3
    j = torch.where(flip, j - 4, j)
    r = a - q * _c(_DP1, x)
    r = r - q * _c(_DP2, x)
    r = r - q * _c(_DP3, x)
    z = r * r
    ps = _c(_SIN_P[0], x) * z + _c(_SIN_P[1], x)
    ps = ps * z + _c(_SIN_P[2], x)
    ys = (ps * z) * r + r
    pc = _c(_COS_P[0], x) * z + _c(_COS_P[1], x)
    pc = pc * z + _c(_COS_P[2], x)
    yc = (pc * z) * z
    yc = yc - _c(0.5, x) * z
    yc = yc + _c(1.0, x)
    return ys, yc, j, flip, ok


def sin(x: torch.Tensor) -> torch.Tensor:
    """Deterministic float32 sine (Cephes sinf), |x| <= 8192; NaN outside and for NaN/inf."""
    x = x.to(F32)
    ys, yc, j, flip, ok = _sincos_parts(x)
    y = torch.where((j == 1) | (j == 2), yc, ys)
    y = torch.where(flip != torch.signbit(x), -y, y)
    return torch.where(ok, y, torch.full_like(y, math.nan))


def cos(x: torch.Tensor) -> torch.Tensor:
    """Deterministic float32 cosine (Cephes cosf), |x| <= 8192; NaN outside and for NaN/inf."""
    x = x.to(F32)
    ys, yc, j, flip, ok = _sincos_parts(x)
    y = torch.where((j == 1) | (j == 2), ys, yc)
    y = torch.where(flip != (j > 1), -y, y)
    return torch.where(ok, y, torch.full_like(y, math.nan))
