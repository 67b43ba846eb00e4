"""Differentiable reproducible ops: ``torch.autograd.Function`` with hand-written backward.

Autograd itself only ever adds two gradient contributions for one tensor (each model is
built so that no activation has more than two consumers), and a sum of two terms is
commutative, so the engine's scheduling cannot change any bit. Broadcasting is never left
to autograd (its ``sum_to_size`` has an unspecified order): every op that broadcasts
reduces its own gradient with ``exact_sum``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import backend, ref, rowshard
from .trace import traced

F32 = torch.float32


def _c(v: float, like: torch.Tensor | None = None) -> torch.Tensor:
    """f32(v) on the device of ``like`` (ref.const: never a CPU scalar beside a CUDA tensor)."""
    return ref.const(v, like)


# Dispatch helpers: the C kernels (gpu_ops/cpu) when available, else the reference. Every
# ``k = backend.kernels(...)`` branch below computes exactly what its reference branch does.
def _matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """ref.matmul(a, b), plus ``bias`` added in float32 when given."""
    k = backend.kernels(a, b) if bias is None else backend.kernels(a, b, bias)
    y = k.matmul(a, b, bias) if k is not None else None
    if y is not None:
        return y
    y = ref.matmul(a, b)
    return y + bias if bias is not None else y


def _exact_sum(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    k = backend.kernels(x)
    return k.exact_sum(x, dim, keepdim) if k is not None else ref.exact_sum(x, dim, keepdim)


def _exact_mean(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    n = x.numel() if dim is None else x.shape[dim]
    return _exact_sum(x, dim, keepdim) / ref.const(float(n), x)


# Reductions over the batch rows (dim 0 of an activation). In a data-parallel step
# (gpu_ops.rowshard) each worker holds some rows, and these give every worker the whole batch's
# result with the single-process bits; every other op is row-local and needs no hook.
def _sum_rows(x: torch.Tensor) -> torch.Tensor:
    """exact_sum(x, dim=0) over the rows of the whole batch."""
    shard = rowshard.get_shard()
    return _exact_sum(x, dim=0) if shard is None else rowshard.exact_sum_rows(x, shard)


def _matmul_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """matmul(a, b) whose inner dimension K is the batch rows (a weight gradient)."""
    shard = rowshard.get_shard()
    return _matmul(a, b) if shard is None else rowshard.matmul_rows(a, b, shard)


def _reduce_rows(sums: list[torch.Tensor], matmuls: list[tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Several of the above for one op (between workers: two collectives in all)."""
    shard = rowshard.get_shard()
    if shard is None:
        return [_exact_sum(x, dim=0) for x in sums], [_matmul(a, b) for a, b in matmuls]
    return rowshard.reduce_rows(shard, sums, matmuls)


def _count_rows(n: int) -> int:
    """The number of rows of the whole batch, of which this worker holds ``n``."""
    shard = rowshard.get_shard()
    return n if shard is None else shard.get_global_rows(n)


