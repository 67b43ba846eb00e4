"""``pol bench --shapes large``: deterministic vs native steps on shapes a user would train.

Each case runs, in this one process and interleaved step by step (A B C A B C ...), so that load
on a shared machine hits every side alike:

* ``det``: the step with ``gpu_ops`` (exact-slice matmuls, deterministic elementwise ops and
  optimizer), then its state root (``protocol.state``, hashed from the tensors' memory);
* ``native``: the same model, shapes and data in ``torch.nn.functional`` + ``torch.optim``
  (float32, SGEMM);
* ``floor``: the native step in float64 (DGEMM): the exactness floor on a CPU, since the exact
  matmul's integer slices need float64 products.

Reported per case: CPU-time medians with min-max (ms), det/native, det/floor (the floor ratio)
and the share of the det step spent hashing the state root. ``matmul-2048`` compares the exact
matmul alone with SGEMM (native) and DGEMM (floor).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tf

from . import functional as F
from . import optim

Step = Callable[[], None]
LR = 0.01


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _labels(n: int, classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def _params(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        fan_in = shape[1] if len(shape) == 2 else (math.prod(shape[1:]) if len(shape) == 4 else 1)
        if name.endswith(".g"):
            out[name] = torch.ones(shape)
        else:
            out[name] = _randn(*shape, seed=100 + i, scale=1.0 / math.sqrt(max(fan_in, 1)))
    return out


class _Case:
    """Params, det / native / floor forward functions and the optimizer of one benchmark case."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], opt: str,
                 det_fwd: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                 nat_fwd: Callable[[dict[str, torch.Tensor], torch.dtype], torch.Tensor]) -> None:
        self.params = _params(shapes)
        self.opt = opt
        self.det_fwd, self.nat_fwd = det_fwd, nat_fwd
        self.slots = {s: {k: torch.zeros_like(v) for k, v in self.params.items()}
                      for s in (("exp_avg", "exp_avg_sq") if opt == "adamw" else ("momentum",))}
        self.step = 0

    def det_step(self) -> None:
        names = sorted(self.params)
        leaves = {k: self.params[k].detach().requires_grad_(True) for k in names}
        loss = self.det_fwd(leaves)
        loss.backward()  # type: ignore[no-untyped-call]
        self.step += 1
        with torch.no_grad():
            for k in names:
                g = leaves[k].grad
                assert g is not None
                if self.opt == "sgd":
                    optim.sgd_step(self.params[k], g, self.slots["momentum"][k], LR, 0.9, 0.0)
                else:
                    optim.adamw_step(self.params[k], g, self.slots["exp_avg"][k], self.slots["exp_avg_sq"][k],
                                     self.step, LR, 0.9, 0.999, 1e-8, 0.01)

    def det_root(self) -> bytes:
        from protocol.state import STEP_TENSOR, compute_state_root_from_arrays

        arrays = {STEP_TENSOR: np.array(self.step, dtype="<i8")}
        arrays.update({f"param/{k}": v.numpy() for k, v in self.params.items()})
        for s, ts in self.slots.items():
            arrays.update({f"opt/{s}/{k}": v.numpy() for k, v in ts.items()})
        return compute_state_root_from_arrays(arrays)

    def hash_root(self) -> None:
        self.det_root()

    def native(self, dtype: torch.dtype) -> Step:
        params = [v.detach().to(dtype, copy=True).requires_grad_(True) for v in self.params.values()]
        named = dict(zip(self.params, params))
        opt: torch.optim.Optimizer
        if self.opt == "sgd":
            opt = torch.optim.SGD(params, lr=LR, momentum=0.9)
        else:
            opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            self.nat_fwd(named, dtype).backward()  # type: ignore[no-untyped-call]
            opt.step()
        return step


