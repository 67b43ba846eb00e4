"""Task specs: canonical form and id (SPEC.md §3).

A task is data, never code: a built-in model family with its config, a built-in dataset
adapter pinned by content hash, optimizer, schedule and training lengths, and one seed from
which every random number is derived. The task id is the SHA-256 of the canonical msgpack
of the *normalized* task (defaults filled in), so comments and layout of the TOML file do
not matter, and any change of meaning changes the id.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .constants import DOMAIN_TASK, MAX_CHECKPOINTS, MAX_TASK_BYTES, MAX_TOTAL_STEPS, OPS_SPEC_VERSION, Digest
from .encoding import decode_canonical, encode_canonical
from .errors import InvalidTask
from .graph import GraphConfig, GraphInput, get_family_graph, get_graph_canonical, parse_graph

MODEL_FAMILIES = ("mlp", "cnn", "transformer", "graph")
DATASETS = {"sklearn-digits": "image", "pydoc-topics": "text"}
ACTIVATIONS = ("relu", "tanh", "gelu")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"


@dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, ...] = (16, 32)
    kernel: int = 3
    hidden: int = 64
    activation: str = "relu"


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    context: int = 64
    dropout: float = 0.0


@dataclass(frozen=True)
class DataSpec:
    adapter: str
    sha256: bytes  # 32 bytes, content hash of the adapter's canonical bytes


@dataclass(frozen=True)
class OptimSpec:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0  # global-norm clipping threshold; 0 disables


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 1.0


@dataclass(frozen=True)
class Task:
    name: str
    seed: int
    total_steps: int
    checkpoint_interval: int
    batch_size: int
    model_family: str
    model: MLPConfig | CNNConfig | TransformerConfig | GraphConfig
    data: DataSpec
    optim: OptimSpec
    schedule: ScheduleSpec
    ops_version: int = OPS_SPEC_VERSION

    @property
    def num_segments(self) -> int:
        return self.total_steps // self.checkpoint_interval

    @property
    def num_checkpoints(self) -> int:
        return self.num_segments + 1


_MODEL_CONFIGS: Mapping[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig, "transformer": TransformerConfig}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise InvalidTask(f"[{key}] must be a table")
    return value


def _fill(cls: type, raw: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known) - set(skip))
    if unknown:
        raise InvalidTask(f"[{where}] has unknown key(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in raw:
            continue
        value = raw[name]
        default = f.default
        if isinstance(default, bool) or (isinstance(value, bool) and not isinstance(default, bool)):
            raise InvalidTask(f"[{where}] {name} must not be a boolean")
        if isinstance(default, float):
            if not isinstance(value, (int, float)):
                raise InvalidTask(f"[{where}] {name} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, int):
            if not isinstance(value, int):
                raise InvalidTask(f"[{where}] {name} must be an integer, got {value!r}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise InvalidTask(f"[{where}] {name} must be a list of integers, got {value!r}")
            value = tuple(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise InvalidTask(f"[{where}] {name} must be a string, got {value!r}")
        values[name] = value
    return cls(**values)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidTask(msg)


def validate_task_fields(task: Task) -> None:
    """Range and consistency checks shared by every way of building a ``Task``."""
    # fullmatch: with match, "$" also matches before a trailing newline ("name\n" would pass)
    _check(isinstance(task.name, str) and bool(_NAME_RE.fullmatch(task.name)),
           f"task name {task.name!r} must match {_NAME_RE.pattern} in full")
    _check(task.ops_version == OPS_SPEC_VERSION,
           f"ops_version {task.ops_version} is not supported (this node implements {OPS_SPEC_VERSION})")
    _check(0 <= task.seed < 2**64, "seed must be in [0, 2^64)")
    _check(1 <= task.total_steps <= MAX_TOTAL_STEPS, f"total_steps must be in [1, {MAX_TOTAL_STEPS}]")
    _check(1 <= task.checkpoint_interval <= task.total_steps, "checkpoint_interval must be in [1, total_steps]")
    _check(task.total_steps % task.checkpoint_interval == 0,
           "total_steps must be a multiple of checkpoint_interval")
    _check(task.num_checkpoints <= MAX_CHECKPOINTS, f"more than {MAX_CHECKPOINTS} checkpoints")
    _check(1 <= task.batch_size <= 4096, "batch_size must be in [1, 4096]")
    _check(task.model_family in MODEL_FAMILIES,
           f"unknown model family {task.model_family!r}; built-in families: {list(MODEL_FAMILIES)}")
    _check((task.model_family == "graph") == isinstance(task.model, GraphConfig),
           f"model family {task.model_family!r} does not match its config")
    _check(task.data.adapter in DATASETS,
           f"unknown dataset adapter {task.data.adapter!r}; built-in adapters: {sorted(DATASETS)}")
    _check(len(task.data.sha256) == 32, "data.sha256 must be 32 bytes (64 hex digits)")
    kind = DATASETS[task.data.adapter]
    model = task.model
    if isinstance(model, GraphConfig):
        if kind == "text":
            _check(model.context >= 2, "a graph on a text dataset needs context >= 2 (the window length T)")
        else:
            _check(model.context == 0, "a graph on an image dataset takes no context (leave it 0)")
    elif isinstance(model, TransformerConfig):
        _check(kind == "text", "the transformer family needs a text dataset")
        _check(1 <= model.n_layers <= 16 and 1 <= model.n_heads <= 16, "n_layers and n_heads must be in [1, 16]")
        _check(8 <= model.d_model <= 1024 and model.d_model % model.n_heads == 0,
               "d_model must be in [8, 1024] and divisible by n_heads")
        _check(1 <= model.d_ff <= 4096 and 2 <= model.context <= 1024, "d_ff in [1, 4096], context in [2, 1024]")
        _check(0.0 <= model.dropout < 1.0, "dropout must be in [0, 1)")
    else:
        _check(kind == "image", f"the {task.model_family} family needs an image dataset")
        _check(model.activation in ACTIVATIONS, f"activation must be one of {list(ACTIVATIONS)}")
        if isinstance(model, MLPConfig):
            _check(1 <= len(model.hidden) <= 8 and all(1 <= h <= 4096 for h in model.hidden),
                   "mlp hidden must list 1 to 8 widths in [1, 4096]")
        else:
            _check(1 <= len(model.channels) <= 4 and all(1 <= c <= 256 for c in model.channels),
                   "cnn channels must list 1 to 4 counts in [1, 256]")
            _check(model.kernel in (3, 5), "cnn kernel must be 3 or 5")
            _check(1 <= model.hidden <= 4096, "cnn hidden must be in [1, 4096]")
    o = task.optim
    _check(o.name in OPTIMIZERS, f"unknown optimizer {o.name!r}; built-in: {list(OPTIMIZERS)}")
    _check(0.0 < o.lr <= 10.0, "lr must be in (0, 10]")
    _check(0.0 <= o.momentum < 1.0 and 0.0 <= o.weight_decay < 1.0, "momentum and weight_decay in [0, 1)")
    _check(0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0 and 0.0 < o.eps <= 1.0, "bad AdamW betas or eps")
    _check(0.0 <= o.grad_clip <= 1e6, "grad_clip must be in [0, 1e6]")
    s = task.schedule
    _check(s.name in SCHEDULES, f"unknown schedule {s.name!r}; built-in: {list(SCHEDULES)}")
    _check(0 <= s.warmup_steps <= task.total_steps, "warmup_steps must be in [0, total_steps]")
    _check(0.0 <= s.final_lr_fraction <= 1.0, "final_lr_fraction must be in [0, 1]")
    from .budget import validate_task_cost  # budget needs the Task types defined here

    validate_task_cost(task)  # the protocol's own limits: every valid task can be verified


def parse_task(raw: Mapping[str, Any]) -> Task:
    """Build and validate a ``Task`` from a parsed TOML document."""
    if not isinstance(raw, Mapping):
        raise InvalidTask("a task is a table")
    unknown = sorted(set(raw) - {"task", "model", "data", "optim", "schedule"})
    if unknown:
        raise InvalidTask(f"unknown top-level table(s) {unknown}")
    t = _section(raw, "task")
    unknown = sorted(set(t) - {"name", "seed", "total_steps", "checkpoint_interval", "batch_size", "ops_version"})
    if unknown:
        raise InvalidTask(f"[task] has unknown key(s) {unknown}")
    for key in ("name", "seed", "total_steps", "checkpoint_interval", "batch_size"):
        if key not in t:
            raise InvalidTask(f"[task] is missing {key}")
    for key in ("seed", "total_steps", "checkpoint_interval", "batch_size", "ops_version"):
        if key in t and (not isinstance(t[key], int) or isinstance(t[key], bool)):
            raise InvalidTask(f"[task] {key} must be an integer")
    if not isinstance(t["name"], str):
        raise InvalidTask("[task] name must be a string")
    m = _section(raw, "model")
    family = m.get("family")
    if not isinstance(family, str) or family not in MODEL_FAMILIES:
        raise InvalidTask(f"unknown model family {family!r}; built-in families: {list(MODEL_FAMILIES)}")
    model = parse_graph(m) if family == "graph" else _fill(_MODEL_CONFIGS[family], m, "model", skip=("family",))
    d = _section(raw, "data")
    unknown = sorted(set(d) - {"adapter", "sha256"})
    if unknown:
        raise InvalidTask(f"[data] has unknown key(s) {unknown}")
    digest = d.get("sha256")
    if not isinstance(d.get("adapter"), str) or not isinstance(digest, str) or not re.fullmatch(
        r"[0-9a-f]{64}", digest
    ):
        raise InvalidTask("[data] needs adapter (string) and sha256 (64 lowercase hex digits)")
    task = Task(
        name=t["name"],
        seed=t["seed"],
        total_steps=t["total_steps"],
        checkpoint_interval=t["checkpoint_interval"],
        batch_size=t["batch_size"],
        ops_version=t.get("ops_version", OPS_SPEC_VERSION),
        model_family=family,
        model=model,
        data=DataSpec(adapter=d["adapter"], sha256=bytes.fromhex(digest)),
        optim=_fill(OptimSpec, _section(raw, "optim"), "optim"),
        schedule=_fill(ScheduleSpec, _section(raw, "schedule"), "schedule"),
    )
    validate_task_fields(task)
    return task


def parse_task_toml(text: str) -> Task:
    if len(text.encode("utf-8")) > MAX_TASK_BYTES:
        raise InvalidTask(f"task file exceeds {MAX_TASK_BYTES} bytes")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidTask(f"task is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level (the interpreter limit stays sane)
        raise InvalidTask("task TOML is nested too deeply") from None
    return parse_task(raw)


def _dc_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def get_task_canonical(task: Task) -> dict[str, Any]:
    """The normalized task as a plain document (what is hashed and what TOML round-trips to)."""
    if isinstance(task.model, GraphConfig):
        model = get_graph_canonical(task.model)
    else:
        model = _dc_dict(task.model)
        model["family"] = task.model_family
    return {
        "task": {
            "name": task.name,
            "seed": task.seed,
            "total_steps": task.total_steps,
            "checkpoint_interval": task.checkpoint_interval,
            "batch_size": task.batch_size,
            "ops_version": task.ops_version,
        },
        "model": model,
        "data": {"adapter": task.data.adapter, "sha256": task.data.sha256.hex()},
        "optim": _dc_dict(task.optim),
        "schedule": _dc_dict(task.schedule),
    }


def encode_task(task: Task) -> bytes:
    return encode_canonical(get_task_canonical(task))


def decode_task(data: bytes) -> Task:
    return parse_task(decode_canonical(data, MAX_TASK_BYTES))


def compute_task_id(task: Task) -> Digest:
    return Digest(hashlib.sha256(DOMAIN_TASK + encode_task(task)).digest())


def format_task_toml(task: Task) -> str:
    """Normalized TOML of a task (what ``pol prove`` writes into its output directory)."""
    lines: list[str] = []
    for section, values in get_task_canonical(task).items():
        lines.append(f"[{section}]")
        nodes = values.pop("nodes", None) if section == "model" else None
        lines += [_toml_line(key, value) for key, value in values.items()]
        lines.append("")
        for node in nodes or ():  # a graph's nodes: one [[model.nodes]] table each, after [model]
            lines.append("[[model.nodes]]")
            lines += [_toml_line(key, value) for key, value in node.items()]
            lines.append("")
    return "\n".join(lines)


def _toml_line(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, str):
        return f'{key} = "{value}"'
    if isinstance(value, float):
        return f"{key} = {value!r}"
    return f"{key} = {value!r}".replace("'", '"')


def get_model_graph(task: Task) -> GraphConfig:
    """The task's model as a graph: a ``graph`` task's own, or its built-in family's expansion (§11.2)."""
    if isinstance(task.model, GraphConfig):
        return task.model
    return get_family_graph(task.model_family, task.model)


def get_model_context(task: Task) -> int:
    """T, the token window of a text task's model; 0 for an image task."""
    if isinstance(task.model, (TransformerConfig, GraphConfig)):
        return task.model.context
    return 0


def get_graph_input(task: Task, in_features: int, classes: int) -> GraphInput:
    """What the task's data set feeds its graph; ``classes`` may be an upper bound (§18.2)."""
    if DATASETS[task.data.adapter] == "text":
        return GraphInput("tokens", (get_model_context(task),), classes)
    return GraphInput("image", (in_features,), classes)
