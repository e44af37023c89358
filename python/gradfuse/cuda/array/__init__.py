"""DeviceArray: an n-d array in GPU memory with numpy's look (the ``.data`` of a cuda Tensor).

A DeviceArray is a pointer into a block of gradfuse's caching allocator plus a shape, a dtype
and element strides, so views (``reshape``, ``transpose``, ``a[1:, ::2]``, ``a.T``) share
memory exactly as numpy views do. Arithmetic, comparisons, reductions and ``@`` queue kernels of
csrc/cuda/array.cu (matrix products through cuBLAS) on gradfuse's one CUDA stream and return at
once; only ``numpy()``, ``item()``, ``tolist()``, ``bool()``, ``float()`` wait for the GPU.

It implements ``__array_ufunc__`` and ``__array_function__`` for the numpy calls gradfuse's
autograd Functions make (``np.exp``, ``np.maximum``, ``np.where``, ``np.matmul``, ``np.sum``,
``np.zeros_like``, ``np.copyto``, ...), so those run unchanged on device data; any other numpy
function raises TypeError naming it. ``__array__`` raises too: a device-to-host copy is always
explicit (``.numpy()``).

This module holds the array type and its constructors; the operations live beside it, one
concept a file: ``_indexing`` (shapes, views, gathers), ``_elementwise``, ``_reductions``,
``_matmul`` (cuBLAS) and ``_numpy_protocol`` (the numpy functions and ufuncs it implements).

Example::

    >>> from gradfuse.cuda import DeviceArray
    >>> a = DeviceArray.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> (a.T @ a + 1).sum(axis=0).numpy()          # (3,)
    array([ 46.,  59.,  72.], dtype=float32)
"""

from __future__ import annotations

import math

import numpy as np

from ... import _backend

__all__ = ["DeviceArray", "empty", "zeros", "full", "from_numpy", "mixed_device_error"]

# dtype codes of gf::cuda::DType (csrc/cuda/array.h)
_CODES = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.int64): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.uint8): 4,
    np.dtype(np.bool_): 5,
}
# gf::cuda::UnaryOp / BinaryOp / ReduceOp
_UNARY = {
    "negative": 0, "exp": 1, "log": 2, "sqrt": 3, "absolute": 4, "sign": 5, "tanh": 6,
    "trunc": 7, "floor": 8, "ceil": 9, "reciprocal": 10, "square": 11, "log1p": 12,
    "expm1": 13, "sin": 14, "cos": 15, "logical_not": 16,
    "isfinite": 17, "isnan": 18, "isinf": 19,
}
_FLOAT_ONLY = {"exp", "log", "sqrt", "tanh", "log1p", "expm1", "sin", "cos"}
_PREDICATES = {"isfinite", "isnan", "isinf", "logical_not"}
_BINARY = {
    "add": 0, "subtract": 1, "multiply": 2, "divide": 3, "true_divide": 3, "power": 4,
    "maximum": 5, "minimum": 6, "logical_and": 7, "logical_or": 8,
    "equal": 9, "not_equal": 10, "less": 11, "less_equal": 12, "greater": 13,
    "greater_equal": 14,
}
_COMPARE = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
            "logical_and", "logical_or"}
_LOGICAL = ("logical_and", "logical_or")
_R_SUM, _R_MAX, _R_MIN, _R_ARGMAX, _R_ARGMIN = range(5)

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _cu():
    cu = getattr(_backend._C, "cuda", None)
    if cu is None:
        from .. import _unavailable_reason

        raise RuntimeError(f"cuda: {_unavailable_reason()}")
    return cu


def mixed_device_error(op: str, *devices) -> ValueError:
    """The error for an operation whose operands live on different devices."""
    names = " and ".join(dict.fromkeys(str(d) for d in devices))
    return ValueError(
        f"{op}: expected all tensors on the same device, but found tensors on {names} "
        "(move them with .to(device) first)"
    )


# Held and moved (upload, download, views, same-dtype copies) but not computed on: the Philox
# counter words of gradfuse.cuda.ops are uint32.
_STORAGE_ONLY = {np.dtype(np.uint32): 3}  # copied as int32, bit for bit


_new = object.__new__


def _make(buf, ptr, shape, st, dtype, base):
    """DeviceArray without __init__'s conversions (shape/st already int tuples, dtype a
    np.dtype): every op result goes through here, so the per-op host cost stays small."""
    d = _new(DeviceArray)
    d._buf, d.ptr, d.shape, d._st, d.dtype, d.base = buf, ptr, shape, st, dtype, base
    return d


