"""Rotary positions (SPEC.md §10.5): the op is the rotation it claims to be (forward and backward
close to an independent binary64 complex-number version), bit-identical on the reference and
the fast backend inside attention, its tables equal the numpy program written from the text,
they depend on the config only and carry no gradient, and a naive float32 version (torch's sin,
cos and pow) differs in bits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpu_ops import backend, layers
from gpu_ops import functional as F
from tests.spec_impl import graph as spec_graph

F32, F64 = torch.float32, torch.float64


def data(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F32)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def rope_f64(qkv: torch.Tensor, heads: int, base: float, dims: int) -> torch.Tensor:
    """Independent binary64 rotary: pairs (i, i + m) of each query and key head as one complex
    number times exp(i * t * base^(-2i/r)); everything else passes through."""
    b, t, d3 = qkv.shape
    d = d3 // 3
    dh = d // heads
    r = dims or dh
    m = r // 2
    freq = torch.tensor([base ** (-2.0 * i / r) for i in range(m)], dtype=F64)
    theta = torch.arange(t, dtype=F64)[:, None] * freq[None, :]
    rot = torch.polar(torch.ones_like(theta), theta)  # [T, m]
    cols = []
    for part in range(3):
        for h in range(heads):
            c = part * d + h * dh
            head = qkv[:, :, c:c + dh]
            if part == 2:
                cols.append(head)
                continue
            z = torch.complex(head[..., :m], head[..., m:r]) * rot
            cols += [z.real, z.imag, head[..., r:]]
    return torch.cat(cols, dim=-1)


def run(fn, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    leaf = x.clone().requires_grad_(True)
    y = fn(leaf)
    y.backward(dy)
    return y.detach(), leaf.grad  # type: ignore[return-value]


@pytest.mark.parametrize("heads,d,dims,base", [(2, 16, 0, 10000.0), (3, 24, 4, 500.0), (1, 8, 2, 1.0)])
def test_rotary_is_the_rotation_forward_and_backward(heads: int, d: int, dims: int, base: float) -> None:
    t = 37
    x, dy = data(3, t, 3 * d, seed=heads), data(3, t, 3 * d, seed=heads + 10)
    y, dx = run(lambda v: layers.rotary(v, heads, base, dims), x, dy)
    y64, dx64 = run(lambda v: rope_f64(v, heads, base, dims), x.double(), dy.double())
    torch.testing.assert_close(y.double(), y64, rtol=0, atol=2e-5)
    torch.testing.assert_close(dx.double(), dx64, rtol=0, atol=2e-5)
    # values and the columns past dims are copied bit for bit, as is position 0's query and key
    assert torch.equal(bits(y[..., 2 * d:]), bits(x[..., 2 * d:]))
    if dims:
        dh = d // heads
        assert torch.equal(bits(y[..., dims:dh]), bits(x[..., dims:dh]))


def test_scores_depend_on_the_relative_position_only() -> None:
    """RoPE's point: q_t . k_s after rotation is a function of t - s (checked in binary64 on the
    float32 output, shifting both positions by 5)."""
    d, t = 8, 12
    q, k = data(1, 1, d, seed=1), data(1, 1, d, seed=2)
    qkv = torch.zeros(1, t, 3 * d)
    qkv[0, :, :d] = q
    qkv[0, :, d:2 * d] = k
    y = layers.rotary(qkv, 1, 10000.0, 0).double()
    s = y[0, :, :d] @ y[0, :, d:2 * d].T
    for a, b in ((3, 1), (6, 2), (4, 4)):
        assert abs(float(s[a, b] - s[a + 5, b + 5])) < 1e-5 * float(s.abs().max())


def test_tables_equal_the_text_and_carry_no_gradient() -> None:
    for t, r, base in ((64, 16, 10000.0), (4096, 128, 10000.0), (9, 6, 500.0), (5, 2, 1.0)):
        cos, sin = layers.rotary_tables(t, r, base)
        c2, s2 = spec_graph.rotary_tables(t, r, base)
        assert np.array_equal(cos.numpy().view(np.uint32), c2.view(np.uint32))
        assert np.array_equal(sin.numpy().view(np.uint32), s2.view(np.uint32))
        assert not cos.requires_grad and not sin.requires_grad
        assert cos[0].eq(1).all() and sin[0].eq(0).all()
        # inv_0 = 1: column 0 is cos(t), sin(t) of the integer positions
        torch.testing.assert_close(cos[:, 0].double(), torch.cos(torch.arange(t, dtype=F64)), rtol=0, atol=2e-7)
    pos0 = torch.zeros(1, 9, 18)
    pos0[0, :, 0] = 1.0  # unit query vector (1, 0, ...) rotated at every position: (cos, sin) of column 0
    y = layers.rotary(pos0, 1, 500.0, 4)
    cos, sin = layers.rotary_tables(9, 4, 500.0)
    assert torch.equal(y[0, :, 0], cos[:, 0]) and torch.equal(y[0, :, 2], sin[:, 0])


@pytest.mark.skipif(backend._load() is None, reason="C kernels could not be built")
@pytest.mark.parametrize("causal", [True, False])
def test_rotary_attention_is_bit_identical_on_reference_and_fast(causal: bool) -> None:
    def fn(v: torch.Tensor) -> torch.Tensor:
        r = layers.rotary(v, 2, 10000.0, 6)
        return F.causal_attention(r, 2) if causal else layers.attention(r, 2)

    x, dy = data(3, 11, 48, seed=5) / 8, data(3, 11, 16, seed=6)
    with backend.use_backend("fast"):
        fast = run(fn, x, dy)
    with backend.use_backend("ref"):
        slow = run(fn, x, dy)
    for f, s in zip(fast, slow):
        assert torch.equal(bits(f), bits(s))


def test_naive_float32_rotary_differs_in_bits() -> None:
    """Negative control: inv_freq by torch's pow and tables by torch's sin/cos (the usual
    implementation) give other bits on a long context."""
    t, r, base = 4096, 64, 10000.0
    inv = 1.0 / (base ** (torch.arange(0, r, 2, dtype=F32) / r))
    ang = torch.arange(t, dtype=F32)[:, None] * inv[None, :]
    cos, sin = layers.rotary_tables(t, r, base)
    assert not torch.equal(bits(torch.cos(ang)), bits(cos)) or not torch.equal(bits(torch.sin(ang)), bits(sin))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tables_and_rotation_equal_cpu() -> None:
    cos, sin = layers.rotary_tables(4096, 128, 10000.0, "cuda")
    c2, s2 = layers.rotary_tables(4096, 128, 10000.0)
    assert cos.device.type == "cuda" and torch.equal(bits(cos.cpu()), bits(c2)) and torch.equal(bits(sin.cpu()), bits(s2))
    x, dy = data(2, 33, 48, seed=7), data(2, 33, 48, seed=8)
    yc, dxc = run(lambda v: layers.rotary(v, 2, 10000.0, 0), x.cuda(), dy.cuda())
    y, dx = run(lambda v: layers.rotary(v, 2, 10000.0, 0), x, dy)
    assert torch.equal(bits(yc.cpu()), bits(y)) and torch.equal(bits(dxc.cpu()), bits(dx))
    assert math.isfinite(float(yc.abs().max()))


def test_rotary_trace_entries_reexecute_from_their_arguments() -> None:
    """A referee re-runs a recorded rotary entry from its input and constant arguments alone
    (the tables are recomputed, never shipped): same output hashes, forward and backward."""
    from prover.steps import compute_output_hashes, compute_step_trace, copy_state, execute_entry
    from prover.training import Runtime, init_state
    from protocol.presets import get_preset_task
    from protocol.task import parse_task

    pydoc = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"
    task = parse_task(get_preset_task("gpt2", {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 8,
                                               "positions": "rotary", "rotary_dims": 4, "rotary_base": 300.0,
                                               "task.batch_size": 2}, pydoc))
    rt = Runtime.for_task(task, seed=7)
    state = init_state(rt)
    start = copy_state(state)
    tr = compute_step_trace(rt, state)
    entries = [e for e in tr.entries if e["op"].startswith("rotary.")]
    assert [e["op"] for e in entries] == ["rotary.forward", "rotary.backward"]
    assert entries[0]["args"][1:] == [2, 300.0, 4]
    for e in entries:
        inputs = [tr.tensors[ref[0]].reshape(ref[2]) for ref in e["in"]]
        got = compute_output_hashes(execute_entry(rt, tr.step, e, inputs, start))
        assert got == [None if o is None else o[0] for o in e["out"]]


def test_tables_built_in_row_blocks_are_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge table is built a block of rows at a time (bounded temporaries): same bits."""
    whole = layers.rotary_tables(300, 64, 777.0)
    layers.rotary_tables.cache_clear()
    monkeypatch.setattr(layers, "_TABLE_CHUNK", 100)  # 3 rows of 32 pairs per block
    try:
        blocks = layers.rotary_tables(300, 64, 777.0)
    finally:
        layers.rotary_tables.cache_clear()
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(whole, blocks))
