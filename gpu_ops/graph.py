"""The forward builder of model graphs (SPEC.md §11.1): one executor for every model.

``build_forward`` turns a checked ``protocol.graph.GraphConfig`` into the loss function
``forward(params, inputs, targets, step)`` using only ``gpu_ops.functional`` ops, looked up
at call time (so the trace and the vector generator see the same calls as a hand-written
model). A value or parameter with two consumers is passed through ``F.fork`` just before its
first consumer runs: the first copy goes to that consumer, the second to the other one, so
the gradient sum of its two uses is one traced float32 add.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from protocol.graph import INPUT, TARGETS, GraphConfig, Node, get_conv_padding, get_graph_dropout_sites

from . import functional as F
from . import layers

Forward = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, int], torch.Tensor]
# (seed, step, site, p, shape, device): the mask is made on the activation's device
MaskFn = Callable[[int, int, int, float, tuple[int, ...], torch.device], torch.Tensor]


def _node_params(node: Node) -> list[str]:
    """Parameter names a node reads, in argument order (a shared weight under its owner's name)."""
    if node.op == "linear":
        names = [node.get("weight") or f"{node.name}.weight"]
        return names + ([f"{node.name}.bias"] if node.get("bias") else [])
    if node.op == "rms_norm":
        return [f"{node.name}.weight"]
    if node.op in ("conv2d", "layer_norm"):
        return [f"{node.name}.weight", f"{node.name}.bias"]
    if node.op in ("embedding", "pos_embedding", "cls_token"):
        return [node.name]
    return []


def build_forward(graph: GraphConfig, seed: int, dropout_mask: MaskFn) -> Forward:
    """Loss of ``graph``; ``dropout_mask`` draws the §10.5 mask of (run seed, step, site, p, shape)."""
    nodes = graph.nodes
    sites = get_graph_dropout_sites(graph)
    value_uses: dict[str, int] = {}
    param_uses: dict[str, int] = {}
    node_params = [_node_params(n) for n in nodes]
    for n, names in zip(nodes, node_params):
        for src in n.inputs:
            value_uses[src] = value_uses.get(src, 0) + 1
        for p in names:
            param_uses[p] = param_uses.get(p, 0) + 1

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {INPUT: x, TARGETS: y}
        # the fork copy kept for a value's (a parameter's) second consumer; the two name spaces
        # are separate (an embedding node and its table share a name)
        second_value: dict[str, torch.Tensor] = {}
        second_param: dict[str, torch.Tensor] = {}

        def take(store: dict[str, torch.Tensor], uses: dict[str, int], second: dict[str, torch.Tensor],
                 name: str) -> torch.Tensor:
            if name in second:
                return second.pop(name)
            if uses[name] == 2 and name != TARGETS:
                first, other = F.fork(store[name])
                second[name] = other
                return first
            return store[name]

        for node, pnames in zip(nodes, node_params):
            args = [take(values, value_uses, second_value, src) for src in node.inputs]
            weights = [take(p, param_uses, second_param, name) for name in pnames]
            values[node.name] = _run(node, args, weights, seed, step, sites, dropout_mask)
        return values[nodes[-1].name]

    return forward


def _run(node: Node, args: list[torch.Tensor], w: list[torch.Tensor], seed: int, step: int,
         sites: dict[str, int], dropout_mask: MaskFn) -> torch.Tensor:
    op = node.op
    x = args[0]
    if op == "linear":
        return F.linear(x, w[0], w[1] if len(w) > 1 else None)
    if op == "conv2d":
        stride, pad = int(node.get("stride")), get_conv_padding(node)
        if stride == 1 and pad == int(node.get("kernel")) // 2:  # the C im2col/col2im path, same bits
            return F.conv2d(x, w[0], w[1])
        return layers.conv2d_general(x, w[0], w[1], stride, pad)
    if op in ("relu", "tanh", "gelu"):
        fn: Callable[[torch.Tensor], torch.Tensor] = getattr(F, op)
        return fn(x)
    if op == "layer_norm":
        return F.layer_norm(x, w[0], w[1])
    if op == "embedding":
        return F.embedding(x, w[0])
    if op == "pos_embedding":
        return F.add_broadcast(x, w[0][: x.shape[1]])
    if op == "causal_attention":
        return F.causal_attention(x, int(node.get("heads")))
    if op == "attention":
        return layers.attention(x, int(node.get("heads")))
    if op == "rms_norm":
        return layers.rms_norm(x, w[0])
    if op == "swiglu":
        return layers.swiglu(x)
    if op == "mean_pool":
        return layers.mean_pool(x, int(node.get("axis")) + 1)  # + 1: the batch axis leads
    if op == "patches":
        return layers.patches(x, int(node.get("size")))
    if op == "cls_token":
        return layers.cls_token(x, w[0])
    if op == "select":
        return layers.select(x, int(node.get("axis")) + 1, int(node.get("index")))  # + 1: the batch axis leads
    if op == "rotary":
        return layers.rotary(x, int(node.get("heads")), float(node.get("base")), int(node.get("dims")))
    if op == "dropout":
        prob = float(node.get("p"))
        if prob == 0.0:  # no words drawn, no multiplication (§10.5)
            return x
        return F.dropout(x, dropout_mask(seed, step, sites[node.name], prob, tuple(x.shape), x.device))
    if op == "add":
        return F.add(x, args[1])
    if op == "reshape":
        return x.reshape(x.shape[0], *node.get("shape"))
    if op == "flatten":
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))
    if op == "cross_entropy":
        return F.cross_entropy(x, args[1])
    raise ValueError(f"unknown graph op {op!r}")  # pragma: no cover - analyze_graph refuses it
