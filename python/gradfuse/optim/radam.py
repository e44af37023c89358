"""RAdam (Liu et al. 2019): Adam with a variance rectification term."""

from __future__ import annotations

import math

from . import _validate as V
from .optimizer import F_DECOUPLED, F_MAXIMIZE, F_RECTIFY, Optimizer

__all__ = ["RAdam"]


class RAdam(Optimizer):
    r"""RAdam (https://arxiv.org/abs/1908.03265), PyTorch's formulas: with
    :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)`,

    .. math::
        \hat m = m / (1-\beta_1^t), \quad
        p \leftarrow p - \gamma \hat m\, r_t \frac{\sqrt{1-\beta_2^t}}{\sqrt v + \epsilon}
        \text{ if } \rho_t > 5 \text{ else } p - \gamma \hat m

    with :math:`r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
    {(\rho_\infty-4)(\rho_\infty-2)\rho_t}}`. Args: ``lr=1e-3``, ``betas=(0.9, 0.999)``,
    ``eps=1e-8``, ``weight_decay=0``, ``decoupled_weight_decay=False``, ``maximize=False``,
    ``skip_nonfinite=False``.

    Example::

        >>> opt = gf.optim.RAdam(model.parameters(), lr=1e-3)
    """

    _kind = 5

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 decoupled_weight_decay=False, maximize=False, skip_nonfinite=False):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, g):
        V.adam_family(g, "decoupled_weight_decay", "maximize")

    def _state_keys(self, group):
        return ["exp_avg", "exp_avg_sq"]

    def _scalars(self, group, step, arena, i0, i1):
        sc = self._base_scalars(group)
        b1, b2 = group["betas"]
        bc1 = 1 - b1**step
        bc2 = 1 - b2**step
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * step * (b2**step) / bc2
        flags = (F_MAXIMIZE if group["maximize"] else 0) | (
            F_DECOUPLED if group["decoupled_weight_decay"] else 0)
        sc[10] = bc1
        if rho_t > 5.0:
            sc[11] = math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            sc[9] = bc2**0.5  # as PyTorch (pow, not sqrt)
            flags |= F_RECTIFY
        return sc, flags
