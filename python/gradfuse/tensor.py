"""Tensor, the autograd tape and the backward engine.

A Tensor holds a numpy array (``.data``) plus what autograd needs: ``requires_grad``,
``grad`` and the Function node that produced it. Every differentiable op is a
:class:`Function` subclass (see ``gradfuse.functional``) whose ``forward`` and ``backward``
sit side by side and work on plain numpy arrays; ``Function.apply`` is the only place that
wraps arrays into Tensors and records the graph.

``backward()`` walks the graph iteratively (no recursion limit on deep nets), in reverse
topological order, and accumulates gradients of leaves *in place* into ``.grad``: an optimizer
that made ``.grad`` a view into its flat arena keeps it.
"""

from __future__ import annotations

import functools
import os
import sys
import threading

import numpy as np

from . import _backend
from .cuda.array import DeviceArray

__all__ = [
    "Tensor",
    "Function",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "set_grad_enabled",
    "tensor",
    "from_numpy",
    "as_tensor",
    "zeros",
    "ones",
    "full",
    "empty",
    "zeros_like",
    "ones_like",
    "full_like",
    "arange",
    "float32",
    "float64",
    "int64",
    "int32",
    "bool_",
    "device",
]

_new = object.__new__
_getrefcount = sys.getrefcount
# The refcount test that lets backward adopt a fresh gradient array as .grad is exact on the
# CPython versions below; 3.14's borrowed stack references and free-threaded builds count
# differently, so there every first gradient is copied instead.
_ADOPT_FRESH = sys.implementation.name == "cpython" and sys.version_info < (3, 14) and (
    getattr(sys, "_is_gil_enabled", lambda: True)()
)

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
bool_ = np.dtype(np.bool_)

_DEFAULT_FLOAT = float32

# --------------------------------------------------------------------------- grad mode

class _GradMode(threading.local):
    enabled = True  # every thread starts recording, as in PyTorch


_mode = _GradMode()
# Threads whose grad mode is off. Every op asks "record?"; while this is 0 (the usual case: no
# thread inside no_grad) a global read answers it, 40 ns cheaper than the thread-local one.
_n_disabled = 0
_mode_lock = threading.Lock()


# Backward passes in capture mode (gf.autograd.grad, which must not touch any .grad) running
# now, in any thread; while one runs, no Function writes into an optimizer's gradient arena
# (leaf_grad_out).
_n_capturing = 0


def _reset_mode_after_fork() -> None:
    # only the forking thread lives on in the child: recount from it, and do not inherit a
    # lock another thread may have held at the moment of the fork
    global _n_disabled, _mode_lock, _n_capturing
    _mode_lock = threading.Lock()
    _n_disabled = 0 if _mode.enabled else 1
    _n_capturing = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_mode_after_fork)


def _set_mode(enabled: bool) -> None:
    global _n_disabled
    with _mode_lock:
        if _mode.enabled != enabled:
            _mode.enabled = enabled
            _n_disabled += -1 if enabled else 1


def is_grad_enabled() -> bool:
    """True when new operations are recorded for backward (per thread)."""
    return _n_disabled == 0 or _mode.enabled


class _GradModeGuard:
    """Sets the grad mode on ``__enter__``, restores it on ``__exit__``; also a decorator."""

    mode = True

    def __enter__(self):
        self.prev = _mode.enabled
        _set_mode(self.mode)
        return self

    def __exit__(self, *exc):
        _set_mode(self.prev)
        return False

    def __call__(self, fn):
        mode = self.mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = _mode.enabled
            _set_mode(mode)
            try:
                return fn(*args, **kwargs)
            finally:
                _set_mode(prev)

        return wrapper


class _BareDecorator(_GradModeGuard):
    """Also usable as ``@gf.no_grad`` without parentheses, as in PyTorch >= 2.1."""

    def __new__(cls, orig_func=None):
        self = super().__new__(cls)
        return self if orig_func is None else self(orig_func)


class no_grad(_BareDecorator):
    """Disable graph recording in this thread, e.g. for a hand-written parameter update.

    Example::

        with gf.no_grad():
            w -= lr * w.grad
    """

    mode = False


class enable_grad(_BareDecorator):
    """Re-enable graph recording inside a ``no_grad`` block."""

    mode = True


class set_grad_enabled(_GradModeGuard):
    """Turn graph recording on or off: as a call (takes effect at once, as in PyTorch), as a
    context manager (restored on exit) or as a decorator.

    Example::

        with gf.set_grad_enabled(False):
            y = model(x)          # no graph is recorded
    """

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self.prev = _mode.enabled
        _set_mode(self.mode)

    def __enter__(self):
        _set_mode(self.mode)  # already set by __init__, but an instance may be entered again
        return self

    def __call__(self, fn):
        _set_mode(self.prev)  # used as a decorator: the call itself changed nothing
        return super().__call__(fn)


