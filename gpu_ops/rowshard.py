"""Row-sharded exact reductions: one training step split over workers, the same bits (SPEC.md §13.1).

Data-parallel training gives each worker a contiguous slice of the batch's samples. Every
operator is row-local except the reductions over the batch rows: parameter gradients
(``dW = matmul(dyᵀ, x)`` with K = rows, bias/gain sums, the embedding's one-hot matmul, the
position embedding's sum over the batch) and the loss mean. Each of these is, by SPEC.md §10.2
and §10.3, a sum of *integers* on a grid fixed by the whole group's maximum exponent and size.
So a worker can compute its share exactly once it knows the group's exponent:

1. each worker finds the local maximum exponent of each group, and all agree on the maximum
   (an all-reduce MAX of small integers);
2. each worker truncates its values to that common grid and sums its integers (exact);
3. the integer partial sums are added across workers (an all-reduce SUM of int64, exact:
   every partial and total is below 2^53 by the grid's choice of P or t);
4. every worker scales the total back and rounds once, as the single-process program does.

The result is the single-process result bit for bit, for any number of workers and any split.

While ``sharded(shard)`` is active, ``gpu_ops.functional`` sends its row reductions here; dim 0
of every activation is then the worker's rows. Ops on replicated tensors (parameters) must not
use the row reductions. The collective itself is abstract (``Collective``): prover/distributed.py
implements it with torch.distributed (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from . import ref

F32 = torch.float32
F64 = torch.float64
I64 = torch.int64

# The exponent a worker reports for a group it holds no non-zero value of: below any real
# exponent (>= -148), so the MAX is the exponent of the values that exist; a group that is zero
# everywhere maps back to 0, SPEC.md §10.1's maxexp of an all-zero group.
NO_EXPONENT = -(1 << 20)


class Collective(Protocol):
    """In-place all-reduce of an int64 tensor over every worker of the step."""

    def all_reduce_max(self, t: torch.Tensor) -> None: ...

    def all_reduce_sum(self, t: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class RowShard:
    """This worker's samples ``[lo, hi)`` of a batch of ``total`` samples, and how to reach the others."""

    collective: Collective
    lo: int
    hi: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi <= self.total:
            raise ValueError(f"row shard [{self.lo}, {self.hi}) is not a non-empty slice of {self.total} samples")

    def get_global_rows(self, local_rows: int) -> int:
        """Size of the whole group whose local part has ``local_rows`` rows: every sample of a
        batch contributes the same number of rows (1 for an image, T for a sequence)."""
        mine = self.hi - self.lo
        if local_rows % mine:
            raise ValueError(f"{local_rows} rows do not split evenly over this worker's {mine} samples")
        return local_rows // mine * self.total


_active: contextvars.ContextVar[RowShard | None] = contextvars.ContextVar("pol_row_shard", default=None)


def get_shard() -> RowShard | None:
    """The active shard, or None in a single-process step."""
    return _active.get()


@contextmanager
def sharded(shard: RowShard) -> Iterator[None]:
    token = _active.set(shard)
    try:
        yield
    finally:
        _active.reset(token)


def split_batch(total: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous sample ranges of ``workers`` workers: the first ``total mod workers`` get one more.

    Each worker needs at least one sample (workers ≤ batch size)."""
    if workers < 1 or workers > total:
        raise ValueError(f"cannot split a batch of {total} samples over {workers} workers (1 ≤ workers ≤ batch)")
    base, extra = divmod(total, workers)
    bounds, lo = [], 0
    for rank in range(workers):
        hi = lo + base + (1 if rank < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _local_exponent(amax: torch.Tensor) -> torch.Tensor:
    _, e = torch.frexp(amax)
    return torch.where(amax > 0, e.to(I64), torch.full_like(e, NO_EXPONENT, dtype=I64))


def _agree(shard: RowShard, *local: torch.Tensor) -> list[torch.Tensor]:
    """Step 1: the groups' exponents, maximised over workers in one all-reduce."""
    flat = torch.cat([e.reshape(-1) for e in local])
    shard.collective.all_reduce_max(flat)
    flat = torch.where(flat == NO_EXPONENT, torch.zeros_like(flat), flat)
    out, at = [], 0
    for e in local:
        out.append(flat[at:at + e.numel()].view(e.shape))
        at += e.numel()
    return out


def exact_sum_rows(x: torch.Tensor, shard: RowShard) -> torch.Tensor:
    """``ref.exact_sum(X, dim=0)`` of the whole batch X, of which ``x`` holds this worker's rows."""
    n = shard.get_global_rows(x.shape[0])
    p = ref.grid_bits(n)
    (e,) = _agree(shard, _local_exponent(x.abs().amax(dim=0)))
    q = torch.trunc(x.to(F64) * ref.pow2_f64(p - e))
    s = q.sum(dim=0).to(I64)  # an integer below 2^52 in magnitude: the conversion is exact
    shard.collective.all_reduce_sum(s)
    return ((s.to(F64) + 0.0) * ref.pow2_f64(e - p)).to(F32)


def matmul_rows(a: torch.Tensor, b: torch.Tensor, shard: RowShard) -> torch.Tensor:
    """``ref.matmul(A, B)`` with A ``[M, K]`` and B ``[K, N]`` whose K rows are the batch: ``a`` and
    ``b`` hold this worker's columns of A and rows of B (e.g. ``dW = dyᵀ·x``)."""
    k = shard.get_global_rows(a.shape[1])
    t = ref.slice_bits(k)
    ea, eb = _agree(shard, _local_exponent(a.abs().amax(dim=1)), _local_exponent(b.abs().amax(dim=0)))
    ai = torch.trunc(a.to(F64) * ref.pow2_f64(t - ea).unsqueeze(1))
    bi = torch.trunc(b.to(F64) * ref.pow2_f64(t - eb).unsqueeze(0))
    # Integer products below 2^(2t) and partial sums below 2^53: a float64 GEMM is exact here.
    s = torch.matmul(ai, bi).to(I64)
    shard.collective.all_reduce_sum(s)
    return ((s.to(F64) + 0.0) * ref.pow2_f64(ea - t).unsqueeze(1) * ref.pow2_f64(eb - t).unsqueeze(0)).to(F32)
