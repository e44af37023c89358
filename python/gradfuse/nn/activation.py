"""Activation modules with PyTorch's names and arguments (compiled kernels underneath).

Each is a thin wrapper over the function of the same name in ``gf.nn.functional``; the
hyperparameters are checked when the module is built, so a bad value fails at construction.

``inplace=True`` (ReLU, LeakyReLU, ELU, SiLU) overwrites the input's array. gradfuse has no
version counter: it refuses an in-place update of a leaf that requires grad and of a tensor
whose producer saved it for backward, but it cannot see other ops that saved the same array
earlier (``y = x * w; relu(x, inplace=True)`` silently corrupts ``w``'s gradient, where
PyTorch would raise). Use in place only right after an op that does not keep its output
(Linear, add, a norm layer), as is usual in a Sequential.
"""

from __future__ import annotations

from . import functional as F
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "ELU", "GELU", "SiLU", "Softplus", "Softmax",
           "LogSoftmax"]


def _flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


class ReLU(Module):
    """``max(x, 0)``. Shapes: any -> same.

    Example::

        >>> gf.nn.ReLU()(gf.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = _flag(inplace, "inplace")

    def forward(self, input):
        return F.relu(input, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """``x if x > 0 else negative_slope * x``. Shapes: any -> same.

    Example::

        >>> gf.nn.LeakyReLU(0.1)(gf.tensor([-1.0, 2.0])).tolist()
        [-0.10000000149011612, 2.0]
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = F._ops._real(negative_slope, "negative_slope", "LeakyReLU")
        self.inplace = _flag(inplace, "inplace")

    def forward(self, input):
        return F.leaky_relu(input, self.negative_slope, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    """``1 / (1 + exp(-x))``. Shapes: any -> same.

    Example::

        >>> gf.nn.Sigmoid()(gf.tensor([0.0])).tolist()
        [0.5]
    """

    def forward(self, input):
        return F.sigmoid(input)


class Tanh(Module):
    """Hyperbolic tangent. Shapes: any -> same.

    Example::

        >>> gf.nn.Tanh()(gf.tensor([0.0])).tolist()
        [0.0]
    """

    def forward(self, input):
        return F.tanh(input)


class ELU(Module):
    """``x if x > 0 else alpha * (exp(x) - 1)``. Shapes: any -> same.

    Example::

        >>> round(gf.nn.ELU(alpha=1.0)(gf.tensor([-1.0])).item(), 4)
        -0.6321
    """

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha = F._ops._real(alpha, "alpha", "ELU")
        self.inplace = _flag(inplace, "inplace")

    def forward(self, input):
        return F.elu(input, self.alpha, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class GELU(Module):
    """``x * Phi(x)``; ``approximate='tanh'`` uses the tanh form. Shapes: any -> same.

    Example::

        >>> round(gf.nn.GELU(approximate="tanh")(gf.tensor([1.0])).item(), 4)
        0.8412
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate: expected 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input):
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """``x * sigmoid(x)``. Shapes: any -> same. In place with autograd keeps a copy of x.

    Example::

        >>> round(gf.nn.SiLU()(gf.tensor([1.0])).item(), 4)
        0.7311
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = _flag(inplace, "inplace")

    def forward(self, input):
        return F.silu(input, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Softplus(Module):
    """``log(1 + exp(beta x)) / beta`` (``x`` past ``threshold``). Shapes: any -> same.

    Example::

        >>> round(gf.nn.Softplus(beta=2.0)(gf.tensor([0.0])).item(), 4)
        0.3466
    """

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta = F._ops._real(beta, "beta", "Softplus")
        if self.beta == 0.0:
            raise ValueError("Softplus: beta: expected a nonzero number, got 0.0")
        self.threshold = F._ops._real(threshold, "threshold", "Softplus")

    def forward(self, input):
        return F.softplus(input, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


def _check_dim(dim, name):
    if dim is None or isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name}: dim: expected an int, got {dim!r}")
    return dim


class Softmax(Module):
    """Softmax along ``dim`` (required: PyTorch's implicit dim is deprecated).

    Example::

        >>> gf.nn.Softmax(dim=-1)(gf.zeros(1, 4)).tolist()
        [[0.25, 0.25, 0.25, 0.25]]
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = _check_dim(dim, "Softmax")

    def forward(self, input):
        return F.softmax(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """Log-softmax along ``dim``.

    Example::

        >>> round(gf.nn.LogSoftmax(dim=1)(gf.zeros(1, 2))[0, 0].item(), 4)
        -0.6931
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = _check_dim(dim, "LogSoftmax")

    def forward(self, input):
        return F.log_softmax(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
