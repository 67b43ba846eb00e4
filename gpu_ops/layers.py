"""Operators added for model graphs (SPEC.md §10.5, second part): mean pooling, non-causal
attention, RMS norm, SwiGLU, patch extraction, rotary positions, the class token and select.

Same contract as ``gpu_ops.functional``: an ``autograd.Function`` per op with a hand-written
backward, every reduction an exact sum (§10.2), every elementwise step one binary32 operation
in the order the spec writes. Where a C kernel exists for a step (exact sums, exp) the fast
backend uses it, and it equals the reference bit for bit (tests/gpu_ops/test_layers.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from . import backend, ref
from .functional import _MatmulNT, _MergeHeads, _reduce_rows, _SplitQKV, _exact_sum, _sum_rows, matmul, softmax
from .trace import traced

F32 = torch.float32


def _c(v: float, like: torch.Tensor) -> torch.Tensor:
    """f32(v) on the device of ``like`` (ref.const: never a CPU scalar beside a CUDA tensor)."""
    return ref.const(v, like)


def _exp(x: torch.Tensor) -> torch.Tensor:
    k = backend.kernels(x)
    return k.exp(x) if k is not None else ref.exp(x)


@traced("mean_pool")
class _MeanPool(torch.autograd.Function):
    """Mean over axis ``dim`` of x: exact_sum / f32(n); the gradient dy / f32(n) to every member."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        ctx.geom = (tuple(x.shape), dim, n)
        return _exact_sum(x, dim) / _c(float(n), x)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        shape, dim, n = ctx.geom
        return (dy / _c(float(n), dy)).unsqueeze(dim).expand(shape).contiguous(), None


def mean_pool(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over axis ``dim`` (of the batched tensor; 0 is the batch axis)."""
    return _MeanPool.apply(x, dim)


@traced("scale")
class _Scale(torch.autograd.Function):
    """Attention scores times ``scale`` with no mask; backward dy * scale."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return s * _c(scale, s)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        return dy * _c(ctx.scale, dy), None


def attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Multi-head self-attention without a mask (every position sees every position): [B, T, 3D] -> [B, T, D]."""
    q, k, v = _SplitQKV.apply(qkv, n_heads)
    scores = _Scale.apply(_MatmulNT.apply(q, k), 1.0 / math.sqrt(q.shape[-1]))
    return _MergeHeads.apply(matmul(softmax(scores), v))


@traced("rms_norm")
class _RMSNorm(torch.autograd.Function):
    """RMS norm of each row of [R, F] with gain g: xhat = x * rstd, rstd = 1/sqrt(mean(x*x) + eps)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
        n = _c(float(x.shape[-1]), x)
        ms = _exact_sum(x * x, -1, keepdim=True) / n
        rstd = _c(1.0, x) / ref.sqrt(ms + _c(eps, x))
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, g)
        return xhat * g

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        xhat, rstd, g = ctx.saved_tensors
        n = _c(float(xhat.shape[-1]), xhat)
        dg = _sum_rows(dy * xhat)  # over the whole batch's rows (gpu_ops.rowshard)
        dxhat = dy * g
        c = _exact_sum(dxhat * xhat, -1, keepdim=True) / n
        return (dxhat - xhat * c) * rstd, dg, None


