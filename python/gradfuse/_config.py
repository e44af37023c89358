"""Build and runtime configuration: what was compiled in and what this machine runs."""

from __future__ import annotations

import platform

import numpy as np

from . import _backend
from ._version import __version__


def get_num_threads() -> int:
    """Threads the compiled kernels use (OpenMP; 1 when built without it)."""
    return _backend.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the kernels' thread count. Results do not depend on it (fixed reduction order)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    _backend.set_num_threads(n)


def _numpy_blas() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - numpy's config layout is informational only
        return "unknown"


def config() -> dict:
    """The configuration as a dict (what :func:`show_config` prints)."""
    info = dict(_backend.build_info())
    pool = _backend.pool_stats()
    return {
        "gradfuse": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "compiler": info.get("compiler", "?") + f" ({info['compiler_version']})",
        "openmp": info["openmp"],
        "threads": _backend.get_num_threads(),
        "parallel": f"from {info['parallel_grain']} units of work; idle OpenMP workers sleep",
        "simd_baseline": ", ".join(info["simd_baseline"]) or "none",
        "simd_dispatch": info["simd_dispatch"]
        + (" (multi-versioned kernels)" if info["multiversioned"] else ""),
        "native_build": info["native_build"],
        "cuda": _cuda_info(),
        "memory_pool": f"arrays >= {info['pool_min_bytes'] // 1024} KiB, cache limit "
        f"{pool['cache_limit'] / 2**30:.1f} GiB",
        "machine": f"{platform.machine()}, {platform.system()}",
    }


def _cuda_info() -> str:
    from . import cuda

    if not cuda.is_compiled():
        return "not compiled (build with -Ccmake.define.GRADFUSE_CUDA=ON)"
    if not cuda.is_available():
        return f"compiled, not usable: {cuda.unavailable_reason()}"
    p = cuda.get_device_properties()
    return (f"{p['name']} (sm_{p['major']}{p['minor']}, {p['total_memory'] / 2**30:.0f} GiB); "
            f"built for {p['compiled_archs']}")


def show_config() -> None:
    """Print version, compiler, OpenMP and threads, SIMD, CUDA and numpy's BLAS.

    Example::

        >>> gf.show_config()   # doctest: +SKIP
        gradfuse      0.1.0
        ...
    """
    for k, v in config().items():
        print(f"{k:<14}{v}")
