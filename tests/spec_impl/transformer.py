"""One training step of the transformer family (SPEC.md §10.5, §11, §12, §13), from the text alone.

Forward and the hand-written backward follow SPEC.md §10.5 line by line: layer norm with its
exact row sums, causal attention with scale-and-mask, GELU, dropout masks from Philox, the
embedding gradient as an exact-slice matmul of the one-hot matrix, the position-embedding
gradient as an exact sum over the batch, and cross-entropy with the probabilities e / s.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import core, ops
from .mlp import MLPState, update
from .ops import f32

EPS = f32(1e-5)


def param_list(cfg: dict[str, Any], vocab: int) -> list[tuple[str, tuple[int, ...], str, float]]:
    d, ff = cfg["d_model"], cfg["d_ff"]
    out: list[tuple[str, tuple[int, ...], str, float]] = [
        ("tok_emb", (vocab, d), "uniform", 0.1), ("pos_emb", (cfg["context"], d), "uniform", 0.1)]
    for i in range(cfg["n_layers"]):
        p = f"h{i}."
        out += [(p + "ln1.weight", (d,), "ones", 0.0), (p + "ln1.bias", (d,), "zeros", 0.0),
                (p + "attn.qkv.weight", (3 * d, d), "uniform", 1 / math.sqrt(d)),
                (p + "attn.qkv.bias", (3 * d,), "zeros", 0.0),
                (p + "attn.proj.weight", (d, d), "uniform", 1 / math.sqrt(d)),
                (p + "attn.proj.bias", (d,), "zeros", 0.0),
                (p + "ln2.weight", (d,), "ones", 0.0), (p + "ln2.bias", (d,), "zeros", 0.0),
                (p + "mlp.fc.weight", (ff, d), "uniform", 1 / math.sqrt(d)), (p + "mlp.fc.bias", (ff,), "zeros", 0.0),
                (p + "mlp.proj.weight", (d, ff), "uniform", 1 / math.sqrt(ff)),
                (p + "mlp.proj.bias", (d,), "zeros", 0.0)]
    out += [("ln_f.weight", (d,), "ones", 0.0), ("ln_f.bias", (d,), "zeros", 0.0),
            ("head.weight", (vocab, d), "uniform", 1 / math.sqrt(d))]
    return sorted(out, key=lambda p: p[0].encode("ascii"))


def init_state(task: dict[str, Any], vocab: int) -> MLPState:
    params = {}
    for index, (name, shape, rule, bound) in enumerate(param_list(task["model"], vocab)):
        n = int(np.prod(shape))
        if rule == "uniform":
            u = core.uniform(task["task"]["seed"], core.INIT, index, 0, n)
            params[name] = ((2.0 * u - 1.0) * bound).astype(f32).reshape(shape)
        else:
            params[name] = (np.ones if rule == "ones" else np.zeros)(shape, dtype=f32)
    slots = {s: {k: np.zeros_like(v) for k, v in params.items()} for s in ("exp_avg", "exp_avg_sq")}
    return MLPState(params, slots, 0)


def tokens_of(text: bytes) -> tuple[np.ndarray, int]:
    vocab = sorted(set(text))
    lookup = np.zeros(256, dtype=np.int64)
    lookup[np.array(vocab)] = np.arange(len(vocab))
    return lookup[np.frombuffer(text, dtype=np.uint8)], len(vocab)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = ops.matmul(x, w.T)
    return y if b is None else (y + b).astype(f32)


def _linear_back(dy: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return ops.matmul(dy, w), ops.matmul(dy.T, x), ops.exact_sum(dy, 0)


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    mean = ops.exact_mean_rows(x)
    xc = (x - mean).astype(f32)
    var = ops.exact_mean_rows((xc * xc).astype(f32))
    rstd = (ops.ONE / ops.sqrt(var + EPS)).astype(f32)
    xhat = (xc * rstd).astype(f32)
    return (xhat * g + b).astype(f32), (xhat, rstd)


def _ln_back(dy: np.ndarray, g: np.ndarray, saved: tuple[np.ndarray, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xhat, rstd = saved
    dg = ops.exact_sum((dy * xhat).astype(f32), 0)
    db = ops.exact_sum(dy, 0)
    dxhat = (dy * g).astype(f32)
    a = ops.exact_mean_rows(dxhat)
    c = ops.exact_mean_rows((dxhat * xhat).astype(f32))
    return (((dxhat - a) - xhat * c) * rstd).astype(f32), dg, db


def _softmax(x: np.ndarray) -> np.ndarray:
    z = (x - np.max(x, axis=-1, keepdims=True)).astype(f32)
    e = ops.exp(z)
    return (e / ops.exact_sum(e, -1)[:, None]).astype(f32)


def train_step(task: dict[str, Any], state: MLPState, tokens: np.ndarray
               ) -> tuple[float, list[np.ndarray], dict[str, np.ndarray]]:
    """One step in place; returns (loss, the outputs SPEC.md's steps.json lists, raw gradients)."""
    cfg, seed, t = task["model"], task["task"]["seed"], state.step
    bsz, ctx, d, heads, p_drop = task["task"]["batch_size"], cfg["context"], cfg["d_model"], cfg["n_heads"], \
        cfg["dropout"]
    hdim, rows = d // heads, task["task"]["batch_size"] * cfg["context"]
    scale = f32(1.0 / math.sqrt(hdim))
    starts = [int(w) % (len(tokens) - ctx - 1) for w in core.random_u32(seed, core.DATA, t, 1, bsz)]
    x = np.stack([tokens[s:s + ctx] for s in starts])
    y = np.stack([tokens[s + 1:s + ctx + 1] for s in starts]).reshape(-1)
    P = state.params
    outs: list[np.ndarray] = []

    def mask(site: int) -> np.ndarray | None:
        if p_drop == 0.0:
            return None
        w = core.random_u32(seed, core.DROPOUT, t, site, rows * d)
        keep = w >= math.floor(p_drop * 2**32)
        return np.where(keep, f32(1.0 / (1.0 - p_drop)), f32(0.0)).astype(f32).reshape(rows, d)

    def drop(v: np.ndarray, m: np.ndarray | None) -> np.ndarray:
        out = v if m is None else (v * m).astype(f32)
        outs.append(out)
        return out

    emb = P["tok_emb"][x.reshape(-1)]
    outs.append(emb)
    h = (emb.reshape(bsz, ctx, d) + P["pos_emb"]).astype(f32).reshape(rows, d)
    outs.append(h)
    masks = {0: mask(0)}
    h = drop(h, masks[0])
    cache: list[dict[str, Any]] = []
    tri = np.tril(np.ones((ctx, ctx), dtype=bool))
    for i in range(cfg["n_layers"]):
        pre, c = f"h{i}.", {}
        a_in, c["ln1"] = _ln(h, P[pre + "ln1.weight"], P[pre + "ln1.bias"])
        outs.append(a_in)
        qkv = _linear(a_in, P[pre + "attn.qkv.weight"], P[pre + "attn.qkv.bias"])
        outs.append(qkv)
        qkv3 = qkv.reshape(bsz, ctx, 3 * d)
        att = np.zeros((bsz, ctx, d), dtype=f32)
        scores, probs = np.zeros((bsz, heads, ctx, ctx), f32), np.zeros((bsz, heads, ctx, ctx), f32)
        o_all = np.zeros((bsz, heads, ctx, hdim), f32)
        for b in range(bsz):
            for hd in range(heads):
                q, k, v = (qkv3[b, :, j * d + hd * hdim: j * d + (hd + 1) * hdim] for j in range(3))
                scores[b, hd] = ops.matmul(q, k.T)
                probs[b, hd] = _softmax(np.where(tri, (scores[b, hd] * scale).astype(f32), f32(-np.inf)))
                o_all[b, hd] = ops.matmul(probs[b, hd], v)
                att[b, :, hd * hdim:(hd + 1) * hdim] = o_all[b, hd]
        outs += [probs, o_all, att]  # the scores feed softmax directly (not a recorded layer call)
        c.update(qkv3=qkv3, probs=probs, a_in=a_in, att=att.reshape(rows, d))
        proj = _linear(c["att"], P[pre + "attn.proj.weight"], P[pre + "attn.proj.bias"])
        outs.append(proj)
        masks[1 + 2 * i] = mask(1 + 2 * i)
        h = (h + drop(proj, masks[1 + 2 * i])).astype(f32)
        f_in, c["ln2"] = _ln(h, P[pre + "ln2.weight"], P[pre + "ln2.bias"])
        outs.append(f_in)
        fc = _linear(f_in, P[pre + "mlp.fc.weight"], P[pre + "mlp.fc.bias"])
        outs.append(fc)
        g, th = ops.gelu(fc)
        outs.append(g)
        pr2 = _linear(g, P[pre + "mlp.proj.weight"], P[pre + "mlp.proj.bias"])
        outs.append(pr2)
        masks[2 + 2 * i] = mask(2 + 2 * i)
        h = (h + drop(pr2, masks[2 + 2 * i])).astype(f32)
        c.update(f_in=f_in, fc=fc, th=th, g=g)
        cache.append(c)
    hf, lnf = _ln(h, P["ln_f.weight"], P["ln_f.bias"])
    outs.append(hf)
    logits = _linear(hf, P["head.weight"], None)
    outs.append(logits)
    z = (logits - np.max(logits, axis=1, keepdims=True)).astype(f32)
    e = ops.exp(z)
    s = ops.exact_sum(e, -1)[:, None]
    logp = (z - ops.log(s)).astype(f32)
    loss = -(ops.exact_sum_group(logp[np.arange(rows), y]) / f32(rows))
    outs.append(np.array(loss, dtype=f32))
    # ---- backward (SPEC.md §10.5) ----
    grads: dict[str, np.ndarray] = {}
    onehot = np.zeros_like(logits)
    onehot[np.arange(rows), y] = f32(1.0)
    dlogits = (((e / s).astype(f32) - onehot) / f32(rows)).astype(f32)
    dhf, grads["head.weight"] = ops.matmul(dlogits, P["head.weight"]), ops.matmul(dlogits.T, hf)
    dh, grads["ln_f.weight"], grads["ln_f.bias"] = _ln_back(dhf, P["ln_f.weight"], lnf)
    for i in reversed(range(cfg["n_layers"])):
        pre, c = f"h{i}.", cache[i]
        m2 = masks[2 + 2 * i]
        d_pr2 = dh if m2 is None else (dh * m2).astype(f32)
        dg, grads[pre + "mlp.proj.weight"], grads[pre + "mlp.proj.bias"] = _linear_back(
            d_pr2, c["g"], P[pre + "mlp.proj.weight"])
        x_, th = c["fc"], c["th"]
        du = ops.GELU_K * (ops.ONE + ops.GELU_C3 * (x_ * x_))
        d_fc = (dg * (ops.HALF * (ops.ONE + th) + ((ops.HALF * x_) * (ops.ONE - th * th)) * du)).astype(f32)
        d_fin, grads[pre + "mlp.fc.weight"], grads[pre + "mlp.fc.bias"] = _linear_back(
            d_fc, c["f_in"], P[pre + "mlp.fc.weight"])
        dx2, grads[pre + "ln2.weight"], grads[pre + "ln2.bias"] = _ln_back(d_fin, P[pre + "ln2.weight"], c["ln2"])
        dh = (dh + dx2).astype(f32)  # two consumers: the residual add and ln2
        m1 = masks[1 + 2 * i]
        d_proj = dh if m1 is None else (dh * m1).astype(f32)
        d_att, grads[pre + "attn.proj.weight"], grads[pre + "attn.proj.bias"] = _linear_back(
            d_proj, c["att"], P[pre + "attn.proj.weight"])
        d_att = d_att.reshape(bsz, ctx, d)
        dqkv = np.zeros((bsz, ctx, 3 * d), dtype=f32)
        for b in range(bsz):
            for hd in range(heads):
                sl = [slice(j * d + hd * hdim, j * d + (hd + 1) * hdim) for j in range(3)]
                q, k, v = (c["qkv3"][b, :, s_] for s_ in sl)
                pr = c["probs"][b, hd]
                d_o = d_att[b, :, hd * hdim:(hd + 1) * hdim]
                d_pr = ops.matmul(d_o, v.T)
                dqkv[b, :, sl[2]] = ops.matmul(pr.T, d_o)
                d_a = (pr * (d_pr - ops.exact_sum((d_pr * pr).astype(f32), -1)[:, None])).astype(f32)
                d_s = np.where(tri, (d_a * scale).astype(f32), f32(0.0)).astype(f32)
                dqkv[b, :, sl[0]] = ops.matmul(d_s, k)
                dqkv[b, :, sl[1]] = ops.matmul(d_s.T, q)
        d_ain, grads[pre + "attn.qkv.weight"], grads[pre + "attn.qkv.bias"] = _linear_back(
            dqkv.reshape(rows, 3 * d), c["a_in"], P[pre + "attn.qkv.weight"])
        dx1, grads[pre + "ln1.weight"], grads[pre + "ln1.bias"] = _ln_back(d_ain, P[pre + "ln1.weight"], c["ln1"])
        dh = (dh + dx1).astype(f32)  # two consumers: the residual add and ln1
    d0 = dh if masks[0] is None else (dh * masks[0]).astype(f32)
    grads["pos_emb"] = ops.exact_sum(d0.reshape(bsz, ctx, d), 0)
    onehot_t = np.zeros((len(P["tok_emb"]), rows), dtype=f32)
    onehot_t[x.reshape(-1), np.arange(rows)] = f32(1.0)
    grads["tok_emb"] = ops.matmul(onehot_t, d0)
    update(task, state, grads)
    return float(loss), outs, grads
