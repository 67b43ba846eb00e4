"""Triton kernels (gpu_ops.triton_ops) in the Triton interpreter, bit-equal to gpu_ops.ref.

The interpreter runs the very kernel source on numpy, which rounds every float32/float64
operation correctly and never contracts multiply-adds, so these tests check the kernels'
*programs* (constants, operation order, exact reductions, zero signs) against the oracle.
They do not check what ptxas makes of them on a GPU: test_cuda.py does that when CUDA is
present. conftest.py turns the interpreter on for machines without CUDA; on a GPU machine run
``TRITON_INTERPRET=1 pytest tests/gpu_ops/test_triton_interp.py``.
"""

from __future__ import annotations

import os
import types

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton; ~290 MB wheel)")

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET=1 is not set (a CUDA machine compiles kernels instead; see test_cuda.py)",
                allow_module_level=True)

from gpu_ops import triton_ops

DEVICE = "cpu"


@pytest.mark.parametrize("name", ["elementwise", "gelu_backward", "exact_sum", "softmax", "layer_norm",
                                  "optimizers", "matmul"])
def test_kernel_matches_reference(op_checks: types.SimpleNamespace, name: str) -> None:
    getattr(op_checks, name)(triton_ops, DEVICE)


def test_launch_options_forbid_fusion() -> None:
    assert triton_ops.LAUNCH == {"enable_fp_fusion": False}


def test_row_sum_is_block_size_free() -> None:
    """The exact sum gives the same bits whatever the block (order/tree shape) the kernel uses."""
    import torch

    from gpu_ops import ref

    x = torch.randn(3, 3000, generator=torch.Generator().manual_seed(11)) * 1e3
    want = ref.exact_sum(x, -1)
    for block in (16, 128, 1024, 4096):
        out = torch.empty(3)
        triton_ops._row_sum_kernel[(3,)](x, out, 3000, ref.grid_bits(3000), BLOCK=block, **triton_ops.LAUNCH)
        assert torch.equal(out.view(torch.int32), want.view(torch.int32)), block

