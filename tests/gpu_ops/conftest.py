"""Shared helpers for the gpu_ops Triton checks (interpreter and CUDA).

Without a GPU, Triton kernels can only run in its interpreter, which must be chosen before
``triton`` is imported: so unless the caller decided already, this conftest sets
``TRITON_INTERPRET=1`` on machines without CUDA. On a GPU machine it leaves the variable
alone, so ``test_cuda.py`` compiles real kernels; run the interpreter tests there with
``TRITON_INTERPRET=1 pytest tests/gpu_ops/test_triton_interp.py``.

The checks compare each Triton wrapper with the reference (computed on CPU) bit for bit;
NaNs compare equal to NaNs whatever their payload (the spec leaves NaN bits open).
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Callable
from typing import Any

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

F32 = torch.float32

EDGE_F32 = [
    0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-45, -1e-45, 3e-44, 1e-40, -1e-40, 1.1754942e-38, 1.1754944e-38,
    -1.1754944e-38, 3.4028235e38, -3.4028235e38, math.inf, -math.inf, 1e30, -1e30, 1e-30, -1e-30, 1e-7, -1e-7,
    88.72283935546875, 88.7228, 88.73, 89.0, -87.33, -87.34, -103.97, -103.972084045410, -103.98, -104.0, 7.0,
    -7.0, 9.0, -9.0, 20.0, -20.0, 0.6931472, 0.70710677, 0.7071068, 1.0000001, 0.99999994, 100.0, -100.0,
]


def bit_mismatch(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None if equal bit for bit (NaN == NaN), else a description of the first difference."""
    got = got.detach().to("cpu")
    want = want.detach().to("cpu")
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {tuple(got.shape)}/{got.dtype} != {tuple(want.shape)}/{want.dtype}"
    if got.dtype == torch.float32:
        gi, wi = got.contiguous().view(torch.int32), want.contiguous().view(torch.int32)
    elif got.dtype == torch.float64:
        gi, wi = got.contiguous().view(torch.int64), want.contiguous().view(torch.int64)
    else:
        gi, wi = got, want
    same = gi == wi
    if got.is_floating_point():
        same |= torch.isnan(got) & torch.isnan(want)
    if bool(same.all()):
        return None
    bad = (~same).nonzero()
    idx = tuple(bad[0].tolist())
    return (f"{bad.shape[0]} of {same.numel()} differ; first at {idx}: got {got[idx].item()!r} "
            f"want {want[idx].item()!r}")


def assert_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    msg = bit_mismatch(got, want)
    assert msg is None, f"{what}: {msg}"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_bits(n: int, seed: int) -> torch.Tensor:
    """n float32 values with uniformly random bit patterns (every class: NaN, inf, subnormal, ±0)."""
    return torch.randint(-2**31, 2**31, (n,), generator=gen(seed), dtype=torch.int64).to(torch.int32).view(F32)


def elementwise_inputs() -> dict[str, torch.Tensor]:
    g = gen(1)
    return {
        "normal": torch.randn(4096, generator=g),
        "normal*10": torch.randn(4096, generator=g) * 10,
        "exp-range": torch.rand(8192, generator=g) * 205 - 110,
        "wide-positive": torch.exp(torch.rand(8192, generator=g, dtype=torch.float64) * 200 - 100).to(F32),
        "edge": torch.tensor(EDGE_F32 + [math.nan], dtype=F32),
        "random-bits": random_bits(1 << 15, 2),
    }


class _Ctx:
    """Stands in for an autograd ctx so a Function's forward can be called directly."""

    def __init__(self) -> None:
        self.saved: tuple[torch.Tensor, ...] = ()

    def save_for_backward(self, *t: torch.Tensor) -> None:
        self.saved = t


def check_elementwise(tops: Any, device: str) -> None:
    from gpu_ops import functional as F
    from gpu_ops import ref

    refs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "exp": ref.exp, "log": ref.log, "tanh": ref.tanh,
        "gelu": lambda x: F._GELU.forward(_Ctx(), x),
    }
    for name, fn in refs.items():
        for case, x in elementwise_inputs().items():
            assert_bits(getattr(tops, name)(x.to(device)), fn(x), f"{name}[{case}]")
    if hasattr(tops, "gelu_with_tanh"):  # the forward that also returns the tanh the backward saves
        for case, x in elementwise_inputs().items():
            ctx = _Ctx()
            want = F._GELU.forward(ctx, x)
            y, th = tops.gelu_with_tanh(x.to(device))
            assert_bits(y, want, f"gelu_with_tanh.y[{case}]")
            assert_bits(th, ctx.saved[1], f"gelu_with_tanh.th[{case}]")


