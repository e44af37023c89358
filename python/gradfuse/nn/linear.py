"""Linear (fully connected) layer."""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from . import init as _init
from .module import Module
from .parameter import Parameter


class Linear(Module):
    """``y = x W^T + b`` with ``W`` of shape (out_features, in_features).

    Initialized as PyTorch does, from the Philox stream of the default generator:
    ``kaiming_uniform_(W, a=sqrt(5))``, which is U(-1/sqrt(in_features), 1/sqrt(in_features)),
    then b from the same range. ``init`` picks another scheme for W by name (``"xavier_uniform"``,
    ``"he_normal"``, ... see :func:`gradfuse.nn.init.get`) or as a callable
    ``fn(tensor, generator=None)``; b is then zero.

    Shapes: input (*, in_features) -> output (*, out_features).

    Example::

        >>> fc = gf.nn.Linear(3, 2)
        >>> fc(gf.ones(4, 3)).shape
        (4, 2)
        >>> gf.nn.Linear(3, 2, init="xavier_uniform").bias.numpy().tolist()
        [0.0, 0.0]
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None,
                 init=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
        if init is not None and not callable(init):
            _init._normalize(init, "init")  # an unknown name fails here, before any allocation
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.init = init
        dt = np.dtype(dtype or np.float32)
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dt))
        if bias:
            self.bias = Parameter(np.empty((out_features,), dtype=dt))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self, generator=None) -> None:
        """Draw W and b again (the ``init`` scheme, else PyTorch's default)."""
        init = self.init
        if isinstance(init, str):
            key = _init._normalize(init, "init")
            init = None if key == "default" else _init.get(key)
        if init is not None:
            init(self.weight, generator=generator)
            if self.bias is not None:
                _init.zeros_(self.bias)
            return
        if self.weight.data.size:  # PyTorch warns about an empty weight; nothing to draw
            _init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            fan_in, _ = _init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            _init.uniform_(self.bias, -bound, bound, generator)

    def forward(self, x):
        if self.bias is None:
            return F.Linear.apply(x, self.weight)
        return F.Linear.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        init = "" if self.init is None else f", init={getattr(self.init, '__name__', self.init)!r}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}{init}"
        )