@traced("linear")
class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _matmul(x, w.t(), b)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        x, w = ctx.saved_tensors
        dx = _matmul(dy, w) if ctx.needs_input_grad[0] else None  # e.g. not for the data batch
        sums, (dw,) = _reduce_rows([dy] if ctx.has_bias else [], [(dy.t(), x)])
        return dx, dw, sums[0] if ctx.has_bias else None


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ w.T + b for x of shape [..., in]; w is [out, in]."""
    lead = x.shape[:-1]
    y = _Linear.apply(x.reshape(-1, x.shape[-1]), w, b)
    return y.reshape(*lead, w.shape[0])


@traced("relu")
class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        k = backend.kernels(x)
        if k is not None:  # saves y: y > 0 exactly where x > 0
            y = k.relu_fwd(x)
            ctx.save_for_backward(y)
            return y
        pos = x > 0
        ctx.save_for_backward(pos)
        return torch.where(pos, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        (saved,) = ctx.saved_tensors
        if saved.dtype != torch.bool:
            k = backend.kernels(dy, saved)
            if k is not None:
                return k.relu_bwd(dy, saved)
            saved = saved > 0
        return torch.where(saved, dy, torch.zeros_like(dy))


def relu(x: torch.Tensor) -> torch.Tensor:
    return _ReLU.apply(x)


@traced("tanh")
class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        k = backend.kernels(x)
        y = k.tanh(x) if k is not None else ref.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        k = backend.kernels(dy, y)
        if k is not None:
            return k.tanh_bwd(dy, y)
        return dy * (_c(1.0, y) - y * y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    return _Tanh.apply(x)


_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@traced("gelu")
class _GELU(torch.autograd.Function):
    """GELU, tanh form: 0.5*x*(1 + tanh(k*(x + c*x^3)))."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        k = backend.kernels(x)
        if k is not None:
            y, th = k.gelu_fwd(x)
            ctx.save_for_backward(x, th)
            return y
        x3 = x * x * x
        u = _c(_GELU_K, x) * (x + _c(_GELU_C, x) * x3)
        th = ref.tanh(u)
        ctx.save_for_backward(x, th)
        return (_c(0.5, x) * x) * (_c(1.0, x) + th)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        x, th = ctx.saved_tensors
        k = backend.kernels(dy, x, th)
        if k is not None:
            return k.gelu_bwd(dy, x, th)
        du = _c(_GELU_K, x) * (_c(1.0, x) + _c(3.0 * _GELU_C, x) * (x * x))
        d = _c(0.5, x) * (_c(1.0, x) + th) + (_c(0.5, x) * x) * (_c(1.0, x) - th * th) * du
        return dy * d


def gelu(x: torch.Tensor) -> torch.Tensor:
    return _GELU.apply(x)


ACTIVATIONS = {"relu": relu, "tanh": tanh, "gelu": gelu}


@traced("layer_norm")
class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        k = backend.kernels(x, g, b)
        if k is not None:
            y, xhat, rstd = k.layer_norm_fwd(x, g, b, eps)
            ctx.save_for_backward(xhat, rstd, g)
            return y
        mean = ref.exact_mean(x, -1, keepdim=True)
        xc = x - mean
        var = ref.exact_mean(xc * xc, -1, keepdim=True)
        rstd = _c(1.0, x) / ref.sqrt(var + _c(eps, x))
        xhat = xc * rstd
        ctx.save_for_backward(xhat, rstd, g)
        return xhat * g + b

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        xhat, rstd, g = ctx.saved_tensors
        k = backend.kernels(dy, xhat, rstd, g)
        if k is not None:
            dx, dg, db = k.layer_norm_bwd(dy, xhat, rstd, g)
            if rowshard.get_shard() is not None:  # dx is row-local; dg and db sum the whole batch
                (dg, db), _ = _reduce_rows([dy * xhat, dy], [])
            return dx, dg, db, None
        (dg, db), _ = _reduce_rows([dy * xhat, dy], [])
        dxhat = dy * g
        a = ref.exact_mean(dxhat, -1, keepdim=True)
        c = ref.exact_mean(dxhat * xhat, -1, keepdim=True)
        dx = ((dxhat - a) - xhat * c) * rstd
        return dx, dg, db, None


def layer_norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    lead = x.shape[:-1]
    y = _LayerNorm.apply(x.reshape(-1, x.shape[-1]), g, b, eps)
    return y.reshape(*lead, x.shape[-1])


def softmax_forward(x: torch.Tensor) -> torch.Tensor:
    k = backend.kernels(x)
    if k is not None:
        return k.softmax_fwd(x)
    z = x - x.amax(dim=-1, keepdim=True)
    e = ref.exp(z)
    return e / ref.exact_sum(e, -1, keepdim=True)


@traced("softmax")
class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = softmax_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        k = backend.kernels(y, dy)
        if k is not None:
            return k.softmax_bwd(y, dy)
        return y * (dy - ref.exact_sum(dy * y, -1, keepdim=True))


def softmax(x: torch.Tensor) -> torch.Tensor:
    return _Softmax.apply(x)


