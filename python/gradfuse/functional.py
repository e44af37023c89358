"""Differentiable operations: one :class:`~gradfuse.tensor.Function` per op.

Each op's forward and backward sit side by side and work on numpy arrays. Element-wise
arithmetic and reductions use numpy (memory-bound, numpy's loops are already SIMD), matrix
products use numpy's BLAS (DESIGN.md, decision 2), and fused ops whose numpy form would make
several passes (cross entropy) call the compiled kernels through ``gradfuse._backend``.

Gradients returned by ``backward`` may have the broadcast shape: the engine reduces them to
each input's shape.
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple

import numpy as np

from . import _backend
from .cuda.array import DeviceArray
from .cuda.array import zeros as _device_zeros
from .tensor import (
    Function,
    Tensor,
    _new,
    _unbroadcast,
    device_of,
    is_grad_enabled,
    leaf_grad_out,
    to_device,
)

# --------------------------------------------------------------------------- helpers


def _shape(x):
    return x.shape if isinstance(x, np.ndarray) else np.shape(x)


# Device data (gradfuse.cuda.DeviceArray) goes through the same Functions: numpy's ufuncs and
# array functions dispatch to it. np.asarray / np.ascontiguousarray / np.require / np.zeros
# do not dispatch, so the few places that call them go through these two helpers.


def _ascontig(a, dtype=None):
    """C-contiguous ``a`` of ``dtype`` (a copy only if needed), on a's device."""
    if type(a) is DeviceArray:
        if dtype is not None and a.dtype != dtype:
            a = a.astype(dtype)
        return a.ascontiguous()
    return np.ascontiguousarray(a, dtype=dtype)


def _arr(x):
    return x if type(x) is DeviceArray else np.asarray(x)


def _zeros(shape, dtype, like):
    """Zeros on the device of ``like``."""
    if type(like) is DeviceArray:
        return _device_zeros(shape, dtype)
    return np.zeros(shape, dtype=dtype)


class ToDevice(Function):
    """``t.to(device)``: a copy on the other device; the gradient travels back."""

    @staticmethod
    def forward(ctx, a, device):
        ctx.src = device_of(a)
        return to_device(a, device)

    @staticmethod
    def backward(ctx, g):
        return (to_device(g, ctx.src),)


def _broadcast_error(op, a, b, err):
    return ValueError(
        f"{op}: shapes {_shape(a)} and {_shape(b)} cannot be broadcast together"
    ).with_traceback(err.__traceback__)


# --------------------------------------------------------------------------- arithmetic


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        try:
            return a + b
        except ValueError as e:
            raise _broadcast_error("add", a, b, e) from None

    @staticmethod
    def backward(ctx, g):
        return g, g


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        try:
            return a - b
        except ValueError as e:
            raise _broadcast_error("sub", a, b, e) from None

    @staticmethod
    def backward(ctx, g):
        return g, (-g if ctx.needs_input_grad[1] else None)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        try:
            return a * b
        except ValueError as e:
            raise _broadcast_error("mul", a, b, e) from None

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        return (g * b if na else None), (g * a if nb else None)


def _is_integral(x) -> bool:
    return isinstance(x, (int, np.integer)) or (isinstance(x, np.ndarray) and x.dtype.kind in "biu")


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        try:
            if _is_integral(a) and _is_integral(b):  # ints / ints: float32, as in PyTorch
                out = np.true_divide(a, b, dtype=np.float32)
            else:
                out = a / b
        except ValueError as e:
            raise _broadcast_error("div", a, b, e) from None
        ctx.save_for_backward(b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        b, out = ctx.saved
        na, nb = ctx.needs_input_grad
        ga = g / b if na else None
        gb = -g * out / b if nb else None  # d(a/b)/db = -a/b^2 = -out/b
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Pow(Function):
    @staticmethod
    def forward(ctx, a, exponent):
        if not isinstance(exponent, (int, float, np.integer, np.floating)):
            raise TypeError(f"exponent: expected a number, got {type(exponent).__name__}")
        if isinstance(exponent, np.generic):
            exponent = exponent.item()  # a Python scalar does not promote float32 (NEP 50)
        ctx.save_for_backward(a)
        ctx.p = exponent
        return a**exponent

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        p = ctx.p
        if p == 0:
            return (np.zeros_like(a),)
        return (g * (p * a ** (p - 1)),)


class PowTensor(Function):
    """``a ** b`` with a tensor exponent (PyTorch's pow(Tensor, Tensor))."""

    @staticmethod
    def forward(ctx, a, b):
        try:
            np.broadcast_shapes(np.shape(a), np.shape(b))
        except ValueError as e:
            raise _broadcast_error("pow", a, b, e) from None
        if _is_integral(a) and _is_integral(b) and np.any(np.asarray(b) < 0):
            # numpy refuses negative integer powers of integers; PyTorch truncates (2 ** -1 == 0)
            dtype = np.result_type(a, b)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                out = np.trunc(np.power(np.asarray(a, np.float64), b))
            out = np.where(np.isfinite(out), out, 0).astype(dtype)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.power(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved
        na, nb = ctx.needs_input_grad
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if na:
                ga = g * (b * np.power(a, b - 1))
                ga = np.where(_arr(b) == 0, 0.0, ga)  # d/da a^0 = 0, also at a = 0
            if nb:
                # d/db a^b = a^b log a; PyTorch takes it as 0 where a == 0 and b >= 0
                gb = g * (out * np.log(a))
                gb = np.where((_arr(a) == 0) & (_arr(b) >= 0), 0.0, gb)
        return ga, gb


class MatMul(Function):
    """``a @ b`` with numpy's semantics for 1-D, 2-D and batched (broadcast) operands."""

    @staticmethod
    def forward(ctx, a, b):
        if type(a) is not DeviceArray:
            a = np.asarray(a)
        if type(b) is not DeviceArray:
            b = np.asarray(b)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(
                "matmul: both operands need at least 1 dimension, "
                f"got shapes {a.shape} and {b.shape}"
            )
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka != kb:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} are not aligned ({ka} != {kb})"
            )
        ctx.save_for_backward(a, b)
        try:
            return np.matmul(a, b)
        except ValueError as e:
            raise _broadcast_error("matmul (batch dimensions)", a, b, e) from None

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        # promote 1-D operands to matrices, as matmul itself does, then undo it
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if b.ndim == 1:  # restore the dropped column axis first, then the dropped row axis
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = g2[..., None, :]
        ga = gb = None
        if na:
            ga = _unbroadcast(np.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if nb:
            gb = _unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return ga, gb


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * out,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(a)  # log(0) = -inf, log(<0) = nan, as in PyTorch

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        with np.errstate(divide="ignore"):
            return (g / a,)


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        with np.errstate(invalid="ignore"):
            out = np.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        with np.errstate(divide="ignore"):
            return (g * 0.5 / out,)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g * np.sign(a),)  # 0 at 0, like PyTorch


