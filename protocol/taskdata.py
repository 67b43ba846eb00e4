"""Tasks that train on a packed dataset (SPEC.md §12.3): the task's ``[data]`` keys and the data order.

A task names a packed dataset by its hash and restates the fields that hash commits to (format,
item shape, item and record counts, records root), so the task alone says which records every step
reads: a verifier fetches exactly those records, each with its audit path under ``records_root``,
and never needs the manifest or the rest of the data. Everything here is a pure function of the
task, the run seed and the step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .datapack import FORMATS, MAX_ITEM_DIMS, MAX_ITEMS, MAX_RECORD_BYTES, compute_identity_hash, compute_item_bytes
from .errors import InvalidTask
from .rng import STREAM_DATA, compute_permutation, compute_random_u32

PACKED_ADAPTER = "packed"
TOKEN_FORMATS = ("tokens-u8", "tokens-u16", "tokens-u32")
IMAGE_FORMAT = "images-u8+labels"
MAX_VOCAB = 1 << 20  # token classes; an embedding of more rows would not fit a state anyway
MAX_IMAGE_ITEMS = 1 << 22  # an epoch permutation is computed item by item (§9)
_KEYS_REQUIRED = ("sha256", "format", "num_items", "items_per_record", "records_root", "classes")
_KEYS = {"adapter", "item_shape", "pixel_scale", *_KEYS_REQUIRED}


@dataclass(frozen=True)
class PackedData:
    format: str
    item_shape: tuple[int, ...]
    num_items: int
    items_per_record: int
    records_root: bytes
    classes: int  # tokens: the vocabulary size V; images: the number of label classes
    pixel_scale: int = 255  # images: input = f32(pixel) / f32(pixel_scale)

    @property
    def item_dtype(self) -> str:
        return FORMATS[self.format][0]

    @property
    def item_bytes(self) -> int:
        return compute_item_bytes(self.format, self.item_dtype, self.item_shape)

    @property
    def num_records(self) -> int:
        return math.ceil(self.num_items / self.items_per_record)

    @property
    def is_tokens(self) -> bool:
        return self.format in TOKEN_FORMATS

    def get_identity(self) -> dict[str, Any]:
        """The map the dataset hash commits to (§12.2)."""
        return {"version": 1, "format": self.format, "item_dtype": self.item_dtype,
                "item_shape": list(self.item_shape), "num_items": self.num_items,
                "items_per_record": self.items_per_record, "records_root": self.records_root}


def _int(d: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = d.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidTask(f"[data] {key} must be an integer, got {value!r}")
    return value


def parse_packed_data(d: Mapping[str, Any]) -> PackedData:
    """The packed-dataset keys of a ``[data]`` table (``adapter = "packed"``)."""
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise InvalidTask(f"[data] has unknown key(s) {unknown}; a packed dataset takes {sorted(_KEYS)}")
    missing = [k for k in _KEYS_REQUIRED if k not in d]
    if missing:
        raise InvalidTask(f"[data] of a packed dataset is missing {missing}")
    fmt, root, shape = d["format"], d["records_root"], d.get("item_shape", [])
    if not isinstance(fmt, str):
        raise InvalidTask("[data] format must be a string")
    if not isinstance(root, str) or not re.fullmatch(r"[0-9a-f]{64}", root):
        raise InvalidTask("[data] records_root must be 64 lowercase hex digits")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        raise InvalidTask(f"[data] item_shape must be a list of integers, got {shape!r}")
    return PackedData(format=fmt, item_shape=tuple(shape), num_items=_int(d, "num_items"),
                      items_per_record=_int(d, "items_per_record"), records_root=bytes.fromhex(root),
                      classes=_int(d, "classes"), pixel_scale=_int(d, "pixel_scale", 255))


def get_packed_canonical(p: PackedData) -> dict[str, Any]:
    """The packed keys of the normalized ``data`` table (adapter and sha256 come from the caller)."""
    return {"format": p.format, "item_shape": list(p.item_shape), "num_items": p.num_items,
            "items_per_record": p.items_per_record, "records_root": p.records_root.hex(), "classes": p.classes,
            "pixel_scale": p.pixel_scale}


def get_data_kind(adapter: str, packed: PackedData | None) -> str | None:
    """``text`` or ``image`` for a packed dataset; None for a built-in adapter (its table says)."""
    if packed is None:
        return "text" if adapter == PACKED_ADAPTER else None  # validate_packed_data names the problem
    return "text" if packed.is_tokens else "image"


def get_packed_shape(p: PackedData) -> tuple[int, int]:
    """(input features, classes) a model sees: tokens (0, V), images (prod(item_shape), classes)."""
    return (0 if p.is_tokens else math.prod(p.item_shape)), p.classes


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidTask(msg)


def validate_packed_data(sha256: bytes, p: PackedData | None, family: str, model: Any, batch_size: int) -> None:
    """Every rule of §12.3 that needs no data: the fields agree with the hash and suit the model."""
    _check(p is not None, f"adapter {PACKED_ADAPTER!r} needs the packed dataset's keys in [data]")
    assert p is not None
    _check(p.format in TOKEN_FORMATS or p.format == IMAGE_FORMAT,
           f"a task trains on {list(TOKEN_FORMATS)} or {IMAGE_FORMAT!r} datasets, not {p.format!r}")
    _check(1 <= p.num_items <= MAX_ITEMS, f"num_items must be in [1, {MAX_ITEMS}]")
    _check(len(p.item_shape) <= MAX_ITEM_DIMS and all(1 <= v <= 1 << 20 for v in p.item_shape),
           "item_shape has too many extents or an extent outside [1, 2^20]")
    _check(len(p.records_root) == 32, "records_root must be 32 bytes")
    _check(p.items_per_record >= 1 and p.items_per_record * p.item_bytes <= MAX_RECORD_BYTES,
           f"a record of {p.items_per_record} items must hold 1 item .. {MAX_RECORD_BYTES} bytes")
    if p.is_tokens:
        _check(p.item_shape == (), "token items are scalars: item_shape must be []")
        limit = min(MAX_VOCAB, 1 << (8 * p.item_bytes))
        _check(2 <= p.classes <= limit, f"classes (the vocabulary size) must be in [2, {limit}] for {p.format}")
        _check(family in ("transformer", "graph"), f"a token dataset trains a transformer or a graph, not {family}")
        context = int(getattr(model, "context", 0))
        _check(p.num_items >= context + 1, f"{p.num_items} tokens cannot fill one window of context + 1 = "
                                           f"{context + 1} tokens")
    else:
        _check(len(p.item_shape) in (2, 3), "image items have shape [H, W] or [H, W, C]")
        _check(2 <= p.classes <= 1 << 16, "classes (label classes) must be in [2, 65536]")
        _check(1 <= p.pixel_scale <= 65535, "pixel_scale must be in [1, 65535]")
        _check(p.num_items <= MAX_IMAGE_ITEMS, f"an image dataset in a task holds at most {MAX_IMAGE_ITEMS} items")
        _check(family in ("mlp", "cnn", "graph"), f"an image dataset trains the mlp or cnn family or a graph, "
                                                  f"not {family}")
        if family == "cnn":  # the family's graph reshapes its input to one 8x8 channel (§11)
            _check(p.item_shape == (8, 8), "the cnn family takes [8, 8] images (a graph takes any shape)")
    del batch_size  # every batch size is valid: batches wrap around epochs
    want = compute_identity_hash(p.get_identity())
    _check(want == sha256, f"data.sha256 {sha256.hex()} is not the hash of the packed dataset the [data] "
                           f"table describes ({want.hex()})")


def compute_window_starts(p: PackedData, seed: int, step: int, batch_size: int, context: int) -> np.ndarray:
    """Token datasets: the first item of each row's window of context + 1 tokens (§12.3)."""
    w = compute_random_u32(seed, STREAM_DATA, step, 1, 2 * batch_size).astype(np.uint64)
    wide = w[0::2] | (w[1::2] << np.uint64(32))
    return (wide % np.uint64(p.num_items - context)).astype(np.int64)


def compute_image_items(p: PackedData, seed: int, step: int, batch_size: int,
                        permutation: Any = compute_permutation) -> np.ndarray:
    """Image datasets: the item of each row of step ``step`` (epochs of §9 permutations)."""
    n = p.num_items
    positions = np.arange(step * batch_size, step * batch_size + batch_size, dtype=np.int64)
    items = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(positions // n):
        sel = positions // n == epoch
        items[sel] = permutation(seed, int(epoch), n)[positions[sel] % n]
    return items


def compute_step_records(p: PackedData, seed: int, step: int, batch_size: int, context: int,
                         permutation: Any = compute_permutation) -> list[int]:
    """The records step ``step`` reads, ascending: the records of every item of its batch."""
    ipr = p.items_per_record
    if p.is_tokens:
        starts = compute_window_starts(p, seed, step, batch_size, context)
        out: set[int] = set()
        for s in starts.tolist():
            out.update(range(s // ipr, (s + context) // ipr + 1))
        return sorted(out)
    items = compute_image_items(p, seed, step, batch_size, permutation)
    return sorted(set((items // ipr).tolist()))
