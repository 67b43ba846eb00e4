"""Pack files into a content-addressed dataset and check packed data (SPEC.md §12.2).

On disk a packed dataset is a directory::

    MANIFEST.msgpack     canonical manifest (protocol.datapack)
    shard-00000.bin ...  records back to back, ``records_per_shard`` records per shard
    leaves.bin           the 32-byte leaf hash of every record, in order (an index: it is
                         checked against the manifest's root before it is trusted)

Packing streams its input: memory holds one shard at a time, whatever the dataset's size.
"""

from __future__ import annotations

import hashlib
import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from protocol.datapack import (
    DTYPE_BYTES,
    FORMATS,
    MAX_MANIFEST_BYTES,
    MAX_RECORD_BYTES,
    Manifest,
    compute_item_bytes,
    compute_packed_dataset_hash,
    decode_manifest,
    encode_manifest,
    get_record_length,
    get_shard_records,
    validate_manifest,
    validate_record,
)
from protocol.errors import InvalidInput, ReplayError
from prover.checkpoint import write_atomic
from protocol.merkle import (
    MerkleProof,
    compute_leaf_hash,
    compute_proof_from_leaf_hashes,
    compute_root_from_leaf_hashes,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.msgpack"
LEAVES_NAME = "leaves.bin"
DEFAULT_RECORD_BYTES = 64 * 1024
DEFAULT_RECORDS_PER_SHARD = 256
DIGITS_RECORD_BYTES = 64 * (64 + 2)  # 64 digits per record: the packing the built-in digits tasks pin
_NUMPY_DTYPES = {"u8": "<u1", "i8": "<i1", "u16": "<u2", "i16": "<i2", "u32": "<u4", "i32": "<i4", "i64": "<i8",
                 "f32": "<f4", "f64": "<f8"}
_COPY_BLOCK = 1 << 20


class InvalidDataset(InvalidInput):
    """Packed data that does not match its manifest; the message names the record."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def _check_regular(path: Path, limit: int | None = None) -> int:
    """Size of ``path`` if it is a regular file (not a FIFO or device) within ``limit``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidInput(f"{path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{path} is not a regular file")
    if limit is not None and st.st_size > limit:
        raise InvalidInput(f"{path} is {st.st_size} bytes, more than the limit of {limit}")
    return st.st_size


def _dtype_name(dt: np.dtype) -> str:
    for name, code in _NUMPY_DTYPES.items():
        if np.dtype(code) == dt.newbyteorder("<"):
            return name
    raise InvalidInput(f"array dtype {dt} is not one of {sorted(_NUMPY_DTYPES)}")


def _load_npy(path: Path) -> np.ndarray:
    _check_regular(path)
    try:
        arr: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        return arr
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"{path} is not a readable .npy file: {exc}") from None


@dataclass
class _Source:
    """What a format's inputs yield: item metadata and the items' bytes in order."""

    dtype: str
    shape: tuple[int, ...]
    num_items: int
    chunks: Iterable[bytes]


