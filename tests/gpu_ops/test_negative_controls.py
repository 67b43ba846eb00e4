"""Negative controls for the invariance matrix: stock torch DOES change under the same changes.

If these stopped differing, a passing test_invariance.py would prove nothing about the harness
(e.g. an environment variable silently not reaching the subprocess). Known differences on
x86 CPUs (measured with torch 2.13 CPU builds): threads 1 vs 2 change full sums over > 32768 elements
and the MLP weight gradient; ATEN_CPU_CAPABILITY=default vs a SIMD build changes softmax and
FMA-contracts addcmul/torch.optim updates; a row alone (gemv) differs from the row in a batch.
"""

from __future__ import annotations

import pytest

from .invariance_worker import BASELINE, CONFIGS, run_matrix


@pytest.fixture(scope="module")
def native() -> dict[str, dict[str, object]]:
    res = run_matrix("native", [(None, name, ["--steps", "3"]) for name in CONFIGS])
    return {name: r for (_, name), r in res.items()}


def _changed(native: dict, a: str, b: str) -> list[str]:  # type: ignore[type-arg]
    x, y = native[a]["native"], native[b]["native"]
    return [k for k in x if x[k] != y[k]]


def test_harness_detects_some_difference(native: dict) -> None:  # type: ignore[type-arg]
    changed = {name: _changed(native, BASELINE, name) for name in CONFIGS if name != BASELINE}
    assert any(changed.values()), f"stock torch gave identical bits in every configuration: {changed}"


def test_thread_count_changes_native_results(native: dict) -> None:  # type: ignore[type-arg]
    changed = _changed(native, "threads=1", BASELINE)
    assert {"sum-1M", "mlp-sgd", "mlp-adamw"} & set(changed), changed


def test_simd_path_changes_native_results(native: dict) -> None:  # type: ignore[type-arg]
    if native["aten=default"]["capability"] == native[BASELINE]["capability"]:
        pytest.skip("this CPU runs torch's default (non-SIMD) kernels anyway")
    changed = _changed(native, "aten=default", BASELINE)
    assert {"softmax", "addcmul", "mlp-sgd", "mlp-adamw"} & set(changed), changed


def test_row_alone_differs_from_row_in_batch(native: dict) -> None:  # type: ignore[type-arg]
    assert any(r["native"]["batch-split-differs"] == "True" for r in native.values())
