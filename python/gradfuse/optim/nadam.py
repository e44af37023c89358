"""NAdam (Dozat 2016) with PyTorch's momentum decay schedule."""

from __future__ import annotations

import numpy as np

from . import _validate as V
from .optimizer import F_DECOUPLED, F_MAXIMIZE, Optimizer

__all__ = ["NAdam"]


class NAdam(Optimizer):
    r"""NAdam (https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ), PyTorch's formulas:

    .. math::
        \mu_t &= \beta_1 (1 - \tfrac12 0.96^{t\psi}), \quad \Pi_t = \prod_{i \le t} \mu_i \\
        m &\leftarrow m + (1-\beta_1)(g - m), \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
            \quad d = \sqrt{v / (1-\beta_2^t)} + \epsilon \\
        p &\leftarrow p - \gamma\frac{1-\mu_t}{1-\Pi_t}\frac{g}{d}
            - \gamma\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m}{d}

    Args: ``lr=2e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``,
    ``momentum_decay=4e-3`` (:math:`\psi`), ``decoupled_weight_decay=False``,
    ``maximize=False``, ``skip_nonfinite=False``. State: ``step``, ``mu_product`` (a float32
    scalar, as PyTorch), ``exp_avg``, ``exp_avg_sq``.

    Example::

        >>> opt = gf.optim.NAdam(model.parameters(), lr=2e-3)
    """

    _kind = 4
    _fast_step = False  # _scalars advances mu_product

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, *, decoupled_weight_decay=False, maximize=False,
                 skip_nonfinite=False):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, g):
        V.adam_family(g)
        V.nonneg("momentum_decay", g["momentum_decay"])
        V.flag("decoupled_weight_decay", g["decoupled_weight_decay"])
        V.flag("maximize", g["maximize"])

    def _state_keys(self, group):
        return ["exp_avg", "exp_avg_sq"]

    def _extra_keys(self):
        return ["mu_product"]

    def _install_group(self, group, params):
        super()._install_group(group, params)
        for _, a in self._arenas[-1]:
            a.extra["mu_product"] = np.ones(len(a.params), dtype=np.float32)

    def _scalars(self, group, step, arena, i0, i1):
        sc = self._base_scalars(group)
        b1, b2 = group["betas"]
        lr, psi = float(group["lr"]), float(group["momentum_decay"])
        mu = b1 * (1.0 - 0.5 * 0.96 ** (step * psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
        # PyTorch keeps mu_product as a float32 tensor: the product is rounded to float32
        prods = arena.extra["mu_product"]
        prod = np.float32(prods[i0]) * np.float32(mu)
        prods[i0:i1] = prod
        prod = float(prod)
        sc[9] = 1 - b2**step
        sc[10] = -lr * (1.0 - mu) / (1.0 - prod)
        sc[11] = -lr * mu_next / (1.0 - prod * mu_next)
        flags = (F_MAXIMIZE if group["maximize"] else 0) | (
            F_DECOUPLED if group["decoupled_weight_decay"] else 0)
        return sc, flags
