"""Model graphs: a task's model as data over the operator vocabulary (SPEC.md §11.1).

A graph is a list of nodes in evaluation order. Each node names one operator of §10.5, the
values it reads (earlier nodes' names, or the batch's ``input`` and ``targets``) and its
attributes. ``analyze_graph`` derives from the graph alone, without allocating anything,
every value's shape, the parameter list (names, shapes, init rules, fan-in), the multiply-add
and activation counts of the cost bound (§18.2), and refuses a malformed graph with an
``InvalidTask`` that names the node. The built-in families are graphs too
(``get_family_graph``), so one executor (``gpu_ops.graph``) runs every model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .constants import MAX_TENSOR_ELEMENTS
from .errors import InvalidTask

MAX_GRAPH_NODES = 1024
MAX_GRAPH_DIM = 1 << 20  # any width, vocabulary or reshape extent
MAX_GRAPH_CONTEXT = 4096
MAX_RESHAPE_RANK = 4
ROTARY_BASE = 10000.0  # the rotary op's default base (RoFormer, GPT-NeoX, Llama)
MAX_ROTARY_BASE = 1e9
CLASSES = "classes"  # a width that equals the dataset's class (or token) count
INPUT, TARGETS = "input", "targets"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# Attributes of each op: name -> (kind, default). Kinds: "dim" (int or "classes"), "int",
# "count" (an int that may be 0), "float", "bool", "str", "shape" (list of ints). A default of None means required.
_ATTRS: dict[str, dict[str, tuple[str, Any]]] = {
    "linear": {"out": ("dim", None), "bias": ("bool", True), "weight": ("str", ""), "bound": ("float", 0.0)},
    "conv2d": {"out": ("int", None), "kernel": ("int", 3), "bound": ("float", 0.0), "stride": ("int", 1),
               "padding": ("pad", "same")},
    "relu": {}, "tanh": {}, "gelu": {},
    "layer_norm": {},
    "embedding": {"vocab": ("dim", None), "dim": ("int", None), "bound": ("float", 0.1)},
    "pos_embedding": {"bound": ("float", 0.1)},
    "causal_attention": {"heads": ("int", None)},
    "attention": {"heads": ("int", None)},
    "rms_norm": {},
    "swiglu": {},
    "mean_pool": {"axis": ("index", None)},
    "patches": {"size": ("int", None)},
    "rotary": {"heads": ("int", None), "base": ("float", ROTARY_BASE), "dims": ("count", 0)},
    "cls_token": {"bound": ("float", 0.02)},
    "select": {"axis": ("index", 0), "index": ("count", 0)},
    "dropout": {"p": ("float", 0.0)},
    "add": {},
    "reshape": {"shape": ("shape", None)},
    "flatten": {},
    "cross_entropy": {},
}
_ARITY = {op: 1 for op in _ATTRS} | {"add": 2, "cross_entropy": 2}
GRAPH_OPS = tuple(_ATTRS)


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...]  # every attribute of the op, defaults filled in, sorted by name

    def get(self, key: str) -> Any:
        return dict(self.attrs)[key]


@dataclass(frozen=True)
class GraphConfig:
    """The ``graph`` model family: ``context`` is T for a token dataset (0 for images)."""

    context: int = 0
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True)
class GraphInput:
    """What the data set feeds the graph (per example; the batch axis is implicit)."""

    kind: str  # "image": float32 features; "tokens": token ids
    shape: tuple[int, ...]  # (features,) for images, (T,) for tokens
    classes: int  # classes of an image set; the token count (an upper bound is fine) of a text set


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    init: str  # "uniform" | "zeros" | "ones"
    bound: float  # uniform bound (binary64); 0.0 for constants
    fan_in: int  # 0 where the bound is not a fan-in rule


@dataclass(frozen=True)
class GraphInfo:
    params: tuple[ParamInfo, ...]  # sorted by the bytes of the names
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # each node's output shape (batch axis excluded)
    flops_per_example: int  # upper bound on forward multiply-adds of one example (§18.2)
    activations_per_example: int  # elements of every node output of one example
    param_uses: tuple[tuple[str, int], ...]  # how many nodes read each parameter (1 or 2)

    @property
    def param_count(self) -> int:
        return sum(math.prod(p.shape) for p in self.params)


def _short(value: Any) -> str:
    """repr of a value from the task, cut so that a hostile 60 kB string stays out of logs."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(node: str, msg: str) -> InvalidTask:
    return InvalidTask(f"model graph node {_short(node)}: {msg}")


