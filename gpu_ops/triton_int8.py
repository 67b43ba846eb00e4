"""The exact-slice matmul (SPEC.md §10.3) on integer tensor cores: int8 digit GEMMs, combined exactly.

``ref.matmul`` multiplies integers: row i of A becomes a_ik = trunc(A_ik * 2**(t - e_i)) and
column j of B becomes b_kj = trunc(B_kj * 2**(t - f_j)), |a|, |b| < 2**t, with t =
``ref.slice_bits(K)`` so that K * 2**(2t) <= 2**53; the result is f32((sum_k a_ik b_kj + 0) *
2**(e_i - t) * 2**(f_j - t)). Any method that yields the exact integers sum_k a_ik b_kj gives
the reference's bits. This module gets them from int8 matrix products (Ozaki scheme I, without
dropping any term):

* each integer is written in S balanced base-256 digits (``get_digit_count``),
  a = sum_s d_s * 2**(8s) with every d_s in [-128, 127] (an int8);
* sum_k a_ik b_kj = sum_{s,u} 2**(8(s+u)) * sum_k dA_s[i,k] * dB_u[k,j]: S*S int8 GEMMs with
  int32 accumulation. Each digit product is at most 2**14 in magnitude, so a K-sum stays below
  2**31 while K <= 2**16 (``MAX_K``; above it the wrapper raises and the float64 path is used);
  integer additions are exact and associative, so tl.dot's k-order, tiling and split-K are free;
* the S*S int32 tiles are shifted and added in int64 (exact: the total is below 2**53), turned
  into float64 (exact) and scaled exactly as the reference.

S is 3 for K > 128 (t <= 22) and 4 for K <= 128: 9 (or 16) int8 GEMMs per exact matmul. On an
H100/H200 (dense int8 ~1979 TOPS, FP64 tensor ~67 TFLOP/s) that is an upper bound of about
220 exact TFLOP/s-equivalent, ~3x the float64 tensor-core path (docs/gpu.md). Nothing here is
order-dependent, so the same kernel gives the same bits on every GPU and in the interpreter.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import ref, triton_ops
from .triton_ops import _frexp_exp, _pow2_f64

F32 = torch.float32
MAX_K = 1 << 16
"""Largest inner dimension whose int32 digit sums cannot overflow (K * 2**14 < 2**31)."""

LAUNCH = {"enable_fp_fusion": False}


def get_digit_count(t: int) -> int:
    """Balanced base-256 digits (each in [-128, 127]) needed for every integer |q| < 2**t.

    S digits reach 127 * (256**S - 1) / 255 on the positive side, a little under 2**(8S - 1):
    so t = 23 needs 4 digits, t <= 22 needs 3."""
    s = 1
    while 127 * (256**s - 1) // 255 < 2**t - 1:
        s += 1
    return s


@triton.jit
def _digits_kernel(x_ptr, d_ptr, e_ptr, R, L, sr, sl, t, plane, S: tl.constexpr, BR: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Lines r of x (element (r, l) at x + r*sr + l*sl), BR per program: exponent e_r and the S
    int8 digit planes of q = trunc(x * 2**(t - e_r)); digit s of (r, l) is stored at
    d + s*plane + r*L + l."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    rmask = r < R
    mx = tl.zeros([BR, BLOCK], dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rmask[:, None] & (offs[None, :] < L)
        v = tl.load(x_ptr + r[:, None] * sr + offs[None, :] * sl, mask=msk, other=0.0)
        mx = tl.maximum(mx, tl.abs(v))
    e = _frexp_exp(tl.max(mx, 1))
    scale = _pow2_f64((t - e).to(tl.int64))
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rmask[:, None] & (offs[None, :] < L)
        v = tl.load(x_ptr + r[:, None] * sr + offs[None, :] * sl, mask=msk, other=0.0)
        # |x * 2**(t-e)| < 2**t <= 2**26: the float64 product is exact and the int64 conversion
        # truncates toward zero, which is trunc().
        q = (v.to(tl.float64) * scale[:, None]).to(tl.int64)
        for s in tl.static_range(S):
            d = ((q + 128) & 255) - 128  # in [-128, 127]; q - d is a multiple of 256
            tl.store(d_ptr + s * plane + r[:, None] * L + offs[None, :], d.to(tl.int8), mask=msk)
            q = (q - d) >> 8
    tl.store(e_ptr + r, e, mask=rmask)


@triton.jit
def _digit_gemm_kernel(da_ptr, db_ptr, ea_ptr, eb_ptr, c_ptr, M, N, K, t, plane_a, plane_b,
                       S: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C = f32((sum_{s,u} 2**(8(s+u)) * (dA_s @ dB_u^T) + 0) * 2**(ea - t) * 2**(eb - t)).

    dA_s is [M, K] int8 (row-major), dB_u is [N, K] int8 (the digits of B's columns)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    total = tl.zeros([BM, BN], dtype=tl.int64)
    for s in tl.static_range(S):
        for u in tl.static_range(S):
            acc = tl.zeros([BM, BN], dtype=tl.int32)
            for k0 in range(0, K, BK):
                kk = k0 + rk
                a = tl.load(da_ptr + s * plane_a + rm[:, None] * K + kk[None, :],
                            mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
                b = tl.load(db_ptr + u * plane_b + rn[None, :] * K + kk[:, None],
                            mask=(rn[None, :] < N) & (kk[:, None] < K), other=0)
                acc += tl.dot(a, b, out_dtype=tl.int32)
            total += acc.to(tl.int64) << (8 * (s + u))
    ea = tl.load(ea_ptr + rm, mask=rm < M, other=0).to(tl.int64)
    eb = tl.load(eb_ptr + rn, mask=rn < N, other=0).to(tl.int64)
    # + 0.0: an exact zero is +0, as in the reference; the scalings are exact powers of two.
    c = (total.to(tl.float64) + 0.0) * _pow2_f64(ea - t)[:, None] * _pow2_f64(eb - t)[None, :]
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], c.to(tl.float32), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _digits(x: torch.Tensor, lines: int, length: int, sr: int, sl: int, t: int, s: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.empty(s, lines, length, dtype=torch.int8, device=x.device)
    e = torch.empty(lines, dtype=torch.int32, device=x.device)
    block = min(256, triton.next_power_of_2(max(length, 16)))
    br = 32
    _digits_kernel[(triton.cdiv(lines, br),)](x, d, e, lines, length, sr, sl, t, lines * length, S=s, BR=br,
                                              BLOCK=block, **LAUNCH)
    return d, e


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ref.matmul(a, b) for 2-D float32 a [m, k], b [k, n], via int8 digit GEMMs (same bits).

    Operands holding inf or NaN go to ``triton_ops.matmul`` (float64 integer GEMM)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"triton_int8.matmul needs [m, k] @ [k, n], got {tuple(a.shape)} @ {tuple(b.shape)}")
    m, k = a.shape
    n = b.shape[1]
    if k > MAX_K:
        raise ValueError(f"inner dimension {k} > {MAX_K}: int32 digit sums could overflow; use the float64 path")
    a = a.to(F32)
    b = b.to(F32)
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return triton_ops.matmul(a, b)  # inf/NaN have no integer digits; the float64 path keeps them
    c = torch.empty(m, n, dtype=F32, device=a.device)
    if m == 0 or n == 0:
        return c
    if k == 0:
        return c.zero_()
    t = ref.slice_bits(k)
    s = get_digit_count(t)
    da, ea = _digits(a, m, k, a.stride(0), a.stride(1), t, s)
    db, eb = _digits(b, n, k, b.stride(1), b.stride(0), t, s)  # B's lines are its columns
    bm, bn, bk = 64, 64, 32
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _digit_gemm_kernel[grid](da, db, ea, eb, c, m, n, k, t, m * k, n * k, S=s, BM=bm, BN=bn, BK=bk, **LAUNCH)
    return c


def get_expected_tops(k: int, int8_tops: float = 1979.0) -> float:
    """Upper bound of exact-matmul throughput (TFLOP/s-equivalent) from the int8 peak alone."""
    s = get_digit_count(ref.slice_bits(k))
    return int8_tops / (s * s) if k else math.inf