class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.src = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return (g.astype(ctx.src),)

    @classmethod
    def apply(cls, a, dtype):
        if dtype.kind not in "fc":  # casting to integers/bool ends the graph
            return Tensor(a.data.astype(dtype))
        return super().apply(a, dtype=dtype)


class Clone(Function):
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return (g,)


# --------------------------------------------------------------------------- reductions


def dim_index(dim, ndim: int) -> int:
    """``dim`` as an index in [0, ndim), or IndexError as PyTorch (a 0-d tensor takes 0, -1)."""
    n = ndim if ndim > 0 else 1
    if not isinstance(dim, (int, np.integer)) or not -n <= dim < n:
        raise IndexError(
            f"dim: {dim!r} is out of range for a tensor with {ndim} dimensions "
            f"(expected an int in [{-n}, {n - 1}])"
        )
    return int(dim) % n


def _axes(dim, ndim):
    """Reduction axes: None (and an empty tuple, as in PyTorch) reduce everything."""
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    out = tuple(dim_index(d, ndim) for d in dims)
    if len(set(out)) != len(out):
        raise ValueError(f"dim: {dim} names a dimension twice")
    if not out or ndim == 0:
        return None
    return out


def _expand_reduced(g, shape, axes, keepdim):
    """Broadcast the gradient of a reduction back over the reduced axes."""
    if axes is not None and not keepdim and shape:
        g = np.expand_dims(g, axes)
    return np.broadcast_to(g, shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, a, dim=None, keepdim=False):
        axes = _axes(dim, a.ndim)
        ctx.shape, ctx.axes, ctx.keepdim = a.shape, axes, keepdim
        return np.sum(a, axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        return (_expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdim),)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, dim=None, keepdim=False):
        if a.dtype.kind not in "fc":
            raise TypeError(f"mean: expected a floating point tensor, got {a.dtype}")
        axes = _axes(dim, a.ndim)
        ctx.shape, ctx.axes, ctx.keepdim = a.shape, axes, keepdim
        count = a.size if axes is None else int(np.prod([a.shape[i] for i in axes]))
        ctx.scale = 1.0 / count if count else float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.mean(a, axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        return (_expand_reduced(g * ctx.scale, ctx.shape, ctx.axes, ctx.keepdim),)


class Amax(Function):
    """Maximum over ``dim`` (all axes when None); ties share the gradient evenly."""

    @staticmethod
    def forward(ctx, a, dim=None, keepdim=False):
        if a.size == 0:
            raise ValueError("max: expected a non-empty tensor")
        axes = _axes(dim, a.ndim)
        out = np.max(a, axis=axes, keepdims=True)
        ctx.save_for_backward(a, out)
        ctx.axes, ctx.keepdim = axes, keepdim
        return out if keepdim else np.squeeze(out, axis=axes)

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved
        mask = (a == out).astype(a.dtype)
        mask /= mask.sum(axis=ctx.axes, keepdims=True)
        if not ctx.keepdim and ctx.axes is not None:
            g = np.expand_dims(g, ctx.axes)
        return (g * mask,)


class TakeAlong(Function):
    """Values at ``index`` along ``dim`` (the values part of ``max(dim)``)."""

    @staticmethod
    def forward(ctx, a, index, dim, keepdim):
        ctx.shape, ctx.index, ctx.dim, ctx.keepdim = a.shape, index, dim, keepdim
        out = np.take_along_axis(a, index, axis=dim)
        return out if keepdim else np.squeeze(out, axis=dim)

    @staticmethod
    def backward(ctx, g):
        ga = _zeros(ctx.shape, g.dtype, g)
        if not ctx.keepdim:
            g = np.expand_dims(g, ctx.dim)
        np.put_along_axis(ga, ctx.index, g, axis=ctx.dim)
        return (ga,)


MaxResult = namedtuple("MaxResult", ["values", "indices"])


def max(x: Tensor, dim=None, keepdim: bool = False):  # noqa: A001 - PyTorch's name
    """``max(x)``: the largest element. ``max(x, dim)``: ``(values, indices)`` along ``dim``.

    Example::

        >>> v, i = gf.max(gf.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1)
        >>> v.tolist(), i.tolist()
        ([5.0, 7.0], [1, 0])
    """
    if dim is None:
        return Amax.apply(x)
    if x.data.size == 0:
        raise ValueError("max: expected a non-empty tensor")
    if x.data.ndim == 0:  # PyTorch: the value itself, index 0
        dim_index(dim, 0)
        return MaxResult(Clone.apply(x), Tensor(np.zeros((), np.int64)))
    d = dim_index(dim, x.data.ndim)
    index = np.argmax(x.data, axis=d, keepdims=True)
    values = TakeAlong.apply(x, index=index, dim=d, keepdim=keepdim)
    return MaxResult(values, Tensor(index if keepdim else np.squeeze(index, axis=d)))


def amax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """Maximum over one or several dims; gradient split evenly between ties."""
    return Amax.apply(x, dim=dim, keepdim=keepdim)


# --------------------------------------------------------------------------- shape


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(
                f"reshape: shape {tuple(shape)} is invalid for input of shape {a.shape} "
                f"({a.size} elements)"
            ) from None

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, dims):
        ctx.dims = dims
        return np.transpose(a, dims)

    @staticmethod
    def backward(ctx, g):
        return (np.transpose(g, np.argsort(ctx.dims)),)


