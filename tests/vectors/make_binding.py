"""Writes binding.json: posting id, run seed and claim id vectors (SPEC.md §6, §9, §16.3).

Independent of the ``protocol`` package on purpose: msgpack is written byte by byte from the
msgpack spec and hashing uses hashlib alone, so the test that checks ``protocol`` against these
vectors compares two implementations. Rerun with ``python tests/vectors/make_binding.py``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

HERE = Path(__file__).parent


def mp_uint(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 1 << 8:
        return b"\xcc" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xcd" + struct.pack(">H", n)
    if n < 1 << 32:
        return b"\xce" + struct.pack(">I", n)
    return b"\xcf" + struct.pack(">Q", n)


def mp_str(s: str) -> bytes:
    raw = s.encode()
    assert len(raw) < 32
    return bytes([0xA0 | len(raw)]) + raw


def mp_bin(b: bytes) -> bytes:
    assert len(b) < 256
    return b"\xc4" + bytes([len(b)]) + b


def mp_map(items: dict[str, bytes]) -> bytes:
    assert len(items) < 16
    out = bytes([0x80 | len(items)])
    for key in sorted(items, key=lambda k: k.encode()):
        out += mp_str(key) + items[key]
    return out


def main() -> None:
    prover = bytes.fromhex(json.loads((HERE / "bls.json").read_text())["public_key"])
    task_id = hashlib.sha256(b"example task id").digest()
    requester = bytes(range(48))
    reward, expires_at = 1000, 1_900_000_000
    posting_message = b"pol/v1/task-posted" + mp_map({
        "task_id": mp_bin(task_id), "requester": mp_bin(requester), "reward": mp_uint(reward),
        "expires_at": mp_uint(expires_at)})
    posting_id = hashlib.sha256(posting_message).digest()
    cases = []
    for tid, pid in ((task_id, bytes(32)), (task_id, posting_id), (hashlib.sha256(b"relabelled").digest(), posting_id)):
        digest = hashlib.sha256(b"pol/v1/training-seed" + tid + prover + pid).digest()
        cases.append({"task_id": tid.hex(), "prover": prover.hex(), "posting_id": pid.hex(),
                      "training_seed": struct.unpack("<Q", digest[:8])[0]})
    commitment, final_root = hashlib.sha256(b"c").digest(), hashlib.sha256(b"f").digest()
    body = mp_map({"version": mp_uint(1), "task_id": mp_bin(task_id), "prover": mp_bin(prover),
                   "commitment": mp_bin(commitment), "final_root": mp_bin(final_root),
                   "num_checkpoints": mp_uint(17), "total_steps": mp_uint(400), "checkpoint_interval": mp_uint(25),
                   "posting_id": mp_bin(posting_id)})
    doc = {
        "posting": {"task_id": task_id.hex(), "requester": requester.hex(), "reward": reward,
                    "expires_at": expires_at, "message": posting_message.hex(), "posting_id": posting_id.hex()},
        "training_seed": cases,
        "claim_body": {"task_id": task_id.hex(), "prover": prover.hex(), "commitment": commitment.hex(),
                       "final_root": final_root.hex(), "num_checkpoints": 17, "total_steps": 400,
                       "checkpoint_interval": 25, "posting_id": posting_id.hex(), "encoding": body.hex(),
                       "claim_id": hashlib.sha256(b"pol/v1/claim-id" + body).digest().hex()},
    }
    (HERE / "binding.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
