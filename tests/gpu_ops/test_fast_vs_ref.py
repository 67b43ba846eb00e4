"""The fast C path equals the reference bit for bit (gpu_ops.backend 'fast' vs 'ref')."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from gpu_ops import backend, optim, ref
from gpu_ops import functional as F

pytestmark = pytest.mark.skipif(backend._load() is None, reason="C kernels could not be built")

F32 = torch.float32


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def assert_same(a: torch.Tensor, b: torch.Tensor, nan_equal: bool = False) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    if nan_equal:  # NaN payloads of sums containing both infinities are order-dependent in torch itself
        both = torch.isnan(a) & torch.isnan(b)
        a, b = torch.where(both, torch.nan, a), torch.where(both, torch.nan, b)
    diff = (bits(a) != bits(b)).sum().item()
    assert diff == 0, f"{diff} of {a.numel()} elements differ"


def both(fn: Callable[[], object]) -> tuple[object, object]:
    with backend.use_backend("fast"):
        fast = fn()
    with backend.use_backend("ref"):
        slow = fn()
    return fast, slow


def edge_values() -> torch.Tensor:
    v = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-40, -3e-39, 1.1754943508222875e-38, 3.4e38, -3.4e38, 1e-20,
         88.72283935546875, 88.7228, 88.73, -103.97208, -103.9721, -103.98, -87.3, 0.5, 2.0, 1e10, -1e10, 1e-7]
    g = torch.Generator().manual_seed(5)
    rnd = torch.randn(1000, generator=g) * torch.exp2(torch.randint(-30, 30, (1000,), generator=g).float())
    return torch.cat([torch.tensor(v, dtype=F32), rnd.to(F32)])


SPECIALS = torch.tensor([math.inf, -math.inf, math.nan], dtype=F32)


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(F32)


@pytest.mark.parametrize("name", ["exp", "log", "tanh"])
def test_unary_edges(name: str) -> None:
    x = torch.cat([edge_values(), SPECIALS, -edge_values().abs()])
    k = backend.kernels(x)
    assert k is not None
    assert_same(getattr(k, name)(x), getattr(ref, name)(x))


def test_exp_log_all_exponents() -> None:
    # every float32 exponent, several mantissas, both signs (covers subnormals and the clamp edges)
    e = torch.arange(0, 256, dtype=torch.int32)
    m = torch.tensor([0, 1, 0x400000, 0x7FFFFF, 0x123456, 0x6A09E6, 0x3504F3], dtype=torch.int32)
    pos = ((e.view(-1, 1) << 23) | m.view(1, -1)).reshape(-1).view(F32)
    x = torch.cat([pos, -pos])
    k = backend.kernels(x)
    assert k is not None
    for name in ("exp", "log", "tanh"):
        assert_same(getattr(k, name)(x), getattr(ref, name)(x))


def test_negative_control_native_differs() -> None:
    """torch's own exp/softmax give other bits on some inputs, so the comparisons are not vacuous."""
    x = randn(100000, seed=1, scale=10.0)
    assert (bits(torch.exp(x)) != bits(ref.exp(x))).any()
    s = randn(64, 100, seed=2, scale=5.0)
    with backend.use_backend("fast"):
        assert (bits(torch.softmax(s, -1)) != bits(F.softmax(s))).any()


@pytest.mark.parametrize("shape,dim", [((1000,), None), ((7, 33), -1), ((7, 33), 0), ((3, 5, 4), 1), ((1, 1), 0),
                                       ((70000,), None), ((5, 17), None)])
def test_exact_sum(shape: tuple[int, ...], dim: int | None) -> None:
    x = randn(*shape, seed=3) * torch.exp2(torch.randint(-20, 20, shape).to(F32))
    k = backend.kernels(x)
    assert k is not None
    for keepdim in (False, True):
        assert_same(k.exact_sum(x, dim, keepdim), ref.exact_sum(x, dim, keepdim))


def test_exact_sum_edges() -> None:
    rows = torch.stack([
        torch.full((9,), -0.0), torch.zeros(9), torch.tensor([-0.0, 0.0] * 4 + [1e-45]),
        torch.tensor([1e-45, -1e-45, 3e-39, -1e-40, 0.0, 1e-44, 2e-45, -0.0, 5e-45]),
        torch.tensor([3e38, 3e38, -3e38, 1.0, 1e-30, -1e-30, 2.0, 3.0, 4.0]),
        torch.tensor([1.0, -1.0, 1e-8, -1e-8, 0.5, -0.5, 1e-3, 0.0, 0.0]),
    ]).to(F32)
    k = backend.kernels(rows)
    assert k is not None
    for dim in (-1, 0, None):
        assert_same(k.exact_sum(rows, dim), ref.exact_sum(rows, dim))
    special = torch.tensor([[1.0, math.inf, 2.0], [math.inf, -math.inf, 1.0], [math.nan, 1.0, 0.0]], dtype=F32)
    for dim in (-1, 0):
        assert_same(k.exact_sum(special, dim), ref.exact_sum(special, dim), nan_equal=True)


