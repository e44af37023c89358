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


# --------------------------------------------------------------------------- normalization
# float64, straight from the definitions; each returns the output and, given an upstream
# gradient dy, the gradients of input, weight and bias.


def _affine_grads(xhat, dy, w, axes_w):
    dw = (dy * xhat).sum(axis=axes_w)
    db = dy.sum(axis=axes_w)
    return dw, db


def layer_norm(x, ndim, w=None, b=None, eps=1e-5, dy=None, rms=False):
    """Normalize over the last ``ndim`` axes; returns y, (dx, dw, db) when dy is given."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - ndim, x.ndim))
    mean = 0.0 if rms else x.mean(axis=axes, keepdims=True)
    xc = x - mean
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    xhat = xc * rstd
    wf = np.ones(x.shape[x.ndim - ndim:]) if w is None else np.asarray(w, np.float64)
    bf = 0.0 if b is None else np.asarray(b, np.float64)
    y = xhat * wf + bf
    if dy is None:
        return y
    dy = np.asarray(dy, np.float64)
    g = dy * wf
    m = 1.0 if rms else 0.0
    dx = rstd * (g - (1 - m) * g.mean(axis=axes, keepdims=True)
                 - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    lead = tuple(range(x.ndim - ndim))
    dw, db = _affine_grads(xhat, dy, w, lead)
    return y, (dx, dw, db)


def batch_norm(x, w=None, b=None, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5, dy=None):
    """(N, C, *) input; returns y, new running stats (or None), and grads when dy is given."""
    x = np.asarray(x, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    new_rm = new_rv = None
    if training:
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        if running_mean is not None:
            new_rm = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean
            new_rv = ((1 - momentum) * np.asarray(running_var, np.float64)
                      + momentum * var * m / (m - 1))
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * rstd.reshape(shape)
    wf = np.ones(x.shape[1]) if w is None else np.asarray(w, np.float64)
    bf = np.zeros(x.shape[1]) if b is None else np.asarray(b, np.float64)
    y = xhat * wf.reshape(shape) + bf.reshape(shape)
    if dy is None:
        return y, new_rm, new_rv
    dy = np.asarray(dy, np.float64)
    dw, db = _affine_grads(xhat, dy, w, axes)
    k = (wf * rstd).reshape(shape)
    if training:
        dx = k * (dy - (db / m).reshape(shape) - xhat * (dw / m).reshape(shape))
    else:
        dx = k * dy
    return y, new_rm, new_rv, (dx, dw, db)


def group_norm(x, groups, w=None, b=None, eps=1e-5, dy=None):
    """(N, C, *) input, C/groups channels per group; grads when dy is given."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    rstd = 1.0 / np.sqrt(xg.var(axis=2, keepdims=True) + eps)
    xhat = ((xg - mean) * rstd).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    wf = np.ones(c) if w is None else np.asarray(w, np.float64)
    bf = np.zeros(c) if b is None else np.asarray(b, np.float64)
    y = xhat * wf.reshape(shape) + bf.reshape(shape)
    if dy is None:
        return y
    dy = np.asarray(dy, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    dw, db = _affine_grads(xhat, dy, w, axes)
    g = (dy * wf.reshape(shape)).reshape(n, groups, -1)
    xh = xhat.reshape(n, groups, -1)
    dx = rstd * (g - g.mean(axis=2, keepdims=True) - xh * (g * xh).mean(axis=2, keepdims=True))
    return y, (dx.reshape(x.shape), dw, db)


# --------------------------------------------------------------------------- Philox4x32-10
# Salmon et al., SC'11 (Random123's philox.h): the stream layout of csrc/rng/philox.h, in numpy.

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
TILE_BLOCKS = 16


def philox4x32_10(ctr, key):
    """Philox4x32-10 of counters ``ctr`` (n, 4) under keys ``key`` (2,) or (n, 2): (n, 4) uint32."""
    c = np.array(ctr, dtype=np.uint64).reshape(-1, 4)
    k = np.broadcast_to(np.array(key, dtype=np.uint64).reshape(-1, 2), (len(c), 2)).copy()
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(PHILOX_M0) * c[:, 0]  # < 2^64: no wrap
        p1 = np.uint64(PHILOX_M1) * c[:, 2]
        c = np.stack([(p1 >> np.uint64(32)) ^ c[:, 1] ^ k[:, 0], p1 & mask,
                      (p0 >> np.uint64(32)) ^ c[:, 3] ^ k[:, 1], p0 & mask], axis=1)
        k[:, 0] = (k[:, 0] + np.uint64(PHILOX_W0)) & mask
        k[:, 1] = (k[:, 1] + np.uint64(PHILOX_W1)) & mask
    return c.astype(np.uint32)


def philox_blocks(seed, offset, n_blocks):
    """Words of blocks offset .. offset + n_blocks - 1 of the stream keyed by ``seed``: (n, 4)."""
    blocks = [(offset + j) % 2**64 for j in range(n_blocks)]
    ctr = np.array([[b & 0xFFFFFFFF, b >> 32, 0, 0] for b in blocks], dtype=np.uint64)
    return philox4x32_10(ctr, [seed & 0xFFFFFFFF, seed >> 32])


def philox_tiles(seed, offset, n_tiles):
    """The fill order of philox.h: W[t, r, j] = word r of block offset + 16 t + j."""
    w = philox_blocks(seed, offset, n_tiles * TILE_BLOCKS).reshape(n_tiles, TILE_BLOCKS, 4)
    return w.transpose(0, 2, 1)


def philox_fill_words(seed, offset, n):
    """The 32-bit word behind each value of an n-value float32 (or mask) fill."""
    tiles = -(-n // 64)
    return philox_tiles(seed, offset, tiles).reshape(-1)[:n]


def philox_u01_f32(w):
    return ((w >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)


def philox_u01_f64(hi, lo):
    m = (hi.astype(np.uint64) << np.uint64(21)) | (lo.astype(np.uint64) >> np.uint64(11))
    return m.astype(np.float64) * 2.0**-53


def philox_fill_pairs_f64(seed, offset, n):
    """(hi, lo) words behind each value of an n-value float64 fill: value 32 t + 16 h + j uses
    words 2h, 2h + 1 of block j of tile t."""
    tiles = -(-n // 32)
    w = philox_tiles(seed, offset, tiles)  # (t, 4, 16)
    hi = w[:, 0::2, :].reshape(-1)[:n]
    lo = w[:, 1::2, :].reshape(-1)[:n]
    return hi, lo


def box_muller_f32_reference(seed, offset, n):
    """float64 Box-Muller of the float32 normal layout (values r cos / r sin per word pair)."""
    tiles = -(-n // 64)
    w = philox_tiles(seed, offset, tiles)  # (t, 4, 16)
    out = np.empty((tiles, 4, TILE_BLOCKS))
    for pair in (0, 1):
        wa, wb = w[:, 2 * pair, :], w[:, 2 * pair + 1, :]
        u1 = ((wa >> np.uint32(8)).astype(np.float64) + 1) * 2.0**-24
        u2 = (wb >> np.uint32(8)).astype(np.float64) * 2.0**-24
        r = np.sqrt(-2 * np.log(u1))
        out[:, 2 * pair, :] = r * np.cos(2 * np.pi * u2)
        out[:, 2 * pair + 1, :] = r * np.sin(2 * np.pi * u2)
    return out.reshape(-1)[:n]


def box_muller_f64_reference(seed, offset, n):
    tiles = -(-n // 32)
    w = philox_tiles(seed, offset, tiles)
    u1 = (philox_u01_f64(w[:, 0, :], w[:, 1, :]) + 2.0**-53)
    u2 = philox_u01_f64(w[:, 2, :], w[:, 3, :])
    r = np.sqrt(-2 * np.log(u1))
    out = np.stack([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1)
    return out.reshape(-1)[:n]
