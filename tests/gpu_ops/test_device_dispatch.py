"""Which kernels an op gets, by device (gpu_ops.backend.kernels), and ``pol prove --device``'s refusals.

No GPU is needed: tensors on torch's ``meta`` device stand in for CUDA tensors (anything not on the CPU
goes the CUDA way), and the CLI is run where CUDA is absent or forced off.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from gpu_ops import backend


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def test_cpu_tensors_take_the_c_kernels_and_others_the_triton_kernels() -> None:
    cpu = torch.zeros(3)
    if backend._load() is not None:
        assert isinstance(backend.kernels(cpu), backend.Kernels)
        assert isinstance(backend.kernels(), backend.Kernels)  # no tensor: the CPU
    dev = torch.zeros(3, device="meta")
    got = backend.kernels(dev)
    assert backend.kernels(dev.to(torch.int64)) is None  # only float32 ops have kernels
    assert backend.kernels(device=torch.device("meta")) is got
    if _triton_importable():
        from gpu_ops.triton_backend import TritonKernels

        assert isinstance(got, TritonKernels)
        assert backend.get_backend_name("cuda") == "triton"
        with backend.use_backend("triton"):  # POL_GPU_OPS_BACKEND=triton: CPU tensors too
            assert isinstance(backend.kernels(cpu), TritonKernels)
            assert backend.get_backend_name("cpu") == "triton"
    else:
        assert got is None
    with backend.use_backend("ref"):
        assert backend.kernels(cpu) is None and backend.kernels(dev) is None


def test_without_triton_cuda_tensors_fall_back_to_the_reference_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import builtins

    real_import = builtins.__import__

    def no_triton(name: str, *args: object, **kwargs: object) -> object:
        if name == "triton" or name.startswith("triton.") or name.endswith("triton_backend"):
            raise ImportError(f"No module named {name!r} (test)")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_triton)
    monkeypatch.setattr(backend, "_triton_obj", None)
    monkeypatch.setattr(backend, "_triton_failed", False)
    monkeypatch.delitem(sys.modules, "gpu_ops.triton_backend", raising=False)
    dev = torch.zeros(3, device="meta")
    with caplog.at_level(logging.WARNING, logger="gpu_ops.backend"):
        assert backend.kernels(dev) is None
        assert backend.kernels(dev) is None
    assert len([r for r in caplog.records if "Triton kernels unavailable" in r.getMessage()]) == 1
    assert backend.get_backend_name("cuda") == "ref"
    with backend.use_backend("triton"), pytest.raises(backend.BackendUnavailable, match="triton"):
        backend.kernels(torch.zeros(3))


def test_invalid_backend_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.ENV, "cuda")
    with pytest.raises(ValueError, match="'fast', 'ref' or 'triton'"):
        backend.kernels(torch.zeros(2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_prove_on_cuda_without_a_gpu_is_our_error_not_the_tasks(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pol.cli import main
    from pol.keyfile import generate_keyfile, save_keyfile

    key = tmp_path / "k.json"
    save_keyfile(key, generate_keyfile())
    assert main(["prove", "digits-mlp", "--out", str(tmp_path / "o"), "--key", str(key), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA device" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    assert main(["prove", "digits-mlp", "--out", str(tmp_path / "o"), "--key", str(key), "--device", "cuda",
                 "--workers", "2"]) == 2
    assert "--workers 2 with --device cuda" in capsys.readouterr().err


def test_check_device_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from prover.training import DeviceUnavailable, check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceUnavailable, match="one of cpu, cuda"):
        check_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine without triton
    monkeypatch.setattr(backend, "require_triton",
                        lambda: (_ for _ in ()).throw(backend.BackendUnavailable("no triton (test)")))
    with pytest.raises(DeviceUnavailable, match="--device cuda: no triton"):
        check_device("cuda")


def test_parameters_are_drawn_on_the_host_whatever_backend_is_forced() -> None:
    """A forced triton backend on a GPU machine must not hand host tensors to a compiled kernel: the
    §11 init words come from the C kernel or the protocol's numpy Philox, never from Triton."""
    from gpu_ops import nn
    from protocol.rng import STREAM_INIT, compute_uniform_f64

    want = compute_uniform_f64(7, STREAM_INIT, 3, 0, 1000)
    calls: list[str] = []
    if _triton_importable():
        from gpu_ops.triton_backend import TritonKernels

        orig = TritonKernels.philox_u32

        def spy(self: object, *a: object, **kw: object) -> object:
            calls.append("philox_u32")
            return orig(self, *a, **kw)  # type: ignore[arg-type]

        TritonKernels.philox_u32 = spy  # type: ignore[method-assign]
    try:
        with backend.use_backend("triton"):
            got = nn._uniform_f64(7, 3, 1000)
    finally:
        if _triton_importable():
            TritonKernels.philox_u32 = orig  # type: ignore[method-assign]
    assert calls == []
    assert got.tobytes() == want.tobytes()


def test_gpucheck_counts_a_missing_output_as_a_mismatch() -> None:
    from prover.gpucheck import _same_bits

    a = torch.ones(3)
    assert _same_bits((a, a), (a, a)) is None
    assert _same_bits((a, a), (a,)) is not None  # zip alone would have passed it
    assert _same_bits((a,), a) is not None
    assert _same_bits((a, torch.zeros(3)), (a, a)) is not None