@pytest.mark.parametrize("m,kk,n", [(1, 1, 1), (1, 64, 10), (64, 64, 128), (33, 100, 77), (128, 784, 7), (5, 3000, 3)])
def test_matmul_layouts(m: int, kk: int, n: int) -> None:
    a = randn(m, kk, seed=4) * torch.exp2(torch.randint(-8, 8, (m, 1)).to(F32))
    w = randn(n, kk, seed=5)
    k = backend.kernels(a, w)
    assert k is not None
    for b in (w.t(), w.t().contiguous()):
        for aa in (a, a.t().contiguous().t()):
            got = k.matmul(aa, b)
            assert got is not None
            assert_same(got, ref.matmul(aa, b))
    bias = randn(n, seed=6)
    got = k.matmul(a, w.t(), bias)
    assert got is not None
    assert_same(got, ref.matmul(a, w.t()) + bias)


def test_matmul_batched_and_row_invariance() -> None:
    a, b = randn(2, 3, 16, 8, seed=7), randn(2, 3, 8, 16, seed=8)
    k = backend.kernels(a, b)
    assert k is not None
    full = k.matmul(a, b.transpose(-1, -2).contiguous().transpose(-1, -2))
    assert full is not None
    assert_same(full, ref.matmul(a, b))
    row = k.matmul(a[1, 2, 5:6], b[1, 2])
    assert row is not None
    assert_same(row, full[1, 2, 5:6])


def test_matmul_edges() -> None:
    a = torch.tensor([[0.0, -0.0, 0.0], [-0.0, -0.0, -0.0], [1e-45, -1e-45, 3e-39], [3e38, -3e38, 1.0],
                      [-1e-20, 1.0, 0.0]], dtype=F32)
    b = torch.tensor([[1.0, -0.0], [-2.0, 0.0], [1e-45, -1e30]], dtype=F32)
    k = backend.kernels(a, b)
    assert k is not None
    got = k.matmul(a, b)
    assert got is not None
    assert_same(got, ref.matmul(a, b))
    ai = torch.tensor([[math.inf, 1.0, 0.5], [math.nan, 1.0, 1.0]], dtype=F32)
    got = k.matmul(ai, b)
    assert got is not None
    assert_same(got, ref.matmul(ai, b), nan_equal=True)


def _grads(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, seed: int = 9) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    dy = randn(*out.shape, seed=seed) if out.dim() else torch.tensor(1.0)
    out.backward(dy)
    return [out.detach()] + [t.grad for t in leaves if t.grad is not None]


def _check_op(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
    fast, slow = both(lambda: _grads(fn, *inputs))
    assert isinstance(fast, list) and isinstance(slow, list) and len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert_same(a, b)


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_autograd_ops(rows: int) -> None:
    x = randn(rows, 37, seed=10, scale=3.0)
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-45, -1e-40])
    _check_op(F.softmax, x)
    _check_op(F.log_softmax, x)
    _check_op(F.gelu, x * 4)
    _check_op(F.tanh, x * 4)
    _check_op(lambda t: F.layer_norm(t, randn(37, seed=11), randn(37, seed=12)), x)
    _check_op(lambda t, g, b: F.layer_norm(t, g, b), x, randn(37, seed=11), randn(37, seed=12))
    target = torch.randint(0, 37, (rows,))
    _check_op(lambda t: F.cross_entropy(t, target), x)
    _check_op(lambda t, w, b: F.linear(t, w, b), x, randn(5, 37, seed=13), randn(5, seed=14))
    _check_op(lambda t, p: F.add_broadcast(t, p), x, randn(37, seed=15))


def test_softmax_masked_rows_and_batch_invariance() -> None:
    s = randn(2, 4, 8, 8, seed=16)
    mask = torch.ones(8, 8, dtype=torch.bool).triu(1)
    s = torch.where(mask, torch.tensor(-math.inf), s)
    _check_op(F.softmax, s)
    with backend.use_backend("fast"):
        assert_same(F.softmax(s)[1, 2, 3:4], F.softmax(s[1, 2, 3:4]))


def test_conv_and_embedding() -> None:
    x, w, b = randn(3, 2, 6, 6, seed=17), randn(4, 2, 3, 3, seed=18), randn(4, seed=19)
    _check_op(F.conv2d, x, w, b)
    idx = torch.tensor([[1, 3, 3, 0], [2, 2, 2, 9]])
    _check_op(lambda t: F.embedding(idx, t), randn(10, 6, seed=20))


