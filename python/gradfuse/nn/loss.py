"""Loss modules."""

from __future__ import annotations

from . import functional as F
from .module import Module


class MSELoss(Module):
    """Mean squared error: ``mean((input - target)^2)`` (or ``sum``/``none``).

    Shapes: input and target of the same shape; output a scalar (or input's shape for 'none').

    Example::

        >>> gf.nn.MSELoss()(gf.tensor([1.0, 2.0]), gf.tensor([1.0, 4.0])).item()
        2.0
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        F._check_reduction(reduction)
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(Module):
    """Log-softmax + negative log-likelihood in one compiled kernel.

    ``loss_i = (1 - eps) w[y_i] (lse_i - x_{i,y_i}) + eps / C * sum_c w[c] (lse_i - x_{i,c})``
    with ``lse_i = log sum_c exp(x_{i,c})``; 'mean' divides by ``sum_i w[y_i]`` over rows whose
    target is not ``ignore_index`` (PyTorch's definition).

    Shapes: input (N, C) logits (or (C,), or (N, C, d1, ...)), target (N,) int class indices.

    Example::

        >>> loss = gf.nn.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss(gf.zeros(4, 10), gf.tensor([1, 2, 3, 4])).item()  # log(10)
        2.3025851249694824
    """

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__()
        F._check_reduction(reduction)
        F._check_label_smoothing(label_smoothing)
        if weight is not None:
            self.register_buffer("weight", weight)
        else:
            self.weight = None
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"
