"""Evaluation of a proof's checkpoints and the loss-curve plot of ``pol inspect --eval/--plot``.

A requester wants to see that the model it pays for learned something: every checkpoint is loaded
(its file must hash to the transcript root), and its loss and accuracy are measured on a fixed
evaluation set of the task's data: up to ``EVAL_SAMPLES`` examples in canonical order (image tasks)
or ``EVAL_WINDOWS`` evenly spaced windows of the text (next-token accuracy). The built-in tasks train
on their whole data set, so this measures fit, not generalization; the JSON says so in
``eval_set``. Dropout is off during evaluation. Evaluation uses plain torch (it is not part of the
protocol: nothing here needs to be bit-exact).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

EVAL_SAMPLES = 512
EVAL_WINDOWS = 64


@dataclasses.dataclass(frozen=True)
class CheckpointEval:
    index: int
    step: int
    train_loss: float | None  # the prover's reported loss of the last step before the checkpoint
    eval_loss: float
    eval_accuracy: float


def _is_text(task: Any) -> bool:
    from protocol.task import get_model_context

    return get_model_context(task) > 0


def describe_eval_set(task: Any, n: int) -> str:
    if _is_text(task):
        return f"{n} evenly spaced text windows of the task's data (next-token accuracy); the task trains on all of it"
    return f"first {n} examples of the task's data in canonical order; the task trains on all of it (fit, not held-out)"


def _eval_batch(task: Any, dataset: Any) -> tuple[Any, Any, int]:
    import torch

    if _is_text(task):
        ctx = task.model.context
        limit = len(dataset.inputs) - ctx - 1
        starts = np.linspace(0, limit - 1, num=min(EVAL_WINDOWS, limit)).astype(np.int64)
        windows = np.stack([dataset.inputs[s:s + ctx + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(windows[:, :-1]), torch.from_numpy(windows[:, 1:]), len(starts)
    n = min(EVAL_SAMPLES, len(dataset.inputs))
    return torch.from_numpy(dataset.inputs[:n]), torch.from_numpy(dataset.targets[:n]), n


def evaluate_proof(path: Path) -> tuple[list[CheckpointEval], str]:
    """Loss and accuracy of every checkpoint of the proof in ``path`` on the task's evaluation set."""
    import torch

    from gpu_ops import nn as nn_module
    from prover.checkpoint import read_checkpoint
    from prover.training import Runtime, get_state_from_leaves
    from prover.transcript import ProofDir, read_transcript

    pdir = ProofDir(path)
    task = pdir.read_task()
    entries = read_transcript(pdir, task, allow_torn_tail=True)
    rt = Runtime.for_task(task)
    eval_task = task
    if task.model_family == "transformer" and getattr(task.model, "dropout", 0.0):
        eval_task = dataclasses.replace(task, model=dataclasses.replace(task.model, dropout=0.0))
    elif task.model_family == "graph":  # evaluation never drops: every dropout node's p set to 0
        nodes = tuple(dataclasses.replace(n, attrs=(("p", 0.0),)) if n.op == "dropout" else n for n in task.model.nodes)
        eval_task = dataclasses.replace(task, model=dataclasses.replace(task.model, nodes=nodes))
    forward = nn_module.get_forward(eval_task)
    x, y, n = _eval_batch(task, rt.dataset)
    real_ce = nn_module.F.cross_entropy
    out = []
    captured: dict[str, Any] = {}

    def capture(logits: Any, targets: Any) -> Any:
        captured["logits"], captured["targets"] = logits, targets
        return real_ce(logits, targets)

    for e in entries:
        state = get_state_from_leaves(rt, read_checkpoint(pdir.checkpoint(e.index), expected_root=e.root))
        captured.clear()

        # The forward functions end in F.cross_entropy(logits, targets): catch the logits there.
        with torch.no_grad(), mock.patch.object(nn_module.F, "cross_entropy", capture):
            forward({k: v.detach() for k, v in state.params.items()}, x, y, 0)
        logits = captured["logits"].reshape(-1, captured["logits"].shape[-1]).double()
        targets = captured["targets"].reshape(-1)
        loss = float(torch.nn.functional.cross_entropy(logits, targets))
        accuracy = float((logits.argmax(dim=-1) == targets).double().mean())
        out.append(CheckpointEval(e.index, e.step, e.loss, loss, accuracy))
    return out, describe_eval_set(task, n)


def plot_curve(evals: list[CheckpointEval], title: str, out: Path) -> None:
    """Loss over checkpoints (prover's training loss and evaluation loss) and evaluation accuracy, as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    steps = [e.step for e in evals]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        train = [(e.step, e.train_loss) for e in evals if e.train_loss is not None]
        if train:
            ax.plot([s for s, _ in train], [v for _, v in train], "o-", label="training loss (prover's)")
        ax.plot(steps, [e.eval_loss for e in evals], "s-", label="evaluation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        acc = ax.twinx()
        acc.plot(steps, [e.eval_accuracy for e in evals], "^--", color="tab:green", label="evaluation accuracy")
        acc.set_ylabel("accuracy")
        acc.set_ylim(0, 1)
        lines = ax.get_legend_handles_labels()
        more = acc.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
