"""The total norm of many gradient buffers, in fixed-order reductions.

``nn.utils.clip_grad_norm_``, ``Optimizer.clip_grad_norm_`` and the trainer's gradient norm
all compute it. It lives here, beside ``_backend`` (whose ``arena_norm_reduce`` it calls) and
below both nn and optim in DESIGN.md's layer table, so that nn need not import optim.
"""

from __future__ import annotations

import math

from . import _backend

__all__ = ["total_norm"]


def total_norm(arrays, norm_type: float) -> float:
    """Norm of all elements of `arrays` together (fixed-order reductions)."""
    if math.isinf(norm_type):
        total = 0.0
        for x in arrays:
            v = _backend.arena_norm_reduce(x, norm_type) if x.size else 0.0
            if math.isnan(v):
                return v
            total = max(total, v)
        return total
    total = 0.0
    for x in arrays:
        if x.size:
            total += _backend.arena_norm_reduce(x, norm_type)
    if norm_type == 2.0:
        return math.sqrt(total)
    if norm_type == 1.0:
        return total
    return total ** (1.0 / norm_type)
