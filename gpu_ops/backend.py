"""Backend dispatch: which kernels run an op, by the device of its tensors.

* CPU float32 tensors: the C kernels of ``gpu_ops/cpu`` (``Kernels``) when they can be built, else
  the reference. Both give the same bits (tests/gpu_ops/test_fast_vs_ref.py); the fast path only
  removes the eager overhead of the reference's many small torch ops. If the build fails a WARNING
  is logged once and everything runs on the reference.
* CUDA float32 tensors: the Triton kernels (``gpu_ops.triton_backend.TritonKernels``, the same
  methods) when triton imports, else the reference (a WARNING once).

``POL_GPU_OPS_BACKEND=fast|ref|triton`` (or ``use_backend``) overrides: ``ref`` sends every op to the
reference, ``triton`` sends CPU tensors to the Triton kernels too (with ``TRITON_INTERPRET=1`` they
run in Triton's interpreter: that is how the Triton path is tested without a GPU) and fails with
``BackendUnavailable`` when triton cannot be imported. Default: ``fast``, the rule above.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from . import ref

log = logging.getLogger(__name__)

F32 = torch.float32
F64 = torch.float64
ENV = "POL_GPU_OPS_BACKEND"

_P = ctypes.c_void_p
_I = ctypes.c_int64
_INT = ctypes.c_int
_F = ctypes.c_float
_SIGNATURES: dict[str, list[type]] = {
    "exact_sum_axis": [_P, _P, _I, _I, _I, _INT],
    "exact_mm": [_P, _I, _I, _I, _P, _I, _I, _I, _P, _P, _I, _I, _I, _I, _INT, _INT, _INT],
    "philox_u32": [ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, _I, _P],
    "dropout_mask": [ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, _I, ctypes.c_uint64, _F,
                     _P],
    "col2im": [_P, _P, _P, _I, _I, _I, _I, _I],
    "conv2d_fwd": [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _INT, _INT],
    "conv2d_bwd": [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _INT, _INT, _INT, _INT],
    "conv2d_bwd_maxabs": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I],
    "conv2d_bwd_sums": [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _INT, _INT, _INT],
    "relu_fwd": [_P, _P, _I],
    "scale_mask": [_P, _P, _I, _I, _F, _INT],
    "relu_bwd": [_P, _P, _P, _I],
    "exp_f32": [_P, _P, _I],
    "log_f32": [_P, _P, _I],
    "tanh_f32": [_P, _P, _I],
    "tanh_bwd": [_P, _P, _P, _I],
    "gelu_fwd": [_P, _P, _P, _I],
    "gelu_bwd": [_P, _P, _P, _P, _I],
    "softmax_fwd": [_P, _P, _P, _I, _I, _INT],
    "softmax_bwd": [_P, _P, _P, _I, _I, _INT],
    "log_softmax_fwd": [_P, _P, _P, _P, _P, _P, _I, _I, _INT],
    "log_softmax_bwd": [_P, _P, _P, _I, _I, _INT],
    "cross_entropy_bwd": [_P, _P, _F, _F, _P, _I, _I],
    "layer_norm_fwd": [_P, _P, _P, _P, _P, _P, _I, _I, _INT, _F, _F],
    "layer_norm_bwd": [_P, _P, _P, _P, _P, _P, _P, _I, _I, _INT, _INT, _F],
    "sgd_step": [_P, _P, _P, _I, _F, _F, _F, _INT],
    "adamw_step": [_P, _P, _P, _P, _I, _F, _INT, _F, _F, _F, _F, _F, _F, _F],
    "pol_set_threads": [_INT],
    "pol_set_par_min_ns": [ctypes.c_double],
    "pol_par_last_nth": [],
}

# Functions that return a status (0 ok, -1 out of memory) instead of nothing.
_RETURNS_INT = frozenset({"exact_mm", "conv2d_fwd", "conv2d_bwd", "conv2d_bwd_maxabs", "conv2d_bwd_sums",
                          "pol_par_last_nth"})
_RETURNS_DOUBLE = frozenset({"pol_set_par_min_ns"})

_lib: ctypes.CDLL | None = None
_load_failed = False
_forced: str | None = None


def _load() -> ctypes.CDLL | None:
    global _lib, _load_failed
    if _lib is None and not _load_failed:
        try:
            from .cpu import build

            lib = build.load()
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes = args
                fn.restype = ctypes.c_int if name in _RETURNS_INT else (
                    ctypes.c_double if name in _RETURNS_DOUBLE else None)
            _lib = lib
        except Exception as exc:  # noqa: BLE001 - any build/load problem means "use the reference"
            _load_failed = True
            log.warning("gpu_ops: C kernels unavailable, using the (slower, bit-identical) reference: %s", exc)
    return _lib


MODES = ("fast", "ref", "triton")


def _mode() -> str:
    mode = _forced or os.environ.get(ENV, "fast").strip().lower() or "fast"
    if mode not in MODES:
        raise ValueError(f"{ENV} must be 'fast', 'ref' or 'triton', not {mode!r}")
    return mode


def get_backend_name(device: torch.device | str = "cpu") -> str:
    """'fast', 'ref' or 'triton': what the next op on a float32 tensor of ``device`` will use."""
    mode = _mode()
    if mode != "fast":
        return mode
    if torch.device(device).type == "cpu":
        return "fast" if _load() is not None else "ref"
    return "triton" if _load_triton() is not None else "ref"


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` ('fast', 'ref' or 'triton') inside the block (tests and benchmarks)."""
    global _forced
    if name not in MODES:
        raise ValueError(name)
    old, _forced = _forced, name
    try:
        yield
    finally:
        _forced = old


