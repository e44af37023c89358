"""The training loop's own cost: one epoch of an MLP on the digits, three ways.

``gradfuse`` runs ``Trainer.fit`` for one more epoch (loss, backward, the gradient norm as one
arena pass, accuracy, history records, callback dispatch); ``gradfuse hand loop`` is the loop
a user writes by hand with the same model and optimizer (no norm, no metric, no records);
``pytorch`` the same hand loop in PyTorch. The difference between the first two is what the
Trainer adds per epoch. ``bytes_moved`` is the epoch's input data (what any loop must read);
the GB/s column says little here: the time is GEMMs, kernels and Python.
"""

from __future__ import annotations

import numpy as np

from .harness import GRADFUSE, PYTORCH, Case

_N, _D, _H, _C, _B = 1792, 64, (128, 64), 10, 64  # 28 full batches


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((_N, _D)).astype(np.float32)
    y = rng.integers(0, _C, _N).astype(np.int64)
    return [(x[i:i + _B], y[i:i + _B]) for i in range(0, _N, _B)]


def _gf_model():
    import gradfuse as gf

    gf.manual_seed(0)
    m = gf.nn.Sequential(gf.nn.Linear(_D, _H[0]), gf.nn.ReLU(), gf.nn.Linear(_H[0], _H[1]),
                         gf.nn.ReLU(), gf.nn.Linear(_H[1], _C))
    return m, gf.optim.Adam(m.parameters(), lr=1e-3)


def _trainer():
    import gradfuse as gf
    from gradfuse.train import Trainer

    model, opt = _gf_model()
    trainer = Trainer(model, opt, gf.nn.CrossEntropyLoss(), verbose=0)
    batches = _data()
    return lambda: trainer.fit(batches, epochs=trainer.epoch + 1)


def _loop(model, opt, loss_fn, batches):
    """One epoch of the plain training loop, written the same for both libraries."""

    def epoch():
        model.train()
        for x, y in batches:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()

    return epoch


def _hand():
    import gradfuse as gf

    model, opt = _gf_model()
    loss_fn = gf.nn.CrossEntropyLoss()
    return _loop(model, opt, loss_fn, [(gf.from_numpy(x), gf.from_numpy(y)) for x, y in _data()])


def _torch():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(_D, _H[0]), torch.nn.ReLU(),
                                torch.nn.Linear(_H[0], _H[1]), torch.nn.ReLU(),
                                torch.nn.Linear(_H[1], _C))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    return _loop(model, opt, loss_fn,
                 [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in _data()])


CASES = [
    Case(f"Trainer.fit epoch MLP {_D}-{_H[0]}-{_H[1]}-{_C} Adam, {_N // _B} batches of {_B}",
         bytes_moved=_N * (_D * 4 + 8), unit="ms",
         impls={GRADFUSE: _trainer, "gradfuse hand loop": _hand, PYTORCH: _torch}),
]
