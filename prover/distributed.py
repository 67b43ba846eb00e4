"""One proof from many workers: data-parallel training with the single-process state roots (SPEC.md §13.1).

Worker r of W trains on samples ``split_batch(B, W)[r]`` of every batch; the row reductions of
the step (weight and bias gradients, the loss mean) are exact across workers
(``gpu_ops.rowshard``): agree on each group's exponent (all-reduce MAX), sum the integers
(all-reduce SUM of int64), round once. Gradients, clipping and the optimizer update are then
the same on every worker, bit for bit, and equal to a single process's, so the state and its
roots do not depend on W. Rank 0 runs ``prover.prove.prove`` (resume, checkpoints, transcript,
claim); the others follow it: they receive its starting state, take the same steps, and every
checkpoint root is compared across all workers before rank 0 writes it.

``prove_with_workers`` starts W local worker processes (``python -m prover.distributed``) that
meet through a TCP store on 127.0.0.1 held by the caller, and talk gloo on the loopback
interface. The caller supervises them: the first worker to fail, a timeout, Ctrl-C or SIGTERM
ends every one of them. Workers also die with their parent (Linux). NCCL on GPUs takes the
same code path (``--backend nccl``), untested here.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from gpu_ops import rowshard
from protocol.constants import OFFLINE_POSTING_ID
from protocol.errors import PolError
from protocol.task import Task, compute_task_id, format_task_toml, parse_task_toml

from .training import Runtime, TrainState, compute_root, init_state, train_step

if TYPE_CHECKING:  # a follower never signs: it does not import the BLS stack (seconds of start-up)
    from .prove import ProgressFn, ProveResult

log = logging.getLogger(__name__)

DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
_TERMINATE_GRACE_S = 5.0


class DistributedError(PolError):
    """A data-parallel proof failed: a worker died, timed out or diverged (our side, not the task's)."""


class TorchCollective:
    """``rowshard.Collective`` over a torch.distributed process group (gloo: CPU tensors; NCCL: the
    tensors' GPU)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group

    def all_reduce_max(self, t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)


def _state_tensors(state: TrainState) -> list[torch.Tensor]:
    """Every f32 tensor of the state in a fixed order (the same on every worker of one task)."""
    out = [state.params[k] for k in sorted(state.params)]
    for slot in sorted(state.slots):
        out += [state.slots[slot][k] for k in sorted(state.slots[slot])]
    return out


def _root_words(root: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(root, dtype="<i8").copy())


class RankSync:
    """``prover.prove.StepSync`` for every rank: rank 0 sends, the others receive and check."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def send_header(self, rt: Runtime, state: TrainState) -> None:
        """Rank 0: the task id, run seed and step, so followers can build the same runtime."""
        words = np.frombuffer(compute_task_id(rt.task), dtype="<i8").tolist()
        seed = int(np.array(rt.seed, dtype=np.uint64).view(np.int64))
        dist.broadcast(self._to(torch.tensor(words + [seed, state.step], dtype=torch.int64)), src=0)

    @staticmethod
    def receive_header(device: torch.device) -> tuple[bytes, int, int]:
        header = torch.zeros(6, dtype=torch.int64, device=device)
        dist.broadcast(header, src=0)
        values = header.cpu().numpy()
        seed = int(values[4:5].view(np.uint64)[0])
        return values[:4].astype("<i8").tobytes(), seed, int(values[5])

    def share_state(self, state: TrainState) -> None:
        """Rank 0's state tensors to everyone (one flat broadcast), then a root check."""
        tensors = _state_tensors(state)
        flat = self._to(torch.cat([t.reshape(-1) for t in tensors]))
        dist.broadcast(flat, src=0)
        if self.rank != 0:
            at, host = 0, flat.cpu()
            for t in tensors:
                t.copy_(host[at:at + t.numel()].view_as(t))
                at += t.numel()
        self.check(state, compute_root(state))

    def start(self, rt: Runtime, state: TrainState) -> None:
        self.send_header(rt, state)
        self.share_state(state)

    def check(self, state: TrainState, root: bytes) -> None:
        """All-gather every worker's root after ``state.step`` and insist they are equal."""
        mine = self._to(_root_words(root))
        roots = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(roots, mine)
        got = [r.cpu().numpy().astype("<i8").tobytes() for r in roots]
        bad = [r for r, other in enumerate(got) if other != got[0]]
        if bad:
            raise DistributedError(f"workers {bad} reached another state root than worker 0 after step "
                                   f"{state.step} ({got[bad[0]].hex()[:16]}… vs {got[0].hex()[:16]}…): "
                                   "the data-parallel step is not exact")

    def checkpoint(self, state: TrainState, root: bytes) -> None:
        self.check(state, root)


def follow(task: Task, sync: RankSync) -> int:
    """A rank > 0 worker: receive the starting state from rank 0, then take the same steps in
    lockstep (run inside ``rowshard.sharded``). Returns the final step."""
    task_id, seed, step = RankSync.receive_header(sync.device)
    if task_id != compute_task_id(task):
        raise DistributedError(f"worker {sync.rank} was given task {compute_task_id(task).hex()[:16]}…, "
                               f"worker 0 proves {task_id.hex()[:16]}…")
    rt = Runtime.for_task(task, seed)
    state = init_state(rt)
    state.step = step
    sync.share_state(state)
    k = task.checkpoint_interval
    while state.step < task.total_steps:
        train_step(rt, state)
        if state.step % k == 0:
            sync.checkpoint(state, compute_root(state))
    return state.step


# --- one worker process ----------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM this worker when the supervising process dies, whatever kills it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _emit(stream: IO[str], doc: dict[str, Any]) -> None:
    stream.write(json.dumps(doc) + "\n")
    stream.flush()


def worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prover.distributed", description="one data-parallel prover worker")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--store", required=True, help="HOST:PORT of the TCP store the workers meet at")
    p.add_argument("--task", required=True, help="the task TOML file (every rank the same task)")
    p.add_argument("--out", help="rank 0: the proof directory")
    p.add_argument("--posting", default=OFFLINE_POSTING_ID.hex(), help="rank 0: posting id (hex)")
    p.add_argument("--keep-step-roots", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    p.add_argument("--timeout", type=float, default=DEFAULT_COLLECTIVE_TIMEOUT_S)
    p.add_argument("--parent-pid", type=int, default=0)
    args = p.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format=f"worker {args.rank}: %(levelname)s %(message)s")
    # Rank 0 gets the signing key on stdin (never in argv or on disk) and reports on stdout.
    secret = bytes.fromhex(sys.stdin.readline().strip()) if args.rank == 0 else b""
    task = parse_task_toml(Path(args.task).read_text())
    host, port = args.store.rsplit(":", 1)
    timeout = datetime.timedelta(seconds=args.timeout)
    store = dist.TCPStore(host, int(port), None, False, timeout=timeout)  # type: ignore[attr-defined]
    dist.init_process_group(args.backend, store=store, rank=args.rank, world_size=args.world, timeout=timeout)
    device = torch.device("cuda", torch.cuda.current_device()) if args.backend == "nccl" else torch.device("cpu")
    try:
        lo, hi = rowshard.split_batch(task.batch_size, args.world)[args.rank]
        shard = rowshard.RowShard(TorchCollective(), lo, hi, task.batch_size)
        sync = RankSync(args.rank, args.world, device)
        with rowshard.sharded(shard):
            if args.rank != 0:
                follow(task, sync)
                return 0
            from .prove import prove

            result = prove(task, Path(args.out), secret, progress=lambda s, loss: _emit(
                sys.stdout, {"step": s, "loss": loss}), posting_id=bytes.fromhex(args.posting),
                keep_step_roots=args.keep_step_roots, sync=sync)
        _emit(sys.stdout, {"done": {"resumed_from_step": result.resumed_from_step, "seconds": result.seconds,
                                    "final_loss": result.final_loss}})
        return 0
    except PolError as exc:  # the reason, for the supervisor to report (the others only see a closed peer)
        if args.rank == 0:
            _emit(sys.stdout, {"error": f"{type(exc).__name__}: {exc}"})
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    finally:
        dist.destroy_process_group()