class BackendUnavailable(RuntimeError):
    """The backend this process was told to use cannot run here (our configuration, not anyone's input)."""


_triton_obj: Any = None
_triton_failed = False
_triton_error = ""


def _load_triton() -> Any:
    """The TritonKernels object, or None (once, with a WARNING) when triton cannot be imported."""
    global _triton_obj, _triton_failed, _triton_error
    if _triton_obj is None and not _triton_failed:
        try:
            from .triton_backend import TritonKernels

            _triton_obj = TritonKernels()
        except Exception as exc:  # ImportError, or a triton that fails to initialise
            _triton_failed, _triton_error = True, f"{type(exc).__name__}: {exc}"
            log.warning("Triton kernels unavailable, CUDA tensors use the (bit-identical) reference ops: %s", exc)
    return _triton_obj


def require_triton() -> Any:
    """The TritonKernels object; raises BackendUnavailable saying why when triton cannot be used."""
    obj = _load_triton()
    if obj is None:
        raise BackendUnavailable("the Triton backend needs the 'triton' package (pip install -e '.[gpu]'), "
                                 f"which cannot be used here: {_triton_error}")
    return obj


def _ok(*ts: torch.Tensor) -> bool:
    for t in ts:
        if t.dtype != F32 or not t.is_cpu:
            return False
    return True


_kernels_obj: Kernels | None = None


def kernels(*ts: torch.Tensor, device: torch.device | None = None) -> Any:
    """The kernels for float32 tensors ``ts`` (on ``device`` when there are none), or None (use the reference).

    CPU tensors: the C kernels (``Kernels``). CUDA tensors: the Triton kernels (``TritonKernels``, the
    same methods) when triton imports, else None. ``POL_GPU_OPS_BACKEND=triton`` (or
    ``use_backend("triton")``) sends CPU tensors to the Triton kernels too (run them under
    ``TRITON_INTERPRET=1``); ``ref`` sends everything to the reference. Called for every op, so the
    common case (no override, CPU tensors, kernels loaded) is kept short."""
    global _kernels_obj
    mode = _forced
    if mode is None:
        env = os.environ.get(ENV)
        if env is not None and env.strip().lower() not in ("", "fast"):
            mode = _mode()  # raises on an invalid value
    if mode == "ref":
        return None
    if mode == "triton":
        for t in ts:
            if t.dtype != F32:
                return None
        return require_triton()
    if not _ok(*ts) or (device is not None and device.type != "cpu"):
        for t in ts:
            if t.dtype != F32:
                return None
        return _load_triton()  # CUDA tensors (or a CUDA device)
    if _kernels_obj is None:
        lib = _load()
        if lib is None:
            return None
        _kernels_obj = Kernels(lib)
    nth = torch.get_num_threads()
    if nth != _kernels_obj.threads:  # the elementwise kernels split large inputs over torch's threads
        _kernels_obj.lib.pol_set_threads(nth)
        _kernels_obj.threads = nth
    return _kernels_obj


