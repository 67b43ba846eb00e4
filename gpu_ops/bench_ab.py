"""A/B of the C kernels of two source trees in one process: ``python -m gpu_ops.bench_ab``.

The kernels of a git revision (``--before REV``, default ``HEAD``) and of the working tree are
compiled with the build's flags into a temporary directory, loaded side by side through ctypes,
and run interleaved round by round (before, after, DGEMM, ...) on the same inputs, so that load
on a shared machine hits every side alike. Reported: per-side CPU-time medians with min-max
(process CPU time: with T threads, the CPU time of all of them), the ratios to the floor, the
1-minute load average before and after, and whether both trees gave the same bits.

What (``--what``):

* ``mmN``: the exact matmul n x n (``exact_mm``) vs ``torch.mm`` in float64 (DGEMM);
* ``conv``: one conv layer (32 -> 64 channels, 3x3, 32x32, batch 32) forward + backward with the
  input gradient vs one square DGEMM of the three GEMMs' FLOPs;
* ``convparts``: the layer's forward, weight/bias gradient and input gradient (dx = backward
  minus the weight part), each vs the square DGEMM of one part's FLOPs (``floor1``), and MKL's
  DGEMM on the three im2col shapes (operands prepared beforehand).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import ref
from .cpu import build

_P, _I, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIG = {"exact_mm": [_P, _I, _I, _I, _P, _I, _I, _I, _P, _P, _I, _I, _I, _I, _INT, _INT, _INT],
        "conv2d_fwd": [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _INT, _INT],
        "conv2d_bwd": [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _INT, _INT, _INT, _INT]}


def build_tree(src_dir: Path, out: Path) -> ctypes.CDLL:
    """Compile every ``*.c`` of ``src_dir`` (kernels.c first) as gpu_ops.cpu.build does."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or "cc"
    srcs = [src_dir / "kernels.c"] + sorted(p for p in src_dir.glob("*.c") if p.name != "kernels.c")
    for flags in (build.BASE_FLAGS + build.NATIVE_FLAGS, build.BASE_FLAGS):
        proc = subprocess.run([cc, *flags, "-o", str(out), *map(str, srcs), "-lm"], capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode == 0:
            lib = ctypes.CDLL(str(out))
            for name, args in _SIG.items():
                getattr(lib, name).argtypes = args
                getattr(lib, name).restype = ctypes.c_int
            return lib
    raise RuntimeError(f"cannot build {src_dir}: {proc.stderr[-2000:]}")


def export_rev(rev: str, dest: Path) -> Path:
    """gpu_ops/cpu/*.c and *.h of git revision ``rev`` into ``dest``."""
    root = Path(__file__).resolve().parents[1]
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "gpu_ops/cpu/"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith((".c", ".h")):
            blob = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=root, capture_output=True, check=True).stdout
            (dest / Path(name).name).write_bytes(blob)
    return dest


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else int(t.data_ptr())


