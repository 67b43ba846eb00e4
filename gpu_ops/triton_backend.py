"""The Triton backend of ``gpu_ops.backend.kernels()``: the methods of the C ``Kernels``, on the Triton
kernels of ``triton_ops``, ``triton_bwd`` (and nothing else), for tensors on any device Triton can
address.

``backend.kernels()`` returns this object for CUDA tensors (when triton imports) and, with
``POL_GPU_OPS_BACKEND=triton``, for CPU tensors too: under ``TRITON_INTERPRET=1`` the same kernels
then run in Triton's interpreter, which is how the whole training step is tested without a GPU
(tests/gpu_ops/test_triton_step.py). Every method returns the bits of the reference branch that
``gpu_ops.functional`` / ``optim`` / ``nn`` would otherwise take (the kernels are checked one by one
in tests/gpu_ops/test_triton_interp.py; docs/gpu.md lists them).

Pieces that are not arithmetic (padding, permutes, reshapes) and the few single elementwise float32
operations between kernels (a bias add) are torch ops on the tensors' own device: each is one
correctly rounded IEEE operation on any device, and no tensor is created on another device.
"""

from __future__ import annotations

import math

import torch
import triton

from . import triton_bwd as tb
from . import triton_ops as to

F32 = torch.float32

__all__ = ["TritonKernels"]


