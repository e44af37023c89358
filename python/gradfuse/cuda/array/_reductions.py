"""DeviceArray reductions: sum / mean / max / min / argmax / argmin over any axes (fixed
chunking in the kernel: the same bits on every run)."""

from __future__ import annotations

import numpy as np

from . import _F64, _R_SUM, _code, _cu, _prod, empty
from ._elementwise import _binary, _copy_into
from ._indexing import _axes, _axis


def _reduce_core(a, op, axes, out_dtype):
    """Reduce ``axes`` of ``a``; returns the result with the reduced axes dropped."""
    nd = a.ndim
    kept = [d for d in range(nd) if d not in axes]
    out_shape = tuple(a.shape[d] for d in kept)
    n = _prod(a.shape[d] for d in axes)
    srt = sorted(axes)
    adjacent = not srt or srt[-1] - srt[0] + 1 == len(srt)
    if a._is_contig() and adjacent:
        src = a
        first = srt[0] if srt else nd
        last = srt[-1] if srt else nd - 1
        outer, inner = _prod(a.shape[:first]), _prod(a.shape[last + 1:])
    else:
        src = a.transpose(kept + srt).copy()
        outer, inner = _prod(out_shape), 1
    if n == 0 and op != _R_SUM:
        raise ValueError("zero-size array to reduction operation which has no identity")
    out = empty(out_shape, out_dtype)
    _cu().reduce(op, _code(src.dtype), out.ptr, src.ptr, outer, n, inner)
    return out


def _keep(res, a, axes, keepdims):
    if not keepdims:
        return res
    return res.reshape(tuple(1 if d in axes else s for d, s in enumerate(a.shape)))


def _finish(res, out):
    if out is None:
        return res
    o = out[0] if isinstance(out, tuple) else out
    _copy_into(o, res)
    return o


def _sum_dtype(dt):
    return np.dtype(np.int64) if dt.kind in "biu" else dt


def _sum(a, axis=None, keepdims=False, dtype=None, out=None):
    axes = _axes(axis, a.ndim)
    src = a
    acc = np.dtype(dtype) if dtype is not None else _sum_dtype(a.dtype)
    if src.dtype != acc:
        src = src.astype(acc)
    res = _keep(_reduce_core(src, _R_SUM, axes, acc), a, axes, keepdims)
    return _finish(res, out)


def _mean(a, axis=None, keepdims=False, dtype=None, out=None):
    axes = _axes(axis, a.ndim)
    n = _prod(a.shape[d] for d in axes)
    dt = np.dtype(dtype) if dtype is not None else (_F64 if a.dtype.kind in "biu" else a.dtype)
    s = _sum(a, axis, keepdims, dt)
    res = _binary("true_divide", s, float(n) if n else float("nan"))
    if n == 0:
        res = _binary("multiply", res, float("nan"))
    return _finish(res, out)


def _reduce(a, op, axis=None, keepdims=False):
    axes = _axes(axis, a.ndim)
    src = a.astype(np.uint8) if a.dtype == np.bool_ else a
    res = _reduce_core(src, op, axes, src.dtype)
    if a.dtype == np.bool_:
        res = res.astype(np.bool_)
    return _keep(res, a, axes, keepdims)


def _arg(a, op, axis=None, keepdims=False):
    if axis is None:
        flat = a.ravel() if a._is_contig() else a.copy().ravel()
        res = _reduce_core(flat, op, (0,), np.int64)
        return res.reshape((1,) * a.ndim) if keepdims else res
    ax = _axis(axis, a.ndim)
    src = a.astype(np.uint8) if a.dtype == np.bool_ else a
    res = _reduce_core(src, op, (ax,), np.int64)
    return _keep(res, a, (ax,), keepdims)
