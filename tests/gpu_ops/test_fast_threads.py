"""The fast exact matmul splits its work over threads; the bits must not depend on that.

Each output element is computed by one thread from the same exact integers, so any thread count
gives the reference's bits, unless threads share scratch they should not (a race on the line-max
scratch between the row and the column preparation once made transposed operands give
run-to-run different results with 2 threads). Compared with the reference oracle, many times,
because a race shows only sometimes.
"""

from __future__ import annotations

import pytest
import torch

from gpu_ops import functional, ref
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
