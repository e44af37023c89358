"""LAMB (You et al. 2019): Adam's direction with a per-tensor trust ratio."""

from __future__ import annotations

import numpy as np

from .. import _backend
from . import _validate as V
from .optimizer import F_MAXIMIZE, Optimizer

__all__ = ["LAMB"]


class LAMB(Optimizer):
    r"""LAMB (https://arxiv.org/abs/1904.00962; not in PyTorch), per parameter tensor:

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2
            \\
        u &= \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon} + \lambda p, \quad
        p \leftarrow p - \gamma\,\frac{\lVert p \rVert}{\lVert u \rVert}\,u

    (trust ratio 1 when either norm is 0). The norms are per tensor, taken from the arena's
    segment table inside the same compiled call. Args: ``lr=1e-3``, ``betas=(0.9, 0.999)``,
    ``eps=1e-6``, ``weight_decay=0``, ``maximize=False``, ``skip_nonfinite=False``.

    Example::

        >>> opt = gf.optim.LAMB(model.parameters(), lr=1e-3, weight_decay=1e-2)
    """

    _kind = 7
    _fast_step = False  # own _update (two passes, segment table)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *,
                 maximize=False, skip_nonfinite=False):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, g):
        V.adam_family(g, "maximize")

    def _state_keys(self, group):
        return ["exp_avg", "exp_avg_sq"]

    def _scalars(self, group, step, arena, i0, i1):
        sc = self._base_scalars(group)
        b1, b2 = group["betas"]
        sc[10] = 1.0 / (1 - b1**step)
        sc[11] = 1.0 / (1 - b2**step)
        return sc, F_MAXIMIZE if group["maximize"] else 0

    def _update(self, group, a, active, grad_scale):
        m = a.ensure_state("exp_avg")
        v = a.ensure_state("exp_avg_sq")
        if a.seg_table is None:
            a.seg_table = (np.asarray(a.offsets, np.int64), np.asarray(a.sizes, np.int64))
        offs, sizes = a.seg_table
        if active is None and a.count is not None:
            step = a.count + 1
            sc, flags = self._scalars(group, step, a, 0, len(a.params))
            sc[12] = grad_scale
            _backend.lamb_step(a.param, a.grad, m, v, offs, sizes, sc, flags)
            a.count = step
            return
        for lo, hi, step0, i0, i1 in a.runs(active):
            sc, flags = self._scalars(group, step0 + 1, a, i0, i1)
            sc[12] = grad_scale
            _backend.lamb_step(a.param[lo:hi], a.grad[lo:hi], m[lo:hi], v[lo:hi],
                               offs[i0:i1] - lo, sizes[i0:i1], sc, flags)
            a.steps[i0:i1] += 1
        a.settle()
