"""Adam and AdamW (decoupled weight decay)."""

from __future__ import annotations

from . import _validate as V
from .optimizer import F_AMSGRAD, F_DECOUPLED, F_MAXIMIZE, Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2014, https://arxiv.org/abs/1412.6980), PyTorch 2.13's formulas:

    .. math::
        g &\leftarrow \pm g\ (+\lambda p \text{ unless decoupled}), \quad
        p \leftarrow p (1 - \gamma\lambda) \text{ if decoupled} \\
        m &\leftarrow m + (1-\beta_1)(g - m), \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2
            \quad (\text{amsgrad: } \hat v \leftarrow \max(\hat v, v)) \\
        p &\leftarrow p - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{v} / \sqrt{1-\beta_2^t} + \epsilon}

    (eps is added after dividing by the bias correction, as PyTorch). Args: ``lr=1e-3``,
    ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``, ``amsgrad=False``,
    ``maximize=False``, ``decoupled_weight_decay=False``, ``skip_nonfinite=False``.
    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` (+ ``max_exp_avg_sq``).

    Example::

        >>> opt = gf.optim.Adam(model.parameters(), lr=1e-3)
    """

    _kind = 1

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 skip_nonfinite=False):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, g):
        V.adam_family(g, "amsgrad", "maximize", "decoupled_weight_decay")

    def _state_keys(self, group):
        keys = ["exp_avg", "exp_avg_sq"]
        return keys + ["max_exp_avg_sq"] if group["amsgrad"] else keys

    def _scalars(self, group, step, arena, i0, i1):
        sc = self._base_scalars(group)
        b1, b2 = group["betas"]
        sc[8] = float(group["lr"]) / (1 - b1**step)
        sc[9] = (1 - b2**step) ** 0.5
        flags = (F_MAXIMIZE if group["maximize"] else 0) | (
            F_AMSGRAD if group["amsgrad"] else 0) | (
            F_DECOUPLED if group.get("decoupled_weight_decay", False) else 0)
        return sc, flags


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter 2017, https://arxiv.org/abs/1711.05101): Adam with the weight
    decay applied to the parameter (``p *= 1 - lr * weight_decay``) instead of the gradient.
    Same arguments as :class:`Adam`, default ``weight_decay=1e-2``.

    Example::

        >>> opt = gf.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, skip_nonfinite=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         skip_nonfinite=skip_nonfinite)
