"""Row-sharded conv backward on the fused C kernel (functional._conv2d_bwd_sharded).

Each worker's kernel hands back its exact integer sums of dW and db on the grids of exponents
agreed by all workers; the sums are added across workers and unscaled once. Workers here are
threads of one process joined by an in-memory collective (the real gloo group is exercised by
tests/offline/test_distributed.py); each result is compared with the single-process reference
(im2col + ref.matmul, ``use_backend("ref")``) bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from gpu_ops import backend, rowshard
from gpu_ops import functional as F

pytestmark = pytest.mark.skipif(backend._load() is None, reason="C kernels could not be built")

F32 = torch.float32


class ThreadCollective:
    """All-reduce between ``world`` threads (each calls with its own tensor, all get the result)."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=60)
        self.lock = threading.Lock()
        self.parts: list[torch.Tensor] = []

    def _reduce(self, t: torch.Tensor, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        with self.lock:
            self.parts.append(t.clone())
        self.barrier.wait()
        out = self.parts[0].clone()
        for p in self.parts[1:]:
            out = op(out, p)
        self.barrier.wait()
        with self.lock:
            self.parts.clear()
        self.barrier.wait()
        t.copy_(out)

    def all_reduce_max(self, t: torch.Tensor) -> None:
        self._reduce(t, torch.maximum)

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        self._reduce(t, torch.add)


def _grads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, need_dx: bool) -> list[Any]:
    xx = x.clone().requires_grad_(need_dx)
    ww, bb = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    F.conv2d(xx, ww, bb).backward(dy)  # type: ignore[no-untyped-call]
    return [xx.grad, ww.grad, bb.grad]


def _sharded(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, world: int, need_dx: bool,
             on_start: Callable[[int], None] = lambda rank: None) -> list[list[Any]]:
    coll, n = ThreadCollective(world), x.shape[0]
    out: list[list[Any]] = [[] for _ in range(world)]
    errors: list[BaseException] = []

    def worker(rank: int, lo: int, hi: int) -> None:
        try:
            on_start(rank)
            with rowshard.sharded(rowshard.RowShard(coll, lo, hi, n)):
                out[rank] = _grads(x[lo:hi], w, b, dy[lo:hi], need_dx)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            coll.barrier.abort()
    threads = [threading.Thread(target=worker, args=(r, lo, hi))
               for r, (lo, hi) in enumerate(rowshard.split_batch(n, world))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    return out


def _case(n: int, c: int, h: int, w: int, o: int, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g) * torch.exp2(torch.randint(-30, 30, (n, c, 1, 1), generator=g).to(F32))
    x[-1] = 0.0  # the last worker's columns may be all zero: its exponents are "none"
    x.view(-1)[:2] = torch.tensor([-0.0, 1e-45])
    wt = torch.randn(o, c, k, k, generator=g) * 0.1
    b = torch.randn(o, generator=g)
    dy = torch.randn(n, o, h, w, generator=g) * torch.exp2(torch.randint(-20, 20, (n, o, 1, 1), generator=g).to(F32))
    dy[0, 0] = 0.0
    dy[0, 1] = 1e-40  # a subnormal group member on one worker, normal values on the others
    return x, wt, b, dy


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32)))


@pytest.mark.parametrize(("shape", "world", "need_dx"), [((4, 3, 8, 8, 5, 3), 2, True),
                                                          ((5, 2, 6, 9, 4, 5), 3, False),
                                                          ((6, 4, 16, 16, 8, 3), 4, True)])
def test_fused_sharded_backward_equals_single_process_reference(shape: tuple[int, ...], world: int, need_dx: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    x, w, b, dy = _case(*shape, seed=sum(shape) + world)
    with backend.use_backend("ref"):
        want = _grads(x, w, b, dy, need_dx)
    calls = []
    real = backend.Kernels.conv2d_bwd_sums

    def counting(self: backend.Kernels, *a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(self, *a, **kw)
    monkeypatch.setattr(backend.Kernels, "conv2d_bwd_sums", counting)
    got = _sharded(x, w, b, dy, world, need_dx)
    assert len(calls) == world  # every worker took the fused kernel, none the im2col fallback
    for _, dw_w, db_w in got:
        assert _bits_equal(dw_w, want[1]) and _bits_equal(db_w, want[2])
    if need_dx:
        assert _bits_equal(torch.cat([g[0] for g in got]), want[0])
    else:
        assert all(g[0] is None for g in got)


def test_fused_and_im2col_workers_interoperate(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker without the C kernels (im2col path) and two with them: the collectives carry the
    same groups in the same order, so all three agree on the reference's bits."""
    x, w, b, dy = _case(6, 3, 8, 8, 4, 3, seed=7)
    with backend.use_backend("ref"):
        want = _grads(x, w, b, dy, True)
    real = backend.kernels
    plain: set[int] = set()

    def kernels(*ts: torch.Tensor) -> Any:
        return None if threading.get_ident() in plain else real(*ts)
    monkeypatch.setattr(backend, "kernels", kernels)

    def on_start(rank: int) -> None:
        if rank == 0:
            plain.add(threading.get_ident())
    got = _sharded(x, w, b, dy, 3, True, on_start)
    assert plain, "rank 0 should have run without the kernels"
    for _, dw_w, db_w in got:
        assert _bits_equal(dw_w, want[1]) and _bits_equal(db_w, want[2])
    assert _bits_equal(torch.cat([g[0] for g in got]), want[0])


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_gradient_stops_every_worker_instead_of_summing_garbage(
        fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """inf in dy has no integer partial: converted to int64 it became a finite, worker-count-dependent
    weight gradient where one process gets NaN/inf. Now every worker raises at that step, on the fused
    path and on the im2col path alike."""
    x, w, b, dy = _case(4, 3, 8, 8, 5, 3, seed=3)
    dy[3, 0, 0, 0] = float("inf")  # on the second worker only
    if not fused:
        monkeypatch.setattr(backend, "kernels", lambda *ts, **kw: None)
    with backend.use_backend("ref"):
        single = _grads(x, w, b, dy, True)
    assert not torch.isfinite(single[1]).all()  # one process: a non-finite weight gradient
    coll, errors = ThreadCollective(2), []

    def worker(lo: int, hi: int) -> None:
        try:
            with rowshard.sharded(rowshard.RowShard(coll, lo, hi, 4)):
                _grads(x[lo:hi], w, b, dy[lo:hi], True)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=span) for span in rowshard.split_batch(4, 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert len(errors) == 2 and all(isinstance(e, rowshard.NonFiniteGradient) for e in errors), errors
