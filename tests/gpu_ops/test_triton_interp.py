"""Triton kernels (gpu_ops.triton_ops, gpu_ops.triton_bwd) in the Triton interpreter, bit-equal to
gpu_ops.ref / gpu_ops.functional / gpu_ops.optim / protocol.rng.

The interpreter runs the very kernel source on numpy, which rounds every float32/float64
operation correctly and never contracts multiply-adds, so these tests check the kernels'
*programs* (constants, operation order, exact reductions, zero signs) against the oracle.
They do not check what ptxas makes of them on a GPU: test_cuda.py does that when CUDA is
present, calling the ``check_*`` functions of this module with ``device="cuda"``. conftest.py
turns the interpreter on for machines without CUDA; on a GPU machine run
``TRITON_INTERPRET=1 pytest tests/gpu_ops/test_triton_interp.py``.

The interpreter costs about a millisecond per program and per op, so inputs here are small;
the whole module should take well under a minute on two cores.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from .conftest import EDGE_F32, assert_bits, gen, random_bits, softmax_inputs

pytest.importorskip("triton", reason="triton is not installed (pip install triton; ~290 MB wheel)")

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="TRITON_INTERPRET=1 is not set (a CUDA machine compiles kernels instead; see test_cuda.py)")

DEVICE = "cpu"
F32 = torch.float32


class _Ctx:
    """An autograd ctx stand-in for calling a Function's forward and backward directly."""

    def __init__(self, *saved: torch.Tensor, **attrs: Any) -> None:
        self.saved_tensors: tuple[torch.Tensor, ...] = saved
        self.needs_input_grad = (True,) * 4  # every input gradient is wanted
        self.__dict__.update(attrs)

    def save_for_backward(self, *t: torch.Tensor) -> None:
        self.saved_tensors = t


@contextmanager
def _reference() -> Iterator[None]:
    """gpu_ops.functional on its plain-torch reference branch (not the C fast path)."""
    from gpu_ops.backend import use_backend

    with use_backend("ref"):
        yield