def log_softmax_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (log p, exp(z), row sums) so callers can reuse the exponentials."""
    z = x - x.amax(dim=-1, keepdim=True)
    e = ref.exp(z)
    s = ref.exact_sum(e, -1, keepdim=True)
    return z - ref.log(s), e, s


@traced("log_softmax")
class _LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        k = backend.kernels(x)
        if k is not None:
            logp_k, p, _ = k.log_softmax_fwd(x)
            assert logp_k is not None
            ctx.save_for_backward(p)
            return logp_k
        logp, e, s = log_softmax_forward(x)
        ctx.save_for_backward(e / s)
        return logp

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        k = backend.kernels(p, dy)
        if k is not None:
            return k.log_softmax_bwd(p, dy)
        return dy - p * ref.exact_sum(dy, -1, keepdim=True)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return _LogSoftmax.apply(x)


@traced("cross_entropy")
class _CrossEntropy(torch.autograd.Function):
    """Mean negative log-likelihood of integer targets over the rows of ``logits``."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = backend.kernels(logits)
        ctx.rows = _count_rows(logits.shape[0])  # N: the whole batch's rows
        if k is not None:
            _, p, picked_k = k.log_softmax_fwd(logits, target)
            assert picked_k is not None
            ctx.save_for_backward(p, target)
            return -(_sum_rows(picked_k) / _c(float(ctx.rows), picked_k))
        logp, e, s = log_softmax_forward(logits)
        picked = logp.gather(1, target.view(-1, 1)).view(-1)
        loss = -(_sum_rows(picked) / _c(float(ctx.rows), picked))
        ctx.save_for_backward(e / s, target)
        return loss

    @staticmethod
    def backward(ctx: Any, dloss: torch.Tensor) -> Any:
        p, target = ctx.saved_tensors
        k = backend.kernels(p, dloss)
        if k is not None and ctx.rows == p.shape[0]:
            # the C kernel takes a number; the Triton kernel reads the tensor on the device (no host sync)
            return k.cross_entropy_bwd(p, target, float(dloss) if isinstance(k, backend.Kernels) else dloss), None
        onehot = torch.zeros_like(p)
        onehot.scatter_(1, target.view(-1, 1), 1.0)
        g = (p - onehot) / _c(float(ctx.rows), p)
        return g * dloss, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _CrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


@traced("embedding")
class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.vocab = w.shape[0]
        return w[idx]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        (idx,) = ctx.saved_tensors
        flat = idx.reshape(-1)
        onehot_t = torch.zeros(ctx.vocab, flat.numel(), dtype=F32, device=dy.device)
        onehot_t[flat, torch.arange(flat.numel(), device=dy.device)] = 1.0
        # Repeated indices accumulate through the exact matmul, never through scatter-add.
        return None, _matmul_rows(onehot_t, dy.reshape(flat.numel(), -1))


