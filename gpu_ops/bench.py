"""``pol bench``: deterministic training vs the same model in native torch, side by side.

For each task, three fresh worker subprocesses with the same thread count:

* ``pair``: the timing. det and native steps alternate in one process (det, native, det, native,
  ...), so load on a shared machine hits both alike; per side the CPU-time median with min-max
  (and wall medians) of ``steps`` steps after 2 warm-up steps;
* ``det`` and ``native`` below, each alone, for peak RSS (and the verifier replay check):

* ``det``: ``prover.training.train_step`` (the fast gpu_ops path, or the reference under
  ``POL_GPU_OPS_BACKEND=ref``), then a verifier replay of the same segment from the initial
  state with ``verifier.replay.replay_segment`` (the roots must match);
* ``native``: the same parameters, shapes and batches with ``torch.nn.functional`` ops
  (F.linear/F.conv2d/F.layer_norm/F.gelu/scaled_dot_product_attention/F.cross_entropy) and
  ``torch.optim`` (SGD or AdamW, default foreach kernels) for timing; for memory the same loop
  with the optimizer written in plain torch ops, because torch.optim's first step imports
  torch._dynamo (~150 MB that a training loop does not need).

Reported per task: CPU ms/step of both (median, min, max), the ratio of the CPU medians (and of
the wall medians), verifier/prover ratio and peak RSS (``ru_maxrss`` of each worker) with its
ratio. Run: ``python -m gpu_ops.bench`` (``--shapes large``: gpu_ops.bench_shapes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as tf

DEFAULT_TASKS = ("digits-mlp", "digits-cnn", "pydoc-transformer")
WARMUP = 2


def get_runtime(task_name: str) -> Any:
    from prover import training
    from prover.builtin import resolve_task_path
    from protocol.task import parse_task_toml

    return training.Runtime.for_task(parse_task_toml(resolve_task_path(task_name).read_text()))


def _gelu_tanh(t: torch.Tensor) -> torch.Tensor:
    return tf.gelu(t, approximate="tanh")


_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": tf.relu, "tanh": torch.tanh, "gelu": _gelu_tanh}


def _native_forward(rt: Any) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]:
    from protocol.task import CNNConfig, MLPConfig, TransformerConfig

    cfg = rt.task.model
    if isinstance(cfg, MLPConfig):
        n = len(cfg.hidden) + 1
        act = _ACTS[cfg.activation]

        def mlp(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            h = x
            for i in range(n):
                h = tf.linear(h, p[f"fc{i}.weight"], p[f"fc{i}.bias"])
                h = act(h) if i < n - 1 else h
            return tf.cross_entropy(h, y)
        return mlp
    if isinstance(cfg, CNNConfig):
        act = _ACTS[cfg.activation]

        def cnn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            side = int(x.shape[1] ** 0.5)
            h = x.view(x.shape[0], 1, side, side)
            for i in range(len(cfg.channels)):
                h = act(tf.conv2d(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=cfg.kernel // 2))
            h = act(tf.linear(h.reshape(h.shape[0], -1), p["fc0.weight"], p["fc0.bias"]))
            return tf.cross_entropy(tf.linear(h, p["fc1.weight"], p["fc1.bias"]), y)
        return cnn
    assert isinstance(cfg, TransformerConfig)

    def transformer(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, t = x.shape
        d, nh = cfg.d_model, cfg.n_heads
        h = tf.dropout(tf.embedding(x, p["tok_emb"]) + p["pos_emb"][:t], cfg.dropout)
        for i in range(cfg.n_layers):
            pre = f"h{i}."
            a = tf.layer_norm(h, (d,), p[pre + "ln1.weight"], p[pre + "ln1.bias"])
            qkv = tf.linear(a, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"])
            q, k, v = qkv.view(b, t, 3, nh, d // nh).permute(2, 0, 3, 1, 4)
            a = tf.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            h = h + tf.dropout(tf.linear(a, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"]), cfg.dropout)
            f = tf.layer_norm(h, (d,), p[pre + "ln2.weight"], p[pre + "ln2.bias"])
            f = tf.gelu(tf.linear(f, p[pre + "mlp.fc.weight"], p[pre + "mlp.fc.bias"]), approximate="tanh")
            h = h + tf.dropout(tf.linear(f, p[pre + "mlp.proj.weight"], p[pre + "mlp.proj.bias"]), cfg.dropout)
        h = tf.layer_norm(h, (d,), p["ln_f.weight"], p["ln_f.bias"])
        return tf.cross_entropy(tf.linear(h, p["head.weight"]).reshape(-1, p["head.weight"].shape[0]), y.reshape(-1))
    return transformer


def _times(step: Callable[[int], None], steps: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for i in range(WARMUP + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        step(i)
        if i >= WARMUP:
            wall.append((time.perf_counter() - w0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def _handwritten_optimizer(rt: Any, plist: list[torch.Tensor]) -> Callable[[], None]:
    """SGD / AdamW and gradient clipping in plain torch ops: a native loop that does not import
    torch.optim (whose first step imports torch._dynamo, ~150 MB of RSS that is no training state)."""
    o = rt.task.optim
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in plist]
    count = [0]

    def step() -> None:
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in plist]
            if o.grad_clip > 0.0:
                norm = torch.sqrt(sum((g * g).sum() for g in grads))  # type: ignore[arg-type]
                if float(norm) > o.grad_clip:
                    for g in grads:
                        g.mul_(o.grad_clip / (float(norm) + 1e-6))
            count[0] += 1
            for p, g, (m, v) in zip(plist, grads, state):
                if o.name == "sgd":
                    m.mul_(o.momentum).add_(g + o.weight_decay * p)
                    p.sub_(o.lr * m)
                    continue
                p.mul_(1.0 - o.lr * o.weight_decay)
                m.mul_(o.beta1).add_((1.0 - o.beta1) * g)
                v.mul_(o.beta2).add_((1.0 - o.beta2) * g * g)
                bc1, bc2 = 1.0 - o.beta1 ** count[0], 1.0 - o.beta2 ** count[0]
                p.sub_((o.lr / bc1) * m / (torch.sqrt(v / bc2) + o.eps))
    return step


def make_native_step(rt: Any, handwritten: bool = False) -> Callable[[int], None]:
    """One native-torch training step of batch ``i`` (same params, shapes and data as det);
    ``handwritten``: the optimizer in plain torch ops instead of torch.optim (for memory)."""
    from prover import training

    torch.manual_seed(0)
    params = {k: v.clone().requires_grad_(True) for k, v in training.init_state(rt).params.items()}
    fwd = _native_forward(rt)
    o = rt.task.optim
    plist = list(params.values())
    if handwritten:
        update = _handwritten_optimizer(rt, plist)

        def plain_step(i: int) -> None:
            x, y = rt.dataset.get_batch(rt.task, i)
            for p in plist:
                p.grad = None
            loss = fwd(params, x, y)
            loss.backward()  # type: ignore[no-untyped-call]
            update()
            float(loss.detach())
        return plain_step
    opt: torch.optim.Optimizer
    if o.name == "sgd":
        opt = torch.optim.SGD(plist, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(plist, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)

    def native_step(i: int) -> None:
        x, y = rt.dataset.get_batch(rt.task, i)
        opt.zero_grad(set_to_none=True)
        loss = fwd(params, x, y)
        loss.backward()  # type: ignore[no-untyped-call]
        if o.grad_clip > 0.0:
            torch.nn.utils.clip_grad_norm_(plist, o.grad_clip)
        opt.step()
        float(loss.detach())

    return native_step


def make_det_step(rt: Any) -> Callable[[int], None]:
    """One deterministic training step (``prover.training.train_step``) on a fresh state."""
    from prover import training

    state = training.init_state(rt)
    return lambda i: None if training.train_step(rt, state) is None else None


def run_worker(task_name: str, mode: str, steps: int) -> dict[str, Any]:
    """One measurement in this process: mode 'det' or 'native'."""
    from prover import training

    rt = get_runtime(task_name)
    out: dict[str, Any] = {"task": task_name, "mode": mode, "threads": torch.get_num_threads()}
    if mode == "det":
        from gpu_ops import backend
        from verifier.replay import replay_segment

        out["backend"] = backend.get_backend_name()
        state = training.init_state(rt)
        start_leaves = training.get_state_leaves(state)
        wall, cpu = _times(lambda i: None if training.train_step(rt, state) is None else None, steps)
        # Verifier: rebuild the segment's start state from its leaves and replay the same steps.
        seg_rt = dataclasses.replace(rt, task=dataclasses.replace(rt.task, checkpoint_interval=WARMUP + steps))
        replay_state = training.get_state_from_leaves(seg_rt, start_leaves)
        t0 = time.perf_counter()
        result = replay_segment(seg_rt, replay_state, 0, training.compute_root(state))
        out["replay_wall_ms"] = (time.perf_counter() - t0) * 1e3 / (WARMUP + steps)
        out["prover_wall_ms"] = sum(wall) / len(wall)
        out["replay_ok"] = result.ok
    elif mode == "pair":
        from .bench_shapes import interleave, summarize

        state = training.init_state(rt)
        native = make_native_step(rt)
        batch = [0]

        def det_step() -> None:
            training.train_step(rt, state)

        def native_step() -> None:  # the batch det just trained on
            native(batch[0])
            batch[0] += 1
        t = interleave({"det": det_step, "native": native_step}, steps, WARMUP)
        out.update({k: summarize(v) for k, v in t.items()})
        return out
    else:  # "native": the hand-written loop, for memory (torch.optim would import torch._dynamo)
        wall, cpu = _times(make_native_step(rt, handwritten=True), steps)
        out["imports_dynamo"] = "torch._dynamo" in sys.modules
    out["wall_ms"] = statistics.median(wall)
    out["cpu_ms"] = statistics.median(cpu)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _spawn(task_name: str, mode: str, steps: int, threads: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "gpu_ops.bench", "--worker", task_name, mode, str(steps), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {task_name}/{mode} failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_bench(tasks: list[str] | None, steps: int, threads: int | None) -> dict[str, Any]:
    """Benchmark each task (default: the built-in ones) for ``steps`` timed steps (after 2 warm-up
    steps) with ``threads`` torch threads (default 1). Returns JSON-able results."""
    threads = threads or 1
    rows = []
    for name in tasks or list(DEFAULT_TASKS):
        pair = _spawn(name, "pair", steps, threads)  # timing: det and native interleaved, one process
        det = _spawn(name, "det", steps, threads)  # memory + verifier replay
        nat = _spawn(name, "native", steps, threads)  # memory of a hand-written native loop
        dc, nc = pair["det"], pair["native"]
        rows.append({
            "task": name, "backend": det["backend"], "threads": threads, "steps": steps,
            "det_cpu_ms": dc, "native_cpu_ms": nc,
            "det_ms_per_step": pair["det:wall"]["median"], "native_ms_per_step": pair["native:wall"]["median"],
            "ratio": round(pair["det:wall"]["median"] / pair["native:wall"]["median"], 3),
            "det_cpu_ms_per_step": dc["median"], "native_cpu_ms_per_step": nc["median"],
            "cpu_ratio": round(dc["median"] / nc["median"], 3),
            "verifier_ms_per_step": round(det["replay_wall_ms"], 3),
            "prover_ms_per_step": round(det["prover_wall_ms"], 3),
            "verifier_over_prover": round(det["replay_wall_ms"] / det["prover_wall_ms"], 3),
            "replay_roots_match": det["replay_ok"],
            "det_peak_rss_mb": round(det["peak_rss_mb"], 1), "native_peak_rss_mb": round(nat["peak_rss_mb"], 1),
            "rss_ratio": round(det["peak_rss_mb"] / nat["peak_rss_mb"], 3),
            "native_rss_loop_imports_dynamo": nat["imports_dynamo"],
        })
    return {"torch": torch.__version__, "threads": threads, "steps": steps, "tasks": rows}


def format_table(res: dict[str, Any]) -> str:
    head = (f"{'task':<18} {'det CPU ms (min-max)':>24} {'native CPU ms (min-max)':>24} {'cpu r':>6} {'wall r':>6} "
            f"{'verif/prov':>10} {'RSS r':>6}")
    lines = [head]
    for r in res["tasks"]:
        d, n = r["det_cpu_ms"], r["native_cpu_ms"]
        lines.append(f"{r['task']:<18} {d['median']:>9.2f} ({d['min']:.2f}-{d['max']:.2f}) "
                     f"{n['median']:>9.2f} ({n['min']:.2f}-{n['max']:.2f}) {r['cpu_ratio']:>6.2f} {r['ratio']:>6.2f} "
                     f"{r['verifier_over_prover']:>10.2f} {r['rss_ratio']:>6.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gpu_ops.bench")
    ap.add_argument("--worker", nargs=4, metavar=("TASK", "MODE", "STEPS", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--tasks", nargs="*")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--shapes", choices=("builtin", "large"), default="builtin")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        task_name, mode, steps, threads = args.worker
        torch.set_num_threads(int(threads))
        print(json.dumps(run_worker(task_name, mode, int(steps))))
        return
    if args.shapes == "large":
        from .bench_shapes import format_large, run_large

        large = run_large(args.steps, args.threads)
        print(json.dumps(large, indent=2) if args.json else format_large(large))
        return
    res = run_bench(args.tasks, args.steps, args.threads)
    print(json.dumps(res, indent=2) if args.json else format_table(res))


if __name__ == "__main__":
    main()
