"""Models as graphs (SPEC.md §11): the graph executor trains the built-in families exactly as
their hand-written forwards did, a graph written out as a task file trains the same, and the
presets run bit-identically on the reference and the fast backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_ops.backend import use_backend
from prover.steps import compute_step_trace
from prover.training import Runtime, compute_root, init_state, train_step
from protocol.errors import InvalidTask
from protocol.presets import get_preset_task
from protocol.task import Task, format_task_toml, get_model_graph, parse_task, parse_task_toml

from .family_models import get_family_forward

DIGITS = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
PYDOC = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"
SEED = 2026

FAMILIES = {
    "mlp": ('family = "mlp"\nhidden = [16, 12]\nactivation = "tanh"', "sklearn-digits", DIGITS),
    "cnn": ('family = "cnn"\nchannels = [3, 4]\nkernel = 3\nhidden = 16\nactivation = "gelu"', "sklearn-digits",
            DIGITS),
    "transformer": ('family = "transformer"\nd_model = 16\nn_layers = 2\nn_heads = 2\nd_ff = 24\ncontext = 8\n'
                    "dropout = 0.2", "pydoc-topics", PYDOC),
}


def family_task(family: str) -> Task:
    model, adapter, sha = FAMILIES[family]
    return parse_task_toml(f"""
