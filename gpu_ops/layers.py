"""Operators added for model graphs (SPEC.md §10.5, second part): mean pooling, non-causal
attention, RMS norm, SwiGLU and patch extraction.

Same contract as ``gpu_ops.functional``: an ``autograd.Function`` per op with a hand-written
backward, every reduction an exact sum (§10.2), every elementwise step one binary32 operation
in the order the spec writes. Where a C kernel exists for a step (exact sums, exp) the fast
backend uses it, and it equals the reference bit for bit (tests/gpu_ops/test_layers.py).
"""

from __future__ import annotations

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
