"""Tensor-level costs that every op pays: Python autograd overhead, and fresh memory.

The small-op cases use 4-element tensors, so the time is all overhead (dispatch, graph
recording, backward bookkeeping); numpy on bare arrays is the floor. The allocate-and-fill
case writes a fresh 64 MiB array per call, which costs a page fault per 4 KiB page unless the
memory is reused: gradfuse draws it from its pool (DESIGN.md, 'Memory'), numpy runs with the
pool switched off, and PyTorch uses its own allocator.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, Case

_SMALL = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
_FILL_N = 16 * 2**20  # float32 elements: 64 MiB


def _pair(lib: str):
    """Two 4-element float32 leaves, requiring grad for the autograd libraries."""
    if lib == NUMPY:
        return _SMALL.copy(), _SMALL.copy()
    if lib == GRADFUSE:
        import gradfuse as gf

        return gf.tensor(_SMALL, requires_grad=True), gf.tensor(_SMALL, requires_grad=True)
    import torch

    return torch.tensor(_SMALL, requires_grad=True), torch.tensor(_SMALL, requires_grad=True)


def _add(lib: str):
    a, b = _pair(lib)
    return lambda: a + b


def _chain(lib: str):
    a, b = _pair(lib)
    if lib == NUMPY:

        def step():
            # d/da sum((a + b) * a) = (a + b) + a, d/db = a: the work autograd has to do.
            s = a + b
            return (s * a).sum(), s + a, a.copy()

        return step

    def step():
        a.grad = b.grad = None
        ((a + b) * a).sum().backward()

    return step


@contextlib.contextmanager
def _numpy_fresh_fill():
    """numpy's own allocator: a 64 MiB array is a fresh mmap, faulted in page by page."""
    import gradfuse as gf

    changed = gf.memory.use_pool_for_numpy(False)
    try:
        yield lambda: np.empty(_FILL_N, dtype=np.float32).fill(1.0)
    finally:
        if changed:
            gf.memory.use_pool_for_numpy(True)


def _gradfuse_fill():
    import gradfuse as gf

    return lambda: gf.empty(_FILL_N).data.fill(1.0)


def _pytorch_fill():
    import torch

    return lambda: torch.empty(_FILL_N, dtype=torch.float32).fill_(1.0)


CASES = [
    Case("add 4-element requires_grad", bytes_moved=3 * 16, unit="us",
         impls={lib: (lambda lib=lib: _add(lib)) for lib in (GRADFUSE, NUMPY, PYTORCH)}),
    # Reads a and b, writes the scalar loss and both gradients.
    Case("chain ((a+b)*a).sum().backward() 4-element", bytes_moved=4 * 16 + 4, unit="us",
         impls={lib: (lambda lib=lib: _chain(lib)) for lib in (GRADFUSE, NUMPY, PYTORCH)}),
    Case("alloc_fill 64MiB float32", bytes_moved=_FILL_N * 4,
         impls={GRADFUSE: _gradfuse_fill, NUMPY: _numpy_fresh_fill, PYTORCH: _pytorch_fill}),
]
