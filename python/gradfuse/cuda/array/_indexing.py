"""DeviceArray shapes and indexing: axis checks, no-copy reshape views, basic index views
and integer-array gathers (``take``)."""

from __future__ import annotations

import builtins
import operator

import numpy as np

from . import DeviceArray, _code, _cu, _prod, empty, from_numpy


def _axis(a, ndim) -> int:
    top = builtins.max(ndim, 1)
    if not isinstance(a, (int, np.integer)) or not -top <= a < top:
        raise ValueError(f"axis {a} is out of bounds for array of dimension {ndim}")
    return int(a) % builtins.max(ndim, 1)


def _axes(axis, ndim) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        out = tuple(_axis(a, ndim) for a in axis)
    else:
        out = (_axis(axis, ndim),)
    if len(set(out)) != len(out):
        raise ValueError(f"axis: duplicate value in {axis}")
    return out


def _resolve_shape(shape, size) -> tuple:
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ValueError("can only specify one unknown dimension")
    if -1 in shape:
        known = _prod(s for s in shape if s != -1)
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    if _prod(shape) != size:
        raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
    return shape


def _reshape_view(a, shape):
    """numpy's no-copy reshape of a strided array (None: the layout needs a copy)."""
    if a.size == 0:
        return None
    olds = [(s, t) for s, t in zip(a.shape, a._st) if s != 1]
    dims = list(shape)
    st = [0] * len(dims)
    oi, oj, ni, nj = 0, 1, 0, 1
    while ni < len(dims) and oi < len(olds):
        pn, po = dims[ni], olds[oi][0]
        while pn != po:
            if pn < po:
                pn *= dims[nj]
                nj += 1
            else:
                po *= olds[oj][0]
                oj += 1
        for ok in range(oi, oj - 1):  # the old run must be one stride apart
            if olds[ok][1] != olds[ok + 1][0] * olds[ok + 1][1]:
                return None
        st[nj - 1] = olds[oj - 1][1]
        for nk in range(nj - 1, ni, -1):
            st[nk - 1] = st[nk] * dims[nk]
        ni, nj, oi, oj = nj, nj + 1, oj, oj + 1
    return a._view(tuple(shape), tuple(st))


def _split_index(index, ndim):
    """(basic index items, (position, integer index array) | None)."""
    items = index if isinstance(index, tuple) else (index,)
    basic, adv = [], None
    for it in items:
        if isinstance(it, (DeviceArray, np.ndarray, list)):
            arr = it
            if isinstance(arr, list):
                arr = np.asarray(arr)
            if arr.dtype == np.bool_:
                raise TypeError("cuda: boolean-mask indexing is not supported")
            if arr.dtype.kind not in "iu":
                raise TypeError(f"index: arrays used as indices must be integers, got {arr.dtype}")
            if adv is not None:
                raise TypeError("cuda: indexing with more than one integer array is not supported")
            adv = (len([b for b in basic if b is not None]), arr)
            basic.append(slice(None))
        else:
            basic.append(it)
    return tuple(basic), adv


def _basic_view(a, items):
    n_ell = builtins.sum(1 for it in items if it is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = builtins.sum(1 for it in items if it is not None and it is not Ellipsis)
    if used > a.ndim:
        raise IndexError(f"too many indices for array: array is {a.ndim}-dimensional, but "
                         f"{used} were indexed")
    if n_ell:
        k = items.index(Ellipsis)
        items = items[:k] + (slice(None),) * (a.ndim - used) + items[k + 1:]
    else:
        items = items + (slice(None),) * (a.ndim - used)
    shape, st, off, d = [], [], 0, 0
    for it in items:
        if it is None:
            shape.append(1)
            st.append(0)
            continue
        n = a.shape[d]
        if isinstance(it, slice):
            start, stop, step = it.indices(n)
            m = builtins.max(0, (stop - start + (step - (1 if step > 0 else -1))) // step)
            shape.append(m)
            st.append(a._st[d] * step)
            off += start * a._st[d] if m else 0
        else:
            try:
                i = operator.index(it)
            except TypeError:
                raise TypeError(f"index: {type(it).__name__} is not a valid index") from None
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {d} with size {n}")
            off += (i % n) * a._st[d]
        d += 1
    return a._view(tuple(shape), tuple(st), off)


def _device_index(idx, n):
    """An int64 device index array; host indices are bounds-checked here."""
    if isinstance(idx, DeviceArray):
        return idx.astype(np.int64, copy=False).ascontiguous()
    idx = np.asarray(idx)
    if idx.size and (idx.max() >= n or idx.min() < -n):
        bad = idx.max() if idx.max() >= n else idx.min()
        raise IndexError(f"index {bad} is out of bounds for size {n}")
    return from_numpy(idx.astype(np.int64))


def _take(a, idx, axis):
    """numpy.take(a, idx, axis): idx any shape, replacing dimension ``axis``."""
    axis = _axis(axis, a.ndim)
    n = a.shape[axis]
    ishape = idx.shape
    di = _device_index(idx, n).reshape(-1)
    src = a.ascontiguous()
    outer = _prod(a.shape[:axis])
    inner = _prod(a.shape[axis + 1:])
    m = di.size
    out = empty(a.shape[:axis] + (m,) + a.shape[axis + 1:], a.dtype)
    _cu().take(0, _code(a.dtype), out.ptr, src.ptr, di.ptr, outer, n, inner, m)
    return out.reshape(a.shape[:axis] + tuple(ishape) + a.shape[axis + 1:])
