"""Shared by tests/test_distributed.py and the scripts it runs under mpiexec: the model, the
data and the single-process reference run, so both sides compute the same thing."""

import numpy as np

import gradfuse as gf

STEPS = 20
BATCH = 128  # global batch; each of 2 ranks takes BATCH // 2 rows of every batch
N_IN, N_HID, N_OUT = 20, 33, 5  # odd sizes: arena segments with padding
ADAM = dict(lr=1e-2, betas=(0.9, 0.99))


def make_model(seed: int = 1000, hidden: int = N_HID):
    gf.manual_seed(seed)
    return gf.nn.Sequential(gf.nn.Linear(N_IN, hidden), gf.nn.Tanh(),
                            gf.nn.Linear(hidden, N_OUT))


def make_data(steps: int = STEPS, batch: int = BATCH):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((steps, batch, N_IN)).astype(np.float32)
    y = rng.integers(0, N_OUT, size=(steps, batch))
    return x, y


def rank_slice(rank: int, world: int, batch: int = BATCH) -> slice:
    per = batch // world
    return slice(rank * per, (rank + 1) * per)


def train_step(model, opt, x, y, clip=None):
    loss = gf.nn.functional.cross_entropy(model(gf.Tensor(x)), gf.Tensor(y))
    opt.zero_grad()
    loss.backward()
    norm = opt.clip_grad_norm_(clip) if clip is not None else None
    ok = opt.step()
    return float(loss.data), norm, ok


def params(model) -> dict:
    return {n: p.data.copy() for n, p in model.named_parameters()}


def single_run(steps=STEPS, start=0, model=None, opt=None, rows=slice(None)):
    """The single-process reference: batch BATCH, steps [start, steps)."""
    x, y = make_data()
    if model is None:
        model = make_model()
        opt = gf.optim.Adam(model.parameters(), **ADAM)
    for s in range(start, steps):
        train_step(model, opt, x[s][rows], y[s][rows])
    return model, opt