# --- the supervisor --------------------------------------------------------------------------------


@dataclass
class _Worker:
    rank: int
    proc: subprocess.Popen[str]
    log_path: Path


def _terminate(workers: list[_Worker]) -> None:
    """SIGTERM every live worker, then SIGKILL what is left after a grace period; reap them all."""
    for w in workers:
        if w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            w.proc.wait()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While supervising, SIGTERM unwinds like Ctrl-C so the workers are cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def prove_with_workers(task: Task, out: Path, secret_key: bytes, workers: int, progress: ProgressFn | None = None,
                       posting_id: bytes = OFFLINE_POSTING_ID, keep_step_roots: bool = False,
                       threads: int | None = None, timeout_s: float | None = None,
                       collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> ProveResult:
    """``prove`` with ``workers`` local worker processes (gloo over 127.0.0.1); the same claim and roots.

    ``threads``: torch threads per worker (default: the cores divided among the workers).
    ``timeout_s`` bounds the whole run. Raises ``DistributedError`` (every worker stopped) when a
    worker fails; ``ValueError`` if the batch cannot be split over ``workers``."""
    rowshard.split_batch(task.batch_size, workers)  # refuse an impossible split before starting anything
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    started = time.perf_counter()
    timeout = datetime.timedelta(seconds=collective_timeout_s)
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timeout,  # type: ignore[attr-defined]
                          wait_for_workers=False)
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    procs: list[_Worker] = []
    done: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pol-workers-") as tmp, _sigterm_raises():
        task_file = Path(tmp) / "task.toml"
        task_file.write_text(format_task_toml(task))
        try:
            for rank in range(workers):
                cmd = [sys.executable, "-m", "prover.distributed", "--rank", str(rank), "--world", str(workers),
                       "--store", f"127.0.0.1:{store.port}", "--task", str(task_file), "--threads", str(threads),
                       "--timeout", str(collective_timeout_s), "--parent-pid", str(os.getpid())]
                if rank == 0:
                    cmd += ["--out", str(out), "--posting", posting_id.hex()]
                    if keep_step_roots:
                        cmd.append("--keep-step-roots")
                log_path = Path(tmp) / f"worker-{rank}.log"
                with log_path.open("w") as err:
                    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                                            stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL, stderr=err,
                                            text=True, env=env, start_new_session=True)
                procs.append(_Worker(rank, proc, log_path))
            lead = procs[0].proc
            assert lead.stdin is not None and lead.stdout is not None
            lead.stdin.write(secret_key.hex() + "\n")
            lead.stdin.close()
            reader = threading.Thread(target=_read_reports, args=(lead.stdout, progress, done), daemon=True)
            reader.start()
            _supervise(procs, None if timeout_s is None else time.monotonic() + timeout_s, done)
            reader.join(timeout=10)
        finally:
            _terminate(procs)
    if "done" not in done:
        raise DistributedError("worker 0 exited without reporting a result")
    from protocol.claim import compute_claim_id

    from .prove import ProveResult
    from .transcript import ProofDir

    claim = ProofDir(out).read_claim()
    r = done["done"]
    return ProveResult(claim, compute_claim_id(claim.body), compute_task_id(task), int(r["resumed_from_step"]),
                       time.perf_counter() - started, r["final_loss"])


