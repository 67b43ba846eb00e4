"""Whole training steps through the Triton backend, in the Triton interpreter (no GPU needed).

With ``POL_GPU_OPS_BACKEND=triton`` semantics (``use_backend("triton")``) and ``TRITON_INTERPRET=1``
every op of a step runs the Triton kernels of gpu_ops.triton_backend on CPU tensors: the CUDA
dispatch path, minus ptxas. A tiny config of each built-in family and of the gpt2/resnet/vit presets
(plus RMS norm + SwiGLU) gives the same state roots as the C fast path and the reference; a
deliberately non-exact kernel gives other roots (negative control); no step creates a tensor without
an explicit device; and ``pol prove`` with the triton backend writes the very bytes of the fast
backend's proof. Sizes are tiny: the interpreter costs milliseconds per program.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]')")

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="TRITON_INTERPRET=1 is not set (a CUDA machine compiles kernels instead: python -m prover.conformance)")

from gpu_ops.backend import use_backend  # noqa: E402
from prover.conformance import SEED, TINY, Audit, HostTensorWatch, audit_step, step_roots  # noqa: E402
from pol.keyfile import generate_keyfile, save_keyfile  # noqa: E402
from prover.training import Runtime  # noqa: E402
from verifier.verify import ACCEPT, verify_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_AUDIT = Audit()
_RAN: set[str] = set()  # the configs whose steps ran in this session (with _AUDIT recording)


@pytest.mark.parametrize("name", list(TINY))
def test_triton_step_gives_the_fast_and_reference_roots(name: str) -> None:
    rt = Runtime.for_task(TINY[name](), seed=SEED)
    steps = 2 if name == "mlp" else 1  # the mlp's second step uses the SGD momentum buffer it wrote
    fast = step_roots(rt, steps)
    with use_backend("ref"):
        assert step_roots(rt, steps) == fast
    got = audit_step(rt, steps, "cpu", _AUDIT)
    _RAN.add(name)
    assert got == fast, f"{name}: the Triton step's roots differ from the C fast path's"
    assert len(set(fast)) == steps + 1  # it trains
    assert not _AUDIT.wrong_device, _AUDIT.wrong_device[:5]
    assert not _AUDIT.host_tensors, f"{name}: tensors created without a device in the step: {_AUDIT.host_tensors[:5]}"


def test_every_triton_method_ran() -> None:
    """The configs above exercised every method of TritonKernels (runs after them, in file order)."""
    from gpu_ops.triton_backend import TritonKernels

    if _RAN != set(TINY):
        pytest.skip("needs every step test above in the same session")
    public = {n for n, f in vars(TritonKernels).items() if not n.startswith("_") and callable(f)}
    # the rest: see test_methods_outside_the_step_equal_the_c_kernels
    assert public - _AUDIT.methods == set(OUTSIDE_THE_STEP), sorted(public - _AUDIT.methods)


# Methods no tiny step calls: the initial weights' Philox words (drawn before training), the row-sharded
# conv backward's col2im, log and the log_softmax op (no graph op uses them; cross_entropy has its own).
OUTSIDE_THE_STEP = ("philox_u32", "col2im", "log", "log_softmax_bwd")


def test_methods_outside_the_step_equal_the_c_kernels() -> None:
    from gpu_ops import backend
    from gpu_ops.triton_backend import TritonKernels

    c = backend.kernels()
    if not isinstance(c, backend.Kernels):
        pytest.skip("the C kernels could not be built")
    t = TritonKernels()
    g = torch.Generator().manual_seed(5)
    assert torch.equal(t.philox_u32(2**64 - 3, 7, 2**32 - 1, 5, 37), c.philox_u32(2**64 - 3, 7, 2**32 - 1, 5, 37))
    dcols = torch.randn(2 * 3 * 4, 2 * 9, generator=g)
    assert torch.equal(t.col2im(dcols, 2, 2, 3, 4, 3).view(torch.int32), c.col2im(dcols, 2, 2, 3, 4, 3).view(torch.int32))
    x = torch.rand(300, generator=g) * 50
    x[:3] = torch.tensor([0.0, 1e-45, float("inf")])
    assert torch.equal(t.log(x).view(torch.int32), c.log(x).view(torch.int32))
    logits = torch.randn(5, 7, generator=g) * 4
    lp_t, p_t, _ = t.log_softmax_fwd(logits)
    lp_c, p_c, _ = c.log_softmax_fwd(logits)
    assert lp_t is not None and lp_c is not None
    assert torch.equal(lp_t.view(torch.int32), lp_c.view(torch.int32)) and torch.equal(p_t.view(torch.int32), p_c.view(torch.int32))
    dy = torch.randn(5, 7, generator=g)
    assert torch.equal(t.log_softmax_bwd(p_t, dy).view(torch.int32), c.log_softmax_bwd(p_c, dy).view(torch.int32))
    with pytest.raises(IndexError):
        t.log_softmax_fwd(logits, torch.tensor([0, 1, 2, 3, 7]))


def test_a_non_exact_kernel_changes_the_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: the same step with the exact matmul swapped for torch's float32 matmul
    (or exp for torch.exp) gives other roots, so the equality above can fail."""
    from gpu_ops.triton_backend import TritonKernels

    rt = Runtime.for_task(TINY["mlp"](), seed=SEED)
    fast = step_roots(rt, 1)
    monkeypatch.setattr(TritonKernels, "matmul",
                        lambda self, a, b, bias=None, transpose_out=False: torch.matmul(a, b) + (0 if bias is None else bias))
    with use_backend("triton"):
        assert step_roots(rt, 1)[1] != fast[1]
    monkeypatch.undo()
    rt = Runtime.for_task(TINY["transformer"](), seed=SEED)
    fast = step_roots(rt, 1)
    monkeypatch.setattr(TritonKernels, "softmax_fwd", lambda self, x: torch.softmax(x, -1))
    with use_backend("triton"):
        assert step_roots(rt, 1)[1] != fast[1]


