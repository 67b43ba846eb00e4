"""The exact-slice matmul from int8 digit GEMMs (gpu_ops.triton_int8) in the Triton interpreter,
bit-equal to gpu_ops.ref.matmul.

The interpreter runs the kernel's program on numpy (int8 tl.dot with int32 accumulation, int64
shifts and adds), so this checks the digit decomposition and the exact recombination; a GPU runs
the same program on its integer tensor cores, where integer sums are exact in any order.
"""

from __future__ import annotations

import os

import pytest
import torch

from gpu_ops import ref

from .conftest import assert_bits, gen, random_bits

pytest.importorskip("triton", reason="triton is not installed (pip install triton; ~290 MB wheel)")

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="TRITON_INTERPRET=1 is not set (a CUDA machine compiles kernels instead)")

F32 = torch.float32


def _scaled(m: int, k: int, seed: int) -> torch.Tensor:
    g = gen(seed)
    return torch.randn(m, k, generator=g) * torch.exp2(torch.randint(-30, 30, (m, 1), generator=g).to(F32))


def test_digit_counts() -> None:
    from gpu_ops import triton_int8

    # K <= 128 gives t >= 23 and 4 digits; larger K at most 22 bits and 3 digits (9 int8 GEMMs)
    assert [triton_int8.get_digit_count(ref.slice_bits(k)) for k in (1, 2, 32, 33, 128, 129, 4096, 65536)] == \
        [4, 4, 4, 4, 4, 3, 3, 3]
    for t in range(1, 27):  # S balanced base-256 digits reach 127 * (256**S - 1) / 255 >= 2**t - 1, S minimal
        s = triton_int8.get_digit_count(t)
        assert 127 * (256**s - 1) // 255 >= 2**t - 1 > 127 * (256 ** (s - 1) - 1) // 255


@pytest.mark.parametrize("m,k,n", [(5, 3, 7), (33, 100, 40), (70, 40, 66), (9, 200, 12)])
def test_int8_matmul_equals_reference(m: int, k: int, n: int) -> None:
    from gpu_ops import triton_int8

    a, w = _scaled(m, k, seed=m), _scaled(n, k, seed=n + 1)
    w[0] = 0.0
    w[1, :] = 2.0**20 - 1  # |q| = 2**t - 2**(t - 20): near the top of the digit range
    w[2, :] = -(2.0**20 - 1)
    for b in (w.t(), w.t().contiguous()):  # strided and contiguous B
        assert_bits(triton_int8.matmul(a, b), ref.matmul(a, b), f"int8 matmul {m}x{k}x{n}")


def test_int8_matmul_edge_values() -> None:
    from gpu_ops import triton_int8

    # all bit classes except inf/NaN: subnormals, +-0, huge values, rows of zeros and of -0
    a = random_bits(24 * 48, seed=3).view(24, 48)
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    a[0] = 0.0
    a[1] = -0.0
    a[2, :5] = torch.tensor([1e-45, -1e-45, 3e-39, 1.0, -0.0])
    a[2, 5:] = 0.0
    b = torch.randn(48, 20, generator=gen(4))
    b[:, 0] = -0.0
    b[:, 1] = 3.4e38
    b[:, 2] = 1e-44
    assert_bits(triton_int8.matmul(a, b), ref.matmul(a, b), "int8 matmul edges")
    ai = a.clone()
    ai[3, 3] = float("inf")  # no integer digits: the float64 path takes it, same bits (NaN == NaN)
    assert_bits(triton_int8.matmul(ai, b), ref.matmul(ai, b), "int8 matmul with inf")


def test_int8_matmul_rejects_overflowing_k_and_bad_shapes() -> None:
    from gpu_ops import triton_int8

    with pytest.raises(ValueError, match="inner dimension"):
        triton_int8.matmul(torch.zeros(1, triton_int8.MAX_K + 1), torch.zeros(triton_int8.MAX_K + 1, 1))
    with pytest.raises(ValueError, match=r"\[m, k\] @ \[k, n\]"):
        triton_int8.matmul(torch.zeros(2, 3), torch.zeros(4, 2))
