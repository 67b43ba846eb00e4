"""Packed datasets (SPEC.md §12.2): packing, record proofs, tampering named to the record.

The Merkle root and the dataset hash are recomputed here from the spec's words with hashlib and
msgpack alone, not with protocol.merkle / protocol.encoding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgpack
import numpy as np
import pytest

from pol.cli import main
from protocol.datapack import (
    Manifest,
    compute_packed_dataset_hash,
    decode_manifest,
    encode_manifest,
    get_record_items,
    validate_record,
)
from protocol.errors import DecodeError, InvalidInput
from protocol.merkle import MerkleProof
from prover.datapack import (
    LEAVES_NAME,
    MANIFEST_NAME,
    InvalidDataset,
    get_record_proof,
    load_manifest,
    pack,
    read_checked_record,
    read_record,
    shard_name,
    verify_dataset,
)


def _spec_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle tree hash, written out independently."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _spec_root(leaves[:k]) + _spec_root(leaves[k:])).digest()


@pytest.fixture()
def tokens(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 65536, size=10_007, dtype=np.uint16)
    f = tmp_path / "tokens.bin"
    f.write_bytes(values.astype("<u2").tobytes())
    return f, values


def test_tokens_pack_matches_an_independent_computation(tmp_path: Path, tokens: tuple[Path, np.ndarray]) -> None:
    f, values = tokens
    m = pack([f], "tokens-u16", tmp_path / "ds", record_bytes=1000, records_per_shard=3)
    assert m.items_per_record == 500 and m.num_items == 10_007 and m.num_records == 21
    raw = values.astype("<u2").tobytes()
    records = [raw[i:i + 1000] for i in range(0, len(raw), 1000)]
    assert len(records[-1]) == 14  # the last record holds the 7 leftover tokens
    assert m.records_root == _spec_root(records)
    identity = {"format": "tokens-u16", "item_dtype": "u16", "item_shape": [], "items_per_record": 500,
                "num_items": 10_007, "records_root": m.records_root, "version": 1}
    packed = msgpack.packb(dict(sorted(identity.items())), use_bin_type=True)
    assert compute_packed_dataset_hash(m) == hashlib.sha256(b"pol/v1/dataset" + b"packed\x00" + packed).digest()
    # Every record comes back checked, and the shards hold exactly the input bytes in order.
    assert b"".join(read_checked_record(tmp_path / "ds", m, i) for i in range(m.num_records)) == raw
    assert b"".join((tmp_path / "ds" / shard_name(s)).read_bytes() for s in range(len(m.shards))) == raw
    assert list(get_record_items(m, 20)) == list(range(10_000, 10_007))
    assert verify_dataset(tmp_path / "ds") == m == load_manifest(tmp_path / "ds")


def test_tampered_record_is_named(tmp_path: Path, tokens: tuple[Path, np.ndarray]) -> None:
    f, _ = tokens
    d = tmp_path / "ds"
    m = pack([f], "tokens-u16", d, record_bytes=1000, records_per_shard=3)
    shard = d / shard_name(2)  # records 6, 7, 8
    data = bytearray(shard.read_bytes())
    data[1000 + 17] ^= 0x01  # inside record 7
    shard.write_bytes(bytes(data))
    with pytest.raises(InvalidDataset, match=r"record 7 \(shard-00002.bin, bytes 1000\.\.1999\)"):
        verify_dataset(d)
    with pytest.raises(InvalidInput, match="root"):
        validate_record(m, 7, read_record(d, m, 7), get_record_proof(d, m, 7))
    # Without the leaf index the shard hash still catches it.
    (d / LEAVES_NAME).unlink()
    with pytest.raises(InvalidDataset, match="shard-00002.bin does not match"):
        verify_dataset(d)


def test_truncated_shard_and_forged_leaf_index(tmp_path: Path, tokens: tuple[Path, np.ndarray]) -> None:
    f, _ = tokens
    d = tmp_path / "ds"
    pack([f], "tokens-u16", d, record_bytes=1000, records_per_shard=3)
    leaves = bytearray((d / LEAVES_NAME).read_bytes())
    leaves[0] ^= 1  # a forged index is ignored (it does not match the root), not believed
    (d / LEAVES_NAME).write_bytes(bytes(leaves))
    assert verify_dataset(d).num_records == 21
    last = d / shard_name(6)
    last.write_bytes(last.read_bytes()[:-1])
    with pytest.raises(InvalidDataset, match="shard-00006.bin is 2013 bytes"):
        verify_dataset(d)


def test_record_proof_must_name_the_record(tmp_path: Path, tokens: tuple[Path, np.ndarray]) -> None:
    f, _ = tokens
    d = tmp_path / "ds"
    m = pack([f], "tokens-u16", d, record_bytes=1000, records_per_shard=4)
    proof3 = get_record_proof(d, m, 3)
    with pytest.raises(InvalidInput, match="proof is for record 3"):
        validate_record(m, 4, read_record(d, m, 4), proof3)
    with pytest.raises(InvalidInput, match="has 999 bytes"):
        validate_record(m, 3, read_record(d, m, 3)[:-1], proof3)
    with pytest.raises(InvalidInput, match="outside"):
        validate_record(m, 21, b"", MerkleProof(21, 21, ()))


def test_images_roundtrip_digits(tmp_path: Path) -> None:
    from prover.datapack import pack_digits
    from prover.datasets import _load

    m = pack_digits(tmp_path / "digits", record_bytes=66 * 10)
    ds = _load("sklearn-digits")
    assert (m.format, m.item_shape, m.num_items, m.items_per_record) == ("images-u8+labels", (8, 8), 1797, 10)
    rec = np.frombuffer(read_checked_record(tmp_path / "digits", m, 3), dtype=np.uint8).reshape(10, 66)
    assert np.array_equal(rec[:, :64].astype(np.float32) / 16, ds.inputs[30:40])
    assert np.array_equal(rec[:, 64:].copy().view("<u2").ravel(), ds.targets[30:40])


def test_npy_rows_and_bad_inputs(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.float32).reshape(6, 4)
    b = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    m = pack([tmp_path / "a.npy", tmp_path / "b.npy"], "npy", tmp_path / "ds", record_bytes=32)
    assert (m.item_dtype, m.item_shape, m.num_items, m.items_per_record) == ("f32", (4,), 8, 2)
    assert read_checked_record(tmp_path / "ds", m, 3) == b.astype("<f4").tobytes()
    np.save(tmp_path / "c.npy", np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(InvalidInput, match="differ from the first file"):
        pack([tmp_path / "a.npy", tmp_path / "c.npy"], "npy", tmp_path / "ds2")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 5)
    with pytest.raises(InvalidInput, match="whole number of 4-byte tokens"):
        pack([odd], "tokens-u32", tmp_path / "ds3")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="not a regular file"):
        pack([fifo], "tokens-u8", tmp_path / "ds4")  # must not block reading a FIFO
    with pytest.raises(InvalidInput, match="already holds a packed dataset"):
        pack([tmp_path / "a.npy"], "npy", tmp_path / "ds")


def _manifest_doc(m: Manifest) -> dict:  # type: ignore[type-arg]
    return msgpack.unpackb(encode_manifest(m), raw=False)  # type: ignore[no-any-return]


def _reencode(doc: dict) -> bytes:  # type: ignore[type-arg]
    from protocol.encoding import encode_canonical

    return encode_canonical(doc)


def test_manifest_decoding_refuses_malformed(tmp_path: Path, tokens: tuple[Path, np.ndarray]) -> None:
    f, _ = tokens
    m = pack([f], "tokens-u16", tmp_path / "ds", record_bytes=1000, records_per_shard=3)
    assert decode_manifest(encode_manifest(m)) == m
    cases = {
        "extra key": ({"extra": 1}, "exactly the keys"),
        "version": ({"version": 2}, "version"),
        "shard count": ({"shards": [b"\x00" * 32]}, "need 7 shard hashes"),
        "huge": ({"num_items": 10**30}, "64-bit|num_items"),
        "bool": ({"num_items": True}, "num_items"),
        "dtype": ({"item_dtype": "f32"}, "does not allow"),
        "format": ({"format": "exe"}, "unknown dataset format"),
        "shape": ({"item_shape": [3]}, "scalars"),
        "root": ({"records_root": b"\x00"}, "32 bytes"),
        "oversized record": ({"items_per_record": 1 << 20}, "record"),
    }
    for name, (change, match) in cases.items():
        doc = _manifest_doc(m) | change
        try:
            data = _reencode(doc)
        except DecodeError as exc:  # e.g. an integer msgpack cannot hold at all
            assert "64-bit" in str(exc), name
            continue
        with pytest.raises((DecodeError, InvalidInput), match=match):
            decode_manifest(data)
    with pytest.raises(DecodeError, match="not canonical|not valid"):
        decode_manifest(msgpack.packb({"version": 1, "format": "npy"}))  # keys out of order


def test_cli_exit_codes(tmp_path: Path, tokens: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    f, _ = tokens
    d = tmp_path / "ds"
    assert main(["dataset", "pack", str(f), "--format", "tokens-u16", "--out", str(d), "--record-bytes", "1000"]) == 0
    assert main(["dataset", "verify", str(d)]) == 0
    assert "OK" in capsys.readouterr().out
    shard = d / shard_name(0)
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["dataset", "verify", str(d)]) == 1
    assert "record 0" in capsys.readouterr().out
    assert main(["dataset", "pack", str(tmp_path / "missing"), "--format", "tokens-u8", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dataset", "show", str(tmp_path)]) == 2  # no manifest there
    assert not (tmp_path / MANIFEST_NAME).exists()
