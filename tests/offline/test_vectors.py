"""SPEC.md test vectors, each checked against an independent source or implementation."""

from __future__ import annotations

import hashlib
import json
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest

from protocol import bls
from protocol.encoding import decode_canonical, encode_canonical
from protocol.errors import DecodeError
from protocol.merkle import compute_merkle_proof, compute_merkle_root, validate_merkle_proof
from protocol.rng import compute_philox4x32
from protocol.sampling import compute_segment_sample
from protocol.state import TensorLeaf, compute_state_root
from protocol.task import compute_task_id, encode_task, parse_task_toml

VECTORS = Path(__file__).parent.parent / "vectors"
EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def load(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((VECTORS / name).read_text())


def test_philox_known_answers() -> None:
    for case in load("philox4x32_10.json")["cases"]:
        ctr = np.array([[int(x, 16) for x in case["counter"]]], dtype=np.uint32)
        key = tuple(int(x, 16) for x in case["key"])
        out = compute_philox4x32(ctr, key)[0]  # type: ignore[arg-type]
        assert [f"{int(x):08x}" for x in out] == case["out"]


@pytest.mark.parametrize("backend", bls.get_available_backends())
def test_bls_known_answer(backend: str) -> None:
    v = load("bls.json")
    before = bls.get_backend()
    bls.set_backend(backend)
    try:
        sk = bytes.fromhex(v["secret_key"])
        assert bls.compute_public_key(sk).hex() == v["public_key"]
        assert bls.sign(sk, bytes.fromhex(v["message"])).hex() == v["signature"]
        assert bls.is_valid_signature(bytes.fromhex(v["public_key"]), bytes.fromhex(v["message"]),
                                      bytes.fromhex(v["signature"]))
        assert not bls.is_valid_signature(bytes.fromhex(v["public_key"]), b"\x01" * 32, bytes.fromhex(v["signature"]))
    finally:
        bls.set_backend(before)


def _doc(obj):  # type: ignore[no-untyped-def]
    if isinstance(obj, dict) and set(obj) == {"bin"}:
        return bytes.fromhex(obj["bin"])
    if isinstance(obj, dict):
        return {k: _doc(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_doc(v) for v in obj]
    return obj


def test_canonical_msgpack_vectors() -> None:
    v = load("msgpack.json")
    for case in v["cases"]:
        data = bytes.fromhex(case["hex"])
        assert encode_canonical(_doc(case["doc"])) == data
        assert decode_canonical(data, 1024) == _doc(case["doc"])
    for bad in v["non_canonical"]:
        with pytest.raises(DecodeError):
            decode_canonical(bytes.fromhex(bad), 1024)


def _rfc6962(leaves: list[bytes]) -> bytes:
    """MTH from RFC 6962 §2.1, written from the RFC's text alone."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _rfc6962(leaves[:k]) + _rfc6962(leaves[k:])).digest()


def test_merkle_matches_rfc6962_and_proofs_verify() -> None:
    for n in range(0, 34):
        leaves = [bytes([i]) * (i % 5) for i in range(n)]
        root = compute_merkle_root(leaves)
        assert root == _rfc6962(leaves)
        for i in range(n):
            validate_merkle_proof(leaves[i], compute_merkle_proof(leaves, i), root)


def test_state_root_from_spec_text() -> None:
    """Build the leaves exactly as SPEC.md §5 words them, without protocol.state's helpers."""
    w = np.array([[1.5, -0.0], [2.0, 3.25]], dtype="<f4")
    step = np.int64(7)

    def leaf(name: str, dtype: str, shape: tuple[int, ...], raw: bytes) -> bytes:
        nb = name.encode()
        header = b"pol/v1/tensor" + struct.pack("<H", len(nb)) + nb + struct.pack("<B", len(dtype)) + dtype.encode()
        header += struct.pack("<B", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        return header + _rfc6962([raw])  # one chunk of at most 512 KiB: chunk root = H(0x00 || raw)

    expected = _rfc6962([leaf("meta/step", "i64", (), step.tobytes()), leaf("param/w", "f32", (2, 2), w.tobytes())])
    got = compute_state_root([TensorLeaf("param/w", "f32", (2, 2), w.tobytes()),
                              TensorLeaf("meta/step", "i64", (), step.astype("<i8").tobytes())])
    assert got == expected
    # +0.0 and -0.0 are different states.
    w2 = w.copy()
    w2[0, 1] = 0.0
    assert compute_state_root([TensorLeaf("param/w", "f32", (2, 2), w2.tobytes()),
                               TensorLeaf("meta/step", "i64", (), step.tobytes())]) != got


def test_task_id_is_hash_of_normalized_canonical_task() -> None:
    text = (EXAMPLES / "digits-mlp.toml").read_text()
    task = parse_task_toml(text)
    data = encode_task(task)
    assert compute_task_id(task) == hashlib.sha256(b"pol/v1/task" + data).digest()
    import msgpack

    doc = msgpack.unpackb(data)
    raw = tomllib.loads(text)
    for section, values in raw.items():
        for key, value in values.items():
            assert doc[section][key] == value, (section, key)
    assert doc["task"]["ops_version"] == 1 and doc["optim"]["beta2"] == 0.999  # defaults are filled in
    assert list(doc) == sorted(doc) and all(list(v) == sorted(v) for v in doc.values())
    # Layout and comments do not matter; meaning does.
    assert compute_task_id(parse_task_toml("# comment\n" + text)) == compute_task_id(task)
    assert compute_task_id(parse_task_toml(text.replace("seed = 20261122", "seed = 20261123"))) != compute_task_id(task)


def test_segment_sample_from_spec_formula() -> None:
    sig = bytes(range(96))
    seed = hashlib.sha256(b"pol/v1/sample-seed" + sig).digest()
    chosen: list[int] = []
    i = 0
    while len(chosen) < 5:
        c = int.from_bytes(hashlib.sha256(seed + i.to_bytes(8, "little")).digest()[:8], "little") % 40
        if c not in chosen:
            chosen.append(c)
        i += 1
    assert compute_segment_sample(sig, 40, 5) == sorted(chosen)
    assert compute_segment_sample(sig, 3, 5) == [0, 1, 2]


def test_digits_dataset_hash_from_sklearn_loader() -> None:
    from sklearn.datasets import load_digits

    from prover.datasets import get_local_dataset_hash

    d = load_digits()
    canonical = d.data.astype(np.uint8).tobytes() + d.target.astype(np.uint8).tobytes()
    expected = hashlib.sha256(b"pol/v1/dataset" + b"sklearn-digits\x00" + canonical).digest()
    assert get_local_dataset_hash("sklearn-digits") == expected
    assert parse_task_toml((EXAMPLES / "digits-mlp.toml").read_text()).data.sha256 == expected


def test_binding_vectors_posting_id_run_seed_and_claim_id() -> None:
    """binding.json is written by tests/vectors/make_binding.py with hand-written msgpack and hashlib
    alone (SPEC.md §6, §9, §16.3); the protocol package must agree with it byte for byte."""
    from protocol.claim import ClaimBody, compute_claim_id, encode_claim_body
    from protocol.ledger import compute_posting_id, compute_task_posted, compute_task_posted_message
    from protocol.rng import compute_training_seed

    v = load("binding.json")
    p = v["posting"]
    message = compute_task_posted_message(bytes.fromhex(p["task_id"]), bytes.fromhex(p["requester"]), p["reward"],
                                          p["expires_at"])
    assert message.hex() == p["message"]
    assert hashlib.sha256(message).hexdigest() == p["posting_id"]
    for case in v["training_seed"]:
        seed = compute_training_seed(bytes.fromhex(case["task_id"]), bytes.fromhex(case["prover"]), bytes.fromhex(case["posting_id"]))
        assert seed == case["training_seed"]
    c = v["claim_body"]
    body = ClaimBody(bytes.fromhex(c["task_id"]), bytes.fromhex(c["prover"]), bytes.fromhex(c["commitment"]),
                     bytes.fromhex(c["final_root"]), c["num_checkpoints"], c["total_steps"], c["checkpoint_interval"],
                     bytes.fromhex(c["posting_id"]))
    assert encode_claim_body(body).hex() == c["encoding"]
    assert compute_claim_id(body).hex() == c["claim_id"]
    # compute_posting_id of a real posting is the hash of the message its requester signed.
    task = encode_task(parse_task_toml((EXAMPLES / "digits-mlp.toml").read_text()))
    posting = compute_task_posted(bytes.fromhex(load("bls.json")["secret_key"]), task, 5, 10**9)
    signed = compute_task_posted_message(compute_task_id(parse_task_toml((EXAMPLES / "digits-mlp.toml").read_text())),
                                         posting.requester, 5, 10**9)
    assert compute_posting_id(posting) == hashlib.sha256(signed).digest()


def test_binding_vectors_sample_count_rate_and_forced_roots() -> None:
    """Sample counts, the ledger's sample rate and forced-error roots (SPEC.md §16.2, §16.9), against
    tests/vectors/make_binding.py, which implements them from the SPEC text with hashlib and integers."""
    from protocol.economics import compute_sample_milli, get_sample_count
    from protocol.forced import compute_forced_root
    from protocol.genesis import Params

    v = load("binding.json")
    for case in v["sample_count"]:
        assert get_sample_count(bytes.fromhex(case["signature"]), case["sample_milli"]) == case["count"]
    for case in v["sample_rate"]:
        params = Params(deterrence_bps=case["deterrence_bps"])
        assert compute_sample_milli(case["reward"], case["bond"], case["honest"], params) == case["sample_milli"]
    for case in v["forced_root"]:
        assert compute_forced_root(bytes.fromhex(case["secret"]), case["index"]).hex() == case["root"]
