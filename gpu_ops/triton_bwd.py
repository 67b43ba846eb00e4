"""Triton kernels for the rest of SPEC.md §10: backward passes, losses, conv2d, dropout, clipping.

Same rules as ``gpu_ops.triton_ops`` (whose device helpers these kernels reuse): launched with
``enable_fp_fusion=False``, ``div_rn``/``sqrt_rn``, no ``tl.exp``/``tl.log``, scalar constants
on the right of tensors, and every float sum an exact integer sum. Each kernel transcribes the
corresponding program of ``gpu_ops.functional`` / ``gpu_ops.optim`` op for op:

* ``softmax_backward``       ``y * (dy - exact_sum(dy * y))``                 (_Softmax.backward)
* ``log_softmax_backward``   ``dy - p * exact_sum(dy)``                       (_LogSoftmax.backward)
* ``cross_entropy``          ``-(exact_sum(logp[target]) / f32(N))``, p and logp[target] (_CrossEntropy.forward)
* ``cross_entropy_backward`` ``((p - onehot) / f32(N)) * dloss``              (_CrossEntropy.backward)
* ``layer_norm_backward``    ``((dxhat - a) - xhat * c) * rstd``, dg/db exact column sums
* ``column_sum``             exact sum over the middle axis of [pre, n, post] (bias gradients)
* ``im2col`` / ``col2im``    conv2d's gather (+0 padding) and its input gradient: the k*k shifted
                             patch gradients added from +0 in row-major offset order, one float32
                             add at a time (_Conv2d.backward)
* ``random_u32``, ``dropout_mask``  Philox4x32-10 in 32-bit integer ops (protocol.rng, SPEC.md §9)
                             and the keep/scale rule of functional.dropout_mask
* ``grad_norm``, ``clip_grad_norm`` global-norm clipping (optim.clip_grad_norm, SPEC.md §10.6)
* ``relu``, ``relu_backward``, ``tanh_backward``, ``scale_mask``(+backward) the remaining
                             elementwise layers

Row kernels hold a whole row in one block (rows are model widths / vocabularies); sums over the
batch axis walk rows in chunks, so their length is unbounded.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import ref
from .triton_ops import (
    _INF,
    LAUNCH,
    _exact_sum_block,
    _exp_f32,
    _f32,
    _frexp_exp,
    _log_f32,
    _pow2_f64,
    _row_block,
    _row_max_nan,
    _trunc_f64,
)

F32 = torch.float32
F64 = torch.float64

_EPS_CLIP = tl.constexpr(_f32(1e-6))
# Philox4x32-10 multipliers and Weyl key increments (Salmon et al. 2011; protocol/rng.py).
_PH_M0 = tl.constexpr(0xD2511F53)
_PH_M1 = tl.constexpr(0xCD9E8D57)
_PH_W0 = tl.constexpr(0x9E3779B9)
_PH_W1 = tl.constexpr(0xBB67AE85)


# --------------------------------------------------------------------------- device helpers

@triton.jit
def _exact_sum_chunked(base, n, P, BLOCK: tl.constexpr):
    """ref.exact_sum of the n contiguous float32 values at ``base`` (any n): float32 scalar."""
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mx = tl.maximum(mx, tl.abs(tl.load(base + offs, mask=offs < n, other=0.0)))
    e = _frexp_exp(tl.max(mx, 0))
    scale = _pow2_f64(P - e)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < n, other=0.0)
        acc += _trunc_f64(x.to(tl.float64) * scale)  # integer partial sums: exact in any order
    s = tl.sum(acc, 0) + 0.0
    return (s * _pow2_f64(e - P)).to(tl.float32)


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors, the round of protocol.rng.compute_philox4x32."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _PH_M0)
        lo0 = c0 * _PH_M0  # uint32 multiply wraps: the low word of the 64-bit product
        hi1 = tl.umulhi(c2, _PH_M1)
        lo1 = c2 * _PH_M1
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = k0 + _PH_W0
        k1 = k1 + _PH_W1
    return c0, c1, c2, c3


# --------------------------------------------------------------------------- row kernels

@triton.jit
def _softmax_bwd_kernel(y_ptr, dy_ptr, dx_ptr, n, P, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    y = tl.load(y_ptr + row * n + offs, mask=m, other=0.0)
    dy = tl.load(dy_ptr + row * n + offs, mask=m, other=0.0)
    s = _exact_sum_block(dy * y, P)
    tl.store(dx_ptr + row * n + offs, y * (dy - s), mask=m)


@triton.jit
def _log_softmax_bwd_kernel(p_ptr, dy_ptr, dx_ptr, n, P, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    p = tl.load(p_ptr + row * n + offs, mask=m, other=0.0)
    dy = tl.load(dy_ptr + row * n + offs, mask=m, other=0.0)
    s = _exact_sum_block(dy, P)
    tl.store(dx_ptr + row * n + offs, dy - p * s, mask=m)


@triton.jit
def _cross_entropy_row_kernel(x_ptr, t_ptr, p_ptr, picked_ptr, n, P, BLOCK: tl.constexpr):
    """Per row: p = e / s (saved for backward) and logp[target] = (x_t - max) - log(s)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + row * n + offs, mask=m, other=-_INF)
    mx = _row_max_nan(x)
    e = tl.where(m, _exp_f32(x - mx), 0.0)
    s = _exact_sum_block(e, P)
    tl.store(p_ptr + row * n + offs, tl.math.div_rn(e, s), mask=m)
    t = tl.load(t_ptr + row)
    xt = tl.load(x_ptr + row * n + t)
    tl.store(picked_ptr + row, (xt - mx) - _log_f32(s))  # the same ops as logp, at the target only