def _specials(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x with a few ±0, subnormal, huge and tiny values sprinkled in (finite only)."""
    x = x.clone().reshape(-1)
    vals = torch.tensor([0.0, -0.0, 1e-45, -3e-39, 1e30, -1e-30, 1.0, 2.0**-20], dtype=F32)
    idx = torch.randint(0, x.numel(), (min(x.numel(), 8),), generator=gen(seed))
    x[idx] = vals[: idx.numel()]
    return x


# --------------------------------------------------------------------------- shared checks (interp + CUDA)

def check_softmax_backward(tb: Any, device: str) -> None:
    from gpu_ops import functional as F

    with _reference():
        for case, x in softmax_inputs().items():
            y = F.softmax_forward(x)
            dy = _specials(torch.randn(x.shape, generator=gen(21)), 22).reshape(x.shape)
            want = F._Softmax.backward(_Ctx(y), dy)
            assert_bits(tb.softmax_backward(y.to(device), dy.to(device)), want, f"softmax_backward[{case}]")
            _, e, s = F.log_softmax_forward(x)
            p = e / s
            want = F._LogSoftmax.backward(_Ctx(p), dy)
            assert_bits(tb.log_softmax_backward(p.to(device), dy.to(device)), want, f"log_softmax_backward[{case}]")


def check_cross_entropy(tb: Any, device: str) -> None:
    from gpu_ops import functional as F

    with _reference():
        cases = {k: v.reshape(-1, v.shape[-1]) for k, v in softmax_inputs().items()}
        for case, x in cases.items():
            t = torch.randint(0, x.shape[1], (x.shape[0],), generator=gen(24))
            if case == "causal":
                t = torch.zeros_like(t)  # row 0 of each mask keeps only column 0
            ctx = _Ctx()
            want_loss = F._CrossEntropy.forward(ctx, x, t)
            loss, p, picked = tb.cross_entropy(x.to(device), t.to(device))
            assert_bits(picked, F.log_softmax_forward(x)[0].gather(1, t.view(-1, 1)).view(-1),
                        f"cross_entropy.picked[{case}]")
            assert_bits(loss, want_loss, f"cross_entropy.loss[{case}]")
            assert_bits(p, ctx.saved_tensors[0], f"cross_entropy.p[{case}]")
            for dl in (1.0, 0.37, -3e-39):
                dloss = torch.tensor(dl, dtype=F32)
                want, _ = F._CrossEntropy.backward(ctx, dloss)
                got = tb.cross_entropy_backward(p, t.to(device), dloss.to(device))
                assert_bits(got, want, f"cross_entropy_backward[{case}, dloss={dl}]")


def check_layer_norm_backward(tb: Any, device: str) -> None:
    from gpu_ops import functional as F

    g = gen(25)
    cases = {
        "n64": torch.randn(24, 64, generator=g),
        "n1": torch.randn(4, 1, generator=g),
        "n100-offset": torch.randn(6, 100, generator=g) + 1000.0,
        "const": torch.full((3, 17), 2.5),
        "rows-chunked": torch.randn(70, 5, generator=g),
    }
    with _reference():
        for case, x in cases.items():
            d = x.shape[-1]
            gamma = torch.randn(d, generator=g)
            beta = torch.randn(d, generator=g)
            ctx = _Ctx()
            F._LayerNorm.forward(ctx, x, gamma, beta, 1e-5)
            xhat, rstd, _ = ctx.saved_tensors
            dy = _specials(torch.randn(x.shape, generator=g), 26).reshape(x.shape)
            want = F._LayerNorm.backward(ctx, dy)[:3]
            got = tb.layer_norm_backward(dy.to(device), xhat.to(device), rstd.to(device), gamma.to(device))
            for name, a, b in zip(("dx", "dg", "db"), got, want):
                assert_bits(a, b, f"layer_norm_backward.{name}[{case}]")


def check_column_sum(tb: Any, device: str) -> None:
    from gpu_ops import ref

    g = gen(27)
    special = torch.randn(9, 6, generator=g)
    special[:, 0] = -0.0
    special[3, 1] = math.inf
    special[4, 2] = math.nan
    special[:, 3] = 1e-45
    special[::2, 3] = -1e-45
    special[1, 4] = 3e38
    special[2, 4] = 3e38
    cases = {
        "2d": (torch.randn(130, 37, generator=g) * 100, 0),
        "special": (special, 0),
        "3d-mid": (torch.randn(3, 20, 5, generator=g), 1),
        "3d-first": (torch.randn(4, 2, 3, generator=g), 0),
        "n1": (torch.randn(1, 7, generator=g), 0),
    }
    for case, (x, dim) in cases.items():
        assert_bits(tb.column_sum(x.to(device), dim), ref.exact_sum(x, dim), f"column_sum[{case}]")
    a, b = torch.randn(33, 10, generator=g), torch.randn(33, 10, generator=g)
    assert_bits(tb.column_sum(a.to(device), 0, b.to(device)), ref.exact_sum(a * b, 0), "column_sum[product]")


def check_conv2d(tb: Any, device: str) -> None:
    from gpu_ops import functional as F

    g = gen(28)
    cases = {
        "k3": (torch.randn(2, 3, 5, 6, generator=g), torch.randn(4, 3, 3, 3, generator=g)),
        "k5": (torch.randn(1, 2, 4, 7, generator=g) * 1e3, torch.randn(3, 2, 5, 5, generator=g)),
        "k3-1x1": (torch.randn(2, 2, 1, 1, generator=g), torch.randn(2, 2, 3, 3, generator=g)),
        "signed-zeros": (torch.full((1, 1, 3, 3), -0.0), torch.randn(2, 1, 3, 3, generator=g)),
    }
    with _reference():
        for case, (x, w) in cases.items():
            b = torch.randn(w.shape[0], generator=g)
            ctx = _Ctx()
            want_y = F._Conv2d.forward(ctx, x, w, b)
            y, cols = tb.conv2d(x.to(device), w.to(device), b.to(device))
            assert_bits(cols, ctx.saved_tensors[0], f"conv2d.im2col[{case}]")
            assert_bits(y, want_y, f"conv2d.y[{case}]")
            dy = _specials(torch.randn(want_y.shape, generator=g), 29).reshape(want_y.shape)
            if case == "signed-zeros":
                dy = torch.full(want_y.shape, -0.0)  # every patch gradient is -0: the sum must be +0
            want = F._Conv2d.backward(ctx, dy)
            got = tb.conv2d_backward(dy.to(device), cols, w.to(device), tuple(x.shape))
            for name, a, bb in zip(("dx", "dw", "db"), got, want):
                assert_bits(a, bb, f"conv2d_backward.{name}[{case}]")


_PHILOX_CASES = [  # (seed, stream, a, b, n)
    (0, 0, 0, 0, 4), (0, 3, 7, 1, 1), (1, 1, 0, 0, 5), (2**32 - 1, 2, 2**32 - 1, 2**31, 13),
    (2**32, 3, 123456, 7, 1027), (2**64 - 1, 2**32 - 1, 1, 2**32 - 1, 9), (0x0123456789ABCDEF, 3, 41, 2, 0),
]


def check_philox(tb: Any, device: str) -> None:
    from protocol.rng import compute_random_u32

    for seed, stream, a, b, n in _PHILOX_CASES:
        want = torch.from_numpy(compute_random_u32(seed, stream, a, b, n).astype(np.int64))
        assert_bits(tb.random_u32(seed, stream, a, b, n, device=device), want, f"random_u32{(seed, stream, a, b, n)}")


def check_dropout_mask(tb: Any, device: str) -> None:
    from gpu_ops import functional as F
    from protocol.rng import STREAM_DROPOUT, compute_random_u32

    seed, step, site, shape = 0xFEEDFACE12345678, 17, 2, (5, 3, 7)
    words = compute_random_u32(seed, STREAM_DROPOUT, step, site, math.prod(shape))
    # floor(p * 2**32) == words[i] for one word in each lane of a Philox block: a word equal to
    # the threshold is kept
    hits = [float(words[i]) / 2.0**32 for i in (8, 13, 18, 23)]
    for p in [0.0, 0.1, 0.5, 0.9, *hits]:
        want = F.dropout_mask(torch.from_numpy(words.astype(np.int64)), p, shape)
        got = tb.dropout_mask(seed, STREAM_DROPOUT, step, site, p, shape, device=device)
        assert_bits(got, want, f"dropout_mask[p={p}]")


def check_clip(tb: Any, device: str) -> None:
    from gpu_ops import optim

    g = gen(30)
    base = [torch.randn(3, 4, generator=g), torch.randn(1, generator=g) * 1e-20, torch.randn(2100, generator=g),
            torch.zeros(5), torch.tensor([-0.0, 1e-45, -3e-39])]
    with _reference():
        norm0 = optim.clip_grad_norm([t.clone() for t in base], math.inf)
        cases = {  # name: (grads, max_norm)
            "clip": ([t * 10 for t in base], 1.0),
            "no-clip": (base, 1e3),
            "equal": (base, float(norm0)),  # norm == max_norm: not clipped
            "small": ([t * 2e-5 for t in base], 1e-4),  # the + 1e-6 in the coefficient matters
            "overflow": (base[:2] + [base[2] * 1e20], 1.0),
        }
        for case, (grads, limit) in cases.items():
            want = [t.clone() for t in grads]
            want_norm = optim.clip_grad_norm(want, limit)
            got = [t.clone().to(device) for t in grads]
            assert_bits(tb.grad_norm(got), want_norm, f"grad_norm[{case}]")
            got_norm = tb.clip_grad_norm(got, limit)
            assert_bits(got_norm, want_norm, f"clip_grad_norm.norm[{case}]")
            for i, (a, b) in enumerate(zip(got, want)):
                assert_bits(a, b, f"clip_grad_norm.grad{i}[{case}]")


def check_small_layers(tb: Any, device: str) -> None:
    from gpu_ops import functional as F

    x = torch.cat([torch.tensor(EDGE_F32 + [math.nan], dtype=F32), random_bits(2000, 31)])
    dy = torch.cat([torch.tensor([-0.0, 1e-45], dtype=F32), random_bits(x.numel() - 2, 32)])
    with _reference():
        ctx = _Ctx()
        assert_bits(tb.relu(x.to(device)), F._ReLU.forward(ctx, x), "relu")
        assert_bits(tb.relu_backward(x.to(device), dy.to(device)), F._ReLU.backward(ctx, dy), "relu_backward")
        y = torch.tanh(x)
        assert_bits(tb.tanh_backward(y.to(device), dy.to(device)), F._Tanh.backward(_Ctx(y), dy), "tanh_backward")
        s = _specials(torch.randn(2, 3, 6, 6, generator=gen(33)), 34).reshape(2, 3, 6, 6)
        scale = 1.0 / math.sqrt(12)
        ctx = _Ctx()
        assert_bits(tb.scale_mask(s.to(device), scale), F._ScaleMask.forward(ctx, s, scale), "scale_mask")
        want, _ = F._ScaleMask.backward(ctx, s)
        assert_bits(tb.scale_mask_backward(s.to(device), scale), want, "scale_mask_backward")


BWD_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "softmax_backward": check_softmax_backward, "cross_entropy": check_cross_entropy,
    "layer_norm_backward": check_layer_norm_backward, "column_sum": check_column_sum, "conv2d": check_conv2d,
    "philox": check_philox, "dropout_mask": check_dropout_mask, "clip": check_clip,
    "small_layers": check_small_layers,
}


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", ["elementwise", "gelu_backward", "exact_sum", "softmax", "layer_norm",
                                  "optimizers", "matmul"])
def test_kernel_matches_reference(op_checks: types.SimpleNamespace, name: str) -> None:
    from gpu_ops import triton_ops

    getattr(op_checks, name)(triton_ops, DEVICE)


@pytest.mark.parametrize("name", sorted(BWD_CHECKS))
def test_bwd_kernel_matches_reference(name: str) -> None:
    from gpu_ops import triton_bwd

    BWD_CHECKS[name](triton_bwd, DEVICE)


def test_launch_options_forbid_fusion() -> None:
    from gpu_ops import triton_bwd, triton_ops

    assert triton_ops.LAUNCH == {"enable_fp_fusion": False}
    assert triton_bwd.LAUNCH is triton_ops.LAUNCH


def test_row_sum_is_block_size_free() -> None:
    """The exact sums give the same bits whatever block (order/tree shape) the kernel uses."""
    from gpu_ops import ref, triton_bwd, triton_ops

    x = torch.randn(2, 1500, generator=gen(11)) * 1e3
    x[1, ::5] *= 1e-30
    want = ref.exact_sum(x, -1)
    for block in (16, 256, 2048):
        out = torch.empty(2)
        triton_ops._row_sum_kernel[(2,)](x, out, 1500, ref.grid_bits(1500), BLOCK=block, **triton_ops.LAUNCH)
        assert_bits(out, want, f"row sum, BLOCK={block}")
    picked = x.reshape(-1)[:1000]  # the cross-entropy loss: one program walks the rows in chunks
    for block in (16, 1024):
        loss = torch.empty(())
        triton_bwd._neg_mean_kernel[(1,)](picked, loss, 1000, 1000.0, ref.grid_bits(1000), BLOCK=block,
                                          **triton_ops.LAUNCH)
        assert_bits(loss, -ref.exact_mean(picked), f"cross-entropy mean, BLOCK={block}")
    xt = x.t().contiguous()  # [1500, 2]: the column kernel walks the rows in chunks of BR
    for br, bc in ((8, 16), (64, 16), (256, 32)):
        out = torch.empty(2)
        triton_bwd._col_sum_kernel[(1, 1)](xt, xt, out, 1500, 2, ref.grid_bits(1500), PROD=False, BR=br, BC=bc,
                                           **triton_ops.LAUNCH)
        assert_bits(out, want, f"column sum, BR={br}, BC={bc}")
