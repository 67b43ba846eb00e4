"""Models (SPEC.md §11): parameters, initialisation and the forward of a task's model graph.

Every model, the built-in families included, is a ``protocol.graph`` graph: a dict of named
float32 parameters plus a forward function built by ``gpu_ops.graph`` from
``gpu_ops.functional`` ops only. Parameter names are the canonical leaf names of the state root
(without the ``param/`` prefix). Initial values come from Philox under the task seed:
parameter number ``i`` (in sorted-name order) draws ``u`` from stream INIT with counter
words (i, 0); weights are ``f32((2u - 1) * bound)``, biases and LayerNorm shifts are zero,
LayerNorm gains are one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from protocol.graph import GraphInfo, analyze_graph
from protocol.rng import STREAM_DROPOUT, STREAM_INIT, compute_random_u32, compute_uniform_f64
from protocol.task import Task, get_graph_input, get_model_graph

from . import backend, graph, rowshard, trace
from . import functional as F
from .graph import Forward

__all__ = ["F", "Forward", "ParamSpec", "get_dropout_mask", "get_forward", "get_param_specs", "init_params"]

# How each parameter is initialised: ("uniform", bound) | ("zeros",) | ("ones",)
InitRule = tuple[str, float]


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    init: InitRule


def get_param_specs(task: Task, in_features: int, n_classes: int) -> list[ParamSpec]:
    """Parameter names, shapes and init rules of the task's model graph, in sorted-name order."""
    info = get_graph_info(task, in_features, n_classes)
    return [ParamSpec(p.name, p.shape, (p.init, p.bound)) for p in info.params]


def get_graph_info(task: Task, in_features: int, n_classes: int) -> GraphInfo:
    """The task's graph analysed on the data set's real shapes (its actual class count)."""
    return analyze_graph(get_model_graph(task), get_graph_input(task, in_features, n_classes))


def init_params(specs: list[ParamSpec], seed: int) -> dict[str, torch.Tensor]:
    params: dict[str, torch.Tensor] = {}
    for index, spec in enumerate(specs):
        count = int(np.prod(spec.shape)) if spec.shape else 1
        kind, bound = spec.init
        if kind == "uniform":
            u = _uniform_f64(seed, index, count)
            values = ((2.0 * u - 1.0) * bound).astype(np.float32)
        elif kind == "zeros":
            values = np.zeros(count, dtype=np.float32)
        else:
            values = np.ones(count, dtype=np.float32)
        params[spec.name] = torch.from_numpy(values.reshape(spec.shape)).clone()
    return params


def _uniform_f64(seed: int, index: int, count: int) -> np.ndarray:
    """protocol.rng.compute_uniform_f64(seed, INIT, index, 0, count); the Philox words from the C
    kernel when available (the same words: tests/gpu_ops/test_graph_models.py), since numpy's
    Philox takes minutes for a 124M-parameter model."""
    k = backend.kernels()
    # Only the C kernels: parameters are drawn on the host, and a compiled Triton kernel (a forced triton
    # backend on a GPU machine) cannot read host memory.
    if not isinstance(k, backend.Kernels) or not 0 <= seed < 2**64:
        return compute_uniform_f64(seed, STREAM_INIT, index, 0, count)
    words: np.ndarray = k.philox_u32(seed, STREAM_INIT, index, 0, count).cpu().numpy()
    return (words >> 8).astype(np.float64) * 2.0**-24 + 2.0**-25


def get_dropout_mask(seed: int, step: int, site: int, p: float, shape: tuple[int, ...],
                     device: torch.device | None = None) -> torch.Tensor:
    """F.dropout_mask of the Philox words (seed, STREAM_DROPOUT, step, site) on ``device`` (default CPU);
    by the C kernel on the CPU (gpu_ops/cpu/nnops.c) and the Triton kernel on CUDA when available,
    both equal to protocol.rng bit for bit (tests/gpu_ops/test_fast_vs_ref.py, test_triton_interp.py)."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    shard = rowshard.get_shard()
    if shard is None:
        mask = _compute_dropout_mask(seed, step, site, p, shape, dev)
    else:  # a data-parallel worker: its rows of the whole batch's mask (dim 0 is the sample)
        mask = _compute_dropout_mask(seed, step, site, p, (shard.total, *shape[1:]), dev)[shard.lo:shard.hi]
    rec = trace.get_recorder()
    if rec is not None:  # the mask is an input of the dropout op; the step comes from the dispute
        rec.record("dropout_mask", [site, p, list(shape)], [], [mask])
    return mask


def _compute_dropout_mask(seed: int, step: int, site: int, p: float, shape: tuple[int, ...],
                          device: torch.device | None = None) -> torch.Tensor:
    device = torch.device("cpu") if device is None else device
    k = backend.kernels(device=device)
    if k is not None and 0 <= seed < 2**64:
        scale = float(np.float32(1.0 / (1.0 - p)))
        threshold = int(math.floor(p * 2.0**32))
        if isinstance(k, backend.Kernels):  # the C kernels: CPU only
            return k.dropout_mask(seed, STREAM_DROPOUT, step, site, threshold, scale, shape)
        mask: torch.Tensor = k.dropout_mask(seed, STREAM_DROPOUT, step, site, threshold, scale, shape, device=device)
        return mask
    # the reference: Philox words from protocol.rng (host), the keep/scale rule on the device
    words = compute_random_u32(seed, STREAM_DROPOUT, step, site, int(np.prod(shape)))
    return F.dropout_mask(torch.from_numpy(words.astype(np.int64)).to(device), p, shape)


def get_forward(task: Task) -> Forward:
    """Loss function ``forward(params, inputs, targets, step)`` of the task's model graph."""
    return graph.build_forward(get_model_graph(task), task.seed, get_dropout_mask)
