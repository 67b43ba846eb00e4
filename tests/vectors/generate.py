"""Write the SPEC.md test vectors (Appendix A) into tests/vectors/*.json.

    python tests/vectors/generate.py            # every generated file
    python tests/vectors/generate.py steps      # only the named ones

Deterministic: rerunning reproduces the committed files byte for byte. msgpack.json,
philox4x32_10.json and bls.json come from outside sources and are not written here.
tests/offline/test_spec_vectors.py checks every file against the project's code and, where
feasible, against the separate implementation in tests/spec_impl/.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpu_ops import functional as F  # noqa: E402
from gpu_ops import backend, optim, ref  # noqa: E402
from prover.datasets import load_dataset  # noqa: E402
from prover.training import Runtime, compute_root, get_state_leaves, init_state, train_step  # noqa: E402
from protocol import bls  # noqa: E402
from protocol.claim import (  # noqa: E402
    compute_claim_body,
    compute_claim_id,
    compute_claim_signing_message,
    compute_signed_claim,
    encode_claim,
    encode_claim_body,
    get_claim_body_document,
)
from protocol.encoding import encode_canonical  # noqa: E402
from protocol.errors import InvalidTask  # noqa: E402
from protocol.merkle import compute_merkle_proof, compute_merkle_root, compute_root_from_leaf_hashes  # noqa: E402
from protocol.rng import STREAM_DATA, STREAM_DROPOUT, compute_permutation, compute_random_u32  # noqa: E402
from protocol.constants import OFFLINE_POSTING_ID, TENSOR_CHUNK_BYTES  # noqa: E402
from protocol.rng import compute_training_seed, compute_uniform_f64  # noqa: E402
from protocol.sampling import compute_segment_sample  # noqa: E402
from protocol.state import (  # noqa: E402
    TensorLeaf,
    compute_chunk_hashes,
    compute_chunk_proof,
    compute_leaf_data,
    compute_state_root,
    compute_tensor_leaf_hash,
)
from protocol.task import Task, compute_task_id, encode_task, get_task_canonical, parse_task_toml  # noqa: E402
from protocol.messages import compute_claim_announced, compute_fetch_hints_message, encode_message  # noqa: E402

OUT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
BUILTIN = ("digits-mlp", "digits-cnn", "pydoc-transformer")
DIGITS_SHA = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"


def tensor_hash(t: torch.Tensor | np.ndarray) -> str:
    a = t.detach().contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
    if a.dtype == np.float32:
        a = a.astype("<f4")
    elif a.dtype == np.int64:
        a = a.astype("<i8")
    return hashlib.sha256(a.tobytes()).hexdigest()


def f32_bits(values: Any) -> list[str]:
    a = np.asarray(values, dtype=np.float32).reshape(-1)
    return [f"{int(v):08x}" for v in a.view(np.uint32)]


def from_bits(words: list[str]) -> np.ndarray:
    return np.array([int(w, 16) for w in words], dtype=np.uint32).view(np.float32)


def builtin_task(name: str) -> Task:
    return parse_task_toml((EXAMPLES / f"{name}.toml").read_text())


# Tiny configurations: one step of each is cheap enough to check in the test suite.
TINY = {
    "mlp": f"""[task]
name = "tiny-mlp"
seed = 4242
total_steps = 4
checkpoint_interval = 2
batch_size = 8
[model]
family = "mlp"
hidden = [16, 12]
activation = "gelu"
[data]
adapter = "sklearn-digits"
sha256 = "{DIGITS_SHA}"
[optim]
name = "sgd"
lr = 0.1
momentum = 0.9
weight_decay = 0.0001
grad_clip = 0.5
[schedule]
name = "linear"
warmup_steps = 2
final_lr_fraction = 0.25
""",
    "cnn": f"""[task]
name = "tiny-cnn"
seed = 4243
total_steps = 4
checkpoint_interval = 2
batch_size = 4
[model]
family = "cnn"
channels = [2, 3]
kernel = 3
hidden = 8
activation = "tanh"
[data]
adapter = "sklearn-digits"
sha256 = "{DIGITS_SHA}"
[optim]
name = "adamw"
lr = 0.01
weight_decay = 0.01
""",
    "transformer": """[task]
