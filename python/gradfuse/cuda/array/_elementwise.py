"""DeviceArray element-wise kernels: operand checks, numpy's dtype promotion and broadcasting,
unary and binary ops, copies with a cast, ``where``."""

from __future__ import annotations

import numpy as np

from . import (
    _BINARY,
    _CODES,
    _COMPARE,
    _F64,
    _FLOAT_ONLY,
    _LOGICAL,
    _PREDICATES,
    _STORAGE_ONLY,
    _UNARY,
    DeviceArray,
    _code,
    _cu,
    _empty,
    empty,
    from_numpy,
    mixed_device_error,
)


def _is_scalar(x) -> bool:
    return isinstance(x, (int, float, bool, np.generic)) or (
        isinstance(x, np.ndarray) and x.ndim == 0
    )


def _as_operand(x, op):
    """DeviceArray, Python/numpy scalar, or a 0-d host array; else the mixed-device error."""
    if isinstance(x, DeviceArray):
        return x
    if _is_scalar(x):
        return x.item() if isinstance(x, np.ndarray) else x
    if isinstance(x, np.ndarray):
        raise mixed_device_error(op, "cuda:0", "cpu")
    if isinstance(x, (list, tuple)):
        raise mixed_device_error(op, "cuda:0", "cpu")
    raise TypeError(f"{op}: unsupported operand type {type(x).__name__} for a cuda array")


def _dt_of(x):
    if isinstance(x, DeviceArray):
        return x.dtype
    if isinstance(x, np.generic):
        return x.dtype
    return x  # Python scalars are weak (NEP 50): np.result_type keeps the array's dtype


def _strides_for(x, shape):
    """(ptr, element strides over `shape`, scalar value) of a broadcast operand."""
    if not isinstance(x, DeviceArray):
        v = x.item() if isinstance(x, np.generic) else x
        return 0, [0] * len(shape), float(v) if not isinstance(v, complex) else _complex(v)
    return x.ptr, list(x._broadcast_to(shape)._st), 0.0


def _complex(v):
    raise TypeError("cuda: complex numbers are not supported")


def _cast_operand(x, dt):
    if isinstance(x, DeviceArray):
        return x if x.dtype == dt else x.astype(dt)
    return x


def _out_array(out, shape, dtype, op):
    if out is None:
        return empty(shape, dtype), None
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, DeviceArray):
        raise mixed_device_error(op, "cuda:0", "cpu")
    if out.shape != tuple(shape):
        raise ValueError(f"{op}: output shape {out.shape} does not match the result {tuple(shape)}")
    if out.dtype != dtype:
        return empty(shape, dtype), out  # computed in the result dtype, then cast into out
    return out, None


def _check_cast(src, dst, casting, op):
    if casting == "unsafe" or src == dst:
        return
    if not np.can_cast(src, dst, casting=casting):
        raise TypeError(
            f"Cannot cast ufunc '{op}' output from dtype('{src}') to dtype('{dst}') with "
            f"casting rule '{casting}'"
        )


def _binary(name, a, b, out=None, dtype=None, casting="same_kind"):
    if out is None and dtype is None and type(a) is DeviceArray:
        # the common cases of a training step, without the general promotion and broadcast
        # machinery: two arrays of one dtype and shape, or an array and a Python float
        dt = a.dtype
        if type(b) is DeviceArray:
            if b.dtype == dt and b.shape == a.shape and dt.kind == "f" and name not in _LOGICAL:
                res = _empty(a.shape, np.dtype(np.bool_) if name in _COMPARE else dt)
                _cu().binary(_BINARY[name], _CODES[dt], res.ptr, res._st, a.ptr, a._st, 0.0,
                             b.ptr, b._st, 0.0, a.shape)
                return res
        elif type(b) is float and dt.kind == "f" and name not in _LOGICAL:
            res = _empty(a.shape, np.dtype(np.bool_) if name in _COMPARE else dt)
            _cu().binary(_BINARY[name], _CODES[dt], res.ptr, res._st, a.ptr, a._st, 0.0, 0,
                         (0,) * len(a.shape), b, a.shape)
            return res
    a, b = _as_operand(a, name), _as_operand(b, name)
    shape = np.broadcast_shapes(a.shape if isinstance(a, DeviceArray) else (),
                                b.shape if isinstance(b, DeviceArray) else ())
    if dtype is not None:
        ct = np.dtype(dtype)
    else:
        ct = np.result_type(_dt_of(a), _dt_of(b))
    if name == "true_divide" and ct.kind in "biu":
        ct = _F64
    if name == "power" and ct.kind in "iu" and isinstance(b, (int, np.integer)) and b < 0:
        raise ValueError("Integers to negative integer powers are not allowed.")
    if ct == np.bool_ and name in ("add", "subtract", "multiply", "maximum", "minimum"):
        # numpy's bool arithmetic is logical: or / and
        name = {"add": "logical_or", "maximum": "logical_or", "multiply": "logical_and",
                "minimum": "logical_and"}.get(name, name)
        if name == "subtract":
            raise TypeError("numpy boolean subtract is not supported")
    _code(ct)
    res_dt = np.dtype(np.bool_) if name in _COMPARE else ct
    if name in ("logical_and", "logical_or"):
        a = _cast_operand(a, np.dtype(np.bool_))
        b = _cast_operand(b, np.dtype(np.bool_))
        ct = np.dtype(np.bool_)
    a, b = _cast_operand(a, ct), _cast_operand(b, ct)
    if out is not None:
        o = out[0] if isinstance(out, tuple) else out
        if isinstance(o, DeviceArray):
            _check_cast(res_dt, o.dtype, casting, name)
    res, final = _out_array(out, shape, res_dt, name)
    pa, sa, va = _strides_for(a, shape)
    pb, sb, vb = _strides_for(b, shape)
    _cu().binary(_BINARY[name], _code(ct), res.ptr, list(res._st), pa, sa, va, pb, sb, vb,
                 list(shape))
    if final is not None:
        _copy_into(final, res)
        return final
    return res


