"""Deterministic sin/cos (SPEC.md §10.4): the reference reproduces tests/vectors/sincos.json; the
numpy program written from the text (tests/spec_impl/ops.py) equals it bit for bit on edge and
random inputs; both are accurate against binary64 sin/cos (an independent function, not the same
program); the domain and NaN policy hold; and torch's own float32 sin differs in bits (the
equality is not vacuous). On a CUDA machine the same reference gives the same bits there."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_ops import ref
from tests.spec_impl import ops as spec

F32 = torch.float32
VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "sincos.json").read_text())
DOMAIN = 8192.0


def words(a: np.ndarray) -> list[str]:
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    return ["nan" if math.isnan(float(v)) else f"{int(w):08x}" for v, w in zip(a, a.view(np.uint32))]


def vector_inputs() -> np.ndarray:
    return np.array([int(w, 16) for w in VECTORS["inputs"]], dtype=np.uint32).view(np.float32)


def random_inputs(n: int, seed: int) -> np.ndarray:
    """Uniform over the rotary range, uniform over the whole domain, and wide magnitudes down to
    subnormals, with random signs."""
    rs = np.random.default_rng(seed)
    wide = rs.standard_normal(n) * np.exp2(rs.integers(-140, 13, n).astype(np.float64))
    parts = [rs.uniform(0, 4096, n), rs.uniform(-DOMAIN, DOMAIN, n), np.clip(wide, -DOMAIN, DOMAIN)]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("fn", ["sin", "cos"])
def test_reference_and_text_reproduce_the_vectors(fn: str) -> None:
    x = vector_inputs()
    assert words(getattr(ref, fn)(torch.from_numpy(x.copy())).numpy()) == VECTORS["outputs"][fn]
    assert words(getattr(spec, fn)(x)) == VECTORS["outputs"][fn]


@pytest.mark.parametrize("case", VECTORS["rotary_tables"], ids=lambda c: f"T{c['T']}-r{c['r']}-base{c['base']:g}")
def test_rotary_tables_reproduce_the_vectors(case: dict) -> None:
    """§10.5 tables from the project and from the text; the hashes were also reproduced by a third
    implementation written from SPEC.md alone while the spec was reviewed."""
    from gpu_ops.layers import rotary_tables
    from tests.spec_impl.graph import rotary_tables as spec_tables

    t, r, base = case["T"], case["r"], case["base"]
    for cos, sin in (tuple(a.numpy() for a in rotary_tables(t, r, base)), spec_tables(t, r, base)):
        cos, sin = np.ascontiguousarray(cos, dtype="<f4"), np.ascontiguousarray(sin, dtype="<f4")
        assert cos.shape == sin.shape == (t, r // 2)
        assert hashlib.sha256(cos.tobytes()).hexdigest() == case["cos_sha256"]
        assert hashlib.sha256(sin.tobytes()).hexdigest() == case["sin_sha256"]
        if "cos" in case:
            assert words(cos) == case["cos"] and words(sin) == case["sin"]


@pytest.mark.parametrize("fn", ["sin", "cos"])
def test_reference_equals_the_text_on_random_inputs(fn: str) -> None:
    x = random_inputs(100_000, seed=11)
    got = getattr(ref, fn)(torch.from_numpy(x.copy())).numpy()
    want = getattr(spec, fn)(x)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("fn", ["sin", "cos"])
def test_accuracy_against_binary64(fn: str) -> None:
    """Absolute error below 2^-23 on the whole domain; within 1.5 ulp where |f(x)| >= 0.5."""
    x = np.concatenate([random_inputs(100_000, seed=12), vector_inputs()])
    x = x[np.isfinite(x) & (np.abs(x) <= DOMAIN)]
    got = getattr(ref, fn)(torch.from_numpy(x.copy())).numpy().astype(np.float64)
    exact = getattr(np, fn)(x.astype(np.float64))
    err = np.abs(got - exact)
    assert err.max() < 2.0**-23, f"max abs error {err.max()!r} at x={x[err.argmax()]!r}"
    big = np.abs(exact) >= 0.5
    ulps = err[big] / np.spacing(np.abs(exact[big]).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.5, f"max {ulps.max()} ulp"
    # a few values through Python's math module as well (a third implementation)
    for v in x[:: max(1, len(x) // 500)]:
        want = getattr(math, fn)(float(v))
        assert abs(float(getattr(ref, fn)(torch.tensor([v], dtype=F32))[0]) - want) < 2.0**-23


def test_signed_zero_domain_and_nan_policy() -> None:
    x = torch.tensor([0.0, -0.0, DOMAIN, -DOMAIN, 8192.0005, -8192.0005, 1e30, math.inf, -math.inf, math.nan],
                     dtype=F32)
    s, c = ref.sin(x), ref.cos(x)
    assert words(s[:2].numpy()) == ["00000000", "80000000"] and c[:2].tolist() == [1.0, 1.0]
    assert torch.isfinite(s[2:4]).all() and torch.isfinite(c[2:4]).all()
    assert torch.isnan(s[4:]).all() and torch.isnan(c[4:]).all()
    # odd and even in the sign bit, exactly
    y = torch.from_numpy(random_inputs(10_000, seed=13))
    assert torch.equal(ref.sin(-y).view(torch.int32), (-ref.sin(y)).view(torch.int32))
    assert torch.equal(ref.cos(-y).view(torch.int32), ref.cos(y).view(torch.int32))


def test_torch_float32_sin_differs_in_bits() -> None:
    """Negative control: the library sine is not the spec's program (it rounds differently)."""
    x = torch.from_numpy(random_inputs(20_000, seed=14))
    assert not torch.equal(torch.sin(x).view(torch.int32), ref.sin(x).view(torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_reference_equals_cpu() -> None:
    x = torch.from_numpy(random_inputs(100_000, seed=15))
    for fn in (ref.sin, ref.cos):
        assert torch.equal(fn(x.cuda()).cpu().view(torch.int32), fn(x).view(torch.int32))
