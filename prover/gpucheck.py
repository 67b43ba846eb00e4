"""The CPU = GPU conformance check (docs/gpu.md): ``python -m prover.gpucheck [--quick] [--json]``.

On a machine with CUDA (and triton) it runs, and times:

* ``op``: every method of ``gpu_ops.triton_backend.TritonKernels`` compiled for the GPU, on random and
  edge inputs, against the C kernels on the CPU, bit for bit;
* ``step``: a tiny config of every built-in family and preset (prover.conformance.TINY), two steps
  on the GPU vs the CPU fast path: identical state roots, with the device audit (every kernel input
  on the GPU, no tensor made without a device);
* ``segment``: one full segment of each built-in example task, proved with ``--device cuda`` and
  verified on the CPU by replaying it.

Without CUDA it runs the same op and step checks through the Triton interpreter on CPU tensors, and
a one-step proof of a tiny task in place of the examples' segments, and says plainly that no GPU
was measured. ``--quick``: the steps of three configs and no segment. Exit status 0 when every check
passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

EXAMPLES = ("digits-mlp", "digits-cnn", "pydoc-transformer")


@dataclasses.dataclass
class Result:
    kind: str
    name: str
    ok: bool
    seconds: float
    detail: str = ""


def _same_bits(a: Any, b: Any) -> str | None:
    """None if a and b (tensors or tuples of them) are equal bit for bit (NaN == NaN), else why not."""
    if isinstance(a, (tuple, list)):
        if not isinstance(b, (tuple, list)) or len(a) != len(b):
            return f"{len(a)} outputs vs {len(b) if isinstance(b, (tuple, list)) else 'one'}"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _same_bits(x, y)
            if why is not None:
                return f"output {i}: {why}"
        return None
    if a is None or b is None:
        return None if a is None and b is None else "one output is None"
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{tuple(a.shape)}/{a.dtype} vs {tuple(b.shape)}/{b.dtype}"
    if a.dtype == torch.float32:
        same = (a.view(torch.int32) == b.view(torch.int32)) | (torch.isnan(a) & torch.isnan(b))
    else:
        same = a == b
    return None if bool(same.all()) else f"{int((~same).sum())} of {same.numel()} elements differ"


def _op_cases(g: torch.Generator) -> dict[str, Callable[[], tuple[Any, ...]]]:
    """Inputs (on the CPU) of every TritonKernels method, with zeros, subnormals and large values mixed in."""

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        x = torch.randn(*shape, generator=g) * scale
        flat = x.view(-1)
        if flat.numel() >= 8:
            flat[:4] = torch.tensor([0.0, -0.0, 1e-42, -3e-39])
        return x

    logits = r(6, 33, scale=5.0)
    target = torch.randint(0, 33, (6,), generator=g)
    x_ln = r(6, 24)
    gain = r(24)
    bias = r(24)
    return {
        "exact_sum(all)": lambda: ("exact_sum", r(3000), None),
        "exact_sum(last)": lambda: ("exact_sum", r(7, 130, scale=1e3), -1, True),
        "exact_sum(rows)": lambda: ("exact_sum", r(40, 9), 0),
        "matmul": lambda: ("matmul", r(17, 70), r(70, 9, scale=1e-3), r(9)),
        "matmul(batched)": lambda: ("matmul", r(2, 3, 5, 8), r(2, 3, 8, 6)),
        "dropout_mask": lambda: ("dropout_mask", 2**63 + 5, 3, 7, 11, int(0.1 * 2**32), float(1 / 0.9), (5, 13)),
        "conv2d_fwd": lambda: ("conv2d_fwd", r(2, 3, 6, 5), r(4, 3, 3, 3), r(4)),
        "conv2d_bwd": lambda: ("conv2d_bwd", r(2, 4, 6, 5), torch.nn.functional.pad(r(2, 3, 6, 5), (1, 1, 1, 1)),
                               r(4, 3, 3, 3), True),
        "col2im": lambda: ("col2im", r(2 * 4 * 5, 3 * 9), 2, 3, 4, 5, 3),
        "scale_mask": lambda: ("scale_mask", r(2, 2, 7, 7), 1 / math.sqrt(8), False),
        "scale_mask(bwd)": lambda: ("scale_mask", r(2, 2, 7, 7), 1 / math.sqrt(8), True),
        "relu_fwd": lambda: ("relu_fwd", r(1000)),
        "relu_bwd": lambda: ("relu_bwd", r(1000), r(1000)),
        "exp": lambda: ("exp", r(4000, scale=40.0)),
        "log": lambda: ("log", r(4000, scale=1e3).abs()),
        "tanh": lambda: ("tanh", r(4000, scale=5.0)),
        "tanh_bwd": lambda: ("tanh_bwd", r(1000), r(1000).tanh()),
        "gelu_fwd": lambda: ("gelu_fwd", r(4000, scale=4.0)),
        "gelu_bwd": lambda: ("gelu_bwd", r(1000), *_gelu_saved(r(1000, scale=3.0))),
        "softmax_fwd": lambda: ("softmax_fwd", logits),
        "softmax_bwd": lambda: ("softmax_bwd", torch.softmax(logits, -1), r(6, 33)),
        "log_softmax_fwd": lambda: ("log_softmax_fwd", logits),
        "log_softmax_fwd(target)": lambda: ("log_softmax_fwd", logits, target),
        "log_softmax_bwd": lambda: ("log_softmax_bwd", torch.softmax(logits, -1), r(6, 33)),
        "cross_entropy_bwd": lambda: ("cross_entropy_bwd", torch.softmax(logits, -1), target, 0.75),
        "layer_norm_fwd": lambda: ("layer_norm_fwd", x_ln, gain, bias, 1e-5),
        "layer_norm_bwd": lambda: ("layer_norm_bwd", r(6, 24), x_ln, r(6, 1).abs(), gain),
    }


def _gelu_saved(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from gpu_ops import backend

    k = backend.kernels(x)
    assert k is not None
    return x, k.gelu_fwd(x)[1]


def _optimizer_cases(g: torch.Generator) -> dict[str, Callable[[Any], list[torch.Tensor]]]:
    """In-place optimizer steps and clipping: each returns the tensors it wrote, run by the given kernels."""
    from gpu_ops import optim

    shape = (130, 7)
    p0, gr, m0, v0 = (torch.randn(shape, generator=g) for _ in range(4))
    v0 = v0.abs()

    def sgd(k: Any, dev: torch.device) -> list[torch.Tensor]:
        p, buf = p0.clone().to(dev), m0.clone().to(dev)
        k.sgd_step(p, gr.to(dev), buf, *optim._sgd_coefs(0.05, 0.9, 1e-4))
        return [p, buf]

    def adamw(k: Any, dev: torch.device) -> list[torch.Tensor]:
        p, m, v = p0.clone().to(dev), m0.clone().to(dev), v0.clone().to(dev)
        lrwd, coefs = optim._adamw_coefs(3, 1e-3, 0.9, 0.999, 1e-8, 0.01)
        k.adamw_step(p, gr.to(dev), m, v, lrwd, True, coefs)
        return [p, m, v]

    grads0 = [torch.randn(33, 5, generator=g) * 3.0, torch.randn(40, generator=g), torch.zeros(3)]

    def clip(k: Any, dev: torch.device) -> list[torch.Tensor]:
        gs = [x.clone().to(dev) for x in grads0]
        if hasattr(k, "clip_grad_norm"):
            norm = k.clip_grad_norm(gs, 0.5)
        else:  # the C side: optim's own clip on CPU tensors (exact sum by the C kernel)
            norm = optim.clip_grad_norm(gs, 0.5)
        return [norm.reshape(())] + gs

    return {"sgd_step": sgd, "adamw_step": adamw, "clip_grad_norm": clip}  # type: ignore[dict-item]


def run_ops(dev: torch.device) -> list[Result]:
    from gpu_ops import backend
    from gpu_ops.triton_backend import TritonKernels

    c = backend.kernels()
    if not isinstance(c, backend.Kernels):
        return [Result("op", "*", False, 0.0, "the C kernels (the CPU side of the comparison) could not be built")]
    t = TritonKernels()
    g = torch.Generator().manual_seed(20260101)
    out = []
    for name, make in _op_cases(g).items():
        method, *args = make()
        started = time.perf_counter()
        try:
            want = getattr(c, method)(*args)
            dargs = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
            kw = {"device": dev} if method in ("dropout_mask", "philox_u32") else {}
            got = getattr(t, method)(*dargs, **kw)
            why = _same_bits(got, want)
        except Exception as exc:  # report, keep checking the others
            why = f"{type(exc).__name__}: {exc}"
        out.append(Result("op", name, why is None, time.perf_counter() - started, why or ""))
    def philox(k: Any, d: torch.device) -> Any:
        return k.philox_u32(2**64 - 1, 5, 9, 2**31, 1001, **({"device": d} if k is t else {}))

    cases: dict[str, Any] = {**_optimizer_cases(g), "philox_u32": philox}
    for name, fn in cases.items():
        started = time.perf_counter()
        try:
            why = _same_bits(fn(t, dev), fn(c, torch.device("cpu")))
        except Exception as exc:  # report, keep checking the others
            why = f"{type(exc).__name__}: {exc}"
        out.append(Result("op", name, why is None, time.perf_counter() - started, why or ""))
    return out


def run_steps(dev: torch.device, names: list[str]) -> list[Result]:
    from prover.conformance import SEED, TINY, Audit, audit_step, step_roots
    from prover.training import Runtime

    out = []
    for name in names:
        started = time.perf_counter()
        rt = Runtime.for_task(TINY[name](), seed=SEED)
        audit = Audit()
        try:
            got = audit_step(rt, 2, dev, audit)
            want = step_roots(rt, 2)  # the CPU fast path
            problems = ([] if got == want else ["state roots differ from the CPU fast path"]) + audit.wrong_device[:2] \
                + [f"tensor made without a device: {c}" for c in audit.host_tensors[:2]]
        except Exception as exc:
            problems = [f"{type(exc).__name__}: {exc}"]
        out.append(Result("step", name, not problems, time.perf_counter() - started, "; ".join(problems)))
    return out


def _prove_and_verify(name: str, task: Any, device: str, workdir: Path) -> Result:
    from pol.keyfile import generate_keyfile
    from prover.prove import prove
    from verifier.verify import ACCEPT, verify_dir

    from gpu_ops.backend import use_backend

    started = time.perf_counter()
    out = workdir / name
    try:
        # CUDA tensors take Triton by default; on the CPU it is forced (the interpreter)
        with use_backend("triton" if device == "cpu" else "fast"):
            prove(task, out, generate_keyfile().bls_secret_key, device=device)
        prove_s = time.perf_counter() - started
        with use_backend("fast"):
            report = verify_dir(out, segments=None, secret_key=None)  # replayed on the CPU
        ok, detail = report.verdict == ACCEPT, f"prove {prove_s:.1f}s on {device}, verify on cpu: {report.verdict}"
        if not ok:
            detail += f" ({report.reason})"
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Result("segment", name, ok, time.perf_counter() - started, detail)


def run_segments(device: str, on_gpu: bool) -> list[Result]:
    from prover.builtin import resolve_task_path
    from prover.conformance import TINY
    from protocol.task import parse_task_toml

    out = []
    with tempfile.TemporaryDirectory(prefix="pol-gpucheck-") as tmp:
        if on_gpu:
            for name in EXAMPLES:
                task = parse_task_toml(Path(resolve_task_path(name)).read_text())
                one = dataclasses.replace(task, total_steps=task.checkpoint_interval)  # exactly one full segment
                out.append(_prove_and_verify(name, one, device, Path(tmp)))
        else:  # the interpreter: a one-step segment of a tiny task stands in for the examples
            task = dataclasses.replace(TINY["mlp"](), total_steps=1, checkpoint_interval=1)
            out.append(_prove_and_verify("tiny-mlp (interpreter)", task, device, Path(tmp)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prover.gpucheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="ops and three tiny steps only (what CI runs)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    on_gpu = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton is not installed (pip install -e '.[gpu]'): nothing to check", file=sys.stderr)
        return 2
    from prover.conformance import TINY

    dev = torch.device("cuda" if on_gpu else "cpu")
    started = time.perf_counter()
    results = run_ops(dev)
    results += run_steps(dev, ["mlp", "cnn", "transformer"] if args.quick else list(TINY))
    if not args.quick:
        results += run_segments(dev.type, on_gpu)
    total = time.perf_counter() - started
    where = (f"GPU: {torch.cuda.get_device_name(0)}" if on_gpu else
             "no GPU: every kernel ran in the Triton interpreter on the CPU; nothing was measured on a GPU")
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"device": where, "passed": ok, "seconds": round(total, 3), "torch": torch.__version__,
                          "triton": triton.__version__, "results": [dataclasses.asdict(r) for r in results]}, indent=1))
    else:
        print(f"{'kind':8} {'check':26} {'result':6} {'seconds':>8}  detail")
        for r in results:
            print(f"{r.kind:8} {r.name:26} {'PASS' if r.ok else 'FAIL':6} {r.seconds:8.2f}  {r.detail}")
        print(f"\n{sum(r.ok for r in results)}/{len(results)} passed in {total:.1f}s; {where}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
