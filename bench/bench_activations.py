"""Activations and softmax: the compiled kernels (csrc/kernels/activations.cpp) against numpy
and PyTorch.

Two sizes: 4096x4096 float32 (16M elements, 64 MiB per array: memory traffic decides) and
128x128 (16K elements: per-call overhead decides). ``fwd`` is ``y = f(x)`` including the
allocation of ``y``, as a training step pays it. ``fwd_bwd`` adds ``y.backward(g)`` with a
preallocated upstream gradient ``g`` and ``x.grad`` cleared each step, so it pays the
allocation of the input gradient too. The numpy reference writes each op as numpy would
(several passes with temporaries; its large arrays come from gradfuse's pool as usual here).
"""

from __future__ import annotations

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, Case

SHAPES = [(4096, 4096), (128, 128)]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x):
    # numpy has no erf; Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7) in numpy passes
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                    + t * 1.061405429))))
    return np.sign(x) * (1.0 - p * np.exp(-x * x))


_K = np.float32(np.sqrt(2.0 / np.pi))

# name -> (gradfuse call, torch call, numpy forward, numpy backward(x, y, g))
OPS = {
    "relu": (lambda F, x: F.relu(x), lambda T, x: T.nn.functional.relu(x),
             lambda x: np.maximum(x, 0), lambda x, y, g: g * (y > 0)),
    "leaky_relu": (lambda F, x: F.leaky_relu(x, 0.01),
                   lambda T, x: T.nn.functional.leaky_relu(x, 0.01),
                   lambda x: np.where(x > 0, x, x * np.float32(0.01)),
                   lambda x, y, g: np.where(x > 0, g, g * np.float32(0.01))),
    "elu": (lambda F, x: F.elu(x), lambda T, x: T.nn.functional.elu(x),
            lambda x: np.where(x > 0, x, np.expm1(x)),
            lambda x, y, g: np.where(y > 0, g, g * (y + 1))),
    "gelu": (lambda F, x: F.gelu(x), lambda T, x: T.nn.functional.gelu(x),
             lambda x: 0.5 * x * (1 + _erf(x * np.float32(0.7071067811865476))),
             lambda x, y, g: g * (0.5 * (1 + _erf(x * np.float32(0.7071067811865476)))
                                  + x * np.exp(-0.5 * x * x) * np.float32(0.3989422804014327))),
    "gelu_tanh": (lambda F, x: F.gelu(x, approximate="tanh"),
                  lambda T, x: T.nn.functional.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(_K * (x + np.float32(0.044715) * x ** 3))),
                  lambda x, y, g: g * (0.5 * (1 + (t := np.tanh(_K * (x + np.float32(0.044715)
                                                                      * x ** 3))))
                                       + 0.5 * x * (1 - t * t) * _K
                                       * (1 + np.float32(3 * 0.044715) * x * x))),
    "silu": (lambda F, x: F.silu(x), lambda T, x: T.nn.functional.silu(x),
             lambda x: x * _sigmoid(x),
             lambda x, y, g: g * (s := _sigmoid(x)) * (1 + x * (1 - s))),
    "softplus": (lambda F, x: F.softplus(x), lambda T, x: T.nn.functional.softplus(x),
                 lambda x: np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))),
                 lambda x, y, g: np.where(x > 20, g, g * _sigmoid(x))),
    "sigmoid": (lambda F, x: F.sigmoid(x), lambda T, x: T.sigmoid(x),
                _sigmoid, lambda x, y, g: g * (1 - y) * y),
    "tanh": (lambda F, x: F.tanh(x), lambda T, x: T.tanh(x),
             np.tanh, lambda x, y, g: g * (1 - y * y)),
    "softmax": (lambda F, x: F.softmax(x, -1), lambda T, x: T.softmax(x, -1),
                lambda x: (e := np.exp(x - x.max(axis=-1, keepdims=True)))
                / e.sum(axis=-1, keepdims=True),
                lambda x, y, g: y * (g - (g * y).sum(axis=-1, keepdims=True))),
    "log_softmax": (lambda F, x: F.log_softmax(x, -1), lambda T, x: T.log_softmax(x, -1),
                    lambda x: (z := x - x.max(axis=-1, keepdims=True))
                    - np.log(np.exp(z).sum(axis=-1, keepdims=True)),
                    lambda x, y, g: g - np.exp(y) * g.sum(axis=-1, keepdims=True)),
}


def _inputs(shape):
    rng = np.random.default_rng(0)
    return (rng.standard_normal(shape, dtype=np.float32) * 3,
            rng.standard_normal(shape, dtype=np.float32))


def _gradfuse(op, shape, backward):
    import gradfuse as gf

    x, g = _inputs(shape)
    x, g = gf.tensor(x, requires_grad=backward), gf.tensor(g)
    f = OPS[op][0]
    F = gf.nn.functional
    if not backward:
        return lambda: f(F, x)

    def step():
        x.grad = None
        f(F, x).backward(g)

    return step


def _pytorch(op, shape, backward):
    import torch

    x, g = (torch.tensor(a) for a in _inputs(shape))
    x.requires_grad_(backward)
    f = OPS[op][1]
    if not backward:
        return lambda: f(torch, x)

    def step():
        x.grad = None
        f(torch, x).backward(g)

    return step


def _numpy(op, shape, backward):
    x, g = _inputs(shape)
    _, _, fwd, bwd = OPS[op]
    if not backward:
        return lambda: fwd(x)
    return lambda: bwd(x, fwd(x), g)


def _case(op, shape, backward):
    n = shape[0] * shape[1]
    # forward: read x, write y; backward: read g and the saved array, write dx
    nbytes = 4 * n * (2 + (3 if backward else 0))
    return Case(
        name=f"{op} {'fwd_bwd' if backward else 'fwd'} {shape[0]}x{shape[1]}",
        bytes_moved=nbytes,
        impls={GRADFUSE: lambda: _gradfuse(op, shape, backward),
               NUMPY: lambda: _numpy(op, shape, backward),
               PYTORCH: lambda: _pytorch(op, shape, backward)},
        unit="us" if n < 2**20 else None,
    )


CASES = [_case(op, shape, backward) for shape in SHAPES for op in OPS
         for backward in (False, True)]
