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
from collections.abc import Callable, Iterator, Sequence
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
    return _unflatten(flat, local)


def _unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, at = [], 0
    for t in like:
        out.append(flat[at:at + t.numel()].view(t.shape))
        at += t.numel()
    return out


def reduce_rows(shard: RowShard, sums: Sequence[torch.Tensor], matmuls: Sequence[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Several row reductions of one op with two collectives in all.

    ``sums``: tensors ``x`` (this worker's rows) whose ``ref.exact_sum(X, dim=0)`` over the whole
    batch X is wanted. ``matmuls``: pairs ``(a, b)``, A ``[M, K]`` and B ``[K, N]`` whose K rows are
    the batch (e.g. ``dW = dyᵀ·x``), of which ``a`` holds this worker's columns and ``b`` its rows;
    ``ref.matmul(A, B)`` is wanted. Returns the results in the same order, equal on every worker.
    """
    threads = torch.get_num_threads()
    try:
        # torch parallelises small float64 ops, and on a busy machine every parallel region waits
        # for a time slice (measured: 30 ms for a 128x64 trunc with 2 threads); only a large
        # GEMM is worth the threads, and the thread count never changes an integer sum.
        torch.set_num_threads(1)
        return _reduce_rows(shard, sums, matmuls, threads)
    finally:
        torch.set_num_threads(threads)


_PARALLEL_GEMM = 1 << 24  # multiply-adds from which a local GEMM gets the caller's threads


def _reduce_rows(shard: RowShard, sums: Sequence[torch.Tensor], matmuls: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 threads: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    local: list[torch.Tensor] = [_local_exponent(x.abs().amax(dim=0)) for x in sums]
    for a, b in matmuls:
        local += [_local_exponent(a.abs().amax(dim=1)), _local_exponent(b.abs().amax(dim=0))]
    exps = _agree(shard, *local)
    partials: list[torch.Tensor] = []
    scales: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
    for x, e in zip(sums, exps):
        p = ref.grid_bits(shard.get_global_rows(x.shape[0]))
        q = torch.trunc(x.to(F64) * ref.pow2_f64(p - e))
        partials.append(q.sum(dim=0))  # an integer below 2^52 in magnitude (or non-finite: see _sum_exact)
        scales.append((p, e, None))
    for i, (a, b) in enumerate(matmuls):
        t = ref.slice_bits(shard.get_global_rows(a.shape[1]))
        ea, eb = exps[len(sums) + 2 * i], exps[len(sums) + 2 * i + 1]
        ai = torch.trunc(a.to(F64) * ref.pow2_f64(t - ea).unsqueeze(1))
        bi = torch.trunc(b.to(F64) * ref.pow2_f64(t - eb).unsqueeze(0))
        # Integer products below 2^(2t), partial sums below 2^53: a float64 GEMM is exact here.
        if ai.shape[0] * ai.shape[1] * bi.shape[1] >= _PARALLEL_GEMM:
            torch.set_num_threads(threads)
        partials.append(torch.matmul(ai, bi))
        torch.set_num_threads(1)
        scales.append((t, ea, eb))
    totals = _sum_exact(shard, partials)  # step 4: integers, exact in any order
    out_sums = [(s * ref.pow2_f64(e - p)).to(F32) for s, (p, e, _) in zip(totals[:len(sums)], scales)]
    out_mm = []
    for s, (t, row_e, col_e) in zip(totals[len(sums):], scales[len(sums):]):
        assert col_e is not None
        out_mm.append((s * ref.pow2_f64(row_e - t).unsqueeze(1) * ref.pow2_f64(col_e - t).unsqueeze(0)).to(F32))
    return out_sums, out_mm


def reduce_precomputed(shard: RowShard, local_amax: Sequence[torch.Tensor],
                       partial_sums: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A row reduction whose local integer work is done by a fused kernel (the conv's weight gradient).

    ``local_amax``: this worker's max |x| of each group (any shapes); ``partial_sums(exps)`` gets the
    agreed exponents in the same shapes and returns this worker's exact integer sums on their grids
    (float64, each below 2^53 in magnitude). Returns ``(exps, totals)``, the totals over all workers
    as float64 (+0 for a zero sum), for the caller to unscale as ``ref`` does. The same two
    collectives as ``reduce_rows`` (steps 1 and 3 of the module's scheme)."""
    exps = _agree(shard, *[_local_exponent(a) for a in local_amax])
    return exps, _sum_exact(shard, list(partial_sums(exps)))


class NonFiniteGradient(ArithmeticError):
    """A row-sharded gradient sum met inf or NaN; every worker raises it at the same step."""


def _sum_exact(shard: RowShard, partials: list[torch.Tensor]) -> list[torch.Tensor]:
    """The float64 integer partials summed over all workers as int64 (exact in any order), as float64
    with +0 for a zero sum.

    A non-finite partial cannot travel as an integer (it would become a finite, worker-count-dependent
    value where one process gets inf or NaN), so each worker also sends how many it has, and if any
    worker has one, all of them raise NonFiniteGradient together (none is left waiting in a collective).
    A single process carries the NaN into the state and stops at the next step's non-finite loss."""
    finite = [torch.isfinite(s) for s in partials]
    bad = sum(int((~f).sum()) for f in finite)
    ints = [torch.where(f, s, torch.zeros_like(s)).to(I64) for s, f in zip(partials, finite)]
    flat = torch.cat([s.reshape(-1) for s in ints] + [torch.tensor([bad], dtype=I64)])
    shard.collective.all_reduce_sum(flat)
    if int(flat[-1]) > 0:
        raise NonFiniteGradient(f"{int(flat[-1])} non-finite gradient sums across the row shards")
    return [s.to(F64) + 0.0 for s in _unflatten(flat[:-1], ints)]


def exact_sum_rows(x: torch.Tensor, shard: RowShard) -> torch.Tensor:
    """``ref.exact_sum(X, dim=0)`` of the whole batch X, of which ``x`` holds this worker's rows."""
    return reduce_rows(shard, [x], [])[0][0]


def matmul_rows(a: torch.Tensor, b: torch.Tensor, shard: RowShard) -> torch.Tensor:
    """``ref.matmul(A, B)`` with A ``[M, K]`` and B ``[K, N]`` whose K rows are the batch: ``a`` and
    ``b`` hold this worker's columns of A and rows of B (e.g. ``dW = dyᵀ·x``)."""
    return reduce_rows(shard, [], [(a, b)])[1][0]
