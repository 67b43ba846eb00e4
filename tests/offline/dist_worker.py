"""One rank of the data-parallel check (tests/offline/test_distributed.py), run as a process of 4.

The four processes form one gloo group and the subgroups {0}, {0,1}, {0,1,2}, {0,1,2,3}, so one
start-up covers 1, 2, 3 (an uneven split) and 4 workers. Rank 0 also trains each family alone,
without any shard (the plain single-process step), and writes one JSON report:

* ``roots[family][W]``: the state root after each step with W workers (``"single"``: no shard);
* ``ops``: row-sharded exact sums and weight-gradient matmuls on hostile groups (zero on some
  workers only, subnormals, one huge value on one worker), equal to the reference or not;
* ``naive``: how many gradient tensors differ from the single-process bits when each worker
  takes the mean over its own rows and the workers average float32 gradients (ordinary DDP):
  the negative control, which must differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gpu_ops import ref, rowshard
from prover.builtin import resolve_task_path
from prover.distributed import TorchCollective
from prover.training import Runtime, compute_root, init_state, train_step
from protocol.presets import get_preset_task
from protocol.task import Task, parse_task, parse_task_toml

WORLD = 4
# The built-in families, and three graph presets for the graph-only operators (strided and 1x1
# convolutions, mean pooling; RMS norm, SwiGLU, rotary positions, a tied head; the class token,
# whose gradient is a sum over the batch rows, and select).
STEPS = {"digits-mlp": 3, "digits-cnn": 2, "pydoc-transformer": 2, "graph-resnet": 2, "graph-llama": 2,
         "graph-vit-cls": 2}
SEED = 0x1234_5678_9ABC_DEF0
T0 = time.time()


def small_task(name: str) -> Task:
    if name.startswith("graph-"):
        common = {"task.batch_size": 8, "task.total_steps": STEPS[name], "task.checkpoint_interval": 1,
                  "optim.lr": 0.01}
        if name in ("graph-resnet", "graph-vit-cls"):
            sha = parse_task_toml(resolve_task_path("digits-cnn").read_text()).data.sha256.hex()
            if name == "graph-vit-cls":
                return parse_task(get_preset_task("vit", {"d_model": 8, "n_layers": 1, "n_heads": 2, "patch": 4,
                                                          "pool": "cls", **common}, sha))
            return parse_task(get_preset_task("resnet", {"channels": 4, "blocks": 1, "stages": 2, **common}, sha))
        sha = parse_task_toml(resolve_task_path("pydoc-transformer").read_text()).data.sha256.hex()
        return parse_task(get_preset_task("gpt2", {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 8,
                                                   "norm": "rms_norm", "mlp": "swiglu", "dropout": 0.1,
                                                   "positions": "rotary", **common}, sha))
    task = parse_task_toml(resolve_task_path(name).read_text())
    sched = dataclasses.replace(task.schedule, warmup_steps=min(task.schedule.warmup_steps, 1))
    steps = STEPS[name]
    task = dataclasses.replace(task, total_steps=steps, checkpoint_interval=1, schedule=sched)
    m = task.model
    if name == "digits-cnn":  # small enough for 2 cores; the same layers
        task = dataclasses.replace(task, model=dataclasses.replace(m, channels=(4, 8), hidden=32))
    if name == "pydoc-transformer":
        task = dataclasses.replace(task, model=dataclasses.replace(m, d_model=32, d_ff=64, context=16, n_layers=1),
                                   batch_size=8)
    return task


def run_roots(rt: Runtime, steps: int) -> list[str]:
    state = init_state(rt)
    roots = []
    for _ in range(steps):
        train_step(rt, state)
        roots.append(compute_root(state).hex())
    return roots


def grads_of(rt: Runtime, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    state = init_state(rt)
    leaves = {k: v.detach().requires_grad_(True) for k, v in state.params.items()}
    rt.forward(leaves, x, y, 0).backward()
    return {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in leaves.items()}


def hostile_groups(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole batch (every rank builds the same) of 10 rows: columns zero on some rows only,
    subnormals, a huge value in one row, and a column that is zero everywhere."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 6, generator=g) * torch.tensor([1.0, 1e-3, 1e30, 1.0, 1e-40, 0.0])
    x[:5, 0] = 0.0  # zero on the first workers, not on the others
    x[7, 3] = 3e8  # one huge value on one worker
    dy = torch.randn(10, 5, generator=g)
    dy[3:, 1] = 0.0
    return x.float(), dy.float(), torch.tensor(0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--report")
    args = p.parse_args()
    torch.set_num_threads(1)
    host, port = args.store.rsplit(":", 1)
    timeout = datetime.timedelta(seconds=120)
    store = dist.TCPStore(host, int(port), None, False, timeout=timeout)  # type: ignore[attr-defined]
    dist.init_process_group("gloo", store=store, rank=args.rank, world_size=WORLD, timeout=timeout)
    groups = {w: dist.new_group(list(range(w))) for w in (1, 2, 3, 4)}
    rank = args.rank
    report: dict[str, Any] = {"roots": {}, "ops": {}, "naive": {}, "seconds": {"start": time.time() - T0}}
    try:
        for name in STEPS:
            task = small_task(name)
            rt = Runtime.for_task(task, SEED)
            fam: dict[str, list[str]] = {}
            if rank == 0:
                fam["single"] = run_roots(rt, task.total_steps)
            for w in ((1, 2, 3, 4) if name == "digits-mlp" else (1, 2, 4)):  # 3: an uneven split
                if rank < w:
                    lo, hi = rowshard.split_batch(task.batch_size, w)[rank]
                    shard = rowshard.RowShard(TorchCollective(groups[w]), lo, hi, task.batch_size)
                    with rowshard.sharded(shard):
                        fam[str(w)] = run_roots(rt, task.total_steps)
                dist.barrier()
            report["roots"][name] = fam
            report["seconds"][name] = time.time() - T0

            # Negative control: ordinary DDP, float32 all-reduce of per-worker mean gradients.
            x, y = rt.dataset.get_batch(rt.keyed_task, 0)
            single = grads_of(rt, x, y) if rank == 0 else {}
            for w in (2, 4):
                if rank < w:
                    lo, hi = rowshard.split_batch(task.batch_size, w)[rank]
                    local = grads_of(rt, x[lo:hi], y[lo:hi])
                    names = sorted(local)
                    flat = torch.cat([local[k].reshape(-1) for k in names])  # one bucket, as DDP does
                    dist.all_reduce(flat, group=groups[w])
                    flat = flat / w
                    at = 0
                    for k in names:
                        local[k] = flat[at:at + local[k].numel()].view_as(local[k])
                        at += local[k].numel()
                    if rank == 0:
                        report["naive"].setdefault(name, {})[str(w)] = sorted(
                            k for k in local if not torch.equal(local[k], single[k]))
                dist.barrier()

        x, dy, _ = hostile_groups(rank, WORLD)
        for w in (2, 3, 4):
            if rank < w:
                lo, hi = rowshard.split_batch(10, w)[rank]
                shard = rowshard.RowShard(TorchCollective(groups[w]), lo, hi, 10)
                got_sum = rowshard.exact_sum_rows(x[lo:hi], shard)
                got_mm = rowshard.matmul_rows(dy[lo:hi].t(), x[lo:hi], shard)
                if rank == 0:
                    report["ops"][str(w)] = {
                        "sum": torch.equal(got_sum.view(torch.int32), ref.exact_sum(x, 0).view(torch.int32)),
                        "matmul": torch.equal(got_mm.view(torch.int32), ref.matmul(dy.t(), x).view(torch.int32)),
                    }
            dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0 and args.report:
        Path(args.report).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
