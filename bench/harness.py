"""Timing, the copy-bandwidth roofline, and the markdown/JSON report.

A case's bytes moved divided by its time gives GB/s; dividing that by the copy bandwidth
measured in the same run says how close the implementation comes to the memory-bound floor,
which is the question for the byte-heavy kernels gradfuse fuses (DESIGN.md, 'Memory').
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRADFUSE, NUMPY, PYTORCH = "gradfuse", "numpy", "pytorch"
# A further peer where one exists for the concept (the data scalers); a case lists it only
# when the package imports (see bench_scale.py).
SKLEARN = "scikit-learn"

_SAMPLE_MIN_S = 1e-3  # shortest timed sample: perf_counter and loop overhead stay < 0.1%


@dataclass
class Case:
    """One benchmark: the same work done by each implementation.

    Attributes:
        name: table heading, matched by ``--filter``.
        bytes_moved: minimum necessary memory traffic of one call (inputs read once + outputs
            written once); GB/s and % of copy bandwidth are computed from it.
        impls: implementation name (GRADFUSE, NUMPY, PYTORCH) -> factory. A factory builds
            the inputs and returns the callable to time, or a context manager yielding it when
            setup must be undone afterwards (switching numpy's allocator). Factories run only
            for selected cases, and the PyTorch one only when torch imports.
        unit: fixed time unit for the table ("us" for per-op overhead cases, so the times
            read directly as microseconds per op); None picks one per value.
    """

    name: str
    bytes_moved: int
    impls: dict
    unit: str | None = None


def import_torch():
    """torch, or None when it is not installed (PyTorch rows are then left out)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def measure(fn, budget_s: float, min_samples: int) -> dict:
    """Per-call min and median seconds of ``fn()``.

    The first call is discarded (lazy initialization, first-touch page faults of inputs);
    warm-up then runs for ~10% of the budget, as a training loop's steady state is what
    matters, and estimates the per-call time. From it, each sample is ``number``
    back-to-back calls lasting >= 1 ms (so microsecond ops are not lost in timer resolution)
    and the sample count fills the budget. Min is what the machine can do; the median shows
    what a typical call costs with noise, page faults and GC pauses included (the GC stays
    on: autograd graphs are garbage a real loop collects too). Minor page faults per call are
    recorded too, since first-touch faults of fresh memory are where much CPU time goes
    (DESIGN.md, 'Memory').
    """
    gc.collect()
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= 0.1 * budget_s:
            break
    per_call = elapsed / calls
    number = max(1, math.ceil(_SAMPLE_MIN_S / per_call))
    n_samples = max(min_samples, round(0.9 * budget_s / (per_call * number)))
    samples = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n_samples):
        t0 = time.perf_counter()
        for _ in itertools.repeat(None, number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {
        "min_s": min(samples),
        "median_s": statistics.median(samples),
        "calls_per_sample": number,
        "samples": n_samples,
        "page_faults_per_call": faults / (n_samples * number),
    }


def copy_bandwidth(threads: int, repeats: int, nbytes: int = 256 * 2**20) -> dict:
    """Best read+write GB/s of ``np.copyto`` between two preallocated 256 MiB float32 arrays.

    256 MiB is far past any cache, so this is the streaming bandwidth a memory-bound kernel can
    hope for. It is measured with one thread and with ``threads`` threads each copying a
    contiguous slice (np.copyto releases the GIL): one core alone often cannot saturate the
    memory bus, and gradfuse's kernels use every thread, so the roofline is the better of the
    two. The arrays come from gradfuse's pool (huge pages, touched before timing), like large
    tensors do, and the pool's cache is emptied afterwards so cases start as in a fresh process.
    """
    import gradfuse as gf

    by_threads = _copy_gbs(threads, repeats, nbytes)
    gf.memory.empty_cache()  # the 2 x 256 MiB just freed need not stay cached
    return {"gbs": max(by_threads.values()), "gbs_by_threads": by_threads, "array_bytes": nbytes}


def _copy_gbs(threads: int, repeats: int, nbytes: int) -> dict:
    import gradfuse as gf

    n = nbytes // 4
    src, dst = gf.memory.empty(n), gf.memory.empty(n)
    src.fill(1.0)
    dst.fill(0.0)
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]
    chunks = [(dst[lo:hi], src[lo:hi]) for lo, hi in bounds]
    by_threads = {}
    with ThreadPoolExecutor(threads) as pool:
        variants = {1: lambda: np.copyto(dst, src)}
        if threads > 1:
            variants[threads] = lambda: list(pool.map(lambda c: np.copyto(*c), chunks))
        for k, fn in variants.items():
            fn()  # starts the pool's threads
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            by_threads[str(k)] = 2 * nbytes / best / 1e9
    return by_threads

def run_case(case: Case, with_torch: bool, budget_s: float, min_samples: int,
             copy_gbs: float) -> dict:
    """Time every implementation of ``case``; the record that goes to the table and JSON."""
    results = {}
    for name, factory in case.impls.items():
        if name == PYTORCH and not with_torch:
            continue
        made = factory()
        ctx = made if hasattr(made, "__enter__") else contextlib.nullcontext(made)
        with ctx as fn:
            r = measure(fn, budget_s, min_samples)
        del made, ctx, fn  # free this implementation's inputs before the next one runs
        r["gbs"] = case.bytes_moved / r["min_s"] / 1e9
        r["pct_of_copy"] = 100.0 * r["gbs"] / copy_gbs
        results[name] = r
    if PYTORCH in results:
        for r in results.values():
            r["vs_pytorch"] = results[PYTORCH]["min_s"] / r["min_s"]
    return {"name": case.name, "bytes_moved": case.bytes_moved, "unit": case.unit,
            "results": results}


_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def _fmt_time(seconds: float, unit: str | None) -> str:
    if unit is None:
        unit = "us" if seconds < 1e-3 else "ms" if seconds < 1.0 else "s"
    return f"{seconds / _UNITS[unit]:.3g} {unit.replace('us', 'µs')}"


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def format_table(record: dict) -> str:
    """The case as a markdown section: heading with bytes moved, one row per implementation."""
    lines = [
        f"### {record['name']}  ({_fmt_bytes(record['bytes_moved'])} moved per call)",
        "",
        "| implementation | min | median | GB/s | % of copy BW | vs PyTorch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in record["results"].items():
        ratio = f"{r['vs_pytorch']:.2f}x" if "vs_pytorch" in r else "n/a"
        lines.append(
            f"| {name} | {_fmt_time(r['min_s'], record['unit'])} "
            f"| {_fmt_time(r['median_s'], record['unit'])} | {r['gbs']:.2f} "
            f"| {r['pct_of_copy']:.1f}% | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def write_json(path: Path, report: dict) -> None:
    """Write the report, creating the directory (bench/results/ is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