def check_gelu_backward(tops: Any, device: str) -> None:
    from gpu_ops import functional as F

    for case, x in elementwise_inputs().items():
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1e3, 1e3)
        dy = torch.randn(x.shape, generator=gen(3))
        xr = x.clone().requires_grad_(True)
        F.gelu(xr).backward(dy)
        assert_bits(tops.gelu_backward(x.to(device), dy.to(device)), xr.grad, f"gelu_backward[{case}]")


def sum_inputs() -> dict[str, torch.Tensor]:
    g = gen(4)
    big_small = torch.randn(8, 300, generator=g)
    big_small[:, ::7] *= 1e20
    big_small[:, 1::7] *= 1e-30
    special = torch.randn(6, 50, generator=g)
    special[0] = -0.0
    special[1, 3] = math.inf
    special[2, 4] = -math.inf
    special[3, 5] = math.inf
    special[3, 6] = -math.inf
    special[4, 7] = math.nan
    special[5] = 1e-45
    special[5, ::2] = -1e-45
    return {
        "n1": torch.randn(5, 1, generator=g),
        "n2": torch.randn(5, 2, generator=g),
        "n7": torch.randn(3, 7, generator=g),
        "n1000": torch.randn(40, 1000, generator=g) * 100,
        "n5000-chunked": torch.randn(3, 5000, generator=g),
        "cancel": torch.tensor([[1e30, 1.0, -1e30, 1e-30], [3.0, -3.0, -0.0, 0.0]]),
        "big-small": big_small,
        "special": special,
        "random-bits": torch.nan_to_num(random_bits(4 * 257, 5), nan=1.0).reshape(4, 257),
    }


def check_exact_sum(tops: Any, device: str) -> None:
    from gpu_ops import ref

    interp = device == "cpu"  # the interpreter costs ~ms per program: keep program counts small there
    for case, x in sum_inputs().items():
        for dim in (-1, 0, None):
            for keepdim in (False, True):
                if (dim is None and keepdim) or (interp and dim == 0 and x.shape[-1] > 64):
                    continue
                got = tops.exact_sum(x.to(device), dim, keepdim)
                assert_bits(got, ref.exact_sum(x, dim, keepdim), f"exact_sum[{case}, dim={dim}, keepdim={keepdim}]")
    big = torch.randn(1 << 16 if interp else 1 << 24, generator=gen(6))
    assert_bits(tops.exact_sum(big.to(device)), ref.exact_sum(big), f"exact_sum[{big.numel()}]")
    assert_bits(tops.exact_sum(big[:40000].reshape(8, 5000).to(device), -1), ref.exact_sum(big[:40000].reshape(8, 5000), -1),
                "exact_sum[8x5000 rows]")


def softmax_inputs() -> dict[str, torch.Tensor]:
    g = gen(7)
    masked = torch.randn(4, 9, 9, generator=g)
    masked = masked.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), -math.inf)
    return {
        "n1": torch.randn(3, 1, generator=g),
        "n10": torch.randn(16, 10, generator=g),
        "n65": torch.randn(5, 65, generator=g) * 30,
        "n1000": torch.randn(8, 1000, generator=g) * 5,
        "causal": masked,
        "large": torch.tensor([[80.0, -80.0, 0.0, 1e-40], [1e30, 1e30, -1e30, 0.0], [-0.0, 0.0, 1e-45, -1e-45]]),
    }


def check_softmax(tops: Any, device: str) -> None:
    from gpu_ops import functional as F

    for case, x in softmax_inputs().items():
        assert_bits(tops.softmax(x.to(device)), F.softmax_forward(x), f"softmax[{case}]")
        assert_bits(tops.log_softmax(x.to(device)), F.log_softmax_forward(x)[0], f"log_softmax[{case}]")


def check_layer_norm(tops: Any, device: str) -> None:
    from gpu_ops import functional as F

    g = gen(8)
    cases = {
        "n64": torch.randn(32, 64, generator=g),
        "n1": torch.randn(4, 1, generator=g),
        "n100-offset": torch.randn(6, 100, generator=g) + 1000.0,
        "const": torch.full((3, 17), 2.5),
        "scaled": torch.randn(5, 33, generator=g) * 1e-20,
        "3d": torch.randn(2, 5, 48, generator=g),
    }
    for case, x in cases.items():
        d = x.shape[-1]
        gamma = torch.randn(d, generator=g)
        beta = torch.randn(d, generator=g)
        ctx = _Ctx()
        want_y = F._LayerNorm.forward(ctx, x.reshape(-1, d), gamma, beta, 1e-5)
        want_xhat, want_rstd, _ = ctx.saved
        y, xhat, rstd = tops.layer_norm(x.to(device), gamma.to(device), beta.to(device), 1e-5)
        assert_bits(y.reshape(-1, d), want_y, f"layer_norm.y[{case}]")
        assert_bits(xhat.reshape(-1, d), want_xhat, f"layer_norm.xhat[{case}]")
        assert_bits(rstd.reshape(-1, 1), want_rstd, f"layer_norm.rstd[{case}]")