def _is_basic(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(
        isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items
    )


def normalize_index(index):
    """Replace Tensors inside an index by their arrays (bool masks and int arrays allowed)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


class Index(Function):
    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return a[index]

    @staticmethod
    def backward(ctx, g):
        ga = _zeros(ctx.shape, g.dtype, g)
        if _is_basic(ctx.index):
            ga[ctx.index] = g  # a basic index never selects an element twice
        else:
            np.add.at(ga, ctx.index, g)  # repeated indices accumulate
        return (ga,)


class Cat(Function):
    @staticmethod
    def forward(ctx, *arrays, dim=0):
        ctx.sizes = [a.shape[dim] for a in arrays]
        ctx.dim = dim
        try:
            return np.concatenate(arrays, axis=dim)
        except ValueError:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ValueError(
                f"cat: shapes {shapes} must match except in dimension {dim}"
            ) from None

    @staticmethod
    def backward(ctx, g):
        cuts = np.cumsum(ctx.sizes)[:-1]
        return tuple(np.split(g, cuts, axis=ctx.dim))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, dim=0):
        ctx.dim = dim
        ctx.n = len(arrays)
        try:
            return np.stack(arrays, axis=dim)
        except ValueError:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ValueError(f"stack: all tensors must have the same shape, got {shapes}") from None

    @staticmethod
    def backward(ctx, g):
        return tuple(np.take(g, i, axis=ctx.dim) for i in range(ctx.n))


def _check_seq(tensors, name):
    if isinstance(tensors, Tensor) or not len(tensors):
        raise ValueError(f"{name}: expected a non-empty sequence of tensors")


def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate along an existing dimension: ``gf.cat([a, b], dim=0)``."""
    _check_seq(tensors, "cat")
    nd = np.ndim(tensors[0].data if isinstance(tensors[0], Tensor) else tensors[0])
    if nd == 0:
        raise ValueError("cat: zero-dimensional tensors cannot be concatenated; use stack")
    return Cat.apply(*tensors, dim=dim_index(dim, nd))


def stack(tensors, dim: int = 0) -> Tensor:
    """Stack along a new dimension: ``gf.stack([a, b], dim=0)``."""
    _check_seq(tensors, "stack")
    nd = np.ndim(tensors[0].data if isinstance(tensors[0], Tensor) else tensors[0]) + 1
    return Stack.apply(*tensors, dim=dim_index(dim, nd))


def matmul(a, b) -> Tensor:
    """Matrix product with numpy's broadcasting rules (1-D, 2-D, batched)."""
    return MatMul.apply(a, b)


def exp(x) -> Tensor:
    return Exp.apply(x)


def log(x) -> Tensor:
    return Log.apply(x)


def sqrt(x) -> Tensor:
    return Sqrt.apply(x)


def abs(x) -> Tensor:  # noqa: A001 - PyTorch's name
    return Abs.apply(x)


def sum(x, dim=None, keepdim: bool = False) -> Tensor:  # noqa: A001
    return Sum.apply(x, dim=dim, keepdim=keepdim)


def mean(x, dim=None, keepdim: bool = False) -> Tensor:
    return Mean.apply(x, dim=dim, keepdim=keepdim)


def reshape(x, shape) -> Tensor:
    return Reshape.apply(x, shape=tuple(shape))


def transpose(x, dim0: int, dim1: int) -> Tensor:
    return x.transpose(dim0, dim1)


def permute(x, dims) -> Tensor:
    return x.permute(dims)


# --------------------------------------------------------------------------- layers & losses


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype) -> np.ndarray:
    """A read-only vector of n ones (the bias gradient's row sum as a matrix-vector product)."""
    a = np.ones(n, dtype)
    a.flags.writeable = False
    return a


