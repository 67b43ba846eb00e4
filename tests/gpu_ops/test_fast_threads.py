"""The fast exact matmul splits its work over threads; the bits must not depend on that.

Each output element is computed by one thread from the same exact integers, so any thread count
gives the reference's bits, unless threads share scratch they should not (a race on the line-max
scratch between the row and the column preparation once made transposed operands give
run-to-run different results with 2 threads). Compared with the reference oracle, many times,
because a race shows only sometimes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator

import pytest
import torch

from gpu_ops import backend, functional, optim, ref
from gpu_ops.backend import get_backend_name, use_backend


def _inputs(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Lines of very different magnitudes: a wrong line maximum changes the slices' bits.
    a = torch.randn(m, k, generator=g) * torch.logspace(-8, 8, m).unsqueeze(1)
    b = torch.randn(k, n, generator=g) * torch.logspace(8, -8, n).unsqueeze(0)
    return a, b


@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
def test_fast_matmul_bits_do_not_depend_on_threads(layout: str) -> None:
    with use_backend("fast"):
        if get_backend_name() != "fast":
            pytest.skip("the C kernels cannot be built here: there is no fast path to check")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(4)  # more threads than cores makes the interleavings vary more; the shapes are above the threading threshold (32 MFLOP per thread)
        for rep in range(6):
            m, k, n = (320, 512, 416) if rep % 2 else (416, 640, 320)
            a, b = _inputs(m, k, n, rep)
            if layout[0] == "t":
                a = a.t().contiguous().t()
            if layout[1] == "t":
                b = b.t().contiguous().t()
            want = ref.matmul(a, b)
            with use_backend("fast"):
                for _ in range(4):
                    got = functional.matmul(a, b)
                    assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (layout, rep)
    finally:
        torch.set_num_threads(old)


@pytest.fixture()
def split_small() -> Iterator[ctypes.CDLL]:
    """The elementwise / row kernels split even small inputs over the threads (gpu_ops/cpu/par.c
    normally waits for ~1 ms of work per thread), so ranges of odd sizes are exercised quickly."""
    k = backend.kernels(torch.zeros(1))
    if k is None:
        pytest.skip("the C kernels cannot be built here: there is no fast path to check")
    old_min, old_threads = k.lib.pol_set_par_min_ns(0.0), torch.get_num_threads()
    try:
        yield k.lib
    finally:
        k.lib.pol_set_par_min_ns(old_min)
        torch.set_num_threads(old_threads)


def _op_results(x: torch.Tensor, lib: ctypes.CDLL | None) -> dict[str, list[torch.Tensor]]:
    """Each threaded kernel's outputs and input gradients; with ``lib``, also checks that the
    kernel really ran split over more than one thread (else the comparison would prove nothing)."""
    rows, n = x.shape
    g = torch.Generator().manual_seed(7)
    dy = torch.randn(rows, n, generator=g)
    target = torch.randint(0, n, (rows,), generator=g)
    gamma, beta = torch.randn(n, generator=g), torch.randn(n, generator=g)
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": functional.relu, "tanh": functional.tanh, "gelu": functional.gelu,
        "softmax": functional.softmax, "log_softmax": functional.log_softmax,
        "cross_entropy": lambda t: functional.cross_entropy(t, target),
        "layer_norm": lambda t: functional.layer_norm(t, gamma, beta),
    }
    out: dict[str, list[torch.Tensor]] = {}
    for name, fn in fns.items():
        leaf = x.detach().clone().requires_grad_(True)
        y = fn(leaf)
        if lib is not None:
            assert lib.pol_par_last_nth() == min(torch.get_num_threads(), y.numel() if y.dim() == 1 else rows), name
        y.backward(dy if y.dim() else torch.tensor(1.0))
        assert leaf.grad is not None
        out[name] = [y.detach(), leaf.grad]
    p, grad = x.flatten().clone(), dy.flatten()
    buf, m, v = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
    for step in (1, 2):
        optim.sgd_step(p, grad, buf, 0.1, 0.9, 0.01)
        optim.adamw_step(p, grad * step, m, v, step, 1e-3, 0.9, 0.999, 1e-8, 0.01)
        if lib is not None:
            assert lib.pol_par_last_nth() == torch.get_num_threads()
    out["sgd+adamw"] = [p, buf, m, v]
    return out


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_elementwise_and_row_kernels_bits_do_not_depend_on_threads(threads: int, split_small: ctypes.CDLL) -> None:
    """Each element (or row) is computed by one thread with the one-thread operations: the bits
    equal the reference's at any thread count."""
    g = torch.Generator().manual_seed(threads)
    x = torch.randn(203, 37, generator=g) * 4
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-45, -1e-40])
    with use_backend("ref"):
        want = _op_results(x, None)
    torch.set_num_threads(threads)
    with use_backend("fast"):
        got = _op_results(x, split_small)
    for name in want:
        for a, b in zip(got[name], want[name]):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name


def test_negative_control_a_reduction_across_the_split_would_be_caught(split_small: ctypes.CDLL) -> None:
    """The ranges above really differ with the thread count: a float32 sum reduced per range
    (the cut par.c makes, then the partial sums added) changes its bits from 1 to 3 ranges, so a
    kernel that reduced across ranges would fail the test above."""
    x = torch.randn(4001, generator=torch.Generator().manual_seed(3)) * torch.logspace(-6, 6, 4001)

    def split_sum(nth: int) -> torch.Tensor:
        acc = torch.zeros((), dtype=torch.float32)
        n = x.numel()
        for i in range(nth):
            part = torch.zeros((), dtype=torch.float32)
            for v in x[n * i // nth:n * (i + 1) // nth]:
                part = part + v
            acc = acc + part
        return acc

    assert not torch.equal(split_sum(1), split_sum(3))
