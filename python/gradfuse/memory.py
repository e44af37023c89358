"""The caching allocator behind large arrays (DESIGN.md, 'Memory').

On import gradfuse routes numpy's data allocations of 256 KiB and more through a pool in
``gradfuse._C`` (numpy's NEP 49 allocator hook; numpy keeps the handler per thread/context,
so this covers the importing thread, and other threads can opt in with
:func:`use_pool_for_numpy`). Freed
blocks are kept and handed out again, 2 MiB aligned with transparent huge pages, so the
outputs of a steady-state training step land on pages that are already mapped: no page
faults, no TLB misses, no zeroing by the kernel. Set ``GRADFUSE_POOL=0`` before import, or call
:func:`use_pool_for_numpy(False) <use_pool_for_numpy>`, to leave numpy's allocator alone.

Example::

    >>> import gradfuse as gf
    >>> gf.memory.stats()["bytes_in_use"] >= 0
    True
"""

from __future__ import annotations

from . import _backend

__all__ = ["stats", "empty_cache", "set_cache_limit", "use_pool_for_numpy", "empty"]


def stats() -> dict:
    """Counters of the pool: bytes in use and cached, peak, and how requests were served
    (``reuses`` from the cache, ``fresh`` from the OS, ``releases`` back to the OS)."""
    return dict(_backend.pool_stats())


def empty_cache() -> None:
    """Give every cached (free) block back to the OS."""
    _backend.pool_empty_cache()


def set_cache_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of freed blocks for reuse (default 1 GiB).

    Independently of the limit, a request the cache cannot serve first gives back cached
    blocks of other sizes worth as much, so the footprint follows what is in use."""
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes: expected a non-negative int, got {nbytes!r}")
    _backend.pool_set_cache_limit(nbytes)


def use_pool_for_numpy(enabled: bool = True) -> bool:
    """Route numpy's large allocations in this thread's context through the pool, or stop
    (back to numpy's default allocator).

    Returns whether anything changed. Arrays keep the allocator they were made with, so
    switching is safe at any time.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    if enabled:
        return bool(_backend.install_numpy_allocator())
    return bool(_backend.uninstall_numpy_allocator())


def empty(shape, dtype="float32"):
    """A numpy array backed by the pool regardless of the numpy allocator setting."""
    import numpy as np

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _backend.pool_empty(list(shape), np.dtype(dtype))