# --------------------------------------------------------------------------- Function


class Function:
    """One differentiable operation: ``forward`` and ``backward`` over numpy arrays.

    Subclasses define two static methods::

        class Exp(Function):
            @staticmethod
            def forward(ctx, a):            # arrays in, array out
                out = np.exp(a)
                ctx.save_for_backward(out)
                return out

            @staticmethod
            def backward(ctx, grad):        # grad of the output -> grads of the inputs
                (out,) = ctx.saved
                return (grad * out,)        # one entry per input (None where not needed)

    and are called as ``Exp.apply(tensor)``. Non-Tensor arguments (ints, shapes, flags) pass
    through to ``forward`` unchanged and get ``None`` as their gradient. Keyword arguments are
    options: a Tensor passed by keyword is not differentiated, pass it positionally. The
    instance is the graph node: it keeps its inputs and what ``forward`` saved until backward
    releases it.
    """

    # Class-level defaults: a node only writes what differs (this is the hot path of every op).
    inputs = ()
    saved = ()
    needs_input_grad = ()
    released = False

    def save_for_backward(self, *arrays):
        self.saved = arrays

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = _new(cls)
        if _CHECK_DEVICES:
            _same_device(cls, args)
        # numpy scalars become Python scalars, which (NEP 50) do not promote: float32 * np.sqrt(2)
        # stays float32, as PyTorch keeps it
        out = cls.forward(
            ctx,
            *[
                a.data if isinstance(a, Tensor) else (a.item() if isinstance(a, np.generic) else a)
                for a in args
            ],
            **kwargs,
        )
        if type(out) is not np.ndarray and type(out) is not DeviceArray:
            out = np.asarray(out)
        t = _new(Tensor)
        t.data = out
        if _n_disabled == 0 or _mode.enabled:
            for a in args:
                if isinstance(a, Tensor) and a.requires_grad:
                    ctx.inputs = args
                    ctx.needs_input_grad = tuple(
                        isinstance(x, Tensor) and x.requires_grad for x in args
                    )
                    t.requires_grad = True
                    t._ctx = ctx
                    break
        return t

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self):
        """Drop what forward saved and the links to the inputs, as PyTorch frees a graph after
        a backward without retain_graph: a loss kept for logging then holds no activations.
        A later backward reaches this node first and raises."""
        self.__dict__.clear()
        self.released = True


# Only a build with the CUDA backend can mix devices; a CPU-only build skips the check.
_CHECK_DEVICES = _backend.CUDA_BUILT


def _same_device(cls, args):
    dev = None
    for a in args:
        if isinstance(a, Tensor) and a.data.ndim:
            d = type(a.data) is DeviceArray
            if dev is None:
                dev = d
            elif d != dev:
                from .cuda.array import mixed_device_error

                raise mixed_device_error(cls.__name__.lower(), "cuda:0", "cpu")


def _unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: the adjoint of numpy broadcasting."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if lead > 0:
        grad = grad.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


# --------------------------------------------------------------------------- engine


def _topological_order(root: Function) -> list:
    """Nodes reachable from ``root``, each after every node that consumes its output."""
    order = []
    seen = set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for t in node.inputs:
            if isinstance(t, Tensor) and t._ctx is not None and t._ctx not in seen:
                stack.append((t._ctx, False))
    order.reverse()
    return order


def leaf_grad_out(t: Tensor, dtype) -> np.ndarray | None:
    """The array a ``backward`` may write the gradient of input ``t`` into, or None.

    That is the optimizer's gradient-arena view of ``t`` when ``t`` is a leaf whose ``.grad``
    is None (this is the first gradient it gets in this backward), the view has ``t``'s shape
    and the gradient is computed in ``dtype``, the view's dtype, and no ``gf.autograd.grad``
    (which must leave every ``.grad`` alone) is running. A backward that computes the gradient
    there (``np.matmul(..., out=view)``) and returns the view saves the engine a copy of it:
    the engine then only sets ``t.grad``. The caller must make sure ``t`` is no other input
    of the same node, whose gradient would be accumulated into the view first.
    """
    slot = t._grad_slot
    if slot is None or t.grad is not None or _n_capturing or t._ctx is not None:
        return None
    d = slot.data
    # host arenas only: the device path's matmul has no out= (it returns a fresh array)
    if type(d) is not np.ndarray or d.dtype != dtype or d.shape != t.data.shape:
        return None
    return d


