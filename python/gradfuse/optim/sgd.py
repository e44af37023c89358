"""SGD with momentum, dampening, Nesterov momentum, weight decay and maximize."""

from __future__ import annotations

from . import _validate as V
from .optimizer import F_FIRST, F_MAXIMIZE, F_NESTEROV, Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, PyTorch's update rule (torch.optim.SGD):

    .. math::
        g &\leftarrow \pm g + \lambda p \\
        b &\leftarrow g \text{ (first step)}, \quad b \leftarrow \mu b + (1 - \tau) g
            \text{ (later)} \\
        p &\leftarrow p - \gamma\,(g + \mu b \text{ if nesterov else } b)

    Nesterov momentum: Sutskever et al. 2013, http://proceedings.mlr.press/v28/sutskever13.html

    Args (keyword names as PyTorch): ``lr=1e-3``, ``momentum=0``, ``dampening=0``,
    ``weight_decay=0``, ``nesterov=False``, ``maximize=False``; ``skip_nonfinite`` (see
    :class:`Optimizer`). One fused call per group and dtype over the arena; state
    ``momentum_buffer`` (flat, exported per parameter by ``state_dict()``).

    Example::

        >>> opt = gf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    """

    _kind = 0
    _fixed_scalars = True  # no step in the update (SGD: only step 1 differs)
    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, skip_nonfinite=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, g):
        V.lr(g["lr"])
        V.nonneg("momentum", g["momentum"])
        V.number("dampening", g["dampening"])
        V.nonneg("weight_decay", g["weight_decay"])
        V.flag("nesterov", g["nesterov"])
        V.flag("maximize", g["maximize"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_keys(self, group):
        return ["momentum_buffer"] if group["momentum"] != 0 else []

    def _scalars(self, group, step, arena, i0, i1):
        flags = (F_MAXIMIZE if group["maximize"] else 0) | (
            F_NESTEROV if group["nesterov"] else 0) | (F_FIRST if step == 1 else 0)
        return self._base_scalars(group), flags
