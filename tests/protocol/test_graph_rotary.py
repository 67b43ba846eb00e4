"""Rotary positions and the class token in model graphs (SPEC.md §11.1, §11.3): shapes checked
with a refusal naming the node, the presets' options, and graphs without them unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import InvalidTask
from protocol.graph import GraphInput, analyze_graph, get_graph_canonical, make_node
from protocol.presets import get_preset_graph

TOKENS = GraphInput("tokens", (8,), 256)
DIGITS = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
PYDOC = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"


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


IMAGES = GraphInput("image", (64,), 10)


def test_vit_cls_preset_adds_one_token_and_reads_it() -> None:
    mean = get_preset_graph("vit", {"d_model": 12, "n_heads": 2, "n_layers": 1, "patch": 4})
    cls = get_preset_graph("vit", {"d_model": 12, "n_heads": 2, "n_layers": 1, "patch": 4, "pool": "cls"})
    a, b = analyze_graph(mean, IMAGES), analyze_graph(cls, IMAGES)
    pa, pb = {p.name: p for p in a.params}, {p.name: p for p in b.params}
    assert set(pb) - set(pa) == {"cls"}
    assert (pb["cls"].shape, pb["cls"].init, pb["cls"].bound) == ((1, 1, 12), "uniform", 0.02)
    assert pa["pos_emb"].shape == (4, 12) and pb["pos_emb"].shape == (5, 12)  # one row more for the token
    assert dict(b.shapes)["cls"] == (5, 12) and dict(b.shapes)["pool"] == (12,)
    pool = get_graph_canonical(cls)["nodes"][-3]
    assert pool == {"op": "select", "name": "pool", "in": ["ln_f"], "axis": 0, "index": 0}
    assert all(n.op != "cls_token" for n in mean.nodes)  # the default vit graph is unchanged
    with pytest.raises(InvalidTask, match="pool must be one of"):
        get_preset_graph("vit", {"pool": "max"})


def image_graph(**select: Any) -> Any:
    from protocol.graph import GraphConfig

    nodes = [make_node("reshape", "seq", ["input"], shape=[8, 8]),
             make_node("cls_token", "cls", ["seq"]),
             make_node("select", "pick", ["cls"], **select),
             make_node("linear", "head", ["pick"], out="classes"),
             make_node("cross_entropy", "loss", ["head", "targets"])]
    return GraphConfig(0, tuple(nodes))


@pytest.mark.parametrize("change,match", [
    ({"select": {"axis": 2}}, "node 'pick': cannot select index 0 of axis 2 of \\[9, 8\\]"),
    ({"select": {"index": 9}}, "node 'pick': cannot select index 9 of axis 0 of \\[9, 8\\]"),
    ({"select": {"index": -1}}, r"node 'pick': index must be an integer in \[0, 1048576\]"),
    ({"bound": 0.0}, r"node 'cls': bound must be in \(0, 1000\], got 0.0"),
    ({"shape": [64]}, r"node 'cls': cls_token needs a \[T, d\] input per example, got \[64\]"),
])
def test_malformed_class_token_or_select_is_refused_naming_the_node(change: dict[str, Any], match: str) -> None:
    from protocol.graph import GraphConfig

    with pytest.raises(InvalidTask, match=match):  # at parsing (make_node) or at analysis
        nodes = list(image_graph(**change.get("select", {})).nodes)
        if "bound" in change:
            nodes[1] = make_node("cls_token", "cls", ["seq"], bound=change["bound"])
        if "shape" in change:
            nodes[0] = make_node("reshape", "seq", ["input"], shape=change["shape"])
        analyze_graph(GraphConfig(0, tuple(nodes)), IMAGES)


def test_class_token_graph_shapes() -> None:
    info = analyze_graph(image_graph(index=8), IMAGES)
    assert dict(info.shapes)["cls"] == (9, 8) and dict(info.shapes)["pick"] == (8,)
    assert [p.name for p in info.params] == ["cls", "head.bias", "head.weight"]


def test_cli_presets_take_the_new_options(tmp_path: Any) -> None:
    """``pol task new --preset gpt2 --set positions=rotary`` and ``--preset vit --set pool=cls``
    write valid tasks (in-process)."""
    from pol.cli import main
    from protocol.task import get_task_canonical, parse_task_toml

    gpt, vit = tmp_path / "gpt.toml", tmp_path / "vit.toml"
    assert main(["task", "new", "--preset", "gpt2", "--set", "positions=rotary", "--set", "rotary_base=500",
                 "--set", "d_model=16", "--set", "n_heads=2", "--set", "context=8", "--set", f"data.sha256={PYDOC}",
                 "--out", str(gpt)]) == 0
    assert main(["task", "new", "--preset", "vit", "--set", "pool=cls", "--set", f"data.sha256={DIGITS}",
                 "--out", str(vit)]) == 0
    ops_gpt = [n["op"] for n in get_task_canonical(parse_task_toml(gpt.read_text()))["model"]["nodes"]]
    ops_vit = [n["op"] for n in get_task_canonical(parse_task_toml(vit.read_text()))["model"]["nodes"]]
    assert ops_gpt.count("rotary") == 2 and "pos_embedding" not in ops_gpt
    assert "cls_token" in ops_vit and "select" in ops_vit and "mean_pool" not in ops_vit


def test_gpt2_small_with_rotary_positions_drops_the_position_table() -> None:
    info = analyze_graph(get_preset_graph("gpt2-small", {"positions": "rotary"}), GraphInput("tokens", (1024,), 256))
    assert info.param_count == 124_439_808 - 1024 * 768
    assert sum(1 for n, _ in info.shapes if n.endswith(".attn.rope")) == 12


def test_vit_takes_rotary_positions_too() -> None:
    g = get_preset_graph("vit", {"d_model": 12, "n_heads": 2, "n_layers": 2, "patch": 4, "pool": "cls",
                                 "positions": "rotary", "rotary_dims": 4})
    info = analyze_graph(g, IMAGES)
    assert "pos_emb" not in {p.name for p in info.params} and "cls" in {p.name for p in info.params}
    assert dict(info.shapes)["h1.attn.rope"] == (5, 36)
