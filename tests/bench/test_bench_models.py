"""One training step of a large preset graph: deterministic ops vs native torch (issue: record
the 124M preset, one step is enough).

    make bench                                      # pytest-benchmark, gpt2-small at context 128
    .venv/bin/python -m tests.bench.test_bench_models [CONTEXT] [BATCH]   # figures for docs/models.md

The script runs each side in a fresh process (so the peak RSS is that side's own) and prints
one JSON line per side: step seconds, peak RSS, parameters, checkpoint tensor bytes and the
time to hash the state root. The task object is built directly (context 128 instead of the
preset's 1024): this measures the machinery, not a claim.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as tf

from protocol.graph import GraphConfig
from protocol.presets import get_preset_graph
from protocol.task import DataSpec, OptimSpec, ScheduleSpec, Task

PYDOC = bytes.fromhex("a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab")


def gpt2_small_task(context: int, batch: int) -> Task:
    graph = get_preset_graph("gpt2-small", {"context": context})
    return Task(name="gpt2-small", seed=1, total_steps=10, checkpoint_interval=1, batch_size=batch,
                model_family="graph", model=graph, data=DataSpec("pydoc-topics", PYDOC),
                optim=OptimSpec(name="adamw", lr=1e-4), schedule=ScheduleSpec())


def native_forward(graph: GraphConfig) -> Any:
    """The same graph in plain float32 torch (nondeterministic kernels, autograd's own sums)."""

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v: dict[str, torch.Tensor] = {"input": x, "targets": y}
        for n in graph.nodes:
            a = [v[s] for s in n.inputs]
            name = n.name
            if n.op == "embedding":
                out = tf.embedding(a[0], p[name])
            elif n.op == "pos_embedding":
                out = a[0] + p[name]
            elif n.op == "layer_norm":
                out = tf.layer_norm(a[0], (a[0].shape[-1],), p[name + ".weight"], p[name + ".bias"])
            elif n.op == "linear":
                out = tf.linear(a[0], p[n.get("weight") or name + ".weight"], p.get(name + ".bias"))
            elif n.op == "causal_attention":
                b, t, d3 = a[0].shape
                h = int(n.get("heads"))
                q, k, w = a[0].view(b, t, 3, h, d3 // 3 // h).permute(2, 0, 3, 1, 4)
                out = tf.scaled_dot_product_attention(q, k, w, is_causal=True).transpose(1, 2).reshape(b, t, d3 // 3)
            elif n.op == "gelu":
                out = tf.gelu(a[0], approximate="tanh")
            elif n.op == "add":
                out = a[0] + a[1]
            elif n.op == "dropout":
                out = a[0]
            elif n.op == "cross_entropy":
                out = tf.cross_entropy(a[0].reshape(-1, a[0].shape[-1]), a[1].reshape(-1))
            else:
                raise NotImplementedError(n.op)
            v[name] = out
        return v[graph.nodes[-1].name]

    return forward


def run_side(side: str, context: int, batch: int) -> dict[str, Any]:
    from prover.training import Runtime, compute_root, init_state, train_step

    torch.set_num_threads(1)
    task = gpt2_small_task(context, batch)
    t0 = time.perf_counter()
    rt = Runtime.for_task(task, seed=7)
    state = init_state(rt)
    init_s = time.perf_counter() - t0
    params = sum(t.numel() for t in state.params.values())
    if side == "det":
        t0 = time.perf_counter()
        train_step(rt, state)
        step_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        compute_root(state)
        root_s = time.perf_counter() - t0
    else:
        fwd = native_forward(task.model)  # type: ignore[arg-type]
        x, y = rt.dataset.get_batch(rt.keyed_task, 0)
        leaves = {k: v.clone().requires_grad_(True) for k, v in state.params.items()}
        opt = torch.optim.AdamW(leaves.values(), lr=1e-4)
        t0 = time.perf_counter()
        fwd(leaves, x, y).backward()
        opt.step()
        step_s = time.perf_counter() - t0
        root_s = 0.0
    tensor_bytes = sum(t.numel() * 4 for t in state.params.values()) * (3 if side == "det" else 1)
    return {"side": side, "context": context, "batch": batch, "params": params, "init_s": round(init_s, 2),
            "step_s": round(step_s, 2), "state_root_s": round(root_s, 2), "checkpoint_tensor_bytes": tensor_bytes,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


@pytest.mark.parametrize("side", ["det", "native"])
def test_bench_gpt2_small_one_step(benchmark: Any, side: str) -> None:
    if benchmark.disabled:
        pytest.skip("gpt2-small (124M) only under --benchmark-enable (make bench)")
    benchmark.group = "gpt2-small step, context 128, batch 1"
    result = benchmark.pedantic(run_side, args=(side, 128, 1), rounds=1, iterations=1)
    assert result["params"] == 124_439_808
    benchmark.extra_info.update(result)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("det", "native"):
        print(json.dumps(run_side(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
    else:
        ctx = sys.argv[1] if len(sys.argv) > 1 else "128"
        bsz = sys.argv[2] if len(sys.argv) > 2 else "1"
        for s in ("native", "det"):
            subprocess.run([sys.executable, "-m", "tests.bench.test_bench_models", s, ctx, bsz], check=True)
