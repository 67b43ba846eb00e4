"""One training step of the mlp family (SPEC.md §9–§13), from the text alone.

Proves that the text determines every bit of an MLP step: initialization, batch, forward,
cross-entropy, backward, clipping, learning-rate schedule and SGD/AdamW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import core, ops
from .ops import f32


@dataclass
class MLPState:
    params: dict[str, np.ndarray]
    slots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    step: int = 0

    def tensors(self) -> dict[str, np.ndarray]:
        out = {f"param/{k}": v for k, v in self.params.items()}
        for slot, ts in self.slots.items():
            out.update({f"opt/{slot}/{k}": v for k, v in ts.items()})
        return out

    def root(self) -> bytes:
        return core.state_root(self.tensors(), self.step)


def param_list(hidden: list[int]) -> list[tuple[str, tuple[int, ...], float | None]]:
    """(name, shape, uniform bound or None for a zero bias), sorted by name bytes."""
    widths = [64, *hidden, 10]
    out: list[tuple[str, tuple[int, ...], float | None]] = []
    for i in range(len(widths) - 1):
        out.append((f"fc{i}.weight", (widths[i + 1], widths[i]), 1.0 / math.sqrt(widths[i])))
        out.append((f"fc{i}.bias", (widths[i + 1],), None))
    return sorted(out, key=lambda p: p[0].encode("ascii"))


def init_state(task: dict[str, Any]) -> MLPState:
    params = {}
    for index, (name, shape, bound) in enumerate(param_list(task["model"]["hidden"])):
        n = int(np.prod(shape))
        if bound is None:
            params[name] = np.zeros(shape, dtype=f32)
        else:
            u = core.uniform(task["task"]["seed"], core.INIT, index, 0, n)
            params[name] = ((2.0 * u - 1.0) * bound).astype(f32).reshape(shape)
    o = task["optim"]
    slots: dict[str, dict[str, np.ndarray]] = {}
    if o["name"] == "sgd" and o["momentum"] > 0:
        slots["momentum"] = {k: np.zeros_like(v) for k, v in params.items()}
    if o["name"] == "adamw":
        slots = {s: {k: np.zeros_like(v) for k, v in params.items()} for s in ("exp_avg", "exp_avg_sq")}
    return MLPState(params, slots, 0)


def lr_at(task: dict[str, Any], t: int) -> float:
    lr, s, total = task["optim"]["lr"], task["schedule"], task["task"]["total_steps"]
    w = s["warmup_steps"]
    if t < w:
        return (lr * (t + 1)) / w
    if s["name"] == "linear" and total > w:
        frac = (t - w) / (total - w)
        return lr * (1.0 - frac * (1.0 - s["final_lr_fraction"]))
    return lr


def pow_sq(b: float, t: int) -> float:
    r = 1.0
    for bit in bin(t)[2:]:
        r = r * r
        if bit == "1":
            r = r * b
    return r


def _act(name: str, x: np.ndarray) -> tuple[np.ndarray, Any]:
    if name == "relu":
        return ops.relu(x), x
    if name == "tanh":
        y = ops.tanh(x)
        return y, y
    y, th = ops.gelu(x)
    return y, (x, th)


def _act_back(name: str, dy: np.ndarray, saved: Any) -> np.ndarray:
    if name == "relu":
        return np.where(saved > f32(0.0), dy, f32(0.0)).astype(f32)
    if name == "tanh":
        return (dy * (ops.ONE - saved * saved)).astype(f32)
    x, th = saved
    du = ops.GELU_K * (ops.ONE + ops.GELU_C3 * (x * x))
    d = ops.HALF * (ops.ONE + th) + ((ops.HALF * x) * (ops.ONE - th * th)) * du
    return (dy * d).astype(f32)


def train_step(task: dict[str, Any], state: MLPState, pixels: np.ndarray, labels: np.ndarray
               ) -> tuple[float, list[np.ndarray], dict[str, np.ndarray]]:
    """Advance ``state`` by one step in place; returns (loss, forward outputs in order, grads)."""
    cfg = task["model"]
    t = state.step
    idx = core.image_batch_indices(task["task"]["seed"], t, task["task"]["batch_size"], len(labels))
    x = (pixels[idx].astype(f32) / f32(16.0)).astype(f32)
    y = labels[idx].astype(np.int64)
    n_layers = len(cfg["hidden"]) + 1
    p = state.params
    outputs: list[np.ndarray] = []
    inputs, saved = [], []
    h = x
    for i in range(n_layers):
        inputs.append(h)
        h = (ops.matmul(h, p[f"fc{i}.weight"].T) + p[f"fc{i}.bias"]).astype(f32)
        outputs.append(h)
        if i < n_layers - 1:
            h, s = _act(cfg["activation"], h)
            saved.append(s)
            outputs.append(h)
    # cross-entropy
    z = (h - np.max(h, axis=1, keepdims=True)).astype(f32)
    e = ops.exp(z)
    s_row = ops.exact_sum(e, -1)[:, None]
    logp = (z - ops.log(s_row)).astype(f32)
    rows = len(y)
    picked = logp[np.arange(rows), y]
    loss = -(ops.exact_sum_group(picked) / f32(rows))
    outputs.append(np.array(loss, dtype=f32))
    if not np.isfinite(loss):
        raise ArithmeticError("non-finite loss")
    prob = (e / s_row).astype(f32)
    onehot = np.zeros_like(prob)
    onehot[np.arange(rows), y] = f32(1.0)
    dy = ((prob - onehot) / f32(rows)).astype(f32)
    grads: dict[str, np.ndarray] = {}
    for i in reversed(range(n_layers)):
        w = p[f"fc{i}.weight"]
        grads[f"fc{i}.weight"] = ops.matmul(dy.T, inputs[i])
        grads[f"fc{i}.bias"] = ops.exact_sum(dy, 0)
        if i > 0:
            dy = _act_back(cfg["activation"], ops.matmul(dy, w), saved[i - 1])
    update(task, state, grads)
    return float(loss), outputs, grads


def update(task: dict[str, Any], state: MLPState, grads: dict[str, np.ndarray]) -> None:
    o = task["optim"]
    names = sorted(grads, key=lambda s: s.encode("ascii"))
    g = {k: grads[k].copy() for k in names}
    if o["grad_clip"] > 0.0:
        total = ops.exact_sum_group(np.concatenate([(g[k] * g[k]).reshape(-1) for k in names]))
        norm = ops.sqrt(np.array(total))
        if float(norm) > o["grad_clip"]:
            coef = f32(o["grad_clip"]) / (norm + f32(1e-6))
            g = {k: (v * coef).astype(f32) for k, v in g.items()}
    t = state.step
    lr = lr_at(task, t)
    for k in names:
        p = state.params[k]
        gk = g[k]
        if o["name"] == "sgd":
            if o["weight_decay"] != 0.0:
                gk = (gk + f32(o["weight_decay"]) * p).astype(f32)
            if "momentum" in state.slots:
                buf = (f32(o["momentum"]) * state.slots["momentum"][k] + gk).astype(f32)
                state.slots["momentum"][k] = buf
                gk = buf
            state.params[k] = (p - f32(lr) * gk).astype(f32)
        else:
            n = t + 1
            if o["weight_decay"] != 0.0:
                p = (p - f32(lr * o["weight_decay"]) * p).astype(f32)
            m = (f32(o["beta1"]) * state.slots["exp_avg"][k] + f32(1.0 - o["beta1"]) * gk).astype(f32)
            v = (f32(o["beta2"]) * state.slots["exp_avg_sq"][k] + f32(1.0 - o["beta2"]) * (gk * gk)).astype(f32)
            denom = ops.sqrt(v) / f32(math.sqrt(1.0 - pow_sq(o["beta2"], n))) + f32(o["eps"])
            state.params[k] = (p - f32(lr / (1.0 - pow_sq(o["beta1"], n))) * (m / denom)).astype(f32)
            state.slots["exp_avg"][k], state.slots["exp_avg_sq"][k] = m, v
    state.step = t + 1