def _tokens(files: list[Path], dtype: str) -> _Source:
    width = DTYPE_BYTES[dtype]
    sizes = []
    for f in files:
        size = _check_regular(f)
        if size % width:
            raise InvalidInput(f"{f} holds {size} bytes, not a whole number of {width}-byte tokens")
        sizes.append(size)

    def chunks() -> Iterator[bytes]:
        for f in files:
            with open(f, "rb") as fh:
                while block := fh.read(_COPY_BLOCK):
                    yield block

    return _Source(dtype, (), sum(sizes) // width, chunks())


def _rows(arrays: list[np.ndarray], dtype: str, batch: int = 4096) -> Iterator[bytes]:
    code = _NUMPY_DTYPES[dtype]
    for arr in arrays:
        for start in range(0, len(arr), batch):
            yield np.ascontiguousarray(arr[start:start + batch], dtype=code).tobytes()


def _images(files: list[Path]) -> _Source:
    if len(files) != 2:
        raise InvalidInput("images-u8+labels takes two .npy files: images u8 [N, H, W(, C)] and labels [N]")
    images, labels = _load_npy(files[0]), _load_npy(files[1])
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise InvalidInput(f"{files[0]}: images must be uint8 [N, H, W] or [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise InvalidInput(f"{files[1]}: labels must be integers [{images.shape[0]}], got {labels.dtype} {labels.shape}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 0xFFFF):
        raise InvalidInput(f"{files[1]}: labels must lie in [0, 65535]")

    def chunks(batch: int = 4096) -> Iterator[bytes]:
        for start in range(0, len(images), batch):
            pix = np.ascontiguousarray(images[start:start + batch]).reshape(-1, int(np.prod(images.shape[1:])))
            lab = np.ascontiguousarray(labels[start:start + batch], dtype="<u2").view(np.uint8).reshape(-1, 2)
            yield np.concatenate([pix, lab], axis=1).tobytes()

    return _Source("u8", tuple(int(d) for d in images.shape[1:]), int(images.shape[0]), chunks())


def _npy(files: list[Path]) -> _Source:
    arrays = [_load_npy(f) for f in files]
    if any(a.ndim < 1 for a in arrays):
        raise InvalidInput("npy inputs must have at least one dimension (rows)")
    dtype = _dtype_name(arrays[0].dtype)
    shape = tuple(int(d) for d in arrays[0].shape[1:])
    for f, a in zip(files, arrays):
        if _dtype_name(a.dtype) != dtype or tuple(a.shape[1:]) != shape:
            raise InvalidInput(f"{f}: rows of {a.dtype} {list(a.shape[1:])} differ from the first file's "
                               f"{dtype} {list(shape)}")
    return _Source(dtype, shape, sum(len(a) for a in arrays), _rows(arrays, dtype))


def _source(fmt: str, files: list[Path]) -> _Source:
    if not files:
        raise InvalidInput("no input files")
    if fmt.startswith("tokens-"):
        return _tokens(files, FORMATS[fmt][0])
    if fmt == "images-u8+labels":
        return _images(files)
    if fmt == "npy":
        return _npy(files)
    raise InvalidInput(f"unknown dataset format {fmt!r}; known: {sorted(FORMATS)}")


def pack(files: list[Path], fmt: str, out: Path, record_bytes: int = DEFAULT_RECORD_BYTES,
         records_per_shard: int = DEFAULT_RECORDS_PER_SHARD) -> Manifest:
    """Pack ``files`` as ``fmt`` into directory ``out``; returns the manifest written there.

    Records hold as many whole items as fit in ``record_bytes`` (at least one). The manifest is
    written last, so a directory without one is an unfinished pack."""
    src = _source(fmt, files)
    if src.num_items < 1:
        raise InvalidInput("the input holds no items")
    item_bytes = compute_item_bytes(fmt, src.dtype, src.shape)
    if item_bytes > MAX_RECORD_BYTES:
        raise InvalidInput(f"one item is {item_bytes} bytes, more than a record may hold ({MAX_RECORD_BYTES})")
    per_record = max(1, min(record_bytes, MAX_RECORD_BYTES) // item_bytes)
    full = per_record * item_bytes
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST_NAME).exists():
        raise InvalidInput(f"{out} already holds a packed dataset; choose an empty directory")
    leaves: list[bytes] = []
    shard_hashes: list[bytes] = []
    shard_buf = bytearray()
    pending = bytearray()

    def flush_shard() -> None:
        write_atomic(out / shard_name(len(shard_hashes)), bytes(shard_buf))
        shard_hashes.append(hashlib.sha256(shard_buf).digest())
        shard_buf.clear()

    def add_record(record: bytes) -> None:
        leaves.append(compute_leaf_hash(record))
        shard_buf.extend(record)
        if len(leaves) % records_per_shard == 0:
            flush_shard()

    for chunk in src.chunks:
        pending.extend(chunk)
        while len(pending) >= full:
            add_record(bytes(pending[:full]))
            del pending[:full]
    if pending:
        add_record(bytes(pending))
    if shard_buf:
        flush_shard()
    manifest = Manifest(format=fmt, item_dtype=src.dtype, item_shape=src.shape, num_items=src.num_items,
                        items_per_record=per_record, records_root=compute_root_from_leaf_hashes(leaves),
                        records_per_shard=records_per_shard, shards=tuple(shard_hashes))
    validate_manifest(manifest)
    write_atomic(out / LEAVES_NAME, b"".join(leaves))
    write_atomic(out / MANIFEST_NAME, encode_manifest(manifest))
    log.info("packed %d items into %d records / %d shards; dataset hash %s", manifest.num_items,
             manifest.num_records, len(shard_hashes), compute_packed_dataset_hash(manifest).hex())
    return manifest


def load_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    _check_regular(path, MAX_MANIFEST_BYTES)
    return decode_manifest(path.read_bytes())


def _trusted_leaves(directory: Path, manifest: Manifest) -> list[bytes] | None:
    """The leaf index, if it is present and matches the manifest's root (else None)."""
    path = directory / LEAVES_NAME
    try:
        size = _check_regular(path, 32 * manifest.num_records)
    except InvalidInput:
        return None
    if size != 32 * manifest.num_records:
        return None
    raw = path.read_bytes()
    leaves = [raw[i:i + 32] for i in range(0, len(raw), 32)]
    return leaves if compute_root_from_leaf_hashes(leaves) == manifest.records_root else None


def read_record(directory: Path, manifest: Manifest, index: int) -> bytes:
    """Record ``index`` as stored (not yet checked against the root)."""
    length = get_record_length(manifest, index)
    shard, within = divmod(index, manifest.records_per_shard)
    path = directory / shard_name(shard)
    _check_regular(path)
    with open(path, "rb") as fh:
        fh.seek(within * manifest.record_bytes)
        data = fh.read(length)
    if len(data) != length:
        raise InvalidDataset(f"record {index} is truncated in {path.name} ({len(data)} of {length} bytes)")
    return data


def get_record_proof(directory: Path, manifest: Manifest, index: int) -> MerkleProof:
    """Audit path of record ``index`` (from the leaf index; rebuilt from the shards if it is bad)."""
    leaves = _trusted_leaves(directory, manifest)
    if leaves is None:
        log.warning("%s is missing or does not match the manifest; rehashing every record", LEAVES_NAME)
        leaves = [compute_leaf_hash(read_record(directory, manifest, i)) for i in range(manifest.num_records)]
        if compute_root_from_leaf_hashes(leaves) != manifest.records_root:
            raise ReplayError(f"the packed data in {directory} does not match its manifest; run `pol dataset verify`")
    return compute_proof_from_leaf_hashes(leaves, index)


def read_checked_record(directory: Path, manifest: Manifest, index: int) -> bytes:
    """Record ``index``, checked against the manifest's root with its audit path."""
    record = read_record(directory, manifest, index)
    validate_record(manifest, index, record, get_record_proof(directory, manifest, index))
    return record


def verify_dataset(directory: Path) -> Manifest:
    """Check every shard and record against the manifest, streaming one shard at a time.

    Raises ``InvalidDataset`` naming the first record (and its shard and offset) whose bytes do
    not hash to the manifest."""
    manifest = load_manifest(directory)
    index = _trusted_leaves(directory, manifest)
    leaves: list[bytes] = []
    for shard in range(len(manifest.shards)):
        records = get_shard_records(manifest, shard)
        path = directory / shard_name(shard)
        want = sum(get_record_length(manifest, r) for r in records)
        size = _check_regular(path)
        if size != want:
            raise InvalidDataset(f"{path.name} is {size} bytes; its records {records.start}..{records.stop - 1} "
                                 f"need {want}")
        data = path.read_bytes()
        offset = 0
        for r in records:
            length = get_record_length(manifest, r)
            leaf = compute_leaf_hash(data[offset:offset + length])
            if index is not None and leaf != index[r]:
                raise InvalidDataset(f"record {r} ({path.name}, bytes {offset}..{offset + length - 1}) does not "
                                     f"hash to the manifest")
            leaves.append(leaf)
            offset += length
        if hashlib.sha256(data).digest() != manifest.shards[shard]:
            raise InvalidDataset(f"{path.name} does not match its hash in the manifest")
    if compute_root_from_leaf_hashes(leaves) != manifest.records_root:
        # Without a trusted leaf index the bad record can only be narrowed to its shard.
        raise InvalidDataset("the records do not hash to the manifest's records_root")
    return manifest


def get_stdlib_source_files() -> list[Path]:
    """The standard library's own ``.py`` files, in sorted order of their relative paths.

    Their bytes (and so the dataset hash) depend on the Python release."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    files = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts) and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def pack_digits(out: Path, record_bytes: int = DIGITS_RECORD_BYTES) -> Manifest:
    """scikit-learn's digits as images-u8+labels (8x8 pixels 0..16, labels 0..9)."""
    import tempfile

    from prover.datasets import _load

    ds = _load("sklearn-digits")
    pixels = np.rint(ds.inputs * 16).astype(np.uint8).reshape(-1, 8, 8)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", pixels)
        np.save(Path(tmp) / "labels.npy", ds.targets.astype(np.uint16))
        return pack([Path(tmp) / "images.npy", Path(tmp) / "labels.npy"], "images-u8+labels", out, record_bytes)
