"""Built-in example tasks, shipped inside the package so `pol prove digits-mlp` just works."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

BUILTIN_TASKS = ("digits-mlp", "digits-cnn", "pydoc-transformer", "digits-packed-mlp", "stdlib-transformer",
                 "stdlib-gpt10m")


def resolve_task_path(name_or_path: str) -> Path:
    """A path as given if it exists, else the packaged built-in task of that name."""
    p = Path(name_or_path)
    if p.exists() or name_or_path not in BUILTIN_TASKS:
        return p
    return Path(str(importlib.resources.files("prover").joinpath(f"builtin_tasks/{name_or_path}.toml")))
