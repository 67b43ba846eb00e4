"""Reproducible SGD (with momentum) and AdamW, plus clipping by global norm (SPEC.md §10.6).

Every update is a sequence of separately rounded float32 operations in the order written
here; scalar coefficients are computed in float64 on the host (IEEE double, the same on
every machine) and rounded to float32 once. torch.optim is never used: its foreach and
fused kernels contract multiply-adds differently on different CPUs.
"""

from __future__ import annotations

import functools
import math

import torch

from . import backend, ref

F32 = torch.float32


def _f32(v: float, like: torch.Tensor | None = None) -> torch.Tensor:
    """f32(v) on the device of ``like`` (ref.const: never a CPU scalar beside a CUDA tensor)."""
    return ref.const(v, like)


def compute_pow(base: float, exponent: int) -> float:
    """base**exponent in float64 by square-and-multiply over the exponent's bits, high to low.

    math.pow is not correctly rounded on every libm; this fixed sequence of IEEE multiplies is.
    """
    result = 1.0
    for bit in bin(exponent)[2:]:
        result = result * result
        if bit == "1":
            result = result * base
    return result


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale grads in place when their global L2 norm exceeds ``max_norm``; returns the norm.

    The squared norm is one exact sum over all elements of all grads in canonical order.
    """
    kg = backend.kernels(*grads[:1])
    clip = getattr(kg, "clip_grad_norm", None)  # the Triton kernels: no concatenated copy, no host sync
    if clip is not None and all(g.dtype == F32 and g.is_contiguous() for g in grads):
        norm_t: torch.Tensor = clip(grads, max_norm)
        return norm_t
    flat = torch.cat([(g * g).reshape(-1) for g in grads])
    k = backend.kernels(flat)
    total = k.exact_sum(flat) if k is not None else ref.exact_sum(flat)
    norm = ref.sqrt(total.reshape(1)).reshape(())
    if float(norm) > max_norm:
        coef = _f32(max_norm, norm) / (norm + _f32(1e-6, norm))
        for g in grads:
            g.mul_(coef)
    return norm


@functools.lru_cache(maxsize=64)
def _sgd_coefs(lr: float, momentum: float, weight_decay: float) -> tuple[float, float, float]:
    """The float32 coefficients of the fast SGD kernel (the values of _f32(...) below)."""
    return float(_f32(lr)), float(_f32(momentum)), float(_f32(weight_decay))


@functools.lru_cache(maxsize=64)
def _adamw_coefs(step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float
                 ) -> tuple[float, tuple[float, float, float, float, float, float, float]]:
    """(f32(lr * wd), the float32 coefficients of the fast AdamW kernel), as computed below.

    Cached: the values depend only on the arguments, and every parameter of one step shares them."""
    bc1 = 1.0 - compute_pow(beta1, step)
    bc2 = 1.0 - compute_pow(beta2, step)
    coefs = (float(_f32(beta1)), float(_f32(1.0 - beta1)), float(_f32(beta2)), float(_f32(1.0 - beta2)),
             float(_f32(lr / bc1)), float(_f32(math.sqrt(bc2))), float(_f32(eps)))
    return float(_f32(lr * weight_decay)), coefs


def sgd_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, lr: float, momentum: float,
             weight_decay: float) -> None:
    """SGD with heavy-ball momentum (dampening 0), unfused, in place.

    The momentum buffer starts at zeros (torch starts it at the first gradient; the two
    differ only in the sign of zero entries).
    """
    k = backend.kernels(p, g) if buf is None else backend.kernels(p, g, buf)
    if k is not None and p.is_contiguous() and (buf is None or buf.is_contiguous()):
        k.sgd_step(p, g, buf, *_sgd_coefs(lr, momentum, weight_decay))
        return
    if weight_decay != 0.0:
        g = g + _f32(weight_decay, p) * p
    if buf is not None:
        buf.copy_(_f32(momentum, p) * buf + g)
        g = buf
    p.sub_(_f32(lr, p) * g)


def adamw_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """AdamW (decoupled weight decay) with bias correction; ``step`` counts from 1. In place."""
    k = backend.kernels(p, g, m, v)
    if k is not None and p.is_contiguous() and m.is_contiguous() and v.is_contiguous():
        lrwd, coefs = _adamw_coefs(step, lr, beta1, beta2, eps, weight_decay)
        k.adamw_step(p, g, m, v, lrwd, weight_decay != 0.0, coefs)
        return
    if weight_decay != 0.0:
        p.sub_(_f32(lr * weight_decay, p) * p)
    m.copy_(_f32(beta1, p) * m + _f32(1.0 - beta1, p) * g)
    v.copy_(_f32(beta2, p) * v + _f32(1.0 - beta2, p) * (g * g))
    bc1 = 1.0 - compute_pow(beta1, step)
    bc2 = 1.0 - compute_pow(beta2, step)
    step_size = _f32(lr / bc1, p)
    denom = ref.sqrt(v) / _f32(math.sqrt(bc2), p) + _f32(eps, p)
    p.sub_(step_size * (m / denom))
