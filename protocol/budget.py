"""What a task costs, computed from its spec alone, before anything is allocated (SPEC.md §18.2).

``get_task_cost`` gives the bytes of one training state (parameters, optimizer slots, step) and an
upper bound on the multiply-adds of one segment. ``validate_task_cost`` compares them with the
protocol's limits (every valid task fits them, so whatever can be proved can be verified) or with a
verifier's own, lower budget (``OverBudget``: we decline, nobody's fault).
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import MAX_ACTIVATION_BYTES, MAX_SEGMENT_FLOPS, MAX_STATE_BYTES, MAX_TENSORS_PER_STATE
from .errors import InvalidTask, OverBudget
from .graph import GraphConfig, GraphInfo, analyze_graph
from .task import CNNConfig, MLPConfig, Task, TransformerConfig, get_graph_input, get_model_graph

# (in_features, n_classes) of each built-in adapter; n_classes of a text set is an upper bound
# (its vocabulary is at most the 256 byte values).
ADAPTER_SHAPES = {"sklearn-digits": (64, 10), "pydoc-topics": (0, 256)}
_SLOTS = {"adamw": 2, "sgd": 1}
_F32 = 4


@dataclass(frozen=True)
class TaskCost:
    params: int  # parameter elements
    state_bytes: int  # one checkpoint's tensor bytes: params and optimizer slots as f32, step as i64
    step_flops: int  # upper bound on multiply-adds of one optimizer step (forward + backward)
    segment_flops: int  # step_flops x checkpoint_interval
    activation_bytes: int = 0  # float32 bytes of every node output of one batch (an upper bound)


def _shapes(task: Task) -> list[tuple[int, int]]:
    """(rows, cols) of every parameter, with biases as (n, 1); the same layout as the model code."""
    in_features, n_classes = ADAPTER_SHAPES[task.data.adapter]
    m = task.model
    out: list[tuple[int, int]] = []
    if isinstance(m, MLPConfig):
        widths = [in_features, *m.hidden, n_classes]
        for a, b in zip(widths, widths[1:]):
            out += [(b, a), (b, 1)]
    elif isinstance(m, CNNConfig):
        side2 = in_features  # side x side pixels
        chans = [1, *m.channels]
        for a, b in zip(chans, chans[1:]):
            out += [(b, a * m.kernel * m.kernel), (b, 1)]
        out += [(m.hidden, chans[-1] * side2), (m.hidden, 1), (n_classes, m.hidden), (n_classes, 1)]
    elif isinstance(m, TransformerConfig):
        d = m.d_model
        out += [(n_classes, d), (m.context, d), (d, 1), (d, 1), (n_classes, d)]
        for _ in range(m.n_layers):
            out += [(d, 1)] * 6 + [(3 * d, d), (3 * d, 1), (d, d), (m.d_ff, d), (m.d_ff, 1), (d, m.d_ff)]
    return out


def _slot_count(task: Task) -> int:
    return 0 if task.optim.name == "sgd" and task.optim.momentum == 0.0 else _SLOTS[task.optim.name]


def get_task_graph_info(task: Task) -> GraphInfo:
    """The task's model graph analysed on its adapter's shapes (classes as an upper bound)."""
    in_features, n_classes = ADAPTER_SHAPES[task.data.adapter]
    return analyze_graph(get_model_graph(task), get_graph_input(task, in_features, n_classes))


def get_task_cost(task: Task) -> TaskCost:
    """Cost of a validated task's state and compute (never allocates)."""
    info = get_task_graph_info(task)
    slots = _slot_count(task)
    m = task.model
    b = task.batch_size
    activation_bytes = _F32 * b * info.activations_per_example
    if isinstance(m, GraphConfig):
        params = info.param_count
        step_flops = 6 * b * info.flops_per_example + 16 * params * (1 + slots)
        return TaskCost(params, params * (1 + slots) * _F32 + 8, step_flops, step_flops * task.checkpoint_interval,
                        activation_bytes)
    shapes = _shapes(task)
    params = sum(r * c for r, c in shapes)
    state_bytes = params * (1 + slots) * _F32 + 8
    if isinstance(m, CNNConfig):
        # each convolution runs at every pixel; the dense layers once per example
        conv = sum(r * c for r, c in shapes[: 2 * len(m.channels)]) * ADAPTER_SHAPES[task.data.adapter][0]
        per_example = conv + sum(r * c for r, c in shapes[2 * len(m.channels):])
    elif isinstance(m, TransformerConfig):
        # every position through every matrix, plus attention scores and values (context^2 x d per layer)
        per_example = m.context * params + 2 * m.n_layers * m.context * m.context * m.d_model
    else:
        per_example = params
    step_flops = 6 * b * per_example + 16 * params * (1 + slots)  # forward+backward, then the optimizer
    return TaskCost(params, state_bytes, step_flops, step_flops * task.checkpoint_interval, activation_bytes)


def validate_task_cost(task: Task, max_state_bytes: int = MAX_STATE_BYTES,
                       max_segment_flops: int = MAX_SEGMENT_FLOPS,
                       max_activation_bytes: int = MAX_ACTIVATION_BYTES) -> TaskCost:
    """Raise unless the task fits; ``InvalidTask`` past the protocol's limits, else ``OverBudget``."""
    cost = get_task_cost(task)
    if isinstance(task.model, GraphConfig):
        tensors = len(get_task_graph_info(task).params) * (1 + _slot_count(task)) + 1  # + meta/step
        if tensors > MAX_TENSORS_PER_STATE:
            raise InvalidTask(f"task's state of {tensors} tensors exceeds the limit of {MAX_TENSORS_PER_STATE}")
        if cost.activation_bytes > MAX_ACTIVATION_BYTES:
            raise InvalidTask(f"task's activations of {cost.activation_bytes:,} bytes per step exceed the protocol "
                              f"limit of {MAX_ACTIVATION_BYTES:,}")
        if cost.activation_bytes > max_activation_bytes:  # a verifier's memory, checked before any tensor
            raise OverBudget(f"task's activations of {cost.activation_bytes:,} bytes per step exceed this node's "
                             f"budget of {max_activation_bytes:,}")
    for value, limit, protocol_limit, what in (
            (cost.state_bytes, max_state_bytes, MAX_STATE_BYTES, "state of"),
            (cost.segment_flops, max_segment_flops, MAX_SEGMENT_FLOPS, "segment compute of")):
        if value > protocol_limit:
            raise InvalidTask(f"task's {what} {value:,} exceeds the protocol limit of {protocol_limit:,}")
        if value > limit:
            raise OverBudget(f"task's {what} {value:,} exceeds this node's budget of {limit:,}")
    return cost
