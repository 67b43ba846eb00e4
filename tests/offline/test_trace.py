"""The operator trace (SPEC.md §17.3): same bits as training, same entries on every backend,
a skeleton that is the same for every step, every input traced to its producer, and every
entry re-executable on its own."""

from __future__ import annotations

import pytest

from gpu_ops.backend import use_backend
from prover.steps import compute_output_hashes, compute_step_trace, copy_state, execute_entry
from prover.training import Runtime, compute_root, init_state, train_step
from protocol.optrace import decode_entry, get_skeleton
from protocol.task import Task, parse_task_toml

TINY_TRANSFORMER = """
[task]
name = "tiny-tf"
seed = 3
total_steps = 4
checkpoint_interval = 2
batch_size = 2
[model]
family = "transformer"
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 32
context = 8
dropout = 0.1
[data]
adapter = "pydoc-topics"
sha256 = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"
[optim]
name = "adamw"
lr = 0.01
grad_clip = 0.5
"""


@pytest.fixture(params=["mlp", "transformer"])
def task(request: pytest.FixtureRequest, tiny_task: Task) -> Task:
    return tiny_task if request.param == "mlp" else parse_task_toml(TINY_TRANSFORMER)


def test_trace_keeps_the_bits_and_is_backend_and_step_independent(task: Task) -> None:
    rt = Runtime.for_task(task)
    plain, traced = init_state(rt), init_state(rt)
    train_step(rt, plain)
    tr0 = compute_step_trace(rt, traced)
    assert compute_root(plain) == compute_root(traced)  # recording changes no bit
    assert tr0.entries[-1]["out"][0][0] == compute_root(traced)
    with use_backend("ref"):
        ref_tr = compute_step_trace(rt, init_state(rt))
    assert ref_tr.encoded == tr0.encoded  # byte-identical on the reference backend
    tr1 = compute_step_trace(rt, traced)
    assert [get_skeleton(e) for e in tr1.entries] == [get_skeleton(e) for e in tr0.entries]
    for e in tr0.entries:
        assert all(ref[3] is not None for ref in e["in"]), f"entry {e['i']} {e['op']} has an input of unknown origin"
        decode_entry(tr0.encoded[e["i"]])  # every entry is a valid canonical entry


def test_every_entry_reexecutes_to_its_recorded_outputs(task: Task) -> None:
    rt = Runtime.for_task(task)
    state = init_state(rt)
    start = copy_state(state)
    tr = compute_step_trace(rt, state)
    for e in tr.entries:
        inputs = [tr.tensors[ref[0]].reshape(ref[2]) for ref in e["in"]]
        got = compute_output_hashes(execute_entry(rt, tr.step, e, inputs, start))
        assert got == [None if o is None else o[0] for o in e["out"]], f"entry {e['i']} {e['op']}"
