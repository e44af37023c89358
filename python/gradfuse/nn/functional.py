"""Functional forms of the layers and losses (``gf.nn.functional``, usually imported as F)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import functional as _ops
from ..functional import (  # activations: compiled kernels, argument checks live there
    elu,
    elu_,
    gelu,
    leaky_relu,
    leaky_relu_,
    log_softmax,
    relu,
    relu_,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from ..tensor import Tensor

__all__ = [
    "linear",
    "mse_loss",
    "cross_entropy",
    # activations
    "relu",
    "relu_",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "gelu",
    "silu",
    "softplus",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
]

_check_reduction = _ops._check_reduction


def _check_label_smoothing(label_smoothing):
    if type(label_smoothing) is float and 0.0 <= label_smoothing <= 1.0:
        return  # the common case, without the abstract-base-class check below
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, numbers.Real)
        or not 0.0 <= label_smoothing <= 1.0
    ):
        raise ValueError(f"label_smoothing: expected a float in [0, 1], got {label_smoothing!r}")


def linear(input, weight, bias=None) -> Tensor:
    """``input @ weight.T + bias``. Shapes: (*, in), (out, in), (out,) -> (*, out)."""
    if bias is None:
        return _ops.Linear.apply(input, weight)
    return _ops.Linear.apply(input, weight, bias)


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """Mean squared error; ``input`` and ``target`` must have the same shape.

    Example::

        >>> F.mse_loss(gf.tensor([0.0, 0.0]), gf.tensor([1.0, 3.0])).item()
        5.0
    """
    _check_reduction(reduction)
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a Tensor, got {type(input).__name__}")
    return _ops.MSELoss.apply(input, target, reduction=reduction)


def _class_targets(target, input_shape):
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"target: expected integer class indices (int64), got dtype {t.dtype} "
            "(probability targets are not supported)"
        )
    expected = input_shape[:1] + input_shape[2:] if len(input_shape) >= 2 else ()
    if t.shape != expected:
        raise ValueError(
            f"target: expected shape {expected} for input of shape {input_shape}, got {t.shape}"
        )
    if t.dtype != np.int64:
        if t.dtype.kind == "u" and t.dtype.itemsize == 8 and t.size and t.max() > 2**63 - 1:
            raise ValueError("target: class index too large for int64")
        t = t.astype(np.int64)
    return t


def cross_entropy(input, target, weight=None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross entropy between logits and integer class targets (fused compiled kernel).

    Args:
        input: logits, shape (N, C), (C,) or (N, C, d1, ...); float32 or float64.
        target: class indices in [0, C), shape (N,) (or (), or (N, d1, ...)); any integer dtype.
        weight: optional per-class weights, shape (C,).
        ignore_index: target value whose rows contribute nothing (and are left out of 'mean').
        reduction: 'mean' | 'sum' | 'none'.
        label_smoothing: eps in [0, 1]; the target becomes (1 - eps) one-hot + eps / C.

    Example::

        >>> logits = gf.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
        >>> loss = F.cross_entropy(logits, gf.tensor([0]))
        >>> loss.backward(); logits.grad.shape
        (1, 3)
    """
    _check_reduction(reduction)
    _check_label_smoothing(label_smoothing)
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a Tensor, got {type(input).__name__}")
    x = input.data
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"input: expected float32 or float64 logits, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("input: expected logits with a class dimension, got a 0-d tensor")
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"input: empty batch (shape {x.shape})")
    t = _class_targets(target, x.shape)
    w = None
    if weight is not None:
        w = weight.data if isinstance(weight, Tensor) else np.asarray(weight)
        n_classes = x.shape[0] if x.ndim == 1 else x.shape[1]
        if w.shape != (n_classes,):
            raise ValueError(f"weight: expected shape ({n_classes},), got {w.shape}")
        w = np.ascontiguousarray(w, dtype=x.dtype)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index: {ignore_index} does not fit in int64")
    if math.isnan(float(label_smoothing)):
        raise ValueError("label_smoothing: nan")
    return _ops.CrossEntropy.apply(input, t, w, int(ignore_index), float(label_smoothing),
                                   reduction)