def check_optimizers(tops: Any, device: str) -> None:
    from gpu_ops import optim

    g = gen(9)
    shape = (257, 33)
    for momentum, wd in ((0.9, 1e-4), (0.0, 0.0), (0.5, 0.0)):
        p = torch.randn(shape, generator=g)
        buf = torch.zeros(shape) if momentum else None
        pd = p.to(device)
        bufd = None if buf is None else buf.to(device)
        for step in range(4):
            grad = torch.randn(shape, generator=g) * 10 ** (step - 2)
            optim.sgd_step(p, grad, buf, 0.1 / (step + 1), momentum, wd)
            tops.sgd_step(pd, grad.to(device), bufd, 0.1 / (step + 1), momentum, wd)
            assert_bits(pd, p, f"sgd p (m={momentum}, wd={wd}, step {step})")
            if buf is not None:
                assert_bits(bufd, buf, f"sgd buf (m={momentum}, step {step})")
    for wd in (0.01, 0.0):
        p = torch.randn(shape, generator=g)
        m = torch.zeros(shape)
        v = torch.zeros(shape)
        pd, md, vd = p.to(device), m.to(device), v.to(device)
        for step in range(1, 5):
            grad = torch.randn(shape, generator=g) * 10 ** (step - 3)
            grad[0, :3] = torch.tensor([0.0, -0.0, 1e-45])
            optim.adamw_step(p, grad, m, v, step, 3e-3, 0.9, 0.999, 1e-8, wd)
            tops.adamw_step(pd, grad.to(device), md, vd, step, 3e-3, 0.9, 0.999, 1e-8, wd)
            for name, got, want in (("p", pd, p), ("m", md, m), ("v", vd, v)):
                assert_bits(got, want, f"adamw {name} (wd={wd}, step {step})")


def matmul_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = gen(10)
    spread = torch.randn(9, 40, generator=g)
    spread[:, ::3] *= 1e-25
    spread[2] = 0.0
    spread[3, 5] = 1e-45
    sub = torch.full((4, 6), 1e-42)
    sub[1] = -3e-39
    return {
        "1x1x1": (torch.randn(1, 1, generator=g), torch.randn(1, 1, generator=g)),
        "5x3x7": (torch.randn(5, 3, generator=g), torch.randn(3, 7, generator=g)),
        "33x100x77": (torch.randn(33, 100, generator=g), torch.randn(100, 77, generator=g)),
        "64x300x10": (torch.randn(64, 300, generator=g) * 1e3, torch.randn(300, 10, generator=g) * 1e-3),
        "k1": (torch.randn(1, 1, generator=g), torch.randn(1, 8, generator=g)),
        "spread": (spread, torch.randn(40, 5, generator=g) * 1e10),
        "subnormal": (sub, torch.randn(6, 3, generator=g)),
        "batched": (torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 4, 6, generator=g)),
        "broadcast": (torch.randn(3, 5, 4, generator=g), torch.randn(4, 6, generator=g)),
        "zero-k-rows": (torch.zeros(3, 5), torch.randn(5, 2, generator=g)),
    }


def check_matmul(tops: Any, device: str) -> None:
    from gpu_ops import ref

    for case, (a, b) in matmul_cases().items():
        assert_bits(tops.matmul(a.to(device), b.to(device)), ref.matmul(a, b), f"matmul[{case}]")


def _on_reference(fn: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    """Run ``fn`` with gpu_ops forced onto the plain-torch reference (not the C fast path)."""

    def run(tops: Any, device: str) -> None:
        try:
            from gpu_ops.backend import use_backend
        except ImportError:  # before the backend switch existed everything was the reference
            fn(tops, device)
            return
        with use_backend("ref"):
            fn(tops, device)

    return run


CHECKS = types.SimpleNamespace(**{name: _on_reference(fn) for name, fn in {
    "elementwise": check_elementwise, "gelu_backward": check_gelu_backward, "exact_sum": check_exact_sum,
    "softmax": check_softmax, "layer_norm": check_layer_norm, "optimizers": check_optimizers,
    "matmul": check_matmul}.items()})


@pytest.fixture
def op_checks() -> types.SimpleNamespace:
    """The shared Triton-vs-reference checks, each called as ``check(triton_ops_module, device)``."""
    return CHECKS
