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

Example::

    >>> from gradfuse.cuda import DeviceArray
    >>> a = DeviceArray.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> (a.T @ a + 1).sum(axis=0).numpy()          # (3,)
    array([ 46.,  59.,  72.], dtype=float32)
"""

from __future__ import annotations

import builtins
import math
import operator

import numpy as np

from .. import _backend

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
        from . import _unavailable_reason

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


# --------------------------------------------------------------------------- shapes


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


# --------------------------------------------------------------------------- element-wise


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


# --------------------------------------------------------------------------- reductions


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


# --------------------------------------------------------------------------- matmul


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


# --------------------------------------------------------------------------- numpy protocol


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
