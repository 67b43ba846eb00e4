"""Model graphs in the task (SPEC.md §11.1, §18.2): parsing, canonical form, shapes, parameter
lists and counts, and a specific refusal naming the node for every malformed graph."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from protocol.budget import get_task_cost, get_task_graph_info, validate_task_cost
from protocol.constants import MAX_STATE_BYTES
from protocol.encoding import encode_canonical
from protocol.errors import InvalidTask, OverBudget
from protocol.graph import MAX_GRAPH_NODES, GraphInput, analyze_graph
from protocol.presets import get_preset_graph, get_preset_task
from protocol.task import (
    compute_task_id,
    decode_task,
    encode_task,
    format_task_toml,
    get_model_graph,
    get_task_canonical,
    parse_task,
    parse_task_toml,
)

DIGITS = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
PYDOC = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"

MLP_GRAPH = f"""
[task]
name = "graph-mlp"
seed = 1
total_steps = 10
checkpoint_interval = 5
batch_size = 8

[model]
family = "graph"

[[model.nodes]]
op = "linear"
name = "fc0"
in = ["input"]
out = 32

[[model.nodes]]
op = "relu"
name = "act0"
in = ["fc0"]

[[model.nodes]]
op = "linear"
name = "fc1"
in = ["act0"]
out = "classes"

[[model.nodes]]
op = "cross_entropy"
name = "loss"
in = ["fc1", "targets"]

[data]
adapter = "sklearn-digits"
sha256 = "{DIGITS}"
"""


def doc() -> dict[str, Any]:
    return copy.deepcopy(get_task_canonical(parse_task_toml(MLP_GRAPH)))


def refused(d: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidTask, match=match):
        parse_task(d)


def test_graph_task_round_trips_and_hashes_its_normalized_form() -> None:
    task = parse_task_toml(MLP_GRAPH)
    canonical = get_task_canonical(task)
    # defaults are filled in: every attribute of every node is in the hashed document
    assert canonical["model"]["nodes"][0] == {"op": "linear", "name": "fc0", "in": ["input"], "out": 32,
                                              "bias": True, "weight": "", "bound": 0.0}
    assert canonical["model"]["context"] == 0
    again = parse_task_toml(format_task_toml(task))
    assert again == task and compute_task_id(again) == compute_task_id(task)
    assert decode_task(encode_task(task)) == task
    # a changed attribute is another task
    changed = doc()
    changed["model"]["nodes"][0]["out"] = 33
    assert compute_task_id(parse_task(changed)) != compute_task_id(task)
    info = get_task_graph_info(task)
    assert [(p.name, p.shape) for p in info.params] == [
        ("fc0.bias", (32,)), ("fc0.weight", (32, 64)), ("fc1.bias", (10,)), ("fc1.weight", (10, 32))]
    assert info.param_count == 64 * 32 + 32 + 32 * 10 + 10
    assert info.params[1].init == "uniform" and info.params[1].bound == 1 / 64 ** 0.5 and info.params[1].fan_in == 64


def test_the_families_expand_to_their_spec_parameter_lists() -> None:
    """§11.2: the expansion has exactly the parameters the family text lists (names, shapes, rules)."""
    tf = parse_task_toml(MLP_GRAPH.replace('family = "graph"', 'family = "transformer"\nd_model = 16\n'
                                           'n_layers = 2\nn_heads = 2\nd_ff = 24\ncontext = 8')
                         .split("[[model.nodes]]")[0] + f'[data]\nadapter = "pydoc-topics"\nsha256 = "{PYDOC}"\n')
    params = {p.name: (p.shape, p.init, p.bound) for p in analyze_graph(
        get_model_graph(tf), GraphInput("tokens", (8,), 100)).params}
    d = 16
    want = {"tok_emb": ((100, d), "uniform", 0.1), "pos_emb": ((8, d), "uniform", 0.1),
            "ln_f.weight": ((d,), "ones", 0.0), "ln_f.bias": ((d,), "zeros", 0.0),
            "head.weight": ((100, d), "uniform", 1 / d ** 0.5)}
    for i in range(2):
        p = f"h{i}."
        want |= {p + "ln1.weight": ((d,), "ones", 0.0), p + "ln1.bias": ((d,), "zeros", 0.0),
                 p + "ln2.weight": ((d,), "ones", 0.0), p + "ln2.bias": ((d,), "zeros", 0.0),
                 p + "attn.qkv.weight": ((3 * d, d), "uniform", 1 / d ** 0.5), p + "attn.qkv.bias": ((3 * d,), "zeros", 0.0),
                 p + "attn.proj.weight": ((d, d), "uniform", 1 / d ** 0.5), p + "attn.proj.bias": ((d,), "zeros", 0.0),
                 p + "mlp.fc.weight": ((24, d), "uniform", 1 / d ** 0.5), p + "mlp.fc.bias": ((24,), "zeros", 0.0),
                 p + "mlp.proj.weight": ((d, 24), "uniform", 1 / 24 ** 0.5), p + "mlp.proj.bias": ((d,), "zeros", 0.0)}
    assert params == want


def gpt2_count(vocab: int, ctx: int, d: int, layers: int, tied: bool) -> int:
    """GPT-2's parameter count by hand: embeddings, per block 2 LNs, qkv, proj, 4d MLP, final LN."""
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab * d + ctx * d + layers * block + 2 * d + (0 if tied else vocab * d)


