"""One training step of the cnn family (SPEC.md §10.5 conv2d, §11), from the text alone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import core, ops
from .mlp import MLPState, _act, _act_back, update
from .ops import f32


def param_list(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...], float | None]]:
    chans, k, hidden = [1, *cfg["channels"]], cfg["kernel"], cfg["hidden"]
    out: list[tuple[str, tuple[int, ...], float | None]] = []
    for i in range(len(chans) - 1):
        out.append((f"conv{i}.weight", (chans[i + 1], chans[i], k, k), 1 / math.sqrt(chans[i] * k * k)))
        out.append((f"conv{i}.bias", (chans[i + 1],), None))
    flat = chans[-1] * 64
    out += [("fc0.weight", (hidden, flat), 1 / math.sqrt(flat)), ("fc0.bias", (hidden,), None),
            ("fc1.weight", (10, hidden), 1 / math.sqrt(hidden)), ("fc1.bias", (10,), None)]
    return sorted(out, key=lambda p: p[0].encode("ascii"))


def init_state(task: dict[str, Any]) -> MLPState:
    params = {}
    for index, (name, shape, bound) in enumerate(param_list(task["model"])):
        n = int(np.prod(shape))
        if bound is None:
            params[name] = np.zeros(shape, dtype=f32)
        else:
            u = core.uniform(task["task"]["seed"], core.INIT, index, 0, n)
            params[name] = ((2.0 * u - 1.0) * bound).astype(f32).reshape(shape)
    slots: dict[str, dict[str, np.ndarray]] = {}
    o = task["optim"]
    if o["name"] == "adamw":
        slots = {s: {k: np.zeros_like(v) for k, v in params.items()} for s in ("exp_avg", "exp_avg_sq")}
    elif o["momentum"] > 0:
        slots = {"momentum": {k: np.zeros_like(v) for k, v in params.items()}}
    return MLPState(params, slots, 0)


def im2col(x: np.ndarray, k: int) -> np.ndarray:
    n, c, h, w = x.shape
    pad = k // 2
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=f32)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    cols = np.zeros((n, h, w, c, k, k), dtype=f32)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, :, i, j] = xp[:, :, i:i + h, j:j + w].transpose(0, 2, 3, 1)
    return cols.reshape(n * h * w, c * k * k)


def col2im(dcols: np.ndarray, n: int, c: int, h: int, w: int, k: int) -> np.ndarray:
    pad = k // 2
    d6 = dcols.reshape(n, h, w, c, k, k)
    buf = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=f32)
    for i in range(k):
        for j in range(k):
            buf[:, :, i:i + h, j:j + w] = (buf[:, :, i:i + h, j:j + w] + d6[:, :, :, :, i, j].transpose(0, 3, 1, 2))
    return buf[:, :, pad:pad + h, pad:pad + w]


def train_step(task: dict[str, Any], state: MLPState, pixels: np.ndarray, labels: np.ndarray
               ) -> tuple[float, list[np.ndarray], dict[str, np.ndarray]]:
    cfg, t, P = task["model"], state.step, state.params
    k, act = cfg["kernel"], cfg["activation"]
    idx = core.image_batch_indices(task["task"]["seed"], t, task["task"]["batch_size"], len(labels))
    bsz = len(idx)
    h = (pixels[idx].astype(f32) / f32(16.0)).astype(f32).reshape(bsz, 1, 8, 8)
    y = labels[idx].astype(np.int64)
    outs: list[np.ndarray] = []
    convs = []
    for i in range(len(cfg["channels"])):
        w = P[f"conv{i}.weight"]
        cols = im2col(h, k)
        out = (ops.matmul(cols, w.reshape(w.shape[0], -1).T) + P[f"conv{i}.bias"]).astype(f32)
        out = out.reshape(bsz, 8, 8, w.shape[0]).transpose(0, 3, 1, 2)
        outs.append(out)
        h, saved = _act(act, out)
        outs.append(h)
        convs.append((cols, saved, h.shape[1]))
    flat = np.ascontiguousarray(h).reshape(bsz, -1)
    z0 = (ops.matmul(flat, P["fc0.weight"].T) + P["fc0.bias"]).astype(f32)
    outs.append(z0)
    a0, s0 = _act(act, z0)
    outs.append(a0)
    logits = (ops.matmul(a0, P["fc1.weight"].T) + P["fc1.bias"]).astype(f32)
    outs.append(logits)
    z = (logits - np.max(logits, axis=1, keepdims=True)).astype(f32)
    e = ops.exp(z)
    s = ops.exact_sum(e, -1)[:, None]
    logp = (z - ops.log(s)).astype(f32)
    loss = -(ops.exact_sum_group(logp[np.arange(bsz), y]) / f32(bsz))
    outs.append(np.array(loss, dtype=f32))
    onehot = np.zeros_like(logits)
    onehot[np.arange(bsz), y] = f32(1.0)
    dy = (((e / s).astype(f32) - onehot) / f32(bsz)).astype(f32)
    g: dict[str, np.ndarray] = {"fc1.weight": ops.matmul(dy.T, a0), "fc1.bias": ops.exact_sum(dy, 0)}
    dy = _act_back(act, ops.matmul(dy, P["fc1.weight"]), s0)
    g["fc0.weight"], g["fc0.bias"] = ops.matmul(dy.T, flat), ops.exact_sum(dy, 0)
    dh = ops.matmul(dy, P["fc0.weight"]).reshape(h.shape)
    for i in reversed(range(len(cfg["channels"]))):
        cols, saved, o = convs[i]
        w2 = P[f"conv{i}.weight"].reshape(o, -1)
        dout = _act_back(act, dh, saved)
        dy2 = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(-1, o)
        g[f"conv{i}.weight"] = ops.matmul(dy2.T, cols).reshape(P[f"conv{i}.weight"].shape)
        g[f"conv{i}.bias"] = ops.exact_sum(dy2, 0)
        if i > 0:
            c_in = P[f"conv{i}.weight"].shape[1]
            dh = col2im(ops.matmul(dy2, w2), bsz, c_in, 8, 8, k)
    update(task, state, g)
    return float(loss), outs, g
