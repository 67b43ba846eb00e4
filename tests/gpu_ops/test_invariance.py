"""Invariance matrix: the built-in tasks give the same state roots under every CPU configuration.

Each configuration runs in a fresh subprocess (tests/gpu_ops/invariance_worker.py) because
torch and MKL read ATEN_CPU_CAPABILITY / MKL_CBWR at import: torch threads 1/2/4,
ATEN_CPU_CAPABILITY=default/avx2/avx512, MKL_CBWR=COMPATIBLE, each with every gpu_ops backend
(``POL_GPU_OPS_BACKEND=fast`` everywhere, ``ref`` on a subset, on all with POL_INVARIANCE_FULL=1). A worker trains
digits-mlp and digits-cnn for 3 steps and pydoc-transformer for 2, hashes single-op outputs and
gradients, and compares each row's forward logits computed alone with the same row inside its
batch. test_negative_controls.py runs stock torch through the same harness and shows it does
see differences under these very changes.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from .invariance_worker import (
    BASELINE,
    CONFIGS,
    UNSUPPORTED_CONFIGS,
    compute_unsupported_configs,
    run_config,
    run_matrix,
)

BACKENDS: list[str | None] = ["fast", "ref"] if importlib.util.find_spec("gpu_ops.backend") else [None]
# The slow reference backend runs a subset unless POL_INVARIANCE_FULL=1 (to keep the suite ~1 min).
REF_SUBSET = (BASELINE, "threads=1", "aten=default", "mkl_cbwr=COMPATIBLE")


# Batch-split checks run under these configurations (MKL picks gemv vs gemm paths per shape).
BATCH_SPLIT = (BASELINE, "aten=default", "mkl_cbwr=COMPATIBLE")


def _plan() -> list[tuple[str | None, str, list[str]]]:
    full = os.environ.get("POL_INVARIANCE_FULL") == "1"
    plan: list[tuple[str | None, str, list[str]]] = []
    for backend in BACKENDS:
        for name in CONFIGS:
            if backend == "ref" and not full and name not in REF_SUBSET:
                continue
            args = ["--steps", "3", "--transformer-steps", "2"]
            if full or name in BATCH_SPLIT:
                args.append("--batch-split")
            plan.append((backend, name, args))
    return plan


@pytest.fixture(scope="module")
def matrix() -> dict[tuple[str | None, str], dict[str, object]]:
    return run_matrix("pol", _plan())


def _describe(matrix: dict, field: str) -> str:  # type: ignore[type-arg]
    return "\n".join(f"{b}/{c}: {r[field]}" for (b, c), r in matrix.items())


def test_configurations_took_effect(matrix: dict) -> None:  # type: ignore[type-arg]
    for (backend, name), r in matrix.items():
        assert r["threads"] == CONFIGS[name][0], (backend, name, r["threads"])
        if backend is not None:
            assert r["backend"] in (backend, "ref"), (backend, r["backend"])  # fast falls back if it cannot build
    base = matrix[(BACKENDS[0], BASELINE)]["capability"]
    if base != "DEFAULT":
        assert matrix[(BACKENDS[0], "aten=default")]["capability"] == "DEFAULT"


def test_state_roots_identical_everywhere(matrix: dict) -> None:  # type: ignore[type-arg]
    roots = {str(r["roots"]) for r in matrix.values()}
    assert len(roots) == 1, "state roots differ between configurations:\n" + _describe(matrix, "roots")


def test_op_hashes_identical_everywhere(matrix: dict) -> None:  # type: ignore[type-arg]
    ops = {str(r["ops"]) for r in matrix.values()}
    assert len(ops) == 1, "op outputs differ between configurations:\n" + _describe(matrix, "ops")


def test_rows_alone_equal_rows_in_batch(matrix: dict) -> None:  # type: ignore[type-arg]
    bad = {k: r["batch_split_mismatches"] for k, r in matrix.items() if r["batch_split_mismatches"]}
    assert not bad, f"forward logits of a row alone differ from the row in its batch: {bad}"


@pytest.mark.parametrize("backend", ["ref", "fast"])
def test_reference_matmul_zero_sign_is_batch_invariant(backend: str) -> None:
    """A row computed alone must equal the same row inside the batch, zero signs included.

    With K=1 every product a_i0 * b_0j of a negative a and a zero b is -0; MKL's gemm for M>1
    returns that -0 but its M=1 path returns +0, so the bits of row 0 depend on the batch.
    The spec (SPEC.md §10.3) makes an exact zero +0: ref.matmul adds 0.0 to the integer sums,
    the C path does the same, triton_ops.matmul's accumulator starts at +0.
    """
    import torch

    from gpu_ops import functional
    from gpu_ops.backend import use_backend

    a = torch.tensor([[-1.0], [-2.0], [-3.0], [-4.0]])
    b = torch.tensor([[0.0, 1.0]])
    with use_backend(backend):
        whole = functional.matmul(a, b)
        alone = functional.matmul(a[:1], b)
    assert torch.equal(whole[:1].view(torch.int32), alone.view(torch.int32)), (whole[:1], alone)
    assert whole[0, 0].view(torch.int32) == 0  # +0, not -0


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_CONFIGS) or ["none"])
def test_configurations_this_cpu_cannot_run(name: str) -> None:
    """Say which configurations the CPU probe left out, and why (a skip with the reason)."""
    if name == "none":
        assert not UNSUPPORTED_CONFIGS
        return
    pytest.skip(UNSUPPORTED_CONFIGS[name])


def test_cpu_probe_leaves_out_missing_instruction_sets() -> None:
    avx2_only = frozenset({"sse4_2", "avx", "avx2", "fma"})
    assert set(compute_unsupported_configs(avx2_only)) == {"aten=avx512"}
    assert "avx512f" in compute_unsupported_configs(avx2_only)["aten=avx512"]
    assert set(compute_unsupported_configs(frozenset())) == {"aten=avx2", "aten=avx512"}
    full = avx2_only | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert compute_unsupported_configs(full) == {}


def test_worker_killed_by_signal_names_the_signal() -> None:
    """A worker that dies by a signal must say so, not fail with an empty message."""
    with pytest.raises(RuntimeError, match="killed by signal SIGKILL"):
        run_config("native", 1, {"POL_TEST_WORKER_SELF_KILL": "1"}, [], timeout=120)
