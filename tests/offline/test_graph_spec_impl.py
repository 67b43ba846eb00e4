"""Graph vectors (tests/vectors/graphs.json, SPEC.md §11.1, §10.5): the project and a second
implementation written from the text alone (tests/spec_impl/graph.py: numpy, reads the task
TOML itself, no project code) both reproduce every case's canonical bytes, task id, parameter
list, initial state and two training steps bit for bit. The cases cover every graph operator:
tied weights, dropout, patches, non-causal attention, mean pool, RMS norm, SwiGLU, conv2d with
k = 5, flatten, SGD with momentum and AdamW with clipping."""

from __future__ import annotations

import json
import struct
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prover.training import Runtime, compute_root, init_state, train_step
from protocol.task import compute_task_id, encode_task, parse_task_toml
from tests.spec_impl import core, graph, transformer
from tests.spec_impl.ops import f32

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "graphs.json").read_text())["graphs"]
CASES = {c["name"]: c for c in VECTORS}


def words(v: float) -> str:
    return f"{int(np.array(v, dtype=np.float32).view(np.uint32)):08x}"


def batch(doc: dict[str, Any], seed: int, step: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], int]:
    """Inputs, targets, per-example input shape and class count of step ``step`` (§12)."""
    bsz, ctx = doc["task"]["batch_size"], doc["model"]["context"]
    if ctx:
        tokens, vocab = transformer.tokens_of(core.pydoc_text())
        starts = [int(w) % (len(tokens) - ctx - 1) for w in core.random_u32(seed, core.DATA, step, 1, bsz)]
        x = np.stack([tokens[s:s + ctx] for s in starts])
        return x, np.stack([tokens[s + 1:s + ctx + 1] for s in starts]), (ctx,), vocab
    pixels, labels = core.digits_table()
    idx = core.image_batch_indices(seed, step, bsz, len(labels))
    return (pixels[idx].astype(f32) / f32(16.0)).astype(f32), labels[idx].astype(np.int64), (64,), 10


def test_vectors_cover_every_graph_operator() -> None:
    from protocol.graph import GRAPH_OPS

    used = {n["op"] for c in VECTORS for n in tomllib.loads(c["task_toml"])["model"]["nodes"]}
    assert used == set(GRAPH_OPS)


@pytest.mark.parametrize("name", list(CASES))
def test_project_reproduces_the_graph_vectors(name: str) -> None:
    case = CASES[name]
    task = parse_task_toml(case["task_toml"])
    assert encode_task(task).hex() == case["canonical_hex"] and compute_task_id(task).hex() == case["task_id"]
    rt = Runtime.for_task(task, int(case["run_seed"]))
    assert [[s.name, list(s.shape), s.init[0]] for s in rt.specs] == [[p["name"], p["shape"], p["init"]]
                                                                       for p in case["params"]]
    state = init_state(rt)
    assert compute_root(state).hex() == case["init_root"]
    for want in case["steps"]:
        assert words(train_step(rt, state)) == want["loss_f32"]
        assert compute_root(state).hex() == want["root"]


@pytest.mark.parametrize("name", list(CASES))
def test_graph_step_from_the_text(name: str) -> None:
    case = CASES[name]
    doc = tomllib.loads(case["task_toml"])  # the normalized task: every key present
    assert core.pack(doc).hex() == case["canonical_hex"]
    tid = core.task_id(doc)
    assert tid.hex() == case["task_id"]
    seed = core.training_seed(tid, bytes.fromhex(case["prover"]), bytes.fromhex(case["posting_id"]))
    assert str(seed) == case["run_seed"]
    doc["task"]["seed"] = seed
    _, _, in_shape, classes = batch(doc, seed, 0)
    plist = graph.param_list(doc["model"], in_shape, classes)
    assert [[n, list(s), r] for n, s, r, _ in plist] == [[p["name"], p["shape"], p["init"]] for p in case["params"]]
    assert [struct.pack(">d", b).hex() if r == "uniform" else None for _, _, r, b in plist] == \
        [p["bound_f64"] for p in case["params"]]
    state = graph.init_state(doc, in_shape, classes)
    assert state.root().hex() == case["init_root"]
    for step, want in enumerate(case["steps"]):
        x, y, _, _ = batch(doc, seed, step)
        assert words(graph.train_step(doc, state, x, y)) == want["loss_f32"], f"loss of step {step}"
        assert state.root().hex() == want["root"], f"root after step {step}"
