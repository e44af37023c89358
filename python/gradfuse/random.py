"""Counter-based random numbers: Philox4x32-10 generators, seeding, and the raw fills.

A :class:`Generator` is two 64-bit integers: the ``seed`` (Philox's key) and the ``offset``
(the next unused 128-bit block of the stream). A fill of ``n`` values is a pure function of
``(seed, offset, n)``, computed by the compiled kernels (csrc/kernels/init.cpp) on any number of
threads with the same bits, after which the offset moves past the blocks the fill used. So a run
is reproduced exactly by its seed, and ``get_state``/``set_state`` capture it in 16 bytes.

Stream layout (csrc/rng/philox.h has the full contract): block ``b`` is Philox4x32-10 of the
counter ``(b mod 2^32, b >> 32, 0, 0)`` under the key ``(seed mod 2^32, seed >> 32)``; a fill
reads tiles of 16 blocks (64 words) and stores tile word ``16 r + j`` (word ``r`` of block ``j``)
as value ``16 r + j`` of the tile. float32 values and masks take one word each (64 per tile),
float64 values two (32 per tile). A fill of ``n`` values therefore advances the offset by
``16 * ceil(n / V)`` blocks, V = 64 (float32, masks) or 32 (float64), and two fills of ``n1``
(a multiple of V) and ``n2`` values equal one fill of ``n1 + n2``.

Word-to-value maps (exact; all arithmetic is IEEE with no fused multiply-adds):

* float32 uniform on [0, 1): ``(w >> 8) * 2**-24``; float64: ``((w0 << 21) | (w1 >> 11)) * 2**-53``
  from two words. ``uniform_(a, b)`` returns ``a + (b - a) u`` in the dtype, clamped to [a, b).
* normal: Box-Muller, ``r = sqrt(-2 ln u1)`` with ``u1 = ((w0 >> 8) + 1) * 2**-24`` in (0, 1],
  ``theta = 2 pi u2``, values ``r cos(theta)`` and ``r sin(theta)`` (ln, sin and cos are
  gradfuse's own polynomials, within a few ulp, so the stream is the same on every platform).
* truncated normal: inverse CDF of a uniform between the CDF values of the bounds (float64:
  Acklam's approximation refined by one Halley step; float32: Giles's erfinv and Acklam's tail in
  float32, within 6 ulp, or Acklam's in double beyond ~13 std); results are clamped so bounds
  hold exactly.
* Bernoulli(p): 1 when the word is below ``round(p * 2**32)``.

Example::

    >>> g = gf.Generator(0)
    >>> a = gf.rand(3, generator=g)
    >>> state = g.get_state()
    >>> b = gf.rand(3, generator=g)
    >>> _ = g.set_state(state)
    >>> bool((gf.rand(3, generator=g).numpy() == b.numpy()).all())
    True
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import weakref

import numpy as np

from . import _backend
from .cuda.array import DeviceArray
from .tensor import _DEFAULT_FLOAT, Tensor, _as_dtype, _shape_args, check_device

__all__ = [
    "Generator",
    "default_generator",
    "manual_seed",
    "seed",
    "initial_seed",
    "get_rng_state",
    "set_rng_state",
    "rand",
    "randn",
    "bernoulli_",
]

_U64 = (1 << 64) - 1
_DEFAULT_SEED = 67280421310721  # PyTorch's default CPU seed: a fresh process is reproducible


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= _U64:
        raise ValueError(f"seed: expected a non-negative int below 2**64, got {seed!r}")
    return int(seed)


class Generator:
    """A Philox4x32-10 random stream: ``seed`` (the key) and ``offset`` (the next block).

    Every random fill in gradfuse (``gf.nn.init``, dropout, :func:`rand`, :func:`randn`) takes
    an optional ``generator=``; without one it draws from :data:`default_generator`. A generator
    may be shared between threads (draws are serialized by a lock).

    Args:
        seed: 64-bit non-negative int; None gives PyTorch's default seed 67280421310721.

    Example::

        >>> g = gf.Generator(42)
        >>> w = gf.nn.init.normal_(gf.empty(3, 4), generator=g)
        >>> g.initial_seed(), g.offset
        (42, 16)
    """

    def __init__(self, seed=None):
        self._seed = _DEFAULT_SEED if seed is None else _check_seed(seed)
        self._offset = 0
        self._lock = threading.Lock()
        _ALL_GENERATORS.add(self)

    # ------------------------------------------------------------ seeding
    def manual_seed(self, seed) -> Generator:
        """Restart the stream at ``seed`` (offset 0); returns self."""
        s = _check_seed(seed)
        with self._lock:
            self._seed, self._offset = s, 0
        return self

    def seed(self) -> int:
        """Seed from the operating system's entropy (os.urandom); returns the new seed."""
        s = int.from_bytes(os.urandom(8), "little")
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        """The seed of the stream (set by the constructor, ``manual_seed`` or ``seed``)."""
        return self._seed

    @property
    def offset(self) -> int:
        """The next unused 128-bit block of the stream."""
        return self._offset

    # ------------------------------------------------------------ state
    def get_state(self) -> Tensor:
        """The full state as a uint8 Tensor of 16 bytes: seed, then offset (little-endian u64).

        Example::

            >>> g = gf.Generator(1); s = g.get_state(); s.shape
            (16,)
        """
        with self._lock:
            words = np.array([self._seed, self._offset], dtype="<u8")
        return Tensor(words.view(np.uint8).copy())

    def set_state(self, new_state) -> Generator:
        """Restore a state from :meth:`get_state` (Tensor, ndarray or 16 bytes); returns self."""
        if isinstance(new_state, Tensor):
            new_state = new_state.data
        if isinstance(new_state, (bytes, bytearray, memoryview)):
            new_state = np.frombuffer(bytes(new_state), dtype=np.uint8)
        if not isinstance(new_state, np.ndarray):
            raise TypeError(
                "new_state: expected a uint8 Tensor from get_state(), got "
                f"{type(new_state).__name__}"
            )
        if new_state.dtype != np.uint8 or new_state.shape != (16,):
            raise ValueError(
                "new_state: expected 16 uint8 values (seed and offset as little-endian uint64), "
                f"got dtype {new_state.dtype} shape {new_state.shape}"
            )
        seed_, offset = (int(v) for v in np.ascontiguousarray(new_state).view("<u8"))
        with self._lock:
            self._seed, self._offset = seed_, offset
        return self

    # ------------------------------------------------------------ drawing
    def _draw(self, kernel):
        """Run ``kernel(seed, offset) -> (result, blocks)`` and advance past ``blocks``.

        The offset moves only when the kernel returns: a call rejected for bad input leaves the
        stream where it was.
        """
        with self._lock:
            result, blocks = kernel(self._seed, self._offset)
            self._offset = (self._offset + int(blocks)) & _U64
        return result

    def __repr__(self) -> str:
        return f"gradfuse.Generator(seed={self._seed}, offset={self._offset})"

    def __getstate__(self):
        return {"seed": self._seed, "offset": self._offset}

    def __setstate__(self, state):
        offset = state["offset"]
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or \
                not 0 <= offset <= _U64:
            raise ValueError(f"offset: expected a non-negative int below 2**64, got {offset!r}")
        self._seed, self._offset = _check_seed(state["seed"]), int(offset)
        self._lock = threading.Lock()
        _ALL_GENERATORS.add(self)


