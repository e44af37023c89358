"""Normalization layers: LayerNorm and BatchNorm1d (training mode) against numpy and PyTorch.

Two sizes, float32: 8192x1024 (32 MiB per array, memory traffic decides) and 128x128 (per-call
overhead decides). Forward alone, and forward + backward with a fixed upstream gradient,
including the allocation of every output as a training step does (gradfuse's come from its
pool, PyTorch's from its own allocator, numpy's temporaries from the pool too since numpy runs
in this process with gradfuse's allocator hook).

bytes_moved is the minimum traffic of each computation:
- LayerNorm forward: read x, write y (each row's statistics are computed from cache).
- LayerNorm forward + backward: that, plus read x and dy, write dx (dweight/dbias are O(D)).
- BatchNorm1d forward (training): read x twice (a channel's statistics span all rows, so no
  output can be written before the whole batch has been read), write y.
- BatchNorm1d forward + backward: that, plus read x and dy twice (the per-channel sums of dy
  and dy*xhat again span all rows before any dx is known) and write dx.

Reading the roofline: a 32 MiB array fits this machine's 260 MiB L3, so the 8192x1024 cases
can beat the copy bandwidth (measured on 256 MiB arrays). Past the L3 (65536x1024, 1 thread,
CPU time) the LayerNorm forward took 42 ms, as long as numpy's multiply(x, 2, out=y), while
np.copyto took 22 ms: glibc's copy streams its stores past the cache, ordinary stores read
each output line first (write-allocate), so any kernel writing with ordinary stores reaches
about half the copy figure there. Outputs of >= 8 MiB (y, dx) are therefore written with
streaming stores through an L1 buffer (norms.cpp, kStreamMinBytes); the 8192x1024 cases use
that path.
"""

from __future__ import annotations

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, Case

SHAPES = [(128, 128), (8192, 1024)]
EPS = 1e-5


def _inputs(n: int, d: int):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32) + 3.0
    g = rng.standard_normal((n, d), dtype=np.float32)
    return x, g


def _autograd_step(x, g, layer, backward: bool):
    """The call to time for an autograd library (gradfuse and PyTorch share the API)."""
    if not backward:
        return lambda: layer(x)

    def step():
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(g)

    return step


def _gradfuse(kind: str, n: int, d: int, backward: bool):
    import gradfuse as gf

    x, g = _inputs(n, d)
    layer = gf.nn.LayerNorm(d) if kind == "layer_norm" else gf.nn.BatchNorm1d(d)
    return _autograd_step(gf.tensor(x, requires_grad=backward), gf.tensor(g), layer, backward)


def _pytorch(kind: str, n: int, d: int, backward: bool):
    import torch

    x, g = (torch.tensor(a) for a in _inputs(n, d))  # copies: PyTorch's own allocator
    x.requires_grad_(backward)
    layer = torch.nn.LayerNorm(d) if kind == "layer_norm" else torch.nn.BatchNorm1d(d)
    return _autograd_step(x, g, layer, backward)


def _numpy_layer_norm(x, g, w, b, backward: bool):
    def forward():
        mean = x.mean(axis=1, keepdims=True)
        xc = x - mean
        rstd = 1.0 / np.sqrt((xc * xc).mean(axis=1, keepdims=True) + EPS)
        xhat = xc * rstd
        return xhat * w + b, xhat, rstd

    if not backward:
        return forward

    def step():
        y, xhat, rstd = forward()
        dw = (g * xhat).sum(axis=0)
        db = g.sum(axis=0)
        gw = g * w
        dx = rstd * (gw - gw.mean(axis=1, keepdims=True)
                     - xhat * (gw * xhat).mean(axis=1, keepdims=True))
        return y, dx, dw, db

    return step


def _numpy_batch_norm(x, g, w, b, backward: bool):
    n = x.shape[0]
    rm, rv = np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)

    def forward():
        mean = x.mean(axis=0)
        xc = x - mean
        var = (xc * xc).mean(axis=0)
        rstd = 1.0 / np.sqrt(var + EPS)
        rm[...] = 0.9 * rm + 0.1 * mean
        rv[...] = 0.9 * rv + 0.1 * var * (n / (n - 1))
        xhat = xc * rstd
        return xhat * w + b, xhat, rstd

    if not backward:
        return forward

    def step():
        y, xhat, rstd = forward()
        db = g.sum(axis=0)
        dw = (g * xhat).sum(axis=0)
        dx = (w * rstd) * (g - db / n - xhat * (dw / n))
        return y, dx, dw, db

    return step


def _numpy(kind: str, n: int, d: int, backward: bool):
    x, g = _inputs(n, d)
    w, b = np.ones(d, np.float32), np.zeros(d, np.float32)
    if kind == "layer_norm":
        return _numpy_layer_norm(x, g, w, b, backward)
    return _numpy_batch_norm(x, g, w, b, backward)


def _case(kind: str, n: int, d: int, backward: bool) -> Case:
    arrays = {("layer_norm", False): 2, ("layer_norm", True): 5,
              ("batch_norm", False): 3, ("batch_norm", True): 8}[kind, backward]
    name = "LayerNorm" if kind == "layer_norm" else "BatchNorm1d"
    return Case(
        name=f"{name} {'fwd_bwd' if backward else 'fwd'} {n}x{d}",
        bytes_moved=arrays * n * d * 4,
        impls={GRADFUSE: lambda: _gradfuse(kind, n, d, backward),
               NUMPY: lambda: _numpy(kind, n, d, backward),
               PYTORCH: lambda: _pytorch(kind, n, d, backward)},
    )


CASES = [_case(kind, n, d, backward) for kind in ("layer_norm", "batch_norm")
         for backward in (False, True) for n, d in SHAPES]


# ---------------------------------------------------------------- SyncBatchNorm (one rank's work)
# The compute a rank does in SyncBatchNorm's training forward + backward (statistics kernel,
# apply, gradient sums, input gradient), with a world of one standing in for MPI so that only
# the kernels are timed: the same traffic as BatchNorm1d's (x read twice and y written forward;
# x and dy read twice and dx written backward), split into the pieces between which the ranks
# exchange their per-channel numbers. numpy and PyTorch run their BatchNorm1d (PyTorch's
# SyncBatchNorm needs a process group).


class _OneRank:
    @staticmethod
    def get_world_size():
        return 1

    @staticmethod
    def get_rank():
        return 0

    @staticmethod
    def all_reduce_(buf, op="sum"):
        return buf


def _gradfuse_sync(n: int, d: int):
    import gradfuse as gf
    from gradfuse.nn import syncbn

    x, g = _inputs(n, d)
    xt, gt = gf.tensor(x, requires_grad=True), gf.tensor(g)
    layer = gf.nn.SyncBatchNorm(d)
    real = syncbn._dist_world

    def step():
        syncbn._dist_world = lambda: _OneRank
        try:
            xt.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(xt).backward(gt)
        finally:
            syncbn._dist_world = real

    return step


CASES += [Case(name=f"SyncBatchNorm fwd_bwd {n}x{d} (one rank's kernels)",
               bytes_moved=8 * n * d * 4,
               impls={GRADFUSE: (lambda n=n, d=d: _gradfuse_sync(n, d)),
                      NUMPY: (lambda n=n, d=d: _numpy("batch_norm", n, d, True)),
                      PYTORCH: (lambda n=n, d=d: _pytorch("batch_norm", n, d, True))})
          for n, d in SHAPES]
