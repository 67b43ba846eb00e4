"""Network benchmarks: verification of a 100-signer aggregate certificate per BLS backend.

Run: .venv/bin/pytest tests/bench/test_bench_network.py -s   (prints the figures; docs/network.md)
Time from claim to certificate is measured by `pol devnet --json` (seconds_to_certificate).
"""

from __future__ import annotations

import hashlib
import time

import pytest

from protocol import bls
from protocol.certificate import compute_certificate, validate_certificate
from protocol.genesis import Params, VerifierEntry
from protocol.vote import ClaimContext, compute_vote

SIGNERS = 100


@pytest.fixture(scope="module")
def certificate() -> tuple[object, list[VerifierEntry]]:
    previous = bls.get_backend()
    bls.set_backend("auto")
    try:
        keys = [bls.compute_secret_key(hashlib.sha256(b"bench/%d" % i).digest()) for i in range(SIGNERS)]
        verifiers = [VerifierEntry(bls.compute_public_key(k), b"", 1, f"p{i}") for i, k in enumerate(keys)]
        ctx = ClaimContext(hashlib.sha256(b"claim").digest(), hashlib.sha256(b"c").digest(), 9, 1)
        votes = [compute_vote(k, ctx) for k in keys]
        return compute_certificate(votes, verifiers), verifiers
    finally:
        bls.set_backend(previous)


@pytest.mark.parametrize("backend", bls.get_available_backends())
def test_verify_100_signer_certificate(backend: str, certificate: tuple[object, list[VerifierEntry]]) -> None:
    cert, verifiers = certificate
    previous = bls.get_backend()
    bls.set_backend(backend)
    try:
        rounds = 1 if backend == "py_ecc" else 50
        start = time.perf_counter()
        for _ in range(rounds):
            validate_certificate(cert, verifiers, Params())  # type: ignore[arg-type]
        per = (time.perf_counter() - start) / rounds
    finally:
        bls.set_backend(previous)
    print(f"\n{backend}: verify {SIGNERS}-signer certificate {per * 1000:.2f} ms (mean of {rounds})")
    assert per < 30.0