def test_optimizers() -> None:
    def run(opt: str) -> list[torch.Tensor]:
        p = randn(300, seed=21)
        p[:3] = torch.tensor([0.0, -0.0, 1e-42])
        s1, s2 = torch.zeros(300), torch.zeros(300)
        for step in range(1, 5):
            g = randn(300, seed=22 + step) * 1e-3
            g[3] = -0.0
            if opt == "sgd":
                optim.sgd_step(p, g, s1, 0.1, 0.9, 1e-4)
                optim.sgd_step(p, g, None, 0.05, 0.0, 0.0)
            else:
                optim.adamw_step(p, g, s1, s2, step, 3e-3, 0.9, 0.999, 1e-8, 0.01)
                optim.adamw_step(p, g, s1, s2, step, 3e-3, 0.9, 0.999, 1e-8, 0.0)
        grads = [randn(10, seed=30), randn(3, 3, seed=31)]
        norm = optim.clip_grad_norm(grads, 0.5)
        return [p, s1, s2, norm, *grads]

    for opt in ("sgd", "adamw"):
        fast, slow = both(lambda opt=opt: run(opt))  # type: ignore[misc]
        assert isinstance(fast, list) and isinstance(slow, list)
        for a, b in zip(fast, slow):
            assert_same(a, b)


@pytest.mark.parametrize("task_name", ["digits-mlp", "digits-cnn", "pydoc-transformer"])
def test_training_roots_identical(task_name: str) -> None:
    from protocol.task import parse_task_toml
    from prover import training as T
    from prover.builtin import resolve_task_path

    task = parse_task_toml(resolve_task_path(task_name).read_text())
    rt = T.Runtime.for_task(task)

    def run() -> tuple[bytes, list[float]]:
        st = T.init_state(rt)
        losses = [T.train_step(rt, st) for _ in range(3)]
        return T.compute_root(st), losses

    fast, slow = both(run)
    assert fast == slow


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**32, 2**64 - 1, 20261122])
def test_philox_and_dropout_mask_equal_numpy(seed: int) -> None:
    import numpy as np

    from gpu_ops.nn import get_dropout_mask
    from protocol.rng import STREAM_DROPOUT, compute_random_u32

    k = backend.kernels()
    assert k is not None
    for stream, a, b, n in [(1, 0, 0, 1), (3, 5, 9, 7), (2, 2**32 - 1, 2**31, 4099), (3, 199, 4, 65536),
                            (2**32 - 1, 123456, 0, 3), (3, 0, 0, 0)]:
        want = torch.from_numpy(compute_random_u32(seed, stream, a, b, n).astype(np.int64))
        assert torch.equal(k.philox_u32(seed, stream, a, b, n), want)
    for p, shape in [(0.1, (4, 64, 33)), (0.5, (7,)), (1e-9, (5, 3)), (0.999, (1000,))]:
        words = compute_random_u32(seed, STREAM_DROPOUT, 11, 3, int(np.prod(shape)))
        want_mask = F.dropout_mask(torch.from_numpy(words.astype(np.int64)), p, shape)
        with backend.use_backend("fast"):
            got = get_dropout_mask(seed, 11, 3, p, shape)
        assert_same(got, want_mask)


def test_relu_conv_fast_paths_match_reference() -> None:
    x = randn(2, 3, 7, 5, seed=40)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-45])
    _check_op(lambda t: F.relu(t), x)
    _check_op(lambda t, w, b: F.relu(F.conv2d(t, w, b)), x, randn(4, 3, 5, 5, seed=41), randn(4, seed=42))
    _check_op(F.conv2d, randn(2, 1, 8, 8, seed=43), randn(8, 1, 3, 3, seed=44), randn(8, seed=45))
    # k = 7 and a non-square image
    _check_op(F.conv2d, randn(2, 2, 6, 9, seed=60), randn(3, 2, 7, 7, seed=61), randn(3, seed=62))


def test_matmul_2d_fast_dispatch_strided_bias() -> None:
    """The short 2-D branch of Kernels.matmul: any operand strides, a non-contiguous bias."""
    a, w, bias2 = randn(9, 21, seed=63), randn(11, 21, seed=64), randn(11, 2, seed=65)
    k = backend.kernels(a, w)
    assert k is not None
    bias = bias2[:, 1]
    for aa, bb in ((a, w.t()), (a.t().contiguous().t(), w.t().contiguous())):
        got = k.matmul(aa, bb, bias)
        assert got is not None
        assert_same(got, ref.matmul(aa, bb) + bias)
        got_t = k.matmul(aa, bb, None, transpose_out=True)
        assert got_t is not None
        assert_same(got_t, ref.matmul(aa, bb).t().contiguous())


