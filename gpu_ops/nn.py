"""Built-in model families (SPEC.md §11): MLP, CNN and a small causal transformer.

A model is a dict of named float32 parameters plus a forward function built only from
``gpu_ops.functional``. Parameter names are the canonical leaf names of the state root
(without the ``param/`` prefix). Initial values come from Philox under the task seed:
parameter number ``i`` (in sorted-name order) draws ``u`` from stream INIT with counter
words (i, 0); weights are ``f32((2u - 1) * bound)``, biases and LayerNorm shifts are zero,
LayerNorm gains are one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from protocol.rng import STREAM_DROPOUT, STREAM_INIT, compute_random_u32, compute_uniform_f64
from protocol.task import CNNConfig, MLPConfig, Task, TransformerConfig

from . import backend, rowshard, trace
from . import functional as F

# How each parameter is initialised: ("uniform", bound) | ("zeros",) | ("ones",)
InitRule = tuple[str, float]


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    init: InitRule


def _fan_in_bound(fan_in: int) -> InitRule:
    return ("uniform", 1.0 / math.sqrt(fan_in))


def get_param_specs(task: Task, in_features: int, n_classes: int) -> list[ParamSpec]:
    """Parameter names, shapes and init rules for the task's model, in sorted-name order."""
    m = task.model
    specs: list[ParamSpec] = []
    if isinstance(m, MLPConfig):
        widths = [in_features, *m.hidden, n_classes]
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            specs.append(ParamSpec(f"fc{i}.weight", (b, a), _fan_in_bound(a)))
            specs.append(ParamSpec(f"fc{i}.bias", (b,), ("zeros", 0.0)))
    elif isinstance(m, CNNConfig):
        side = int(math.isqrt(in_features))
        chans = [1, *m.channels]
        for i, (a, b) in enumerate(zip(chans, chans[1:])):
            specs.append(ParamSpec(f"conv{i}.weight", (b, a, m.kernel, m.kernel), _fan_in_bound(a * m.kernel ** 2)))
            specs.append(ParamSpec(f"conv{i}.bias", (b,), ("zeros", 0.0)))
        flat = chans[-1] * side * side
        specs.append(ParamSpec("fc0.weight", (m.hidden, flat), _fan_in_bound(flat)))
        specs.append(ParamSpec("fc0.bias", (m.hidden,), ("zeros", 0.0)))
        specs.append(ParamSpec("fc1.weight", (n_classes, m.hidden), _fan_in_bound(m.hidden)))
        specs.append(ParamSpec("fc1.bias", (n_classes,), ("zeros", 0.0)))
    elif isinstance(m, TransformerConfig):
        d = m.d_model
        specs.append(ParamSpec("tok_emb", (n_classes, d), ("uniform", 0.1)))
        specs.append(ParamSpec("pos_emb", (m.context, d), ("uniform", 0.1)))
        for i in range(m.n_layers):
            p = f"h{i}."
            specs += [
                ParamSpec(p + "ln1.weight", (d,), ("ones", 0.0)),
                ParamSpec(p + "ln1.bias", (d,), ("zeros", 0.0)),
                ParamSpec(p + "attn.qkv.weight", (3 * d, d), _fan_in_bound(d)),
                ParamSpec(p + "attn.qkv.bias", (3 * d,), ("zeros", 0.0)),
                ParamSpec(p + "attn.proj.weight", (d, d), _fan_in_bound(d)),
                ParamSpec(p + "attn.proj.bias", (d,), ("zeros", 0.0)),
                ParamSpec(p + "ln2.weight", (d,), ("ones", 0.0)),
                ParamSpec(p + "ln2.bias", (d,), ("zeros", 0.0)),
                ParamSpec(p + "mlp.fc.weight", (m.d_ff, d), _fan_in_bound(d)),
                ParamSpec(p + "mlp.fc.bias", (m.d_ff,), ("zeros", 0.0)),
                ParamSpec(p + "mlp.proj.weight", (d, m.d_ff), _fan_in_bound(m.d_ff)),
                ParamSpec(p + "mlp.proj.bias", (d,), ("zeros", 0.0)),
            ]
        specs.append(ParamSpec("ln_f.weight", (d,), ("ones", 0.0)))
        specs.append(ParamSpec("ln_f.bias", (d,), ("zeros", 0.0)))
        specs.append(ParamSpec("head.weight", (n_classes, d), _fan_in_bound(d)))
    else:  # pragma: no cover - Task validation excludes this
        raise ValueError(f"unknown model config {m!r}")
    return sorted(specs, key=lambda s: s.name.encode("ascii"))


def init_params(specs: list[ParamSpec], seed: int) -> dict[str, torch.Tensor]:
    params: dict[str, torch.Tensor] = {}
    for index, spec in enumerate(specs):
        count = int(np.prod(spec.shape)) if spec.shape else 1
        kind, bound = spec.init
        if kind == "uniform":
            u = compute_uniform_f64(seed, STREAM_INIT, index, 0, count)
            values = ((2.0 * u - 1.0) * bound).astype(np.float32)
        elif kind == "zeros":
            values = np.zeros(count, dtype=np.float32)
        else:
            values = np.ones(count, dtype=np.float32)
        params[spec.name] = torch.from_numpy(values.reshape(spec.shape)).clone()
    return params


