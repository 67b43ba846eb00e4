"""The operators added for model graphs (SPEC.md §10.5): the fast backend equals the reference
bit for bit, forward and backward; each computes the right function (close to float64 torch);
and a naive float32 torch version differs in bits (negative control: the equality is not
vacuous, the order of operations matters)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gpu_ops import backend, layers

pytestmark = pytest.mark.skipif(backend._load() is None, reason="C kernels could not be built")

F32 = torch.float32


def data(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(torch.randint(-12, 12, shape, generator=g).float())
    return x.to(F32)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def run(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dy: torch.Tensor) -> list[torch.Tensor]:
    leaves = [x.clone().requires_grad_(x.dtype == F32) for x in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [x.grad for x in leaves if x.grad is not None]


def naive_swiglu(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(a) * b


def naive_rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * g


def naive_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d3 = qkv.shape
    q, k, v = qkv.view(b, t, 3, heads, d3 // 3 // heads).permute(2, 0, 3, 1, 4)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(b, t, d3 // 3)


CASES: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], list[torch.Tensor], tuple[int, ...]]] = {
    # name: (op, naive float32 version, inputs, output shape)
    "mean_pool": (lambda x: layers.mean_pool(x, 1), lambda x: x.mean(1), [data(6, 257, 5)], (6, 5)),
    "mean_pool_last": (lambda x: layers.mean_pool(x, 2), lambda x: x.mean(2), [data(4, 3, 300, seed=1)], (4, 3)),
    "attention": (lambda x: layers.attention(x, 2), lambda x: naive_attention(x, 2),
                  [data(3, 7, 24, seed=2) / 4096], (3, 7, 8)),
    "rms_norm": (lambda x, g: layers.rms_norm(x, g), naive_rms, [data(5, 9, 33, seed=3), data(33, seed=4)], (5, 9, 33)),
    "swiglu": (layers.swiglu, naive_swiglu, [data(7, 130, seed=5) / 2048], (7, 65)),
    "patches": (lambda x: layers.patches(x, 2), None, [data(3, 2, 8, 6, seed=6)], (3, 12, 8)),  # type: ignore[dict-item]
    "conv2d_stride2": (lambda x, w, b: layers.conv2d_general(x, w, b, 2, 1),
                       lambda x, w, b: torch.nn.functional.conv2d(x, w, b, stride=2, padding=1),
                       [data(2, 3, 9, 8, seed=8), data(4, 3, 3, 3, seed=9), data(4, seed=10)], (2, 4, 5, 4)),
    "conv2d_1x1_stride2": (lambda x, w, b: layers.conv2d_general(x, w, b, 2, 0),
                           lambda x, w, b: torch.nn.functional.conv2d(x, w, b, stride=2),
                           [data(2, 5, 8, 8, seed=11), data(6, 5, 1, 1, seed=12), data(6, seed=13)], (2, 6, 4, 4)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_equals_reference_and_is_the_right_function(name: str) -> None:
    op, naive, inputs, out_shape = CASES[name]
    dy = data(*out_shape, seed=99)
    with backend.use_backend("fast"):
        fast = run(op, inputs, dy)
    with backend.use_backend("ref"):
        slow = run(op, inputs, dy)
    assert len(fast) == len(slow) == 1 + len(inputs)
    for f, s in zip(fast, slow):
        assert f.shape == s.shape and torch.equal(bits(f), bits(s)), f"{name}: fast and reference differ"
    if naive is None:  # patches is a permutation: exactly the gather it describes
        n, c, h, w = inputs[0].shape
        x = inputs[0]
        assert torch.equal(fast[0][1, 1 * (w // 2) + 2, 1 * 4 + 1 * 2 + 0], x[1, 1, 1 * 2 + 1, 2 * 2 + 0])
        assert torch.equal(fast[1], dy.reshape(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(x.shape))
        return
    wide = run(lambda *a: naive(*[t.double() for t in a]), inputs, dy.double())
    for f, w in zip(fast, wide):
        torch.testing.assert_close(f.double(), w.double(), rtol=2e-4, atol=1e-6 * float(w.abs().max()))
    # negative control: the same function in naive float32 torch does not give the same bits
    plain = run(naive, inputs, dy)
    assert any(not torch.equal(bits(f), bits(p)) for f, p in zip(fast, plain)), f"{name}: control matched"


def test_non_causal_attention_sees_the_future_and_causal_does_not() -> None:
    from gpu_ops import functional as F

    qkv = data(1, 5, 12, seed=7) / 4096
    later = qkv.clone()
    later[0, 4] += 1.0  # change only the last position
    moved = (layers.attention(later, 2)[0, 0] - layers.attention(qkv, 2)[0, 0]).abs().max()
    assert moved > 1e-3
    # causal: position 0 ignores position 4 up to the truncation of the exact matmul, whose
    # column exponents span all T rows of v (§10.3)
    leak = (F.causal_attention(later, 2)[0, 0] - F.causal_attention(qkv, 2)[0, 0]).abs().max()
    assert leak < 1e-6 * moved


@pytest.mark.parametrize("k", [1, 3, 5])
def test_general_conv_at_stride_one_is_the_family_conv(k: int) -> None:
    """With stride 1 and padding k div 2 the general conv is functional.conv2d, bit for bit,
    forward and every gradient (the graph executor picks either by geometry)."""
    from gpu_ops import functional as F

    x, w, b = data(2, 3, 6, 7, seed=k), data(4, 3, k, k, seed=k + 1), data(4, seed=k + 2)
    dy = data(2, 4, 6, 7, seed=k + 3)
    a = run(F.conv2d, [x, w, b], dy)
    g = run(lambda x, w, b: layers.conv2d_general(x, w, b, 1, k // 2), [x, w, b], dy)
    assert all(torch.equal(bits(p), bits(q)) for p, q in zip(a, g))
