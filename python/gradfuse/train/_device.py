"""Where a tensor or model lives, for the trainer and its callbacks: a host view of a tensor's
values, the device of a model."""

from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def host(t) -> np.ndarray:
    """A Tensor's values as a numpy array: the array itself for a CPU tensor (no copy), a host
    copy for a device tensor; arrays pass through."""
    if isinstance(t, Tensor):
        d = t.data
        return d if type(d) is np.ndarray else t.detach().numpy()
    return np.asarray(t)


def model_device(model):
    """The device of the model's first parameter ("cpu" for a model without parameters)."""
    for p in model.parameters():
        return getattr(p, "device", "cpu")
    return "cpu"
