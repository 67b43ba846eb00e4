"""One training step of a model graph (SPEC.md §11.1, §10.5), from the text alone.

Reads the normalized task document (the ``[model]`` map of family ``graph``), derives the
parameter list from the op table, initialises it (§11), and runs forward and a hand-written
reverse pass node by node: a value read twice gets the binary32 sum of its two gradients.
Shares no code with the project; ``ops``, ``core`` and the update of ``mlp`` are this
package's own readings of §9, §10 and §10.6.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import core, ops
from .mlp import MLPState, update
from .ops import f32

EPS = f32(1e-5)
ONE = f32(1.0)


def _pad(n: dict[str, Any]) -> int:
    return n["kernel"] // 2 if n["padding"] == "same" else n["padding"]


def im2col(x: np.ndarray, k: int, s: int, pad: int) -> tuple[np.ndarray, int, int]:
    """Rows (n, y, x) of the output, columns c·k² + i·k + j: x[n, c, y·s + i - pad, x·s + j - pad] or +0."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=f32)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    cols = np.zeros((n, ho, wo, c, k, k), dtype=f32)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, :, i, j] = xp[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s].transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, c * k * k), ho, wo


def col2im(dcols: np.ndarray, shape: tuple[int, ...], k: int, s: int, pad: int, ho: int, wo: int) -> np.ndarray:
    """Offsets (i, j) in row-major order, each adding its column into the padded buffer at
    [n, c, y·s + i, x·s + j], one binary32 add per element; then the padding is cut off."""
    n, c, h, w = shape
    d6 = dcols.reshape(n, ho, wo, c, k, k)
    buf = np.zeros((n, c, h + 2 * pad + s, w + 2 * pad + s), dtype=f32)
    for i in range(k):
        for j in range(k):
            sl = (slice(None), slice(None), slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))
            buf[sl] = (buf[sl] + d6[:, :, :, :, i, j].transpose(0, 3, 1, 2)).astype(f32)
    return buf[:, :, pad:pad + h, pad:pad + w]


def _attrs(node: dict[str, Any], classes: int) -> dict[str, Any]:
    return {k: (classes if v == "classes" else v) for k, v in node.items()}