class TritonKernels:
    """Same methods, arguments and results as ``gpu_ops.backend.Kernels``; outputs live on the inputs' device."""

    name = "triton"

    # ------------------------------------------------------------------ sums and matmul

    def exact_sum(self, x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
        if dim is None:  # like ref.exact_sum, keepdim is ignored without dim
            return to.exact_sum(x)
        d = dim % x.dim()
        if d == x.dim() - 1:
            return to.exact_sum(x, d, keepdim)
        out = tb.column_sum(x, d)  # a middle/first axis without moving it last (same bits)
        return out.unsqueeze(d) if keepdim else out

    def matmul(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
               transpose_out: bool = False) -> torch.Tensor | None:
        """ref.matmul (+ bias, one float32 add afterwards); None when the shapes need the reference."""
        if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
            return None
        if min(a.shape[-2], a.shape[-1], b.shape[-1]) == 0:
            return None
        c = to.matmul(a, b)
        if bias is not None:
            c = c + bias
        return c.transpose(-1, -2).contiguous() if transpose_out else c

    # ------------------------------------------------------------------ randomness

    def philox_u32(self, seed: int, stream: int, a: int, b: int, n: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """protocol.rng.compute_random_u32(seed, stream, a, b, n) as int64 words on ``device``."""
        return tb.random_u32(seed, stream & 0xFFFFFFFF, a & 0xFFFFFFFF, b & 0xFFFFFFFF, n, device)

    def dropout_mask(self, seed: int, stream: int, a: int, b: int, threshold: int, scale: float,
                     shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """functional.dropout_mask(words of (seed, stream, a, b), p, shape), threshold = floor(p * 2**32)."""
        n = math.prod(shape)
        return tb._philox(seed, stream & 0xFFFFFFFF, a & 0xFFFFFFFF, b & 0xFFFFFFFF, n, threshold, device,
                          mask=True, scale=scale).reshape(shape)

    # ------------------------------------------------------------------ conv2d (stride 1, padding k // 2)

    def conv2d_fwd(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, xp): xp is the +0-padded input, what ``conv2d_bwd`` (and the row-sharded backward) reads."""
        n, _, h, wd = x.shape
        o, _, k, _ = w.shape
        pad = k // 2
        cols = tb.im2col(x, k)
        y = to.matmul(cols, w.reshape(o, -1).t()) + b
        xp = torch.nn.functional.pad(x.to(F32), (pad, pad, pad, pad))  # a copy with +0 borders
        return y.view(n, h, wd, o).permute(0, 3, 1, 2).contiguous(), xp

    def conv2d_bwd(self, dy: torch.Tensor, xp: torch.Tensor, w: torch.Tensor, need_dx: bool
                   ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(dx or None, dw, db) of conv2d_fwd: dW = dy2^T @ cols, db = exact column sum, dx = col2im(dy2 @ W)."""
        n, o, h, wd = dy.shape
        c, k = w.shape[1], w.shape[2]
        pad = k // 2
        cols = tb.im2col(xp[:, :, pad:pad + h, pad:pad + wd], k)
        dy2 = dy.permute(0, 2, 3, 1).reshape(n * h * wd, o)
        dw = to.matmul(dy2.t(), cols).view_as(w)
        db = tb.column_sum(dy2, 0)
        dx = tb.col2im(to.matmul(dy2, w.reshape(o, -1)), (n, c, h, wd), k) if need_dx else None
        return dx, dw, db

    def col2im(self, dcols: torch.Tensor, n: int, c: int, h: int, w: int, k: int) -> torch.Tensor:
        return tb.col2im(dcols, (n, c, h, w), k)

    # ------------------------------------------------------------------ elementwise

    def scale_mask(self, x: torch.Tensor, scale: float, backward: bool) -> torch.Tensor:
        return tb.scale_mask_backward(x, scale) if backward else tb.scale_mask(x, scale)

    def relu_fwd(self, x: torch.Tensor) -> torch.Tensor:
        return tb.relu(x)

    def relu_bwd(self, dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return tb.relu_backward(y, dy)  # y > 0 exactly where x > 0

    def exp(self, x: torch.Tensor) -> torch.Tensor:
        return to.exp(x)

    def log(self, x: torch.Tensor) -> torch.Tensor:
        return to.log(x)

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return to.tanh(x)

    def tanh_bwd(self, dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return tb.tanh_backward(y, dy)

    def gelu_fwd(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return to.gelu_with_tanh(x)

    def gelu_bwd(self, dy: torch.Tensor, x: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        return to.gelu_backward(x, dy)  # recomputes th exactly as gelu_fwd did

    # ------------------------------------------------------------------ rows: softmax, losses, layer norm

    def softmax_fwd(self, x: torch.Tensor) -> torch.Tensor:
        return to.softmax(x)

    def softmax_bwd(self, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        return tb.softmax_backward(y, dy)

    def log_softmax_fwd(self, x: torch.Tensor, target: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(log p or None when ``target`` is given, p, log p at target per row or None)."""
        if target is None:
            p, logp = to._softmax_rows(x)
            return logp, p, None
        n = x.shape[-1]
        tgt = target.reshape(-1)
        if tgt.numel() != x.numel() // max(n, 1) or bool(((tgt < 0) | (tgt >= n)).any()):
            raise IndexError("cross_entropy target out of range")  # before any kernel reads out of bounds
        _, p, picked = tb.cross_entropy(x, tgt)
        return None, p.reshape(x.shape), picked

    def log_softmax_bwd(self, p: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        return tb.log_softmax_backward(p, dy)

    def cross_entropy_bwd(self, p: torch.Tensor, target: torch.Tensor, dloss: float | torch.Tensor) -> torch.Tensor:
        if not isinstance(dloss, torch.Tensor):
            dloss = torch.full((1,), dloss, dtype=F32, device=p.device)
        return tb.cross_entropy_backward(p, target, dloss).reshape(p.shape)

    def layer_norm_fwd(self, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, xhat, rstd = to.layer_norm(x, g, b, eps)
        return y, xhat, rstd.reshape(-1, 1)

    def layer_norm_bwd(self, dy: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor, g: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tb.layer_norm_backward(dy, xhat, rstd, g)

    # ------------------------------------------------------------------ optimizers (in place)

    def clip_grad_norm(self, grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """optim.clip_grad_norm in place on contiguous float32 grads; returns the norm. The norm's exact
        sum runs over the grads where they lie, and the clip decision is taken on the device."""
        return tb.clip_grad_norm(grads, max_norm)

    def sgd_step(self, p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, lr: float, momentum: float,
                 weight_decay: float) -> None:
        """optim.sgd_step with its float32 coefficients already rounded (optim._sgd_coefs)."""
        to.sgd_step(p, g, buf, lr, momentum, weight_decay)

    def adamw_step(self, p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lrwd: float,
                   has_wd: bool, coefs: tuple[float, float, float, float, float, float, float]) -> None:
        """optim.adamw_step with its float32 coefficients already computed (optim._adamw_coefs)."""
        n = p.numel()
        g = g.to(F32).contiguous()
        if n:
            to._adamw_kernel[(triton.cdiv(n, to._EW_BLOCK),)](p, g, m, v, n, lrwd, *coefs, HAS_WD=has_wd,
                                                                BLOCK=to._EW_BLOCK, **to.LAUNCH)
