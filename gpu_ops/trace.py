"""Operator trace of one training step (SPEC.md §17.3): a recording hook around the ops.

While a ``Recorder`` is active, every forward and backward of a ``gpu_ops.functional`` op,
and every op the training step records explicitly (batch, dropout mask, gradient seed,
clipping, optimizer updates, state root), appends one entry: the op's name, its constant
arguments, and for each input and output tensor its dtype, shape and *trace hash*. Each input
names its source, the most recent earlier output with the same trace hash, so a referee can
check it against a previous agreed output.

The hook never changes a bit: it only reads tensors after the op ran. The entries are the
same on the reference and the fast backend because they record the op's logical inputs (the
forward inputs and the incoming gradient), never what a backend chose to save. With no
recorder active the cost is one context-variable lookup per op.

``execute_entry`` is the referee's side: it runs one recorded op on its input tensors.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

DOMAIN_TRACE_TENSOR = b"pol/v1/trace-tensor"
_DTYPE_NAMES = {torch.float32: "f32", torch.int64: "i64", torch.bool: "bool"}
_NP_DTYPES: dict[str, np.dtype[Any]] = {"f32": np.dtype("<f4"), "i64": np.dtype("<i8"), "bool": np.dtype("u1")}
_TORCH_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}

# Autograd functions by op name, filled by @traced (the executor looks ops up here).
REGISTRY: dict[str, Any] = {}
_active: contextvars.ContextVar["Recorder | None"] = contextvars.ContextVar("pol_trace_recorder", default=None)


def get_tensor_bytes(t: torch.Tensor) -> tuple[str, bytes]:
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise TypeError(f"no trace dtype for {t.dtype}")
    arr = t.detach().contiguous().cpu().numpy()
    if dtype == "bool":
        arr = arr.astype(np.uint8)
    return dtype, arr.astype(_NP_DTYPES[dtype], copy=False).tobytes()


def compute_tensor_hash(t: torch.Tensor) -> bytes:
    """H(DOMAIN_TRACE_TENSOR || dtype || 0x00 || C-order bytes): independent of shape, so a
    reshape of an output still names that output as its source."""
    dtype, data = get_tensor_bytes(t)
    return hashlib.sha256(DOMAIN_TRACE_TENSOR + dtype.encode() + b"\x00" + data).digest()


def get_tensor_from_bytes(dtype: str, shape: Sequence[int], data: bytes) -> torch.Tensor:
    arr = np.frombuffer(data, dtype=_NP_DTYPES[dtype]).copy().reshape(tuple(shape))
    t = torch.from_numpy(arr)
    return t.to(torch.bool) if dtype == "bool" else t


@dataclass
class Recorder:
    """Collects the entries of one step. ``tensors`` keeps every recorded tensor by hash, so the
    party that recorded can serve a referee the inputs of any entry."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[bytes, torch.Tensor] = field(default_factory=dict)
    keep_tensors: bool = True
    _by_storage: dict[tuple[int, int, bytes], list[int]] = field(default_factory=dict)
    _by_hash: dict[bytes, list[int]] = field(default_factory=dict)
    _alive: list[torch.Tensor] = field(default_factory=list)  # keeps storage addresses unique

    @staticmethod
    def _key(t: torch.Tensor, h: bytes) -> tuple[int, int, bytes]:
        return (t.untyped_storage().data_ptr(), int(t.storage_offset()), h)

    def ref(self, t: torch.Tensor) -> list[Any]:
        """An input reference ``[hash, dtype, shape, entry, output]``, taken now (before an
        in-place update). The source is the output that shares this tensor's memory and bytes
        (the program's own data flow); failing that, the latest output with the same bytes."""
        h = compute_tensor_hash(t)
        src = self._by_storage.get(self._key(t, h)) or self._by_hash.get(h)
        if self.keep_tensors:
            self.tensors.setdefault(h, t.detach().clone())
        return [h, _DTYPE_NAMES[t.dtype], list(t.shape), src[0] if src else None, src[1] if src else None]

    def record(self, op: str, args: Sequence[Any], inputs: Sequence[torch.Tensor | list[Any]],
               outputs: Sequence[torch.Tensor | None]) -> int:
        """Append one entry; ``args`` are constants (None, bool, int, float, str, lists, or
        ``{"t": i, "grad": bool}`` placeholders for tensor argument i)."""
        index = len(self.entries)
        ins = [x if isinstance(x, list) else self.ref(x) for x in inputs]
        outs: list[Any] = []
        for o, t in enumerate(outputs):
            if t is None:
                outs.append(None)
                continue
            h = compute_tensor_hash(t)
            outs.append([h, _DTYPE_NAMES[t.dtype], list(t.shape)])
            self._by_storage[self._key(t, h)] = [index, o]
            self._by_hash[h] = [index, o]
            self._alive.append(t)
            if self.keep_tensors:
                self.tensors.setdefault(h, t.detach().clone())
        self.entries.append({"i": index, "op": op, "args": list(args), "in": ins, "out": outs})
        return index