def make_sides(what: str, libs: dict[str, ctypes.CDLL], nth: int, out: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    g = torch.Generator().manual_seed(1)
    sides: dict[str, Callable[[], Any]] = {}
    if what.startswith("mm"):
        n = int(what[2:])
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        a64, b64, t = a.double(), b.double(), ref.slice_bits(n)
        for name, lib in libs.items():
            def mm(lib: ctypes.CDLL = lib, name: str = name) -> None:
                c = torch.empty(n, n)
                if lib.exact_mm(_ptr(a), 0, n, 1, _ptr(b), 0, n, 1, _ptr(c), None, 1, n, n, n, t, 0, nth):
                    raise MemoryError("exact_mm")
                out[name] = (c,)
            sides[name] = mm
        sides["dgemm"] = lambda: torch.mm(a64, b64)
        return sides
    N, C, H, W, OC, k = 32, 32, 32, 32, 64, 3
    x, w = torch.randn(N, C, H, W, generator=g), torch.randn(OC, C, k, k, generator=g) * 0.1
    bias, dy = torch.randn(OC, generator=g), torch.randn(N, OC, H, W, generator=g)
    rows, ckk = N * H * W, C * k * k
    xp, y = torch.empty(N, C, H + 2, W + 2), torch.empty(N, OC, H, W)
    for name, lib in libs.items():
        def fwd(lib: ctypes.CDLL = lib) -> None:
            lib.conv2d_fwd(_ptr(x), _ptr(w), _ptr(bias), _ptr(y), _ptr(xp), N, C, H, W, OC, k, ref.slice_bits(ckk), nth)

        def bwd(lib: ctypes.CDLL = lib, name: str = name, need_dx: bool = True) -> None:
            dw, db = torch.empty_like(w), torch.empty(OC)
            dx = torch.empty(N, C, H, W) if need_dx else None
            lib.conv2d_bwd(_ptr(dy), _ptr(xp), _ptr(w), _ptr(dw), _ptr(db), _ptr(dx), N, C, H, W, OC, k,
                           ref.slice_bits(rows), ref.grid_bits(rows), ref.slice_bits(OC), nth)
            if need_dx:
                out[name] = (y.clone(), dw, db, dx)
        if what == "conv":
            def both(fwd: Callable[[], None] = fwd, bwd: Callable[..., None] = bwd) -> None:
                fwd()
                bwd()
            sides[name] = both
        else:
            sides[name + ":fwd"] = fwd
            def dwdb(bwd: Callable[..., None] = bwd) -> None:
                bwd(need_dx=False)
            sides[name + ":dwdb"] = dwdb
            sides[name + ":bwd"] = bwd
    if what == "conv":
        side = round((3 * rows * ckk * OC) ** (1 / 3))
        sq_a, sq_b = torch.randn(side, side, generator=g).double(), torch.randn(side, side, generator=g).double()
        sides["floor3"] = lambda: torch.mm(sq_a, sq_b)
        return sides
    side = round((rows * ckk * OC) ** (1 / 3))
    sq_a, sq_b = torch.randn(side, side, generator=g).double(), torch.randn(side, side, generator=g).double()
    sides["floor1"] = lambda: torch.mm(sq_a, sq_b)
    cols = torch.nn.functional.unfold(x.double(), k, padding=1).transpose(1, 2).reshape(rows, ckk).contiguous()
    w2 = w.double().reshape(OC, ckk).contiguous()
    w2t, dy2 = w2.t().contiguous(), dy.double().permute(0, 2, 3, 1).reshape(rows, OC).contiguous()
    dy2t = dy2.t().contiguous()
    sides["mkl:fwd"] = lambda: torch.mm(cols, w2t)
    sides["mkl:dw"] = lambda: torch.mm(dy2t, cols)
    sides["mkl:dx"] = lambda: torch.mm(dy2, w2)
    return sides


def run(what: str, threads: int, rounds: int, libs: dict[str, ctypes.CDLL], warmup: int = 2) -> dict[str, Any]:
    torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    sides = make_sides(what, libs, threads, results)
    ms: dict[str, list[float]] = {k: [] for k in sides}
    load0 = os.getloadavg()[0]
    for i in range(warmup + rounds):
        for name, fn in sides.items():
            c0 = time.process_time()
            fn()
            if i >= warmup:
                ms[name].append((time.process_time() - c0) * 1e3)
    med = {k: statistics.median(v) for k, v in ms.items()}
    rep: dict[str, Any] = {"what": what, "threads": threads, "rounds": rounds,
                           "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                           "ms": {k: {"median": round(med[k], 2), "min": round(min(v), 2), "max": round(max(v), 2)}
                                  for k, v in ms.items()}}
    names = list(libs)
    if len(names) > 1 and all(n in results for n in names):
        rep["same_bits"] = all(torch.equal(p, q) for n in names[1:] for p, q in zip(results[names[0]], results[n]))
    ratios: dict[str, Any] = {}
    for n in names:
        if what.startswith("mm"):
            ratios[n] = round(med[n] / med["dgemm"], 3)
        elif what == "conv":
            ratios[n] = round(med[n] / med["floor3"], 3)
        else:
            f1 = med["floor1"]
            ratios[n] = {"fwd": round(med[n + ":fwd"] / f1, 3), "dwdb": round(med[n + ":dwdb"] / f1, 3),
                         "dx": round((med[n + ":bwd"] - med[n + ":dwdb"]) / f1, 3),
                         "total": round((med[n + ":fwd"] + med[n + ":bwd"]) / (3 * f1), 3)}
    if what == "convparts":
        ratios["mkl_im2col"] = {p: round(med["mkl:" + p] / med["floor1"], 3) for p in ("fwd", "dw", "dx")}
    rep["over_floor"] = ratios
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--what", default="conv", help="mmN (e.g. mm2048), conv or convparts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--before", default="HEAD", help="git revision of the 'before' kernels ('' for none)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        libs: dict[str, ctypes.CDLL] = {}
        if args.before:
            libs["before"] = build_tree(export_rev(args.before, Path(tmp) / "before"), Path(tmp) / "before.so")
        libs["after"] = build_tree(Path(build.SOURCE).parent, Path(tmp) / "after.so")
        rep = run(args.what, args.threads, args.rounds, libs)
    print(rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
