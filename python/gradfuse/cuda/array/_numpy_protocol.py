"""The numpy functions and ufuncs a DeviceArray implements (``__array_ufunc__`` and
``__array_function__``), so gradfuse's autograd Functions run unchanged on device data."""

from __future__ import annotations

import builtins

import numpy as np

from . import (
    _BINARY,
    _R_ARGMAX,
    _R_ARGMIN,
    _R_MAX,
    _R_MIN,
    _UNARY,
    DeviceArray,
    _code,
    _cu,
    _prod,
    empty,
    from_numpy,
    full,
    mixed_device_error,
)
from ._elementwise import (
    _as_operand,
    _binary,
    _check_cast,
    _copy_into,
    _dt_of,
    _is_scalar,
    _unary,
    _where,
)
from ._indexing import _axis, _device_index, _take
from ._matmul import _dot, _matmul
from ._reductions import _arg, _finish, _mean, _reduce, _sum


def _ufunc(ufunc, method, inputs, kwargs):
    name = ufunc.__name__
    out = kwargs.pop("out", None)
    dtype = kwargs.pop("dtype", None)
    casting = kwargs.pop("casting", "same_kind")
    kwargs.pop("where", None) if kwargs.get("where", True) is True else None
    if kwargs:
        raise TypeError(f"numpy.{name} on cuda: unsupported arguments {sorted(kwargs)}")
    if method == "at" and name == "add":
        target, idx, vals = inputs
        return _add_at(target, idx, vals)
    if method == "reduce" and name in ("add", "maximum", "minimum"):
        a, axis = inputs[0], 0
        fn = {"add": _sum, "maximum": lambda x, ax, kd: _reduce(x, _R_MAX, ax, kd),
              "minimum": lambda x, ax, kd: _reduce(x, _R_MIN, ax, kd)}[name]
        return fn(a, axis, False)
    if method != "__call__":
        raise TypeError(f"numpy.{name}.{method} is not supported on cuda arrays")
    if name == "matmul":
        return _matmul(*inputs, out=out)
    if name in _BINARY and len(inputs) == 2:
        return _binary(name, inputs[0], inputs[1], out=out, dtype=dtype, casting=casting)
    if name in _UNARY and len(inputs) == 1:
        return _unary(name, inputs[0], out=out, dtype=dtype, casting=casting)
    if name == "positive":
        return _finish(inputs[0].copy(), out)
    raise TypeError(
        f"numpy.{name} is not supported on cuda arrays (gradfuse.cuda.DeviceArray)"
    )


def _add_at(target, idx, vals):
    if isinstance(idx, tuple):
        if len(idx) != 1:
            raise TypeError("numpy.add.at on cuda: one integer index array (along axis 0) only")
        idx = idx[0]
    if not isinstance(target, DeviceArray):
        raise mixed_device_error("add.at", "cpu", "cuda:0")
    n = target.shape[0]
    if isinstance(idx, (int, np.integer)):
        idx = np.asarray([idx])
        vals = vals if not isinstance(vals, DeviceArray) else vals.reshape((1,) + vals.shape)
    di = _device_index(idx, n).reshape(-1)
    m = di.size
    inner = _prod(target.shape[1:])
    src = vals
    full_shape = (m,) + target.shape[1:]
    if not isinstance(src, DeviceArray):
        src = full(full_shape, float(src), target.dtype)
    src = src.astype(target.dtype, copy=False)._broadcast_to(full_shape).ascontiguous()
    if not target._is_contig():
        raise TypeError("numpy.add.at on cuda: the target must be contiguous")
    _cu().take(1, _code(target.dtype), target.ptr, src.ptr, di.ptr, 1, n, inner, m)


