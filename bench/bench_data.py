"""Data loading: one shuffled epoch of a DataLoader over an in-memory (X, y) data set.

Each call is a full epoch: draw the permutation, then gather every batch (X rows and labels)
into new arrays. bytes_moved = X and y read once and written once into batches. Peers are
written as their users would write them:

* numpy: ``rng.permutation(n)`` and ``X[idx], y[idx]`` per batch (the floor gradfuse's batched
  gather is built on, without Tensors or generator bookkeeping).
* PyTorch: ``torch.utils.data.DataLoader(TensorDataset(X, y), batch_size, shuffle=True)``,
  its default map-style path (per-sample ``__getitem__``, then ``default_collate`` stacks the
  samples), which is what that one line does.
"""

from __future__ import annotations

import functools

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, Case

SHAPES = ((16384, 784, 128), (4096, 64, 32))  # (N, D, batch): MNIST-like and digits-like


@functools.lru_cache(maxsize=2)
def _data(n: int, d: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d), dtype=np.float32), rng.integers(0, 10, n)


def _gradfuse(n, d, b):
    import gradfuse as gf

    X, y = _data(n, d)
    loader = gf.data.DataLoader(gf.data.TensorDataset(X, y), batch_size=b, shuffle=True,
                                generator=0)

    def epoch():
        for _ in loader:
            pass

    return epoch


def _numpy(n, d, b):
    X, y = _data(n, d)
    rng = np.random.default_rng(0)

    def epoch():
        perm = rng.permutation(n)
        for i in range(0, n, b):
            idx = perm[i : i + b]
            X[idx], y[idx]

    return epoch


def _pytorch(n, d, b):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    X, y = _data(n, d)
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=b,
                        shuffle=True, generator=torch.Generator().manual_seed(0))

    def epoch():
        for _ in loader:
            pass

    return epoch


CASES = [
    Case(
        name=f"DataLoader epoch {n}x{d} float32 batch {b} shuffle",
        bytes_moved=2 * n * (d * 4 + 8),
        impls={k: functools.partial(f, n, d, b) for k, f in
               ((GRADFUSE, _gradfuse), (NUMPY, _numpy), (PYTORCH, _pytorch))},
    )
    for n, d, b in SHAPES
]
