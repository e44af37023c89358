"""Gradient clipping: ``clip_grad_norm_`` and ``clip_grad_value_`` (PyTorch's API).

When the parameters' gradients live in an optimizer's arena (gradfuse.optim) and every
parameter of that arena is passed, the norm is one compiled read pass over the whole gradient
buffer and the scaling one write pass; other gradients are handled per tensor by the same
kernels. Reductions use fixed blocks, so the norm does not depend on the thread count.

To avoid even the write pass, use ``optimizer.clip_grad_norm_(max_norm)``: it folds the scale
into the next ``step()``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _backend
from .._grad_norm import total_norm
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _number(name: str, value) -> float:
    """float(value), or a TypeError that names the argument (before any gradient is touched)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None


def _grad_buffers(parameters, whole: bool = True):
    """1-D arrays covering the gradients of `parameters` (whole arenas where possible).
    ``whole``: the caller needs every element of the averaged gradients (a norm), which no
    rank holds under ZeRO-1; an elementwise caller (clamping) does not."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    syncs = {}
    for p in parameters:
        if not isinstance(p, Tensor):
            raise TypeError(f"parameters: expected Tensors, got {type(p).__name__}")
        # gradfuse.distributed.DataParallel: average first (the same values on every rank).
        # Found through the arena slot, not p.grad: a hand-set .grad is adopted into the arena
        # by the synchronization, so it must happen before the gradients are collected
        a = getattr(getattr(p, "_grad_slot", None), "_gf_arena", None)
        sync = getattr(a, "grad_sync", None)
        if sync is not None:
            syncs[id(sync)] = sync
    for sync in syncs.values():
        sync.sync_for_utils(whole)
    grads = [p.grad for p in parameters if p.grad is not None]
    by_arena: dict[int, list] = {}
    loose = []
    for g in grads:
        a = getattr(g, "_gf_arena", None)
        if a is not None:
            by_arena.setdefault(id(a), [a, set()])[1].add(id(g))
        else:
            loose.append(g)
    out = []
    for a, ids in by_arena.values():
        live = {id(p.grad) for p in a.params if p.grad is not None}
        if ids == {id(t) for t in a.grad_tensors} and ids <= live:
            out.append(a.grad)  # the whole arena: one call
        else:
            out.extend(t.data.reshape(-1) for t in a.grad_tensors if id(t) in ids)
    back = []  # (contiguous copy, original) for non-contiguous gradients, written back after
    for g in loose:
        d = g.data
        if d.dtype.kind != "f" or d.dtype.itemsize not in (4, 8):
            raise TypeError(f"parameters: gradients must be float32/float64, got {d.dtype}")
        if d.flags.c_contiguous:
            out.append(d.reshape(-1))
        else:
            c = np.ascontiguousarray(d).reshape(-1)
            out.append(c)
            back.append((c, d))
    return out, grads, back


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach=None) -> Tensor:
    """Scale gradients in place so their total ``norm_type`` norm is at most ``max_norm``.

    Args:
        parameters: a Tensor or an iterable of Tensors (those without ``.grad`` are ignored).
        max_norm: the largest allowed total norm.
        norm_type: p of the p-norm; ``float('inf')`` for the max norm.
        error_if_nonfinite: raise RuntimeError when the total norm is NaN or inf.
        foreach: accepted for PyTorch compatibility; gradfuse always uses its fused path.

    Returns:
        The total norm of the gradients before clipping, as a 0-d Tensor. As PyTorch, the
        gradients are multiplied by ``min(1, max_norm / (norm + 1e-6))``.

    Example::

        >>> loss.backward()
        >>> gf.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    """
    del foreach
    max_norm = _number("max_norm", max_norm)
    norm_type = _number("norm_type", norm_type)
    if math.isnan(max_norm):
        raise ValueError("max_norm: expected a number, got nan")
    if math.isnan(norm_type) or norm_type <= 0:
        raise ValueError(f"norm_type: expected a positive number or inf, got {norm_type}")
    bufs, grads, back = _grad_buffers(parameters)
    dtype = grads[0].data.dtype if grads else np.dtype(np.float32)
    if not grads:
        return Tensor(np.array(0.0, dtype=dtype))
    for b in bufs:
        if not b.flags.writeable:
            raise ValueError("parameters: a gradient array is read-only")
    total = total_norm(bufs, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
            "by the non-finite norm anyway, set `error_if_nonfinite=False`")
    coef = max_norm / (total + 1e-6)
    coef = min(coef, 1.0) if not math.isnan(coef) else coef
    for b in bufs:
        _backend.arena_scale(b, coef)
    for c, d in back:
        d[...] = c.reshape(d.shape)
    return Tensor(np.array(total, dtype=dtype))


def clip_grad_value_(parameters, clip_value: float, foreach=None) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place (NaN stays).

    Example::

        >>> gf.nn.utils.clip_grad_value_(model.parameters(), clip_value=0.5)
    """
    del foreach
    v = _number("clip_value", clip_value)
    if math.isnan(v):
        raise ValueError("clip_value: expected a number, got nan")
    bufs, _, back = _grad_buffers(parameters, whole=False)
    for b in bufs:
        _backend.arena_clamp(b, -v, v)
    for c, d in back:
        d[...] = c.reshape(d.shape)
