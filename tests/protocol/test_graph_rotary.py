"""Rotary positions and the class token in model graphs (SPEC.md §11.1, §11.3): shapes checked
with a refusal naming the node, the presets' options, and graphs without them unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import InvalidTask
from protocol.graph import GraphInput, analyze_graph, get_graph_canonical, make_node
from protocol.presets import get_preset_graph

TOKENS = GraphInput("tokens", (8,), 256)


def rope_graph(context: int = 8, **attrs: Any) -> Any:
    from protocol.graph import GraphConfig

    nodes = [make_node("embedding", "emb", ["input"], vocab="classes", dim=16),
             make_node("linear", "qkv", ["emb"], out=48),
             make_node("rotary", "rope", ["qkv"], **{"heads": 2, **attrs}),
             make_node("causal_attention", "attn", ["rope"], heads=2),
             make_node("linear", "head", ["attn"], out="classes"),
             make_node("cross_entropy", "loss", ["head", "targets"])]
    return GraphConfig(context, tuple(nodes))


def test_rotary_node_defaults_and_shape() -> None:
    g = rope_graph()
    rope = get_graph_canonical(g)["nodes"][2]
    assert rope == {"op": "rotary", "name": "rope", "in": ["qkv"], "heads": 2, "base": 10000.0, "dims": 0}
    info = analyze_graph(g, TOKENS)
    assert dict(info.shapes)["rope"] == (8, 48)
    assert not any(p.name.startswith("rope") for p in info.params)  # the tables are no parameter


@pytest.mark.parametrize("attrs,shape_in,match", [
    ({"dims": 3}, None, "dims must be even and at most the head width 8, got 3"),
    ({"dims": 10}, None, "dims must be even and at most the head width 8, got 10"),
    ({"base": 0.5}, None, r"base must be in \[1, 1e\+09\], got 0.5"),
    ({"base": float("nan")}, None, "base must be in"),
    ({"base": 2e9}, None, "base must be in"),
    ({"heads": 3}, None, "rotary needs a \\[T, 3d\\] input with d divisible by heads=3"),
    ({"dims": -2}, None, r"dims must be an integer in \[0, 1048576\]"),
    ({"dims": True}, None, "dims must not be a boolean"),
    ({}, 4097, "rotary positions reach at most 4096, the input has 4097"),
])
def test_malformed_rotary_is_refused_naming_the_node(attrs: dict[str, Any], shape_in: int | None, match: str) -> None:
    with pytest.raises(InvalidTask, match="node 'rope': " + match):
        g = rope_graph(context=shape_in or 8, **attrs)
        analyze_graph(g, GraphInput("tokens", (shape_in or 8,), 256))


def test_gpt2_rotary_preset_has_no_position_table() -> None:
    learned = get_preset_graph("gpt2", {"d_model": 16, "n_heads": 2, "n_layers": 2, "context": 8})
    rotary = get_preset_graph("gpt2", {"d_model": 16, "n_heads": 2, "n_layers": 2, "context": 8,
                                       "positions": "rotary", "rotary_base": 500, "rotary_dims": 4})
    a, b = analyze_graph(learned, TOKENS), analyze_graph(rotary, TOKENS)
    assert {p.name for p in a.params} - {p.name for p in b.params} == {"pos_emb"}
    assert a.param_count - b.param_count == 8 * 16
    ropes = [n for n in get_graph_canonical(rotary)["nodes"] if n["op"] == "rotary"]
    assert [(n["name"], n["in"], n["base"], n["dims"], n["heads"]) for n in ropes] == [
        ("h0.attn.rope", ["h0.attn.qkv"], 500.0, 4, 2), ("h1.attn.rope", ["h1.attn.qkv"], 500.0, 4, 2)]
    # the default graph is the one every earlier task and vector holds: no rotary node, pos_emb kept
    assert all(n.op != "rotary" for n in learned.nodes) and learned.nodes[1].op == "pos_embedding"
    with pytest.raises(InvalidTask, match="positions must be one of"):
        get_preset_graph("gpt2", {"positions": "alibi"})
