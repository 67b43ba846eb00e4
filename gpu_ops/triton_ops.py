"""Triton kernels for the reproducible operators (SPEC.md §10), bit-equal to ``gpu_ops.ref``.

Every kernel is a transcription of the reference program, op for op, under these rules
(see docs/gpu.md):

* Launch with ``enable_fp_fusion=False``: LLVM then emits ``mul.rn``/``add.rn`` and ptxas gets
  ``--fmad=false``, so no multiply-add is ever contracted into an FMA. The reference rounds
  every product and every sum separately; so do these kernels.
* Division is ``tl.math.div_rn`` (plain ``/`` on fp32 lowers to the approximate ``div.full``).
* Square root is ``tl.sqrt_rn`` on float32. The reference computes ``f32(sqrt_f64(x))``; both
  are the correctly rounded float32 square root (float64 has more than 2*24+2 bits, so the
  double rounding cannot change the result), hence equal.
* No ``tl.exp``/``tl.log``/libdevice: exp and log are the reference's Cephes programs, written
  with the same constants (pre-rounded to float32 here, exactly as ``torch.tensor(v, float32)``
  rounds them) in the same order.
* Reductions are exact: terms are truncated to integers on a grid set by the group's max |x|
  (``tl.max`` is order-free), and the integer-valued float64 terms are added with ``tl.sum``
  or per-lane accumulators. Every partial sum is an integer of magnitude <= n * 2**P <= 2**52,
  so every addition is exact and the result is the same in any order, tree shape, block size or
  number of programs. A final ``+ 0.0`` gives the reference's +0 for an all-(-0) group (torch's
  sum starts from +0).
* The exact-slice matmul's integer GEMM is an explicit k-loop over float64 tiles,
  ``acc += sum_k a_ik * b_kj``: each a_ik, b_kj is an integer below 2**t, each product below
  2**(2t) and every partial sum below K * 2**(2t) <= 2**53, so each product and sum is exact
  whatever the order, blocking or FMA contraction (an FMA of exact values is exact). The same
  argument makes ``tl.dot`` on float64 (DMMA, ``input_precision="ieee"``) or torch's float64
  matmul on CUDA valid engines for that core; the explicit loop is used so the interpreter
  and every GPU run the same code.
* Scalar constants are written on the right of tensor operands (``x * _C``, never ``_C * x``):
  IEEE multiplication commutes, and the interpreter mishandles a constexpr on the left of a
  tensor passed straight into a nested jit function.
* Accumulators that carry signs start where the reference starts (+0 for sums, as torch).

NaN payloads are not specified: kernels produce a NaN wherever the reference does, but the
bits of the NaN may differ (x86 and CUDA default NaNs differ). Training rejects non-finite
losses before they reach a state root.

The wrappers take torch tensors on any device Triton can address: CUDA tensors with a GPU, or
CPU tensors under ``TRITON_INTERPRET=1`` (set before triton is imported), which runs the same
kernels in numpy with correctly rounded float32/float64 arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from . import ref
from .optim import compute_pow

F32 = torch.float32
F64 = torch.float64

LAUNCH = {"enable_fp_fusion": False}
"""Launch options every kernel in this module is started with."""


def _f32(v: float) -> float:
    """``v`` rounded once to float32 (round to nearest even), as a Python float."""
    return float(np.float32(v))


# Constants, rounded to float32 exactly as ref._c rounds them; a float32-representable literal
# needs no further rounding inside the compiler.
_LOG2E = tl.constexpr(_f32(ref._LOG2E))
_EXP_C1 = tl.constexpr(_f32(ref._EXP_C1))
_EXP_C2 = tl.constexpr(_f32(ref._EXP_C2))
_EXP_P0 = tl.constexpr(_f32(ref._EXP_P[0]))
_EXP_P1 = tl.constexpr(_f32(ref._EXP_P[1]))
_EXP_P2 = tl.constexpr(_f32(ref._EXP_P[2]))
_EXP_P3 = tl.constexpr(_f32(ref._EXP_P[3]))
_EXP_P4 = tl.constexpr(_f32(ref._EXP_P[4]))
_EXP_P5 = tl.constexpr(_f32(ref._EXP_P[5]))
_EXP_HI = tl.constexpr(_f32(ref._EXP_HI))
_EXP_LO = tl.constexpr(_f32(ref._EXP_LO))
_LOG_P0 = tl.constexpr(_f32(ref._LOG_P[0]))
_LOG_P1 = tl.constexpr(_f32(ref._LOG_P[1]))
_LOG_P2 = tl.constexpr(_f32(ref._LOG_P[2]))
_LOG_P3 = tl.constexpr(_f32(ref._LOG_P[3]))
_LOG_P4 = tl.constexpr(_f32(ref._LOG_P[4]))
_LOG_P5 = tl.constexpr(_f32(ref._LOG_P[5]))
_LOG_P6 = tl.constexpr(_f32(ref._LOG_P[6]))
_LOG_P7 = tl.constexpr(_f32(ref._LOG_P[7]))
_LOG_P8 = tl.constexpr(_f32(ref._LOG_P[8]))
_SQRTHF = tl.constexpr(_f32(ref._SQRTHF))
_LN2_HI = tl.constexpr(_f32(ref._LN2_HI))
_LN2_LO = tl.constexpr(_f32(ref._LN2_LO))
_FLT_MIN = tl.constexpr(_f32(1.1754943508222875e-38))
_TWO23 = tl.constexpr(8388608.0)
_TWO52 = tl.constexpr(4503599627370496.0)
_GELU_K = tl.constexpr(_f32(math.sqrt(2.0 / math.pi)))
_GELU_C = tl.constexpr(_f32(0.044715))
_GELU_3C = tl.constexpr(_f32(3.0 * 0.044715))
_INF = tl.constexpr(float("inf"))
_NAN = tl.constexpr(float("nan"))


# --------------------------------------------------------------------------- device helpers

@triton.jit
def _isnan(x):
    return x != x  # noqa: PLR0124 - the IEEE NaN test


@triton.jit
def _pow2_f32(k):
    """Exact 2**k in float32 from bits, k int32 in [-126, 127]."""
    return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _pow2_f64(k):
    """Exact 2**k in float64 from bits, k int64 in [-1022, 1023]."""
    return ((k + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _frexp_exp(m):
    """frexp exponent of float32 m >= 0 (smallest e with m < 2**e); 0 for 0, inf and NaN (as torch.frexp)."""
    bits = m.to(tl.float64).to(tl.int64, bitcast=True)  # float32 subnormals are normal in float64
    e = ((bits >> 52) & 0x7FF) - 1022
    special = (m == 0.0) | _isnan(m) | (m == _INF)
    return tl.where(special, 0, e)


@triton.jit
def _trunc_f64(y):
    """torch.trunc for float64 (sign of zero kept; |y| >= 2**52, inf and NaN pass through)."""
    a = tl.abs(y)
    small = a < _TWO52
    t = tl.where(small, a, 0.0).to(tl.int64).to(tl.float64)  # fptosi truncates toward zero
    r = tl.where(y < 0.0, -t, t)
    r = tl.where(small, r, y)
    return tl.where(y == 0.0, y, r)


@triton.jit
def _exp_f32(x):
    """ref.exp: Cephes expf, every operation rounded once, 2**n split into two normal factors."""
    xs = tl.where(_isnan(x), 0.0, x)
    xc = tl.minimum(tl.maximum(xs, _EXP_LO), _EXP_HI)
    n = tl.floor(xc * _LOG2E + 0.5)
    r = xc - n * _EXP_C1
    r = r - n * _EXP_C2
    p = r * _EXP_P0 + _EXP_P1
    p = p * r + _EXP_P2
    p = p * r + _EXP_P3
    p = p * r + _EXP_P4
    p = p * r + _EXP_P5
    r2 = r * r
    y = p * r2 + r + 1.0
    ni = n.to(tl.int32)
    n1 = ni >> 1  # arithmetic shift: floor(ni / 2), as torch.div(..., rounding_mode="floor")
    y = y * _pow2_f32(n1) * _pow2_f32(ni - n1)
    y = tl.where(x > _EXP_HI, _INF, y)
    y = tl.where(x < _EXP_LO, 0.0, y)
    return tl.where(_isnan(x), x, y)


@triton.jit
def _log_f32(x):
    """ref.log: Cephes logf; log(0) = -inf, log(x < 0) = NaN, log(inf) = inf."""
    tiny = x < _FLT_MIN
    xs = tl.where(tiny, x * _TWO23, x)
    bits = xs.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 126
    m = ((bits & 0x007FFFFF) | (126 << 23)).to(tl.float32, bitcast=True)
    e = tl.where(tiny, e - 23, e)
    small = m < _SQRTHF
    e = tl.where(small, e - 1, e)
    m = tl.where(small, m + m, m)
    z = m - 1.0
    z2 = z * z
    p = z * _LOG_P0 + _LOG_P1
    p = p * z + _LOG_P2
    p = p * z + _LOG_P3
    p = p * z + _LOG_P4
    p = p * z + _LOG_P5
    p = p * z + _LOG_P6
    p = p * z + _LOG_P7
    p = p * z + _LOG_P8
    y = p * z * z2
    fe = e.to(tl.float32)
    y = y + fe * _LN2_LO
    y = y - 0.5 * z2
    y = z + y
    y = y + fe * _LN2_HI
    y = tl.where(x == 0.0, -_INF, y)
    y = tl.where(x < 0.0, _NAN, y)
    y = tl.where(x == _INF, x, y)
    return tl.where(_isnan(x), x, y)


@triton.jit
def _tanh_f32(x):
    """ref.tanh: 1 - 2 / (exp(2x) + 1)."""
    return 1.0 - tl.math.div_rn(2.0, _exp_f32(x + x) + 1.0)


@triton.jit
def _row_max_nan(x):
    """amax over axis 0 that returns NaN when any element is NaN (as torch.amax)."""
    has_nan = tl.max(_isnan(x).to(tl.int32), 0) > 0
    return tl.where(has_nan, _NAN, tl.max(x, 0))


@triton.jit
def _exact_sum_block(x, P):
    """ref.exact_sum over a whole block (padding lanes must hold 0): float32 scalar."""
    e = _frexp_exp(tl.max(tl.abs(x), 0))
    q = _trunc_f64(x.to(tl.float64) * _pow2_f64(P - e))
    s = tl.sum(q, 0) + 0.0  # integers below 2**52: exact in any order; +0.0 canonicalises -0
    return (s * _pow2_f64(e - P)).to(tl.float32)


# --------------------------------------------------------------------------- kernels

@triton.jit
def _unary_kernel(x_ptr, y_ptr, n, OP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=1.0)
    if OP == 0:
        y = _exp_f32(x)
    elif OP == 1:
        y = _log_f32(x)
    elif OP == 2:
        y = _tanh_f32(x)
    else:  # GELU, tanh form, as functional._GELU.forward
        x3 = x * x * x
        u = (x + x3 * _GELU_C) * _GELU_K
        th = _tanh_f32(u)
        y = (0.5 * x) * (1.0 + th)
    tl.store(y_ptr + offs, y, mask=m)


@triton.jit
def _gelu_forward_kernel(x_ptr, y_ptr, th_ptr, n, BLOCK: tl.constexpr):
    """functional._GELU.forward with the tanh it saves for the backward (the C path's gelu_fwd)."""
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    x3 = x * x * x
    th = _tanh_f32((x + x3 * _GELU_C) * _GELU_K)
    tl.store(y_ptr + offs, (0.5 * x) * (1.0 + th), mask=m)
    tl.store(th_ptr + offs, th, mask=m)


@triton.jit
def _gelu_backward_kernel(x_ptr, dy_ptr, dx_ptr, n, BLOCK: tl.constexpr):
    """functional._GELU.backward (tanh recomputed exactly as the forward computed it)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0)
    x3 = x * x * x
    th = _tanh_f32((x + x3 * _GELU_C) * _GELU_K)
    du = (1.0 + (x * x) * _GELU_3C) * _GELU_K
    d = 0.5 * (1.0 + th) + (0.5 * x) * (1.0 - th * th) * du
    tl.store(dx_ptr + offs, dy * d, mask=m)


@triton.jit
def _row_sum_kernel(x_ptr, out_ptr, n, P, BLOCK: tl.constexpr):
    """Exact sum of each contiguous row of length n; rows longer than BLOCK are walked in chunks."""
    base = x_ptr + tl.program_id(0).to(tl.int64) * n
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < n, other=0.0)
        mx = tl.maximum(mx, tl.abs(x))
    e = _frexp_exp(tl.max(mx, 0))
    scale = _pow2_f64(P - e)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < n, other=0.0)
        acc += _trunc_f64(x.to(tl.float64) * scale)  # integer partial sums: exact
    s = tl.sum(acc, 0) + 0.0
    tl.store(out_ptr + tl.program_id(0), (s * _pow2_f64(e - P)).to(tl.float32))


@triton.jit
def _block_absmax_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + tl.program_id(0), tl.max(tl.abs(x), 0))


@triton.jit
def _block_intsum_kernel(x_ptr, e_ptr, out_ptr, n, P, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    e = tl.load(e_ptr)
    q = _trunc_f64(x.to(tl.float64) * _pow2_f64(P - e))
    tl.store(out_ptr + tl.program_id(0), tl.sum(q, 0))


@triton.jit
def _softmax_kernel(x_ptr, y_ptr, logp_ptr, n, P, BLOCK: tl.constexpr):
    """Row softmax and log-softmax (functional.softmax_forward / log_softmax_forward)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + row * n + offs, mask=m, other=-_INF)
    z = x - _row_max_nan(x)
    e = tl.where(m, _exp_f32(z), 0.0)
    s = _exact_sum_block(e, P)
    tl.store(y_ptr + row * n + offs, tl.math.div_rn(e, s), mask=m)
    tl.store(logp_ptr + row * n + offs, z - _log_f32(s), mask=m)