def _read_reports(stream: IO[str], progress: ProgressFn | None, done: dict[str, Any]) -> None:
    for line in stream:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if "done" in doc or "error" in doc:
            done.update(doc)
        elif progress is not None and "step" in doc:
            progress(int(doc["step"]), float(doc["loss"]))


def _supervise(procs: list[_Worker], deadline: float | None, reports: dict[str, Any]) -> None:
    """Wait for every worker; the first failure (or the deadline) raises with its reason."""
    while True:
        codes = [w.proc.poll() for w in procs]
        if any(rc not in (None, 0) for rc in codes):
            time.sleep(0.5)  # let the others notice and rank 0 report why, then name the cause
            raise DistributedError(_describe_failure(procs, reports))
        if all(rc == 0 for rc in codes):
            return
        if deadline is not None and time.monotonic() > deadline:
            raise DistributedError(f"the {len(procs)} workers did not finish in time")
        time.sleep(0.05)


def _describe_failure(procs: list[_Worker], reports: dict[str, Any]) -> str:
    if "error" in reports:
        return f"worker 0: {reports['error']}"
    for w in procs:
        rc = w.proc.poll()
        if rc not in (None, 0):
            tail = _tail(w.log_path)
            return f"worker {w.rank} of {len(procs)} exited with status {rc}" + (f": {tail}" if tail else "")
    return "a worker failed"


if __name__ == "__main__":
    sys.exit(worker_main())