class Linear(Function):
    """``y = x W^T + b`` as one node: one BLAS call forward, two backward (+ one gemv for b).

    The weight and bias gradients are computed straight into the optimizer's gradient arena
    when there is one (``leaf_grad_out``): no copy of them after the backward.
    """

    @classmethod
    def apply(cls, x, w, b=None):
        # Function.apply's generic walk over the arguments costs ~1.5 us per call, as much as
        # the product of a 128x64 by 64x10 layer: the common all-Tensor call records directly.
        if not (isinstance(x, Tensor) and isinstance(w, Tensor)
                and (b is None or isinstance(b, Tensor))):
            return super().apply(x, w) if b is None else super().apply(x, w, b)
        ctx = _new(cls)
        t = _new(Tensor)
        t.data = cls.forward(ctx, x.data, w.data, None if b is None else b.data)
        nx, nw = x.requires_grad, w.requires_grad
        nb = b is not None and b.requires_grad
        if (nx or nw or nb) and is_grad_enabled():
            if b is None:
                ctx.inputs, ctx.needs_input_grad = (x, w), (nx, nw)
            else:
                ctx.inputs, ctx.needs_input_grad = (x, w, b), (nx, nw, nb)
            t.requires_grad = True
            t._ctx = ctx
        return t

    @staticmethod
    def forward(ctx, x, w, b=None):
        if x.ndim == 0 or w.ndim != 2 or x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"linear: input shape {x.shape} has {x.shape[-1] if x.ndim else 0} features "
                f"but weight shape {w.shape} expects {w.shape[1] if w.ndim == 2 else '?'}"
            )
        ctx.saved = (x, w)
        out = np.matmul(x, w.T)
        if b is not None:
            out += b
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        needs = ctx.needs_input_grad  # two entries without a bias, three with one
        inputs = ctx.inputs
        flat = x.ndim == 2  # the usual (batch, features): no reshapes (0.3 us each)
        g2 = g if flat and g.ndim == 2 else g.reshape(-1, w.shape[0])
        dt = g2.dtype
        gx = None
        if needs[0]:
            gx = np.matmul(g2, w)
            if not flat:
                gx = gx.reshape(x.shape)
        gw = None
        if needs[1]:
            x2 = x if flat else x.reshape(-1, w.shape[1])
            wt = inputs[1]
            out = leaf_grad_out(wt, dt) if x2.dtype == dt and wt is not inputs[0] else None
            gw = np.matmul(g2.T, x2, out=out)
        if len(needs) == 2:
            return gx, gw
        gb = None
        if needs[2]:
            bt = inputs[2]
            out = leaf_grad_out(bt, dt) if bt is not inputs[0] and bt is not inputs[1] else None
            # column sums as ones @ g2, one gemv: 1.6 us against 4.4 us for g2.sum(axis=0)
            # at 128x128 (numpy's reduction over the outer axis is not vectorized as well)
            if type(g2) is np.ndarray:
                gb = np.matmul(_ones(g2.shape[0], dt), g2, out=out)
            else:  # a device gradient: its own column reduction, no host vector of ones
                gb = g2.sum(axis=0)
        return gx, gw, gb


_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


class MSELoss(Function):
    @staticmethod
    def forward(ctx, a, b, reduction="mean"):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"mse_loss: input shape {np.shape(a)} and target shape {np.shape(b)} differ "
                "(PyTorch would broadcast them with a warning; reshape one explicitly)"
            )
        d = a - b
        ctx.save_for_backward(d)
        ctx.reduction = reduction
        if reduction == "none":
            return d * d
        flat = d.reshape(-1)
        total = np.dot(flat, flat)  # one BLAS pass instead of square + sum
        if reduction == "sum":
            return total
        if d.size == 0:
            raise ValueError("mse_loss: empty input")
        return total / d.size

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved
        scale = 2.0 / d.size if ctx.reduction == "mean" else 2.0
        ga = (g * scale) * d
        return ga, (-ga if ctx.needs_input_grad[1] else None)