def embedding(idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _Embedding.apply(idx, w)


@traced("add_broadcast")
class _AddBroadcast(torch.autograd.Function):
    """x[B, ...] + p[...]: the gradient of p is an exact sum over the batch dimension."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return x + p

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        return dy, _sum_rows(dy)


def add_broadcast(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return _AddBroadcast.apply(x, p)


@traced("matmul")
class _Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return _matmul(a, b)

    @staticmethod
    def backward(ctx: Any, dc: torch.Tensor) -> Any:
        a, b = ctx.saved_tensors
        return _matmul(dc, b.transpose(-1, -2)), _matmul(a.transpose(-1, -2), dc)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _Matmul.apply(a, b)


@traced("matmul_nt")
class _MatmulNT(torch.autograd.Function):
    """a @ b^T with the transpose inside the op, so the traced inputs are a and b as produced
    (same bits as ``matmul(a, b.transpose(-1, -2))``)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return _matmul(a, b.transpose(-1, -2))

    @staticmethod
    def backward(ctx: Any, dc: torch.Tensor) -> Any:
        a, b = ctx.saved_tensors
        return _matmul(dc, b), _matmul(a.transpose(-1, -2), dc).transpose(-1, -2)


@traced("add")
class _Add(torch.autograd.Function):
    """Residual a + b (one float32 add), traced so the residual stream has a named producer."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        return dy, dy


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _Add.apply(a, b)


@traced("fork")
class _Fork(torch.autograd.Function):
    """Two uses of one activation. The gradient sum that autograd would do unseen becomes this
    op's backward: one float32 add of two terms, the same bits in either order."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> Any:
        return x.clone(), x.clone()

    @staticmethod
    def backward(ctx: Any, d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return d1 + d2


def fork(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _Fork.apply(x)
    return a, b


@traced("scale_mask")
class _ScaleMask(torch.autograd.Function):
    """Causal attention scores: s * scale, with -inf above the diagonal."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, scale: float) -> torch.Tensor:
        t = s.shape[-1]
        ctx.scale = scale
        k = backend.kernels(s)
        if k is not None:
            return k.scale_mask(s, float(_c(scale)), False)
        mask = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)
        return torch.where(mask, torch.full_like(s, -math.inf), s * _c(scale, s))

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        k = backend.kernels(dy)
        if k is not None:
            return k.scale_mask(dy, float(_c(ctx.scale)), True), None
        t = dy.shape[-1]
        mask = torch.ones(t, t, dtype=torch.bool, device=dy.device).triu(1)
        return torch.where(mask, torch.zeros_like(dy), dy * _c(ctx.scale, dy)), None


@traced("split_qkv")
class _SplitQKV(torch.autograd.Function):
    """[B, T, 3D] -> q, k, v as [B, H, T, D/H]; one consumer for the fused projection."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, n_heads: int) -> Any:
        b, t, d3 = qkv.shape
        d = d3 // 3
        ctx.shape = (b, t, d, n_heads)
        parts = qkv.view(b, t, 3, n_heads, d // n_heads).permute(2, 0, 3, 1, 4)
        return parts[0].contiguous(), parts[1].contiguous(), parts[2].contiguous()

    @staticmethod
    def backward(ctx: Any, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> Any:
        b, t, d, h = ctx.shape
        stacked = torch.stack([dq, dk, dv])  # [3, B, H, T, dh]
        return stacked.permute(1, 3, 0, 2, 4).reshape(b, t, 3 * d), None


@traced("merge_heads")
class _MergeHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = x.shape
        ctx.shape = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, h * dh)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = ctx.shape
        return dy.view(b, t, h, dh).permute(0, 2, 1, 3).contiguous()


def causal_attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Multi-head causal self-attention core: qkv [B, T, 3D] -> [B, T, D]."""
    q, k, v = _SplitQKV.apply(qkv, n_heads)
    dh = q.shape[-1]
    scores = _ScaleMask.apply(_MatmulNT.apply(q, k), 1.0 / math.sqrt(dh))
    return _MergeHeads.apply(matmul(softmax(scores), v))


@traced("dropout")
class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale_mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale_mask)
        return x * scale_mask

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        (m,) = ctx.saved_tensors
        return dy * m, None


def dropout_mask(words: torch.Tensor, p: float, shape: tuple[int, ...]) -> torch.Tensor:
    """Keep element i iff u32[i] >= floor(p * 2^32); kept elements scale by f32(1/(1-p))."""
    threshold = int(math.floor(p * 2.0**32))
    keep = words.to(torch.int64) >= threshold
    scale = ref.const(1.0 / (1.0 - p), words)
    return torch.where(keep, scale, ref.const(0.0, words)).reshape(shape)


def dropout(x: torch.Tensor, scale_mask: torch.Tensor) -> torch.Tensor:
    return _Dropout.apply(x, scale_mask)


@traced("conv2d")
class _Conv2d(torch.autograd.Function):
    """3x3/5x5 convolution, stride 1, zero padding k//2, as im2col + exact matmul.

    The input gradient sums the k*k shifted patch gradients in row-major offset order, one
    float32 add at a time (fold's scatter-add has no specified order). The fast path
    (gpu_ops/cpu/conv.c) computes the same matmuls without building the im2col matrix (the
    matmul packs its slices straight from the zero-padded input, which is what it saves for
    the backward), writes y in [N, O, H*W] layout and folds the column gradients per sample.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, c, h, wd = x.shape
        o, _, k, _ = w.shape
        kern = backend.kernels(x, w, b)
        ctx.geom = (n, c, h, wd, k)
        ctx.padded = kern is not None
        if kern is not None:
            y, xp = kern.conv2d_fwd(x, w, b)
            ctx.save_for_backward(xp, w)
            return y
        cols = torch.nn.functional.unfold(x, k, padding=k // 2)  # [N, C*k*k, H*W], pure gather
        cols_t = cols.transpose(1, 2).reshape(n * h * wd, c * k * k)
        ctx.save_for_backward(cols_t, w)
        y = _matmul(cols_t, w.reshape(o, -1).t(), b)
        return y.view(n, h, wd, o).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        saved, w = ctx.saved_tensors
        n, c, h, wd, k = ctx.geom
        o = w.shape[0]
        if ctx.padded:  # saved is the zero-padded input
            kern = backend.kernels(dy, saved, w)
            shard = rowshard.get_shard()
            if kern is not None and shard is None:
                dx, dw, db = kern.conv2d_bwd(dy, saved, w, bool(ctx.needs_input_grad[0]))
                return dx, dw, db
            if kern is not None and shard is not None and hasattr(kern, "conv2d_bwd_sums"):  # another backend may lack it
                return _conv2d_bwd_sharded(kern, shard, ctx, dy, saved, w)
            cols_t = torch.nn.functional.unfold(saved, k).transpose(1, 2).reshape(n * h * wd, c * k * k)
        else:
            cols_t = saved
        dy2 = dy.permute(0, 2, 3, 1).reshape(n * h * wd, o)
        (db,), (dw,) = _reduce_rows([dy2], [(dy2.t(), cols_t)])
        dw = dw.view_as(w)
        if not ctx.needs_input_grad[0]:  # the first layer's input is the data batch
            return None, dw, db
        dcols = _matmul(dy2, w.reshape(o, -1))
        kern = backend.kernels(dcols)
        if kern is not None:
            return kern.col2im(dcols, n, c, h, wd, k), dw, db
        dcols = dcols.view(n, h, wd, c, k, k)
        pad = k // 2
        dxp = torch.zeros(n, c, h + 2 * pad, wd + 2 * pad, dtype=F32, device=dcols.device)
        for i in range(k):
            for j in range(k):
                dxp[:, :, i:i + h, j:j + wd] = dxp[:, :, i:i + h, j:j + wd] + dcols[:, :, :, :, i, j].permute(
                    0, 3, 1, 2)
        return dxp[:, :, pad:pad + h, pad:pad + wd].contiguous(), dw, db


def _conv2d_bwd_sharded(kern: backend.Kernels, shard: rowshard.RowShard, ctx: Any, dy: torch.Tensor,
                        xp: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Row-sharded conv backward on the fused kernel: it hands back this worker's integer sums of dW
    and db on the grids of exponents agreed by all workers, which are added across workers and
    unscaled once. The collectives carry the same groups in the same order as the im2col path's
    ``_reduce_rows([dy2], [(dy2ᵀ, cols)])`` (db's exponents, dW's row and column exponents; db's
    and dW's sums), so a worker on either path computes the same bits with the others."""
    n, c, h, wd, k = ctx.geom
    rows = shard.get_global_rows(n * h * wd)
    t, p = ref.slice_bits(rows), ref.grid_bits(rows)
    amax_a, amax_b = kern.conv2d_bwd_maxabs(dy, xp, k)

    def partials(e: list[torch.Tensor]) -> list[torch.Tensor]:
        s_dw, s_db = kern.conv2d_bwd_sums(dy, xp, k, e[1], e[2], t, p)
        return [s_db, s_dw]
    (_, ea, eb), (tot_db, tot_dw) = rowshard.reduce_precomputed(shard, [amax_a, amax_a, amax_b], partials)
    db = (tot_db * ref.pow2_f64(ea - p)).to(F32)  # the kernel's db grid: ea
    dw = (tot_dw * ref.pow2_f64(ea - t).unsqueeze(1) * ref.pow2_f64(eb - t).unsqueeze(0)).to(F32)
    dx = kern.conv2d_bwd_dx(dy, w) if ctx.needs_input_grad[0] else None
    return dx, dw.view_as(w), db


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _Conv2d.apply(x, w, b)
