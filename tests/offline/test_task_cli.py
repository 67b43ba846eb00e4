"""``pol task new/presets/show`` and ``pol inspect TASK``: preset task files that train, graphs
shown with their parameter counts (run as real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pol.cli import main
from pol.task_cli import describe_task_model, format_task_model
from protocol.task import compute_task_id, get_task_canonical, parse_task_toml


def pol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pol.cli", *args], capture_output=True, text=True, timeout=300)


def test_task_new_writes_a_valid_preset_task_and_inspect_counts_it(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "gpt.toml"
    r = pol("task", "new", "--preset", "gpt2", "--set", "d_model=32", "--set", "n_heads=2", "--set", "n_layers=1",
            "--set", "context=16", "--set", "tied=false", "--set", "task.batch_size=4", "--set", "optim.lr=0.01",
            "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    task = parse_task_toml(out.read_text())
    assert json.loads(r.stdout)["task_id"] == compute_task_id(task).hex()
    assert task.batch_size == 4 and task.optim.lr == 0.01 and task.model_family == "graph"
    assert get_task_canonical(task)["model"]["nodes"][-2]["weight"] == ""  # untied head
    assert main(["inspect", str(out), "--json"]) == 0  # in-process: one interpreter start is enough
    doc = json.loads(capsys.readouterr().out)
    # V = 256 (the bound), d = 32, T = 16, one block with a 4d MLP, final LN, untied head
    d, v, t = 32, 256, 16
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert doc["parameters"] == v * d + t * d + block + 2 * d + v * d
    assert doc["nodes"][0] == {"name": "tok_emb", "op": "embedding", "in": ["input"], "shape": [16, 32],
                               "attrs": {"bound": 0.1, "dim": 32, "vocab": "classes"}, "params": {"tok_emb": [256, 32]}}


def test_task_show_counts_gpt2_small_and_a_too_large_preset_says_why_it_is_not_a_valid_task() -> None:
    r = pol("task", "show", "--preset", "gpt2-small")
    assert r.returncode == 0, r.stderr
    assert "124,439,808 parameters" in r.stdout and "not a valid task" not in r.stdout
    r = pol("task", "show", "--preset", "gpt2-small", "--set", "n_layers=24", "--set", "d_model=1024",
            "--set", "n_heads=16")
    assert r.returncode == 0, r.stderr
    assert "not a valid task: task's state of" in r.stdout and "exceeds the protocol limit" in r.stdout


def test_a_builtin_family_is_described_as_its_graph() -> None:
    task = parse_task_toml((Path(__file__).parents[2] / "examples" / "digits-cnn.toml").read_text())
    doc = describe_task_model(task)
    assert doc["parameters"] == 67_498 and doc["family"] == "cnn"
    assert [n["op"] for n in doc["nodes"]][:3] == ["reshape", "conv2d", "relu"]
    assert "conv0.weight[8, 1, 3, 3]" in format_task_model(task, doc)