@triton.jit
def _layer_norm_kernel(x_ptr, g_ptr, b_ptr, y_ptr, xhat_ptr, rstd_ptr, n, n_f32, eps, P,
                       BLOCK: tl.constexpr):
    """functional._LayerNorm.forward for one row."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + row * n + offs, mask=m, other=0.0)
    mean = tl.math.div_rn(_exact_sum_block(x, P), n_f32)
    xc = tl.where(m, x - mean, 0.0)
    var = tl.math.div_rn(_exact_sum_block(xc * xc, P), n_f32)
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(var + eps))
    xhat = xc * rstd
    g = tl.load(g_ptr + offs, mask=m, other=0.0)
    b = tl.load(b_ptr + offs, mask=m, other=0.0)
    tl.store(y_ptr + row * n + offs, xhat * g + b, mask=m)
    tl.store(xhat_ptr + row * n + offs, xhat, mask=m)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _sgd_kernel(p_ptr, g_ptr, buf_ptr, n, lr, momentum, wd, HAS_BUF: tl.constexpr, HAS_WD: tl.constexpr,
                BLOCK: tl.constexpr):
    """optim.sgd_step: g += wd*p; buf = momentum*buf + g; p -= lr*buf (each op rounded)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    p = tl.load(p_ptr + offs, mask=m, other=0.0)
    g = tl.load(g_ptr + offs, mask=m, other=0.0)
    if HAS_WD:
        g = g + wd * p
    if HAS_BUF:
        buf = tl.load(buf_ptr + offs, mask=m, other=0.0)
        g = momentum * buf + g
        tl.store(buf_ptr + offs, g, mask=m)
    tl.store(p_ptr + offs, p - lr * g, mask=m)


