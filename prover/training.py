"""The deterministic training step shared by provers and verifiers (SPEC.md §13).

Training is a pure function of the task: ``state(t+1) = step(task, state(t))``. The state
holds parameters, optimizer slots and the step counter; the data batch, dropout masks and
learning rate of step t are derived from the task and t alone. A verifier replays with this
very module, so a prover that trained any other way produces different state roots.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gpu_ops import nn, optim, rowshard, trace
from protocol.errors import InvalidCheckpoint, PolError
from protocol.state import STEP_TENSOR, TensorLeaf, compute_state_root_from_arrays
from protocol.task import Task

from .datasets import Dataset, load_dataset

class NonFiniteLoss(PolError):
    """Training from this state diverges (NaN/Inf loss). A prover cannot claim such a run; a
    verifier that reaches it from a committed checkpoint has found a bad segment."""

    def __init__(self, step: int, loss: float) -> None:
        self.step = step
        super().__init__(f"loss became {loss} at step {step}: training diverges from this state")


OPT_SLOTS = {"sgd": ("momentum",), "adamw": ("exp_avg", "exp_avg_sq")}


@dataclass
class TrainState:
    """Mutable training state; ``step`` is the number of optimizer steps already taken."""

    params: dict[str, torch.Tensor]
    slots: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    step: int = 0


@dataclass(frozen=True)
class Runtime:
    """Everything a task needs at run time besides the state: data, model and parameter specs.

    ``seed`` keys every random stream of the run (initialisation, data order, dropout). A claimed
    run uses ``protocol.rng.compute_training_seed(task_id, prover, posting_id)`` (SPEC.md §9);
    the bare task seed is only for kernel tests and benchmarks.
    """

    task: Task
    dataset: Dataset
    specs: tuple[nn.ParamSpec, ...]
    forward: nn.Forward
    seed: int
    keyed_task: Task  # ``task`` with ``seed`` in place of the task seed: what the data and model read

    @staticmethod
    def for_task(task: Task, seed: int | None = None) -> "Runtime":
        dataset = load_dataset(task.data)
        specs = nn.get_param_specs(task, dataset.in_features, dataset.n_classes)
        keyed = task if seed is None else dataclasses.replace(task, seed=seed)
        return Runtime(task, dataset, tuple(specs), nn.get_forward(keyed), keyed.seed, keyed)

    def with_seed(self, seed: int) -> "Runtime":
        """The same task and data set keyed by another run seed (no data reload)."""
        keyed = dataclasses.replace(self.task, seed=seed)
        return dataclasses.replace(self, forward=nn.get_forward(keyed), seed=seed, keyed_task=keyed)


def get_slot_names(task: Task) -> tuple[str, ...]:
    if task.optim.name == "sgd" and task.optim.momentum == 0.0:
        return ()
    return OPT_SLOTS[task.optim.name]


def init_state(rt: Runtime) -> TrainState:
    params = nn.init_params(list(rt.specs), rt.seed)
    slots = {slot: {k: torch.zeros_like(v) for k, v in params.items()} for slot in get_slot_names(rt.task)}
    return TrainState(params=params, slots=slots, step=0)


class DeviceUnavailable(PolError):
    """The device asked for cannot train here (our machine or installation, not anyone's input)."""


DEVICES = ("cpu", "cuda")


def check_device(device: str) -> torch.device:
    """The torch device for ``pol prove --device``; raises DeviceUnavailable saying what is missing.

    On CUDA every op must run the Triton kernels (gpu_ops.backend routes CUDA tensors to them), so
    triton must import, and the CUDA build of torch must see a device."""
    if device not in DEVICES:
        raise DeviceUnavailable(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable("--device cuda: torch sees no CUDA device here (a CUDA build of torch and a GPU "
                                "driver are needed); use --device cpu")
    from gpu_ops import backend

    if os.environ.get(backend.ENV, "").strip().lower() != "ref":  # ref: the operator chose the plain-torch ops
        try:
            kern = backend.require_triton()
        except backend.BackendUnavailable as exc:
            raise DeviceUnavailable(f"--device cuda: {exc}; CUDA training runs the Triton kernels") from None
        try:  # compile and launch one kernel now: a missing compiler or an unsupported GPU fails here, not mid-run
            kern.exact_sum(torch.ones(4, device="cuda"))
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - whatever Triton raises, the device cannot train here
            raise DeviceUnavailable(f"--device cuda: a Triton kernel cannot run on this GPU: "
                                    f"{type(exc).__name__}: {exc}") from None
    return torch.device("cuda")


def move_state(state: TrainState, device: torch.device) -> TrainState:
    """``state`` with every tensor on ``device`` (in place; a no-op when they are there already)."""
    state.params = {k: v.to(device) for k, v in state.params.items()}
    state.slots = {s: {k: v.to(device) for k, v in ts.items()} for s, ts in state.slots.items()}
    return state


def get_state_device(state: TrainState) -> torch.device:
    for t in state.params.values():
        return t.device
    return torch.device("cpu")


def compute_lr(task: Task, step: int) -> float:
    """Learning rate of step ``step`` in float64 (the optimizer rounds it to float32 once)."""
    s = task.schedule
    lr = task.optim.lr
    if step < s.warmup_steps:
        return lr * (step + 1) / s.warmup_steps
    if s.name == "linear" and task.total_steps > s.warmup_steps:
        frac = (step - s.warmup_steps) / (task.total_steps - s.warmup_steps)
        return lr * (1.0 - frac * (1.0 - s.final_lr_fraction))
    return lr


def train_step(rt: Runtime, state: TrainState) -> float:
    """Take one optimizer step in place; returns the step's loss."""
    task = rt.task
    rec = trace.get_recorder()  # set only while a dispute asks for this step's operator trace
    x, y = rt.dataset.get_batch(rt.keyed_task, state.step)
    device = get_state_device(state)
    if device.type != "cpu":  # the batch joins the parameters; everything the step makes follows them
        x, y = x.to(device), y.to(device)
    shard = rowshard.get_shard()
    if shard is not None:  # a data-parallel worker trains on its samples of the batch (SPEC.md §13.1)
        x, y = x[shard.lo:shard.hi], y[shard.lo:shard.hi]
    if rec is not None:
        rec.record("batch", [], [], [x, y])
    names = sorted(state.params)
    leaves = {k: state.params[k].detach().requires_grad_(True) for k in names}
    loss = rt.forward(leaves, x, y, state.step)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(state.step, float(loss.detach()))
    grad_refs: dict[str, list[Any]] = {}
    if rec is not None:
        # A parameter's gradient is copied into .grad; the hook sees the backward's own output,
        # so the optimizer's input names the entry that produced it rather than an equal value.
        for k in names:
            leaves[k].register_hook(lambda g, k=k: grad_refs.__setitem__(k, rec.ref(g)))  # type: ignore[no-untyped-call]
        seed = torch.ones_like(loss)  # what backward() uses implicitly, made a traced input
        rec.record("grad_seed", [], [], [seed])
        loss.backward(seed)  # type: ignore[no-untyped-call]
    else:
        loss.backward()  # type: ignore[no-untyped-call]
    grads = []
    for k in names:
        g = leaves[k].grad
        grads.append(torch.zeros_like(state.params[k]) if g is None else g)
    clipped = task.optim.grad_clip > 0.0
    if clipped:
        before = [grad_refs.get(k) or rec.ref(g) for k, g in zip(names, grads)] if rec is not None else []
        optim.clip_grad_norm(grads, task.optim.grad_clip)
        if rec is not None:
            rec.record("clip_grad_norm", [task.optim.grad_clip], before, grads)
    lr = compute_lr(task, state.step)
    o = task.optim
    with torch.no_grad():
        for k, g in zip(names, grads):
            p = state.params[k]
            if o.name == "sgd":
                buf = state.slots["momentum"][k] if "momentum" in state.slots else None
                ins = [rec.ref(p), _grad_ref(rec, grad_refs, k, g, clipped)] + (
                    [rec.ref(buf)] if buf is not None else []) if rec is not None else []
                optim.sgd_step(p, g, buf, lr, o.momentum, o.weight_decay)
                if rec is not None:
                    rec.record("sgd_step", [k], ins, [p] + ([buf] if buf is not None else []))
            else:
                m, v = state.slots["exp_avg"][k], state.slots["exp_avg_sq"][k]
                ins = [rec.ref(p), _grad_ref(rec, grad_refs, k, g, clipped), rec.ref(m), rec.ref(v)
                       ] if rec is not None else []
                optim.adamw_step(p, g, m, v, state.step + 1, lr, o.beta1, o.beta2, o.eps, o.weight_decay)
                if rec is not None:
                    rec.record("adamw_step", [k], ins, [p, m, v])
    state.step += 1
    return float(loss.detach())


def _grad_ref(rec: trace.Recorder, grad_refs: dict[str, list[Any]], k: str, g: torch.Tensor,
              clipped: bool) -> list[Any]:
    if not clipped and k in grad_refs:
        return grad_refs[k]
    return rec.ref(g)  # after clipping, g is the clip op's own output


def get_state_leaves(state: TrainState) -> list[TensorLeaf]:
    """The canonical leaves of a state (SPEC.md §5): params, optimizer slots and the step."""
    leaves = [TensorLeaf(STEP_TENSOR, "i64", (), np.int64(state.step).tobytes())]
    for name, t in state.params.items():
        leaves.append(_leaf(f"param/{name}", t))
    for slot, tensors in state.slots.items():
        for name, t in tensors.items():
            leaves.append(_leaf(f"opt/{slot}/{name}", t))
    return leaves


def _leaf(name: str, t: torch.Tensor) -> TensorLeaf:
    arr = t.detach().cpu().contiguous().numpy()
    return TensorLeaf(name, "f32", tuple(arr.shape), arr.astype("<f4", copy=False).tobytes())


def compute_root(state: TrainState) -> bytes:
    """The state root, hashed straight from the tensors' memory (no leaf copies; same root as
    ``compute_state_root(get_state_leaves(state))``)."""
    return compute_state_root_from_arrays(get_state_arrays(state))


def get_state_arrays(state: TrainState) -> dict[str, np.ndarray]:
    """Every leaf of the state as a numpy view of the tensor's own memory (no copies)."""
    arrays = {STEP_TENSOR: np.array(state.step, dtype="<i8")}
    for name, t in state.params.items():
        arrays[f"param/{name}"] = _f32_array(t)
    for slot, tensors in state.slots.items():
        for name, t in tensors.items():
            arrays[f"opt/{slot}/{name}"] = _f32_array(t)
    return arrays


def _f32_array(t: torch.Tensor) -> np.ndarray:
    # a CUDA tensor is copied to the host here, only to be hashed and written (CPU tensors: no copy)
    arr = t.detach().cpu().contiguous().numpy()
    return arr if arr.dtype == np.dtype("<f4") else arr.astype("<f4")


def get_state_from_leaves(rt: Runtime, leaves: list[TensorLeaf]) -> TrainState:
    """Rebuild a state from leaves, insisting on exactly the names and shapes the task implies."""
    expected = {f"param/{s.name}": s.shape for s in rt.specs}
    for slot in get_slot_names(rt.task):
        expected.update({f"opt/{slot}/{s.name}": s.shape for s in rt.specs})
    by_name = {leaf.name: leaf for leaf in leaves}
    missing = sorted(set(expected) - set(by_name) - {STEP_TENSOR})
    extra = sorted(set(by_name) - set(expected) - {STEP_TENSOR})
    if missing or extra:
        raise InvalidCheckpoint(f"checkpoint tensors do not match the task: missing {missing[:5]}, extra {extra[:5]}")
    state = TrainState(params={}, slots={slot: {} for slot in get_slot_names(rt.task)})
    for name, shape in expected.items():
        leaf = by_name[name]
        if leaf.dtype != "f32" or leaf.shape != shape:
            raise InvalidCheckpoint(f"tensor {name} is {leaf.dtype}{list(leaf.shape)}, expected f32{list(shape)}")
        arr = leaf.array()
        # leaves read from a file own writable buffers: use them in place (one copy of the state in memory)
        tensor = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        if name.startswith("param/"):
            state.params[name[len("param/"):]] = tensor
        else:
            _, slot, pname = name.split("/", 2)
            state.slots[slot][pname] = tensor
    step_leaf = by_name.get(STEP_TENSOR)
    if step_leaf is None or step_leaf.dtype != "i64" or step_leaf.shape != ():
        raise InvalidCheckpoint(f"checkpoint lacks a scalar i64 {STEP_TENSOR}")
    state.step = int(step_leaf.array())
    if not 0 <= state.step <= rt.task.total_steps:
        raise InvalidCheckpoint(f"checkpoint step {state.step} outside [0, {rt.task.total_steps}]")
    return state


def estimate_flops_per_step(rt: Runtime) -> int:
    """Rough multiply-add count of one step (for progress displays only)."""
    return 6 * rt.task.batch_size * sum(math.prod(s.shape) for s in rt.specs)