def get_dropout_mask(seed: int, step: int, site: int, p: float, shape: tuple[int, ...]) -> torch.Tensor:
    """F.dropout_mask of the Philox words (seed, STREAM_DROPOUT, step, site); in C when available
    (gpu_ops/cpu/nnops.c, equal to protocol.rng bit for bit: tests/gpu_ops/test_fast_vs_ref.py)."""
    shard = rowshard.get_shard()
    if shard is None:
        mask = _compute_dropout_mask(seed, step, site, p, shape)
    else:  # a data-parallel worker: its rows of the whole batch's mask (dim 0 is the sample)
        mask = _compute_dropout_mask(seed, step, site, p, (shard.total, *shape[1:]))[shard.lo:shard.hi]
    rec = trace.get_recorder()
    if rec is not None:  # the mask is an input of the dropout op; the step comes from the dispute
        rec.record("dropout_mask", [site, p, list(shape)], [], [mask])
    return mask


def _compute_dropout_mask(seed: int, step: int, site: int, p: float, shape: tuple[int, ...]) -> torch.Tensor:
    k = backend.kernels()
    if k is not None and 0 <= seed < 2**64:
        scale = float(torch.tensor(1.0 / (1.0 - p), dtype=torch.float32))
        return k.dropout_mask(seed, STREAM_DROPOUT, step, site, int(math.floor(p * 2.0**32)), scale, shape)
    words = compute_random_u32(seed, STREAM_DROPOUT, step, site, int(np.prod(shape)))
    return F.dropout_mask(torch.from_numpy(words.astype(np.int64)), p, shape)


Forward = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, int], torch.Tensor]


def _mlp_forward(task: Task) -> Forward:
    cfg = task.model
    assert isinstance(cfg, MLPConfig)
    act = F.ACTIVATIONS[cfg.activation]
    n_layers = len(cfg.hidden) + 1

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        h = x
        for i in range(n_layers):
            h = F.linear(h, p[f"fc{i}.weight"], p[f"fc{i}.bias"])
            if i < n_layers - 1:
                h = act(h)
        return F.cross_entropy(h, y)

    return forward


def _cnn_forward(task: Task) -> Forward:
    cfg = task.model
    assert isinstance(cfg, CNNConfig)
    act = F.ACTIVATIONS[cfg.activation]

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        side = int(math.isqrt(x.shape[1]))
        h = x.view(x.shape[0], 1, side, side)
        for i in range(len(cfg.channels)):
            h = act(F.conv2d(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"]))
        h = act(F.linear(h.reshape(h.shape[0], -1), p["fc0.weight"], p["fc0.bias"]))
        return F.cross_entropy(F.linear(h, p["fc1.weight"], p["fc1.bias"]), y)

    return forward


def _transformer_forward(task: Task) -> Forward:
    cfg = task.model
    assert isinstance(cfg, TransformerConfig)
    seed = task.seed

    def drop(h: torch.Tensor, step: int, site: int) -> torch.Tensor:
        if cfg.dropout == 0.0:
            return h
        return F.dropout(h, get_dropout_mask(seed, step, site, cfg.dropout, tuple(h.shape)))

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        t = x.shape[1]
        h = F.add_broadcast(F.embedding(x, p["tok_emb"]), p["pos_emb"][:t])
        h = drop(h, step, 0)
        for i in range(cfg.n_layers):
            pre = f"h{i}."
            # fork/add: the residual's two uses and its sum are traced ops (same bits as h + a).
            h, skip = F.fork(h)
            a = F.layer_norm(h, p[pre + "ln1.weight"], p[pre + "ln1.bias"])
            a = F.causal_attention(F.linear(a, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"]), cfg.n_heads)
            a = drop(F.linear(a, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"]), step, 1 + 2 * i)
            h, skip = F.fork(F.add(skip, a))
            f = F.layer_norm(h, p[pre + "ln2.weight"], p[pre + "ln2.bias"])
            f = F.gelu(F.linear(f, p[pre + "mlp.fc.weight"], p[pre + "mlp.fc.bias"]))
            f = drop(F.linear(f, p[pre + "mlp.proj.weight"], p[pre + "mlp.proj.bias"]), step, 2 + 2 * i)
            h = F.add(skip, f)
        h = F.layer_norm(h, p["ln_f.weight"], p["ln_f.bias"])
        return F.cross_entropy(F.linear(h, p["head.weight"]), y)

    return forward


def get_forward(task: Task) -> Forward:
    """Loss function ``forward(params, inputs, targets, step)`` for the task's model family."""
    return {"mlp": _mlp_forward, "cnn": _cnn_forward, "transformer": _transformer_forward}[task.model_family](task)
