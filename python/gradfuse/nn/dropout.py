"""Dropout: randomly zero activations during training (Srivastava et al., JMLR 2014)."""

from __future__ import annotations

from . import functional as F
from .module import Module


class Dropout(Module):
    """Zero each element with probability ``p`` in training and scale the rest by 1/(1-p)
    (inverted dropout, so evaluation is the identity). The mask comes from the default Philox
    generator in the same compiled pass as the scaling; see :func:`gradfuse.nn.functional.dropout`.

    Args:
        p: drop probability in [0, 1] (p = 1 zeros everything, as in PyTorch).
        inplace: write into the input when no gradient flows through it (see F.dropout).

    Shapes: input (*) -> output (*), same shape.

    Example::

        >>> drop = gf.nn.Dropout(0.5)
        >>> y = drop(gf.ones(2, 4))          # entries 0 or 2
        >>> drop.eval()(gf.ones(2, 4)).numpy().tolist()
        [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        F._check_dropout_p(p)
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace: expected a bool, got {type(inplace).__name__}")
        self.p = float(p)
        self.inplace = inplace

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