def param_list(model: dict[str, Any], in_shape: tuple[int, ...], classes: int
               ) -> list[tuple[str, tuple[int, ...], str, float]]:
    """(name, shape, rule, bound) of every parameter, sorted by name bytes (§11.1 table)."""
    shapes: dict[str, tuple[int, ...]] = {"input": in_shape}
    out: list[tuple[str, tuple[int, ...], str, float]] = []
    for raw in model["nodes"]:
        n = _attrs(raw, classes)
        op, name = n["op"], n["name"]
        x = shapes[n["in"][0]]

        def uniform(pname: str, shape: tuple[int, ...], fan_in: int, bound: float = n.get("bound", 0.0)) -> None:
            out.append((pname, shape, "uniform", bound if bound != 0.0 else 1.0 / math.sqrt(fan_in)))

        if op == "linear":
            if not n["weight"]:
                uniform(name + ".weight", (n["out"], x[-1]), x[-1])
            if n["bias"]:
                out.append((name + ".bias", (n["out"],), "zeros", 0.0))
            y = x[:-1] + (n["out"],)
        elif op == "conv2d":
            k = n["kernel"]
            uniform(name + ".weight", (n["out"], x[0], k, k), x[0] * k * k)
            out.append((name + ".bias", (n["out"],), "zeros", 0.0))
            pad, st = _pad(n), n["stride"]
            y = (n["out"], (x[1] + 2 * pad - k) // st + 1, (x[2] + 2 * pad - k) // st + 1)
        elif op in ("layer_norm", "rms_norm"):
            out.append((name + ".weight", (x[-1],), "ones", 0.0))
            if op == "layer_norm":
                out.append((name + ".bias", (x[-1],), "zeros", 0.0))
            y = x
        elif op == "embedding":
            out.append((name, (n["vocab"], n["dim"]), "uniform", n["bound"]))
            y = x + (n["dim"],)
        elif op == "pos_embedding":
            out.append((name, x, "uniform", n["bound"]))
            y = x
        elif op == "cls_token":
            out.append((name, (1, 1, x[1]), "uniform", n["bound"]))
            y = (x[0] + 1, x[1])
        elif op == "select":
            y = x[:n["axis"]] + x[n["axis"] + 1:]
        elif op in ("causal_attention", "attention"):
            y = (x[0], x[1] // 3)
        elif op == "swiglu":
            y = x[:-1] + (x[-1] // 2,)
        elif op == "mean_pool":
            y = x[:n["axis"]] + x[n["axis"] + 1:]
        elif op == "patches":
            p = n["size"]
            y = ((x[1] // p) * (x[2] // p), x[0] * p * p)
        elif op == "reshape":
            y = tuple(n["shape"])
        elif op == "flatten":
            y = (int(np.prod(x)),)
        else:
            y = x
        shapes[name] = y
    return sorted(out, key=lambda p: p[0].encode("ascii"))


def init_state(task: dict[str, Any], in_shape: tuple[int, ...], classes: int) -> MLPState:
    params = {}
    for index, (name, shape, rule, bound) in enumerate(param_list(task["model"], in_shape, classes)):
        count = int(np.prod(shape))
        if rule == "uniform":
            u = core.uniform(task["task"]["seed"], core.INIT, index, 0, count)
            params[name] = ((2.0 * u - 1.0) * bound).astype(f32).reshape(shape)
        else:
            params[name] = (np.ones if rule == "ones" else np.zeros)(shape, dtype=f32)
    o = task["optim"]
    slots: dict[str, dict[str, np.ndarray]] = {}
    if o["name"] == "adamw":
        slots = {s: {k: np.zeros_like(v) for k, v in params.items()} for s in ("exp_avg", "exp_avg_sq")}
    elif o["momentum"] > 0:
        slots = {"momentum": {k: np.zeros_like(v) for k, v in params.items()}}
    return MLPState(params, slots, 0)


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _softmax_rows(a: np.ndarray) -> np.ndarray:
    z = (a - np.max(a, axis=-1, keepdims=True)).astype(f32)
    e = ops.exp(z)
    return (e / ops.exact_sum(e, -1)[:, None]).astype(f32)


def _attention_fwd(qkv: np.ndarray, heads: int, causal: bool) -> tuple[np.ndarray, Any]:
    bsz, t, d3 = qkv.shape
    d = d3 // 3
    hd = d // heads
    scale = f32(1.0 / math.sqrt(hd))
    tri = np.tril(np.ones((t, t), dtype=bool)) if causal else np.ones((t, t), dtype=bool)
    out = np.zeros((bsz, t, d), dtype=f32)
    probs = np.zeros((bsz, heads, t, t), dtype=f32)
    for b in range(bsz):
        for h in range(heads):
            q, k, v = (qkv[b, :, j * d + h * hd: j * d + (h + 1) * hd] for j in range(3))
            s = ops.matmul(q, k.T)
            probs[b, h] = _softmax_rows(np.where(tri, (s * scale).astype(f32), f32(-np.inf)))
            out[b, :, h * hd:(h + 1) * hd] = ops.matmul(probs[b, h], v)
    return out, (qkv, probs, tri, scale, heads)


def _attention_bwd(dout: np.ndarray, cache: Any) -> np.ndarray:
    qkv, probs, tri, scale, heads = cache
    bsz, t, d3 = qkv.shape
    d = d3 // 3
    hd = d // heads
    dqkv = np.zeros_like(qkv)
    for b in range(bsz):
        for h in range(heads):
            sl = [slice(j * d + h * hd, j * d + (h + 1) * hd) for j in range(3)]
            q, k, v = (qkv[b, :, s_] for s_ in sl)
            pr, d_o = probs[b, h], dout[b, :, h * hd:(h + 1) * hd]
            d_pr = ops.matmul(d_o, v.T)
            dqkv[b, :, sl[2]] = ops.matmul(pr.T, d_o)
            d_a = (pr * (d_pr - ops.exact_sum((d_pr * pr).astype(f32), -1)[:, None])).astype(f32)
            d_s = np.where(tri, (d_a * scale).astype(f32), f32(0.0)).astype(f32)
            dqkv[b, :, sl[0]] = ops.matmul(d_s, k)
            dqkv[b, :, sl[1]] = ops.matmul(d_s.T, q)
    return dqkv


def rotary_tables(t: int, r: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """§10.5 rotary: C and S [T, r/2] from lb = log(f32(base)), inv_i = exp(-(f32(2i)/f32(r) * lb))."""
    lb = ops.log(np.array([base], dtype=f32))[0]
    inv = np.zeros(r // 2, dtype=f32)
    for i in range(r // 2):
        e = f32(f32(2 * i) / f32(r))
        inv[i] = ops.exp(np.array([-(e * lb)], dtype=f32))[0]
    ang = (np.arange(t, dtype=f32)[:, None] * inv[None, :]).astype(f32)
    return ops.cos(ang), ops.sin(ang)


def rotary(x: np.ndarray, n: dict[str, Any], transpose: bool) -> np.ndarray:
    """Per head h and part o in (query, key): columns c = o·d + h·dh, pairs (c + i, c + m + i)."""
    bsz, t, d3 = x.shape
    d = d3 // 3
    dh = d // n["heads"]
    r = n["dims"] or dh
    m = r // 2
    cos, sin = rotary_tables(t, r, n["base"])
    y = x.copy()
    for o in (0, 1):
        for h in range(n["heads"]):
            c = o * d + h * dh
            x1, x2 = x[:, :, c:c + m], x[:, :, c + m:c + r]
            if transpose:
                y[:, :, c:c + m] = (x1 * cos).astype(f32) + (x2 * sin).astype(f32)
                y[:, :, c + m:c + r] = (x2 * cos).astype(f32) - (x1 * sin).astype(f32)
            else:
                y[:, :, c:c + m] = (x1 * cos).astype(f32) - (x2 * sin).astype(f32)
                y[:, :, c + m:c + r] = (x2 * cos).astype(f32) + (x1 * sin).astype(f32)
    return y


def _forward(n: dict[str, Any], xs: list[np.ndarray], P: dict[str, np.ndarray], ctx: dict[str, Any]
             ) -> tuple[np.ndarray, Any]:
    op, name, x = n["op"], n["name"], xs[0]
    if op == "linear":
        w = P[n["weight"] or name + ".weight"]
        y = ops.matmul(_rows(x), w.T)
        if n["bias"]:
            y = (y + P[name + ".bias"]).astype(f32)
        return y.reshape(x.shape[:-1] + (w.shape[0],)), x
    if op == "conv2d":
        w, k = P[name + ".weight"], n["kernel"]
        cols, ho, wo = im2col(x, k, n["stride"], _pad(n))
        y = (ops.matmul(cols, w.reshape(w.shape[0], -1).T) + P[name + ".bias"]).astype(f32)
        return np.ascontiguousarray(y.reshape(x.shape[0], ho, wo, w.shape[0]).transpose(0, 3, 1, 2)), \
            (cols, x.shape, ho, wo)
    if op == "relu":
        return ops.relu(x), x
    if op == "tanh":
        y = ops.tanh(x)
        return y, y
    if op == "gelu":
        y, th = ops.gelu(x)
        return y, (x, th)
    if op == "layer_norm":
        r = _rows(x)
        mean = ops.exact_mean_rows(r)
        xc = (r - mean).astype(f32)
        var = ops.exact_mean_rows((xc * xc).astype(f32))
        rstd = (ONE / ops.sqrt(var + EPS)).astype(f32)
        xhat = (xc * rstd).astype(f32)
        return (xhat * P[name + ".weight"] + P[name + ".bias"]).astype(f32).reshape(x.shape), (xhat, rstd)
    if op == "rms_norm":
        r = _rows(x)
        ms = (ops.exact_sum((r * r).astype(f32), -1) / f32(r.shape[1])).astype(f32)[:, None]
        rstd = (ONE / ops.sqrt(ms + EPS)).astype(f32)
        xhat = (r * rstd).astype(f32)
        return (xhat * P[name + ".weight"]).astype(f32).reshape(x.shape), (xhat, rstd)
    if op == "embedding":
        return P[name][x], x
    if op == "pos_embedding":
        return (x + P[name]).astype(f32), None
    if op in ("causal_attention", "attention"):
        return _attention_fwd(x, n["heads"], op == "causal_attention")
    if op == "rotary":
        return rotary(x, n, False), None
    if op == "cls_token":
        tok = np.broadcast_to(P[name].reshape(1, 1, -1), (x.shape[0], 1, x.shape[2]))
        return np.concatenate([tok, x], axis=1).astype(f32), None
    if op == "select":
        ax = n["axis"] + 1
        return np.ascontiguousarray(np.take(x, n["index"], axis=ax)), (x.shape, ax)
    if op == "dropout":
        if n["p"] == 0.0:
            return x, None
        w = core.random_u32(ctx["seed"], core.DROPOUT, ctx["step"], ctx["site"][name], x.size)
        m = np.where(w >= math.floor(n["p"] * 2**32), f32(1.0 / (1.0 - n["p"])), f32(0.0)).astype(f32)
        m = m.reshape(x.shape)
        return (x * m).astype(f32), m
    if op == "add":
        return (x + xs[1]).astype(f32), None
    if op in ("reshape", "flatten"):
        return x.reshape((x.shape[0],) + (tuple(n["shape"]) if op == "reshape" else (-1,))), x.shape
    if op == "mean_pool":
        ax = n["axis"] + 1
        return (ops.exact_sum(x, ax) / f32(x.shape[ax])).astype(f32), (x.shape, ax)
    if op == "swiglu":
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
        sig = (ONE / (ONE + ops.exp((-a).astype(f32)))).astype(f32)
        return ((a * sig).astype(f32) * b).astype(f32), (a, b, sig)
    if op == "patches":
        bsz, c, h, wd = x.shape
        p = n["size"]
        y = x.reshape(bsz, c, h // p, p, wd // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(bsz, -1, c * p * p)
        return np.ascontiguousarray(y), (x.shape, p)
    # cross_entropy
    logits, target = _rows(x), xs[1].reshape(-1)
    rows = logits.shape[0]
    z = (logits - np.max(logits, axis=1, keepdims=True)).astype(f32)
    e = ops.exp(z)
    s = ops.exact_sum(e, -1)[:, None]
    logp = (z - ops.log(s)).astype(f32)
    loss = -(ops.exact_sum_group(logp[np.arange(rows), target]) / f32(rows))
    onehot = np.zeros_like(logits)
    onehot[np.arange(rows), target] = ONE
    return np.array(loss, dtype=f32), ((((e / s).astype(f32) - onehot) / f32(rows)).astype(f32), x.shape)


def _backward(n: dict[str, Any], dy: np.ndarray, cache: Any, P: dict[str, np.ndarray],
              grads: dict[str, np.ndarray]) -> list[np.ndarray | None]:
    """Input gradients (one per ``in`` entry); parameter gradients are added into ``grads``."""
    op, name = n["op"], n["name"]

    def acc(pname: str, g: np.ndarray) -> None:
        grads[pname] = g if pname not in grads else (grads[pname] + g).astype(f32)

    if op == "linear":
        x = cache
        wname = n["weight"] or name + ".weight"
        d2, x2 = _rows(dy), _rows(x)
        acc(wname, ops.matmul(d2.T, x2))
        if n["bias"]:
            acc(name + ".bias", ops.exact_sum(d2, 0))
        if x.dtype != f32:
            return [None]
        return [ops.matmul(d2, P[wname]).reshape(x.shape)]
    if op == "conv2d":
        cols, shape, ho, wo = cache
        w = P[name + ".weight"]
        o = w.shape[0]
        dy2 = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(-1, o)
        acc(name + ".weight", ops.matmul(dy2.T, cols).reshape(w.shape))
        acc(name + ".bias", ops.exact_sum(dy2, 0))
        return [col2im(ops.matmul(dy2, w.reshape(o, -1)), shape, n["kernel"], n["stride"], _pad(n), ho, wo)]
    if op == "relu":
        return [np.where(cache > 0, dy, f32(0.0)).astype(f32)]
    if op == "tanh":
        return [(dy * (ONE - cache * cache)).astype(f32)]
    if op == "gelu":
        x, th = cache
        du = ops.GELU_K * (ONE + ops.GELU_C3 * (x * x))
        return [(dy * (ops.HALF * (ONE + th) + ((ops.HALF * x) * (ONE - th * th)) * du)).astype(f32)]
    if op in ("layer_norm", "rms_norm"):
        xhat, rstd = cache
        d2, g = _rows(dy), P[name + ".weight"]
        acc(name + ".weight", ops.exact_sum((d2 * xhat).astype(f32), 0))
        dxhat = (d2 * g).astype(f32)
        c = ops.exact_mean_rows((dxhat * xhat).astype(f32))
        if op == "rms_norm":
            return [((dxhat - xhat * c) * rstd).astype(f32).reshape(dy.shape)]
        acc(name + ".bias", ops.exact_sum(d2, 0))
        a = ops.exact_mean_rows(dxhat)
        return [(((dxhat - a) - xhat * c) * rstd).astype(f32).reshape(dy.shape)]
    if op == "embedding":
        flat = cache.reshape(-1)
        onehot_t = np.zeros((P[name].shape[0], flat.size), dtype=f32)
        onehot_t[flat, np.arange(flat.size)] = ONE
        acc(name, ops.matmul(onehot_t, _rows(dy)))
        return [None]
    if op == "pos_embedding":
        acc(name, ops.exact_sum(dy, 0))
        return [dy]
    if op in ("causal_attention", "attention"):
        return [_attention_bwd(dy, cache)]
    if op == "rotary":
        return [rotary(dy, n, True)]
    if op == "cls_token":
        acc(name, ops.exact_sum(dy[:, 0, :], 0).reshape(1, 1, -1))
        return [np.ascontiguousarray(dy[:, 1:, :])]
    if op == "select":
        shape, ax = cache
        dx = np.zeros(shape, dtype=f32)
        idx: list[Any] = [slice(None)] * len(shape)
        idx[ax] = n["index"]
        dx[tuple(idx)] = dy
        return [dx]
    if op == "dropout":
        return [dy if cache is None else (dy * cache).astype(f32)]
    if op == "add":
        return [dy, dy]
    if op in ("reshape", "flatten"):
        return [dy.reshape(cache)]
    if op == "mean_pool":
        shape, ax = cache
        g = (dy / f32(shape[ax])).astype(f32)
        return [np.ascontiguousarray(np.broadcast_to(np.expand_dims(g, ax), shape))]
    if op == "swiglu":
        a, b, sig = cache
        db = (dy * (a * sig).astype(f32)).astype(f32)
        da = ((dy * b).astype(f32) * (sig * (ONE + a * (ONE - sig)).astype(f32)).astype(f32)).astype(f32)
        return [np.concatenate([da, db], axis=-1)]
    if op == "patches":
        (bsz, c, h, wd), p = cache
        back = dy.reshape(bsz, h // p, wd // p, c, p, p).transpose(0, 3, 1, 4, 2, 5).reshape(bsz, c, h, wd)
        return [np.ascontiguousarray(back)]
    dlogits, shape = cache  # cross_entropy: the loss gradient is 1
    return [dlogits.reshape(shape), None]


def train_step(task: dict[str, Any], state: MLPState, x: np.ndarray, y: np.ndarray) -> float:
    """One step in place on the batch (x, y) of step ``state.step``; returns the loss."""
    nodes = [_attrs(n, 0) for n in task["model"]["nodes"]]  # "classes" only sizes parameters
    sites = {n["name"]: i for i, n in enumerate(n for n in nodes if n["op"] == "dropout")}
    ctx = {"seed": task["task"]["seed"], "step": state.step, "site": sites}
    values: dict[str, np.ndarray] = {"input": x, "targets": y}
    caches = []
    for n in nodes:
        out, cache = _forward(n, [values[s] for s in n["in"]], state.params, ctx)
        values[n["name"]] = out
        caches.append(cache)
    loss = float(values[nodes[-1]["name"]])
    dvals: dict[str, np.ndarray] = {nodes[-1]["name"]: np.array(1.0, dtype=f32)}
    grads: dict[str, np.ndarray] = {}
    for n, cache in zip(reversed(nodes), reversed(caches)):
        for src, g in zip(n["in"], _backward(n, dvals[n["name"]], cache, state.params, grads)):
            if g is not None and src not in ("input", "targets"):
                # two readers: the binary32 sum of their gradients (§10.5)
                dvals[src] = g if src not in dvals else (dvals[src] + g).astype(f32)
    for k, v in state.params.items():
        grads.setdefault(k, np.zeros_like(v))
    update(task, state, grads)
    return loss