def get_recorder() -> Recorder | None:
    return _active.get()


@contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    token = _active.set(recorder)
    try:
        yield recorder
    finally:
        _active.reset(token)


def _split_args(args: Sequence[Any]) -> tuple[list[Any], list[torch.Tensor]]:
    consts: list[Any] = []
    tensors: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            consts.append({"t": len(tensors), "grad": bool(a.requires_grad)})
            tensors.append(a)
        else:
            consts.append(a)
    return consts, tensors


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


C = TypeVar("C")


def traced(name: str) -> Callable[[C], C]:
    """Class decorator for an autograd Function: records ``name.forward`` and ``name.backward``."""

    def deco(cls: C) -> C:
        fwd = cls.forward  # type: ignore[attr-defined]
        bwd = cls.backward  # type: ignore[attr-defined]

        def forward(ctx: Any, *args: Any) -> Any:
            out = fwd(ctx, *args)
            rec = _active.get()
            if rec is not None:
                consts, tensors = _split_args(args)
                rec.record(f"{name}.forward", consts, tensors, _as_tuple(out))
                ctx.pol_trace = (consts, [t.detach() for t in tensors])
            return out

        def backward(ctx: Any, *grads: Any) -> Any:
            res = bwd(ctx, *grads)
            rec = _active.get()
            saved = getattr(ctx, "pol_trace", None)
            if rec is not None and saved is not None:
                consts, tensors = saved
                rec.record(f"{name}.backward", consts, list(tensors) + list(grads), _as_tuple(res))
            return res

        cls.forward = staticmethod(forward)  # type: ignore[attr-defined]
        cls.backward = staticmethod(backward)  # type: ignore[attr-defined]
        REGISTRY[name] = cls
        return cls

    return deco


def _rebuild_args(consts: Sequence[Any], tensors: Sequence[torch.Tensor], with_grad: bool) -> list[Any]:
    args: list[Any] = []
    for c in consts:
        if isinstance(c, dict) and "t" in c:
            t = tensors[int(c["t"])].clone()
            if with_grad and c.get("grad") and t.is_floating_point():
                t.requires_grad_(True)
            args.append(t)
        else:
            args.append(c)
    return args


def execute_function_entry(op: str, consts: Sequence[Any], inputs: Sequence[torch.Tensor]
                           ) -> list[torch.Tensor | None]:
    """Run one recorded ``<fn>.forward`` or ``<fn>.backward`` on its inputs (the referee's step).

    A backward re-runs the op's forward on the recorded forward inputs (to rebuild exactly
    what the forward saved, on whatever backend is local) and then calls that node's backward
    with the recorded incoming gradients: the result is the op's own backward, nothing else.
    """
    fn_name, _, phase = op.rpartition(".")
    cls = REGISTRY.get(fn_name)
    if cls is None or phase not in ("forward", "backward"):
        raise ValueError(f"unknown operator {op!r}")
    n_fwd = sum(1 for c in consts if isinstance(c, dict) and "t" in c)
    if phase == "forward":
        with torch.no_grad():
            out = cls.apply(*_rebuild_args(consts, inputs[:n_fwd], with_grad=False))
        return [t.detach() if t is not None else None for t in _as_tuple(out)]
    grads = list(inputs[n_fwd:])
    with torch.enable_grad():
        out = _as_tuple(cls.apply(*_rebuild_args(consts, inputs[:n_fwd], with_grad=True)))
        node = next((t.grad_fn for t in out if isinstance(t, torch.Tensor) and t.grad_fn is not None), None)
        if node is None:
            raise ValueError(f"{op}: no input requires a gradient, so there is no backward to run")
        res = node.apply(*grads)  # type: ignore[attr-defined]  # the op's own backward, with its ctx
    return [t.detach() if isinstance(t, torch.Tensor) else None for t in _as_tuple(res)]