def _along(kind, a, idx, axis, vals=None):
    axis = _axis(axis, a.ndim)
    if not isinstance(idx, DeviceArray):
        idx = from_numpy(np.asarray(idx, np.int64))
    idx = idx.astype(np.int64, copy=False).ascontiguous()
    n = a.shape[axis]
    outer = _prod(idx.shape[:axis])
    inner = _prod(idx.shape[axis + 1:])
    m = idx.shape[axis]
    if kind == 2:
        if idx.shape[:axis] != a.shape[:axis] or idx.shape[axis + 1:] != a.shape[axis + 1:]:
            raise ValueError("take_along_axis on cuda: index must match the array outside axis")
        src = a.ascontiguous()
        out = empty(idx.shape, a.dtype)
        _cu().take(2, _code(a.dtype), out.ptr, src.ptr, idx.ptr, outer, n, inner, m)
        return out
    if not a._is_contig():
        raise TypeError("put_along_axis on cuda: the target must be contiguous")
    v = vals if isinstance(vals, DeviceArray) else full(idx.shape, float(vals), a.dtype)
    v = v.astype(a.dtype, copy=False)._broadcast_to(idx.shape).ascontiguous()
    _cu().take(3, _code(a.dtype), a.ptr, v.ptr, idx.ptr, outer, n, inner, m)


def _like(fill):
    def f(a, dtype=None, order="K", subok=True, shape=None, **kw):
        shp = a.shape if shape is None else shape
        dt = a.dtype if dtype is None else dtype
        return empty(shp, dt) if fill is None else full(shp, fill, dt)

    return f


def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None):
    return full(a.shape if shape is None else shape, fill_value,
                a.dtype if dtype is None else dtype)


def _concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = [_as_operand(x, "concatenate") for x in arrays]
    if not all(isinstance(x, DeviceArray) for x in arrays):
        raise mixed_device_error("concatenate", "cuda:0", "cpu")
    ax = _axis(axis, arrays[0].ndim)
    dt = np.result_type(*[x.dtype for x in arrays]) if dtype is None else np.dtype(dtype)
    shape = list(arrays[0].shape)
    shape[ax] = builtins.sum(x.shape[ax] for x in arrays)
    res = empty(tuple(shape), dt)
    pos = 0
    for x in arrays:
        sl = [slice(None)] * len(shape)
        sl[ax] = slice(pos, pos + x.shape[ax])
        _copy_into(res[tuple(sl)], x)
        pos += x.shape[ax]
    return _finish(res, out)


