"""Packed datasets: fixed-size records in shards, pinned by a Merkle root (SPEC.md §12.2).

A packed dataset is any sequence of *items* (tokens, images with labels, rows of an array)
grouped into *records* of ``items_per_record`` items; the last record may hold fewer. Each
record's bytes are one leaf of a §4 Merkle tree, so a verifier can check any single record
against the dataset hash with an audit path, without the rest of the data. Records are stored
in shard files of ``records_per_shard`` records; the shard layout is storage only and is not
part of the dataset hash.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from .constants import DOMAIN_DATASET, HASH_LEN
from .encoding import decode_canonical, encode_canonical
from .errors import DecodeError, InvalidInput
from .merkle import MerkleProof, validate_merkle_proof

DATAPACK_VERSION = 1
# (format) -> the item dtypes it allows; images carry a u16 label after their pixels.
FORMATS: dict[str, tuple[str, ...]] = {
    "tokens-u8": ("u8",),
    "tokens-u16": ("u16",),
    "tokens-u32": ("u32",),
    "images-u8+labels": ("u8",),
    "npy": ("u8", "i8", "u16", "i16", "u32", "i32", "i64", "f32", "f64"),
}
DTYPE_BYTES = {"u8": 1, "i8": 1, "u16": 2, "i16": 2, "u32": 4, "i32": 4, "i64": 8, "f32": 4, "f64": 8}
LABEL_BYTES = 2  # images-u8+labels: the label follows the pixels as u16, little-endian
MAX_ITEMS = 1 << 40
MAX_RECORD_BYTES = 1 << 20  # one record travels in one chunk response
MAX_ITEM_DIMS = 4
MAX_SHARDS = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20  # 32 B per shard hash, plus the fields


@dataclass(frozen=True)
class Manifest:
    format: str
    item_dtype: str
    item_shape: tuple[int, ...]
    num_items: int
    items_per_record: int
    records_root: bytes
    records_per_shard: int
    shards: tuple[bytes, ...]  # SHA-256 of each shard file, in order

    @property
    def item_bytes(self) -> int:
        return compute_item_bytes(self.format, self.item_dtype, self.item_shape)

    @property
    def record_bytes(self) -> int:
        """Bytes of a full record (every record but possibly the last)."""
        return self.item_bytes * self.items_per_record

    @property
    def num_records(self) -> int:
        return math.ceil(self.num_items / self.items_per_record)


def compute_item_bytes(fmt: str, dtype: str, shape: tuple[int, ...]) -> int:
    size = DTYPE_BYTES[dtype] * math.prod(shape)
    return size + (LABEL_BYTES if fmt == "images-u8+labels" else 0)


def get_record_length(manifest: Manifest, index: int) -> int:
    """Exact byte length of record ``index`` (the last record may be short)."""
    if not 0 <= index < manifest.num_records:
        raise InvalidInput(f"record {index} outside a dataset of {manifest.num_records} records")
    items = min(manifest.items_per_record, manifest.num_items - index * manifest.items_per_record)
    return items * manifest.item_bytes


def get_record_items(manifest: Manifest, index: int) -> range:
    """The item indices record ``index`` holds."""
    get_record_length(manifest, index)
    start = index * manifest.items_per_record
    return range(start, min(start + manifest.items_per_record, manifest.num_items))


def get_shard_records(manifest: Manifest, shard: int) -> range:
    """The record indices shard ``shard`` holds."""
    if not 0 <= shard < len(manifest.shards):
        raise InvalidInput(f"shard {shard} outside a dataset of {len(manifest.shards)} shards")
    start = shard * manifest.records_per_shard
    return range(start, min(start + manifest.records_per_shard, manifest.num_records))


def compute_identity(manifest: Manifest) -> dict[str, Any]:
    """The fields the dataset hash commits to (everything but the storage layout)."""
    return {
        "version": DATAPACK_VERSION,
        "format": manifest.format,
        "item_dtype": manifest.item_dtype,
        "item_shape": list(manifest.item_shape),
        "num_items": manifest.num_items,
        "items_per_record": manifest.items_per_record,
        "records_root": manifest.records_root,
    }


def compute_packed_dataset_hash(manifest: Manifest) -> bytes:
    """``H(DOMAIN_DATASET || "packed" || 0x00 || canonical identity)``: what a task pins."""
    return compute_identity_hash(compute_identity(manifest))


def compute_identity_hash(identity: dict[str, Any]) -> bytes:
    """The dataset hash of an identity map (``compute_identity``; a task restates one, §12.3)."""
    return hashlib.sha256(DOMAIN_DATASET + b"packed\x00" + encode_canonical(identity)).digest()


def encode_manifest(manifest: Manifest) -> bytes:
    doc = compute_identity(manifest)
    doc["records_per_shard"] = manifest.records_per_shard
    doc["shards"] = list(manifest.shards)
    return encode_canonical(doc)


def _uint(doc: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise DecodeError(f"manifest field {key!r} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def validate_manifest(manifest: Manifest) -> None:
    """Raise ``InvalidInput`` with the rule a manifest breaks."""
    if manifest.format not in FORMATS:
        raise InvalidInput(f"unknown dataset format {manifest.format!r}; known: {sorted(FORMATS)}")
    if manifest.item_dtype not in FORMATS[manifest.format]:
        raise InvalidInput(f"format {manifest.format} does not allow item dtype {manifest.item_dtype!r}")
    if manifest.format.startswith("tokens-") and manifest.item_shape:
        raise InvalidInput("token items are scalars: item_shape must be empty")
    if manifest.format == "images-u8+labels" and len(manifest.item_shape) not in (2, 3):
        raise InvalidInput("image items have shape [H, W] or [H, W, C]")
    if len(manifest.item_shape) > MAX_ITEM_DIMS or any(d < 1 or d > 1 << 20 for d in manifest.item_shape):
        raise InvalidInput(f"item shape {list(manifest.item_shape)} has too many dimensions or an extent out of range")
    if not 1 <= manifest.num_items <= MAX_ITEMS:
        raise InvalidInput(f"num_items {manifest.num_items} outside [1, {MAX_ITEMS}]")
    if not 1 <= manifest.items_per_record or manifest.record_bytes > MAX_RECORD_BYTES:
        raise InvalidInput(f"a record of {manifest.items_per_record} items is outside 1 item .. {MAX_RECORD_BYTES} bytes")
    if len(manifest.records_root) != HASH_LEN:
        raise InvalidInput("records_root is not 32 bytes")
    if manifest.records_per_shard < 1:
        raise InvalidInput("records_per_shard must be positive")
    want = math.ceil(manifest.num_records / manifest.records_per_shard)
    if len(manifest.shards) != want:
        raise InvalidInput(f"{manifest.num_records} records in shards of {manifest.records_per_shard} need {want} "
                           f"shard hashes, the manifest lists {len(manifest.shards)}")
    if any(len(h) != HASH_LEN for h in manifest.shards):
        raise InvalidInput("a shard hash is not 32 bytes")


def decode_manifest(data: bytes) -> Manifest:
    """Parse and validate canonical manifest bytes (raises ``DecodeError``/``InvalidInput``)."""
    doc = decode_canonical(data, MAX_MANIFEST_BYTES)
    keys = {"version", "format", "item_dtype", "item_shape", "num_items", "items_per_record", "records_root",
            "records_per_shard", "shards"}
    if not isinstance(doc, dict) or set(doc) != keys:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise DecodeError(f"a manifest is a map with exactly the keys {sorted(keys)}, got {got}")
    if doc["version"] != DATAPACK_VERSION:
        raise DecodeError(f"manifest version {doc['version']!r} is not {DATAPACK_VERSION}")
    shape, shards = doc["item_shape"], doc["shards"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise DecodeError("item_shape must be a list of integers")
    if not isinstance(shards, list) or not all(isinstance(h, bytes) for h in shards) or len(shards) > MAX_SHARDS:
        raise DecodeError(f"shards must be a list of at most {MAX_SHARDS} byte strings")
    if not isinstance(doc["format"], str) or not isinstance(doc["item_dtype"], str):
        raise DecodeError("format and item_dtype must be strings")
    if not isinstance(doc["records_root"], bytes):
        raise DecodeError("records_root must be bytes")
    manifest = Manifest(
        format=doc["format"], item_dtype=doc["item_dtype"], item_shape=tuple(shape),
        num_items=_uint(doc, "num_items", 1, MAX_ITEMS),
        items_per_record=_uint(doc, "items_per_record", 1, MAX_RECORD_BYTES),
        records_root=doc["records_root"],
        records_per_shard=_uint(doc, "records_per_shard", 1, MAX_ITEMS),
        shards=tuple(shards),
    )
    validate_manifest(manifest)
    return manifest


def validate_record(manifest: Manifest, index: int, record: bytes, proof: MerkleProof) -> None:
    """Raise ``InvalidInput`` unless ``record`` is record ``index`` of ``manifest``'s dataset."""
    want = get_record_length(manifest, index)
    if len(record) != want:
        raise InvalidInput(f"record {index} has {len(record)} bytes, the manifest says {want}")
    if proof.index != index or proof.size != manifest.num_records:
        raise InvalidInput(f"proof is for record {proof.index} of {proof.size}, "
                           f"expected record {index} of {manifest.num_records}")
    validate_merkle_proof(record, proof, manifest.records_root)
