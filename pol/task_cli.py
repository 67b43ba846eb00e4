"""``pol task``: write a task file from a model preset, list the presets, show a task's model graph.

``pol task new --preset gpt2 --set d_model=128 --set task.batch_size=4`` prints a complete,
validated task TOML (the dataset hash is the locally installed data's). ``pol task show FILE``
(also ``pol inspect FILE``) prints the model graph node by node with every output shape, the
parameters and the cost bound of SPEC.md §18.2.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from protocol.errors import InvalidTask

EXIT_OK = 0


def _value(text: str) -> Any:
    """A --set value as TOML (``3``, ``0.1``, ``true``, ``"x"``); a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidTask(f"--set takes key=value, got {item!r}")
        out[key.strip()] = _value(value.strip())
    return out


def cmd_new(args: argparse.Namespace) -> int:
    from prover.datasets import get_local_dataset_hash
    from protocol.presets import PRESETS, get_preset_task
    from protocol.task import compute_task_id, format_task_toml, parse_task

    if args.preset not in PRESETS:
        raise InvalidTask(f"unknown preset {args.preset!r}; presets: {sorted(PRESETS)}")
    sets = _parse_sets(args.set or [])
    adapter = sets.get("data.adapter", PRESETS[args.preset].adapter)
    sha = sets.pop("data.sha256", None) or get_local_dataset_hash(str(adapter)).hex()
    task = parse_task(get_preset_task(args.preset, sets, sha))  # every rule of SPEC.md §3, §11.1, §18.2
    text = format_task_toml(task)
    if args.out:
        out = Path(args.out)
        if out.exists():
            raise InvalidTask(f"{out} exists; refusing to overwrite it")
        out.write_text(text)
    if args.json:
        print(json.dumps({"task_id": compute_task_id(task).hex(), "out": args.out, "toml": text}, indent=2,
                         sort_keys=True))
    elif not args.out:
        print(text, end="")
    else:
        print(f"wrote {args.out} (task id {compute_task_id(task).hex()})")
    return EXIT_OK


def cmd_presets(args: argparse.Namespace) -> int:
    from protocol.presets import PRESETS

    doc = {name: {"about": p.about, "dataset": p.adapter, "parameters": dict(p.defaults)}
           for name, p in PRESETS.items()}
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        for name, p in PRESETS.items():
            params = " ".join(f"{k}={v}" for k, v in p.defaults.items())
            print(f"{name:12} {p.about}\n{'':12} dataset {p.adapter}; {params}")
    return EXIT_OK


def describe_task_model(task: Any) -> dict[str, Any]:
    """The task's graph with shapes, parameters and cost (no data loaded: C is the §18.2 bound)."""
    from protocol.budget import get_task_cost, get_task_graph_info
    from protocol.task import get_model_graph

    graph = get_model_graph(task)
    info = get_task_graph_info(task)
    shapes = dict(info.shapes)
    owned: dict[str, list[str]] = {}
    for p in info.params:
        owner = p.name if p.name in shapes else p.name.rsplit(".", 1)[0]
        owned.setdefault(owner, []).append(p.name)
    cost = get_task_cost(task)
    return {
        "family": task.model_family,
        "context": getattr(task.model, "context", 0),
        "parameters": info.param_count,
        "parameter_tensors": len(info.params),
        "nodes": [{"name": n.name, "op": n.op, "in": list(n.inputs), "shape": list(shapes[n.name]),
                   "attrs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in n.attrs},
                   "params": {p: list(next(q.shape for q in info.params if q.name == p))
                              for p in owned.get(n.name, [])}} for n in graph.nodes],
        "cost": {"state_bytes": cost.state_bytes, "step_flops": cost.step_flops,
                 "segment_flops": cost.segment_flops, "activation_bytes": cost.activation_bytes},
    }


