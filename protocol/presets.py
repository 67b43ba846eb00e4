"""Model presets: common architectures as graphs (SPEC.md §11.3), and tasks built from them.

A preset is a function of a few integers to a ``GraphConfig``; nothing about it is special to
the protocol (the task carries the expanded graph, never the preset's name). ``get_preset_task``
fills in the rest of a task document so ``pol task new --preset NAME --set key=value`` can
print a complete task file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import InvalidTask
from .graph import CLASSES, INPUT, TARGETS, GraphConfig, Node, make_node


@dataclass(frozen=True)
class Preset:
    build: Callable[[Mapping[str, Any]], GraphConfig]
    defaults: Mapping[str, Any]  # the preset's own parameters and their defaults
    adapter: str  # the built-in data set it trains on by default
    about: str


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def __call__(self, op: str, name: str, inputs: list[str], **attrs: Any) -> str:
        self.nodes.append(make_node(op, name, inputs, **attrs))
        return name


def build_gpt2(p: Mapping[str, Any]) -> GraphConfig:
    """GPT-2: learned token and position embeddings, pre-LN blocks (causal attention, GELU MLP
    of width ``d_ff``, 4·d_model when 0), a final layer norm, and a head tied to the token
    embedding (``tied``) or a separate bias-free ``head`` linear. ``norm = "rms_norm"`` and
    ``mlp = "swiglu"`` give the Llama-style variant of the same decoder; ``positions = "rotary"``
    replaces the learned ``pos_emb`` by a ``rotary`` node on each block's q and k."""
    d, drop = int(p["d_model"]), float(p["dropout"])
    add = _Builder()
    h = add("embedding", "tok_emb", [INPUT], vocab=p["vocab"], dim=d, bound=float(p["emb_bound"]))
    if p["positions"] == "learned":
        h = add("pos_embedding", "pos_emb", [h], bound=float(p["emb_bound"]))
    h = add("dropout", "emb.drop", [h], p=drop)
    h = _blocks(add, h, p, "causal_attention")
    h = add(p["norm"], "ln_f", [h])
    if p["tied"]:
        h = add("linear", "head", [h], out=p["vocab"], bias=False, weight="tok_emb")
    else:
        h = add("linear", "head", [h], out=p["vocab"], bias=False)
    add("cross_entropy", "loss", [h, TARGETS])
    return GraphConfig(int(p["context"]), tuple(add.nodes))


def _blocks(add: _Builder, h: str, p: Mapping[str, Any], attention: str) -> str:
    """Pre-norm transformer blocks ``h{i}.``: norm, qkv, attention, proj, residual; norm, MLP
    (GELU of width d_ff, or SwiGLU: a 2·d_ff projection gated down to d_ff), residual."""
    d, heads, drop, norm = int(p["d_model"]), int(p["n_heads"]), float(p["dropout"]), str(p["norm"])
    d_ff = int(p["d_ff"]) or 4 * d
    for i in range(int(p["n_layers"])):
        pre = f"h{i}."
        a = add(norm, pre + "ln1", [h])
        a = add("linear", pre + "attn.qkv", [a], out=3 * d)
        if p.get("positions") == "rotary":
            a = add("rotary", pre + "attn.rope", [a], heads=heads, base=float(p["rotary_base"]),
                    dims=int(p["rotary_dims"]))
        a = add(attention, pre + "attn", [a], heads=heads)
        a = add("dropout", pre + "attn.drop", [add("linear", pre + "attn.proj", [a], out=d)], p=drop)
        h = add("add", pre + "res1", [h, a])
        f = add(norm, pre + "ln2", [h])
        if p["mlp"] == "swiglu":
            f = add("swiglu", pre + "mlp.act", [add("linear", pre + "mlp.fc", [f], out=2 * d_ff)])
        else:
            f = add("gelu", pre + "mlp.act", [add("linear", pre + "mlp.fc", [f], out=d_ff)])
        f = add("dropout", pre + "mlp.drop", [add("linear", pre + "mlp.proj", [f], out=d)], p=drop)
        h = add("add", pre + "res2", [h, f])
    return h