def test_matmul_transposed_output_and_broadcast_batch() -> None:
    a, w = randn(3, 20, 13, seed=46), randn(13, 6, seed=47)
    k = backend.kernels(a, w)
    assert k is not None
    got = k.matmul(a, w.expand(3, 13, 6), randn(6, seed=48), transpose_out=True)
    assert got is not None
    assert_same(got, (ref.matmul(a.reshape(60, 13), w) + randn(6, seed=48)).view(3, 20, 6).transpose(1, 2).contiguous())


def test_causal_attention_and_no_input_grad_paths() -> None:
    _check_op(lambda t: F.causal_attention(t, 2), randn(2, 5, 12, seed=49, scale=2.0))
    data = randn(4, 7, seed=50)  # a data batch: no gradient wanted, so the fast path skips dx
    _check_op(lambda w, b: F.relu(F.linear(data, w, b)), randn(3, 7, seed=51), randn(3, seed=52))
    img = randn(2, 1, 6, 6, seed=53)
    _check_op(lambda w, b: F.conv2d(img, w, b), randn(4, 1, 3, 3, seed=54), randn(4, seed=55))


@pytest.mark.parametrize("threads", [1, 3])
def test_matmul_blocked_threaded_equals_reference(threads: int) -> None:
    """Shapes that cross every blocking boundary of gemm.c (K > KC, rows > MC, columns > NC,
    ragged edges), at 1 and 3 threads (the split over rows, over column panels and over
    batches): the same bits as the reference, whatever the thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = randn(250, 700, seed=70) * torch.exp2(torch.randint(-6, 6, (250, 1)).to(F32))
        b = randn(700, 1100, seed=71)
        k = backend.kernels(a, b)
        assert k is not None
        for aa, bb in ((a, b), (a.t().contiguous().t(), b.t().contiguous().t())):
            got = k.matmul(aa, bb)
            assert got is not None
            assert_same(got, ref.matmul(aa, bb))
        wide = randn(10, 3000, seed=72), randn(3000, 2000, seed=73)  # few rows: split over panels
        got = k.matmul(*wide)
        assert got is not None
        assert_same(got, ref.matmul(*wide))
        ab, bb3 = randn(6, 200, 300, seed=74), randn(6, 300, 160, seed=75)  # batched: split over batches
        got = k.matmul(ab, bb3, transpose_out=True)
        assert got is not None
        assert_same(got, ref.matmul(ab, bb3).transpose(-1, -2).contiguous())
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 3])
def test_conv_without_im2col_matrix_matches_reference(threads: int) -> None:
    """gpu_ops/cpu/conv.c (slices packed from the padded input through offset tables, window-max
    line exponents, the column gradients folded per sample): forward, dx, dw and db equal the
    reference's im2col + matmul bits. Channels and samples of very different magnitudes (a wrong
    window maximum changes the slices), k = 1 / 3 / 5 / 7, a 1x1 image, one sample (one matrix,
    no batch), more output channels than a row block (O > 120), pixel strips crossing rows."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i, (n, c, h, w, o, k) in enumerate([(1, 3, 7, 5, 4, 3), (3, 2, 6, 9, 5, 7), (2, 4, 8, 8, 130, 3),
                                                (5, 8, 16, 12, 16, 5), (2, 3, 1, 1, 2, 3), (2, 3, 4, 3, 2, 1),
                                                (4, 16, 16, 16, 32, 3)]):
            g = torch.Generator().manual_seed(80 + i)
            x = torch.randn(n, c, h, w, generator=g) * torch.exp2(torch.randint(-30, 30, (n, c, 1, 1), generator=g).to(F32))
            x.view(-1)[:2] = torch.tensor([-0.0, 1e-45])
            wt = torch.randn(o, c, k, k, generator=g) * torch.exp2(torch.randint(-10, 10, (o, 1, 1, 1), generator=g).to(F32))
            b = torch.randn(o, generator=g)
            dy_scale = torch.exp2(torch.randint(-20, 20, (n, o, 1, 1), generator=g).to(F32))
            _check_op(lambda t, ww, bb, s=dy_scale: F.conv2d(t, ww, bb) * s, x, wt, b)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_packed_b_in_windows(threads: int) -> None:
    """A product whose packed B (K * N doubles, here 69 MB) exceeds gemm.c's window threshold (64 MiB)
    is packed one window of 256 columns at a time: 16 full windows and a partial one (N = 4100),
    rows in several row blocks, K in several K blocks, rows of very different magnitudes."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = randn(130, 2100, seed=90) * torch.exp2(torch.randint(-20, 20, (130, 1)).to(F32))
        b = randn(2100, 4100, seed=91)
        k = backend.kernels(a, b)
        assert k is not None
        got = k.matmul(a, b)
        assert got is not None
        assert_same(got, ref.matmul(a, b))
    finally:
        torch.set_num_threads(old)
