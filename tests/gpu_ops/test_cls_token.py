"""The ViT class token and its readout (SPEC.md §10.5): the token is prepended at position 0 and
its gradient is the exact sum of position 0's gradient over the batch (close to binary64, and
not the naive float32 sum's bits); select reads one index and puts the gradient back there with
+0 elsewhere; both are bit-identical on the reference and the fast backend."""

from __future__ import annotations

import pytest
import torch

from gpu_ops import backend, layers

F32, F64 = torch.float32, torch.float64


def data(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(torch.randint(-20, 20, shape, generator=g).float())
    return x.to(F32)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def cls_then_select(x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return layers.select(layers.cls_token(x, cls), 1, 0)


def grads(fn, inputs: list[torch.Tensor], dy: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]  # type: ignore[misc]


def test_cls_token_forward_backward() -> None:
    b, t, d = 301, 5, 7
    x, cls, dy = data(b, t, d, seed=1), data(1, 1, d, seed=2), data(b, t + 1, d, seed=3)
    y, dx, dcls = grads(layers.cls_token, [x, cls], dy)
    assert y.shape == (b, t + 1, d)
    assert torch.equal(bits(y[:, 0]), bits(cls[0].expand(b, d))) and torch.equal(bits(y[:, 1:]), bits(x))
    assert torch.equal(bits(dx), bits(dy[:, 1:]))
    assert dcls.shape == (1, 1, d)
    wide = dy[:, 0].double().sum(0)  # binary64 sum: an independent reference
    torch.testing.assert_close(dcls.reshape(d).double(), wide, rtol=1e-6, atol=0)
    naive = dy[:, 0].sum(0)  # float32 torch sum: its order-dependent rounding is not the spec's
    assert not torch.equal(bits(naive), bits(dcls.reshape(d)))


def test_select_gradient_is_dy_at_the_index_and_plus_zero_elsewhere() -> None:
    x, dy = data(4, 6, 3, seed=4), -data(4, 3, seed=5).abs()
    y, dx = grads(lambda v: layers.select(v, 1, 2), [x], dy)
    assert torch.equal(bits(y), bits(x[:, 2]))
    assert torch.equal(bits(dx[:, 2]), bits(dy))
    rest = torch.cat([dx[:, :2], dx[:, 3:]], dim=1)
    assert torch.equal(bits(rest), torch.zeros_like(bits(rest)))  # +0, not -0


def test_class_token_readout_reaches_only_the_token() -> None:
    """Reading position 0 right after the token: the token gets dy summed over the batch, the
    patch tokens nothing (+0)."""
    x, cls, dy = data(3, 4, 5, seed=6), data(1, 1, 5, seed=7), data(3, 5, seed=8)
    y, dx, dcls = grads(cls_then_select, [x, cls], dy)
    assert torch.equal(bits(y), bits(cls[0].expand(3, 5)))
    assert torch.equal(bits(dx), torch.zeros_like(bits(dx)))
    torch.testing.assert_close(dcls.reshape(5).double(), dy.double().sum(0), rtol=1e-6, atol=0)


@pytest.mark.skipif(backend._load() is None, reason="C kernels could not be built")
def test_fast_equals_reference() -> None:
    x, cls, dy = data(257, 4, 6, seed=9), data(1, 1, 6, seed=10), data(257, 5, 6, seed=11)
    with backend.use_backend("fast"):
        fast = grads(layers.cls_token, [x, cls], dy)
    with backend.use_backend("ref"):
        slow = grads(layers.cls_token, [x, cls], dy)
    for f, s in zip(fast, slow):
        assert torch.equal(bits(f), bits(s))


def test_trace_entries_reexecute() -> None:
    """A referee re-runs the recorded class-token and select entries of a vit step on their own."""
    from prover.steps import compute_output_hashes, compute_step_trace, copy_state, execute_entry
    from prover.training import Runtime, init_state
    from protocol.presets import get_preset_task
    from protocol.task import parse_task

    digits = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
    task = parse_task(get_preset_task("vit", {"d_model": 8, "n_layers": 1, "n_heads": 2, "patch": 4, "pool": "cls",
                                              "task.batch_size": 3}, digits))
    rt = Runtime.for_task(task, seed=5)
    state = init_state(rt)
    start = copy_state(state)
    tr = compute_step_trace(rt, state)
    entries = [e for e in tr.entries if e["op"].split(".")[0] in ("cls_token", "select")]
    assert sorted(e["op"] for e in entries) == ["cls_token.backward", "cls_token.forward", "select.backward",
                                                 "select.forward"]
    for e in entries:
        inputs = [tr.tensors[ref[0]].reshape(ref[2]) for ref in e["in"]]
        assert compute_output_hashes(execute_entry(rt, tr.step, e, inputs, start)) == \
            [None if o is None else o[0] for o in e["out"]]
