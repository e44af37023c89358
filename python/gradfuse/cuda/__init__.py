"""The CUDA backend: device queries, memory statistics and device arrays.

gradfuse compiles its CUDA kernels only when built with ``GRADFUSE_CUDA=ON``
(``pip install . -Ccmake.define.GRADFUSE_CUDA=ON``). Without them, or on a machine without a
usable GPU, everything runs on the CPU as before and :func:`is_available` says False, with
:func:`unavailable_reason` saying why.

Example::

    >>> import gradfuse as gf
    >>> if gf.cuda.is_available():
    ...     model = model.to("cuda")          # parameters and buffers move to the GPU
    ... else:
    ...     print(gf.cuda.unavailable_reason())
"""

from __future__ import annotations

from .. import _backend
from .array import DeviceArray, empty, from_numpy, full, zeros

__all__ = [
    "DeviceArray",
    "is_available",
    "is_compiled",
    "unavailable_reason",
    "device_count",
    "get_device_name",
    "get_device_properties",
    "synchronize",
    "memory_stats",
    "reset_alloc_counters",
    "empty_cache",
    "empty",
    "zeros",
    "full",
    "from_numpy",
]

_state: dict = {}


def is_compiled() -> bool:
    """Whether this build of gradfuse contains the CUDA kernels."""
    return hasattr(_backend._C, "cuda")


def _probe():
    if "count" not in _state:
        if not is_compiled():
            _state["count"], _state["reason"] = 0, (
                "gradfuse was built without CUDA (rebuild with "
                "`pip install . -Ccmake.define.GRADFUSE_CUDA=ON`)"
            )
        else:
            n, why = _backend._C.cuda.device_count()
            _state["count"] = n
            _state["reason"] = f"no usable CUDA device ({why})" if n == 0 else ""
    return _state["count"], _state["reason"]


def _unavailable_reason() -> str:
    return _probe()[1] or "CUDA is available"


def is_available() -> bool:
    """True when gradfuse was built with CUDA and a GPU is usable now."""
    return _probe()[0] > 0


def unavailable_reason() -> str:
    """Why :func:`is_available` is False ('' when it is True)."""
    return _probe()[1]


def device_count() -> int:
    """Number of visible CUDA devices (0 without a CUDA build or a driver)."""
    return _probe()[0]


def _require():
    if not is_available():
        raise RuntimeError(f"cuda: {_unavailable_reason()}")
    return _backend._C.cuda


def get_device_properties(device: int = 0) -> dict:
    """name, compute capability (major, minor), total_memory, multi_processor_count,
    peak_bandwidth_gbs (from the memory clock and bus width) and the compiled archs."""
    return _require().device_properties(int(device))


def get_device_name(device: int = 0) -> str:
    return get_device_properties(device)["name"]


def synchronize() -> None:
    """Wait until every kernel queued on gradfuse's stream has finished."""
    _require().synchronize()


def memory_stats() -> dict:
    """Counters of the caching allocator: alloc_calls, malloc_calls (requests that reached
    cudaMalloc), cache_hits, allocated_bytes, reserved_bytes, peak_allocated_bytes.

    A steady training step is served from the cache: after :func:`reset_alloc_counters`
    following the first step, ``malloc_calls`` stays 0.
    """
    return _require().memory_stats()


def reset_alloc_counters() -> None:
    """Zero alloc_calls/malloc_calls/cache_hits (and the peak, to the current use)."""
    _require().reset_alloc_counters()


def empty_cache() -> None:
    """Give every cached (unused) device block back to the driver."""
    _require().empty_cache()
