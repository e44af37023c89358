"""Lion (Chen et al. 2023): sign of an interpolated momentum."""

from __future__ import annotations

from . import _validate as V
from .optimizer import F_MAXIMIZE, Optimizer

__all__ = ["Lion"]


class Lion(Optimizer):
    r"""Lion (EvoLved Sign Momentum, https://arxiv.org/abs/2302.06675; not in PyTorch):

    .. math::
        c = \beta_1 m + (1-\beta_1) g, \quad
        p \leftarrow p (1 - \gamma\lambda) - \gamma\,\mathrm{sign}(c), \quad
        m \leftarrow \beta_2 m + (1-\beta_2) g

    Args: ``lr=1e-4``, ``betas=(0.9, 0.99)``, ``weight_decay=0`` (decoupled),
    ``maximize=False``, ``skip_nonfinite=False``. State: ``step``, ``exp_avg``.

    Example::

        >>> opt = gf.optim.Lion(model.parameters(), lr=1e-4, weight_decay=1e-2)
    """

    _kind = 6
    _fixed_scalars = True  # no step in the update

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 skip_nonfinite=False):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, g):
        V.lr(g["lr"])
        V.betas(g["betas"])
        V.nonneg("weight_decay", g["weight_decay"])
        V.flag("maximize", g["maximize"])

    def _state_keys(self, group):
        return ["exp_avg"]

    def _scalars(self, group, step, arena, i0, i1):
        return self._base_scalars(group), F_MAXIMIZE if group["maximize"] else 0