def build_vit(p: Mapping[str, Any]) -> GraphConfig:
    """A ViT-style encoder on square images of ``channels``·``side``² features: patches of
    ``patch``² pixels, a linear patch embedding, learned positions, pre-norm blocks with
    non-causal attention, a final norm, the mean over the patch tokens, a linear classifier. With
    ``pool = "cls"`` a learned class token is prepended to the patch tokens (before the position
    embedding) and the classifier reads its final state instead of the mean. ``positions =
    "rotary"`` rotates q and k by the token index (patches in row-major order, the class token
    first) instead of a learned ``pos_emb``."""
    side, patch, ch = int(p["side"]), int(p["patch"]), int(p["channels"])
    add = _Builder()
    h = add("reshape", "image", [INPUT], shape=[ch, side, side])
    h = add("linear", "patch_emb", [add("patches", "patches", [h], size=patch)], out=int(p["d_model"]))
    if p["pool"] == "cls":
        h = add("cls_token", "cls", [h])
    if p["positions"] == "learned":
        h = add("pos_embedding", "pos_emb", [h], bound=float(p["emb_bound"]))
    h = _blocks(add, h, p, "attention")
    h = add(p["norm"], "ln_f", [h])
    if p["pool"] == "cls":
        h = add("select", "pool", [h], axis=0, index=0)
    else:
        h = add("mean_pool", "pool", [h], axis=0)
    add("cross_entropy", "loss", [add("linear", "head", [h], out=CLASSES), TARGETS])
    return GraphConfig(0, tuple(add.nodes))


def build_resnet(p: Mapping[str, Any]) -> GraphConfig:
    """A ResNet-style CNN on square single-channel images of ``side``² features: a stem conv,
    ``stages`` stages of ``blocks`` residual blocks (conv, relu, conv, add the block input,
    relu); each stage after the first starts with a stride-2 conv at twice the width, its
    shortcut a stride-2 1x1 conv; then global average pooling (or flatten) and a linear
    classifier."""
    c, k, side = int(p["channels"]), int(p["kernel"]), int(p["side"])
    add = _Builder()
    h = add("reshape", "image", [INPUT], shape=[1, side, side])
    h = add("relu", "stem.act", [add("conv2d", "stem", [h], out=c, kernel=k)])
    for st in range(int(p["stages"])):
        for i in range(int(p["blocks"])):
            pre = f"s{st}.b{i}."
            down = st > 0 and i == 0
            if down:
                if side < 2:
                    raise InvalidTask("resnet: the image is too small for another stride-2 stage")
                c, side = 2 * c, (side + 1) // 2
            stride = 2 if down else 1
            r = add("relu", pre + "act1", [add("conv2d", pre + "conv1", [h], out=c, kernel=k, stride=stride)])
            r = add("conv2d", pre + "conv2", [r], out=c, kernel=k)
            skip = add("conv2d", pre + "down", [h], out=c, kernel=1, stride=2) if down else h
            h = add("relu", pre + "act2", [add("add", pre + "res", [skip, r])])
    if p["pool"]:  # global average pooling: the mean of each channel over its side² pixels
        h = add("mean_pool", "pool", [add("reshape", "pixels", [h], shape=[c, side * side])], axis=1)
    else:
        h = add("flatten", "flat", [h])
    add("cross_entropy", "loss", [add("linear", "head", [h], out=CLASSES), TARGETS])
    return GraphConfig(0, tuple(add.nodes))


_GPT2 = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 0, "context": 64, "vocab": CLASSES, "tied": True,
         "dropout": 0.0, "emb_bound": 0.1, "norm": "layer_norm", "mlp": "gelu", "positions": "learned",
         "rotary_base": 10000.0, "rotary_dims": 0}
_VIT = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 0, "dropout": 0.0, "emb_bound": 0.1, "norm": "layer_norm",
        "mlp": "gelu", "side": 8, "channels": 1, "patch": 2, "pool": "mean", "positions": "learned",
        "rotary_base": 10000.0, "rotary_dims": 0}