def test_gpt2_small_has_the_published_parameter_count() -> None:
    data = GraphInput("tokens", (1024,), 256)
    tied = analyze_graph(get_preset_graph("gpt2-small"), data)
    assert tied.param_count == 124_439_808 == gpt2_count(50257, 1024, 768, 12, True)
    assert dict(tied.param_uses)["tok_emb"] == 2  # the head reads the token table
    assert "head.weight" not in {p.name for p in tied.params}
    untied = analyze_graph(get_preset_graph("gpt2-small", {"tied": False}), data)
    assert untied.param_count == 163_037_184 == gpt2_count(50257, 1024, 768, 12, False)
    # any width/depth/context/vocab
    small = analyze_graph(get_preset_graph("gpt2", {"d_model": 48, "n_layers": 3, "n_heads": 3, "context": 32,
                                                    "vocab": 1000}), GraphInput("tokens", (32,), 256))
    assert small.param_count == gpt2_count(1000, 32, 48, 3, True)
    assert dict(small.shapes)["h2.attn"] == (32, 48) and dict(small.shapes)["head"] == (32, 1000)


def test_gpt2_small_is_a_valid_task_that_a_default_node_declines_before_anything_is_allocated() -> None:
    task = parse_task(get_preset_task("gpt2-small", {}, PYDOC))
    cost = get_task_cost(task)
    # 124,439,808 parameters, AdamW's two slots and the step: 4·3·params + 8 bytes (SPEC §18.2)
    assert cost.state_bytes == 4 * 3 * 124_439_808 + 8 == 1_493_277_704 <= MAX_STATE_BYTES
    with pytest.raises(OverBudget, match="state of 1,493,277,704 exceeds this node.s budget"):
        validate_task_cost(task, max_state_bytes=256 * 1024 * 1024)  # a node's default budget
    # a larger decoder (GPT-2 medium's shape) is past the protocol's own limit: nobody may post it
    medium = get_preset_task("gpt2", {"d_model": 1024, "n_layers": 24, "n_heads": 16, "context": 1024,
                                      "vocab": 50257}, PYDOC)
    with pytest.raises(InvalidTask, match="exceeds the protocol limit"):
        parse_task(medium)


def test_graph_cost_plugs_into_the_budgets() -> None:
    task = parse_task_toml(MLP_GRAPH)
    cost = get_task_cost(task)
    params = 64 * 32 + 32 + 32 * 10 + 10
    assert cost.params == params and cost.state_bytes == 4 * params + 8  # plain SGD: no optimizer slots
    # §18.2 by hand: per example fc0 64·32, relu 32, fc1 32·10, cross-entropy 4·10 multiply-adds
    per_example = 64 * 32 + 32 + 32 * 10 + 4 * 10
    assert cost.step_flops == 6 * 8 * per_example + 16 * params and cost.segment_flops == 5 * cost.step_flops
    assert cost.activation_bytes == 4 * 8 * (32 + 32 + 10 + 1)
    with pytest.raises(OverBudget):
        validate_task_cost(task, max_segment_flops=cost.segment_flops - 1)
    with pytest.raises(OverBudget, match="activations of 2,400 bytes per step exceed this node's budget"):
        validate_task_cost(task, max_activation_bytes=2399)


def node(d: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in d["model"]["nodes"] if n["name"] == name)


