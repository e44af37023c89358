"""Parameter: a leaf Tensor that a Module registers as trainable."""

from __future__ import annotations

import numpy as np

from ..cuda.array import DeviceArray
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that is a Module parameter (``requires_grad=True`` by default).

    Example::

        >>> w = gf.nn.Parameter(np.zeros((3, 2), dtype=np.float32))
        >>> w.requires_grad
        True
    """

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        # a device array (gradfuse.cuda.DeviceArray) stays where it is
        super().__init__(data if type(data) is DeviceArray else np.asarray(data),
                         requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
