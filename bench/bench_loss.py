"""Softmax cross-entropy: the fused kernel (csrc/kernels/loss.cpp) against numpy and PyTorch.

Two sizes: 128x10 is a small classifier head, where per-call overhead decides; 8192x1000 is
32 MiB of logits, where memory traffic decides. Forward alone and forward+backward, float32,
mean reduction. The numpy reference runs in this process as numpy normally would here, so
its large temporaries come from gradfuse's pool (pages already mapped).
"""

from __future__ import annotations

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, Case

SHAPES = [(128, 10), (8192, 1000)]


def _inputs(n: int, c: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, c), dtype=np.float32), rng.integers(0, c, n, dtype=np.int64)


def _autograd_step(x, t, cross_entropy, backward: bool):
    """The call to time for an autograd library (gradfuse and PyTorch share the API)."""
    if not backward:
        return lambda: cross_entropy(x, t)

    def step():
        x.grad = None
        cross_entropy(x, t).backward()

    return step


def _gradfuse(n: int, c: int, backward: bool):
    import gradfuse as gf

    x, t = _inputs(n, c)
    x, t = gf.tensor(x, requires_grad=backward), gf.tensor(t)
    return _autograd_step(x, t, gf.nn.functional.cross_entropy, backward)


def _numpy(n: int, c: int, backward: bool):
    x, t = _inputs(n, c)
    rows = np.arange(n)

    def forward():
        # Subtracting the row max keeps exp from overflowing; loss = logsumexp(z) - z[target].
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1)
        return (np.log(s) - z[rows, t]).mean(), e, s

    if not backward:
        return forward

    def step():
        loss, e, s = forward()
        e /= s[:, None]  # softmax, in place: the gradient is (softmax - onehot) / N
        e[rows, t] -= 1.0
        e *= 1.0 / n
        return loss, e

    return step


def _pytorch(n: int, c: int, backward: bool):
    import torch

    x, t = (torch.tensor(a) for a in _inputs(n, c))  # copies: PyTorch's own allocator
    x.requires_grad_(backward)
    return _autograd_step(x, t, torch.nn.functional.cross_entropy, backward)


def _case(n: int, c: int, backward: bool) -> Case:
    # Logits and int64 targets read once, the scalar loss written; backward also writes the
    # (N, C) gradient (a fused kernel need not re-read the logits).
    nbytes = n * c * 4 + n * 8 + 4 + (n * c * 4 if backward else 0)
    return Case(
        name=f"cross_entropy {'fwd_bwd' if backward else 'fwd'} {n}x{c}",
        bytes_moved=nbytes,
        impls={GRADFUSE: lambda: _gradfuse(n, c, backward),
               NUMPY: lambda: _numpy(n, c, backward),
               PYTORCH: lambda: _pytorch(n, c, backward)},
    )


CASES = [_case(n, c, backward) for backward in (False, True) for n, c in SHAPES]