def format_task_model(task: Any, doc: dict[str, Any]) -> str:
    from protocol.budget import ADAPTER_SHAPES
    from protocol.task import DATASETS

    lines = [f"{task.name}: family {doc['family']}, {len(doc['nodes'])} nodes, "
             f"{doc['parameters']:,} parameters in {doc['parameter_tensors']} tensors"]
    if DATASETS.get(task.data.adapter) == "text":
        lines[0] += (f" (classes = {ADAPTER_SHAPES[task.data.adapter][1]}, the bound of SPEC §18.2: "
                     "the data set may have fewer tokens)")
    for n in doc["nodes"]:
        attrs = " ".join(f"{k}={v}" for k, v in n["attrs"].items())
        params = " ".join(f"{k}{v}" for k, v in n["params"].items())
        lines.append(f"  {n['name']:24} {n['op']:16} {','.join(n['in']):24} -> {n['shape']!s:14} {attrs}"
                     + (f"  [{params}]" if params else ""))
    c = doc["cost"]
    lines.append(f"state {c['state_bytes']:,} bytes; step {c['step_flops']:,} multiply-adds (bound); "
                 f"activations {c['activation_bytes']:,} bytes per step (bound)")
    return "\n".join(lines)


def _preset_task_unchecked(name: str, sets: dict[str, Any]) -> tuple[Any, str | None]:
    """The preset's task even where it breaks a limit (to count gpt2-small), and the refusal if any."""
    from protocol.presets import PRESETS, get_preset_graph, get_preset_task
    from protocol.task import DataSpec, OptimSpec, ScheduleSpec, Task, parse_task

    if name not in PRESETS:
        raise InvalidTask(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    doc = get_preset_task(name, sets, "00" * 32)
    try:
        return parse_task(doc), None
    except InvalidTask as exc:
        t, opt = doc["task"], doc["optim"]
        task = Task(name=t["name"], seed=t["seed"], total_steps=t["total_steps"],
                    checkpoint_interval=t["checkpoint_interval"], batch_size=t["batch_size"], model_family="graph",
                    model=get_preset_graph(name, {k: v for k, v in sets.items() if "." not in k}),
                    data=DataSpec(doc["data"]["adapter"], bytes(32)), optim=OptimSpec(name=opt["name"], lr=opt["lr"]),
                    schedule=ScheduleSpec())
        return task, str(exc)


def cmd_show(args: argparse.Namespace) -> int:
    from protocol.task import compute_task_id

    from .cli import _read_task

    refusal = None
    if getattr(args, "preset", None):
        task, refusal = _preset_task_unchecked(args.preset, _parse_sets(args.set or []))
    elif not args.file:
        raise InvalidTask("pol task show needs a task file or --preset")
    else:
        task = _read_task(args.file)
    doc = describe_task_model(task)
    doc["task_id"] = None if refusal else compute_task_id(task).hex()
    doc["refused"] = refusal
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(format_task_model(task, doc))
        if refusal:
            print(f"not a valid task: {refusal}")
    return EXIT_OK


def register(sub: Any) -> None:
    t = sub.add_parser("task", help="write a task file from a model preset, or show a task's model graph")
    ts = t.add_subparsers(dest="task_command", required=True)
    n = ts.add_parser("new", help="print a task file training a preset model (GPT-2, ResNet, ...)")
    n.add_argument("--preset", required=True, help="preset name (pol task presets lists them)")
    n.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a preset parameter (d_model=128, tied=false, vocab=50257) or a task key as "
                        "table.key (task.batch_size=4, optim.lr=0.001, data.adapter=...); repeatable")
    n.add_argument("--out", help="write the task file here (never overwritten) instead of printing it")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_new)
    p = ts.add_parser("presets", help="list the model presets and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)
    s = ts.add_parser("show", help="a task's model graph: nodes, shapes, parameters and cost")
    s.add_argument("file", nargs="?", help="task TOML file or built-in task name")
    s.add_argument("--preset", help="show a preset's graph instead (counted even where it breaks a limit)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="as for pol task new")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