class CrossEntropy(Function):
    """Fused log-softmax + NLL in one compiled kernel (csrc/kernels/loss.cpp).

    Input (N, C), (C,) or (N, C, d1, ...); target int64 class indices of the matching shape.
    """

    @classmethod
    def apply(cls, x, target, weight, ignore_index, label_smoothing, reduction):
        # only the logits can be a Tensor (gf.nn.functional.cross_entropy hands arrays and
        # checked options): record without Function.apply's walk over six arguments
        if not isinstance(x, Tensor):
            return super().apply(x, target, weight, ignore_index, label_smoothing, reduction)
        ctx = _new(cls)
        t = _new(Tensor)
        t.data = cls.forward(ctx, x.data, target, weight, ignore_index, label_smoothing,
                             reduction)
        if x.requires_grad and is_grad_enabled():
            ctx.inputs = (x, target, weight, ignore_index, label_smoothing, reduction)
            ctx.needs_input_grad = (True, False, False, False, False, False)
            t.requires_grad = True
            t._ctx = ctx
        return t

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, label_smoothing, reduction):
        shape = x.shape
        if x.ndim == 1:
            x2 = x.reshape(1, -1)
        elif x.ndim == 2:
            x2 = x
        else:  # class dim 1 -> last, then rows
            x2 = np.moveaxis(x, 1, -1).reshape(-1, shape[1])
        x2 = _ascontig(x2)
        t2 = _ascontig(target.reshape(-1))
        row_loss, lse, loss_sum, weight_sum = _backend.cross_entropy_forward(
            x2, t2, weight, ignore_index, label_smoothing
        )
        ctx.save_for_backward(x2, t2, lse)
        ctx.shape, ctx.weight, ctx.ignore_index = shape, weight, ignore_index
        ctx.label_smoothing, ctx.reduction, ctx.weight_sum = label_smoothing, reduction, weight_sum
        if reduction == "none":
            return row_loss.reshape(target.shape)
        if type(loss_sum) is DeviceArray:
            # the sums stay on the GPU (no synchronization): 0/0 gives nan as on the CPU
            if reduction == "sum":
                return loss_sum.astype(x.dtype, copy=False).reshape(())
            return (loss_sum / weight_sum).astype(x.dtype, copy=False).reshape(())
        if reduction == "sum":
            if type(x2) is DeviceArray:
                return DeviceArray.from_numpy(np.asarray(loss_sum, dtype=x.dtype))
            return np.asarray(loss_sum, dtype=x.dtype)
        # every row ignored: nan, as PyTorch (plain floats: np.errstate costs a microsecond)
        mean = loss_sum / weight_sum if weight_sum else float("nan")
        if type(x2) is DeviceArray:  # the loss stays on the input's device
            return DeviceArray.from_numpy(np.asarray(mean, dtype=x.dtype))
        return np.asarray(mean, dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):
        x2, t2, lse = ctx.saved
        if ctx.reduction == "none":
            rows, scale = _ascontig(g.reshape(-1), x2.dtype), 1.0
        elif type(ctx.weight_sum) is DeviceArray:
            # scale = g (/ weight_sum) stays on the GPU: broadcast as per-row grad_output
            s = g.reshape(1) if ctx.reduction == "sum" else (g / ctx.weight_sum).reshape(1)
            rows = _ascontig(s.astype(x2.dtype, copy=False)._broadcast_to((x2.shape[0],)))
            scale = 1.0
        else:
            rows = None
            scale = float(g)
            if ctx.reduction == "mean":
                scale = scale / ctx.weight_sum if ctx.weight_sum else 0.0
        dx2 = _backend.cross_entropy_backward(
            x2, t2, ctx.weight, lse, rows, scale, ctx.ignore_index, ctx.label_smoothing
        )
        shape = ctx.shape
        if len(shape) == 1:
            dx = dx2.reshape(shape)
        elif len(shape) == 2:
            dx = dx2
        else:
            moved = (shape[0],) + shape[2:] + (shape[1],)
            dx = np.moveaxis(dx2.reshape(moved), -1, 1)
        return dx, None, None, None, None, None


# --------------------------------------------------------------------------- normalization
# Fused compiled kernels (csrc/kernels/norms.cpp). Inputs are reshaped to the kernels' layouts,
# (rows, D) for layer/RMS norm and (N, C, L) for batch/group norm: views, no copies, for
# contiguous input. Each forward saves its statistics (mean, 1/std) for the backward, which
# returns the gradients of input, weight and bias from one kernel call.


def _contig(a, dtype):
    if a.dtype == dtype and a.flags.c_contiguous:
        return a
    return _ascontig(a, dtype)


def _vec(a, dtype):
    if a is None or (a.ndim == 1 and a.dtype == dtype and a.flags.c_contiguous):
        return a
    return _ascontig(a.reshape(-1), dtype)


class LayerNorm(Function):
    """LayerNorm (``rms=False``) or RMSNorm (``rms=True``) over the last ``ndim`` dimensions."""

    @classmethod
    def apply(cls, x, weight, bias, ndim, eps, rms):
        # the modules and gf.nn.functional pass checked Tensors (or None) and Python options:
        # record without Function.apply's walk over six arguments
        if not (isinstance(x, Tensor) and (weight is None or isinstance(weight, Tensor))
                and (bias is None or isinstance(bias, Tensor))):
            return super().apply(x, weight, bias, ndim, eps, rms)
        ctx = _new(cls)
        t = _new(Tensor)
        t.data = cls.forward(ctx, x.data, None if weight is None else weight.data,
                             None if bias is None else bias.data, ndim, eps, rms)
        nx = x.requires_grad
        nw = weight is not None and weight.requires_grad
        nb = bias is not None and bias.requires_grad
        if (nx or nw or nb) and is_grad_enabled():
            ctx.inputs = (x, weight, bias, ndim, eps, rms)
            ctx.needs_input_grad = (nx, nw, nb, False, False, False)
            t.requires_grad = True
            t._ctx = ctx
        return t

    @staticmethod
    def forward(ctx, x, weight, bias, ndim, eps, rms):
        dt = x.dtype
        d = math.prod(x.shape[x.ndim - ndim:])
        x2 = _contig(x, dt)
        if x2.ndim != 2 or ndim != 1:
            x2 = x2.reshape(-1, d)
        w, b = _vec(weight, dt), _vec(bias, dt)
        y, mean, rstd = _backend.row_norm_forward(x2, w, b, eps, rms)
        ctx.save_for_backward(x2, w, mean, rstd)
        ctx.rms = rms
        return _shaped(y, x.shape)

    @staticmethod
    def backward(ctx, g):
        x2, w, mean, rstd = ctx.saved
        need = ctx.needs_input_grad
        g2 = _contig(g, x2.dtype).reshape(x2.shape)
        dx, dw, db = _backend.row_norm_backward(
            x2, g2, w, mean, rstd, ctx.rms, need[0], bool(need[1]), bool(need[2])
        )
        x, w, b = ctx.inputs[:3]
        return (_shaped(dx, x.shape), None if w is None else _shaped(dw, w.shape),
                None if b is None else _shaped(db, b.shape), None, None, None)