def _code(dtype) -> int:
    try:
        return _CODES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(
            f"dtype: {np.dtype(dtype)} is not supported on cuda (float32, float64, int64, "
            "int32, uint8, bool)"
        ) from None


def _contig_strides(shape) -> tuple:
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


def _prod(shape) -> int:
    return math.prod(shape)


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "writeable", "aligned", "owndata")

    def __init__(self, a):
        self.c_contiguous = a._is_contig()
        self.f_contiguous = a.ndim <= 1 and self.c_contiguous
        self.writeable = True
        self.aligned = True
        self.owndata = a.base is None

    def __getitem__(self, key):
        return getattr(self, {"C": "c_contiguous", "C_CONTIGUOUS": "c_contiguous",
                              "F": "f_contiguous", "W": "writeable", "A": "aligned"}.get(key, key))


class DeviceArray:
    """An n-d array on the GPU: ``.shape .dtype .ndim .size .nbytes .strides .ptr .device .T``.

    Build one with :func:`empty`, :func:`zeros`, :func:`full` or :meth:`from_numpy`; get the
    values back with :meth:`numpy`. Views share memory (``base`` is the array viewed).
    """

    __slots__ = ("_buf", "ptr", "shape", "_st", "dtype", "base", "__weakref__")
    __array_priority__ = 1000

    def __init__(self, buf, ptr: int, shape: tuple, strides: tuple, dtype, base=None):
        self._buf = buf
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self._st = tuple(int(s) for s in strides)
        self.dtype = np.dtype(dtype)
        self.base = base

    # ------------------------------------------------------------ construction
    @staticmethod
    def empty(shape, dtype=np.float32) -> DeviceArray:
        """Uninitialized (shape,) array of dtype, from the caching allocator."""
        return empty(shape, dtype)

    @staticmethod
    def zeros(shape, dtype=np.float32) -> DeviceArray:
        return zeros(shape, dtype)

    @staticmethod
    def from_numpy(a) -> DeviceArray:
        """A device copy of a host array (float16 and object arrays are refused)."""
        return from_numpy(a)

    # ------------------------------------------------------------ numpy's look
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return _prod(self.shape)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def strides(self) -> tuple:
        """Strides in bytes, as numpy's."""
        return tuple(s * self.dtype.itemsize for s in self._st)

    @property
    def device(self) -> str:
        return "cuda:0"

    @property
    def flags(self) -> _Flags:
        return _Flags(self)

    @property
    def T(self) -> DeviceArray:
        return self.transpose()

    def _is_contig(self) -> bool:
        acc = 1
        for s, st in zip(reversed(self.shape), reversed(self._st)):
            if s != 1 and st != acc:
                return False
            acc *= s
        return True

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray({np.array2string(self.numpy(), separator=', ')}, device='cuda:0')"

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "a cuda array cannot be used as a numpy array implicitly; copy it to the host "
            "with .numpy() (or .cpu() on a Tensor)"
        )

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    # ------------------------------------------------------------ host transfers
    def numpy(self) -> np.ndarray:
        """A host copy (waits for the queued kernels)."""
        src = self if self._is_contig() else self.copy()
        out = np.empty(self.shape, self.dtype)
        if out.size:
            _cu().download(out, src.ptr)
        return out

    get = numpy  # CuPy's name

    def item(self):
        if self.size != 1:
            raise ValueError(
                f"item(): only one element arrays can be converted to Python scalars, got "
                f"shape {self.shape}"
            )
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.kind not in "iu":
            raise TypeError("only integer arrays can be used as an index")
        return int(self.item())

    def __bool__(self):
        if self.size != 1:
            raise ValueError(
                "The truth value of an array with more than one element is ambiguous"
            )
        return bool(self.item())

    # ------------------------------------------------------------ copies and views
    def copy(self, order="C") -> DeviceArray:
        out = empty(self.shape, self.dtype)
        _copy_into(out, self)
        return out

    def ascontiguous(self) -> DeviceArray:
        return self if self._is_contig() else self.copy()

    def astype(self, dtype, copy: bool = True, casting="unsafe") -> DeviceArray:
        dt = np.dtype(dtype)
        if dt == self.dtype and not copy:
            return self
        if dt != self.dtype or dt not in _STORAGE_ONLY:
            _code(dt)
        out = empty(self.shape, dt)
        _copy_into(out, self)
        return out

    def fill(self, value) -> None:
        _copy_into(self, value)

    def reshape(self, *shape, order="C") -> DeviceArray:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = _resolve_shape(shape, self.size)
        if self._is_contig():
            return DeviceArray(self._buf, self.ptr, shape, _contig_strides(shape), self.dtype,
                               self._root())
        view = _reshape_view(self, shape)
        if view is not None:
            return view
        return self.copy().reshape(shape)

    def ravel(self) -> DeviceArray:
        return self.reshape(-1)

    def flatten(self) -> DeviceArray:
        return self.copy().reshape(-1)

    def _root(self):
        return self if self.base is None else self.base

    def _view(self, shape, strides, offset_elems=0) -> DeviceArray:
        return _make(self._buf, self.ptr + offset_elems * self.dtype.itemsize, tuple(shape),
                     tuple(strides), self.dtype, self._root())

    def transpose(self, *axes) -> DeviceArray:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list, np.ndarray)):
            axes = tuple(int(a) for a in axes[0])
        if not axes:
            axes = tuple(reversed(range(self.ndim)))
        axes = tuple(_axis(a, self.ndim) for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"axes: {axes} is not a permutation of {self.ndim} axes")
        return self._view(tuple(self.shape[a] for a in axes), tuple(self._st[a] for a in axes))

    def swapaxes(self, a, b) -> DeviceArray:
        perm = list(range(self.ndim))
        a, b = _axis(a, self.ndim), _axis(b, self.ndim)
        perm[a], perm[b] = perm[b], perm[a]
        return self.transpose(perm)

    def squeeze(self, axis=None) -> DeviceArray:
        if axis is None:
            keep = [i for i, s in enumerate(self.shape) if s != 1]
        else:
            axes = _axes(axis, self.ndim)
            for a in axes:
                if self.shape[a] != 1:
                    raise ValueError("cannot select an axis to squeeze out which has size not "
                                     "equal to one")
            keep = [i for i in range(self.ndim) if i not in axes]
        return self._view(tuple(self.shape[i] for i in keep), tuple(self._st[i] for i in keep))

    def _broadcast_to(self, shape) -> DeviceArray:
        shape = tuple(shape)
        lead = len(shape) - self.ndim
        if lead < 0:
            raise ValueError(f"cannot broadcast shape {self.shape} to {shape}")
        st = [0] * lead
        for i, (s, t) in enumerate(zip(self.shape, shape[lead:])):
            if s == t:
                st.append(self._st[i])
            elif s == 1:
                st.append(0)
            else:
                raise ValueError(f"cannot broadcast shape {self.shape} to {shape}")
        return self._view(shape, tuple(st))

    # ------------------------------------------------------------ indexing
    def __getitem__(self, index):
        basic, adv = _split_index(index, self.ndim)
        view = _basic_view(self, basic)
        if adv is None:
            return view
        pos, idx = adv
        return _take(view, idx, pos)

    def __setitem__(self, index, value):
        basic, adv = _split_index(index, self.ndim)
        if adv is not None:
            raise TypeError("cuda: assignment through an integer-array index is not supported")
        _copy_into(_basic_view(self, basic), value)

    # ------------------------------------------------------------ reductions
    def sum(self, axis=None, dtype=None, keepdims=False, out=None):
        return _sum(self, axis, keepdims, dtype, out)

    def mean(self, axis=None, dtype=None, keepdims=False, out=None):
        return _mean(self, axis, keepdims, dtype, out)

    def max(self, axis=None, keepdims=False, out=None):
        return _finish(_reduce(self, _R_MAX, axis, keepdims), out)

    def min(self, axis=None, keepdims=False, out=None):
        return _finish(_reduce(self, _R_MIN, axis, keepdims), out)

    def argmax(self, axis=None, keepdims=False, out=None):
        return _finish(_arg(self, _R_ARGMAX, axis, keepdims), out)

    def argmin(self, axis=None, keepdims=False, out=None):
        return _finish(_arg(self, _R_ARGMIN, axis, keepdims), out)

    def any(self, axis=None, keepdims=False):
        return _reduce(self.astype(np.bool_), _R_MAX, axis, keepdims)

    def all(self, axis=None, keepdims=False):
        return _reduce(self.astype(np.bool_), _R_MIN, axis, keepdims)

    def dot(self, other):
        return _dot(self, other)

    # ------------------------------------------------------------ arithmetic
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        handler = _FUNCTIONS.get(func)
        if handler is None:
            raise TypeError(
                f"numpy.{func.__name__} is not supported on cuda arrays "
                "(gradfuse.cuda.DeviceArray); copy to the host with .numpy() if you need it"
            )
        return handler(*args, **kwargs)

    def __add__(self, o):
        return _binary("add", self, o)

    def __radd__(self, o):
        return _binary("add", o, self)

    def __sub__(self, o):
        return _binary("subtract", self, o)

    def __rsub__(self, o):
        return _binary("subtract", o, self)

    def __mul__(self, o):
        return _binary("multiply", self, o)

    def __rmul__(self, o):
        return _binary("multiply", o, self)

    def __truediv__(self, o):
        return _binary("true_divide", self, o)

    def __rtruediv__(self, o):
        return _binary("true_divide", o, self)

    def __pow__(self, o):
        return _binary("power", self, o)

    def __rpow__(self, o):
        return _binary("power", o, self)

    def __matmul__(self, o):
        return _matmul(self, o)

    def __rmatmul__(self, o):
        return _matmul(o, self)

    def __iadd__(self, o):
        return _binary("add", self, o, out=self)

    def __isub__(self, o):
        return _binary("subtract", self, o, out=self)

    def __imul__(self, o):
        return _binary("multiply", self, o, out=self)

    def __itruediv__(self, o):
        return _binary("true_divide", self, o, out=self)

    def __neg__(self):
        return _unary("negative", self)

    def __pos__(self):
        return self.copy()

    def __abs__(self):
        return _unary("absolute", self)

    def __invert__(self):
        if self.dtype != np.bool_:
            raise TypeError("cuda: ~ is supported on bool arrays only")
        return _unary("logical_not", self)

    def __and__(self, o):
        return _binary("logical_and", self, o)

    def __or__(self, o):
        return _binary("logical_or", self, o)

    def __eq__(self, o):
        return _binary("equal", self, o)

    def __ne__(self, o):
        return _binary("not_equal", self, o)

    def __lt__(self, o):
        return _binary("less", self, o)

    def __le__(self, o):
        return _binary("less_equal", self, o)

    def __gt__(self, o):
        return _binary("greater", self, o)

    def __ge__(self, o):
        return _binary("greater_equal", self, o)

    __hash__ = None