# --- parsing and canonical form ---------------------------------------------------------------

def _parse_attr(node: str, key: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(node, f"{key} must be a boolean, got {_short(value)}")
        return value
    if isinstance(value, bool):
        raise _fail(node, f"{key} must not be a boolean")
    if kind == "float":
        if not isinstance(value, (int, float)):
            raise _fail(node, f"{key} must be a number, got {_short(value)}")
        return float(value)
    if kind == "pad":
        if value != "same" and (not isinstance(value, int) or not 0 <= value <= 7):
            raise _fail(node, f"{key} must be an integer in [0, 7] or 'same', got {_short(value)}")
        return value
    if kind == "index":
        if not isinstance(value, int) or not 0 <= value < MAX_RESHAPE_RANK:
            raise _fail(node, f"{key} must be an axis in [0, {MAX_RESHAPE_RANK}), got {_short(value)}")
        return value
    if kind == "count":
        if not isinstance(value, int) or not 0 <= value <= MAX_GRAPH_DIM:
            raise _fail(node, f"{key} must be an integer in [0, {MAX_GRAPH_DIM}], got {_short(value)}")
        return value
    if kind == "int" or (kind == "dim" and not isinstance(value, str)):
        if not isinstance(value, int) or not 1 <= value <= MAX_GRAPH_DIM:
            raise _fail(node, f"{key} must be an integer in [1, {MAX_GRAPH_DIM}], got {_short(value)}")
        return value
    if kind == "dim":
        if value != CLASSES:
            raise _fail(node, f"{key} must be an integer or {CLASSES!r}, got {_short(value)}")
        return value
    if kind == "str":
        if not isinstance(value, str) or (value and not _NAME_RE.fullmatch(value)):
            raise _fail(node, f"{key} must be a name matching {_NAME_RE.pattern}, got {_short(value)}")
        return value
    # shape
    if (not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_RESHAPE_RANK
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_GRAPH_DIM for v in value)):
        raise _fail(node, f"{key} must list 1 to {MAX_RESHAPE_RANK} integers in [1, {MAX_GRAPH_DIM}], got {_short(value)}")
    return tuple(value)