def _as_ncl(x):
    """(N, C, *) -> contiguous (N, C) or (N, C, L) view."""
    x = _contig(x, x.dtype)
    return x if x.ndim <= 3 else x.reshape(x.shape[0], x.shape[1], -1)


def _shaped(a, shape):
    # reshape only when needed: a fresh base array can become a leaf's .grad without a copy
    return a if a is None or a.shape == shape else a.reshape(shape)


class BatchNorm(Function):
    """Batch normalization over (N, C, *): statistics per channel over N and the rest.

    ``running_mean``/``running_var`` (numpy arrays or None) are updated in place by the kernel
    when ``training``, with ``factor`` (momentum, or 1/num_batches_tracked).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, factor, eps):
        dt = x.dtype
        x3 = _as_ncl(x)
        w, b = _vec(weight, dt), _vec(bias, dt)
        y, mean, rstd = _backend.batch_norm_forward(
            x3, w, b, running_mean, running_var, training, factor, eps
        )
        ctx.save_for_backward(x3, w, mean, rstd)
        ctx.training = training
        return _shaped(y, x.shape)

    @staticmethod
    def backward(ctx, g):
        x3, w, mean, rstd = ctx.saved
        need = ctx.needs_input_grad
        g3 = _contig(g, x3.dtype).reshape(x3.shape)
        dx, dw, db = _backend.batch_norm_backward(
            x3, g3, w, mean, rstd, ctx.training, need[0], bool(need[1]), bool(need[2])
        )
        x_shape = ctx.inputs[0].shape
        return (_shaped(dx, x_shape), dw, db, None, None, None, None, None)


class GroupNorm(Function):
    """Group normalization over (N, C, *) with ``groups`` groups of C/groups channels."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        dt = x.dtype
        x3 = _contig(x, dt).reshape(x.shape[0], x.shape[1], -1)
        w, b = _vec(weight, dt), _vec(bias, dt)
        y, mean, rstd = _backend.group_norm_forward(x3, w, b, groups, eps)
        ctx.save_for_backward(x3, w, mean, rstd)
        ctx.groups = groups
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        x3, w, mean, rstd = ctx.saved
        need = ctx.needs_input_grad
        g3 = _contig(g, x3.dtype).reshape(x3.shape)
        dx, dw, db = _backend.group_norm_backward(
            x3, g3, w, mean, rstd, ctx.groups, need[0], bool(need[1]), bool(need[2])
        )
        x_shape = ctx.inputs[0].shape
        return (_shaped(dx, x_shape), dw, db, None, None)


# --------------------------------------------------------------------------- dropout


class Dropout(Function):
    """Inverted dropout in one compiled pass (csrc/kernels/init.cpp): the Philox mask and the
    scaling by 1/(1-p) are made together; the mask is kept as uint8 (1 byte per element) for
    backward only when a gradient is needed. ``generator`` is a gf.Generator."""

    @staticmethod
    def forward(ctx, x, p, generator, with_mask):
        # C order, aligned (a copy only if not)
        xc = _ascontig(x) if type(x) is DeviceArray else np.require(x, requirements=["C", "A"])
        out, mask = generator._draw(
            lambda seed, offset: _split_blocks(_backend.dropout_forward(xc, seed, offset, p,
                                                                        with_mask))
        )
        ctx.save_for_backward(mask)
        ctx.scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)  # rounded to x's dtype as in forward
        ctx.dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        gc = (_ascontig(g, ctx.dtype) if type(g) is DeviceArray
              else np.require(g, dtype=ctx.dtype, requirements=["C", "A"]))
        return _backend.dropout_backward(gc, mask, ctx.scale), None, None, None


def _split_blocks(result):
    out, mask, blocks = result
    return (out, mask), blocks


# --------------------------------------------------------------------------- activations
# Compiled element-wise kernels (csrc/kernels/activations.cpp): forward is one read and one
# write; backward is one pass over (grad, saved) where `saved` is the forward's output when
# the derivative can be written in it (sigmoid, tanh, relu, elu) and the input otherwise.