@triton.jit
def _adamw_kernel(p_ptr, g_ptr, m_ptr, v_ptr, n, lr_wd, beta1, one_m_beta1, beta2, one_m_beta2, step_size,
                  sqrt_bc2, eps, HAS_WD: tl.constexpr, BLOCK: tl.constexpr):
    """optim.adamw_step, elementwise; scalars are float32 values computed on the host."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    msk = offs < n
    p = tl.load(p_ptr + offs, mask=msk, other=0.0)
    g = tl.load(g_ptr + offs, mask=msk, other=0.0)
    m = tl.load(m_ptr + offs, mask=msk, other=0.0)
    v = tl.load(v_ptr + offs, mask=msk, other=0.0)
    if HAS_WD:
        p = p - lr_wd * p
    m = beta1 * m + one_m_beta1 * g
    v = beta2 * v + one_m_beta2 * (g * g)
    denom = tl.math.div_rn(tl.sqrt_rn(v), sqrt_bc2) + eps
    p = p - step_size * tl.math.div_rn(m, denom)
    tl.store(m_ptr + offs, m, mask=msk)
    tl.store(v_ptr + offs, v, mask=msk)
    tl.store(p_ptr + offs, p, mask=msk)


@triton.jit
def _slice_rows_kernel(x_ptr, q_ptr, e_ptr, R, k, t, BR: tl.constexpr, BLOCK: tl.constexpr):
    """Rows r of x -> integers trunc(x * 2**(t - e_r)) as float64, e_r = frexp exponent of max|row|.

    BR rows per program (the max of each row is order-free, so the tile shape changes nothing)."""
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    rmask = rows < R
    base = rows * k
    mx = tl.zeros([BR, BLOCK], dtype=tl.float32)
    for start in range(0, k, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rmask[:, None] & (offs[None, :] < k)
        mx = tl.maximum(mx, tl.abs(tl.load(x_ptr + base[:, None] + offs[None, :], mask=msk, other=0.0)))
    e = _frexp_exp(tl.max(mx, 1))
    scale = _pow2_f64(t - e)
    for start in range(0, k, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rmask[:, None] & (offs[None, :] < k)
        x = tl.load(x_ptr + base[:, None] + offs[None, :], mask=msk, other=0.0)
        tl.store(q_ptr + base[:, None] + offs[None, :], _trunc_f64(x.to(tl.float64) * scale[:, None]), mask=msk)
    tl.store(e_ptr + rows, e, mask=rmask)


@triton.jit
def _int_gemm_kernel(a_ptr, bt_ptr, ea_ptr, eb_ptr, c_ptr, M, N, K, t,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C[b] = f32(sum_k A[b,i,k] * B^T[b,j,k] * 2**(ea_i - t) * 2**(eb_j - t)) on integer-valued float64.

    Exactness: |A|, |B| < 2**t and K * 2**(2t) <= 2**53 (ref.slice_bits), so every product and
    every partial sum is an integer below 2**53 and is computed exactly in any order; the two
    power-of-two scalings are exact in float64 (no overflow or underflow for float32 inputs); the
    only rounding is the final conversion to float32, as in the reference.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bat = tl.program_id(2).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_base = a_ptr + bat * M * K
    b_base = bt_ptr + bat * N * K
    acc = tl.zeros([BM, BN], dtype=tl.float64)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(a_base + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_base + rn[:, None] * K + kk[None, :], mask=(rn[:, None] < N) & (kk[None, :] < K), other=0.0)
        acc += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
    ea = tl.load(ea_ptr + bat * M + rm, mask=rm < M, other=0)
    eb = tl.load(eb_ptr + bat * N + rn, mask=rn < N, other=0)
    c = acc * _pow2_f64(ea - t)[:, None] * _pow2_f64(eb - t)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + bat * M * N + rm[:, None] * N + rn[None, :], c.to(tl.float32), mask=mask)


# --------------------------------------------------------------------------- wrappers

_EW_BLOCK = 1024


def _unary(x: torch.Tensor, op: int) -> torch.Tensor:
    x = x.to(F32).contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _unary_kernel[(triton.cdiv(n, _EW_BLOCK),)](x, y, n, OP=op, BLOCK=_EW_BLOCK, **LAUNCH)
    return y


def exp(x: torch.Tensor) -> torch.Tensor:
    return _unary(x, 0)


def log(x: torch.Tensor) -> torch.Tensor:
    return _unary(x, 1)


def tanh(x: torch.Tensor) -> torch.Tensor:
    return _unary(x, 2)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """functional.gelu forward (tanh form)."""
    return _unary(x, 3)


def gelu_with_tanh(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """functional.gelu forward and the tanh term ``th`` that functional._GELU saves for the backward."""
    x = x.to(F32).contiguous()
    y, th = torch.empty_like(x), torch.empty_like(x)
    n = x.numel()
    if n:
        _gelu_forward_kernel[(triton.cdiv(n, _EW_BLOCK),)](x, y, th, n, BLOCK=_EW_BLOCK, **LAUNCH)
    return y, th


def gelu_backward(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    x = x.to(F32).contiguous()
    dy = dy.to(F32).contiguous()
    dx = torch.empty_like(x)
    n = x.numel()
    if n:
        _gelu_backward_kernel[(triton.cdiv(n, _EW_BLOCK),)](x, dy, dx, n, BLOCK=_EW_BLOCK, **LAUNCH)
    return dx


def _row_block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _as_rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, list[int]]:
    """x with ``dim`` moved last, as a contiguous [rows, n] tensor, plus the kept shape."""
    x = x.to(F32).movedim(dim, -1).contiguous()
    return x.reshape(-1, x.shape[-1]), list(x.shape[:-1])


def exact_sum(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """ref.exact_sum (same bits)."""
    if dim is None:
        return _exact_sum_all(x)
    dim = dim % x.dim()
    rows, kept = _as_rows(x, dim)
    n = rows.shape[1]
    out = torch.empty(rows.shape[0], dtype=F32, device=x.device)
    if rows.shape[0]:
        block = min(_row_block(n), 4096)
        _row_sum_kernel[(rows.shape[0],)](rows, out, n, ref.grid_bits(n), BLOCK=block, **LAUNCH)
    out = out.reshape(kept)
    return out.unsqueeze(dim) if keepdim else out


def _exact_sum_all(x: torch.Tensor) -> torch.Tensor:
    """Multi-program exact sum: block maxima -> one exponent -> block integer sums -> exact total.

    The combining steps run as torch ops on integers or maxima, which are order-free too.
    """
    flat = x.to(F32).contiguous().reshape(-1)
    n = flat.numel()
    p = ref.grid_bits(n)
    block = 1024
    nb = max(1, triton.cdiv(n, block))
    maxes = torch.zeros(nb, dtype=F32, device=x.device)
    if n:
        _block_absmax_kernel[(nb,)](flat, maxes, n, BLOCK=block, **LAUNCH)
    m = maxes.amax()
    if torch.isnan(flat).any():
        m = torch.tensor(math.nan, dtype=F32, device=x.device)
    e = ref.max_exponent(m.reshape(1), None).reshape(1)
    partial = torch.zeros(nb, dtype=F64, device=x.device)
    if n:
        _block_intsum_kernel[(nb,)](flat, e, partial, n, p, BLOCK=block, **LAUNCH)
    s = partial.sum() + 0.0  # integer-valued float64 below 2**52: exact in any order
    return (s * ref.pow2_f64(e.reshape(()) - p)).to(F32)


def _softmax_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, kept = _as_rows(x, -1)
    n = rows.shape[1]
    y = torch.empty_like(rows)
    logp = torch.empty_like(rows)
    if rows.shape[0]:
        _softmax_kernel[(rows.shape[0],)](rows, y, logp, n, ref.grid_bits(n), BLOCK=_row_block(n), **LAUNCH)
    return y.reshape(*kept, n), logp.reshape(*kept, n)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """functional.softmax_forward over the last dim."""
    return _softmax_rows(x)[0]


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """First output of functional.log_softmax_forward over the last dim."""
    return _softmax_rows(x)[1]


def layer_norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
               eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """functional._LayerNorm.forward over the last dim: returns (y, xhat, rstd[..., 1])."""
    rows, kept = _as_rows(x, -1)
    n = rows.shape[1]
    y = torch.empty_like(rows)
    xhat = torch.empty_like(rows)
    rstd = torch.empty(rows.shape[0], dtype=F32, device=x.device)
    if rows.shape[0]:
        _layer_norm_kernel[(rows.shape[0],)](rows, g.to(F32).contiguous(), b.to(F32).contiguous(), y, xhat, rstd,
                                             n, float(n), _f32(eps), ref.grid_bits(n), BLOCK=_row_block(n),
                                             **LAUNCH)
    return y.reshape(*kept, n), xhat.reshape(*kept, n), rstd.reshape(*kept, 1)


def sgd_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, lr: float, momentum: float,
             weight_decay: float) -> None:
    """optim.sgd_step in place (p and buf must be contiguous float32)."""
    n = p.numel()
    g = g.to(F32).contiguous()
    if n:
        _sgd_kernel[(triton.cdiv(n, _EW_BLOCK),)](p, g, p if buf is None else buf, n, _f32(lr), _f32(momentum),
                                                  _f32(weight_decay), HAS_BUF=buf is not None,
                                                  HAS_WD=weight_decay != 0.0, BLOCK=_EW_BLOCK, **LAUNCH)


def adamw_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """optim.adamw_step in place; the host scalars are computed exactly as optim computes them."""
    n = p.numel()
    bc1 = 1.0 - compute_pow(beta1, step)
    bc2 = 1.0 - compute_pow(beta2, step)
    g = g.to(F32).contiguous()
    if n:
        _adamw_kernel[(triton.cdiv(n, _EW_BLOCK),)](p, g, m, v, n, _f32(lr * weight_decay), _f32(beta1),
                                                    _f32(1.0 - beta1), _f32(beta2), _f32(1.0 - beta2),
                                                    _f32(lr / bc1), _f32(math.sqrt(bc2)), _f32(eps),
                                                    HAS_WD=weight_decay != 0.0, BLOCK=_EW_BLOCK, **LAUNCH)


def _slice_rows(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.reshape(-1, x.shape[-1])
    k = rows.shape[1]
    q = torch.empty(rows.shape, dtype=F64, device=x.device)
    e = torch.empty(rows.shape[0], dtype=torch.int64, device=x.device)
    if rows.shape[0]:
        block = min(_row_block(k), 1024)
        br = max(1, min(64, 4096 // block))  # a few rows per program: fewer launches, same bits
        _slice_rows_kernel[(triton.cdiv(rows.shape[0], br),)](rows, q, e, rows.shape[0], k, t, BR=br, BLOCK=block,
                                                              **LAUNCH)
    return q, e


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ref.matmul (exact-slice) for a [..., m, k] @ b [..., k, n] with broadcast batch dims."""
    a = a.to(F32)
    b = b.to(F32)
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError("triton_ops.matmul needs operands with at least 2 dims")
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if b.shape[-2] != k:
        raise ValueError(f"inner dims differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    nb = math.prod(batch)
    a3 = a.expand(*batch, m, k).reshape(nb, m, k).contiguous()
    bt3 = b.expand(*batch, k, n).reshape(nb, k, n).transpose(1, 2).contiguous()  # [nb, n, k]
    t = ref.slice_bits(k)
    aq, ea = _slice_rows(a3, t)
    bq, eb = _slice_rows(bt3, t)
    c = torch.empty(nb, m, n, dtype=F32, device=a.device)
    if nb and m and n:
        bm, bn, bk = 32, 32, 8
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), nb)
        _int_gemm_kernel[grid](aq, bq, ea, eb, c, m, n, k, t, BM=bm, BN=bn, BK=bk, **LAUNCH)
    return c.reshape(*batch, m, n)
