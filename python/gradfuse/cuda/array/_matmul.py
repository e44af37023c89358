"""DeviceArray matrix products through cuBLAS: strided operands passed as they are (a
transposed view is ``op T``, no copy), batched and broadcast."""

from __future__ import annotations

import builtins

import numpy as np

from . import _F32, _F64, DeviceArray, _code, _cu, _prod, empty
from ._elementwise import _as_operand, _cast_operand
from ._reductions import _finish


def _matrix_layout(x, rows, cols):
    """(trans, ld) when the last two axes of x can be read by cuBLAS as they are, else None."""
    r, c = x._st[-2], x._st[-1]
    if (c == 1 or cols == 1) and (r >= cols or rows == 1):
        return False, builtins.max(r if rows > 1 else cols, cols, 1)
    if (r == 1 or rows == 1) and (c >= rows or cols == 1):
        return True, builtins.max(c if cols > 1 else rows, rows, 1)
    return None


def _batch_stride(x, bshape):
    """The one element stride between consecutive matrices of x broadcast to bshape."""
    if not bshape:
        return 0
    b = x._broadcast_to(bshape + x.shape[-2:])
    st = b._st[: len(bshape)]
    nz = [(s, t) for s, t in zip(bshape, st) if s != 1]
    if not nz:
        return 0
    if all(t == 0 for _, t in nz):
        return 0
    for (_, t0), (s1, t1) in zip(nz, nz[1:]):
        if t0 != t1 * s1:
            return None
    return nz[-1][1]


def _matmul(a, b, out=None):
    a, b = _as_operand(a, "matmul"), _as_operand(b, "matmul")
    if not isinstance(a, DeviceArray) or not isinstance(b, DeviceArray):
        raise ValueError("matmul: Input operand does not have enough dimensions")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: Input operand does not have enough dimensions")
    ct = np.result_type(a.dtype, b.dtype)
    if ct not in (_F32, _F64):
        raise TypeError(f"matmul on cuda: float32 or float64 operands only, got {ct}")
    a, b = _cast_operand(a, ct), _cast_operand(b, ct)
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    m, k = a2.shape[-2:]
    k2, n = b2.shape[-2:]
    if k != k2:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned ({k} != {k2})")
    bshape = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    batch = _prod(bshape)
    ops = []
    for x, rows, cols in ((a2, m, k), (b2, k, n)):
        lay = _matrix_layout(x, rows, cols) if x.size else (False, builtins.max(cols, 1))
        sb = _batch_stride(x, bshape)
        if lay is None or sb is None:
            x = x._broadcast_to(bshape + x.shape[-2:]).copy() if bshape else x.copy()
            lay, sb = (False, builtins.max(cols, 1)), (rows * cols if bshape else 0)
        ops.append((x, lay[0], lay[1], sb))
    res = empty(bshape + (m, n), ct)
    (xa, ta, lda, sa), (xb, tb, ldb, sbb) = ops
    if res.size:
        _cu().gemm(_code(ct), ta, tb, m, n, k, xa.ptr, lda, sa, xb.ptr, ldb, sbb, res.ptr,
                   builtins.max(n, 1), m * n, builtins.max(batch, 1))
    if a.ndim == 1 and b.ndim == 1:
        res = res.reshape(())
    elif a.ndim == 1:
        res = res.reshape(bshape + (n,))
    elif b.ndim == 1:
        res = res.reshape(bshape + (m,))
    return _finish(res, out)


def _dot(a, b, out=None):
    if isinstance(a, DeviceArray) and isinstance(b, DeviceArray) and a.ndim <= 2 and b.ndim <= 2:
        return _matmul(a, b, out)
    raise TypeError("numpy.dot on cuda supports 1-D and 2-D arrays only")