_CHOICES = {"norm": ("layer_norm", "rms_norm"), "mlp": ("gelu", "swiglu"), "positions": ("learned", "rotary"),
            "pool": ("mean", "cls")}
PRESETS: dict[str, Preset] = {
    "gpt2": Preset(build_gpt2, _GPT2, "pydoc-topics",
                   "GPT-2-style decoder of any width/depth/context/vocab (tied head by default)"),
    "gpt2-small": Preset(build_gpt2, {**_GPT2, "d_model": 768, "n_layers": 12, "n_heads": 12, "context": 1024,
                                      "vocab": 50257}, "pydoc-topics",
                         "GPT-2 small: 124,439,808 parameters with the tied head"),
    "resnet": Preset(build_resnet, {"channels": 16, "blocks": 2, "stages": 2, "kernel": 3, "side": 8, "pool": True},
                     "sklearn-digits", "ResNet-style CNN: stem conv, residual conv blocks, global average pool "
                     "(or flatten), linear classifier"),
    "vit": Preset(build_vit, _VIT, "sklearn-digits",
                  "ViT-style encoder: patch embedding, non-causal attention blocks, mean pool, classifier"),
}


def get_preset_graph(name: str, overrides: Mapping[str, Any] | None = None) -> GraphConfig:
    """The graph of preset ``name`` with some of its parameters replaced."""
    if name not in PRESETS:
        raise InvalidTask(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    preset = PRESETS[name]
    values = dict(preset.defaults)
    for key, value in (overrides or {}).items():
        if key not in values:
            raise InvalidTask(f"preset {name} has no parameter {key!r}; parameters: {sorted(values)}")
        default = values[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InvalidTask(f"preset parameter {key} must be true or false, got {value!r}")
        elif key in _CHOICES:
            if value not in _CHOICES[key]:
                raise InvalidTask(f"preset parameter {key} must be one of {list(_CHOICES[key])}, got {value!r}")
        elif key == "vocab":
            if value != CLASSES and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidTask(f"preset parameter vocab must be an integer or {CLASSES!r}, got {value!r}")
        elif isinstance(default, float):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidTask(f"preset parameter {key} must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidTask(f"preset parameter {key} must be a non-negative integer, got {value!r}")
        values[key] = value
    for key in ("n_layers", "blocks", "stages"):
        if key in values and not 1 <= values[key] <= 200:
            raise InvalidTask(f"preset parameter {key} must be in [1, 200]")
    if "n_heads" in values and (values["n_heads"] < 1 or values["d_model"] % values["n_heads"]):
        raise InvalidTask("preset parameter d_model must be a multiple of n_heads")
    return preset.build(values)


def get_preset_task(name: str, overrides: Mapping[str, Any] | None = None, dataset_sha256: str = "") -> dict[str, Any]:
    """A task document (the TOML tables as dicts) training preset ``name``.

    ``overrides`` holds preset parameters (``d_model``) and task keys as ``table.key``
    (``task.batch_size``, ``optim.lr``, ``data.adapter``)."""
    from .graph import get_graph_canonical

    preset_keys = {k: v for k, v in (overrides or {}).items() if "." not in k}
    doc: dict[str, Any] = {
        "task": {"name": name, "seed": 0, "total_steps": 100, "checkpoint_interval": 10, "batch_size": 8},
        "model": get_graph_canonical(get_preset_graph(name, preset_keys)),
        "data": {"adapter": PRESETS[name].adapter, "sha256": dataset_sha256},
        "optim": {"name": "adamw", "lr": 0.001},
        "schedule": {"name": "constant"},
    }
    for key, value in (overrides or {}).items():
        if "." not in key:
            continue
        table, _, field = key.partition(".")
        if table not in doc or table == "model":
            raise InvalidTask(f"--set {key}: tables are task, data, optim, schedule (model keys have no table)")
        doc[table][field] = value
    return doc
