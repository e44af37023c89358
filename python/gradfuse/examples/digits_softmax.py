"""Softmax regression on scikit-learn's bundled 8x8 digits, trained by a hand-written SGD loop.

The end-to-end path of the foundation: data -> Linear -> fused compiled cross entropy ->
backward -> parameter update, with standardization computed in numpy.
"""

from __future__ import annotations

import time

import numpy as np

import gradfuse as gf


def load_digits_split(seed: int = 0, val_fraction: float = 0.2):
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "the demo needs scikit-learn's bundled digits: pip install 'gradfuse[examples]'"
        ) from e
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    n_val = int(len(x) * val_fraction)
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def train(epochs: int = 30, lr: float = 0.1, batch_size: int = 64, seed: int = 0,
          log=print) -> float:
    """Train and return the final validation accuracy."""
    (xtr, ytr), (xva, yva) = load_digits_split(seed)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    gf.manual_seed(seed)
    model = gf.nn.Linear(64, 10)
    loss_fn = gf.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    log(f"digits: {len(xtr)} train / {len(xva)} validation samples, 64 features, 10 classes")
    t0 = time.perf_counter()
    acc = 0.0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(xtr))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(model(gf.from_numpy(xtr[idx])), gf.from_numpy(ytr[idx]))
            model.zero_grad()
            loss.backward()
            with gf.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
            total += loss.item() * len(idx)
        with gf.no_grad():
            pred = model(gf.from_numpy(xva)).argmax(dim=1).numpy()
        acc = float((pred == yva).mean())
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            log(f"epoch {epoch:3d}  train loss {total / len(xtr):.4f}  val accuracy {acc:.3f}")
    log(f"done in {time.perf_counter() - t0:.2f} s: validation accuracy {acc:.3f}")
    return acc


def run(epochs: int = 30, lr: float = 0.1, batch_size: int = 64, seed: int = 0) -> int:
    """The ``gradfuse demo`` command."""
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if v < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    if not lr > 0:
        raise SystemExit(f"--lr: expected a positive learning rate, got {lr}")
    train(epochs, lr, batch_size, seed)
    return 0