[task]
name = "tiny-{family}"
seed = 1
total_steps = 3
checkpoint_interval = 3
batch_size = 4
[model]
{model}
[data]
adapter = "{adapter}"
sha256 = "{sha}"
[optim]
name = "adamw"
lr = 0.01
grad_clip = 1.0
""")


def roots(rt: Runtime, steps: int) -> list[bytes]:
    state = init_state(rt)
    out = [compute_root(state)]
    for _ in range(steps):
        train_step(rt, state)
        out.append(compute_root(state))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_graph_equals_the_hand_written_family(family: str) -> None:
    task = family_task(family)
    rt = Runtime.for_task(task, seed=SEED)
    legacy = dataclasses.replace(rt, forward=get_family_forward(rt.keyed_task))
    graph_roots = roots(rt, 3)
    assert graph_roots == roots(legacy, 3)
    assert len(set(graph_roots)) == 4  # it trains: every step changes the state

    # the same model written out as a graph task file: another task id, the same training
    graph_task = parse_task_toml(format_task_toml(dataclasses.replace(task, model_family="graph",
                                                                      model=get_model_graph(task))))
    assert graph_task.model_family == "graph"
    assert roots(Runtime.for_task(graph_task, seed=SEED), 3) == graph_roots


def test_a_changed_graph_trains_differently() -> None:
    """Negative control for the equality above: one attribute changed, other roots."""
    task = family_task("transformer")
    graph = get_model_graph(task)
    nodes = tuple(dataclasses.replace(n, attrs=(("p", 0.25),)) if n.name == "h1.mlp.drop" else n for n in graph.nodes)
    changed = dataclasses.replace(task, model_family="graph", model=dataclasses.replace(graph, nodes=nodes))
    base = roots(Runtime.for_task(task, seed=SEED), 1)
    other = roots(Runtime.for_task(changed, seed=SEED), 1)
    assert base[0] == other[0] and base[1] != other[1]


def preset_task(name: str, **overrides: object) -> Task:
    sha = PYDOC if name.startswith("gpt2") else DIGITS
    return parse_task(get_preset_task(name, {"task.batch_size": 2, "optim.lr": 0.01, **overrides}, sha))


PRESET_TASKS = {
    "gpt2-tied": lambda: preset_task("gpt2", d_model=16, n_layers=2, n_heads=2, context=8, dropout=0.1),
    "gpt2-untied": lambda: preset_task("gpt2", d_model=16, n_layers=1, n_heads=4, context=8, tied=False, vocab=300),
    "resnet": lambda: preset_task("resnet", channels=4, blocks=2),
    "resnet-flatten": lambda: preset_task("resnet", channels=3, blocks=1, kernel=5, pool=False),
    "vit": lambda: preset_task("vit", d_model=16, n_layers=1, n_heads=2, dropout=0.1),
    "llama-style": lambda: preset_task("gpt2", d_model=16, n_layers=1, n_heads=2, context=8, norm="rms_norm",
                                       mlp="swiglu", tied=False),
    "gpt2-rotary": lambda: preset_task("gpt2", d_model=16, n_layers=1, n_heads=2, context=8, positions="rotary",
                                       rotary_dims=6),
    "vit-cls": lambda: preset_task("vit", d_model=16, n_layers=1, n_heads=2, pool="cls", positions="rotary"),
}


@pytest.mark.parametrize("name", list(PRESET_TASKS))
def test_preset_is_bit_identical_on_reference_and_fast_backends(name: str) -> None:
    rt = Runtime.for_task(PRESET_TASKS[name](), seed=SEED)
    fast = roots(rt, 2)
    with use_backend("ref"):
        assert roots(rt, 2) == fast
    assert len(set(fast)) == 3


@pytest.mark.parametrize("name", ["gpt2-tied", "vit", "llama-style", "gpt2-rotary", "vit-cls"])
def test_graph_trace_names_every_input(name: str) -> None:
    """The dispute trace of a graph step (a tied embedding feeding two nodes through one fork;
    patches, non-causal attention, mean pool, RMS norm, SwiGLU) names the producer of every
    input, and is the same on both backends."""
    rt = Runtime.for_task(PRESET_TASKS[name](), seed=SEED)
    tr = compute_step_trace(rt, init_state(rt))
    ops = [e["op"] for e in tr.entries]
    if name == "gpt2-tied":
        assert ops.index("fork.forward") < ops.index("embedding.forward")  # the table forks before its first use
    if name == "vit":
        assert {"patches.forward", "scale.backward", "mean_pool.backward"} <= set(ops)
    if name == "gpt2-rotary":
        assert {"rotary.forward", "rotary.backward"} <= set(ops)
    if name == "vit-cls":
        assert {"cls_token.backward", "select.backward"} <= set(ops) and "mean_pool.forward" not in ops
    for e in tr.entries:
        assert all(ref[3] is not None for ref in e["in"]), f"entry {e['i']} {e['op']} has an input of unknown origin"
    with use_backend("ref"):
        assert compute_step_trace(rt, init_state(rt)).encoded == tr.encoded


def test_vocab_smaller_than_the_data_is_refused() -> None:
    with pytest.raises(InvalidTask, match="'tok_emb'.*vocab 50 is smaller"):
        preset_task("gpt2", d_model=16, n_layers=1, n_heads=2, context=8, vocab=50)
    with torch.no_grad():  # the data set's real token count is checked again at run time
        task = preset_task("gpt2", d_model=16, n_layers=1, n_heads=2, context=8, vocab=256)
        assert Runtime.for_task(task).specs


def test_graph_task_proves_and_verifies_and_a_forgery_is_caught(tmp_path: Path) -> None:
    """End to end: a prover trains a tied GPT-2 graph task, a verifier replays every segment and
    accepts; altered weights, recommitted and re-signed, are caught by the replay."""
    from pol.keyfile import generate_keyfile
    from prover.prove import prove
    from prover.recommit import perturb_checkpoint, recommit
    from prover.transcript import ProofDir
    from verifier.verify import ACCEPT, REJECT, verify_dir

    task = preset_task("gpt2", d_model=16, n_layers=1, n_heads=2, context=8, dropout=0.1,
                       **{"task.total_steps": 4, "task.checkpoint_interval": 2})
    key = generate_keyfile().bls_secret_key
    prove(task, tmp_path, key)
    report = verify_dir(tmp_path, segments=None, secret_key=None)
    assert report.verdict == ACCEPT, report.reason
    assert [r.index for r in report.segments] == [0, 1]
    perturb_checkpoint(ProofDir(tmp_path), 2)
    recommit(ProofDir(tmp_path), key)
    report = verify_dir(tmp_path, segments=None, secret_key=None)
    assert report.verdict == REJECT and report.failed_check == "segment"


def test_initial_values_from_the_c_philox_equal_the_numpy_definition() -> None:
    from gpu_ops import backend, nn
    from protocol.rng import STREAM_INIT, compute_uniform_f64

    if backend._load() is None:
        pytest.skip("C kernels could not be built")
    for seed, index, count in ((0, 0, 1), (2**64 - 1, 7, 1001), (SEED, 2**32 - 1, 4099)):
        assert np.array_equal(nn._uniform_f64(seed, index, count), compute_uniform_f64(seed, STREAM_INIT, index, 0, count))