def _unary(name, a, out=None, dtype=None, casting="same_kind"):
    if out is None and dtype is None and type(a) is DeviceArray and a.dtype.kind == "f" \
            and name != "logical_not":
        res = _empty(a.shape, np.dtype(np.bool_) if name in _PREDICATES else a.dtype)
        _cu().unary(_UNARY[name], _CODES[a.dtype], res.ptr, res._st, a.ptr, a._st, 0.0, a.shape)
        return res
    a = _as_operand(a, name)
    if not isinstance(a, DeviceArray):
        raise TypeError(f"{name}: expected a cuda array")
    ct = np.dtype(dtype) if dtype is not None else a.dtype
    if name in _FLOAT_ONLY and ct.kind in "biu":
        ct = _F64
    if name == "logical_not":
        ct = np.dtype(np.bool_)
    a = _cast_operand(a, ct)
    res_dt = np.dtype(np.bool_) if name in _PREDICATES else ct
    if out is not None:
        o = out[0] if isinstance(out, tuple) else out
        if isinstance(o, DeviceArray):
            _check_cast(res_dt, o.dtype, casting, name)
    res, final = _out_array(out, a.shape, res_dt, name)
    _cu().unary(_UNARY[name], _code(ct), res.ptr, list(res._st), a.ptr, list(a._st), 0.0,
                list(a.shape))
    if final is not None:
        _copy_into(final, res)
        return final
    return res


def _copy_into(dst, src, casting="unsafe"):
    """dst[...] = src with broadcasting and a cast (host arrays are uploaded first)."""
    if isinstance(src, np.ndarray) and src.ndim > 0:
        src = from_numpy(src)
    if isinstance(src, DeviceArray):
        if casting != "unsafe":
            _check_cast(src.dtype, dst.dtype, casting, "copyto")
        s = src._broadcast_to(dst.shape)
        if s.dtype == dst.dtype and dst.dtype in _STORAGE_ONLY:
            code = _STORAGE_ONLY[dst.dtype]
            _cu().copy(dst.ptr, code, list(dst._st), s.ptr, code, list(s._st), 0.0,
                       list(dst.shape))
            return
        _cu().copy(dst.ptr, _code(dst.dtype), list(dst._st), s.ptr, _code(s.dtype), list(s._st),
                   0.0, list(dst.shape))
        return
    if isinstance(src, (np.generic, np.ndarray)):
        src = src.item()
    if not isinstance(src, (int, float, bool)):
        raise TypeError(f"cannot assign {type(src).__name__} to a cuda array")
    code = _code(dst.dtype)
    _cu().copy(dst.ptr, code, list(dst._st), 0, code, [0] * dst.ndim, float(src),
               list(dst.shape))


def _where(cond, a=None, b=None):
    if a is None and b is None:
        raise TypeError("numpy.where with one argument is not supported on cuda")
    cond = _as_operand(cond, "where")
    a, b = _as_operand(a, "where"), _as_operand(b, "where")
    shapes = [x.shape for x in (cond, a, b) if isinstance(x, DeviceArray)]
    shape = np.broadcast_shapes(*shapes)
    ct = np.result_type(_dt_of(a), _dt_of(b))
    a, b = _cast_operand(a, ct), _cast_operand(b, ct)
    if isinstance(cond, DeviceArray) and cond.dtype != np.bool_:
        cond = cond.astype(np.bool_)
    out = empty(shape, ct)
    pc, sc, vc = _strides_for(cond, shape)
    pa, sa, va = _strides_for(a, shape)
    pb, sb, vb = _strides_for(b, shape)
    _cu().where(_code(ct), out.ptr, list(out._st), pc, sc, float(bool(vc)), pa, sa, va, pb, sb,
                vb, list(shape))
    return out
