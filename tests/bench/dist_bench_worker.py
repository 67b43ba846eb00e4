"""A persistent data-parallel worker for tests/bench/test_bench_distributed.py.

Joins a gloo group of ``--world`` workers, builds the built-in task's runtime and initial state,
then takes one sharded training step per ``step`` line on stdin and answers ``ok`` on stdout
(rank 0 adds the state root), until ``quit``. The benchmark times the round trip over all
workers: one whole data-parallel step including its collectives.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys

import torch
import torch.distributed as dist

from gpu_ops import rowshard
from prover.builtin import resolve_task_path
from prover.distributed import TorchCollective
from prover.training import Runtime, compute_root, init_state, train_step
from protocol.task import Task, parse_task_toml

SEED = 42


def bench_task(name: str) -> Task:
    task = parse_task_toml(resolve_task_path(name).read_text())
    return dataclasses.replace(task, total_steps=100000)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    host, port = args.store.rsplit(":", 1)
    timeout = datetime.timedelta(seconds=120)
    store = dist.TCPStore(host, int(port), None, False, timeout=timeout)  # type: ignore[attr-defined]
    dist.init_process_group("gloo", store=store, rank=args.rank, world_size=args.world, timeout=timeout)
    task = bench_task(args.task)
    rt = Runtime.for_task(task, SEED)
    state = init_state(rt)
    lo, hi = rowshard.split_batch(task.batch_size, args.world)[args.rank]
    shard = rowshard.RowShard(TorchCollective(), lo, hi, task.batch_size)
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() != "step":
                break
            with rowshard.sharded(shard):
                train_step(rt, state)
            print("ok " + (compute_root(state).hex() if args.rank == 0 else ""), flush=True)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