def test_host_tensor_watch_catches_a_cpu_helper_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control of the device audit: a constant built the old way (no device) is reported."""
    from gpu_ops import functional

    monkeypatch.setattr(functional, "_c", lambda v, like=None: torch.tensor(v, dtype=torch.float32))
    rt = Runtime.for_task(TINY["mlp"](), seed=SEED)
    audit = Audit()
    audit_step(rt, 1, "cpu", audit)
    assert any(c.startswith("tensor at ") and "(<lambda>)" in c for c in audit.host_tensors), audit.host_tensors
    watch = HostTensorWatch()
    with watch:
        torch.zeros(2, device="cpu")
        torch.ones(2, 2)
    assert len(watch.calls) == 1 and watch.calls[0].startswith("ones at ")


TINY_TASK = """
[task]
name = "triton-prove"
seed = 1
total_steps = 1
checkpoint_interval = 1
batch_size = 2
[model]
family = "mlp"
hidden = [8]
activation = "gelu"
[data]
adapter = "sklearn-digits"
sha256 = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
[optim]
name = "adamw"
lr = 0.01
grad_clip = 1.0
"""


def _pol(*args: str, backend: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POL_GPU_OPS_BACKEND": backend, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-m", "pol.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)


def test_pol_prove_on_the_triton_backend_writes_the_same_bytes(tmp_path: Path) -> None:
    task = tmp_path / "task.toml"
    task.write_text(TINY_TASK)
    key = tmp_path / "key.json"
    save_keyfile(key, generate_keyfile())
    outs = {}
    for backend in ("fast", "triton"):
        out = tmp_path / backend
        r = _pol("prove", str(task), "--out", str(out), "--key", str(key), "--device", "cpu", "--quiet",
                 backend=backend)
        assert r.returncode == 0, r.stderr
        outs[backend] = out
    files = sorted(p.relative_to(outs["fast"]) for p in outs["fast"].rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(outs["triton"]) for p in outs["triton"].rglob("*") if p.is_file())
    assert any(f.suffix == ".safetensors" or "checkpoint" in str(f) for f in files)
    for f in files:
        assert filecmp.cmp(outs["fast"] / f, outs["triton"] / f, shallow=False), f"{f} differs"
    report = verify_dir(outs["triton"], segments=None, secret_key=None)  # a CPU verifier (C kernels) replays it
    assert report.verdict == ACCEPT, report.reason
