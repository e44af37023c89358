"""Data scaling: gf.data scalers and scale_images against numpy, PyTorch and scikit-learn.

Fit reads X once (bytes_moved = X); transform reads X and writes the output (2 x X), the
output allocated per call as a data pipeline would (gradfuse's comes from the pool). Peers
are written as their users would write them:

* numpy: ``X.min(0)``/``X.max(0)``, ``X.mean(0)``/``X.var(0)`` for fit (float32
  accumulation, so less work than the float64 the scalers use), ``X * scale + min`` and
  ``(X - mean) / scale`` for transform, ``x.astype(float32) / 255`` for images.
* PyTorch: ``torch.aminmax`` and ``torch.var_mean`` along dim 0, the same expressions on
  tensors for transform, ``x.float().div_(255)`` (and ``.sub_(m).div_(s)``, torchvision's
  Normalize) for images.
* scikit-learn (when installed): ``MinMaxScaler`` / ``StandardScaler`` ``fit`` and
  ``transform`` (copy=True: a copy, then in-place passes).
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, SKLEARN, Case

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None

N, D = 1 << 20, 64        # 1M x 64 float32: 256 MiB
IMAGES = (60000, 784)     # MNIST's training set, flat
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@functools.lru_cache(maxsize=1)
def _features(n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= rng.uniform(0.5, 20.0, d).astype(np.float32)
    x += rng.uniform(-100.0, 100.0, d).astype(np.float32)
    return x


@functools.lru_cache(maxsize=1)
def _pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, IMAGES, dtype=np.uint8)


def _gf_scaler(kind: str):
    import gradfuse as gf

    return gf.data.MinMaxScaler() if kind == "minmax" else gf.data.StandardScaler()


def _sk_scaler(kind: str):
    from sklearn import preprocessing

    return preprocessing.MinMaxScaler() if kind == "minmax" else preprocessing.StandardScaler()


# ---- fit

def _fit_gradfuse(kind, n, d):
    x, s = _features(n, d), _gf_scaler(kind)
    return lambda: s.fit(x)


def _fit_sklearn(kind, n, d):
    x, s = _features(n, d), _sk_scaler(kind)
    return lambda: s.fit(x)


def _fit_numpy(kind, n, d):
    x = _features(n, d)
    if kind == "minmax":
        return lambda: (x.min(axis=0), x.max(axis=0))
    return lambda: (x.mean(axis=0), x.var(axis=0))


def _fit_pytorch(kind, n, d):
    import torch

    x = torch.tensor(_features(n, d))
    if kind == "minmax":
        return lambda: torch.aminmax(x, dim=0)
    return lambda: torch.var_mean(x, dim=0, unbiased=False)


# ---- transform (coefficients from a fit done in the factory, outside the timing)

def _coefficients(kind, x):
    if kind == "minmax":
        lo, hi = x.min(axis=0), x.max(axis=0)
        scale = (1.0 / (hi - lo)).astype(np.float32)
        return scale, (-lo * scale).astype(np.float32)
    return x.mean(axis=0, dtype=np.float64).astype(np.float32), x.std(axis=0).astype(np.float32)


def _transform_gradfuse(kind, n, d):
    x = _features(n, d)
    s = _gf_scaler(kind).fit(x)
    return lambda: s.transform(x)


def _transform_sklearn(kind, n, d):
    x = _features(n, d)
    s = _sk_scaler(kind).fit(x)
    return lambda: s.transform(x)


def _transform_numpy(kind, n, d):
    x = _features(n, d)
    a, b = _coefficients(kind, x)
    if kind == "minmax":
        return lambda: x * a + b
    return lambda: (x - a) / b


def _transform_pytorch(kind, n, d):
    import torch

    x = _features(n, d)
    a, b = (torch.tensor(v) for v in _coefficients(kind, x))
    x = torch.tensor(x)
    if kind == "minmax":
        return lambda: x * a + b
    return lambda: (x - a) / b


def _scaler_cases(kind: str, name: str) -> list:
    cases = []
    for op, n, d in (("fit", N, D), ("transform", N, D), ("transform", 128, D)):
        impls = {
            GRADFUSE: globals()[f"_{op}_gradfuse"],
            NUMPY: globals()[f"_{op}_numpy"],
            PYTORCH: globals()[f"_{op}_pytorch"],
        }
        if HAVE_SKLEARN:
            impls[SKLEARN] = globals()[f"_{op}_sklearn"]
        nbytes = n * d * 4 * (1 if op == "fit" else 2)
        label = "1Mx64" if n == N else f"{n}x{d}"
        cases.append(Case(
            name=f"{name} {op} {label} float32",
            bytes_moved=nbytes,
            impls={k: functools.partial(f, kind, n, d) for k, f in impls.items()},
            unit="us" if n < 1024 else None,
        ))
    return cases


# ---- images

def _images_gradfuse(mode):
    import gradfuse as gf

    x = _pixels()
    if mode == "stats":
        return lambda: gf.data.image_stats(x)
    if mode == "minmax":
        return lambda: gf.data.scale_images(x)
    return lambda: gf.data.scale_images(x, "standardize", mean=MNIST_MEAN, std=MNIST_STD)


def _images_numpy(mode):
    x = _pixels()
    if mode == "stats":
        return lambda: (x.mean() / 255, x.std() / 255)
    if mode == "minmax":
        return lambda: x.astype(np.float32) / 255
    return lambda: (x.astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD


def _images_pytorch(mode):
    import torch

    x = torch.from_numpy(_pixels())
    if mode == "stats":
        return lambda: torch.std_mean(x.float().div_(255), unbiased=False)
    if mode == "minmax":
        return lambda: x.float().div_(255)
    return lambda: x.float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)


def _image_case(mode: str) -> Case:
    n = IMAGES[0] * IMAGES[1]
    name = "image_stats" if mode == "stats" else f"scale_images {mode}"
    return Case(
        name=f"{name} {IMAGES[0]}x{IMAGES[1]} uint8",
        bytes_moved=n if mode == "stats" else 5 * n,  # bytes in (+ float32 out)
        impls={k: functools.partial(f, mode) for k, f in
               ((GRADFUSE, _images_gradfuse), (NUMPY, _images_numpy),
                (PYTORCH, _images_pytorch))},
    )


CASES = (_scaler_cases("minmax", "MinMaxScaler") + _scaler_cases("standard", "StandardScaler")
         + [_image_case(m) for m in ("minmax", "standardize", "stats")])