def _accumulate_leaf(t: Tensor, g: np.ndarray) -> None:
    if t.grad is None:
        slot = t._grad_slot
        if slot is not None and slot.data.shape == t.data.shape:
            # An optimizer keeps this leaf's gradient in its flat arena: the first gradient
            # of a backward is copied into the arena view (no zeroing pass needed before),
            # unless the backward already computed it there (leaf_grad_out).
            if g is not slot.data:
                np.copyto(slot.data, g, casting="same_kind")
            t.grad = slot
            return
        if type(g) is DeviceArray:
            t.grad = Tensor(g.astype(t.data.dtype, copy=True))
        else:
            t.grad = Tensor(np.array(g, dtype=t.data.dtype, copy=True))
    else:
        t.grad.data += g  # in place: keeps .grad a view wherever an optimizer put it


def run_backward(root: Tensor, grad: np.ndarray, retain_graph: bool, capture=None):
    """Propagate ``grad`` (the gradient of ``root``) through the graph.

    With ``capture`` (a list of Tensors) gradients are returned for those tensors instead
    of being accumulated into any ``.grad`` (this is ``gf.autograd.grad``).
    """
    if capture is None:
        return _propagate(root, grad, retain_graph, None)
    global _n_capturing
    with _mode_lock:
        _n_capturing += 1
    try:
        return _propagate(root, grad, retain_graph, capture)
    finally:
        with _mode_lock:
            _n_capturing -= 1


def _propagate(root: Tensor, grad: np.ndarray, retain_graph: bool, capture):
    captured = None
    if capture is not None:
        captured = {id(t): None for t in capture}
    if root._ctx is None:  # backward on a leaf
        if captured is not None:
            if id(root) in captured:
                captured[id(root)] = grad
        else:
            _accumulate_leaf(root, grad)
        return captured

    node_tensor = {}
    if captured is not None:
        for t in capture:
            if t._ctx is not None:
                node_tensor[t._ctx] = t
    grads = {root._ctx: grad}
    retained = {root._ctx: root} if root._retains_grad else {}
    ndarray = np.ndarray
    for node in _topological_order(root._ctx):
        g = grads.pop(node, None)
        if g is None:
            continue
        if node.released:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access saved "
                "tensors after they have already been freed). Specify retain_graph=True if you "
                "need to backward through the graph a second time."
            )
        if captured is not None and node in node_tensor:
            captured[id(node_tensor[node])] = g
        elif retained and node in retained:
            _accumulate_leaf(retained[node], g)
        in_grads = type(node).backward(node, g)
        in_grads = list(in_grads) if type(in_grads) is tuple else [in_grads]
        needs = node.needs_input_grad
        if len(in_grads) != len(needs):
            raise RuntimeError(
                f"{type(node).__name__}.backward returned {len(in_grads)} gradients for "
                f"{len(needs)} inputs"
            )
        k = -1
        for t, need in zip(node.inputs, needs):
            k += 1
            if not need:
                continue
            ig = in_grads[k]
            if ig is None:
                continue
            in_grads[k] = None  # so the refcount below sees only our own reference
            if type(ig) is not ndarray and type(ig) is not DeviceArray:
                ig = np.asarray(ig)
            td = t.data
            if ig.shape != td.shape:
                ig = _unbroadcast(ig, td.shape)
                if ig.shape != td.shape:
                    raise RuntimeError(
                        f"{type(node).__name__}.backward returned a gradient of shape {ig.shape} "
                        f"for input {k} of shape {td.shape}"
                    )
            if ig.dtype != td.dtype:
                ig = ig.astype(td.dtype)
            child = t._ctx
            if child is None:
                if captured is not None:
                    if id(t) in captured:
                        prev = captured[id(t)]
                        captured[id(t)] = ig if prev is None else prev + ig
                elif t.grad is None and (slot := t._grad_slot) is not None and \
                        ig is slot.data:
                    t.grad = slot  # computed in the arena view (leaf_grad_out): nothing to copy
                elif (
                    t.grad is None
                    and t._grad_slot is None
                    and ig.base is None
                    and ig.flags.writeable
                    and _ADOPT_FRESH
                    and _getrefcount(ig) == 2  # `ig` and the call's argument: nobody else
                ):
                    # A gradient array that backward just made and nothing else holds becomes
                    # .grad as it is: copying it would cost a full read+write pass (a third of
                    # cross entropy's backward at 8192x1000).
                    t.grad = Tensor(ig)
                else:
                    _accumulate_leaf(t, ig)
            else:
                prev = grads.get(child)
                grads[child] = ig if prev is None else prev + ig
                if t._retains_grad and captured is None:
                    retained[child] = t
        if not retain_graph:
            node.release()
    return captured