# every live Generator, so that a forked child can renew their locks
_ALL_GENERATORS: weakref.WeakSet = weakref.WeakSet()

default_generator = Generator()


def _new_locks_in_child() -> None:
    # a thread of the parent may have held a lock at the fork; in the child it would never be
    # released, and the next draw from that generator would hang
    for gen in list(_ALL_GENERATORS):
        gen._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)


def manual_seed(seed) -> Generator:
    """Seed the default generator (offset 0); returns it. Same seed, same initialization.

    Example::

        >>> gf.manual_seed(0); a = gf.nn.Linear(2, 2).weight.data.copy()
        >>> gf.manual_seed(0); bool((gf.nn.Linear(2, 2).weight.data == a).all())
        True
    """
    return default_generator.manual_seed(seed)


def seed() -> int:
    """Seed the default generator from os.urandom; returns the seed."""
    return default_generator.seed()


def initial_seed() -> int:
    """The default generator's seed."""
    return default_generator.initial_seed()


def get_rng_state() -> Tensor:
    """The default generator's state (16 uint8 values); see :meth:`Generator.get_state`."""
    return default_generator.get_state()


def set_rng_state(new_state) -> None:
    """Restore the default generator from :func:`get_rng_state`."""
    default_generator.set_state(new_state)


# ---------------------------------------------------------------- fills (used by gf.nn.init)


