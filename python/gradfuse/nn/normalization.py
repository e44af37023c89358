"""Normalization layers: BatchNorm1d, LayerNorm, RMSNorm, GroupNorm (compiled kernels)."""

from __future__ import annotations

import numbers

import numpy as np

from .. import functional as _ops
from ..tensor import Tensor
from . import functional as F
from .module import Module
from .parameter import Parameter


def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return int(v)


def _eps(eps):
    if eps is None:
        return None
    return F._check_eps(eps)


class BatchNorm1d(Module):
    """Batch normalization over (N, C) or (N, C, L) input, as ``torch.nn.BatchNorm1d``.

    Training: each channel is normalized with the batch's mean and biased variance (over N and
    L), and ``running_mean``/``running_var`` are updated in the same kernel call,
    ``r = (1 - momentum) r + momentum * stat`` with the unbiased variance (``momentum=None``:
    cumulative average, factor 1/num_batches_tracked). Eval: the running statistics are used
    (the batch's when ``track_running_stats=False``). The state_dict keys are PyTorch's:
    ``weight, bias, running_mean, running_var, num_batches_tracked``.

    Shapes: input (N, C) or (N, C, L) with C = num_features; output the same.

    Example::

        >>> bn = gf.nn.BatchNorm1d(4)
        >>> y = bn(gf.tensor(np.random.randn(32, 4), dtype=gf.float32))  # training: batch stats
        >>> y = bn.eval()(gf.tensor(np.random.randn(2, 4), dtype=gf.float32))  # eval: running stats
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=None):
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = _eps(eps)
        if momentum is not None and (
            isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
            or not 0.0 <= momentum <= 1.0
        ):
            raise ValueError(f"momentum: expected a float in [0, 1] or None, got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dt = np.dtype(dtype or np.float32)
        c = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(c, dtype=dt))
            self.bias = Parameter(np.zeros(c, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(c, dtype=dt)))
            self.register_buffer("running_var", Tensor(np.ones(c, dtype=dt)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def forward(self, input):
        x = F._norm_input(input)
        if x.ndim not in (2, 3):
            raise ValueError(f"input: expected 2D or 3D input (got {x.ndim}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"input: expected {self.num_features} features (num_features) in dimension 1, "
                f"got input of shape {x.shape}"
            )
        return self._normalize(input)

    def _running_factor(self, update: bool):
        """(the running statistics' update factor, the next ``num_batches_tracked`` or None)."""
        factor = 0.0 if self.momentum is None else self.momentum
        count = None
        if update:
            count = int(self.num_batches_tracked.data) + 1
            if self.momentum is None:
                factor = 1.0 / count  # cumulative moving average
        return factor, count

    def _normalize(self, input):
        """The forward after the shape checks (SyncBatchNorm's one-process path too)."""
        update = self.training and self.track_running_stats
        factor, count = self._running_factor(update)
        use_batch = self.training or self.running_mean is None
        # F.batch_norm checks everything before the kernel runs (and the kernel updates the
        # running statistics only after its own checks): a rejected call leaves all state as is.
        out = F.batch_norm(
            input,
            self.running_mean if (update or not self.training) else None,
            self.running_var if (update or not self.training) else None,
            self.weight, self.bias, use_batch, factor, self.eps,
        )
        if count is not None:
            self.num_batches_tracked.data[...] = count
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` dimensions, as PyTorch's.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per sample; weight (ones) and bias
    (zeros) have shape ``normalized_shape`` when ``elementwise_affine`` (``bias=False`` drops
    the bias). The backward is one fused kernel for input, weight and bias gradients.

    Shapes: input (*, *normalized_shape); output the same.

    Example::

        >>> ln = gf.nn.LayerNorm(10)
        >>> ln(gf.tensor(np.random.randn(4, 10), dtype=gf.float32)).shape
        (4, 10)
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=None):
        super().__init__()
        self.normalized_shape = F._normalized_shape(normalized_shape)
        self.eps = _eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        dt = np.dtype(dtype or np.float32)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dt))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input):
        # normalized_shape and eps were checked once in __init__; the input and parameters
        # (which may have been cast or replaced since) are checked on every call
        x = F._norm_input(input)
        F._check_trailing(x, self.normalized_shape)
        w = F._norm_param(self.weight, "weight", self.normalized_shape, x.dtype)
        b = F._norm_param(self.bias, "bias", self.normalized_shape, x.dtype)
        return _ops.LayerNorm.apply(input, w, b, len(self.normalized_shape), self.eps, False)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
        )


class RMSNorm(Module):
    """Root-mean-square normalization, as ``torch.nn.RMSNorm``:
    ``y = x / sqrt(mean(x^2) + eps) * weight`` over the trailing ``normalized_shape``
    dimensions (``eps=None``: the dtype's machine epsilon).

    Example::

        >>> gf.nn.RMSNorm(10)(gf.tensor(np.random.randn(4, 10), dtype=gf.float32)).shape
        (4, 10)
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine: bool = True, dtype=None):
        super().__init__()
        self.normalized_shape = F._normalized_shape(normalized_shape)
        self.eps = _eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            dt = np.dtype(dtype or np.float32)
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dt))
        else:
            self.register_parameter("weight", None)

    def forward(self, input):
        x = F._norm_input(input)
        F._check_trailing(x, self.normalized_shape)
        w = F._norm_param(self.weight, "weight", self.normalized_shape, x.dtype)
        eps = float(np.finfo(x.dtype).eps) if self.eps is None else self.eps
        return _ops.LayerNorm.apply(input, w, None, len(self.normalized_shape), eps, True)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(Module):
    """Group normalization, as ``torch.nn.GroupNorm``: the C channels are split into
    ``num_groups`` groups, each (sample, group) is normalized over its channels and trailing
    dimensions, then a per-channel affine (weight ones, bias zeros) when ``affine``.

    Shapes: input (N, C, *) with C = num_channels; output the same.

    Example::

        >>> gf.nn.GroupNorm(2, 6)(gf.tensor(np.random.randn(3, 6, 5), dtype=gf.float32)).shape
        (3, 6, 5)
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 dtype=None):
        super().__init__()
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.num_channels = _positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"num_channels: must be divisible by num_groups, got {num_channels} "
                f"and {num_groups}"
            )
        self.eps = _eps(eps)
        self.affine = bool(affine)
        dt = np.dtype(dtype or np.float32)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_channels, dtype=dt))
            self.bias = Parameter(np.zeros(self.num_channels, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input):
        x = F._norm_input(input)
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"input: expected shape (N, {self.num_channels}, *) (num_channels), "
                f"got {x.shape}"
            )
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