@triton.jit
def _neg_mean_kernel(x_ptr, out_ptr, n, n_f32, P, BLOCK: tl.constexpr):
    """-(exact_sum(x) / f32(n)) in one program (the cross-entropy loss)."""
    s = _exact_sum_chunked(x_ptr, n, P, BLOCK)
    tl.store(out_ptr, -tl.math.div_rn(s, n_f32))


@triton.jit
def _cross_entropy_bwd_kernel(p_ptr, t_ptr, dloss_ptr, dx_ptr, n, n_rows_f32, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    p = tl.load(p_ptr + row * n + offs, mask=m, other=0.0)
    t = tl.load(t_ptr + row)
    onehot = tl.where(offs == t, 1.0, 0.0)
    g = tl.math.div_rn(p - onehot, n_rows_f32)
    tl.store(dx_ptr + row * n + offs, g * tl.load(dloss_ptr), mask=m)


@triton.jit
def _layer_norm_bwd_kernel(dy_ptr, xhat_ptr, rstd_ptr, g_ptr, dx_ptr, n, n_f32, P, BLOCK: tl.constexpr):
    """dx of functional._LayerNorm.backward for one row."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    dy = tl.load(dy_ptr + row * n + offs, mask=m, other=0.0)
    xhat = tl.load(xhat_ptr + row * n + offs, mask=m, other=0.0)
    g = tl.load(g_ptr + offs, mask=m, other=0.0)
    rstd = tl.load(rstd_ptr + row)
    dxhat = dy * g
    a = tl.math.div_rn(_exact_sum_block(dxhat, P), n_f32)
    c = tl.math.div_rn(_exact_sum_block(dxhat * xhat, P), n_f32)
    tl.store(dx_ptr + row * n + offs, ((dxhat - a) - xhat * c) * rstd, mask=m)


@triton.jit
def _col_sum_kernel(a_ptr, b_ptr, out_ptr, n, post, P, PROD: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """out[pre, c] = exact_sum over r of a[pre, r, c] (times b[pre, r, c] if PROD, rounded first)."""
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    cm = cols < post
    base = tl.program_id(1).to(tl.int64) * n * post
    mx = tl.zeros([BR, BC], dtype=tl.float32)
    for r0 in range(0, n, BR):
        rows = (r0 + tl.arange(0, BR)).to(tl.int64)
        msk = (rows[:, None] < n) & cm[None, :]
        idx = base + rows[:, None] * post + cols[None, :]
        x = tl.load(a_ptr + idx, mask=msk, other=0.0)
        if PROD:
            x = x * tl.load(b_ptr + idx, mask=msk, other=0.0)
        mx = tl.maximum(mx, tl.abs(x))
    e = _frexp_exp(tl.max(mx, 0))
    scale = _pow2_f64(P - e)
    acc = tl.zeros([BR, BC], dtype=tl.float64)
    for r0 in range(0, n, BR):
        rows = (r0 + tl.arange(0, BR)).to(tl.int64)
        msk = (rows[:, None] < n) & cm[None, :]
        idx = base + rows[:, None] * post + cols[None, :]
        x = tl.load(a_ptr + idx, mask=msk, other=0.0)
        if PROD:
            x = x * tl.load(b_ptr + idx, mask=msk, other=0.0)
        acc += _trunc_f64(x.to(tl.float64) * scale[None, :])
    s = tl.sum(acc, 0) + 0.0
    out = (s * _pow2_f64(e - P)).to(tl.float32)
    tl.store(out_ptr + tl.program_id(1).to(tl.int64) * post + cols, out, mask=cm)


# --------------------------------------------------------------------------- conv2d pieces

@triton.jit
def _im2col_kernel(x_ptr, cols_ptr, C, H, W, R, Q, K: tl.constexpr, BR: tl.constexpr, BQ: tl.constexpr):
    """cols[(n, y, x), (c, i, j)] = x[n, c, y + i - K//2, x + j - K//2], +0 outside the image."""
    r = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    q = tl.program_id(1) * BQ + tl.arange(0, BQ)
    hw = H * W
    img = r // hw
    yx = r % hw
    y = yx // W
    x = yx % W
    c = q // (K * K)
    i = (q % (K * K)) // K
    j = q % K
    sy = y[:, None] + (i[None, :] - K // 2)
    sx = x[:, None] + (j[None, :] - K // 2)
    inside = (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
    ok = (r[:, None] < R) & (q[None, :] < Q)
    src = ((img[:, None] * C + c[None, :]) * H + sy) * W + sx
    v = tl.load(x_ptr + src, mask=ok & inside, other=0.0)
    tl.store(cols_ptr + r[:, None] * Q + q[None, :], v, mask=ok)


@triton.jit
def _col2im_kernel(dcols_ptr, dx_ptr, C, H, W, total, K: tl.constexpr, BLOCK: tl.constexpr):
    """dx[n, c, y, x] = (((+0 + t_00) + t_01) + ...) over offsets (i, j) in row-major order, where
    t_ij = dcols[(n, y + K//2 - i, x + K//2 - j), (c, i, j)] for the offsets whose patch exists."""
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = offs < total
    x = offs % W
    y = (offs // W) % H
    c = (offs // (W * H)) % C
    img = offs // (W * H * C)
    q_stride = C * K * K
    acc = tl.zeros([BLOCK], dtype=tl.float32)  # +0, as the reference's zero-initialised buffer
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            hy = y + (K // 2 - i)
            wx = x + (K // 2 - j)
            valid = m & (hy >= 0) & (hy < H) & (wx >= 0) & (wx < W)
            src = ((img * H + hy) * W + wx) * q_stride + c * (K * K) + (i * K + j)
            t = tl.load(dcols_ptr + src, mask=valid, other=0.0)
            acc = tl.where(valid, acc + t, acc)
    tl.store(dx_ptr + offs, acc, mask=m)


# --------------------------------------------------------------------------- randomness

@triton.jit
def _philox_kernel(params_ptr, words_ptr, mask_ptr, n, scale, MASK: tl.constexpr, BLOCK: tl.constexpr):
    """Blocks i of random_u32: counter (i, a, b, stream), key (k0, k1); params = int32 bit
    patterns [k0, k1, a, b, stream, threshold]. Writes the words (int64, zero-extended) or,
    with MASK, the dropout mask: scale where word >= threshold, else +0."""
    k0 = tl.load(params_ptr).to(tl.uint32, bitcast=True)
    k1 = tl.load(params_ptr + 1).to(tl.uint32, bitcast=True)
    a = tl.load(params_ptr + 2).to(tl.uint32, bitcast=True)
    b = tl.load(params_ptr + 3).to(tl.uint32, bitcast=True)
    stream = tl.load(params_ptr + 4).to(tl.uint32, bitcast=True)
    blk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    zero = tl.zeros([BLOCK], dtype=tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(blk.to(tl.uint32, bitcast=True), zero + a, zero + b, zero + stream,
                                    zero + k0, zero + k1)
    base = blk.to(tl.int64) * 4
    if MASK:
        thr = tl.load(params_ptr + 5).to(tl.uint32, bitcast=True)
        tl.store(mask_ptr + base, tl.where(w0 >= thr, scale, 0.0), mask=base < n)
        tl.store(mask_ptr + base + 1, tl.where(w1 >= thr, scale, 0.0), mask=base + 1 < n)
        tl.store(mask_ptr + base + 2, tl.where(w2 >= thr, scale, 0.0), mask=base + 2 < n)
        tl.store(mask_ptr + base + 3, tl.where(w3 >= thr, scale, 0.0), mask=base + 3 < n)
    else:
        tl.store(words_ptr + base, w0.to(tl.int64), mask=base < n)
        tl.store(words_ptr + base + 1, w1.to(tl.int64), mask=base + 1 < n)
        tl.store(words_ptr + base + 2, w2.to(tl.int64), mask=base + 2 < n)
        tl.store(words_ptr + base + 3, w3.to(tl.int64), mask=base + 3 < n)


# --------------------------------------------------------------------------- clipping

@triton.jit
def _sq_absmax_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + tl.program_id(0), tl.max(tl.abs(x * x), 0))


@triton.jit
def _max_to_exp_kernel(m_ptr, e_ptr, nb, BLOCK: tl.constexpr):
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, nb, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mx = tl.maximum(mx, tl.load(m_ptr + offs, mask=offs < nb, other=0.0))
    tl.store(e_ptr, _frexp_exp(tl.max(mx, 0)).to(tl.int64))


@triton.jit
def _sq_intsum_kernel(x_ptr, e_ptr, out_ptr, n, P, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    e = tl.load(e_ptr)
    q = _trunc_f64((x * x).to(tl.float64) * _pow2_f64(P - e))  # the float32 square, then the grid
    tl.store(out_ptr + tl.program_id(0), tl.sum(q, 0))


@triton.jit
def _clip_coef_kernel(part_ptr, e_ptr, out_ptr, lim_ptr, nb, P, max_norm_f32, BLOCK: tl.constexpr):
    """out = [norm, coef, clip?]: norm = sqrt(exact total), coef = f32(max) / (norm + f32(1e-6)),
    clip iff float64(norm) > max_norm (float64, read from lim_ptr), as optim.clip_grad_norm."""
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, nb, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + offs, mask=offs < nb, other=0.0)  # integers below 2**52: exact
    e = tl.load(e_ptr)
    total = ((tl.sum(acc, 0) + 0.0) * _pow2_f64(e - P)).to(tl.float32)
    norm = tl.sqrt_rn(total)
    coef = tl.math.div_rn(max_norm_f32, norm + _EPS_CLIP)
    clip = norm.to(tl.float64) > tl.load(lim_ptr)
    tl.store(out_ptr, norm)
    tl.store(out_ptr + 1, coef)
    tl.store(out_ptr + 2, tl.where(clip, 1.0, 0.0))


@triton.jit
def _scale_kernel(g_ptr, st_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    g = tl.load(g_ptr + offs, mask=m, other=0.0)
    coef = tl.load(st_ptr + 1)
    clip = tl.load(st_ptr + 2) != 0.0
    tl.store(g_ptr + offs, tl.where(clip, g * coef, g), mask=m)


# --------------------------------------------------------------------------- small elementwise layers

@triton.jit
def _ew_kernel(a_ptr, b_ptr, out_ptr, n, t, scale, OP: tl.constexpr, BLOCK: tl.constexpr):
    """OP 0: relu(a); 1: relu backward (a = x, b = dy); 2: tanh backward (a = y, b = dy);
    3/4: causal scale-mask forward/backward over the last two dims (t x t), a = s or dy."""
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = offs < n
    a = tl.load(a_ptr + offs, mask=m, other=0.0)
    if OP == 0:
        y = tl.where(a > 0.0, a, 0.0)
    elif OP == 1:
        y = tl.where(a > 0.0, tl.load(b_ptr + offs, mask=m, other=0.0), 0.0)
    elif OP == 2:
        y = tl.load(b_ptr + offs, mask=m, other=0.0) * (1.0 - a * a)
    else:
        above = (offs % t) > ((offs // t) % t)
        if OP == 3:
            y = tl.where(above, -_INF, a * scale)
        else:
            y = tl.where(above, 0.0, a * scale)
    tl.store(out_ptr + offs, y, mask=m)


# --------------------------------------------------------------------------- wrappers

_EW_BLOCK = 1024
_SUM_BLOCK = 1024


def _rows(x: torch.Tensor) -> torch.Tensor:
    x = x.to(F32).contiguous()
    return x.reshape(-1, x.shape[-1])


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """functional._Softmax.backward over the last dim."""
    yr, dyr = _rows(y), _rows(dy)
    n = yr.shape[1]
    dx = torch.empty_like(yr)
    if yr.shape[0]:
        _softmax_bwd_kernel[(yr.shape[0],)](yr, dyr, dx, n, ref.grid_bits(n), BLOCK=_row_block(n), **LAUNCH)
    return dx.reshape(y.shape)


def log_softmax_backward(p: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """functional._LogSoftmax.backward over the last dim (p = softmax of the input)."""
    pr, dyr = _rows(p), _rows(dy)
    n = pr.shape[1]
    dx = torch.empty_like(pr)
    if pr.shape[0]:
        _log_softmax_bwd_kernel[(pr.shape[0],)](pr, dyr, dx, n, ref.grid_bits(n), BLOCK=_row_block(n), **LAUNCH)
    return dx.reshape(p.shape)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """functional._CrossEntropy.forward: (loss, p, picked) with p = softmax(logits) (saved for
    backward) and picked = the target log-probabilities."""
    x = _rows(logits)
    t = target.reshape(-1).to(torch.int64).contiguous()
    rows, n = x.shape
    p = torch.empty_like(x)
    picked = torch.empty(rows, dtype=F32, device=x.device)
    loss = torch.empty((), dtype=F32, device=x.device)
    if rows:
        _cross_entropy_row_kernel[(rows,)](x, t, p, picked, n, ref.grid_bits(n), BLOCK=_row_block(n), **LAUNCH)
    _neg_mean_kernel[(1,)](picked, loss, rows, _f32(float(rows)), ref.grid_bits(rows),
                           BLOCK=min(_row_block(rows), _SUM_BLOCK), **LAUNCH)
    return loss, p, picked


def cross_entropy_backward(p: torch.Tensor, target: torch.Tensor, dloss: torch.Tensor) -> torch.Tensor:
    """functional._CrossEntropy.backward: ((p - onehot) / f32(N)) * dloss."""
    pr = _rows(p)
    t = target.reshape(-1).to(torch.int64).contiguous()
    rows, n = pr.shape
    dl = dloss.to(F32).reshape(1).to(p.device)
    dx = torch.empty_like(pr)
    if rows:
        _cross_entropy_bwd_kernel[(rows,)](pr, t, dl, dx, n, _f32(float(rows)), BLOCK=_row_block(n), **LAUNCH)
    return dx


def column_sum(x: torch.Tensor, dim: int = 0, other: torch.Tensor | None = None) -> torch.Tensor:
    """ref.exact_sum(x, dim) (or of x * other, each product rounded first) without a transpose."""
    x = x.to(F32).contiguous()
    dim = dim % x.dim()
    pre = math.prod(x.shape[:dim])
    n = x.shape[dim]
    post = math.prod(x.shape[dim + 1:])
    b = x if other is None else other.to(F32).contiguous()
    out = torch.empty(pre, post, dtype=F32, device=x.device)
    if pre and post:
        bc = 16 if post <= 16 else 32
        br = min(max(8, triton.next_power_of_2(n)), 64)
        _col_sum_kernel[(triton.cdiv(post, bc), pre)](x, b, out, n, post, ref.grid_bits(n), PROD=other is not None,
                                                      BR=br, BC=bc, **LAUNCH)
    return out.reshape(*x.shape[:dim], *x.shape[dim + 1:])


def layer_norm_backward(dy: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor,
                        g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """functional._LayerNorm.backward on [rows, n]: returns (dx, dg, db)."""
    dyr, xr = _rows(dy), _rows(xhat)
    rows, n = dyr.shape
    dx = torch.empty_like(dyr)
    if rows:
        _layer_norm_bwd_kernel[(rows,)](dyr, xr, rstd.to(F32).contiguous(), g.to(F32).contiguous(), dx, n,
                                        float(n), ref.grid_bits(n), BLOCK=_row_block(n), **LAUNCH)
    return dx.reshape(dy.shape), column_sum(dyr, 0, xr), column_sum(dyr, 0)


def im2col(x: torch.Tensor, k: int) -> torch.Tensor:
    """unfold(x, k, padding=k//2) transposed to [N*H*W, C*k*k] (functional._Conv2d's cols_t)."""
    x = x.to(F32).contiguous()
    n, c, h, w = x.shape
    r, q = n * h * w, c * k * k
    cols = torch.empty(r, q, dtype=F32, device=x.device)
    if r and q:
        br, bq = 32, 32
        _im2col_kernel[(triton.cdiv(r, br), triton.cdiv(q, bq))](x, cols, c, h, w, r, q, K=k, BR=br, BQ=bq,
                                                                 **LAUNCH)
    return cols


def col2im(dcols: torch.Tensor, shape: tuple[int, int, int, int], k: int) -> torch.Tensor:
    """Input gradient of conv2d from dcols [N*H*W, C*k*k] (functional._Conv2d.backward's dxp loop)."""
    n, c, h, w = shape
    dcols = dcols.to(F32).contiguous()
    dx = torch.empty(n, c, h, w, dtype=F32, device=dcols.device)
    total = dx.numel()
    if total:
        _col2im_kernel[(triton.cdiv(total, _EW_BLOCK),)](dcols, dx, c, h, w, total, K=k, BLOCK=_EW_BLOCK, **LAUNCH)
    return dx


def _bias_add(y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return y + b.to(F32)  # one float32 add per element (functional._matmul's bias)


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """functional._Conv2d.forward: (y [N, O, H, W], cols_t saved for backward)."""
    from .triton_ops import matmul

    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    cols = im2col(x, k)
    y = _bias_add(matmul(cols, w.to(F32).reshape(o, -1).t()), b)
    return y.view(n, h, wd, o).permute(0, 3, 1, 2).contiguous(), cols


def conv2d_backward(dy: torch.Tensor, cols: torch.Tensor, w: torch.Tensor,
                    shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """functional._Conv2d.backward: (dx, dw, db)."""
    from .triton_ops import matmul

    n, c, h, wd = shape
    o, _, k, _ = w.shape
    dy2 = dy.to(F32).permute(0, 2, 3, 1).reshape(n * h * wd, o)
    dw = matmul(dy2.t().contiguous(), cols).view_as(w)
    db = column_sum(dy2, 0)
    dcols = matmul(dy2, w.to(F32).reshape(o, -1))
    return col2im(dcols, shape, k), dw, db


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _philox(seed: int, stream: int, a: int, b: int, n: int, threshold: int, device: torch.device | str,
            mask: bool, scale: float = 0.0) -> torch.Tensor:
    if not 0 <= seed < 2**64:
        raise ValueError("seed must fit in 64 bits")
    params = torch.tensor([_i32(seed), _i32(seed >> 32), _i32(a), _i32(b), _i32(stream), _i32(threshold)],
                          dtype=torch.int32, device=device)
    out = torch.empty(n, dtype=F32 if mask else torch.int64, device=device)
    if n:
        block = 256
        grid = (triton.cdiv(triton.cdiv(n, 4), block),)
        _philox_kernel[grid](params, out, out, n, scale, MASK=mask, BLOCK=block, **LAUNCH)
    return out


def random_u32(seed: int, stream: int, a: int, b: int, n: int, device: torch.device | str = "cuda") -> torch.Tensor:
    """protocol.rng.compute_random_u32 as int64 words (zero-extended) on ``device``."""
    return _philox(seed, stream, a, b, n, 0, device, mask=False)


def dropout_mask(seed: int, stream: int, a: int, b: int, p: float, shape: tuple[int, ...],
                 device: torch.device | str = "cuda") -> torch.Tensor:
    """functional.dropout_mask(random_u32(seed, stream, a, b, numel), p, shape), generated in place."""
    threshold = int(math.floor(p * 2.0**32))
    if not 0 <= threshold < 2**32:
        raise ValueError("dropout p must be in [0, 1)")
    n = math.prod(shape)
    return _philox(seed, stream, a, b, n, threshold, device, mask=True,
                   scale=_f32(1.0 / (1.0 - p))).reshape(shape)


def _clip_state(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """[norm, coef, clip?] of optim.clip_grad_norm, as a float32 device tensor."""
    flats = [g.reshape(-1) for g in grads]
    total_n = sum(f.numel() for f in flats)
    device = grads[0].device
    p = ref.grid_bits(total_n)
    nbs = [triton.cdiv(f.numel(), _SUM_BLOCK) for f in flats]
    nb = max(1, sum(nbs))
    maxes = torch.zeros(nb, dtype=F32, device=device)
    parts = torch.zeros(nb, dtype=F64, device=device)
    e = torch.zeros(1, dtype=torch.int64, device=device)
    off = 0
    for f, k in zip(flats, nbs):
        if k:
            _sq_absmax_kernel[(k,)](f, maxes[off:], f.numel(), BLOCK=_SUM_BLOCK, **LAUNCH)
        off += k
    _max_to_exp_kernel[(1,)](maxes, e, nb, BLOCK=min(_row_block(nb), _SUM_BLOCK), **LAUNCH)
    off = 0
    for f, k in zip(flats, nbs):
        if k:
            _sq_intsum_kernel[(k,)](f, e, parts[off:], f.numel(), p, BLOCK=_SUM_BLOCK, **LAUNCH)
        off += k
    state = torch.empty(3, dtype=F32, device=device)
    lim = torch.tensor([float(max_norm)], dtype=F64, device=device)
    _clip_coef_kernel[(1,)](parts, e, state, lim, nb, p, _f32(max_norm), BLOCK=min(_row_block(nb), _SUM_BLOCK),
                            **LAUNCH)
    return state


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """sqrt(exact_sum of g*g over all grads in order): the norm optim.clip_grad_norm returns."""
    return _clip_state([g.to(F32).contiguous() for g in grads], math.inf)[0].clone()


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """optim.clip_grad_norm in place (grads contiguous float32); returns the norm. No host sync."""
    for g in grads:
        if g.dtype != F32 or not g.is_contiguous():
            raise ValueError("clip_grad_norm needs contiguous float32 gradients")
    state = _clip_state(grads, max_norm)
    for g in grads:
        if g.numel():
            _scale_kernel[(triton.cdiv(g.numel(), _EW_BLOCK),)](g, state, g.numel(), BLOCK=_EW_BLOCK, **LAUNCH)
    return state[0].clone()


def _ew(op: int, a: torch.Tensor, b: torch.Tensor | None = None, t: int = 1, scale: float = 0.0) -> torch.Tensor:
    a = a.to(F32).contiguous()
    bb = a if b is None else b.to(F32).contiguous()
    out = torch.empty_like(a)
    n = a.numel()
    if n:
        _ew_kernel[(triton.cdiv(n, _EW_BLOCK),)](a, bb, out, n, t, scale, OP=op, BLOCK=_EW_BLOCK, **LAUNCH)
    return out


def relu(x: torch.Tensor) -> torch.Tensor:
    """functional._ReLU.forward: x if x > 0 else +0 (NaN -> +0)."""
    return _ew(0, x)


def relu_backward(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return _ew(1, x, dy)


def tanh_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """functional._Tanh.backward: dy * (1 - y*y)."""
    return _ew(2, y, dy)


def scale_mask(s: torch.Tensor, scale: float) -> torch.Tensor:
    """functional._ScaleMask.forward: s * f32(scale), -inf above the diagonal of the last two dims."""
    return _ew(3, s, None, s.shape[-1], _f32(scale))


def scale_mask_backward(dy: torch.Tensor, scale: float) -> torch.Tensor:
    return _ew(4, dy, None, dy.shape[-1], _f32(scale))


__all__ = [
    "LAUNCH", "clip_grad_norm", "col2im", "column_sum", "conv2d", "conv2d_backward", "cross_entropy",
    "cross_entropy_backward", "dropout_mask", "grad_norm", "im2col", "layer_norm_backward",
    "log_softmax_backward", "random_u32", "relu", "relu_backward", "scale_mask", "scale_mask_backward",
    "softmax_backward", "tanh_backward",
]