def _stack(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = [_as_operand(x, "stack") for x in arrays]
    if not all(isinstance(x, DeviceArray) for x in arrays):
        raise mixed_device_error("stack", "cuda:0", "cpu")
    ax = _axis(axis, arrays[0].ndim + 1)
    return _concatenate([_expand_dims(x, ax) for x in arrays], ax, out, dtype)


def _split(a, indices_or_sections, axis=0):
    ax = _axis(axis, a.ndim)
    n = a.shape[ax]
    if isinstance(indices_or_sections, (int, np.integer)):
        k = int(indices_or_sections)
        if n % k:
            raise ValueError("array split does not result in an equal division")
        cuts = [n // k * i for i in range(1, k)]
    else:
        cuts = [int(c) for c in indices_or_sections]
    bounds = [0] + cuts + [n]
    outs = []
    for lo, hi in zip(bounds, bounds[1:]):
        sl = [slice(None)] * a.ndim
        sl[ax] = slice(lo, hi)
        outs.append(a[tuple(sl)])
    return outs


def _expand_dims(a, axis):
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    nd = a.ndim + len(axes)
    axes = sorted(_axis(x, nd) for x in axes)
    shape = list(a.shape)
    for x in axes:
        shape.insert(x, 1)
    return a.reshape(tuple(shape))


def _moveaxis(a, source, destination):
    src = [_axis(s, a.ndim) for s in (source if isinstance(source, (tuple, list)) else (source,))]
    dst = [_axis(s, a.ndim)
           for s in (destination if isinstance(destination, (tuple, list)) else (destination,))]
    order = [n for n in range(a.ndim) if n not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return a.transpose(order)


def _copyto(dst, src, casting="same_kind", where=True):
    if where is not True:
        raise TypeError("numpy.copyto on cuda: where= is not supported")
    if not isinstance(dst, DeviceArray):
        raise mixed_device_error("copyto", "cpu", "cuda:0")
    if isinstance(src, np.ndarray) and src.ndim and casting != "unsafe":
        _check_cast(src.dtype, dst.dtype, casting, "copyto")
    _copy_into(dst, src, casting)


def _require(a, dtype=None, requirements=None):
    if dtype is not None and np.dtype(dtype) != a.dtype:
        a = a.astype(dtype)
    return a.ascontiguous()


def _isclose_all(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    raise TypeError("numpy.allclose is not supported on cuda arrays; compare .numpy() copies")


_FUNCTIONS = {
    np.sum: lambda a, axis=None, dtype=None, out=None, keepdims=False, **k: _sum(
        a, axis, keepdims, dtype, out),
    np.mean: lambda a, axis=None, dtype=None, out=None, keepdims=False, **k: _mean(
        a, axis, keepdims, dtype, out),
    np.max: lambda a, axis=None, out=None, keepdims=False, **k: _finish(
        _reduce(a, _R_MAX, axis, keepdims), out),
    np.min: lambda a, axis=None, out=None, keepdims=False, **k: _finish(
        _reduce(a, _R_MIN, axis, keepdims), out),
    np.argmax: lambda a, axis=None, out=None, keepdims=False: _finish(
        _arg(a, _R_ARGMAX, axis, keepdims), out),
    np.argmin: lambda a, axis=None, out=None, keepdims=False: _finish(
        _arg(a, _R_ARGMIN, axis, keepdims), out),
    np.any: lambda a, axis=None, out=None, keepdims=False: _finish(a.any(axis, keepdims), out),
    np.all: lambda a, axis=None, out=None, keepdims=False: _finish(a.all(axis, keepdims), out),
    np.dot: _dot,
    np.where: _where,
    np.zeros_like: _like(0),
    np.ones_like: _like(1),
    np.empty_like: _like(None),
    np.full_like: _full_like,
    np.transpose: lambda a, axes=None: a.transpose(*(() if axes is None else (axes,))),
    np.swapaxes: lambda a, axis1, axis2: a.swapaxes(axis1, axis2),
    np.moveaxis: _moveaxis,
    np.expand_dims: _expand_dims,
    np.squeeze: lambda a, axis=None: a.squeeze(axis),
    np.reshape: lambda a, shape=None, order="C", **k: a.reshape(
        shape if shape is not None else k["newshape"]),
    np.ravel: lambda a, order="C": a.ravel(),
    np.broadcast_to: lambda array, shape, subok=False: array._broadcast_to(
        (shape,) if isinstance(shape, int) else shape),
    np.copyto: _copyto,
    np.concatenate: _concatenate,
    np.stack: _stack,
    np.split: _split,
    np.take: lambda a, indices, axis=None, out=None, mode="raise": _finish(
        _take(a if axis is not None else a.ravel(), indices if not _is_scalar(indices)
              else np.asarray([indices]), 0 if axis is None else axis).reshape(
            np.shape(indices) if axis is None else
            a.shape[:_axis(axis, a.ndim)] + np.shape(indices) + a.shape[_axis(axis, a.ndim) + 1:]),
        out),
    np.take_along_axis: lambda arr, indices, axis: _along(2, arr, indices, axis),
    np.put_along_axis: lambda arr, indices, values, axis: _along(3, arr, indices, axis, values),
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a, axis=None: a.size if axis is None else a.shape[axis],
    np.require: _require,
    np.may_share_memory: lambda a, b, max_work=None: (
        isinstance(a, DeviceArray) and isinstance(b, DeviceArray) and a._buf is b._buf),
    np.shares_memory: lambda a, b, max_work=None: (
        isinstance(a, DeviceArray) and isinstance(b, DeviceArray) and a._buf is b._buf),
    np.result_type: lambda *args: np.result_type(*[_dt_of(x) for x in args]),
    np.allclose: _isclose_all,
    np.prod: lambda a, *args, **k: _unsupported("prod"),
}


def _unsupported(name):
    raise TypeError(f"numpy.{name} is not supported on cuda arrays (gradfuse.cuda.DeviceArray)")
