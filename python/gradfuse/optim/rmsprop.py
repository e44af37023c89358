"""RMSprop (Hinton's lecture 6e; centered variant of Graves 2013)."""

from __future__ import annotations

from . import _validate as V
from .optimizer import F_CENTERED, F_MAXIMIZE, Optimizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    r"""RMSprop, PyTorch's update rule (https://arxiv.org/abs/1308.0850 for ``centered``):

    .. math::
        g &\leftarrow \pm g + \lambda p, \quad s \leftarrow \alpha s + (1-\alpha) g^2 \\
        \bar g &\leftarrow \bar g + (1-\alpha)(g - \bar g), \quad
            d = \sqrt{s - \bar g^2} + \epsilon \text{ (centered) else } \sqrt{s} + \epsilon \\
        b &\leftarrow \mu b + g / d,\ p \leftarrow p - \gamma b
            \text{ (momentum > 0) else } p \leftarrow p - \gamma g / d

    Args: ``lr=1e-2``, ``alpha=0.99``, ``eps=1e-8``, ``weight_decay=0``, ``momentum=0``,
    ``centered=False``, ``maximize=False``, ``skip_nonfinite=False``. PyTorch has no fused
    RMSprop; here it is one call over the arena like the others.

    Example::

        >>> opt = gf.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)
    """

    _kind = 2
    _fixed_scalars = True  # no step in the update (SGD: only step 1 differs)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, skip_nonfinite=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, g):
        V.lr(g["lr"])
        V.nonneg("eps", g["eps"], "epsilon")
        V.nonneg("momentum", g["momentum"])
        V.nonneg("weight_decay", g["weight_decay"])
        V.nonneg("alpha", g["alpha"])
        V.flag("centered", g["centered"])
        V.flag("maximize", g["maximize"])

    def _state_keys(self, group):
        return ["square_avg", "momentum_buffer" if group["momentum"] > 0 else None,
                "grad_avg" if group["centered"] else None]

    def _scalars(self, group, step, arena, i0, i1):
        flags = (F_MAXIMIZE if group["maximize"] else 0) | (
            F_CENTERED if group["centered"] else 0)
        return self._base_scalars(group), flags
