"""Adagrad (Duchi et al. 2011)."""

from __future__ import annotations

from . import _validate as V
from .optimizer import F_MAXIMIZE, Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    r"""Adagrad (https://jmlr.org/papers/v12/duchi11a.html), PyTorch's update rule:

    .. math::
        g \leftarrow \pm g + \lambda p, \quad S \leftarrow S + g^2, \quad
        p \leftarrow p - \frac{\gamma}{1 + (t-1)\eta}\,\frac{g}{\sqrt{S} + \epsilon}

    Args: ``lr=1e-2``, ``lr_decay=0`` (:math:`\eta`), ``weight_decay=0``,
    ``initial_accumulator_value=0``, ``eps=1e-10``, ``maximize=False``,
    ``skip_nonfinite=False``. As in PyTorch the state (``step`` 0, ``sum`` filled with
    ``initial_accumulator_value``) exists from construction on.

    Example::

        >>> opt = gf.optim.Adagrad(model.parameters(), lr=0.1, lr_decay=1e-4)
    """

    _kind = 3
    _eager_state = True

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False,
                 skip_nonfinite=False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _install_group(self, group, params):
        super()._install_group(group, params)
        for _, a in self._arenas[-1]:
            a.ensure_state("sum", float(group["initial_accumulator_value"]))

    def _check_group(self, g):
        V.lr(g["lr"])
        V.nonneg("lr_decay", g["lr_decay"])
        V.nonneg("weight_decay", g["weight_decay"])
        V.nonneg("initial_accumulator_value", g["initial_accumulator_value"])
        V.nonneg("eps", g["eps"], "epsilon")
        V.flag("maximize", g["maximize"])

    def _state_keys(self, group):
        return ["sum"]

    def _state_init(self, group, key):
        return float(group["initial_accumulator_value"])

    def _scalars(self, group, step, arena, i0, i1):
        sc = self._base_scalars(group)
        sc[8] = float(group["lr"]) / (1 + (step - 1) * float(group["lr_decay"]))
        return sc, F_MAXIMIZE if group["maximize"] else 0