def parse_node(raw: Any, position: int) -> Node:
    """One node from its TOML table or canonical map; unknown or missing keys are errors."""
    if not isinstance(raw, Mapping):
        raise InvalidTask(f"model graph node #{position} must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidTask(f"model graph node #{position}: name must match {_NAME_RE.pattern} in full, got {_short(name)}")
    if name in (INPUT, TARGETS):
        raise _fail(name, f"{INPUT!r} and {TARGETS!r} name the batch, not a node")
    op = raw.get("op")
    if not isinstance(op, str) or op not in _ATTRS:
        raise _fail(name, f"unknown op {_short(op)}; ops: {list(GRAPH_OPS)}")
    schema = _ATTRS[op]
    unknown = sorted(set(raw) - {"op", "name", "in"} - set(schema))
    if unknown:
        raise _fail(name, f"unknown key(s) {_short(unknown)} for op {op}; known: {sorted(schema)}")
    inputs = raw.get("in")
    if (not isinstance(inputs, (list, tuple)) or len(inputs) != _ARITY[op]
            or not all(isinstance(v, str) and len(v) <= 64 for v in inputs)):
        raise _fail(name, f"in must list {_ARITY[op]} value name(s), got {_short(inputs)}")
    attrs = []
    for key, (kind, default) in sorted(schema.items()):
        if key in raw:
            attrs.append((key, _parse_attr(name, key, kind, raw[key])))
        elif default is None:
            raise _fail(name, f"op {op} needs {key}")
        else:
            attrs.append((key, default))
    return Node(op=op, name=name, inputs=tuple(inputs), attrs=tuple(attrs))


def parse_graph(raw: Mapping[str, Any]) -> GraphConfig:
    """The ``[model]`` table of the ``graph`` family (``family`` already checked)."""
    unknown = sorted(set(raw) - {"family", "context", "nodes"})
    if unknown:
        raise InvalidTask(f"[model] has unknown key(s) {_short(unknown)}; known for family graph: ['context', 'nodes']")
    context = raw.get("context", 0)
    if not isinstance(context, int) or isinstance(context, bool) or not 0 <= context <= MAX_GRAPH_CONTEXT:
        raise InvalidTask(f"[model] context must be an integer in [0, {MAX_GRAPH_CONTEXT}]")
    nodes = raw.get("nodes")
    if not isinstance(nodes, (list, tuple)) or not 1 <= len(nodes) <= MAX_GRAPH_NODES:
        raise InvalidTask(f"[model] nodes must list 1 to {MAX_GRAPH_NODES} nodes")
    return GraphConfig(context=context, nodes=tuple(parse_node(n, i) for i, n in enumerate(nodes)))


def get_graph_canonical(graph: GraphConfig) -> dict[str, Any]:
    """The normalized ``[model]`` map of a graph: every node with all its attributes."""
    nodes = []
    for n in graph.nodes:
        doc: dict[str, Any] = {"op": n.op, "name": n.name, "in": list(n.inputs)}
        for key, value in n.attrs:
            doc[key] = list(value) if isinstance(value, tuple) else value
        nodes.append(doc)
    return {"family": "graph", "context": graph.context, "nodes": nodes}


def make_node(op: str, name: str, inputs: Sequence[str], **attrs: Any) -> Node:
    """A node built in code (presets, family expansion), checked like a parsed one."""
    return parse_node({"op": op, "name": name, "in": list(inputs), **attrs}, 0)


# --- analysis ---------------------------------------------------------------------------------

def _dim(value: Any, classes: int) -> int:
    return classes if value == CLASSES else int(value)


def analyze_graph(graph: GraphConfig, data: GraphInput) -> GraphInfo:
    """Shapes, parameters and cost of ``graph`` on ``data``; raises ``InvalidTask`` naming the node."""
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {INPUT: ("f32" if data.kind == "image" else "tok", data.shape),
                                                       TARGETS: ("tok", () if data.kind == "image" else data.shape)}
    uses: dict[str, int] = {INPUT: 0, TARGETS: 0}
    params: dict[str, ParamInfo] = {}
    param_uses: dict[str, int] = {}
    out_shapes: list[tuple[str, tuple[int, ...]]] = []
    flops = 0
    acts = 0
    nodes = graph.nodes
    for index, node in enumerate(nodes):
        name = node.name
        if name in shapes:
            raise _fail(name, "a value of this name is already defined")
        ins = []
        for src in node.inputs:
            if src not in shapes:
                raise _fail(name, f"reads {src!r}, which no earlier node defines")
            uses[src] += 1
            ins.append(shapes[src])
        if TARGETS in node.inputs and (node.op != "cross_entropy" or node.inputs[1] != TARGETS):
            raise _fail(name, f"{TARGETS!r} is read only as the second input of cross_entropy")
        if node.op == "cross_entropy":
            if index != len(nodes) - 1:
                raise _fail(name, "cross_entropy is the loss: it must be the last node")
            if node.inputs[1] != TARGETS:
                raise _fail(name, f"cross_entropy's second input must be {TARGETS!r}")
        elif index == len(nodes) - 1:
            raise _fail(name, "the last node must be the loss (cross_entropy)")
        new_params: list[ParamInfo] = []
        dtype, shape, node_flops = _infer(node, ins, data, new_params, params, param_uses)
        for p in new_params:
            if p.name in params:
                raise _fail(name, f"parameter {p.name!r} is already defined")
            if math.prod(p.shape) > MAX_TENSOR_ELEMENTS:
                raise _fail(name, f"parameter {p.name!r} has more than {MAX_TENSOR_ELEMENTS} elements")
            params[p.name] = p
            param_uses[p.name] = param_uses.get(p.name, 0) + 1
        count = math.prod(shape)
        if count > MAX_TENSOR_ELEMENTS:
            raise _fail(name, f"output of {count} elements per example exceeds {MAX_TENSOR_ELEMENTS}")
        shapes[name] = (dtype, shape)
        uses[name] = 0
        out_shapes.append((name, shape))
        flops += node_flops
        acts += count
    if uses[INPUT] == 0:
        raise InvalidTask(f"model graph never reads {INPUT!r}")
    for value, n in uses.items():
        if value != nodes[-1].name and value not in (INPUT, TARGETS) and n == 0:
            raise _fail(value, "its output is never read (every node but the loss must feed another)")
        if n > 2:
            raise _fail(value, f"its output is read {n} times; a value has at most two consumers")
    for pname, n in param_uses.items():
        if n > 2:
            raise InvalidTask(f"model graph parameter {pname!r} is used by {n} nodes; at most two")
    ordered = tuple(sorted(params.values(), key=lambda p: p.name.encode("ascii")))
    return GraphInfo(ordered, tuple(out_shapes), flops, acts,
                     tuple(sorted(param_uses.items(), key=lambda kv: kv[0].encode("ascii"))))


def _uniform(name: str, shape: tuple[int, ...], bound: float, fan_in: int) -> ParamInfo:
    if bound == 0.0:
        return ParamInfo(name, shape, "uniform", 1.0 / math.sqrt(fan_in), fan_in)
    return ParamInfo(name, shape, "uniform", bound, 0)


def _check_bound(node: Node, positive: bool) -> float:
    bound = float(node.get("bound"))
    low_ok = bound > 0.0 if positive else bound >= 0.0
    if not (low_ok and bound <= 1000.0):
        raise _fail(node.name, f"bound must be in {'(0' if positive else '[0'}, 1000], got {bound!r}")
    return bound


def _infer(node: Node, ins: list[tuple[str, tuple[int, ...]]], data: GraphInput, new: list[ParamInfo],
           params: Mapping[str, ParamInfo], param_uses: dict[str, int]) -> tuple[str, tuple[int, ...], int]:
    """(dtype, shape, multiply-adds) of one node's output; appends the node's own parameters to ``new``."""
    op, name = node.op, node.name
    dtype, shape = ins[0]
    if op not in ("embedding", "reshape", "flatten") and dtype != "f32":
        raise _fail(name, f"{op} needs a float32 input, {node.inputs[0]!r} holds token ids")
    count = math.prod(shape)
    if op == "linear":
        if len(shape) < 1:
            raise _fail(name, "linear needs an input with a feature axis")
        fan_in, out = shape[-1], _dim(node.get("out"), data.classes)
        shared = node.get("weight")
        bound = _check_bound(node, positive=False)
        if shared:
            if shared not in params:
                raise _fail(name, f"weight {shared!r} names no parameter of an earlier node")
            if params[shared].shape != (out, fan_in):
                raise _fail(name, f"shared weight {shared!r} has shape {list(params[shared].shape)}, "
                                  f"this layer needs {[out, fan_in]}")
            if bound != 0.0:
                raise _fail(name, "a shared weight is initialised by its owner: bound must be 0")
            param_uses[shared] += 1
        else:
            new.append(_uniform(f"{name}.weight", (out, fan_in), bound, fan_in))
        if node.get("bias"):
            new.append(ParamInfo(f"{name}.bias", (out,), "zeros", 0.0, 0))
        return "f32", shape[:-1] + (out,), (count // fan_in) * fan_in * out
    if op == "conv2d":
        if len(shape) != 3:
            raise _fail(name, f"conv2d needs a [C, H, W] input per example, got {list(shape)}")
        c, h, w = shape
        k, out, stride = node.get("kernel"), node.get("out"), node.get("stride")
        if k not in (1, 3, 5, 7):
            raise _fail(name, f"kernel must be 1, 3, 5 or 7, got {k}")
        pad = get_conv_padding(node)
        if stride > 7 or pad >= k:
            raise _fail(name, f"stride must be in [1, 7] and padding below the kernel {k}, got {stride} and {pad}")
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if ho < 1 or wo < 1:
            raise _fail(name, f"a {k}x{k} kernel does not fit the padded {h}x{w} input")
        bound = _check_bound(node, positive=False)
        new.append(_uniform(f"{name}.weight", (out, c, k, k), bound, c * k * k))
        new.append(ParamInfo(f"{name}.bias", (out,), "zeros", 0.0, 0))
        return "f32", (out, ho, wo), ho * wo * out * c * k * k
    if op in ("relu", "tanh", "gelu"):
        return "f32", shape, count
    if op == "layer_norm":
        if len(shape) < 1:
            raise _fail(name, "layer_norm needs an input with a feature axis")
        new.append(ParamInfo(f"{name}.weight", (shape[-1],), "ones", 0.0, 0))
        new.append(ParamInfo(f"{name}.bias", (shape[-1],), "zeros", 0.0, 0))
        return "f32", shape, 4 * count
    if op == "embedding":
        if dtype != "tok":
            raise _fail(name, "embedding needs token ids")
        vocab, dim = _dim(node.get("vocab"), data.classes), node.get("dim")
        if vocab < data.classes:
            raise _fail(name, f"vocab {vocab} is smaller than the data set's {data.classes} tokens")
        new.append(ParamInfo(name, (vocab, dim), "uniform", _check_bound(node, positive=True), 0))
        # the backward is a one-hot matmul over the whole vocabulary (§10.5)
        return "f32", shape + (dim,), count * vocab * dim
    if op == "pos_embedding":
        if len(shape) != 2:
            raise _fail(name, f"pos_embedding needs a [T, d] input per example, got {list(shape)}")
        new.append(ParamInfo(name, shape, "uniform", _check_bound(node, positive=True), 0))
        return "f32", shape, count
    if op in ("causal_attention", "attention"):
        heads = node.get("heads")
        if len(shape) != 2 or shape[1] % 3 != 0 or (shape[1] // 3) % heads != 0:
            raise _fail(name, f"{op} needs a [T, 3d] input with d divisible by heads={heads}, got {list(shape)}")
        t, d = shape[0], shape[1] // 3
        return "f32", (t, d), 2 * t * t * d + heads * t * t
    if op == "rms_norm":
        if len(shape) < 1:
            raise _fail(name, "rms_norm needs an input with a feature axis")
        new.append(ParamInfo(f"{name}.weight", (shape[-1],), "ones", 0.0, 0))
        return "f32", shape, 3 * count
    if op == "swiglu":
        if len(shape) < 1 or shape[-1] % 2:
            raise _fail(name, f"swiglu needs an even last axis (gate and value halves), got {list(shape)}")
        return "f32", shape[:-1] + (shape[-1] // 2,), 4 * count
    if op == "mean_pool":
        axis = node.get("axis")
        if axis >= len(shape):
            raise _fail(name, f"axis {axis} is not an axis of {list(shape)}")
        return "f32", shape[:axis] + shape[axis + 1:], count
    if op == "patches":
        size = node.get("size")
        if len(shape) != 3 or shape[1] % size or shape[2] % size:
            raise _fail(name, f"patches of size {size} need a [C, H, W] input with H and W multiples of it, "
                              f"got {list(shape)}")
        c, h, w = shape
        return "f32", ((h // size) * (w // size), c * size * size), 0
    if op == "rotary":
        heads = node.get("heads")
        if len(shape) != 2 or shape[1] % 3 != 0 or (shape[1] // 3) % heads != 0:
            raise _fail(name, f"rotary needs a [T, 3d] input with d divisible by heads={heads}, got {list(shape)}")
        head_dim = shape[1] // 3 // heads
        dims = node.get("dims") or head_dim
        if dims % 2 or dims > head_dim:
            raise _fail(name, f"dims must be even and at most the head width {head_dim}, got {dims}")
        if shape[0] > MAX_GRAPH_CONTEXT:  # every angle t * inv_freq stays inside the sin/cos domain
            raise _fail(name, f"rotary positions reach at most {MAX_GRAPH_CONTEXT}, the input has {shape[0]}")
        base = float(node.get("base"))
        if not 1.0 <= base <= MAX_ROTARY_BASE:
            raise _fail(name, f"base must be in [1, {MAX_ROTARY_BASE:g}], got {base!r}")
        return "f32", shape, count
    if op == "cls_token":
        if len(shape) != 2:
            raise _fail(name, f"cls_token needs a [T, d] input per example, got {list(shape)}")
        new.append(ParamInfo(name, (1, 1, shape[1]), "uniform", _check_bound(node, positive=True), 0))
        return "f32", (shape[0] + 1, shape[1]), count + shape[1]
    if op == "select":
        axis, index = node.get("axis"), node.get("index")
        if axis >= len(shape) or index >= shape[axis]:
            raise _fail(name, f"cannot select index {index} of axis {axis} of {list(shape)}")
        return "f32", shape[:axis] + shape[axis + 1:], count // shape[axis]
    if op == "dropout":
        p = float(node.get("p"))
        if not 0.0 <= p < 1.0:
            raise _fail(name, f"p must be in [0, 1), got {p!r}")
        return "f32", shape, count
    if op == "add":
        if ins[1] != ins[0]:
            raise _fail(name, f"add needs two float32 inputs of one shape, got {list(shape)} and {list(ins[1][1])}")
        return "f32", shape, count
    if op == "reshape":
        target = tuple(node.get("shape"))
        if dtype != "f32" or math.prod(target) != count:
            raise _fail(name, f"cannot reshape {list(shape)} ({count} elements) to {list(target)}")
        return "f32", target, 0
    if op == "flatten":
        if dtype != "f32":
            raise _fail(name, "flatten needs a float32 input")
        return "f32", (count,), 0
    # cross_entropy
    width = shape[-1] if shape else 0
    if not shape or width < data.classes:
        raise _fail(name, f"logits {list(shape)} need a last axis of at least the {data.classes} classes")
    if ins[1][1] != shape[:-1]:
        raise _fail(name, f"targets of shape {list(ins[1][1])} do not match logits {list(shape)}")
    return "f32", (), 4 * count


def get_conv_padding(node: Node) -> int:
    """A conv2d node's zero padding: ``"same"`` is kernel div 2."""
    pad = node.get("padding")
    return int(node.get("kernel")) // 2 if pad == "same" else int(pad)


def get_graph_dropout_sites(graph: GraphConfig) -> dict[str, int]:
    """Dropout site of each dropout node: its position among the graph's dropout nodes."""
    return {n.name: i for i, n in enumerate(n for n in graph.nodes if n.op == "dropout")}


# --- the built-in families as graphs ----------------------------------------------------------

def get_family_graph(family: str, model: Any) -> GraphConfig:
    """The graph of a built-in family config (SPEC.md §11.2): same parameters, ops and order."""
    nodes: list[Node] = []

    def add(op: str, name: str, inputs: Sequence[str], **attrs: Any) -> str:
        nodes.append(make_node(op, name, inputs, **attrs))
        return name

    if family == "mlp":
        h = INPUT
        layers = len(model.hidden) + 1
        for i, width in enumerate([*model.hidden, CLASSES]):
            h = add("linear", f"fc{i}", [h], out=width)
            if i < layers - 1:
                h = add(model.activation, f"act{i}", [h])
        add("cross_entropy", "loss", [h, TARGETS])
        return GraphConfig(0, tuple(nodes))
    if family == "cnn":
        h = add("reshape", "image", [INPUT], shape=[1, 8, 8])
        for i, c in enumerate(model.channels):
            h = add("conv2d", f"conv{i}", [h], out=c, kernel=model.kernel)
            h = add(model.activation, f"conv{i}.act", [h])
        h = add("flatten", "flat", [h])
        h = add(model.activation, "fc0.act", [add("linear", "fc0", [h], out=model.hidden)])
        add("cross_entropy", "loss", [add("linear", "fc1", [h], out=CLASSES), TARGETS])
        return GraphConfig(0, tuple(nodes))
    if family == "transformer":
        d, p = model.d_model, model.dropout
        h = add("embedding", "tok_emb", [INPUT], vocab=CLASSES, dim=d, bound=0.1)
        h = add("pos_embedding", "pos_emb", [h], bound=0.1)
        h = add("dropout", "emb.drop", [h], p=p)
        for i in range(model.n_layers):
            pre = f"h{i}."
            a = add("layer_norm", pre + "ln1", [h])
            a = add("linear", pre + "attn.qkv", [a], out=3 * d)
            a = add("causal_attention", pre + "attn", [a], heads=model.n_heads)
            a = add("dropout", pre + "attn.drop", [add("linear", pre + "attn.proj", [a], out=d)], p=p)
            h = add("add", pre + "res1", [h, a])
            f = add("layer_norm", pre + "ln2", [h])
            f = add("gelu", pre + "mlp.act", [add("linear", pre + "mlp.fc", [f], out=model.d_ff)])
            f = add("dropout", pre + "mlp.drop", [add("linear", pre + "mlp.proj", [f], out=d)], p=p)
            h = add("add", pre + "res2", [h, f])
        h = add("layer_norm", "ln_f", [h])
        add("cross_entropy", "loss", [add("linear", "head", [h], out=CLASSES, bias=False), TARGETS])
        return GraphConfig(model.context, tuple(nodes))
    raise InvalidTask(f"unknown model family {family!r}")
