"""Rotary positions: what they cost, side by side (figures in docs/models.md).

    .venv/bin/python -m pytest -q tests/bench/test_bench_rotary.py --benchmark-enable --benchmark-only

* ``step``: one deterministic training step of a gpt2 graph (d 128, 2 layers, context 128,
  batch 4) with learned positions vs rotary positions;
* ``op``: the rotary op forward + backward on a GPT-2-small-sized qkv [4, 1024, 2304], the
  deterministic op vs a plain float32 torch RoPE (the usual rotate-half code);
* ``tables``: building the cos/sin tables of GPT-2 small's heads (T 1024, 64 columns) with the
  spec's sin/cos, uncached, vs torch's own float32 sin/cos.

Without ``--benchmark-enable`` the step and table cases run once (so the file also checks they
work); the large op case only runs as a benchmark.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gpu_ops import layers
from prover.training import Runtime, init_state, train_step
from protocol.presets import get_preset_task
from protocol.task import parse_task

PYDOC = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_step(benchmark: Any, positions: str) -> None:
    task = parse_task(get_preset_task("gpt2", {"d_model": 128, "n_layers": 2, "n_heads": 4, "context": 128,
                                               "positions": positions, "task.batch_size": 4}, PYDOC))
    rt = Runtime.for_task(task, seed=1)
    state = init_state(rt)
    train_step(rt, state)  # warm-up: kernels, tables, allocator
    benchmark.group = "gpt2 d128 L2 T128 B4 step"
    benchmark(lambda: train_step(rt, state))


def naive_rope(qkv: torch.Tensor, heads: int, base: float) -> torch.Tensor:
    b, t, d3 = qkv.shape
    dh = d3 // 3 // heads
    inv = 1.0 / (base ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh))
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    q, k, v = qkv.view(b, t, 3, heads, dh).unbind(2)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
        return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]

    return torch.stack([rot(q), rot(k), v], 2).reshape(b, t, d3)


@pytest.mark.parametrize("side", ["deterministic", "native"])
def test_op(benchmark: Any, side: str) -> None:
    if benchmark.disabled:
        pytest.skip("GPT-2-small-sized tensors only under --benchmark-enable (make bench)")
    x = torch.randn(4, 1024, 2304)
    dy = torch.randn(4, 1024, 2304)

    def run() -> None:
        leaf = x.clone().requires_grad_(True)
        y = layers.rotary(leaf, 12, 10000.0, 0) if side == "deterministic" else naive_rope(leaf, 12, 10000.0)
        y.backward(dy)

    run()
    benchmark.group = "rotary op fwd+bwd [4, 1024, 2304], 12 heads"
    benchmark(run)


@pytest.mark.parametrize("side", ["spec", "torch"])
def test_tables(benchmark: Any, side: str) -> None:
    def build() -> None:
        if side == "spec":
            layers.rotary_tables.cache_clear()
            layers.rotary_tables(1024, 64, 10000.0)
        else:
            ang = torch.arange(1024, dtype=torch.float32)[:, None] * (
                1.0 / 10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))[None, :]
            ang.cos(), ang.sin()

    benchmark.group = "rotary tables T1024 x 32 pairs"
    benchmark(build)