# op codes of gradfuse::Activation (csrc/kernels/activations.h)
_SIGMOID, _TANH, _RELU, _LEAKY_RELU, _ELU, _GELU, _GELU_TANH, _SILU, _SOFTPLUS = range(9)
_ACT_NAMES = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "gelu", "silu", "softplus")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _float_array(x, op):
    """The float32/float64 array of Tensor ``x``, or a TypeError naming the argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: input: expected a Tensor, got {type(x).__name__}")
    a = x.data
    if a.dtype not in _FLOATS:
        raise TypeError(
            f"{op}: input: expected a float32 or float64 tensor, got {a.dtype} "
            "(convert with .float() first)"
        )
    return a


def _real(value, name, op):
    """A finite Python float from a hyperparameter, or a ValueError/TypeError naming it."""
    if isinstance(value, Tensor) and value.data.size == 1:
        value = value.data.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                      np.floating)):
        raise TypeError(f"{op}: {name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{op}: {name}: expected a finite number, got {v}")
    return v


def _uses_output(op, a):
    """Whether the backward reads y (else x): activation_backward_uses_output in
    activations.cpp, repeated here to save a call per op (a test checks they agree)."""
    return op <= _RELU or (op == _ELU and a >= 0.0)


def _apply_one(cls, x, *options):
    """``Function.apply`` for an op with exactly one Tensor input and only option arguments.

    The generic walk over arguments costs about a microsecond, as much as the kernel of a
    128x128 relu. ``forward(ctx, record, x, *options)`` gets ``record`` first (positional: a
    keyword costs as much as a check) and saves nothing when no graph is recorded.
    """
    record = x.requires_grad and is_grad_enabled()
    ctx = _new(cls)
    t = _new(Tensor)
    t.data = cls.forward(ctx, record, x.data, *options)
    if record:
        ctx.inputs = (x,)
        ctx.needs_input_grad = (True,)
        t.requires_grad = True
        t._ctx = ctx
    return t


class Activation(Function):
    """``y = f(x)`` for one of the compiled element-wise activations (op code + a, b)."""

    apply = classmethod(_apply_one)

    @staticmethod
    def forward(ctx, record, x, op, a=0.0, b=0.0, inplace=False):
        # x may be strided: the kernel call copies it to C order (the in-place caller writes a
        # strided x back itself), and a strided x saved for backward is copied again there
        uses_out = _uses_output(op, a)
        saved = None
        if record and not uses_out:
            if inplace:
                # leaky_relu keeps the sign of x for slope >= 0, so y serves its backward too;
                # the other ops need x itself, which the in-place write is about to destroy
                uses_out = op == _LEAKY_RELU and a >= 0.0
                saved = None if uses_out else x.copy()
            else:
                saved = x
        out = x if inplace and x.flags.c_contiguous else None
        y = _backend.activation_forward(op, x, a, b, out)
        if record:
            ctx.op, ctx.a, ctx.b = op, a, b
            ctx.saved = (y if uses_out else saved,)
        return y

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved
        if g.dtype != s.dtype:
            g = g.astype(s.dtype)
        # a strided g (the broadcast gradient of a sum) is copied to C order by the binding
        return (_backend.activation_backward(ctx.op, g, s, ctx.a, ctx.b),)


def _activation(x, op, a=0.0, b=0.0):
    if type(x) is not Tensor:
        _float_array(x, _ACT_NAMES[op])  # raises, or accepts a Tensor subclass
    if x.requires_grad and is_grad_enabled():
        return _apply_one(Activation, x, op, a, b)
    # nothing to record (inference, or an input that needs no gradient): just the kernel,
    # which also checks the dtype
    t = _new(Tensor)
    t.data = _backend.activation_forward(op, x.data, a, b, None)
    return t


def _activation_(x, op, a=0.0, b=0.0):
    """In place: ``x.data`` is overwritten and ``x`` is returned.

    Without a version counter gradfuse cannot see every tensor that still needs the old
    values, so this refuses what it can detect (a leaf that requires grad, a producer that
    saved its output for its backward) and documents the rest (see the README).
    """
    name = _ACT_NAMES[op] + "_"
    data = _float_array(x, name)
    if not data.flags.writeable:
        raise ValueError(f"{name}: input: the tensor's array is read-only")
    if not (x.requires_grad and is_grad_enabled()):
        if data.flags.c_contiguous:
            _backend.activation_forward(op, data, a, b, data)
        else:
            data[...] = _backend.activation_forward(op, _ascontig(data), a, b, None)
        return x
    node = x._ctx
    if node is None:
        raise RuntimeError(
            f"{name}: a leaf Variable that requires grad is being used in an in-place operation"
        )
    if any(isinstance(s, np.ndarray) and np.may_share_memory(s, data) for s in node.saved):
        raise RuntimeError(
            f"{name}: {type(node).__name__} saved this tensor's values for its backward; an "
            "in-place update would corrupt its gradient (use the out-of-place form)"
        )
    # The graph is rebased as PyTorch does: the old node's output becomes an anonymous tensor
    # sharing x's array, and x itself becomes the output of the new node.
    old = Tensor.__new__(Tensor)
    old.data, old.requires_grad, old._ctx = data, True, node
    out = Activation.apply(old, op, a, b, True)
    if out.data is not data:  # a non-contiguous x was computed in a copy
        data[...] = out.data
    x._ctx = out._ctx
    return x


def sigmoid(input) -> Tensor:
    """``1 / (1 + exp(-x))``, overflow-free for any x (compiled kernel).

    Shapes: any -> same. float32/float64.

    Example::

        >>> gf.sigmoid(gf.tensor([0.0, 1e30, -1e30])).tolist()
        [0.5, 1.0, 0.0]
    """
    return _activation(input, _SIGMOID)


def tanh(input) -> Tensor:
    """Hyperbolic tangent (compiled kernel). Shapes: any -> same.

    Example::

        >>> gf.tanh(gf.tensor([0.0, 1e30])).tolist()
        [0.0, 1.0]
    """
    return _activation(input, _TANH)


def relu(input, inplace: bool = False) -> Tensor:
    """``max(x, 0)`` (NaN stays NaN, as in PyTorch). Shapes: any -> same.

    Example::

        >>> gf.relu(gf.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """
    return _activation_(input, _RELU) if inplace else _activation(input, _RELU)


def relu_(input) -> Tensor:
    """In-place :func:`relu`; returns ``input``."""
    return _activation_(input, _RELU)


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """``x if x > 0 else negative_slope * x``. Shapes: any -> same.

    Example::

        >>> gf.nn.functional.leaky_relu(gf.tensor([-2.0, 3.0]), 0.5).tolist()
        [-1.0, 3.0]
    """
    s = _real(negative_slope, "negative_slope", "leaky_relu")
    return (_activation_ if inplace else _activation)(input, _LEAKY_RELU, s)


def leaky_relu_(input, negative_slope: float = 0.01) -> Tensor:
    """In-place :func:`leaky_relu`; returns ``input``."""
    return _activation_(input, _LEAKY_RELU, _real(negative_slope, "negative_slope", "leaky_relu_"))


def elu(input, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``x if x > 0 else alpha * (exp(x) - 1)`` (expm1-accurate near 0). Shapes: any -> same.

    For ``alpha >= 0`` the backward reads the output, ``dy/dx = y + alpha`` for ``x <= 0`` (as
    PyTorch's in-place ELU): exact to ``ulp(alpha)`` in absolute terms, so a gradient below
    about ``1e-7 * alpha`` (float32, x < -16) rounds to 0.

    Example::

        >>> round(gf.nn.functional.elu(gf.tensor([-1.0]), alpha=2.0).item(), 4)
        -1.2642
    """
    a = _real(alpha, "alpha", "elu")
    return (_activation_ if inplace else _activation)(input, _ELU, a)


def elu_(input, alpha: float = 1.0) -> Tensor:
    """In-place :func:`elu`; returns ``input``."""
    return _activation_(input, _ELU, _real(alpha, "alpha", "elu_"))


def gelu(input, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit: ``x * Phi(x)`` (``approximate='none'``, exact erf) or
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (``approximate='tanh'``).

    Example::

        >>> round(gf.nn.functional.gelu(gf.tensor([1.0])).item(), 4)
        0.8413
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate: expected 'none' or 'tanh', got {approximate!r}")
    return _activation(input, _GELU if approximate == "none" else _GELU_TANH)


def silu(input, inplace: bool = False) -> Tensor:
    """``x * sigmoid(x)`` (swish). Shapes: any -> same.

    In place with autograd recording keeps a copy of the input (the backward needs x).

    Example::

        >>> round(gf.nn.functional.silu(gf.tensor([1.0])).item(), 4)
        0.7311
    """
    return _activation_(input, _SILU) if inplace else _activation(input, _SILU)


def softplus(input, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta``, and ``x`` where ``beta x > threshold``.

    Computed as ``(max(z, 0) + log1p(exp(-|z|))) / beta`` with ``z = beta x``: no overflow
    for any threshold. ``beta`` must be nonzero (PyTorch would divide by 0); negative beta and
    threshold are accepted as in PyTorch.

    Example::

        >>> round(gf.nn.functional.softplus(gf.tensor([0.0])).item(), 4)
        0.6931
    """
    b = _real(beta, "beta", "softplus")
    if b == 0.0:
        raise ValueError("softplus: beta: expected a nonzero number, got 0.0")
    t = _real(threshold, "threshold", "softplus")
    return _activation(input, _SOFTPLUS, b, t)


class Softmax(Function):
    """softmax (``log=False``) or log_softmax along ``dim`` (compiled, one row in cache)."""

    apply = classmethod(_apply_one)

    @staticmethod
    def forward(ctx, record, x, dim, log):
        y = _backend.softmax_forward(x, dim, log)  # copies a strided x to C order itself
        if record:
            ctx.saved = (y,)
            ctx.dim, ctx.log = dim, log
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        if g.dtype != y.dtype:
            g = g.astype(y.dtype)
        return (_backend.softmax_backward(g, y, ctx.dim, ctx.log),)


def _softmax(input, dim, dtype, log):
    if type(input) is Tensor and type(dim) is int and dtype is None:
        # the common call: the binding checks dtype and dim (IndexError naming dim) itself
        if input.requires_grad and is_grad_enabled():
            return _apply_one(Softmax, input, dim, log)
        t = _new(Tensor)
        t.data = _backend.softmax_forward(input.data, dim, log)
        return t
    op = "log_softmax" if log else "softmax"
    if dim is None:
        raise TypeError(f"{op}: dim: expected an int (the implicit dim of old PyTorch is not "
                        "supported)")
    if dtype is not None:
        if not isinstance(input, Tensor):
            raise TypeError(f"{op}: input: expected a Tensor, got {type(input).__name__}")
        input = input.to(dtype)
    x = _float_array(input, op)
    d = dim_index(dim, x.ndim)
    return Softmax.apply(input, d, log)


def softmax(input, dim: int, dtype=None) -> Tensor:
    """``exp(x - max) / sum(exp(x - max))`` along ``dim``. Shapes: any -> same.

    ``dtype`` casts the input first (as PyTorch's argument).

    Example::

        >>> gf.softmax(gf.tensor([[0.0, 0.0]]), dim=1).tolist()
        [[0.5, 0.5]]
    """
    return _softmax(input, dim, dtype, False)


def log_softmax(input, dim: int, dtype=None) -> Tensor:
    """``x - max - log(sum(exp(x - max)))`` along ``dim``. Shapes: any -> same.

    Example::

        >>> round(gf.log_softmax(gf.tensor([0.0, 0.0]), dim=0)[0].item(), 4)
        -0.6931
    """
    return _softmax(input, dim, dtype, True)
