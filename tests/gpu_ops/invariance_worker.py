"""One configuration of the invariance matrix, run in a fresh process by test_invariance.py and
test_negative_controls.py.

The parent chooses the configuration through the environment (ATEN_CPU_CAPABILITY, MKL_CBWR,
POL_GPU_OPS_BACKEND are read by torch/MKL/gpu_ops at import) and ``--threads`` (set before any
op runs). The worker prints one JSON object on stdout:

* ``--mode pol``: state roots of every built-in task after a few training steps, hashes of
  single-op outputs (forward and backward) and the list of batch-split mismatches (a row or
  sequence computed alone vs inside its batch).
* ``--mode native``: hashes of the same kind of computations in stock torch (nn.Linear,
  F.cross_entropy, torch.optim.SGD(momentum)/AdamW, torch.sum over 1M elements, softmax,
  addcmul), the negative controls proving the harness can see a difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("digits-mlp", "digits-cnn", "pydoc-transformer")


def _digest(*ts: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


class _Gen:
    """Configuration-independent test inputs.

    torch.randn is not usable here: its vectorised Box-Muller gives different bits under
    different ATEN_CPU_CAPABILITY settings, which would make every configuration "differ"
    (and the negative controls pass for the wrong reason). Values are k * 2**-22 for integers k
    from numpy's PCG64 (bit-exact everywhere), roughly uniform in [-2, 2) times ``scale``.
    """

    def __init__(self, seed: int) -> None:
        import numpy as np

        self.rng = np.random.Generator(np.random.PCG64(seed))

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        import numpy as np

        k = self.rng.integers(-2**23, 2**23, size=shape, dtype=np.int64)
        return torch.from_numpy((k.astype(np.float32) * np.float32(2.0**-22 * scale)).astype(np.float32))

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.integers(0, high, size=shape, dtype="int64"))


def _gen(seed: int) -> _Gen:
    return _Gen(seed)


def _load_task(name: str):  # type: ignore[no-untyped-def]
    from protocol.task import parse_task_toml

    return parse_task_toml((ROOT / "examples" / f"{name}.toml").read_text())


def _pol_roots(steps: dict[str, int]) -> dict[str, str]:
    from prover import training

    roots = {}
    for name in TASKS:
        rt = training.Runtime.for_task(_load_task(name))
        state = training.init_state(rt)
        for _ in range(steps[name]):
            training.train_step(rt, state)
        roots[name] = training.compute_root(state).hex()
    return roots


def _pol_ops() -> dict[str, str]:
    """Hashes of single gpu_ops outputs and input gradients on fixed inputs."""
    from gpu_ops import functional as F

    g = _gen(5)
    out: dict[str, str] = {}

    def fwd_bwd(name: str, fn, *xs: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
        leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in xs]
        y = fn(*leaves)
        y.backward(_gen(6).randn(*y.shape))
        out[name] = _digest(y, *[x.grad for x in leaves if x.grad is not None])

    fwd_bwd("linear", F.linear, g.randn(128, 784), g.randn(256, 784),
            g.randn(256))
    fwd_bwd("matmul-batched", F.matmul, g.randn(4, 64, 16), g.randn(4, 16, 64))
    fwd_bwd("softmax", F.softmax, g.randn(256, 1000))
    fwd_bwd("log_softmax", F.log_softmax, g.randn(256, 1000))
    fwd_bwd("layer_norm", F.layer_norm, g.randn(256, 512), g.randn(512),
            g.randn(512))
    fwd_bwd("gelu", F.gelu, g.randn(1 << 16, scale=4.0))
    fwd_bwd("tanh", F.tanh, g.randn(1 << 16, scale=4.0))
    fwd_bwd("conv2d", F.conv2d, g.randn(16, 3, 8, 8), g.randn(8, 3, 3, 3),
            g.randn(8))
    logits = g.randn(256, 1000).requires_grad_(True)
    loss = F.cross_entropy(logits, g.randint(1000, 256))
    loss.backward()
    out["cross_entropy"] = _digest(loss, logits.grad)  # type: ignore[arg-type]
    from gpu_ops import ref

    out["exact_sum-1M"] = _digest(ref.exact_sum(g.randn(1 << 20)))
    return out


def _batch_split() -> list[str]:
    """Forward logits of rows computed alone must equal the same rows inside the batch."""
    import dataclasses

    from gpu_ops import nn as gnn
    from prover import training

    bad: list[str] = []
    captured: list[torch.Tensor] = []
    original = gnn.F.cross_entropy

    def capture(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        captured.append(logits.detach().clone())
        return original(logits, target)

    gnn.F.cross_entropy = capture  # type: ignore[assignment]
    try:
        for name in TASKS:
            task = _load_task(name)
            if name == "pydoc-transformer":  # dropout masks are drawn per batch shape: switch them off
                task = dataclasses.replace(task, model=dataclasses.replace(task.model, dropout=0.0))
            rt = training.Runtime.for_task(task)
            state = training.init_state(rt)
            x, y = rt.dataset.get_batch(task, 0)
            with torch.no_grad():
                captured.clear()
                rt.forward(state.params, x, y, 0)
                whole = captured[-1].reshape(x.shape[0], -1)
                rows = range(x.shape[0]) if x.shape[0] <= 64 and name != "pydoc-transformer" else (0, 7, x.shape[0] - 1)
                for i in rows:
                    captured.clear()
                    rt.forward(state.params, x[i:i + 1], y[i:i + 1], 0)
                    alone = captured[-1].reshape(1, -1)
                    if not torch.equal(alone.view(torch.int32), whole[i:i + 1].view(torch.int32)):
                        bad.append(f"{name} row {i}")
    finally:
        gnn.F.cross_entropy = original  # type: ignore[assignment]
    return bad


def _native(steps: int) -> dict[str, str]:
    """Stock torch: the computations measured to be configuration-dependent (docs/gpu.md, negative controls)."""
    import torch.nn.functional as tf

    g = _gen(1)
    out: dict[str, str] = {}
    big = g.randn(1 << 20)
    out["sum-1M"] = _digest(big.sum())
    sm = g.randn(256, 1000)
    out["softmax"] = _digest(torch.softmax(sm, -1), torch.log_softmax(sm, -1))
    a, b, c = (g.randn(1 << 20) for _ in range(3))
    out["addcmul"] = _digest(torch.addcmul(c, a, b))
    x = g.randn(128, 784)
    y = g.randint(10, 128)
    for opt_name in ("sgd", "adamw"):
        model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        init = _gen(2)
        with torch.no_grad():  # same initial bits everywhere (torch's own init RNG is not part of the test)
            for prm in model.parameters():
                prm.copy_(init.randn(*prm.shape, scale=0.03))
        opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd"
               else torch.optim.AdamW(model.parameters(), lr=1e-3))
        for _ in range(steps):
            opt.zero_grad()
            tf.cross_entropy(model(x), y).backward()
            opt.step()
        out[f"mlp-{opt_name}"] = _digest(*model.parameters())
        if opt_name == "sgd":
            with torch.no_grad():
                whole = model(x)
                alone = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])
            out["batch-split-differs"] = str(not torch.equal(whole, alone))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("pol", "native"), required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--transformer-steps", type=int, default=2)
    ap.add_argument("--batch-split", action="store_true")
    args = ap.parse_args()
    if os.environ.get("POL_TEST_WORKER_SELF_KILL") == "1":
        # Lets the parent's test check that a worker dying by a signal is reported as such.
        os.kill(os.getpid(), signal.SIGKILL)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    result: dict[str, object] = {
        "threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
    if args.mode == "pol":
        try:
            from gpu_ops import backend

            result["backend"] = backend.get_backend_name()
        except ImportError:
            result["backend"] = "ref"
        steps = {"digits-mlp": args.steps, "digits-cnn": args.steps, "pydoc-transformer": args.transformer_steps}
        result["roots"] = _pol_roots(steps)
        result["ops"] = _pol_ops()
        result["batch_split_mismatches"] = _batch_split() if args.batch_split else None
    else:
        result["native"] = _native(args.steps)
    print(json.dumps(result))



# --------------------------------------------------------------------------- parent side

ALL_CONFIGS: dict[str, tuple[int, dict[str, str]]] = {
    "threads=2": (2, {}),  # the baseline every other configuration is compared with
    "threads=1": (1, {}),
    "threads=4": (4, {}),
    "aten=default": (2, {"ATEN_CPU_CAPABILITY": "default"}),
    "aten=avx2": (2, {"ATEN_CPU_CAPABILITY": "avx2"}),
    "aten=avx512": (2, {"ATEN_CPU_CAPABILITY": "avx512"}),
    "mkl_cbwr=COMPATIBLE": (2, {"MKL_CBWR": "COMPATIBLE"}),
}
# CPU flags each forced torch capability needs: forcing one the CPU lacks kills the worker with
# SIGILL (seen with ATEN_CPU_CAPABILITY=avx512 on an AVX2-only CPU), which proves nothing.
_NEEDS_FLAGS = {"aten=avx2": ("avx2", "fma"), "aten=avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}


def get_cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def compute_unsupported_configs(flags: frozenset[str]) -> dict[str, str]:
    """Configurations this CPU cannot run, with the reason (the missing instruction sets)."""
    out = {}
    for name, needs in _NEEDS_FLAGS.items():
        missing = [f for f in needs if f not in flags]
        if missing:
            out[name] = f"{name} needs CPU flags {', '.join(missing)}, which this CPU lacks"
    return out


UNSUPPORTED_CONFIGS = compute_unsupported_configs(get_cpu_flags())
CONFIGS = {k: v for k, v in ALL_CONFIGS.items() if k not in UNSUPPORTED_CONFIGS}
BASELINE = "threads=2"
_CLEARED = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "ONEDNN_MAX_CPU_ISA", "POL_GPU_OPS_BACKEND")


def run_config(mode: str, threads: int, env_extra: dict[str, str], args: list[str],
               timeout: float = 300) -> dict[str, object]:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--threads", str(threads),
                           *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        how = f"exit status {proc.returncode}"
        if proc.returncode < 0:
            how = f"killed by signal {signal.Signals(-proc.returncode).name}"
        raise RuntimeError(f"worker {mode} {threads} {env_extra} failed ({how}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_matrix(mode: str, plan: list[tuple[str | None, str, list[str]]],
               workers: int = 3) -> dict[tuple[str | None, str], dict[str, object]]:
    """Every (backend, configuration, worker args) of ``plan`` in its own subprocess; the first one
    alone (it may build the C kernels), the rest ``workers`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for backend, name, args in plan:
        threads, env = CONFIGS[name]
        extra = dict(env)
        if backend is not None:
            extra["POL_GPU_OPS_BACKEND"] = backend
        jobs.append(((backend, name), threads, extra, args))
    first, rest = jobs[0], jobs[1:]
    results = {first[0]: run_config(mode, *first[1:])}
    with ThreadPoolExecutor(workers) as pool:
        futures = {key: pool.submit(run_config, mode, threads, extra, args) for key, threads, extra, args in rest}
        results.update({key: f.result() for key, f in futures.items()})
    return results


if __name__ == "__main__":
    main()
