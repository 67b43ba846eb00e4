"""Whole training steps on the Triton backend: tiny tasks, a device audit, and the state roots to compare.

Shared by tests/gpu_ops/test_triton_step.py (CPU tensors, Triton interpreter) and the CPU=GPU
conformance check ``python -m prover.gpucheck`` (the same steps on a GPU; docs/gpu.md).
``audit_step`` runs steps while checking the two things a CUDA run needs and a CPU run cannot show
by itself:

* every tensor handed to a Triton kernel wrapper is on the parameters' device (on a GPU this is the
  real check; on CPU it is trivially true, hence the second one);
* no tensor is created inside the step by a torch factory call without an explicit ``device``
  (``torch.zeros(n)``, ``torch.tensor(v)``...): on a CUDA machine such a tensor would be a CPU helper
  tensor, an error or (as a divisor) a silently different result.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from prover.training import Runtime, TrainState, compute_root, init_state, move_state, train_step
from protocol.presets import get_preset_task
from protocol.task import Task, parse_task, parse_task_toml

DIGITS = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
PYDOC = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"
SEED = 2026
ROOT = Path(__file__).resolve().parents[2]


def family_task(model: str, adapter: str, sha: str, optim: str) -> Task:
    return parse_task_toml(f"""
[task]
name = "triton-step"
seed = 1
total_steps = 2
checkpoint_interval = 1
batch_size = 2
[model]
{model}
[data]
adapter = "{adapter}"
sha256 = "{sha}"
[optim]
{optim}
""")


def preset_task(name: str, **overrides: object) -> Task:
    sha = PYDOC if name.startswith("gpt2") else DIGITS
    return parse_task(get_preset_task(name, {"task.batch_size": 2, "optim.lr": 0.01, "task.total_steps": 2,
                                             "task.checkpoint_interval": 1, **overrides}, sha))


ADAMW = 'name = "adamw"\nlr = 0.01\ngrad_clip = 1.0'
SGD = 'name = "sgd"\nlr = 0.05\nmomentum = 0.9\nweight_decay = 0.0001\ngrad_clip = 0.5'

# Tiny configs covering every op of the vocabulary: linear/tanh/SGD+momentum+clip (mlp); conv2d, GELU
# (cnn); embedding, learned positions, causal attention, layer norm, dropout, AdamW (transformer);
# rotary positions, tied head (gpt2); strided and 1x1 convs, mean pool (resnet); patches, class token,
# select, non-causal attention (vit); RMS norm, SwiGLU (llama-style).
TINY: dict[str, Callable[[], Task]] = {
    "mlp": lambda: family_task('family = "mlp"\nhidden = [8]\nactivation = "tanh"', "sklearn-digits", DIGITS, SGD),
    "cnn": lambda: family_task('family = "cnn"\nchannels = [2]\nkernel = 3\nhidden = 8\nactivation = "gelu"',
                               "sklearn-digits", DIGITS, ADAMW),
    "transformer": lambda: family_task('family = "transformer"\nd_model = 8\nn_layers = 1\nn_heads = 2\nd_ff = 8\n'
                                       'context = 4\ndropout = 0.2', "pydoc-topics", PYDOC, ADAMW),
    "gpt2": lambda: preset_task("gpt2", d_model=8, n_layers=1, n_heads=2, context=4, dropout=0.1,
                                positions="rotary"),
    "resnet": lambda: preset_task("resnet", channels=2, blocks=1, stages=2),
    "vit": lambda: preset_task("vit", d_model=8, n_layers=1, n_heads=2, dropout=0.1, patch=4, pool="cls"),
    "llama-style": lambda: preset_task("gpt2", d_model=8, n_layers=1, n_heads=2, context=4, norm="rms_norm",
                                       mlp="swiglu", tied=False),
}

_FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.arange, torch.as_tensor,
              torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye, torch.scalar_tensor}


def _same_device(a: torch.device, want: torch.device | str) -> bool:
    """``cuda`` names the current device, while a tensor's device always carries its index (``cuda:0``)."""
    want = torch.device(want)
    if want.type == "cuda" and want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    return a.type == want.type and (a.index or 0) == (want.index or 0)


def _caller() -> str:
    """The first frame outside torch: where a factory call came from."""
    for fr in inspect.stack()[2:]:
        if "/torch/" not in fr.filename:
            return f"{fr.filename}:{fr.lineno} ({fr.function})"
    return "?"


class HostTensorWatch(TorchFunctionMode):
    """Records torch factory calls made without an explicit ``device`` (Triton's own internals aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES and kwargs.get("device") is None:
            where = _caller()
            if "/triton/" not in where:
                self.calls.append(f"{getattr(func, '__name__', func)} at {where}")
        return func(*args, **kwargs)


@dataclasses.dataclass
class Audit:
    methods: set[str] = dataclasses.field(default_factory=set)  # TritonKernels methods the steps called
    wrong_device: list[str] = dataclasses.field(default_factory=list)
    host_tensors: list[str] = dataclasses.field(default_factory=list)


@contextmanager
def watch_triton_calls(device: torch.device, audit: Audit) -> Iterator[None]:
    """Wrap every TritonKernels method: record its name and any tensor argument not on ``device``."""
    from gpu_ops.triton_backend import TritonKernels

    saved: dict[str, Any] = {}
    for name, fn in list(vars(TritonKernels).items()):
        if name.startswith("_") or not callable(fn):
            continue
        saved[name] = fn

        def wrapped(self: Any, *args: Any, _fn: Any = fn, _name: str = name, **kw: Any) -> Any:
            audit.methods.add(_name)
            for a in list(args) + list(kw.values()):
                if isinstance(a, torch.Tensor) and not _same_device(a.device, device):
                    audit.wrong_device.append(f"{_name}: a {tuple(a.shape)} tensor on {a.device}, not {device}")
            return _fn(self, *args, **kw)

        setattr(TritonKernels, name, wrapped)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(TritonKernels, name, fn)


def step_roots(rt: Runtime, steps: int, device: torch.device | str = "cpu") -> list[bytes]:
    """Roots of the initial state and after each of ``steps`` steps, training on ``device``."""
    state: TrainState = move_state(init_state(rt), torch.device(device))
    out = [compute_root(state)]
    for _ in range(steps):
        train_step(rt, state)
        out.append(compute_root(state))
    return out


def audit_step(rt: Runtime, steps: int, device: torch.device | str, audit: Audit) -> list[bytes]:
    """``step_roots`` on the Triton backend, recording what the audit looks for."""
    from gpu_ops.backend import use_backend

    dev = torch.device(device)
    state: TrainState = move_state(init_state(rt), dev)
    out = [compute_root(state)]
    with use_backend("triton"), watch_triton_calls(dev, audit):
        for _ in range(steps):
            watch = HostTensorWatch()
            with watch:
                train_step(rt, state)
            audit.host_tensors += watch.calls
            out.append(compute_root(state))
    return out
