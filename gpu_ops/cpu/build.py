"""Compile ``kernels.c`` with the system C compiler on first use and load it with ctypes.

The shared object is cached under ``$POL_CACHE_DIR`` (default ``~/.cache/pol``) in
``gpu_ops/kernels-<key>.so``, where the key hashes the source, the compiler and its version,
the flags and the host CPU (``-march=native`` code must not be loaded on another CPU).
Concurrent processes are safe: each compiles to its own temporary file and ``os.replace``s it
into place, so a reader sees either no file or a complete one.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
# Every C file of this directory is compiled into the one shared object (kernels.c first).
SOURCES = (SOURCE, *sorted(p for p in SOURCE.parent.glob("*.c") if p != SOURCE))
HEADERS = tuple(sorted(SOURCE.parent.glob("*.h")))  # part of the cache key, not compiled on their own
ABI = 1
# Result-preserving flags only; kernels.c explains why -march=native cannot change a bit.
BASE_FLAGS = ("-O3", "-std=c99", "-fno-fast-math", "-ffp-contract=off", "-fno-unsafe-math-optimizations",
              "-fno-finite-math-only", "-fsigned-zeros", "-fno-trapping-math", "-fno-math-errno",
              "-fPIC", "-shared", "-pthread")
NATIVE_FLAGS = ("-march=native",)


def get_cache_dir() -> Path:
    root = os.environ.get("POL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pol")
    return Path(root) / "gpu_ops"


def _cpu_identity() -> str:
    """CPU model and feature flags: the target of -march=native."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(keep)))


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _compile(cc: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL:
    """Build (if needed) and load the kernels; raises on any failure."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    src = b"\0".join(p.name.encode() + b"\0" + p.read_bytes() for p in SOURCES + HEADERS)
    last_err: Exception | None = None
    for flags in (BASE_FLAGS + NATIVE_FLAGS, BASE_FLAGS):
        key_src = b"\0".join([src, cc.encode(), _compiler_version(cc).encode(), " ".join(flags).encode(),
                              platform.machine().encode(), _cpu_identity().encode()])
        key = hashlib.sha256(key_src).hexdigest()[:20]
        target = get_cache_dir() / f"kernels-{key}.so"
        try:
            if not target.exists():
                _compile(cc, flags, target)
            lib = ctypes.CDLL(str(target))
            if int(lib.pol_kernels_abi()) != ABI:
                raise RuntimeError(f"{target} has the wrong ABI")
            return lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            last_err = exc
            log.debug("gpu_ops kernel build with %s failed: %s", flags, exc)
    raise RuntimeError(f"cannot build gpu_ops C kernels: {last_err}")
