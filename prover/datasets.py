"""Built-in dataset adapters (SPEC.md §12).

Each adapter reads data that ships with an installed package, turns it into canonical
bytes, and is pinned by ``SHA-256(DOMAIN_DATASET || adapter name || 0x00 || bytes)``. A task
names the adapter and the hash; a mismatch is refused before any training or replay.
Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from protocol.constants import DOMAIN_DATASET
from protocol.errors import InvalidTask, ReplayError
from protocol.rng import STREAM_DATA, compute_permutation, compute_random_u32
from protocol.task import DataSpec, Task, get_model_context


@dataclass(frozen=True)
class Dataset:
    adapter: str
    sha256: bytes
    inputs: np.ndarray  # image: float32 [N, F]; text: uint8 token ids [N]
    targets: np.ndarray  # image: int64 [N]; text: unused (empty)
    n_classes: int
    in_features: int

    def get_batch(self, task: Task, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of training step ``step`` (a pure function of task and step)."""
        b = task.batch_size
        ctx = get_model_context(task)
        if ctx:
            limit = len(self.inputs) - ctx - 1
            starts = compute_random_u32(task.seed, STREAM_DATA, step, 1, b).astype(np.int64) % limit
            windows = np.stack([self.inputs[s:s + ctx + 1] for s in starts]).astype(np.int64)
            return torch.from_numpy(windows[:, :-1]), torch.from_numpy(windows[:, 1:])
        n = len(self.inputs)
        positions = np.arange(step * b, step * b + b, dtype=np.int64)
        idx = np.empty(b, dtype=np.int64)
        for epoch in np.unique(positions // n):
            sel = positions // n == epoch
            idx[sel] = _permutation(task.seed, int(epoch), n)[positions[sel] % n]
        return torch.from_numpy(self.inputs[idx]), torch.from_numpy(self.targets[idx])


@lru_cache(maxsize=8)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return compute_permutation(seed, epoch, n)


def compute_dataset_hash(adapter: str, canonical: bytes) -> bytes:
    return hashlib.sha256(DOMAIN_DATASET + adapter.encode() + b"\x00" + canonical).digest()


def _digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images). Canonical bytes: pixels (uint8 0..16, row-major
    [1797, 64]) followed by labels (uint8 [1797]). Inputs are pixels / 16 (exact)."""
    ref = importlib.resources.files("sklearn.datasets").joinpath("data/digits.csv.gz")
    try:
        raw = gzip.decompress(ref.read_bytes())
    except (FileNotFoundError, OSError) as exc:
        raise ReplayError(f"scikit-learn's digits data is not installed: {exc}") from None
    table = np.loadtxt(raw.decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
    pixels = table[:, :-1].astype(np.uint8)
    labels = table[:, -1].astype(np.uint8)
    digest = compute_dataset_hash("sklearn-digits", pixels.tobytes() + labels.tobytes())
    return Dataset("sklearn-digits", digest, (pixels.astype(np.float32) / np.float32(16.0)),
                   labels.astype(np.int64), n_classes=10, in_features=64)


def _pydoc_topics() -> Dataset:
    """The standard library's pydoc topic help, joined in sorted-key order with newlines, UTF-8.

    Tokens are bytes mapped to their rank among the distinct byte values present."""
    import pydoc_data.topics as topics

    text = "\n".join(topics.topics[key] for key in sorted(topics.topics)).encode("utf-8")
    data = np.frombuffer(text, dtype=np.uint8)
    vocab = np.unique(data)
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[vocab] = np.arange(len(vocab), dtype=np.uint8)
    digest = compute_dataset_hash("pydoc-topics", text)
    return Dataset("pydoc-topics", digest, lookup[data], np.zeros(0, dtype=np.int64),
                   n_classes=len(vocab), in_features=0)


_ADAPTERS = {"sklearn-digits": _digits, "pydoc-topics": _pydoc_topics}


@lru_cache(maxsize=4)
def _load(adapter: str) -> Dataset:
    return _ADAPTERS[adapter]()


def load_dataset(spec: DataSpec) -> Dataset:
    """Load the adapter's data and check it against the task's pinned hash."""
    if spec.adapter not in _ADAPTERS:
        raise InvalidTask(f"unknown dataset adapter {spec.adapter!r}; built-in: {sorted(_ADAPTERS)}")
    ds = _load(spec.adapter)
    if ds.sha256 != spec.sha256:
        raise InvalidTask(
            f"dataset hash mismatch for {spec.adapter}: the task pins {spec.sha256.hex()}, the data "
            f"installed here hashes to {ds.sha256.hex()}"
        )
    return ds


def get_local_dataset_hash(adapter: str) -> bytes:
    """Hash of the locally installed data for ``adapter`` (for writing new task files)."""
    if adapter not in _ADAPTERS:
        raise InvalidTask(f"unknown dataset adapter {adapter!r}")
    return _load(adapter).sha256