name = "tiny-transformer"
seed = 4244
total_steps = 4
checkpoint_interval = 2
batch_size = 2
[model]
family = "transformer"
d_model = 8
n_layers = 2
n_heads = 2
d_ff = 16
context = 8
dropout = 0.25
[data]
adapter = "pydoc-topics"
sha256 = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab"
[optim]
name = "adamw"
lr = 0.003
weight_decay = 0.01
grad_clip = 0.05
[schedule]
name = "linear"
warmup_steps = 1
final_lr_fraction = 0.1
""",
}


def tiny_task(family: str) -> Task:
    return parse_task_toml(TINY[family])


def _fixed_key(tag: bytes) -> bytes:
    return bls.compute_secret_key(hashlib.sha256(b"pol test vector key " + tag).digest())


# Training vectors are runs of this prover key under the offline posting id (SPEC.md §6, §9).
VECTOR_PROVER = bls.compute_public_key(_fixed_key(b"prover"))


def run_seed(task: Task, posting_id: bytes = OFFLINE_POSTING_ID) -> int:
    return compute_training_seed(compute_task_id(task), VECTOR_PROVER, posting_id)


def run_runtime(task: Task) -> Runtime:
    return Runtime.for_task(task, run_seed(task))


def run_binding(task: Task) -> dict[str, str]:
    return {"prover": VECTOR_PROVER.hex(), "posting_id": OFFLINE_POSTING_ID.hex(), "run_seed": str(run_seed(task))}


def _write(name: str, doc: dict[str, Any]) -> None:
    (OUT / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


# --- §2 -------------------------------------------------------------------------------------

def gen_msgpack_edges() -> dict[str, Any]:
    ints = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -32, -33, -128, -129, -32768,
            -32769, -(2**31), -(2**31) - 1, -(2**63)]
    floats = [0.0, -0.0, 1.0, 0.1, 1e-8, 5e-324, 1.7976931348623157e308]
    strs = ["", "a" * 31, "a" * 32, "a" * 255, "a" * 256, "é"]
    cases: list[dict[str, Any]] = [{"kind": "int", "value": v, "hex": encode_canonical(v).hex()} for v in ints]
    cases += [{"kind": "float", "value": struct.pack(">d", v).hex(), "hex": encode_canonical(v).hex()} for v in floats]
    cases += [{"kind": "str", "value": s, "hex": encode_canonical(s).hex()} for s in strs]
    cases += [{"kind": "bin", "value": b.hex(), "hex": encode_canonical(b).hex()} for b in (b"", b"\x00" * 256)]
    cases += [{"kind": "bool", "value": v, "hex": encode_canonical(v).hex()} for v in (True, False)]
    cases.append({"kind": "nil", "value": None, "hex": encode_canonical(None).hex()})
    cases.append({"kind": "array", "value": list(range(16)), "hex": encode_canonical(list(range(16))).hex()})
    keys = {"b": 1, "a": 2, "aa": 3, "B": 4, "é": 5, "z" * 3: 6}
    cases.append({"kind": "map", "value": keys, "hex": encode_canonical(keys).hex()})
    non_canonical = {
        "uint8 for a fixint": "cc05",
        "int16 for a positive value that fits uint8": "d100c8",
        "int8 for -1": "d0ff",
        "float32": "ca3f800000",
        "str8 for a short string": "d90161",
        "unsorted map keys": "82a16201a16101",
        "duplicate map keys": "82a16101a16102",
        "array16 for 1 element": "dc000101",
        "extension type": "d40100",
        "trailing byte": "0000",
    }
    return {"section": "SPEC.md §2", "cases": cases, "non_canonical": non_canonical}


# --- §3 -------------------------------------------------------------------------------------

def _edge_task_toml(seed: int, extra: str, *, total: int = 4, interval: int = 2, model: str = "hidden = [3]",
                    sha: str = DIGITS_SHA) -> str:
    return (f"[task]\nname = \"edge\"\nseed = {seed}\ntotal_steps = {total}\ncheckpoint_interval = {interval}\n"
            f"batch_size = 1\n[model]\nfamily = \"mlp\"\n{model}\n[data]\nadapter = \"sklearn-digits\"\n"
            f"sha256 = \"{sha}\"\n{extra}")


def gen_tasks() -> dict[str, Any]:
    texts = {name: (EXAMPLES / f"{name}.toml").read_text() for name in BUILTIN}
    texts["integers-as-floats"] = _edge_task_toml(2**64 - 1, "[optim]\nlr = 1\nmomentum = -0.0\n")
    texts.update({f"tiny-{k}": v for k, v in TINY.items()})
    valid = []
    for name, text in texts.items():
        task = parse_task_toml(text)
        valid.append({"name": name, "toml": text, "normalized": _jsonable(get_task_canonical(task)),
                      "canonical_hex": encode_task(task).hex(), "task_id": compute_task_id(task).hex()})
    bad_texts = {
        "warmup longer than the run": _edge_task_toml(1, "[schedule]\nwarmup_steps = 5\n"),
        "interval does not divide total_steps": _edge_task_toml(1, "", interval=3),
        "unknown key": _edge_task_toml(1, "[optim]\nname = \"sgd\"\nnesterov = true\n"),
        "cnn key in an mlp": _edge_task_toml(1, "", model="hidden = [3]\nkernel = 3"),
        "boolean for an integer": _edge_task_toml(1, "", model="hidden = [true]"),
        "lr out of range": _edge_task_toml(1, "[optim]\nlr = 0.0\n"),
        "nan lr": _edge_task_toml(1, "[optim]\nlr = nan\n"),
        "uppercase dataset hash": _edge_task_toml(1, "", sha=DIGITS_SHA.upper()),
        "seed of 2^64": _edge_task_toml(2**64, ""),
        "transformer on images": _edge_task_toml(1, "", model="").replace('family = "mlp"', 'family = "transformer"'),
    }
    invalid = []
    for name, text in bad_texts.items():
        try:
            parse_task_toml(text)
        except InvalidTask as exc:
            invalid.append({"name": name, "toml": text, "error": str(exc)})
        else:  # pragma: no cover - a generator bug
            raise AssertionError(f"{name} was accepted")
    return {"section": "SPEC.md §3", "valid": valid, "invalid": invalid}


def _jsonable(doc: Any) -> Any:
    """Floats are given as their binary64 bits too, since JSON cannot show -0.0 vs 0.0 reliably."""
    if isinstance(doc, dict):
        return {k: _jsonable(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_jsonable(v) for v in doc]
    if isinstance(doc, float):
        return {"f64": struct.pack(">d", doc).hex()}
    return doc


# --- §4, §5, §6, §7 ------------------------------------------------------------------------------

def gen_merkle() -> dict[str, Any]:
    trees = []
    for n in range(0, 18):
        leaves = [bytes([i]) * i for i in range(n)]
        trees.append({"leaves": [x.hex() for x in leaves], "root": compute_merkle_root(leaves).hex(),
                      "paths": [[p.hex() for p in compute_merkle_proof(leaves, i).path] for i in range(n)]})
    return {"section": "SPEC.md §4", "trees": trees}


def _leaf(name: str, arr: np.ndarray) -> TensorLeaf:
    dtype = "i64" if arr.dtype == np.int64 else "f32"
    return TensorLeaf(name, dtype, tuple(arr.shape), arr.astype("<i8" if dtype == "i64" else "<f4").tobytes())


def gen_state() -> dict[str, Any]:
    sub = np.array([1e-45, -1e-45, 1.1754942e-38], dtype=np.float32)
    states = {
        "signed zeros": [_leaf("param/w", np.array([[0.0, -0.0], [1.5, -2.25]], dtype=np.float32)),
                         _leaf("meta/step", np.array(7, dtype=np.int64))],
        "subnormals, scalar f32 and a step above 2^32": [
            _leaf("param/sub", sub), _leaf("param/s", np.array(3.0, dtype=np.float32)),
            _leaf("opt/momentum/sub", np.zeros(3, dtype=np.float32)),
            _leaf("meta/step", np.array(2**33 + 5, dtype=np.int64))],
        "empty tensor and byte order of names": [
            _leaf("param/b", np.zeros((0, 3), dtype=np.float32)), _leaf("param/a-b", np.ones(1, dtype=np.float32)), _leaf("param/a0", np.ones(1, dtype=np.float32)),
            _leaf("param/a.b", np.ones(2, dtype=np.float32)), _leaf("param/a_b", np.ones(2, dtype=np.float32)),
            _leaf("meta/step", np.array(0, dtype=np.int64))],
        # TENSOR_CHUNK_BYTES of f32 is one full chunk; 2 chunks + 12 bytes is three with a short last one.
        "chunk boundaries: one full chunk, three chunks with a short last one": [
            _leaf("param/full", np.arange(TENSOR_CHUNK_BYTES // 4, dtype=np.float32)),
            _leaf("param/multi", np.arange((2 * TENSOR_CHUNK_BYTES + 12) // 4, dtype=np.float32).reshape(-1, 1)),
            _leaf("meta/step", np.array(3, dtype=np.int64))],
    }
    out = []
    for label, leaves in states.items():
        items = []
        for lf in leaves:
            hashes = compute_chunk_hashes(lf.data)
            item: dict[str, Any] = {"name": lf.name, "dtype": lf.dtype, "shape": list(lf.shape)}
            if len(lf.data) > 64:  # big tensors by rule: element j is j (exact in binary32)
                item.update({"fill": "arange", "data_sha256": hashlib.sha256(lf.data).hexdigest()})
            else:
                item["data"] = lf.data.hex()
            chunk_root = compute_root_from_leaf_hashes(hashes)
            item.update({
                "chunk_hashes": [h.hex() for h in hashes], "chunk_root": chunk_root.hex(),
                "chunk_paths": [[p.hex() for p in compute_chunk_proof(lf.data, i).path] for i in range(len(hashes))],
                "leaf_data": compute_leaf_data(lf.name, lf.dtype, lf.shape, chunk_root).hex(),
                "leaf_hash": compute_tensor_leaf_hash(lf).hex()})
            items.append(item)
        out.append({"name": label, "leaves": items, "state_root": compute_state_root(leaves).hex()})
    return {"section": "SPEC.md §5", "chunk_bytes": TENSOR_CHUNK_BYTES, "states": out}


def gen_claims() -> dict[str, Any]:
    sk = _fixed_key(b"prover")
    cases = []
    for name, posting in (("digits-mlp", OFFLINE_POSTING_ID), ("tiny-mlp", hashlib.sha256(b"a posting").digest())):
        task = builtin_task(name) if name in BUILTIN else tiny_task("mlp")
        roots = [hashlib.sha256(f"{name} root {i}".encode()).digest() for i in range(task.num_checkpoints)]
        body = compute_claim_body(task, compute_task_id(task), bls.compute_public_key(sk), roots, posting)
        claim = compute_signed_claim(sk, body)
        doc = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in get_claim_body_document(body).items()}
        cases.append({"task": name, "secret_key": sk.hex(), "checkpoint_roots": [r.hex() for r in roots],
                      "body": doc, "body_hex": encode_claim_body(body).hex(), "claim_id": compute_claim_id(body).hex(),
                      "signing_message": compute_claim_signing_message(body).hex(),
                      "signature": claim.signature.hex(), "claim_hex": encode_claim(claim).hex(),
                      "run_seed": str(compute_training_seed(compute_task_id(task), body.prover, posting))})
        hints = ("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",) if posting != \
            OFFLINE_POSTING_ID else ()
        announced = compute_claim_announced(claim, hints, sk)
        cases[-1]["announce"] = {  # the claims-topic message with its signed fetch hints (§16.6)
            "fetch": list(hints), "fetch_message": compute_fetch_hints_message(compute_claim_id(body), hints).hex(),
            "fetch_signature": announced.fetch_signature.hex(), "envelope": encode_message(announced).hex()}
    return {"section": "SPEC.md §6, §16.6", "cases": cases}


def gen_sampling() -> dict[str, Any]:
    cases = []
    for tag in (b"a", b"b"):
        sk = _fixed_key(b"verifier " + tag)
        claim_id = hashlib.sha256(b"claim " + tag).digest()
        sig = bls.sign(sk, b"pol/v1/sample" + claim_id)
        for s, m in ((16, 4), (16, 0), (16, 15), (16, 16), (16, 40), (1, 1), (1000, 10), (3, 2)):
            cases.append({"secret_key": sk.hex(), "claim_id": claim_id.hex(), "signature": sig.hex(),
                          "num_segments": s, "count": m, "sample": compute_segment_sample(sig, s, m)})
    return {"section": "SPEC.md §7", "cases": cases}


# --- §9 ---------------------------------------------------------------------------------------

def gen_rng() -> dict[str, Any]:
    calls = [(0, 1, 0, 0, 9), (2**64 - 1, 2, 3, 1, 6), (20261122, 1, 5, 0, 5), (7, 3, 2**32 + 2, 2**32 + 1, 4),
             (7, 3, 2, 1, 4), (2**32, 2, 0, 0, 3)]
    words = [{"seed": str(s), "stream": st, "a": a, "b": b, "n": n,
              "words": [f"{int(w):08x}" for w in compute_random_u32(s, st, a, b, n)]} for s, st, a, b, n in calls]
    uniforms = [{"seed": str(s), "stream": 1, "a": a, "b": 0, "n": 5,
                 "values_f64": [struct.pack(">d", float(v)).hex() for v in compute_uniform_f64(s, 1, a, 0, 5)]}
                for s, a in ((20261122, 0), (99, 3))]
    perms = []
    for seed, epoch, n in ((5, 0, 1), (5, 0, 2), (5, 0, 10), (5, 1, 10), (20261122, 0, 1797), (20261122, 1, 1797)):
        order = compute_permutation(seed, epoch, n)
        perms.append({"seed": seed, "epoch": epoch, "n": n, "first": [int(v) for v in order[:16]],
                      "sha256_i64le": tensor_hash(order.astype(np.int64))})
    masks = []
    for seed, step, site, p, n in ((7, 0, 0, 0.1, 12), (7, 3, 5, 0.5, 8), (4244, 1, 2, 0.25, 10)):
        m = F.dropout_mask(torch.from_numpy(compute_random_u32(seed, STREAM_DROPOUT, step, site, n).astype(np.int64)),
                           p, (n,))
        masks.append({"seed": seed, "step": step, "site": site, "p": p, "n": n, "threshold": math.floor(p * 2**32),
                      "mask_bits": f32_bits(m.numpy())})
    return {"section": "SPEC.md §9", "random_u32": words, "uniform": uniforms, "permutations": perms,
            "dropout_masks": masks}


# --- §10 --------------------------------------------------------------------------------------

EDGE = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.1754942e-38, 1.17549435e-38, -1.17549435e-38, np.inf, -np.inf,
                 np.nan, 88.72283935546875, 88.72284, 88.72283, -103.97208404541016, -103.97209, -103.97207,
                 -87.33654, -87.3365, 1.0, -1.0, 0.5, 2.0, 0.70710677, 0.7071068, 3.4028235e38, -3.4028235e38, 10.0,
                 -10.0, 9.0, -9.0, 1e-3, -1e-3, 0.1, 3.14159265, -5.5, 1e-20, 4.0e30], dtype=np.float32)


def gen_elementwise() -> dict[str, Any]:
    x = torch.from_numpy(EDGE.copy())
    with backend.use_backend("ref"):
        outs = {"exp": ref.exp(x), "log": ref.log(x), "tanh": ref.tanh(x), "sqrt": ref.sqrt(x), "gelu": F.gelu(x),
                "relu": F.relu(x)}
    doc = {name: [("nan" if math.isnan(v) else w) for v, w in zip(t.numpy().tolist(), f32_bits(t.numpy()))]
           for name, t in outs.items()}
    return {"section": "SPEC.md §10.4", "inputs": f32_bits(EDGE), "outputs": doc,
            "note": "NaN outputs are written as 'nan': their payload is not specified"}


def sincos_inputs() -> np.ndarray:
    """§10.4 sin/cos arguments: edges, multiples of pi/4 up to the domain limit and their float32
    neighbours, the limit itself and beyond, and random values over the rotary range."""
    quarter = (np.arange(-40, 41, dtype=np.float64) * (math.pi / 4)).astype(np.float32)
    far = (np.array([1000, 5000, 10429, -10429], dtype=np.float64) * (math.pi / 4)).astype(np.float32)
    pts = np.concatenate([quarter, far])
    edges = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-30, 1.1754942e-38, 2.0**-12, 0.5, 1.0, 4095.0, 4095.9998,
                      8192.0, -8192.0, 8192.0005, -8192.0005, 1e6, 3.4028235e38, np.inf, -np.inf, np.nan],
                     dtype=np.float32)
    rs = np.random.default_rng(20261202)
    rand = np.concatenate([rs.uniform(-8, 8, 64), rs.uniform(0, 4096, 64)]).astype(np.float32)
    return np.concatenate([edges, pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(-np.inf)),
                           rand]).astype(np.float32)


def gen_sincos() -> dict[str, Any]:
    x = sincos_inputs()
    outs = {"sin": ref.sin(torch.from_numpy(x.copy())), "cos": ref.cos(torch.from_numpy(x.copy()))}
    doc = {name: [("nan" if math.isnan(v) else w) for v, w in zip(t.numpy().tolist(), f32_bits(t.numpy()))]
           for name, t in outs.items()}
    return {"section": "SPEC.md §10.4 (sin, cos)", "inputs": f32_bits(x), "outputs": doc,
            "note": "NaN outputs are written as 'nan': their payload is not specified",
            "rotary_tables": gen_rotary_tables()}


# (T, r, base): a small table written out whole; the default base; the largest T with the widest,
# the narrowest and extreme bases (angles up to 4095, the edge of the sin/cos domain's use).
ROTARY_TABLES = [(8, 6, 500.0), (64, 16, 10000.0), (4096, 64, 10000.0), (4096, 128, 1e9), (4096, 2, 1.0)]


def gen_rotary_tables() -> list[dict[str, Any]]:
    """§10.5 rotary tables COS and SIN [T, r/2]: the bits for the small case, SHA-256 of the
    little-endian binary32 bytes for every case."""
    from gpu_ops.layers import rotary_tables

    out = []
    for t, r, base in ROTARY_TABLES:
        cos, sin = (a.numpy().astype("<f4") for a in rotary_tables(t, r, base))
        case: dict[str, Any] = {"T": t, "r": r, "base": base, "cos_sha256": hashlib.sha256(cos.tobytes()).hexdigest(),
                                "sin_sha256": hashlib.sha256(sin.tobytes()).hexdigest()}
        if t * r <= 64:
            case["cos"], case["sin"] = f32_bits(cos.reshape(-1)), f32_bits(sin.reshape(-1))
        out.append(case)
    return out


def _exact_inputs() -> dict[str, np.ndarray]:
    rs = np.random.default_rng(20261201)
    wide = (rs.standard_normal(1000) * np.exp2(rs.integers(-60, 60, 1000))).astype(np.float32)
    return {
        "one term": np.array([3.0], dtype=np.float32),
        "signed zeros": np.array([-0.0, -0.0, -0.0], dtype=np.float32),
        "cancellation": np.array([1e30, 1.0, -1e30], dtype=np.float32),
        "exact cancellation to +0": np.array([1.5, -1.5, 0.25, -0.25], dtype=np.float32),
        "subnormals": np.array([1e-45, 2e-45, -1e-45, 1e-40, 1.17549435e-38], dtype=np.float32),
        "truncated tail": np.array([1.0] + [2.0**-60] * 7, dtype=np.float32),
        "largest finite": np.array([3.4028235e38, 3.4028235e38, -3.4028235e38], dtype=np.float32),
        "power of two count": np.arange(1, 9, dtype=np.float32) / np.float32(3.0),
        "wide random (n=1000)": wide,
    }


def gen_exact() -> dict[str, Any]:
    sums = []
    for name, v in _exact_inputs().items():
        r = ref.exact_sum(torch.from_numpy(v.copy()))
        sums.append({"name": name, "inputs": f32_bits(v), "sum": f32_bits(r.numpy())[0]})
    rs = np.random.default_rng(7)
    mats = {
        "K=1": (np.array([[2.5], [-0.0]], np.float32), np.array([[3.0, -1e-45]], np.float32)),
        "signed zeros": (np.array([[-0.0, 0.0], [1.0, -1.0]], np.float32), np.array([[0.0, 1.0], [-0.0, 0.0]], np.float32)),
        "mixed magnitudes": (np.array([[1e20, 1.0, 1e-20], [1e-38, 1e-45, 3.0]], np.float32),
                             np.array([[1.0, -1.0], [1e10, 3.0], [-7.0, 1e-30]], np.float32)),
        "random 5x33 by 33x4": ((rs.standard_normal((5, 33)) * np.exp2(rs.integers(-20, 20, (5, 33)))).astype(np.float32),
                                rs.standard_normal((33, 4)).astype(np.float32)),
    }
    mms = []
    for name, (a, b) in mats.items():
        c = ref.matmul(torch.from_numpy(a.copy()), torch.from_numpy(b.copy())).numpy()
        mms.append({"name": name, "a_shape": list(a.shape), "a": f32_bits(a), "b_shape": list(b.shape), "b": f32_bits(b),
                    "c": f32_bits(c)})
    return {"section": "SPEC.md §10.2, §10.3", "exact_sum": sums, "matmul": mms}


# --- §11, §12 ---------------------------------------------------------------------------------

def gen_models() -> dict[str, Any]:
    models = []
    tasks = {name: builtin_task(name) for name in BUILTIN}
    tasks.update({f"tiny-{k}": tiny_task(k) for k in TINY})
    for name, task in tasks.items():
        rt = run_runtime(task)
        state = init_state(rt)
        params = [{"index": i, "name": s.name, "shape": list(s.shape), "init": s.init[0],
                   "bound_f64": struct.pack(">d", s.init[1]).hex() if s.init[0] == "uniform" else None,
                   "sha256": tensor_hash(state.params[s.name])} for i, s in enumerate(rt.specs)]
        models.append({"task": name, "task_id": compute_task_id(task).hex(), "family": task.model_family,
                       "seed": str(rt.seed), **run_binding(task), "params": params,
                       "slots": sorted({lf.name.split("/")[1] for lf in get_state_leaves(state)
                                        if lf.name.startswith("opt/")}),
                       "init_root": compute_root(state).hex()})
    return {"section": "SPEC.md §11, §13", "models": models}


def gen_datasets() -> dict[str, Any]:
    out = []
    mlp = builtin_task("digits-mlp")
    ds = load_dataset(mlp.data)
    batches = []
    keyed = run_runtime(mlp).keyed_task
    for step in (0, 28):
        x, y = ds.get_batch(keyed, step)
        batches.append({"task": "digits-mlp", "seed": str(keyed.seed), "step": step, "inputs_sha256": tensor_hash(x),
                        "targets": [int(v) for v in y]})
    out.append({"adapter": "sklearn-digits", "sha256": ds.sha256.hex(), "items": len(ds.targets),
                "canonical_bytes": len(ds.targets) * 65, "first_labels": [int(v) for v in ds.targets[:20]],
                "batches": batches})
    tr = builtin_task("pydoc-transformer")
    ts = load_dataset(tr.data)
    batches = []
    keyed = run_runtime(tr).keyed_task
    for step in (0, 199):
        x, y = ts.get_batch(keyed, step)
        starts = compute_random_u32(keyed.seed, STREAM_DATA, step, 1, tr.batch_size).astype(np.int64) % (
            len(ts.inputs) - tr.model.context - 1)  # type: ignore[union-attr]
        batches.append({"task": "pydoc-transformer", "seed": str(keyed.seed), "step": step,
                        "starts": [int(s) for s in starts],
                        "inputs_sha256": tensor_hash(x), "targets_sha256": tensor_hash(y)})
    out.append({"adapter": "pydoc-topics", "sha256": ts.sha256.hex(), "bytes": len(ts.inputs),
                "vocab": ts.n_classes, "first_tokens": [int(v) for v in ts.inputs[:20]], "batches": batches})
    return {"section": "SPEC.md §12", "datasets": out}


# --- §10.5, §10.6, §13: one recorded step per family -------------------------------------------------

_RECORDED = ("linear", "relu", "tanh", "gelu", "layer_norm", "softmax", "matmul", "dropout", "conv2d", "embedding",
             "add_broadcast", "causal_attention", "cross_entropy", "matmul_nt")


def record_step(task: Task) -> dict[str, Any]:
    """Run one step of ``task`` from its initial state, hashing every op output and its gradient."""
    fwd: list[dict[str, Any]] = []
    grads: dict[int, str] = {}
    raw_grads: dict[str, str] = {}
    update_grads: list[str] = []
    saved = {name: getattr(F, name) for name in _RECORDED if hasattr(F, name)}
    saved_acts = dict(F.ACTIVATIONS)
    saved_clip, saved_sgd, saved_adamw = optim.clip_grad_norm, optim.sgd_step, optim.adamw_step
    names: list[str] = []

    def wrap(name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def inner(*args: Any, **kw: Any) -> torch.Tensor:
            out = fn(*args, **kw)
            idx = len(fwd)
            fwd.append({"index": idx, "op": name, "shape": list(out.shape), "sha256": tensor_hash(out)})
            if out.requires_grad:
                out.register_hook(lambda g, idx=idx: grads.__setitem__(idx, tensor_hash(g)))  # type: ignore[no-untyped-call]
            return out
        return inner

    def clip(gs: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        raw_grads.update({n: tensor_hash(g) for n, g in zip(names, gs)})
        return saved_clip(gs, max_norm)

    def sgd(p: torch.Tensor, g: torch.Tensor, *a: Any) -> None:
        update_grads.append(tensor_hash(g))
        saved_sgd(p, g, *a)

    def adamw(p: torch.Tensor, g: torch.Tensor, *a: Any) -> None:
        update_grads.append(tensor_hash(g))
        saved_adamw(p, g, *a)

    try:
        for name, fn in saved.items():
            setattr(F, name, wrap(name, fn))
        for name, fn in saved_acts.items():
            F.ACTIVATIONS[name] = wrap(name, fn)
        optim.clip_grad_norm, optim.sgd_step, optim.adamw_step = clip, sgd, adamw  # type: ignore[assignment]
        rt = run_runtime(task)  # after patching: the model captures its activation function here
        state = init_state(rt)
        names.extend(sorted(state.params))
        x, y = rt.dataset.get_batch(task, 0)
        loss = train_step(rt, state)
    finally:
        for name, fn in saved.items():
            setattr(F, name, fn)
        F.ACTIVATIONS.update(saved_acts)
        optim.clip_grad_norm, optim.sgd_step, optim.adamw_step = saved_clip, saved_sgd, saved_adamw
    update = dict(zip(names, update_grads))
    for rec in fwd:
        rec["grad_sha256"] = grads.get(rec["index"])
    return {
        "task_toml": TINY[task.model_family], "task_id": compute_task_id(task).hex(), **run_binding(task),
        "init_root": compute_root(init_state(rt)).hex(),
        "batch": {"inputs_sha256": tensor_hash(x), "targets_sha256": tensor_hash(y)},
        "loss_f32": f32_bits(np.float32(loss))[0],
        "forward": fwd,
        "param_grads": raw_grads or update,
        "update_grads": update,
        "params_after": {n: tensor_hash(state.params[n]) for n in names},
        "slots_after": {f"{slot}/{n}": tensor_hash(t) for slot, ts in state.slots.items() for n, t in ts.items()},
        "root_after": compute_root(state).hex(),
    }


def gen_steps() -> dict[str, Any]:
    return {"section": "SPEC.md §10.5, §10.6, §13",
            "note": "forward lists every recorded op output in call order with the gradient that reached it "
                    "(null where none flows: outputs computed from data only); param_grads are before clipping, "
                    "update_grads after",
            "steps": {family: record_step(tiny_task(family)) for family in TINY}}


def gen_segments() -> dict[str, Any]:
    out = {}
    for name in BUILTIN:
        task = builtin_task(name)
        rt = run_runtime(task)
        state = init_state(rt)
        roots = [compute_root(state).hex()]
        losses = []
        for _ in range(task.checkpoint_interval):
            losses.append(f32_bits(np.float32(train_step(rt, state)))[0])
            roots.append(compute_root(state).hex())
        out[name] = {"task_id": compute_task_id(task).hex(), **run_binding(task), "k": task.checkpoint_interval,
                     "step_roots": roots, "losses_f32": losses}
    return {"section": "SPEC.md §13, §14", "note": "step_roots[0] is r_0, step_roots[k] is r_1", "segments": out}


# §11.1: graph tasks covering every graph operator (tied weights, dropout, patches, non-causal
# attention, mean pool, RMS norm, SwiGLU, conv2d k = 5, flatten, rotary, class token and select), built from the presets of §11.3.
GRAPH_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-tied-dropout": ("gpt2", {"d_model": 16, "n_layers": 2, "n_heads": 2, "context": 8, "dropout": 0.1}),
    "llama-style": ("gpt2", {"d_model": 16, "n_layers": 1, "n_heads": 4, "context": 6, "norm": "rms_norm",
                             "mlp": "swiglu", "tied": False, "vocab": 300, "optim.grad_clip": 0.5}),
    "vit": ("vit", {"d_model": 12, "n_layers": 1, "n_heads": 3, "dropout": 0.2, "patch": 4}),
    "resnet-pool": ("resnet", {"channels": 3, "blocks": 1, "stages": 3}),
    "resnet-flatten": ("resnet", {"channels": 2, "blocks": 2, "stages": 2, "kernel": 5, "pool": False,
                                  "optim.name": "sgd", "optim.momentum": 0.9, "optim.lr": 0.05}),
    "mlp-tanh": ("mlp", {"hidden": (12, 8), "activation": "tanh"}),  # the §11.2 mlp expansion, as a graph task
    # rotary on 6 of each head's 8 columns (copied columns too), base 500, no learned positions
    "gpt2-rotary": ("gpt2", {"d_model": 16, "n_layers": 2, "n_heads": 2, "context": 8, "positions": "rotary",
                             "rotary_dims": 6, "rotary_base": 500.0}),
    # a learned class token before the position table, read out by select instead of the mean
    "vit-cls": ("vit", {"d_model": 12, "n_layers": 1, "n_heads": 2, "patch": 4, "pool": "cls"}),
}
GRAPH_STEPS = 2


def graph_task(case: str) -> Task:
    from protocol.presets import get_preset_task
    from protocol.task import parse_task

    from protocol.graph import get_family_graph, get_graph_canonical
    from protocol.task import MLPConfig

    preset, sets = GRAPH_CASES[case]
    sha = "a294f1bbebc6ddcdbc2748588245b2b0d5c5864c0cd89ad469a0495182df8fab" if preset == "gpt2" else DIGITS_SHA
    task_keys = {"task.batch_size": 3, "task.total_steps": 4, "task.checkpoint_interval": 2, "optim.lr": 0.01}
    if preset == "mlp":
        doc = get_preset_task("resnet", task_keys, sha)
        doc["model"] = get_graph_canonical(get_family_graph("mlp", MLPConfig(**sets)))
    else:
        doc = get_preset_task(preset, {**task_keys, **sets}, sha)
    doc["task"]["name"] = case
    return parse_task(doc)


def gen_graphs() -> dict[str, Any]:
    from protocol.task import format_task_toml

    out = []
    for case in GRAPH_CASES:
        task = graph_task(case)
        rt = run_runtime(task)
        state = init_state(rt)
        params = [{"index": i, "name": s.name, "shape": list(s.shape), "init": s.init[0],
                   "bound_f64": struct.pack(">d", s.init[1]).hex() if s.init[0] == "uniform" else None,
                   "sha256": tensor_hash(state.params[s.name])} for i, s in enumerate(rt.specs)]
        steps = []
        init_root = compute_root(state).hex()
        for _ in range(GRAPH_STEPS):
            loss = train_step(rt, state)
            steps.append({"loss_f32": f32_bits(np.float32(loss))[0], "root": compute_root(state).hex()})
        out.append({"name": case, "task_toml": format_task_toml(task), "canonical_hex": encode_task(task).hex(),
                    "task_id": compute_task_id(task).hex(), **run_binding(task), "params": params,
                    "init_root": init_root, "steps": steps})
    return {"section": "SPEC.md §11.1, §10.5, §13", "note": "task_toml is the normalized task; each step from "
            "the previous state, under the run seed of the vector prover and the offline posting", "graphs": out}


GENERATORS: dict[str, Callable[[], dict[str, Any]]] = {
    "msgpack_edges.json": gen_msgpack_edges,
    "tasks.json": gen_tasks,
    "merkle.json": gen_merkle,
    "state.json": gen_state,
    "claims.json": gen_claims,
    "sampling.json": gen_sampling,
    "rng.json": gen_rng,
    "elementwise.json": gen_elementwise,
    "sincos.json": gen_sincos,
    "exact.json": gen_exact,
    "models.json": gen_models,
    "datasets.json": gen_datasets,
    "steps.json": gen_steps,
    "segments.json": gen_segments,
    "graphs.json": gen_graphs,
}


def main(argv: list[str]) -> int:
    # One thread: the vectors must not depend on how a multi-threaded kernel splits its work
    # (the tests replay them with the default thread count, which must give the same bits).
    torch.set_num_threads(1)
    wanted = [a if a.endswith(".json") else a + ".json" for a in argv] or list(GENERATORS)
    unknown = [w for w in wanted if w not in GENERATORS]
    if unknown:
        print(f"unknown vector files {unknown}; known: {sorted(GENERATORS)}", file=sys.stderr)
        return 2
    for name in wanted:
        _write(name, GENERATORS[name]())
        print(f"wrote tests/vectors/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