# --------------------------------------------------------------------------- constructors


def _empty(shape: tuple, dt: np.dtype) -> DeviceArray:
    # shape: a tuple of non-negative ints, dt: a supported np.dtype (the ops' own outputs)
    buf = _cu().DeviceBuffer(max(1, _prod(shape) * dt.itemsize))
    return _make(buf, buf.ptr, shape, _contig_strides(shape), dt, None)


def empty(shape, dtype=np.float32) -> DeviceArray:
    """An uninitialized array on the GPU (from the caching allocator)."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape: negative dimensions are not allowed, got {shape}")
    dt = np.dtype(dtype)
    if dt not in _STORAGE_ONLY:
        _code(dt)
    buf = _cu().DeviceBuffer(max(1, _prod(shape) * dt.itemsize))
    return DeviceArray(buf, buf.ptr, shape, _contig_strides(shape), dt)


def full(shape, value, dtype=np.float32) -> DeviceArray:
    out = empty(shape, dtype)
    out.fill(value)
    return out


def zeros(shape, dtype=np.float32) -> DeviceArray:
    return full(shape, 0, dtype)


def from_numpy(a) -> DeviceArray:
    """A device copy of ``a`` (any array-like; dtypes as :data:`_CODES`)."""
    if isinstance(a, DeviceArray):
        return a.copy()
    a = np.asarray(a)
    if a.dtype == np.float16:
        raise TypeError("dtype: float16 is not supported on cuda")
    out = empty(a.shape, a.dtype)
    if a.size:
        _cu().upload(out.ptr, np.ascontiguousarray(a))
    return out


# The operations build DeviceArrays, and the class's methods call them: they are imported once
# the class and the constructors above exist (a submodule imported first goes through this
# package, so it always finds them defined).
from ._elementwise import _binary, _copy_into, _unary  # noqa: E402
from ._indexing import (  # noqa: E402
    _axes,
    _axis,
    _basic_view,
    _reshape_view,
    _resolve_shape,
    _split_index,
    _take,
)
from ._matmul import _dot, _matmul  # noqa: E402
from ._numpy_protocol import _FUNCTIONS, _ufunc  # noqa: E402
from ._reductions import _arg, _finish, _mean, _reduce, _sum  # noqa: E402
