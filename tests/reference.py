"""Plain numpy reference implementations the compiled kernels are checked against."""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """PyTorch's definition, in float64: returns (loss, dloss/dx for the given reduction)."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    keep = target != ignore_index
    t = np.where(keep, target, 0)
    logp = log_softmax(x)
    p = np.exp(logp)
    eps = label_smoothing
    wy = w[t] * keep
    nll = -logp[np.arange(n), t] * wy
    smooth = -(logp * w).sum(axis=1) * keep
    rows = (1 - eps) * nll + eps / c * smooth
    onehot = np.zeros_like(x)
    onehot[np.arange(n), t] = 1.0
    grad = (1 - eps) * wy[:, None] * (p - onehot) + eps / c * keep[:, None] * (w.sum() * p - w)
    if reduction == "none":
        return rows, grad
    if reduction == "sum":
        return rows.sum(), grad
    denom = wy.sum()
    return rows.sum() / denom, grad / denom


def mse(a, b, reduction="mean"):
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if reduction == "none":
        return d * d
    return (d * d).sum() if reduction == "sum" else (d * d).mean()
