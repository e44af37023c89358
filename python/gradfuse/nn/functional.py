"""Functional forms of the layers and losses (``gf.nn.functional``, usually imported as F)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import functional as _ops
from .. import random as _random
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
from ..tensor import Tensor, is_grad_enabled

__all__ = [
    "linear",
    "mse_loss",
    "cross_entropy",
    "batch_norm",
    "layer_norm",
    "rms_norm",
    "group_norm",
    "dropout",
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


# --------------------------------------------------------------------------- normalization
# Every argument is checked here, before any kernel runs: a rejected call changes nothing
# (running statistics included).


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # `in` hits by identity


def _norm_input(input, name="input"):
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(input).__name__}")
    if input.data.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {input.data.dtype}")
    return input.data


def _check_eps(eps):
    if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
            or not math.isfinite(eps) or eps < 0):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    return float(eps)


def _norm_param(t, name, shape, dtype):
    """weight / bias / running stats: None, or a Tensor of ``shape`` and the input's dtype."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a Tensor or None, got {type(t).__name__}")
    if t.data.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {t.data.shape}")
    if t.data.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the input's), got {t.data.dtype}")
    return t


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over (N, C) or (N, C, *) input, statistics per channel C.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` where, when ``training``, mean and the
    biased var are the batch's (over N and *), and ``running_mean``/``running_var`` (if given)
    are updated in place: ``r = (1 - momentum) r + momentum * stat``, with the unbiased batch
    variance for ``running_var``. Otherwise the running statistics are used.

    Shapes: input (N, C, *); running_mean, running_var, weight, bias (C,). Output as input.

    Example::

        >>> x = gf.tensor(np.random.randn(8, 3), dtype=gf.float32)
        >>> rm, rv = gf.zeros(3), gf.ones(3)
        >>> F.batch_norm(x, rm, rv, training=True).shape
        (8, 3)
    """
    x = _norm_input(input)
    if x.ndim < 2:
        raise ValueError(f"input: expected (N, C) or (N, C, *) input, got shape {x.shape}")
    eps = _check_eps(eps)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
            or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum: expected a float in [0, 1], got {momentum!r}")
    c = x.shape[1]
    rm = _norm_param(running_mean, "running_mean", (c,), x.dtype)
    rv = _norm_param(running_var, "running_var", (c,), x.dtype)
    w = _norm_param(weight, "weight", (c,), x.dtype)
    b = _norm_param(bias, "bias", (c,), x.dtype)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean, running_var: give both or neither")
    if not training and rm is None:
        raise ValueError("running_mean: required when training=False")
    if training and x.size // max(c, 1) <= 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {x.shape}"
        )
    return _ops.BatchNorm.apply(
        input, w, b,
        None if rm is None else rm.data, None if rv is None else rv.data,
        bool(training), float(momentum), eps,
    )


def _normalized_shape(normalized_shape):
    if type(normalized_shape) is tuple and all(type(d) is int and d > 0 for d in normalized_shape):
        if normalized_shape:
            return normalized_shape  # the common case, without the checks below
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    else:
        try:
            shape = tuple(normalized_shape)
        except TypeError:
            shape = None
        if shape is None or isinstance(normalized_shape, str) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape
        ):
            raise TypeError(
                f"normalized_shape: expected an int or a sequence of ints, got {normalized_shape!r}"
            )
        shape = tuple(int(d) for d in shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"normalized_shape: expected positive sizes, got {shape}")
    return shape


def _check_trailing(x, shape):
    if x.shape[x.ndim - len(shape):] != shape or x.ndim < len(shape):
        raise ValueError(
            f"normalized_shape: expected input with shape (*, {', '.join(map(str, shape))}), "
            f"got input of shape {x.shape}"
        )


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dimensions of each sample.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, mean and biased var over the last
    ``len(normalized_shape)`` dimensions. Shapes: input (*, *normalized_shape); weight and bias
    ``normalized_shape``. One fused kernel forward; one backward for input, weight and bias.

    Example::

        >>> F.layer_norm(gf.tensor(np.random.randn(4, 10), dtype=gf.float32), (10,)).shape
        (4, 10)
    """
    x = _norm_input(input)
    shape = _normalized_shape(normalized_shape)
    _check_trailing(x, shape)
    eps = _check_eps(eps)
    w = _norm_param(weight, "weight", shape, x.dtype)
    b = _norm_param(bias, "bias", shape, x.dtype)
    return _ops.LayerNorm.apply(input, w, b, len(shape), eps, False)


def rms_norm(input, normalized_shape, weight=None, eps=None) -> Tensor:
    """Root-mean-square normalization: ``y = x / sqrt(mean(x^2) + eps) * weight``.

    The mean is over the trailing ``normalized_shape`` dimensions; ``eps=None`` means the
    machine epsilon of the input's dtype, as PyTorch. Shapes: input (*, *normalized_shape),
    weight ``normalized_shape``.

    Example::

        >>> F.rms_norm(gf.tensor(np.random.randn(4, 10), dtype=gf.float32), (10,)).shape
        (4, 10)
    """
    x = _norm_input(input)
    shape = _normalized_shape(normalized_shape)
    _check_trailing(x, shape)
    eps = float(np.finfo(x.dtype).eps) if eps is None else _check_eps(eps)
    w = _norm_param(weight, "weight", shape, x.dtype)
    return _ops.LayerNorm.apply(input, w, None, len(shape), eps, True)


def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Group normalization: channels split into ``num_groups`` groups, each (sample, group)
    normalized over its channels and the trailing dimensions, then a per-channel affine.

    Shapes: input (N, C, *), C divisible by num_groups; weight, bias (C,).

    Example::

        >>> F.group_norm(gf.tensor(np.random.randn(2, 6, 5), dtype=gf.float32), 3).shape
        (2, 6, 5)
    """
    x = _norm_input(input)
    if x.ndim < 2:
        raise ValueError(f"input: expected (N, C, *) input, got shape {x.shape}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"num_groups: expected an int, got {type(num_groups).__name__}")
    c = x.shape[1]
    if num_groups <= 0 or c % num_groups:
        raise ValueError(
            f"num_groups: expected a positive divisor of the {c} input channels, got {num_groups}"
        )
    eps = _check_eps(eps)
    w = _norm_param(weight, "weight", (c,), x.dtype)
    b = _norm_param(bias, "bias", (c,), x.dtype)
    if x.size == 0:
        raise ValueError(f"input: empty input of shape {x.shape}")
    return _ops.GroupNorm.apply(input, w, b, int(num_groups), eps)


# --------------------------------------------------------------------------- dropout


def _check_dropout_p(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p: dropout probability has to be between 0 and 1, but got {p!r}")


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False,
            generator=None) -> Tensor:
    """Inverted dropout: in training, each element is kept with probability 1 - p and scaled by
    1/(1-p), else set to 0; in evaluation (``training=False``) or with p = 0 the input is
    returned as it is (no random numbers drawn). p = 1 gives zeros, as in PyTorch.

    The keep mask is drawn from Philox (``generator``, default the global one) in the same
    compiled pass as the scaling: element i is kept when word i of the fill is below
    ``round((1 - p) 2^32)``, so a seed fixes the mask on any thread count. Backward multiplies
    the gradient by the same mask and scale (kept as 1 byte per element).

    ``inplace=True`` writes into ``input`` and returns it when no gradient is recorded through
    it; gradfuse's tape has no version counters to make an in-place op on a recorded tensor
    safe, so in that case the result is a new tensor (same values).

    Shapes: input (*), float32 or float64 -> output (*).

    Example::

        >>> x = gf.ones(2, 3, requires_grad=True)
        >>> y = F.dropout(x, 0.5, generator=gf.Generator(0))   # entries 0 or 2
        >>> y.sum().backward(); bool(((x.grad.numpy() == 0) | (x.grad.numpy() == 2)).all())
        True
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a Tensor, got {type(input).__name__}")
    _check_dropout_p(p)
    if not isinstance(training, bool):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if input.data.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input: dropout needs float32 or float64, got {input.data.dtype}")
    gen = _random._generator(generator)
    if not training or p == 0:
        return input
    record = input.requires_grad and is_grad_enabled()
    out = _ops.Dropout.apply(input, float(p), gen, record)
    if inplace and not record:
        input.data[...] = out.data
        return input
    return out