def _generator(generator=None) -> Generator:
    if generator is None:
        return default_generator
    if not isinstance(generator, Generator):
        raise TypeError(
            f"generator: expected a gf.Generator or None, got {type(generator).__name__}"
        )
    return generator


def _real(value, name: str) -> float:
    if isinstance(value, Tensor) and value.data.size == 1:
        value = value.data.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name}: got nan")
    return v


def _float_array(tensor, name: str = "tensor") -> np.ndarray:
    """The float32/float64 numpy array behind a Tensor (or an ndarray), to be filled in place."""
    arr = tensor.data if isinstance(tensor, Tensor) else tensor
    # a DeviceArray (a Tensor on the GPU) is filled on the device, with the CPU fill's bits
    if not isinstance(arr, (np.ndarray, DeviceArray)):
        raise TypeError(f"{name}: expected a gf.Tensor or numpy array, got {type(tensor).__name__}")
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: random fills need dtype float32 or float64, got {arr.dtype}")
    if not arr.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return arr


def _fill(kernel, arr: np.ndarray, generator, *params) -> None:
    """``kernel(out, seed, offset, *params)`` into ``arr`` in C order, whatever its layout."""
    gen = _generator(generator)
    direct = arr.flags.c_contiguous and arr.flags.aligned
    empty = DeviceArray.empty if type(arr) is DeviceArray else np.empty
    target = arr if direct else empty(arr.shape, arr.dtype)
    gen._draw(lambda s, o: (None, kernel(target, s, o, *params)))
    if target is not arr:
        arr[...] = target


def _fill_uniform(arr, a, b, generator=None):
    _fill(_backend.uniform_fill, arr, generator, a, b)


def _fill_normal(arr, mean, std, generator=None):
    _fill(_backend.normal_fill, arr, generator, mean, std)


def _fill_trunc_normal(arr, mean, std, a, b, generator=None):
    _fill(_backend.trunc_normal_fill, arr, generator, mean, std, a, b)


def bernoulli_(tensor, p=0.5, generator=None):
    """Fill ``tensor`` in place with 1 (probability ``p``) or 0; returns it.

    Args:
        tensor: float32/float64 Tensor (or numpy array) of any shape.
        p: probability in [0, 1] (exactly ``round(p * 2**32) / 2**32``).

    Example::

        >>> m = gf.random.bernoulli_(gf.empty(2, 3), 0.5, generator=gf.Generator(0))
        >>> sorted(set(m.numpy().ravel().tolist())) <= [0.0, 1.0]
        True
    """
    arr = _float_array(tensor)
    p = _real(p, "p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p}")
    _fill(_backend.bernoulli_fill, arr, generator, p)
    return tensor


def _random_tensor(size, dtype, requires_grad, fill, device=None):
    shape = _shape_args(size)
    # checked first: a refused device draws nothing from the generator
    dev = None if device is None else check_device(device)
    dt = _DEFAULT_FLOAT if dtype is None else _as_dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    arr = np.empty(shape, dtype=dt)
    fill(arr)
    if dev is not None and dev.type == "cuda":
        arr = DeviceArray.from_numpy(arr)  # drawn on the host: the CPU's bits by construction
    return Tensor(arr, requires_grad=requires_grad)


def rand(*size, generator=None, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A Tensor of the given shape, uniform on [0, 1) (float32 unless ``dtype`` says otherwise).

    Example::

        >>> gf.rand(2, 3, generator=gf.Generator(0)).shape
        (2, 3)
    """
    return _random_tensor(size, dtype, requires_grad,
                          lambda a: _fill_uniform(a, 0.0, 1.0, generator), device)


def randn(*size, generator=None, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A Tensor of the given shape, standard normal (float32 unless ``dtype`` says otherwise).

    Example::

        >>> gf.randn(4, generator=gf.Generator(0)).dtype
        dtype('float32')
    """
    return _random_tensor(size, dtype, requires_grad,
                          lambda a: _fill_normal(a, 0.0, 1.0, generator), device)
