"""Optimizer steps: gradfuse's fused arena kernels against PyTorch's fused, foreach and
for-loop paths, in one run.

Three layouts: 16M parameters in 16 tensors and in 1024 tensors (memory traffic decides), and
17.6K parameters in 10 tensors (a 64-128-64-10 MLP's weights and biases plus two norm layers'
scale and shift: per-call overhead decides). "gradfuse+guard" is Adam with the non-finite
check on (one more read pass over the gradients). bytes_moved counts float32 params, grads and
state read once and params and state written once.
"""

from __future__ import annotations

import numpy as np

from .harness import GRADFUSE, PYTORCH, Case, import_torch

M = 1 << 20
LAYOUTS = {
    "16M/16": [(M,)] * 16,
    "16M/1024": [(16 * 1024,)] * 1024,
    "17.6K/10": [(128, 64), (128,), (128,), (128,), (64, 128), (64,), (64,), (64,), (10, 64),
                 (10,)],
}
# name -> (gradfuse/torch class, kwargs, state buffers, PyTorch fused path exists on CPU)
OPTIMIZERS = {
    "Adam": ("Adam", dict(lr=1e-3), 2, True),
    "AdamW": ("AdamW", dict(lr=1e-3), 2, True),
    "SGD-momentum": ("SGD", dict(lr=1e-3, momentum=0.9), 1, True),
    "RMSprop": ("RMSprop", dict(lr=1e-3), 1, False),
    "Adagrad": ("Adagrad", dict(lr=1e-3), 1, True),
}


def _arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def _gradfuse(cls, kw, shapes, guard=False):
    import gradfuse as gf

    ps = [gf.nn.Parameter(a) for a in _arrays(shapes)]
    opt = getattr(gf.optim, cls)(ps, **kw, skip_nonfinite=guard)
    for p, g in zip(ps, _arrays(shapes, 1)):
        p.grad = gf.Tensor(g * 1e-3)
    opt.step()  # adopts the gradients into the arena; later steps take the fast path
    return opt.step


def _pytorch(cls, kw, shapes, mode):
    torch = import_torch()
    ps = [torch.tensor(a, requires_grad=True) for a in _arrays(shapes)]
    for p, g in zip(ps, _arrays(shapes, 1)):
        p.grad = torch.tensor(g * 1e-3)
    flags = {"fused": dict(fused=True), "foreach": dict(foreach=True),
             "for-loop": dict(foreach=False)}[mode]
    opt = getattr(torch.optim, cls)(ps, **kw, **flags)
    opt.step()  # state allocated before timing
    return opt.step


def _case(opt_name, layout) -> Case:
    cls, kw, nstate, has_fused = OPTIMIZERS[opt_name]
    shapes = LAYOUTS[layout]
    n = sum(int(np.prod(s)) for s in shapes)
    nbytes = n * 4 * (2 + nstate) + n * 4 * (1 + nstate)  # read p, g, state; write p, state
    impls = {GRADFUSE: lambda: _gradfuse(cls, kw, shapes)}
    if opt_name == "Adam":
        impls["gradfuse+guard"] = lambda: _gradfuse(cls, kw, shapes, guard=True)
    if import_torch() is not None:
        # PYTORCH is the reference column (vs PyTorch): the fused path where CPU has one
        first = "fused" if has_fused else "foreach"
        impls[PYTORCH] = lambda: _pytorch(cls, kw, shapes, first)
        if has_fused:
            impls["pytorch foreach"] = lambda: _pytorch(cls, kw, shapes, "foreach")
        impls["pytorch for-loop"] = lambda: _pytorch(cls, kw, shapes, "for-loop")
    small = n < M
    return Case(name=f"optim {opt_name} {layout}", bytes_moved=nbytes, impls=impls,
                unit="us" if small else None)


CASES = [_case(o, layout) for layout in LAYOUTS for o in OPTIMIZERS]
