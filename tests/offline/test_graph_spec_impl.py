"""A second implementation of model graphs, written from SPEC.md §11.1 and §10.5 alone
(tests/spec_impl/graph.py, numpy, no project code), reproduces the project's task ids,
initial states and training steps of graph tasks bit for bit: every preset shape and every
graph operator (tied weights, dropout, patches, non-causal attention, mean pool, RMS norm,
SwiGLU, conv2d with k = 5, tanh)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from prover.training import Runtime, compute_root, init_state, train_step
from protocol.presets import get_preset_task
from protocol.task import compute_task_id, get_task_canonical, parse_task
from tests.spec_impl import core, graph, transformer
from tests.spec_impl.ops import f32

DIGITS = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
PYDOC = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"
SEED = 0x5EED_0F_6_2A9
STEPS = 2

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-tied-dropout": ("gpt2", {"d_model": 16, "n_layers": 2, "n_heads": 2, "context": 8, "dropout": 0.1}),
    "llama-style": ("gpt2", {"d_model": 16, "n_layers": 1, "n_heads": 4, "context": 6, "norm": "rms_norm",
                             "mlp": "swiglu", "tied": False, "vocab": 300, "optim.grad_clip": 0.5}),
    "vit": ("vit", {"d_model": 12, "n_layers": 1, "n_heads": 3, "dropout": 0.2, "patch": 4}),
    "resnet-pool": ("resnet", {"channels": 3, "blocks": 1}),
    "resnet-flatten": ("resnet", {"channels": 2, "blocks": 2, "kernel": 5, "pool": False, "optim.name": "sgd",
                                  "optim.momentum": 0.9, "optim.lr": 0.05}),
}


def batch(doc: dict[str, Any], step: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], int]:
    """Inputs, targets, per-example input shape and class count of step ``step`` (§12)."""
    bsz, ctx = doc["task"]["batch_size"], doc["model"]["context"]
    if ctx:
        tokens, vocab = transformer.tokens_of(core.pydoc_text())
        starts = [int(w) % (len(tokens) - ctx - 1) for w in core.random_u32(SEED, core.DATA, step, 1, bsz)]
        x = np.stack([tokens[s:s + ctx] for s in starts])
        return x, np.stack([tokens[s + 1:s + ctx + 1] for s in starts]), (ctx,), vocab
    pixels, labels = core.digits_table()
    idx = core.image_batch_indices(SEED, step, bsz, len(labels))
    return (pixels[idx].astype(f32) / f32(16.0)).astype(f32), labels[idx].astype(np.int64), (64,), 10


@pytest.mark.parametrize("case", list(CASES))
def test_graph_step_from_the_text(case: str) -> None:
    preset, sets = CASES[case]
    task = parse_task(get_preset_task(preset, {"task.batch_size": 3, "optim.lr": 0.01, **sets},
                                      PYDOC if preset == "gpt2" else DIGITS))
    doc = get_task_canonical(task)
    assert core.task_id(doc) == compute_task_id(task)  # §2, §3, §11.1 canonical form, encoded independently
    rt = Runtime.for_task(task, seed=SEED)
    state = init_state(rt)
    doc["task"]["seed"] = SEED
    _, _, in_shape, classes = batch(doc, 0)
    ours = graph.init_state(doc, in_shape, classes)
    assert ours.root() == compute_root(state)
    for step in range(STEPS):
        x, y, _, _ = batch(doc, step)
        loss = graph.train_step(doc, ours, x, y)
        assert np.float32(loss).tobytes() == np.float32(train_step(rt, state)).tobytes(), f"loss of step {step}"
        assert ours.root() == compute_root(state), f"root after step {step}"
