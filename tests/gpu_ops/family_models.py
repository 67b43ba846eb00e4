"""The built-in families as they were hand-written before models became graphs (reference for
tests/gpu_ops/test_graph_models.py): the graph executor must reproduce these bit for bit."""

from __future__ import annotations

import math
from typing import Callable

import torch

from gpu_ops import functional as F
from gpu_ops.nn import get_dropout_mask
from protocol.task import CNNConfig, MLPConfig, Task, TransformerConfig


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


def get_family_forward(task: Task) -> Forward:
    return {"mlp": _mlp_forward, "cnn": _cnn_forward, "transformer": _transformer_forward}[task.model_family](task)