_slice_bits = functools.lru_cache(maxsize=None)(ref.slice_bits)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else int(t.data_ptr())


class Kernels:
    """Tensor-level wrappers over the C functions; inputs are made contiguous, outputs are new."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.threads = 0  # what pol_set_threads was last told (0: not yet)

    def exact_sum(self, x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
        x = x.contiguous()
        if dim is None:
            outer, n, inner = 1, x.numel(), 1
            shape: list[int] = []  # like ref.exact_sum, keepdim is ignored without dim
        else:
            d = dim % x.dim()
            outer = int(torch.Size(x.shape[:d]).numel())
            n = x.shape[d]
            inner = int(torch.Size(x.shape[d + 1:]).numel())
            shape = list(x.shape)
            if keepdim:
                shape[d] = 1
            else:
                del shape[d]
        out = torch.empty(shape, dtype=F32)
        if n == 0:
            return out.zero_()
        self.lib.exact_sum_axis(_ptr(x), _ptr(out), outer, n, inner, ref.grid_bits(n))
        return out

    def matmul(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
               transpose_out: bool = False) -> torch.Tensor | None:
        """ref.matmul (+ bias, added in float32 afterwards); None when the shapes need the reference.

        ``transpose_out``: return the same values as a contiguous [..., n, m] tensor (the result's
        last two dims swapped), written directly by the kernel."""
        ad, bd = a.dim(), b.dim()
        if ad == 2 and bd == 2:  # the common case, kept short (this wrapper runs for every matmul)
            m, k = a.shape
            k2, n = b.shape
            if k != k2 or m == 0 or k == 0 or n == 0:
                return None
            sa, sb = a.stride(), b.stride()
            c = torch.empty((n, m) if transpose_out else (m, n), dtype=F32)
            if bias is not None and not bias.is_contiguous():
                bias = bias.contiguous()
            if self.lib.exact_mm(a.data_ptr(), 0, sa[0], sa[1], b.data_ptr(), 0, sb[0], sb[1], c.data_ptr(),
                                 None if bias is None else bias.data_ptr(), 1, m, k, n, _slice_bits(k),
                                 int(transpose_out), torch.get_num_threads()):
                raise MemoryError(f"exact_mm: no memory for the packed operands of a [{m}x{k}] @ [{k}x{n}] matmul")
            return c
        if ad < 2 or bd < 2 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
            return None
        lead = a.shape[:-2]
        m, k = a.shape[-2:]
        n = b.shape[-1]
        if min(m, k, n) == 0:
            return None
        t = _slice_bits(k)
        a3 = a.reshape(-1, m, k) if ad != 3 else a
        b3 = b.reshape(-1, k, n) if bd != 3 else b
        nb = a3.shape[0]
        c = torch.empty((nb, n, m) if transpose_out else (nb, m, n), dtype=F32)
        if bias is not None:
            bias = bias.contiguous()
        # One C call: slice, integer GEMM (exact in any order), unscale (+ bias); any strides.
        sa, sb = a3.stride(), b3.stride()
        # Threads (torch's count) split the work; every element is the same exact integer sum.
        if self.lib.exact_mm(_ptr(a3), sa[0], sa[1], sa[2], _ptr(b3), sb[0], sb[1], sb[2], _ptr(c), _ptr(bias), nb,
                             m, k, n, t, int(transpose_out), torch.get_num_threads()):
            raise MemoryError(f"exact_mm: no memory for {nb} packed [{m}x{k}] @ [{k}x{n}] matmuls")
        return c.reshape(*lead, n, m) if transpose_out else c.reshape(*lead, m, n)

    def philox_u32(self, seed: int, stream: int, a: int, b: int, n: int) -> torch.Tensor:
        """protocol.rng.compute_random_u32(seed, stream, a, b, n) as an int64 tensor."""
        out = torch.empty(n, dtype=torch.int32)
        self.lib.philox_u32(seed, stream & 0xFFFFFFFF, a & 0xFFFFFFFF, b & 0xFFFFFFFF, n, _ptr(out))
        return out.to(torch.int64) & 0xFFFFFFFF

    def dropout_mask(self, seed: int, stream: int, a: int, b: int, threshold: int, scale: float,
                     shape: tuple[int, ...]) -> torch.Tensor:
        """functional.dropout_mask(words of (seed, stream, a, b), p, shape), threshold = floor(p * 2**32)."""
        mask = torch.empty(shape, dtype=F32)
        self.lib.dropout_mask(seed, stream & 0xFFFFFFFF, a & 0xFFFFFFFF, b & 0xFFFFFFFF, mask.numel(), threshold,
                              scale, _ptr(mask))
        return mask

    def conv2d_fwd(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """functional._Conv2d's forward without an im2col matrix: (y, xp), xp the zero-padded input
        (what the backward needs instead of the im2col matrix, k*k times smaller)."""
        x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
        n, c, h, wd = x.shape
        o, _, k, _ = w.shape
        pad = k // 2
        y = torch.empty(n, o, h, wd, dtype=F32)
        xp = torch.empty(n, c, h + 2 * pad, wd + 2 * pad, dtype=F32)
        if self.lib.conv2d_fwd(_ptr(x), _ptr(w), _ptr(b), _ptr(y), _ptr(xp), n, c, h, wd, o, k,
                               _slice_bits(c * k * k), torch.get_num_threads()):
            raise MemoryError(f"conv2d: no memory for a [{n}x{c}x{h}x{wd}] input")
        return y, xp

    def conv2d_bwd(self, dy: torch.Tensor, xp: torch.Tensor, w: torch.Tensor, need_dx: bool
                   ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(dx or None, dw, db) of conv2d_fwd from dy [N, O, H, W] and the padded input xp."""
        dy, w = dy.contiguous(), w.contiguous()
        n, o, h, wd = dy.shape
        c, k = w.shape[1], w.shape[2]
        dw, db = torch.empty_like(w), torch.empty(o, dtype=F32)
        dx = torch.empty(n, c, h, wd, dtype=F32) if need_dx else None
        rows = n * h * wd
        if self.lib.conv2d_bwd(_ptr(dy), _ptr(xp), _ptr(w), _ptr(dw), _ptr(db), _ptr(dx), n, c, h, wd, o, k,
                               _slice_bits(rows), ref.grid_bits(rows), _slice_bits(o), torch.get_num_threads()):
            raise MemoryError(f"conv2d backward: no memory for a [{n}x{o}x{h}x{wd}] gradient")
        return dx, dw, db

    def conv2d_bwd_dx(self, dy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """conv2d_bwd's input gradient alone (row-local: a row-sharded worker computes it by itself)."""
        dy, w = dy.contiguous(), w.contiguous()
        n, o, h, wd = dy.shape
        c, k = w.shape[1], w.shape[2]
        dx = torch.empty(n, c, h, wd, dtype=F32)
        if self.lib.conv2d_bwd(_ptr(dy), None, _ptr(w), None, None, _ptr(dx), n, c, h, wd, o, k, 0, 0,
                               _slice_bits(o), torch.get_num_threads()):
            raise MemoryError(f"conv2d backward: no memory for a [{n}x{o}x{h}x{wd}] gradient")
        return dx

    def conv2d_bwd_maxabs(self, dy: torch.Tensor, xp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This worker's max |x| of the weight gradient's groups: per output channel (rows of dy2ᵀ,
        also the bias sums' groups) [O] and per im2col column (c, di, dj) [C*k*k], float32."""
        dy = dy.contiguous()
        n, o, h, wd = dy.shape
        c = xp.shape[1]
        amax_a, amax_b = torch.empty(o, dtype=F32), torch.empty(c * k * k, dtype=F32)
        if self.lib.conv2d_bwd_maxabs(_ptr(dy), _ptr(xp), _ptr(amax_a), _ptr(amax_b), n, c, h, wd, o, k):
            raise MemoryError(f"conv2d backward: no memory for a [{n}x{o}x{h}x{wd}] gradient")
        return amax_a, amax_b

    def conv2d_bwd_sums(self, dy: torch.Tensor, xp: torch.Tensor, k: int, ea: torch.Tensor, eb: torch.Tensor,
                        t: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This worker's exact integer sums (float64) of dw [O, C*k*k] and db [O] on the grids of the
        agreed exponents ``ea`` [O], ``eb`` [C*k*k] and the whole batch's ``t``, ``p``."""
        dy = dy.contiguous()
        n, o, h, wd = dy.shape
        c = xp.shape[1]
        ea32, eb32 = ea.to(torch.int32).contiguous(), eb.to(torch.int32).contiguous()
        s_dw, s_db = torch.empty(o, c * k * k, dtype=F64), torch.empty(o, dtype=F64)
        if self.lib.conv2d_bwd_sums(_ptr(dy), _ptr(xp), _ptr(ea32), _ptr(eb32), _ptr(s_dw), _ptr(s_db), n, c, h, wd,
                                    o, k, t, p, torch.get_num_threads()):
            raise MemoryError(f"conv2d backward: no memory for a [{n}x{o}x{h}x{wd}] gradient")
        return s_dw, s_db

    def col2im(self, dcols: torch.Tensor, n: int, c: int, h: int, w: int, k: int) -> torch.Tensor:
        """functional._Conv2d.backward's shifted-patch accumulation (row-major offsets, one add each)."""
        dcols = dcols.contiguous()
        dx = torch.empty(n, c, h, w, dtype=F32)
        pbuf = torch.empty((h + 2 * (k // 2)) * (w + 2 * (k // 2)), dtype=F32)
        self.lib.col2im(_ptr(dcols), _ptr(dx), _ptr(pbuf), n, c, h, w, k)
        return dx

    def scale_mask(self, x: torch.Tensor, scale: float, backward: bool) -> torch.Tensor:
        """Causal scores [..., T, T]: x * scale below/on the diagonal; above it -inf (forward) or +0 (backward)."""
        x = x.contiguous()
        y = torch.empty_like(x)
        t = x.shape[-1]
        self.lib.scale_mask(_ptr(x), _ptr(y), x.numel() // max(t * t, 1), t, scale, int(backward))
        return y

    def relu_fwd(self, x: torch.Tensor) -> torch.Tensor:
        return self._unary("relu_fwd", x)

    def relu_bwd(self, dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dy, y = dy.contiguous(), y.contiguous()
        dx = torch.empty_like(y)
        self.lib.relu_bwd(_ptr(dy), _ptr(y), _ptr(dx), y.numel())
        return dx

    def _unary(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        getattr(self.lib, name)(_ptr(x), _ptr(y), x.numel())
        return y

    def exp(self, x: torch.Tensor) -> torch.Tensor:
        return self._unary("exp_f32", x)

    def log(self, x: torch.Tensor) -> torch.Tensor:
        return self._unary("log_f32", x)

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return self._unary("tanh_f32", x)

    def tanh_bwd(self, dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dy, y = dy.contiguous(), y.contiguous()
        dx = torch.empty_like(y)
        self.lib.tanh_bwd(_ptr(dy), _ptr(y), _ptr(dx), y.numel())
        return dx

    def gelu_fwd(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.contiguous()
        y, th = torch.empty_like(x), torch.empty_like(x)
        self.lib.gelu_fwd(_ptr(x), _ptr(y), _ptr(th), x.numel())
        return y, th

    def gelu_bwd(self, dy: torch.Tensor, x: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        dy, x, th = dy.contiguous(), x.contiguous(), th.contiguous()
        dx = torch.empty_like(x)
        self.lib.gelu_bwd(_ptr(dy), _ptr(x), _ptr(th), _ptr(dx), x.numel())
        return dx

    @staticmethod
    def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = x.contiguous()
        n = x.shape[-1]
        return x, x.numel() // max(n, 1), n

    def softmax_fwd(self, x: torch.Tensor) -> torch.Tensor:
        x, r, n = self._rows(x)
        mx = x.amax(dim=-1).contiguous()  # the very torch call of the reference (order-free)
        y = torch.empty_like(x)
        self.lib.softmax_fwd(_ptr(x), _ptr(mx), _ptr(y), r, n, ref.grid_bits(n))
        return y

    def softmax_bwd(self, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        y, r, n = self._rows(y)
        dy = dy.contiguous()
        dx = torch.empty_like(y)
        self.lib.softmax_bwd(_ptr(y), _ptr(dy), _ptr(dx), r, n, ref.grid_bits(n))
        return dx

    def log_softmax_fwd(self, x: torch.Tensor, target: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(log p or None when ``target`` is given, p, log p at target per row or None)."""
        x, r, n = self._rows(x)
        mx = x.amax(dim=-1).contiguous()
        p = torch.empty_like(x)
        if target is None:
            logp: torch.Tensor | None = torch.empty_like(x)
            lp_at = None
            tgt = None
        else:
            logp = None
            tgt = target.reshape(-1).to(torch.int64).contiguous()
            if tgt.numel() != r or bool(((tgt < 0) | (tgt >= n)).any()):
                raise IndexError("cross_entropy target out of range")
            lp_at = torch.empty(r, dtype=F32)
        self.lib.log_softmax_fwd(_ptr(x), _ptr(mx), _ptr(logp), _ptr(p), _ptr(tgt), _ptr(lp_at), r, n,
                                 ref.grid_bits(n))
        return logp, p, lp_at

    def log_softmax_bwd(self, p: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        p, r, n = self._rows(p)
        dy = dy.contiguous()
        dx = torch.empty_like(p)
        self.lib.log_softmax_bwd(_ptr(p), _ptr(dy), _ptr(dx), r, n, ref.grid_bits(n))
        return dx

    def cross_entropy_bwd(self, p: torch.Tensor, target: torch.Tensor, dloss: float) -> torch.Tensor:
        p, r, n = self._rows(p)
        tgt = target.reshape(-1).to(torch.int64).contiguous()
        dx = torch.empty_like(p)
        self.lib.cross_entropy_bwd(_ptr(p), _ptr(tgt), dloss, float(r), _ptr(dx), r, n)
        return dx

    def layer_norm_fwd(self, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, r, n = self._rows(x)
        g, b = g.contiguous(), b.contiguous()
        y, xhat = torch.empty_like(x), torch.empty_like(x)
        rstd = torch.empty(r, 1, dtype=F32)
        eps32 = float(torch.tensor(eps, dtype=F32))
        self.lib.layer_norm_fwd(_ptr(x), _ptr(g), _ptr(b), _ptr(y), _ptr(xhat), _ptr(rstd), r, n,
                                ref.grid_bits(n), eps32, float(n))
        return y, xhat, rstd

    def layer_norm_bwd(self, dy: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor, g: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xhat, r, n = self._rows(xhat)
        dy, rstd, g = dy.contiguous(), rstd.contiguous(), g.contiguous()
        dx = torch.empty_like(xhat)
        dg, db = torch.empty(n, dtype=F32), torch.empty(n, dtype=F32)
        self.lib.layer_norm_bwd(_ptr(dy), _ptr(xhat), _ptr(rstd), _ptr(g), _ptr(dx), _ptr(dg), _ptr(db), r, n,
                                ref.grid_bits(n), ref.grid_bits(r), float(n))
        return dx, dg, db

    def sgd_step(self, p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, lr: float, momentum: float,
                 weight_decay: float) -> None:
        g = g.contiguous()
        self.lib.sgd_step(_ptr(p), _ptr(g), _ptr(buf), p.numel(), lr, momentum, weight_decay,
                          int(weight_decay != 0.0))

    def adamw_step(self, p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lrwd: float,
                   has_wd: bool, coefs: tuple[float, float, float, float, float, float, float]) -> None:
        g = g.contiguous()
        self.lib.adamw_step(_ptr(p), _ptr(g), _ptr(m), _ptr(v), p.numel(), lrwd, int(has_wd), *coefs)