# --------------------------------------------------------------------------- Tensor


class device:
    """A device: ``gf.device("cpu")``, ``gf.device("cuda")``, ``gf.device("cuda:0")``,
    ``gf.device("cuda", 0)``.

    Compares equal to another device of the same type and index, and to its string form
    (``t.device == "cuda:0"``). ``"cuda"`` means the current (only) GPU, index 0.

    Example::

        >>> gf.device("cuda:0").type, gf.device("cuda:0").index
        ('cuda', 0)
    """

    __slots__ = ("type", "index")

    def __init__(self, spec, index=None):
        if isinstance(spec, device):
            spec = str(spec)
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string like 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, idx = spec.partition(":")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda[:index]', got {spec!r}")
        if idx:
            if index is not None:
                raise ValueError(f"device: index given twice in {spec!r} and index={index}")
            if not idx.isdigit():
                raise ValueError(f"device: invalid device index in {spec!r}")
            index = int(idx)
        if index is not None and (not isinstance(index, (int, np.integer)) or index < 0):
            raise ValueError(f"device: index must be a non-negative int, got {index!r}")
        self.type = kind
        self.index = None if index is None else int(index)

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        idx = "" if self.index is None else f", index={self.index}"
        return f"device(type='{self.type}'{idx})"

    def _key(self):
        return (self.type, self.index or 0)

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = device(other)
            except (TypeError, ValueError):
                return False
        if not isinstance(other, device):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


_CPU = device("cpu")
_CUDA0 = device("cuda", 0)


def is_device(arg) -> bool:
    """Whether a ``to()`` argument names a device rather than a dtype."""
    return isinstance(arg, device) or (
        isinstance(arg, str) and arg.split(":")[0] in ("cpu", "cuda"))


def to_args(args, dtype, device):
    """``(dtype, device)`` from the positional and keyword arguments of ``Tensor.to`` /
    ``Module.to``: a positional argument is a device when it names one, else the dtype."""
    for a in args:
        if is_device(a):
            device = a
        elif dtype is None:
            dtype = a
        else:
            raise TypeError(f"to: unexpected argument {a!r}")
    return dtype, device


def check_device(dev) -> device:
    """The device ``dev`` names, when it can be used now; else a ValueError saying why."""
    d = device(dev)
    if d.type == "cpu":
        if d.index not in (None, 0):
            raise ValueError(f"device: there is one cpu device, got {str(d)!r}")
        return _CPU
    from . import cuda

    if not cuda.is_available():
        raise ValueError(f"device: {str(d)!r} is not available: {cuda.unavailable_reason()}")
    if d.index not in (None, 0):
        raise ValueError(
            f"device: gradfuse uses one GPU, cuda:0; got {str(d)!r}"
            f" ({cuda.device_count()} visible)")
    return _CUDA0


def device_of(data) -> device:
    return _CUDA0 if type(data) is DeviceArray else _CPU


def to_device(data, dev: device):
    """``data`` (ndarray or DeviceArray) on ``dev`` (the same object when already there)."""
    if dev.type == "cpu":
        return data.numpy() if type(data) is DeviceArray else data
    if type(data) is DeviceArray:
        return data
    return DeviceArray.from_numpy(data)


def _as_dtype(dtype):
    if dtype is None:
        return None
    if isinstance(dtype, Tensor):
        raise TypeError("dtype: expected a dtype, got a Tensor")
    try:
        return np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype: {dtype!r} is not a dtype") from e


def _check_grad_dtype(dtype, requires_grad):
    if requires_grad and dtype.kind not in "fc":
        raise TypeError(
            f"requires_grad: only floating point tensors can require gradients, got {dtype}"
        )


