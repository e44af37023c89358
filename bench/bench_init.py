"""Random initialization and dropout: Philox fills (csrc/kernels/init.cpp) against numpy's
default Generator (PCG64) and PyTorch.

Each fill writes 16M float32 values into a preallocated array/tensor (64 MiB, past every cache),
so the necessary traffic is the 64 MiB written. numpy's Generator is single-threaded and has no
truncated normal: its row resamples the out-of-range values of ``standard_normal`` until none is
left, which is what one would write. Dropout forward is timed on an input that requires grad,
so every library keeps what its backward needs (gradfuse: a 1-byte mask; PyTorch: its mask).
"""

from __future__ import annotations

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, Case

N = 16 * 2**20
P_DROP = 0.5


def _gf_fill(kind: str):
    import gradfuse as gf

    t = gf.empty(N)
    t.data.fill(0.0)  # touch the pages once: the timed calls write to mapped memory
    g = gf.Generator(0)
    init = gf.nn.init
    if kind == "uniform":
        return lambda: init.uniform_(t, generator=g)
    if kind == "normal":
        return lambda: init.normal_(t, generator=g)
    return lambda: init.trunc_normal_(t, 0.0, 1.0, -2.0, 2.0, generator=g)


def _np_trunc_normal(rng, out):
    rng.standard_normal(dtype=np.float32, out=out)
    bad = np.flatnonzero((out < -2.0) | (out > 2.0))
    while bad.size:
        out[bad] = rng.standard_normal(bad.size, dtype=np.float32)
        bad = bad[(out[bad] < -2.0) | (out[bad] > 2.0)]
    return out


def _np_fill(kind: str):
    rng = np.random.default_rng(0)
    out = np.zeros(N, dtype=np.float32)
    if kind == "uniform":
        return lambda: rng.random(dtype=np.float32, out=out)
    if kind == "normal":
        return lambda: rng.standard_normal(dtype=np.float32, out=out)
    return lambda: _np_trunc_normal(rng, out)


def _torch_fill(kind: str):
    import torch

    t = torch.zeros(N)
    init = torch.nn.init
    if kind == "uniform":
        return lambda: init.uniform_(t)
    if kind == "normal":
        return lambda: init.normal_(t)
    return lambda: init.trunc_normal_(t, 0.0, 1.0, -2.0, 2.0)


def _fill_case(kind: str) -> Case:
    return Case(
        name=f"init {kind}_ 16M float32",
        bytes_moved=N * 4,
        impls={GRADFUSE: lambda: _gf_fill(kind), NUMPY: lambda: _np_fill(kind),
               PYTORCH: lambda: _torch_fill(kind)},
    )


def _x():
    return np.random.default_rng(1).standard_normal(N, dtype=np.float32)


def _gf_dropout():
    import gradfuse as gf

    x = gf.tensor(_x(), requires_grad=True)
    g = gf.Generator(0)
    return lambda: gf.nn.functional.dropout(x, P_DROP, generator=g)


def _np_dropout():
    rng = np.random.default_rng(0)
    x = _x()
    scale = np.float32(1 / (1 - P_DROP))

    def step():
        mask = rng.random(N, dtype=np.float32) >= P_DROP  # kept for a backward
        return np.where(mask, x * scale, np.float32(0)), mask

    return step


def _torch_dropout():
    import torch

    x = torch.tensor(_x(), requires_grad=True)
    return lambda: torch.nn.functional.dropout(x, P_DROP)


CASES = [_fill_case(k) for k in ("uniform", "normal", "trunc_normal")] + [
    Case(
        name="dropout fwd 16M float32",
        # read x, write the output and a 1-byte mask
        bytes_moved=N * 4 + N * 4 + N,
        impls={GRADFUSE: _gf_dropout, NUMPY: _np_dropout, PYTORCH: _torch_dropout},
    )
]
