from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pol.keyfile import generate_keyfile
from prover.prove import prove
from protocol.task import Task, parse_task_toml

DIGITS_SHA = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"


def tiny_task_toml(seed: int = 5, lr: float = 0.1, sha: str = DIGITS_SHA, steps: int = 40) -> str:
    return f"""
[task]
name = "tiny-digits"
seed = {seed}
total_steps = {steps}
checkpoint_interval = 10
batch_size = 32

[model]
family = "mlp"
hidden = [32]

[data]
adapter = "sklearn-digits"
sha256 = "{sha}"

[optim]
name = "sgd"
lr = {lr!r}
momentum = 0.9
"""


@pytest.fixture(scope="session")
def tiny_task() -> Task:
    return parse_task_toml(tiny_task_toml())


@pytest.fixture(scope="session")
def prover_key() -> bytes:
    return generate_keyfile().bls_secret_key


@pytest.fixture(scope="session")
def _proved_once(tmp_path_factory: pytest.TempPathFactory, tiny_task: Task, prover_key: bytes) -> Path:
    out = tmp_path_factory.mktemp("proof") / "honest"
    prove(tiny_task, out, prover_key)
    return out


@pytest.fixture()
def proof_dir(_proved_once: Path, tmp_path: Path) -> Path:
    """A fresh copy of an honest proof directory that a test may tamper with."""
    dst = tmp_path / "proof"
    shutil.copytree(_proved_once, dst)
    return dst
