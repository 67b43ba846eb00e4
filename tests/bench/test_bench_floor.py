"""The exactness floor, side by side (pytest-benchmark groups; run with ``make bench``):

* exact matmul (gpu_ops, fast path) vs DGEMM (the floor: the integer slices need float64
  products) vs SGEMM, n = 256 ... 4096, at 1 and 2 threads;
* the large-shape steps of ``pol bench --shapes large``: det vs native fp32 vs native fp64;
* the state root hashed from tensors vs raw SHA-256 over the same bytes.

With benchmarks disabled (``make test``) only the small sizes run, once, as a smoke test.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
import torch

from gpu_ops import bench_shapes
from gpu_ops import functional as F


@pytest.fixture()
def threads(request: Any) -> Any:
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("side", ["exact", "dgemm", "sgemm"])
@pytest.mark.parametrize("n", [256, 1024, 2048, 4096])
def test_matmul_vs_gemm(benchmark: Any, n: int, side: str, threads: int) -> None:
    if benchmark.disabled and (n > 256 or threads > 1):
        pytest.skip("large sizes and thread counts only under --benchmark-enable (make bench)")
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    if side == "dgemm":
        a, b = a.double(), b.double()
    fn = F.matmul if side == "exact" else torch.mm
    fn(a, b)  # warm-up: kernel build, packing buffers
    benchmark.group = f"matmul n={n} threads={threads}"
    benchmark.extra_info["gflops"] = 2 * n**3 / 1e9
    benchmark.pedantic(fn, args=(a, b), rounds=3 if n >= 2048 else 10, iterations=1)


@pytest.mark.parametrize("side", ["det", "native", "floor"])
@pytest.mark.parametrize("case", list(bench_shapes.CASES))
def test_large_case_step(benchmark: Any, case: str, side: str) -> None:
    if benchmark.disabled:
        pytest.skip("large shapes only under --benchmark-enable (make bench)")
    torch.set_num_threads(1)
    c = bench_shapes.CASES[case]()
    fn = c.det_step if side == "det" else c.native(torch.float32 if side == "native" else torch.float64)
    fn()
    benchmark.group = f"step {case}"
    benchmark.pedantic(fn, rounds=5, iterations=1)


@pytest.mark.parametrize("side", ["root_from_tensors", "raw_sha256"])
def test_state_root_from_tensors_vs_raw_sha(benchmark: Any, side: str) -> None:
    from protocol.state import STEP_TENSOR, compute_state_root_from_arrays

    mib = 4 if benchmark.disabled else 64
    tensors = [torch.randn(mib * 2**18 // 16) for _ in range(16)]  # mib MiB of float32 in 16 tensors
    if side == "raw_sha256":
        raw = [t.numpy().tobytes() for t in tensors]

        def run() -> Any:
            return [hashlib.sha256(b).digest() for b in raw]
    else:
        def run() -> Any:
            arrays = {STEP_TENSOR: np.array(1, dtype="<i8")}
            arrays.update({f"param/t{i}": t.numpy() for i, t in enumerate(tensors)})
            return compute_state_root_from_arrays(arrays)
    benchmark.group = f"state root {mib} MiB"
    benchmark.extra_info["mib"] = mib
    benchmark.pedantic(run, rounds=5, iterations=1)


def test_large_table_smoke() -> None:
    res = bench_shapes.run_large(steps=1, threads=1, n=128, cases=["mlp-784-1024-1024-10"])
    rows = {r["case"]: r for r in res["cases"]}
    assert set(rows) == {"mlp-784-1024-1024-10", "matmul-128"}
    mlp = rows["mlp-784-1024-1024-10"]
    assert mlp["det"]["median"] > 0 and mlp["native"]["median"] > 0 and mlp["floor"]["median"] > 0
    assert 0 < mlp["root_share"] < 1
    assert "matmul-128" in bench_shapes.format_large(res)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("side", ["det", "native", "floor", "floor_im2col"])
def test_conv_layer_vs_gemm_floor(benchmark: Any, side: str, threads: int) -> None:
    """One conv layer forward + backward (with the input gradient) vs one DGEMM of the same FLOPs
    (``floor``) and the three DGEMMs of its im2col shapes (``floor_im2col``)."""
    if benchmark.disabled and (threads > 1 or side != "det"):
        pytest.skip("the comparison only under --benchmark-enable (make bench)")
    fn = bench_shapes.conv_layer_sides(*((2, 4, 8, 8) if benchmark.disabled else ()))[side]
    fn()
    benchmark.group = f"conv layer fwd+bwd threads={threads}"
    benchmark.pedantic(fn, rounds=7, iterations=1)


@pytest.mark.parametrize("side", ["fwd", "dwdb", "dx", "floor"])
def test_conv_parts_vs_gemm_floor(benchmark: Any, side: str) -> None:
    """The conv layer's forward, weight/bias gradient and input gradient (C kernels, 1 thread), each
    vs the square DGEMM of one part's FLOPs: where the layer's time over the floor goes."""
    if benchmark.disabled and side == "floor":
        pytest.skip("the comparison only under --benchmark-enable (make bench)")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sides = bench_shapes.conv_part_sides(*((2, 4, 8, 8) if benchmark.disabled else ()))
        if not sides:
            pytest.skip("C kernels not built")
        fn = sides[side]
        fn()
        benchmark.group = "conv layer parts threads=1"
        benchmark.pedantic(fn, rounds=7, iterations=1)
    finally:
        torch.set_num_threads(old)
