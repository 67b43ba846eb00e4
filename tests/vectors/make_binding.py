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
    # Per-verifier sample counts (SPEC.md §16.2) for a few signatures and rates.
    counts = []
    for i, milli in enumerate((0, 41, 368, 999, 1000, 2300)):
        sig = hashlib.sha256(b"signature %d" % i).digest() * 3  # 96 bytes standing in for a BLS signature
        u = struct.unpack("<Q", hashlib.sha256(b"pol/v1/sample-count" + sig).digest()[:8])[0] % 1000
        counts.append({"signature": sig.hex(), "sample_milli": milli,
                       "count": milli // 1000 + (1 if u < milli % 1000 else 0)})
    # The ledger's rate rule, written from the SPEC text: smallest x in [0, 1000] with
    # Z(x, k) (R + B) BPS <= 10^18 ((R + B) BPS - D_bps R).
    one = 10**18

    def z(x: int, k: int) -> int:
        if x >= 1000:
            return 0
        b, acc = (1000 - x) * 10**15, one
        for bit in bin(k)[2:]:
            acc = -(-acc * acc // one)
            if bit == "1":
                acc = -(-acc * b // one)
        return acc

    rates = []
    for r, b, k in ((1000, 4000, 2), (1000, 4000, 6), (1000, 4000, 22), (100, 1000, 2), (7, 10**6, 341)):
        total = (r + b) * 10_000
        x = next(x for x in range(1001) if z(x, k) * total <= one * (total - 30_000 * r))
        rates.append({"reward": r, "bond": b, "honest": k, "deterrence_bps": 30_000, "sample_milli": x})
    secret = bytes(range(32))
    forced = [{"secret": secret.hex(), "index": j,
               "root": hashlib.sha256(b"pol/v1/forced-root" + secret + struct.pack("<Q", j)).hexdigest()}
              for j in (1, 3, 16)]
    doc = {
        "sample_count": counts,
        "sample_rate": rates,
        "forced_root": forced,
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
