"""A numpy stand-in for the compiled ``_C.cuda`` module (host memory, same call signatures).

It lets the CPU-only CI run every DeviceArray / Tensor-on-device test through the Python
layer (strides, broadcasting, dtype promotion, reductions, cuBLAS operand layouts, autograd,
device checks): tests/test_cuda.py runs each such test against this fake AND, where a GPU is
present, against the real kernels, with the same assertions.
"""

import ctypes

import numpy as np
from numpy.lib.stride_tricks import as_strided

_DT = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_]


def _view(ptr, code, shape, strides):
    dt = np.dtype(_DT[code])
    it = dt.itemsize
    shape = tuple(int(s) for s in shape)
    if any(s == 0 for s in shape):
        return np.empty(shape, dt)
    lo = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
    nbytes = (hi - lo + 1) * it
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr + lo * it))
    base = raw.view(dt)
    return as_strided(base[-lo:], shape, [s * it for s in strides])


def _operand(ptr, code, shape, strides, value):
    if ptr == 0:
        return np.full(shape, value).astype(_DT[code])
    return _view(ptr, code, shape, strides)


class DeviceBuffer:
    def __init__(self, nbytes):
        self._mem = np.empty(int(nbytes) + 256, np.uint8)
        addr = self._mem.ctypes.data
        self.ptr = addr + (-addr) % 256
        self.nbytes = int(nbytes)
        _stats["alloc_calls"] += 1
        _stats["malloc_calls"] += 1


_stats = {"alloc_calls": 0, "malloc_calls": 0, "cache_hits": 0, "allocated_bytes": 0,
          "reserved_bytes": 0, "peak_allocated_bytes": 0}


def device_count():
    return 1, ""


def device_properties(device=0):
    return {"name": "fake", "major": 0, "minor": 0, "total_memory": 0,
            "multi_processor_count": 1, "peak_bandwidth_gbs": 0.0, "compiled_archs": ""}


def synchronize():
    pass


def memory_stats():
    return dict(_stats)


def reset_alloc_counters():
    for k in ("alloc_calls", "malloc_calls", "cache_hits"):
        _stats[k] = 0


def empty_cache():
    pass


def upload(dst, src):
    src = np.ascontiguousarray(src)
    ctypes.memmove(dst, src.ctypes.data, src.nbytes)


def download(dst, src):
    ctypes.memmove(dst.ctypes.data, src, dst.nbytes)


def memcpy(dst, src, nbytes):
    ctypes.memmove(dst, src, nbytes)


def copy(dst, dst_dtype, dst_strides, src, src_dtype, src_strides, value, shape):
    out = _view(dst, dst_dtype, shape, dst_strides)
    s = _operand(src, src_dtype, shape, src_strides, value)
    out[...] = s.astype(out.dtype) if _DT[dst_dtype] is not np.bool_ else (s != 0)


_UN = [np.negative, np.exp, np.log, np.sqrt, np.abs, np.sign, np.tanh, np.trunc, np.floor,
       np.ceil, lambda x: 1 / x, np.square, np.log1p, np.expm1, np.sin, np.cos,
       np.logical_not, np.isfinite, np.isnan, np.isinf]
_BIN = [np.add, np.subtract, np.multiply, np.true_divide, np.power, np.maximum, np.minimum,
        np.logical_and, np.logical_or, np.equal, np.not_equal, np.less, np.less_equal,
        np.greater, np.greater_equal]


def unary(op, dtype, out, out_strides, a, a_strides, av, shape):
    x = _operand(a, dtype, shape, a_strides, av)
    code = 5 if op >= 17 else dtype
    o = _view(out, code, shape, out_strides)
    with np.errstate(all="ignore"):
        r = _UN[op](x)
    o[...] = r.astype(o.dtype)


def binary(op, dtype, out, out_strides, a, a_strides, av, b, b_strides, bv, shape):
    x = _operand(a, dtype, shape, a_strides, av)
    y = _operand(b, dtype, shape, b_strides, bv)
    code = 5 if op >= 9 else dtype
    o = _view(out, code, shape, out_strides)
    with np.errstate(all="ignore"):
        r = _BIN[op](x, y)
    o[...] = r.astype(o.dtype)


def where(dtype, out, out_strides, c, c_strides, cv, a, a_strides, av, b, b_strides, bv, shape):
    cc = _operand(c, 5, shape, c_strides, cv)
    x = _operand(a, dtype, shape, a_strides, av)
    y = _operand(b, dtype, shape, b_strides, bv)
    _view(out, dtype, shape, out_strides)[...] = np.where(cc, x, y)