def test_malformed_graphs_are_refused_naming_the_node() -> None:
    d = doc()
    node(d, "fc1")["op"] = "softmax_fancy"
    refused(d, "node 'fc1': unknown op 'softmax_fancy'")
    d = doc()
    node(d, "fc1")["in"] = ["nowhere"]
    refused(d, "node 'fc1': reads 'nowhere', which no earlier node defines")
    d = doc()
    d["model"]["nodes"][1]["name"] = "fc0"
    refused(d, "node 'fc0': a value of this name is already defined")
    d = doc()
    node(d, "fc0")["kernel"] = 3
    refused(d, r"node 'fc0': unknown key\(s\) \['kernel'\] for op linear")
    d = doc()
    node(d, "fc0")["out"] = True
    refused(d, "node 'fc0': out must not be a boolean")
    d = doc()
    node(d, "fc0")["out"] = 2**21
    refused(d, r"node 'fc0': out must be an integer in \[1, 1048576\]")
    d = doc()
    del node(d, "fc0")["out"]
    refused(d, "node 'fc0': op linear needs out")
    d = doc()
    node(d, "fc0")["name"] = "x" * 65
    refused(d, "node #0: name must match")
    d = doc()
    d["model"]["nodes"].insert(2, {"op": "add", "name": "bad", "in": ["fc0", "act0x"]})
    refused(d, "node 'bad': reads 'act0x'")
    d = doc()
    d["model"]["nodes"].insert(2, {"op": "add", "name": "bad", "in": ["act0", "input"]})
    refused(d, r"node 'bad': add needs two float32 inputs of one shape, got \[32\] and \[64\]")
    d = doc()
    node(d, "fc1")["out"] = 5
    refused(d, r"node 'loss': logits \[5\] need a last axis of at least the 10 classes")
    d = doc()
    d["model"]["nodes"].insert(2, {"op": "tanh", "name": "dead", "in": ["act0"]})
    refused(d, "node 'dead': its output is never read")
    d = doc()
    d["model"]["nodes"] = d["model"]["nodes"][:3]
    refused(d, "node 'fc1': the last node must be the loss")
    d = doc()
    node(d, "loss")["in"] = ["fc1", "fc1"]
    refused(d, "node 'loss': cross_entropy's second input must be 'targets'")
    d = doc()
    node(d, "fc0")["in"] = ["targets"]
    refused(d, "node 'fc0': 'targets' is read only as the second input of cross_entropy")
    d = doc()
    d["model"]["nodes"][2:2] = [{"op": "add", "name": "a", "in": ["act0", "act0"]}]
    node(d, "fc1")["in"] = ["act0"]
    refused(d, "node 'act0': its output is read 3 times")
    d = doc()
    node(d, "fc1")["weight"] = "fc0.weight"
    refused(d, r"node 'fc1': shared weight 'fc0.weight' has shape \[32, 64\], this layer needs \[10, 32\]")
    d = doc()
    node(d, "fc0")["op"] = "conv2d"
    del node(d, "fc0")["bias"], node(d, "fc0")["weight"]
    refused(d, r"node 'fc0': conv2d needs a \[C, H, W\] input per example, got \[64\]")
    d = doc()
    d["model"]["nodes"].insert(0, {"op": "reshape", "name": "img", "in": ["input"], "shape": [1, 8, 9]})
    refused(d, r"node 'img': cannot reshape \[64\] \(64 elements\) to \[1, 8, 9\]")
    d = doc()
    d["model"]["context"] = 8
    refused(d, "a graph on an image dataset takes no context")
    d = doc()
    d["model"]["nodes"] = [d["model"]["nodes"][0]] * (MAX_GRAPH_NODES + 1)
    refused(d, "nodes must list 1 to 1024 nodes")
    d = doc()
    node(d, "fc1")["op"] = "x" * 60000  # a hostile task's strings stay out of the message
    with pytest.raises(InvalidTask) as info:
        parse_task(d)
    assert "unknown op 'xxx" in str(info.value) and len(str(info.value)) < 400
    d = doc()
    d["model"]["depth"] = 3
    refused(d, r"\[model\] has unknown key\(s\) \['depth'\]")
    d = doc()
    node(d, "fc0")["out"] = 1 << 20
    node(d, "fc1")["out"] = 1 << 20
    refused(d, "parameter 'fc1.weight' has more than 268435456 elements")


def test_token_graph_shapes_and_refusals() -> None:
    gpt = get_preset_task("gpt2", {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 8}, PYDOC)
    task = parse_task(gpt)
    assert task.model.context == 8  # type: ignore[union-attr]
    bad = copy.deepcopy(gpt)
    node(bad, "h0.attn")["heads"] = 3
    refused(bad, r"node 'h0.attn': causal_attention needs a \[T, 3d\] input with d divisible by heads=3")
    bad = copy.deepcopy(gpt)
    bad["model"]["context"] = 0
    refused(bad, "needs context >= 2")
    bad = copy.deepcopy(gpt)
    node(bad, "h0.ln1")["in"] = ["input"]
    refused(bad, "node 'h0.ln1': layer_norm needs a float32 input, 'input' holds token ids")
    bad = copy.deepcopy(gpt)
    node(bad, "h0.attn.drop")["p"] = 1.0
    refused(bad, r"node 'h0.attn.drop': p must be in \[0, 1\)")


def test_canonical_bytes_of_a_graph_model_table() -> None:
    """The model table's canonical msgpack, byte by byte for a one-node-plus-loss graph (§2, §11.1)."""
    d = get_task_canonical(parse_task_toml(MLP_GRAPH))["model"]
    d["nodes"] = d["nodes"][-1:]
    enc = encode_canonical(d)
    # {"context": 0, "family": "graph", "nodes": [{"in": ["fc1", "targets"], "name": "loss", "op": "cross_entropy"}]}
    want = (b"\x83\xa7context\x00\xa6family\xa5graph\xa5nodes\x91\x83\xa2in\x92\xa3fc1\xa7targets"
            b"\xa4name\xa4loss\xa2op\xadcross_entropy")
    assert enc == want


def test_preset_overrides_are_checked() -> None:
    with pytest.raises(InvalidTask, match="preset gpt2 has no parameter 'width'"):
        get_preset_graph("gpt2", {"width": 3})
    with pytest.raises(InvalidTask, match="d_model must be a multiple of n_heads"):
        get_preset_graph("gpt2", {"d_model": 10, "n_heads": 4})
    with pytest.raises(InvalidTask, match="unknown preset"):
        get_preset_graph("gpt5")
    assert dataclasses.is_dataclass(get_preset_graph("resnet", {"blocks": 1}))