def rms_norm(x: torch.Tensor, g: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    lead = x.shape[:-1]
    return _RMSNorm.apply(x.reshape(-1, x.shape[-1]), g, eps).reshape(*lead, x.shape[-1])


@traced("swiglu")
class _SwiGLU(torch.autograd.Function):
    """[..., 2h] -> [..., h]: gate a = first half, value b = second half, y = (a * sigmoid(a)) * b."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        a, b = x[..., :h].contiguous(), x[..., h:].contiguous()
        sig = _c(1.0, a) / (_c(1.0, a) + _exp(-a))
        ctx.save_for_backward(a, b, sig)
        return (a * sig) * b

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        a, b, sig = ctx.saved_tensors
        db = dy * (a * sig)
        da = (dy * b) * (sig * (_c(1.0, a) + a * (_c(1.0, a) - sig)))
        return torch.cat([da, db], dim=-1)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    return _SwiGLU.apply(x)


@traced("patches")
class _Patches(torch.autograd.Function):
    """[N, C, H, W] -> [N, (H/p)(W/p), C·p·p]: patch (i, j) is row i·(W/p) + j, column c·p² + u·p + v
    holds x[c, i·p + u, j·p + v]. A permutation: no arithmetic either way."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: int) -> torch.Tensor:
        n, c, h, w = x.shape
        ctx.geom = (n, c, h, w, p)
        return x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(
            n, (h // p) * (w // p), c * p * p).contiguous()

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        n, c, h, w, p = ctx.geom
        return dy.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w).contiguous(), None


def patches(x: torch.Tensor, p: int) -> torch.Tensor:
    return _Patches.apply(x, p)


@traced("conv2d_general")
class _Conv2dGeneral(torch.autograd.Function):
    """conv2d with any stride s and zero padding p (§10.5): im2col of the strided windows, the
    exact matmul, and a col2im that adds the k·k offsets in row-major order, one float32 add
    each. With s = 1 and p = k div 2 it is ``functional.conv2d`` (same bits; tested)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
        n, c, h, wd = x.shape
        o, _, k, _ = w.shape
        ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
        cols = torch.nn.functional.unfold(x, k, padding=pad, stride=stride)  # a pure gather
        cols_t = cols.transpose(1, 2).reshape(n * ho * wo, c * k * k)
        ctx.save_for_backward(cols_t, w)
        ctx.geom = (n, c, h, wd, k, stride, pad, ho, wo)
        y = _matmul_bias(cols_t, w.reshape(o, -1).t(), b)
        return y.view(n, ho, wo, o).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        cols_t, w = ctx.saved_tensors
        n, c, h, wd, k, s, pad, ho, wo = ctx.geom
        o = w.shape[0]
        dy2 = dy.permute(0, 2, 3, 1).reshape(n * ho * wo, o)
        (db,), (dw,) = _reduce_rows([dy2], [(dy2.t(), cols_t)])  # over the whole batch's rows
        dw = dw.view_as(w)
        if not ctx.needs_input_grad[0]:
            return None, dw, db, None, None
        dcols = _matmul_bias(dy2, w.reshape(o, -1), None).view(n, ho, wo, c, k, k)
        buf = torch.zeros(n, c, h + 2 * pad + s, wd + 2 * pad + s, dtype=F32, device=dcols.device)
        for i in range(k):
            for j in range(k):
                win = buf[:, :, i:i + s * ho:s, j:j + s * wo:s]
                buf[:, :, i:i + s * ho:s, j:j + s * wo:s] = win + dcols[:, :, :, :, i, j].permute(0, 3, 1, 2)
        return buf[:, :, pad:pad + h, pad:pad + wd].contiguous(), dw, db, None, None


def _matmul_bias(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    from .functional import _matmul

    return _matmul(a, b, bias)


def conv2d_general(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    return _Conv2dGeneral.apply(x, w, b, stride, pad)


_TABLE_CHUNK = 1 << 20  # table elements per pass: bounds the sin/cos temporaries of a huge table


@functools.lru_cache(maxsize=4)  # a model uses one (T, dims, base); each table is below its qkv activation
def rotary_tables(t: int, dims: int, base: float, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T, dims/2] of the rotary op (SPEC.md §10.5): a function of the config
    only. inv_i = exp(-(f32(2i)/f32(dims) * log(f32(base)))), angle[t, i] = f32(t) * inv_i, each
    step one float32 operation with the §10.4 exp, log, sin and cos (elementwise, so building the
    table in row blocks gives the same bits)."""
    dev = torch.device(device)
    m = dims // 2
    lb = ref.log(torch.tensor([base], dtype=F32, device=dev))
    e = torch.arange(0, 2 * m, 2, dtype=F32, device=dev) / torch.tensor(float(dims), dtype=F32, device=dev)
    inv = ref.exp(-(e * lb))
    cos = torch.empty(t, m, dtype=F32, device=dev)
    sin = torch.empty(t, m, dtype=F32, device=dev)
    rows = max(1, _TABLE_CHUNK // max(1, m))
    for lo in range(0, t, rows):
        hi = min(t, lo + rows)
        ang = torch.arange(lo, hi, dtype=F32, device=dev).unsqueeze(1) * inv.unsqueeze(0)
        cos[lo:hi], sin[lo:hi] = ref.cos(ang), ref.sin(ang)
    return cos, sin


@traced("rotary")
class _Rotary(torch.autograd.Function):
    """Rotary positions on the query and key parts of qkv [B, T, 3d], GPT-NeoX half-split pairs
    (i, i + m) of the first ``dims`` columns of each head; values and the rest pass unchanged.
    The backward is the transposed rotation (the tables carry no gradient)."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, n_heads: int, base: float, dims: int) -> torch.Tensor:
        b, t, d3 = qkv.shape
        dh = d3 // 3 // n_heads
        r = dims or dh
        ctx.geom = (n_heads, base, r)
        return _rotate(qkv, n_heads, base, r, False)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        n_heads, base, r = ctx.geom
        return _rotate(dy, n_heads, base, r, True), None, None, None


def _rotate(x: torch.Tensor, n_heads: int, base: float, r: int, transpose: bool) -> torch.Tensor:
    b, t, d3 = x.shape
    m = r // 2
    cos, sin = rotary_tables(t, r, base, str(x.device))
    c, s = cos.view(1, t, 1, 1, m), sin.view(1, t, 1, 1, m)
    parts = x.reshape(b, t, 3, n_heads, d3 // 3 // n_heads)
    x1, x2 = parts[:, :, :2, :, :m], parts[:, :, :2, :, m:r]
    out = parts.clone()
    if transpose:  # [c s; -s c] applied to (dy1, dy2)
        out[:, :, :2, :, :m] = x1 * c + x2 * s
        out[:, :, :2, :, m:r] = x2 * c - x1 * s
    else:  # [c -s; s c] applied to (x1, x2)
        out[:, :, :2, :, :m] = x1 * c - x2 * s
        out[:, :, :2, :, m:r] = x2 * c + x1 * s
    return out.reshape(b, t, d3)


def rotary(qkv: torch.Tensor, n_heads: int, base: float = 10000.0, dims: int = 0) -> torch.Tensor:
    """Rotary position embedding of q and k inside qkv [B, T, 3d] (dims = 0: the whole head)."""
    return _Rotary.apply(qkv, n_heads, float(base), int(dims))


@traced("cls_token")
class _ClsToken(torch.autograd.Function):
    """[B, T, d] and a learned [1, 1, d] token -> [B, T + 1, d] with the token at position 0.
    Backward: the rows 1.. of dy go to x; the token's gradient is the exact sum of row 0 over the
    batch (one group of B per feature)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        return torch.cat([cls.reshape(1, 1, d).expand(b, 1, d), x], dim=1)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        d = dy.shape[-1]
        return dy[:, 1:].contiguous(), _sum_rows(dy[:, 0].contiguous()).reshape(1, 1, d)


def cls_token(x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return _ClsToken.apply(x, cls)


@traced("select")
class _Select(torch.autograd.Function):
    """One index of one axis (the class token's readout). Backward: dy at that index, +0 elsewhere."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, index: int) -> torch.Tensor:
        ctx.geom = (tuple(x.shape), dim, index)
        return x.select(dim, index).contiguous()

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        shape, dim, index = ctx.geom
        dx = torch.zeros(shape, dtype=dy.dtype, device=dy.device)
        dx.select(dim, index).copy_(dy)
        return dx, None, None


def select(x: torch.Tensor, dim: int, index: int) -> torch.Tensor:
    """x at ``index`` of axis ``dim`` (of the batched tensor; 0 is the batch axis)."""
    return _Select.apply(x, dim, index)