def reduce(op, dtype, out, inp, outer, n, inner):
    x = _view(inp, dtype, (outer, n, inner), (n * inner, inner, 1))
    if op >= 3:
        o = _view(out, 2, (outer, inner), (inner, 1))
        o[...] = (np.argmax if op == 3 else np.argmin)(x, axis=1)
        return
    o = _view(out, dtype, (outer, inner), (inner, 1))
    o[...] = [np.sum, np.max, np.min][op](x, axis=1)


def take(kind, dtype, out, inp, index, outer, n, inner, m):
    if kind in (0, 1):
        idx = _view(index, 2, (m,), (1,))
        if kind == 0:
            x = _view(inp, dtype, (outer, n, inner), (n * inner, inner, 1))
            _view(out, dtype, (outer, m, inner), (m * inner, inner, 1))[...] = x[:, idx, :]
        else:
            src = _view(inp, dtype, (outer, m, inner), (m * inner, inner, 1))
            np.add.at(_view(out, dtype, (outer, n, inner), (n * inner, inner, 1)),
                      (slice(None), idx, slice(None)), src)
        return
    idx = _view(index, 2, (outer, m, inner), (m * inner, inner, 1))
    if kind == 2:
        x = _view(inp, dtype, (outer, n, inner), (n * inner, inner, 1))
        _view(out, dtype, (outer, m, inner), (m * inner, inner, 1))[...] = np.take_along_axis(
            x, idx, axis=1)
    else:
        src = _view(inp, dtype, (outer, m, inner), (m * inner, inner, 1))
        np.put_along_axis(_view(out, dtype, (outer, n, inner), (n * inner, inner, 1)), idx,
                          src, axis=1)


def gemm(dtype, ta, tb, m, n, k, a, lda, sa, b, ldb, sb, c, ldc, sc, batch):
    # row-major C[i] = op(A[i]) @ op(B[i]); checks the leading dimensions cuBLAS would check
    # (column-major view: op N needs ld >= rows of the stored matrix's column-major form)
    assert lda >= max(1, m if ta else k), ("lda", lda, m, k, ta)
    assert ldb >= max(1, k if tb else n), ("ldb", ldb, k, n, tb)
    A = _view(a, dtype, (batch, k, m) if ta else (batch, m, k), (sa, lda, 1))
    B = _view(b, dtype, (batch, n, k) if tb else (batch, k, n), (sb, ldb, 1))
    C = _view(c, dtype, (batch, m, n), (sc, ldc, 1))
    if ta:
        A = A.transpose(0, 2, 1)
    if tb:
        B = B.transpose(0, 2, 1)
    C[...] = np.matmul(A, B)


def stream():
    return 0


# --------------------------------------------------------------------------- optimizer arena
# The kernels gradfuse.cuda.ops calls for the optimizer's device arena (csrc/cuda/optim.cu's
# bindings, same signatures). Fake device memory is host memory, so each runs the CPU kernel
# (gradfuse._C) on a numpy view of it: the CUDA kernels are bitwise the CPU's
# (tests/test_cuda_kernels.py), and so is this stand-in. `skip` / `scale` are device pointers
# (0 for none) of the guard flag (int32) and the clip coefficient (float64).


def _flat(isz, ptr, n):
    return _view(ptr, 0 if isz == 4 else 1, (n,), (1,))


def _cpu():
    from gradfuse import _C

    return _C


def optim_step(kind, isz, p, g, s0, s1, s2, n, scalars, flags, skip, scale):
    if skip and _view(skip, 3, (1,), (1,))[0]:
        return
    sc = list(scalars)
    if scale:
        sc[12] *= float(_view(scale, 1, (1,), (1,))[0])
    st = [_flat(isz, s, n) if s else None for s in (s0, s1, s2)]
    _cpu().optim_step(kind, _flat(isz, p, n), _flat(isz, g, n), *st, sc, flags)


def lamb_step(isz, p, g, m, v, n, offsets, sizes, scalars, flags):
    _cpu().lamb_step(_flat(isz, p, n), _flat(isz, g, n), _flat(isz, m, n), _flat(isz, v, n),
                     offsets, sizes, list(scalars), flags)


def arena_all_finite(isz, x, n):
    return bool(_cpu().arena_all_finite(_flat(isz, x, n)))


def arena_nonfinite_flag(isz, x, n, flag):
    if not _cpu().arena_all_finite(_flat(isz, x, n)):
        _view(flag, 3, (1,), (1,))[0] = 1


def arena_norm_reduce(isz, x, n, norm_type):
    return _cpu().arena_norm_reduce(_flat(isz, x, n), norm_type)


def arena_scale(isz, x, n, s):
    _cpu().arena_scale(_flat(isz, x, n), s)


def arena_clamp(isz, x, n, lo, hi):
    _cpu().arena_clamp(_flat(isz, x, n), lo, hi)