def mlp_case() -> _Case:
    """MLP 784-1024-1024-10, batch 128, SGD with momentum."""
    x, y = _randn(128, 784, seed=1), _labels(128, 10, 2)
    shapes = {"fc0.w": (1024, 784), "fc0.b": (1024,), "fc1.w": (1024, 1024), "fc1.b": (1024,),
              "fc2.w": (10, 1024), "fc2.b": (10,)}

    def det(p: dict[str, torch.Tensor]) -> torch.Tensor:
        h = F.relu(F.linear(x, p["fc0.w"], p["fc0.b"]))
        h = F.relu(F.linear(h, p["fc1.w"], p["fc1.b"]))
        return F.cross_entropy(F.linear(h, p["fc2.w"], p["fc2.b"]), y)

    def nat(p: dict[str, torch.Tensor], dt: torch.dtype) -> torch.Tensor:
        h = tf.relu(tf.linear(x.to(dt), p["fc0.w"], p["fc0.b"]))
        h = tf.relu(tf.linear(h, p["fc1.w"], p["fc1.b"]))
        return tf.cross_entropy(tf.linear(h, p["fc2.w"], p["fc2.b"]), y)
    return _Case(shapes, "sgd", det, nat)


def transformer_case() -> _Case:
    """One pre-LN transformer block, d=256, 4 heads, seq 128, batch 16, AdamW; loss: cross-entropy
    of the block's output read as 256 logits per token."""
    b, t, d, nh = 16, 128, 256, 4
    x, y = _randn(b, t, d, seed=3), _labels(b * t, d, 4)
    shapes = {"ln1.g": (d,), "ln1.b": (d,), "qkv.w": (3 * d, d), "qkv.b": (3 * d,), "proj.w": (d, d),
              "proj.b": (d,), "ln2.g": (d,), "ln2.b": (d,), "fc.w": (4 * d, d), "fc.b": (4 * d,),
              "out.w": (d, 4 * d), "out.b": (d,)}

    def det(p: dict[str, torch.Tensor]) -> torch.Tensor:
        a = F.causal_attention(F.linear(F.layer_norm(x, p["ln1.g"], p["ln1.b"]), p["qkv.w"], p["qkv.b"]), nh)
        h = x + F.linear(a, p["proj.w"], p["proj.b"])
        f = F.gelu(F.linear(F.layer_norm(h, p["ln2.g"], p["ln2.b"]), p["fc.w"], p["fc.b"]))
        h = h + F.linear(f, p["out.w"], p["out.b"])
        return F.cross_entropy(h.reshape(b * t, d), y)

    def nat(p: dict[str, torch.Tensor], dt: torch.dtype) -> torch.Tensor:
        xx = x.to(dt)
        qkv = tf.linear(tf.layer_norm(xx, (d,), p["ln1.g"], p["ln1.b"]), p["qkv.w"], p["qkv.b"])
        q, k, v = qkv.view(b, t, 3, nh, d // nh).permute(2, 0, 3, 1, 4)
        a = tf.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        h = xx + tf.linear(a, p["proj.w"], p["proj.b"])
        f = tf.gelu(tf.linear(tf.layer_norm(h, (d,), p["ln2.g"], p["ln2.b"]), p["fc.w"], p["fc.b"]),
                    approximate="tanh")
        h = h + tf.linear(f, p["out.w"], p["out.b"])
        return tf.cross_entropy(h.reshape(b * t, d), y)
    return _Case(shapes, "adamw", det, nat)


def conv_case() -> _Case:
    """Conv 32 -> 64 channels, 3x3, on 32x32, batch 32 (ReLU, then a 10-way linear head), SGD."""
    x, y = _randn(32, 32, 32, 32, seed=5), _labels(32, 10, 6)
    shapes = {"conv.w": (64, 32, 3, 3), "conv.b": (64,), "fc.w": (10, 64 * 32 * 32), "fc.b": (10,)}

    def det(p: dict[str, torch.Tensor]) -> torch.Tensor:
        h = F.relu(F.conv2d(x, p["conv.w"], p["conv.b"]))
        return F.cross_entropy(F.linear(h.reshape(32, -1), p["fc.w"], p["fc.b"]), y)

    def nat(p: dict[str, torch.Tensor], dt: torch.dtype) -> torch.Tensor:
        h = tf.relu(tf.conv2d(x.to(dt), p["conv.w"], p["conv.b"], padding=1))
        return tf.cross_entropy(tf.linear(h.reshape(32, -1), p["fc.w"], p["fc.b"]), y)
    return _Case(shapes, "sgd", det, nat)


CASES: dict[str, Callable[[], _Case]] = {"mlp-784-1024-1024-10": mlp_case, "transformer-block-d256": transformer_case,
                                         "conv-32to64-3x3-32x32": conv_case}


def conv_layer_sides(n: int = 32, c: int = 32, hw: int = 32, o: int = 64, k: int = 3) -> dict[str, Step]:
    """One conv layer's forward + backward (input gradient included) against the GEMM floor of
    the same FLOPs: ``det`` (gpu_ops), ``native`` (fp32 torch conv), ``floor`` (one square DGEMM
    with the FLOPs of the conv's three GEMMs) and ``floor_im2col`` (the three DGEMMs on the
    im2col shapes, operands prepared beforehand: no im2col, no layout changes)."""
    x, w, b = _randn(n, c, hw, hw, seed=11), _randn(o, c, k, k, seed=12, scale=0.1), _randn(o, seed=13)
    dy = _randn(n, o, hw, hw, seed=14)

    def det() -> None:
        xx, ww, bb = (t.clone().requires_grad_(True) for t in (x, w, b))
        F.conv2d(xx, ww, bb).backward(dy)  # type: ignore[no-untyped-call]

    def native() -> None:
        xx, ww, bb = (t.clone().requires_grad_(True) for t in (x, w, b))
        tf.conv2d(xx, ww, bb, padding=k // 2).backward(dy)  # type: ignore[no-untyped-call]

    rows, ckk = n * hw * hw, c * k * k
    cols = tf.unfold(x.double(), k, padding=k // 2).transpose(1, 2).reshape(rows, ckk).contiguous()
    w2 = w.double().reshape(o, ckk).contiguous()
    w2t, dy2 = w2.t().contiguous(), dy.double().permute(0, 2, 3, 1).reshape(rows, o).contiguous()
    dy2t = dy2.t().contiguous()
    side = round((3 * rows * ckk * o) ** (1 / 3))  # 2 side^3 = the three GEMMs' 3 * 2 rows ckk o FLOPs
    sq_a, sq_b = _randn(side, side, seed=15, dtype=torch.float64), _randn(side, side, seed=16, dtype=torch.float64)

    def floor_im2col() -> None:
        torch.mm(cols, w2t)
        torch.mm(dy2t, cols)
        torch.mm(dy2, w2)
    return {"det": det, "native": native, "floor": lambda: None if torch.mm(sq_a, sq_b) is None else None,
            "floor_im2col": floor_im2col}


def conv_part_sides(n: int = 32, c: int = 32, hw: int = 32, o: int = 64, k: int = 3) -> dict[str, Step]:
    """The conv layer's three GEMM-shaped parts on the C kernels, each against the square DGEMM of
    one part's FLOPs (``floor``): ``fwd`` (y and the padded input), ``dwdb`` (weight and bias
    gradients) and ``dx`` (the input gradient with its col2im fold). Empty without the kernels."""
    from . import backend

    x, w, b = _randn(n, c, hw, hw, seed=11), _randn(o, c, k, k, seed=12, scale=0.1), _randn(o, seed=13)
    dy = _randn(n, o, hw, hw, seed=14)
    kern = backend.kernels(x, w, b)
    if kern is None:
        return {}
    _, xp = kern.conv2d_fwd(x, w, b)
    side = round((n * hw * hw * c * k * k * o) ** (1 / 3))  # 2 side^3 = one part's 2 rows ckk o FLOPs
    sq_a, sq_b = _randn(side, side, seed=15, dtype=torch.float64), _randn(side, side, seed=16, dtype=torch.float64)
    return {"fwd": lambda: None if kern.conv2d_fwd(x, w, b) is None else None,
            "dwdb": lambda: None if kern.conv2d_bwd(dy, xp, w, False) is None else None,
            "dx": lambda: None if kern.conv2d_bwd_dx(dy, w) is None else None,
            "floor": lambda: None if torch.mm(sq_a, sq_b) is None else None}


def interleave(sides: dict[str, Step], steps: int, warmup: int = 2) -> dict[str, list[float]]:
    """CPU ms (key ``side``) and wall ms (key ``side:wall``) of each side per round; the sides
    alternate within every round (A B C A B C ...)."""
    out: dict[str, list[float]] = {k: [] for name in sides for k in (name, name + ":wall")}
    for i in range(warmup + steps):
        for name, fn in sides.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            if i >= warmup:
                out[name].append((time.process_time() - c0) * 1e3)
                out[name + ":wall"].append((time.perf_counter() - w0) * 1e3)
    return out


def summarize(ms: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(ms), 3), "min": round(min(ms), 3), "max": round(max(ms), 3)}


def _row(name: str, t: dict[str, list[float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"case": name, **{k: summarize(v) for k, v in t.items()}}
    row["det_over_native_wall"] = round(statistics.median(t["det:wall"]) / statistics.median(t["native:wall"]), 3)
    det = statistics.median(t["det"])
    row["det_over_native"] = round(det / statistics.median(t["native"]), 3)
    row["floor_ratio"] = round(det / statistics.median(t["floor"]), 3)
    if "root" in t:
        root = statistics.median(t["root"])
        row["root_share"] = round(root / (det + root), 3)
    return row


def run_large(steps: int = 10, threads: int | None = None, n: int = 2048, cases: list[str] | None = None
              ) -> dict[str, Any]:
    """The large-shape table: one row per case (default: all of ``CASES`` and ``conv-layer``, one
    conv layer's forward + backward vs the DGEMM floor of its FLOPs), plus the exact matmul (n x n)
    vs SGEMM / DGEMM."""
    torch.set_num_threads(threads or 1)
    rows = []
    for name in [c for c in cases if c in CASES] if cases is not None else list(CASES):
        make = CASES[name]
        case = make()
        t = interleave({"det": case.det_step, "root": case.hash_root,
                        "native": case.native(torch.float32), "floor": case.native(torch.float64)}, steps)
        rows.append(_row(name, t))
    if cases is None or "conv-layer" in cases:
        t = interleave(conv_layer_sides(), steps)
        row = _row("conv-layer-fwd+bwd", t)
        row["floor_im2col_ratio"] = round(statistics.median(t["det"]) / statistics.median(t["floor_im2col"]), 3)
        rows.append(row)
    a, b = _randn(n, n, seed=7), _randn(n, n, seed=8)
    a64, b64 = a.double(), b.double()
    t = interleave({"det": lambda: None if F.matmul(a, b) is None else None,
                    "native": lambda: None if torch.mm(a, b) is None else None,
                    "floor": lambda: None if torch.mm(a64, b64) is None else None}, max(3, steps // 2), warmup=1)
    rows.append(_row(f"matmul-{n}", t))
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps, "clock": "process CPU time",
            "cases": rows}


def format_large(res: dict[str, Any]) -> str:
    lines = [f"{'case':<24} {'det ms (min-max)':>24} {'native ms':>10} {'floor ms':>10} {'det/nat':>8} "
             f"{'floor r':>8} {'root':>6}"]
    for r in res["cases"]:
        det = r["det"]
        share = f"{100 * r['root_share']:.0f}%" if "root_share" in r else "-"
        lines.append(f"{r['case']:<24} {det['median']:>9.1f} ({det['min']:.1f}-{det['max']:.1f}) "
                     f"{r['native']['median']:>10.1f} {r['floor']['median']:>10.1f} {r['det_over_native']:>8.2f} "
                     f"{r['floor_ratio']:>8.2f} {share:>6}")
    return "\n".join(lines)