class Tensor:
    """An n-dimensional array with autograd.

    ``Tensor(array)`` wraps a numpy array without copying; prefer :func:`tensor` (copies,
    infers float32 for Python floats) or :func:`from_numpy` (shares memory).

    Attributes:
        data: the numpy array (shared, like PyTorch's ``.data`` but a plain ndarray).
        grad: a Tensor of the same shape after ``backward()``, or None.
        requires_grad: whether operations on this tensor are recorded.
    """

    __array_ufunc__ = None  # numpy defers `ndarray op Tensor` to our reflected methods
    # Class-level defaults: Function.apply sets only `data` on a tensor that needs no grad.
    grad = None
    requires_grad = False
    _ctx = None
    _retains_grad = False
    # Set by an optimizer: the Tensor viewing this leaf's slice of its gradient arena.
    _grad_slot = None

    def __getstate__(self):
        # A copy or pickle of a tensor (copy.deepcopy(model), pickle.dumps(model)) must not
        # drag along the optimizer's arena: its gradient slot and a gradient view's arena link
        # refer to the whole flat buffer (and a compiled, unpicklable ArenaStep). The copy
        # keeps its values (a view pickles as its own elements) and is an ordinary tensor.
        state = self.__dict__.copy()
        state.pop("_grad_slot", None)
        state.pop("_gf_arena", None)
        return state


    def __init__(self, data, requires_grad: bool = False):
        if not isinstance(data, np.ndarray) and type(data) is not DeviceArray:
            data = np.asarray(data)
        _check_grad_dtype(data.dtype, requires_grad)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self._retains_grad = False

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> device:
        """Where ``data`` lives: ``gf.device('cpu')`` or ``gf.device('cuda:0')`` (equal to
        the strings 'cpu' / 'cuda:0')."""
        return _CUDA0 if type(self.data) is DeviceArray else _CPU

    @property
    def is_cuda(self) -> bool:
        return type(self.data) is DeviceArray

    def dim(self) -> int:
        return self.data.ndim

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    @property
    def grad_fn(self):
        return self._ctx

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __repr__(self) -> str:
        host = self.data.numpy() if type(self.data) is DeviceArray else self.data
        body = np.array2string(host, separator=", ", prefix="tensor(")
        extra = ", device='cuda:0'" if type(self.data) is DeviceArray else ""
        if self.data.dtype not in (float32, int64, bool_):
            extra += f", dtype={self.data.dtype}"
        if self._ctx is not None:
            extra += f", grad_fn=<{type(self._ctx).__name__}Backward>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # ------------------------------------------------------------ conversion
    def numpy(self) -> np.ndarray:
        """The underlying array (shared memory). Like PyTorch, refused while tracking grad.

        On a cuda tensor: a host copy, after the queued kernels finish (PyTorch asks for
        ``.cpu()`` first; gradfuse copies, as this is the one place a host value is wanted).
        """
        if self.requires_grad:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy()."
            )
        if type(self.data) is DeviceArray:
            return self.data.numpy()
        return self.data

    def __array__(self, dtype=None, copy=None):
        a = self.data
        if type(a) is DeviceArray:
            raise TypeError(
                "can't convert a cuda tensor to a numpy array implicitly; use .cpu() or "
                ".numpy() (an explicit copy to the host)")
        if dtype is not None and a.dtype != dtype:
            if copy is False:
                raise ValueError(f"__array__: casting {a.dtype} to {dtype} needs a copy")
            return a.astype(dtype)
        return a.copy() if copy else a

    def item(self):
        if self.data.size != 1:
            raise ValueError(
                f"item(): only one element tensors can be converted to Python scalars, "
                f"got shape {self.data.shape}"
            )
        return self.data.reshape(()).item()

    def tolist(self):
        return self.data.tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(
                f"Boolean value of Tensor with more than one value is ambiguous "
                f"(shape {self.data.shape})"
            )
        return bool(self.data.reshape(()))

    def to(self, *args, dtype=None, device=None) -> Tensor:
        """Cast to a dtype and/or move to a device (both differentiable):
        ``t.to(gf.float64)``, ``t.to("cuda")``, ``t.to("cuda", gf.float64)``,
        ``t.to(device=..., dtype=...)``. Returns ``self`` when nothing changes.

        Example::

            >>> x = gf.ones(2, 3)
            >>> x.to("cuda").device if gf.cuda.is_available() else "cuda:0"
            'cuda:0'
        """
        dtype, device = to_args(args, dtype, device)
        out = self
        if device is not None:
            dev = check_device(device)
            if dev != device_of(self.data):
                out = _F.ToDevice.apply(self, device=dev)
        if dtype is None:
            return out
        return _F.Cast.apply(out, dtype=_as_dtype(dtype))

    def cuda(self, device=None) -> Tensor:
        """``self.to("cuda")``."""
        return self.to("cuda" if device is None else device)

    def cpu(self) -> Tensor:
        """``self.to("cpu")``: a host copy of a cuda tensor, ``self`` for a cpu one."""
        return self.to("cpu")

    def float(self) -> Tensor:
        return self.to(float32)

    def double(self) -> Tensor:
        return self.to(float64)

    def long(self) -> Tensor:
        return self.to(int64)

    def detach(self) -> Tensor:
        """A new leaf sharing this tensor's data, cut from the graph."""
        return Tensor(self.data, requires_grad=False)

    def clone(self) -> Tensor:
        from . import functional as F

        return F.Clone.apply(self)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if self._ctx is not None and not requires_grad:
            raise RuntimeError(
                "requires_grad_: you can only change requires_grad flags of leaf variables; "
                "use detach() to get a tensor that does not require grad"
            )
        _check_grad_dtype(self.data.dtype, requires_grad)
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` of a non-leaf tensor after backward (leaves always keep it)."""
        if not self.requires_grad:
            raise RuntimeError(
                "retain_grad: can't retain_grad on Tensor that has requires_grad=False"
            )
        if self._ctx is not None:
            self._retains_grad = True

    # ------------------------------------------------------------ autograd
    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf in the graph.

        Args:
            gradient: d(loss)/d(self); may be omitted when ``self`` has one element.
            retain_graph: keep saved values so backward can run through the graph again.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "element 0 of tensors does not require grad and does not have a grad_fn"
            )
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs, got shape "
                    f"{self.data.shape}"
                )
            # np.array(1) + reshape: a third of np.ones_like's ~2 us, paid once per backward
            if type(self.data) is np.ndarray:
                g = np.array(1, dtype=self.data.dtype)
                if self.data.ndim:
                    g = g.reshape(self.data.shape)
            else:  # a device tensor's seed lives on its device
                g = np.ones_like(self.data)
        else:
            g = gradient.data if isinstance(gradient, Tensor) else np.asarray(gradient)
            if type(g) is not type(self.data):
                from .cuda.array import mixed_device_error

                raise mixed_device_error("backward (gradient)", device_of(self.data),
                                         device_of(g))
            if g.shape != self.data.shape:
                raise ValueError(
                    f"gradient: expected shape {self.data.shape} to match the tensor, got {g.shape}"
                )
            g = g.astype(self.data.dtype, copy=False)
        run_backward(self, g, retain_graph)

    def zero_(self) -> Tensor:
        self._check_inplace()
        self.data[...] = 0
        return self

    def fill_(self, value) -> Tensor:
        self._check_inplace()
        self.data[...] = value
        return self

    def copy_(self, src) -> Tensor:
        self._check_inplace()
        src = src.data if isinstance(src, Tensor) else np.asarray(src)
        try:
            np.copyto(self.data, np.broadcast_to(src, self.data.shape), casting="same_kind")
        except ValueError as e:
            raise ValueError(f"copy_: cannot copy shape {src.shape} into {self.data.shape}") from e
        return self

    def _check_inplace(self):
        if self.requires_grad and is_grad_enabled():
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation; "
                "wrap the update in `with gf.no_grad():`"
                if self._ctx is None
                else "in-place operation on a tensor recorded in the graph is not supported"
            )

    def _inplace(self, op, other):
        self._check_inplace()
        o = other.data if isinstance(other, Tensor) else other
        try:
            op(self.data, o, out=self.data, casting="same_kind")
        except ValueError as e:
            oshape = np.shape(o)
            raise ValueError(
                f"in-place {op.__name__}: shape {oshape} cannot be broadcast to {self.data.shape}"
            ) from e
        return self

    def __iadd__(self, other):
        return self._inplace(np.add, other)

    def __isub__(self, other):
        return self._inplace(np.subtract, other)

    def __imul__(self, other):
        return self._inplace(np.multiply, other)

    def __itruediv__(self, other):
        return self._inplace(np.divide, other)

    # ------------------------------------------------------------ arithmetic
    def __add__(self, other):
        return _F.Add.apply(self, other)

    def __radd__(self, other):
        return _F.Add.apply(other, self)

    def __sub__(self, other):
        return _F.Sub.apply(self, other)

    def __rsub__(self, other):
        return _F.Sub.apply(other, self)

    def __mul__(self, other):
        return _F.Mul.apply(self, other)

    def __rmul__(self, other):
        return _F.Mul.apply(other, self)

    def __truediv__(self, other):
        return _F.Div.apply(self, other)

    def __rtruediv__(self, other):
        return _F.Div.apply(other, self)

    def __neg__(self):
        return _F.Neg.apply(self)

    def __pos__(self):
        return self

    def __pow__(self, exponent):
        if isinstance(exponent, (Tensor, np.ndarray)):
            return _F.PowTensor.apply(self, exponent)
        return _F.Pow.apply(self, exponent=exponent)

    def __rpow__(self, base):
        return _F.PowTensor.apply(base, self)

    def __matmul__(self, other):
        return _F.MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return _F.MatMul.apply(other, self)

    def matmul(self, other):
        return _F.MatMul.apply(self, other)

    def __abs__(self):
        return _F.Abs.apply(self)

    # comparisons: not differentiable, return bool tensors
    def _cmp(self, op, other):
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, o))

    def __eq__(self, other):  # noqa: D105
        return self._cmp(np.equal, other)

    def __ne__(self, other):
        return self._cmp(np.not_equal, other)

    def __lt__(self, other):
        return self._cmp(np.less, other)

    def __le__(self, other):
        return self._cmp(np.less_equal, other)

    def __gt__(self, other):
        return self._cmp(np.greater, other)

    def __ge__(self, other):
        return self._cmp(np.greater_equal, other)

    __hash__ = object.__hash__

    # ------------------------------------------------------------ math
    def exp(self):
        return _F.Exp.apply(self)

    def log(self):
        return _F.Log.apply(self)

    def sqrt(self):
        return _F.Sqrt.apply(self)

    def abs(self):
        return _F.Abs.apply(self)

    # activations (compiled kernels, gradfuse.functional)
    def relu(self):
        return _F.relu(self)

    def relu_(self):
        return _F.relu_(self)

    def sigmoid(self):
        return _F.sigmoid(self)

    def tanh(self):
        return _F.tanh(self)

    def softmax(self, dim: int):
        return _F.softmax(self, dim)

    def log_softmax(self, dim: int):
        return _F.log_softmax(self, dim)

    def sum(self, dim=None, keepdim: bool = False):
        return _F.Sum.apply(self, dim=dim, keepdim=keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        return _F.Mean.apply(self, dim=dim, keepdim=keepdim)

    def max(self, dim=None, keepdim: bool = False):
        return _F.max(self, dim=dim, keepdim=keepdim)

    def argmax(self, dim=None, keepdim: bool = False):
        if dim is None:
            return Tensor(np.argmax(self.data))
        return Tensor(np.argmax(self.data, axis=dim, keepdims=keepdim))

    # ------------------------------------------------------------ shape
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _F.Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        shp = self.data.shape
        if not shp:
            return self.reshape(1)
        s, e = _F.dim_index(start_dim, len(shp)), _F.dim_index(end_dim, len(shp))
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        return self.reshape(shp[:s] + (-1,) + shp[e + 1 :])

    def transpose(self, dim0: int, dim1: int):
        if self.data.ndim == 0:
            _F.dim_index(dim0, 0), _F.dim_index(dim1, 0)
            return self.clone()
        d0, d1 = _F.dim_index(dim0, self.data.ndim), _F.dim_index(dim1, self.data.ndim)
        perm = list(range(self.data.ndim))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return _F.Permute.apply(self, dims=tuple(perm))

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        nd = self.data.ndim
        if len(dims) != nd:
            raise ValueError(f"permute: got {len(dims)} dims {dims} for a {nd}-d tensor")
        norm = tuple(_F.dim_index(d, nd) for d in dims)
        if sorted(norm) != list(range(nd)):
            raise ValueError(f"permute: dims {dims} are not a permutation of {nd} dims")
        return _F.Permute.apply(self, dims=norm)

    @property
    def T(self):
        return _F.Permute.apply(self, dims=tuple(reversed(range(self.data.ndim))))

    def unsqueeze(self, dim: int):
        d = _F.dim_index(dim, self.data.ndim + 1)
        return self.reshape(self.data.shape[:d] + (1,) + self.data.shape[d:])

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(s for s in self.data.shape if s != 1))
        if self.data.ndim == 0:
            _F.dim_index(dim, 0)
            return self
        d = _F.dim_index(dim, self.data.ndim)
        if self.data.shape[d] != 1:
            return self
        return self.reshape(self.data.shape[:d] + self.data.shape[d + 1 :])

    def __getitem__(self, index):
        return _F.Index.apply(self, index=_F.normalize_index(index))

    def __setitem__(self, index, value):
        """In-place assignment; like every in-place update, refused on a tensor that requires
        grad unless inside ``no_grad``."""
        self._check_inplace()
        self.data[_F.normalize_index(index)] = value.data if isinstance(value, Tensor) else value

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))


def _from_data(data, dtype, copy: bool):
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray):
        arr = np.array(data, dtype=dtype, copy=copy) if (copy or dtype is not None) else data
    else:
        arr = np.array(data, dtype=dtype)
        if dtype is None and arr.dtype == np.float64:
            # Python floats default to float32, as in PyTorch; numpy float64 arrays stay float64.
            arr = arr.astype(_DEFAULT_FLOAT)
    if arr.dtype.kind not in "biufc":
        raise TypeError(
            f"data: expected numbers, got {type(data).__name__} of dtype {arr.dtype}"
        )
    return arr


def _placed(arr, dev):
    """``arr`` (a fresh host array) moved to ``dev`` (None: the cpu)."""
    if dev is None:
        return arr
    d = check_device(dev)
    return arr if d.type == "cpu" else DeviceArray.from_numpy(arr)


def tensor(data, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A new tensor holding a copy of ``data`` (on ``device``, the cpu by default).

    Python floats become float32, Python ints int64, numpy arrays keep their dtype.

    Example::

        >>> gf.tensor([[1.0, 2.0]], requires_grad=True).shape
        (1, 2)
    """
    if isinstance(data, Tensor) and type(data.data) is DeviceArray:
        arr = data.data.astype(_as_dtype(dtype) or data.data.dtype)
        if device is not None and check_device(device).type == "cpu":
            arr = arr.numpy()
        return Tensor(arr, requires_grad=requires_grad)
    arr = _placed(_from_data(data, _as_dtype(dtype), copy=True), device)
    return Tensor(arr, requires_grad=requires_grad)


def as_tensor(data, dtype=None) -> Tensor:
    """Like :func:`tensor` but shares memory with a numpy array when no cast is needed."""
    if isinstance(data, Tensor) and (dtype is None or data.dtype == _as_dtype(dtype)):
        return data
    return Tensor(_from_data(data, _as_dtype(dtype), copy=False))


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (changes to one show in the other)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array: expected np.ndarray, got {type(array).__name__}")
    return Tensor(array)


def _shape_args(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for s in shape:
        if not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"size: expected non-negative integers, got {shape}")
    return tuple(int(s) for s in shape)


def _factory(fill, shape, dtype, requires_grad, device=None):
    dt = _as_dtype(dtype) or _DEFAULT_FLOAT
    _check_grad_dtype(dt, requires_grad)
    if device is not None and check_device(device).type == "cuda":
        from . import cuda

        arr = cuda.empty(shape, dt) if fill is None else cuda.full(shape, fill, dt)
        return Tensor(arr, requires_grad=requires_grad)
    if fill is None:
        arr = np.empty(shape, dtype=dt)
    elif fill == 0:
        arr = np.zeros(shape, dtype=dt)
    else:
        arr = np.full(shape, fill, dtype=dt)
    return Tensor(arr, requires_grad=requires_grad)


def zeros(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Tensor of zeros, e.g. ``gf.zeros(3, 4)`` or ``gf.zeros((3, 4), dtype=gf.float64)``."""
    return _factory(0, _shape_args(size), dtype, requires_grad, device)


def ones(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Tensor of ones, e.g. ``gf.ones(2, 3)``."""
    return _factory(1, _shape_args(size), dtype, requires_grad, device)


def empty(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Uninitialized tensor (large ones come from the memory pool, pages already mapped)."""
    return _factory(None, _shape_args(size), dtype, requires_grad, device)


def full(size, fill_value, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Tensor of ``fill_value``, e.g. ``gf.full((2, 2), 7.0)``."""
    if dtype is None and isinstance(fill_value, (bool, np.bool_)):
        dtype = bool_
    elif dtype is None and isinstance(fill_value, (int, np.integer)):
        dtype = int64
    return _factory(fill_value, _shape_args((size,)), dtype, requires_grad, device)


def zeros_like(t, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Zeros with the shape (and dtype, unless given) of ``t``."""
    src = t.data if isinstance(t, Tensor) else np.asarray(t)
    return _factory(0, src.shape, dtype or src.dtype, requires_grad, _like_device(src, device))


def ones_like(t, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Ones with the shape (and dtype, unless given) of ``t``."""
    src = t.data if isinstance(t, Tensor) else np.asarray(t)
    return _factory(1, src.shape, dtype or src.dtype, requires_grad, _like_device(src, device))


def full_like(t, fill_value, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    src = t.data if isinstance(t, Tensor) else np.asarray(t)
    return _factory(fill_value, src.shape, dtype or src.dtype, requires_grad,
                    _like_device(src, device))


def _like_device(src, device):
    # *_like keeps the device of its model tensor, as in PyTorch
    if device is not None:
        return device
    return "cuda" if type(src) is DeviceArray else None


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False,
           device=None) -> Tensor:
    """Values from ``start`` to ``end`` (exclusive): int64 for integer arguments, else float32.

    Example::

        >>> gf.arange(3).tolist()
        [0, 1, 2]
    """
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("step: must be non-zero")
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = int64 if ints else _DEFAULT_FLOAT
    dt = _as_dtype(dtype)
    _check_grad_dtype(dt, requires_grad)
    return Tensor(_placed(np.arange(start, end, step, dtype=dt), device),
                  requires_grad=requires_grad)


from . import functional as _F  # noqa: E402  (functional imports Function from this module)
