"""Data sets that need no download: scikit-learn's bundled digits, MNIST-format IDX files you
already have, and seeded synthetic problems.

The synthetic generators draw from gradfuse's Philox stream (``gf.Generator(seed)``), so the
same seed gives the same bits on every machine and thread count. They return numpy arrays: X
float32 (n_samples, n_features), y int64 (n_samples,) for classification, float32 for
regression.

Example::

    >>> X, y = gf.data.make_spirals(300, n_classes=3, seed=0)
    >>> X.shape, X.dtype, y.dtype, np.bincount(y).tolist()
    ((300, 2), dtype('float32'), dtype('int64'), [100, 100, 100])
"""

from __future__ import annotations

import gzip
import math
import numbers
import os
import zlib

import numpy as np

from .. import random as _random
from .._checks import check_int
from ..random import Generator
from ..tensor import Tensor
from .loader import permutation

__all__ = ["load_digits", "load_idx", "make_spirals", "make_classification", "make_regression"]

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_digits(return_tensors: bool = False):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

    Returns ``(X, y)``: X float32 (1797, 64), pixel intensities 0..16; y int64 (1797,), the
    digit 0..9. With ``return_tensors=True`` both are gf Tensors.

    Needs scikit-learn (``pip install gradfuse[examples]``).

    Example::

        >>> X, y = gf.data.load_digits()
        >>> X.shape, X.dtype, y.dtype
        ((1797, 64), dtype('float32'), dtype('int64'))
    """
    if not isinstance(return_tensors, bool):
        raise TypeError(f"return_tensors: expected a bool, got {return_tensors!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn, which is an optional extra: "
            "pip install gradfuse[examples]"
        ) from e
    d = _sk_load_digits()
    X = np.ascontiguousarray(d.data, dtype=np.float32)
    y = np.ascontiguousarray(d.target, dtype=np.int64)
    if return_tensors:
        return Tensor(X), Tensor(y)
    return X, y


def _read_maybe_gzip(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e


def load_idx(path):
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions D, then D big-endian uint32 sizes
    and the values in C order, big-endian. Gzip is recognized by its magic bytes, not the
    file name.

    Returns a numpy array of the stored shape and type (in native byte order), e.g.
    ``train-images-idx3-ubyte`` -> uint8 (60000, 28, 28).

    Raises ValueError naming the path for a wrong magic number, unknown type byte, a file
    shorter than its header says (truncated) or longer (trailing bytes).

    Example::

        >>> images = gf.data.load_idx("train-images-idx3-ubyte.gz")   # doctest: +SKIP
        >>> X = gf.data.scale_images(images.reshape(len(images), -1))  # doctest: +SKIP
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    name = os.fsdecode(path)
    raw = _read_maybe_gzip(name)
    if len(raw) < 4:
        raise ValueError(f"{name}: not an IDX file (only {len(raw)} bytes, the header needs 4)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{name}: not an IDX file (magic number {raw[:4].hex()} does not start with two "
            "zero bytes)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{name}: unknown IDX type byte 0x{code:02x} (expected one of "
            f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{name}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})"
        )
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) < expected:
        raise ValueError(
            f"{name}: truncated IDX file: shape {shape} of {dtype.newbyteorder('=')} needs "
            f"{expected} bytes, the file has {len(raw)}"
        )
    if len(raw) > expected:
        raise ValueError(
            f"{name}: {len(raw) - expected} unexpected bytes after the IDX data of shape {shape}"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))  # a native, writable copy


# ------------------------------------------------------------------ synthetic data


def _nonneg(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {v}")
    return v


def _gen(seed) -> Generator:
    if isinstance(seed, Generator):
        return seed
    return Generator(seed)  # validates: a non-negative int below 2**64


def _normal(shape, gen: Generator) -> np.ndarray:
    out = np.empty(shape, np.float64)
    _random._fill_normal(out, 0.0, 1.0, gen)
    return out


def _uniform(shape, gen: Generator) -> np.ndarray:
    out = np.empty(shape, np.float64)
    _random._fill_uniform(out, 0.0, 1.0, gen)
    return out


def _balanced_labels(n: int, k: int, gen: Generator) -> np.ndarray:
    """``n`` labels, class c taking ``n // k`` (+1 for the first ``n % k`` classes), shuffled."""
    return (np.arange(n, dtype=np.int64) % k)[permutation(n, gen)]


def make_spirals(n_samples: int = 300, n_classes: int = 3, noise: float = 0.2, seed=0):
    """Interleaved 2-D spiral arms, one per class (the CS231n toy problem).

    Sample i of class c sits at radius ``r = t`` and angle ``4 (c + t) + noise * z``, with t
    the sample's rank in its class spread over [0, 1] and z standard normal:
    ``x = (r sin(angle), r cos(angle))``. Classes are as balanced as possible and the rows are
    shuffled.

    Args:
        n_samples: total number of points (>= n_classes).
        n_classes: number of arms (>= 2).
        noise: standard deviation of the angle noise (radians) >= 0.
        seed: int seed (or a gf.Generator) for the noise and the shuffle.

    Returns: X float32 (n_samples, 2), y int64 (n_samples,).

    Example::

        >>> X, y = gf.data.make_spirals(5, n_classes=2, seed=1); X.shape, sorted(y.tolist())
        ((5, 2), [0, 0, 0, 1, 1])
    """
    n_classes = check_int("n_classes", n_classes, 2)
    n = check_int("n_samples", n_samples, n_classes)
    noise = _nonneg(noise, "noise")
    gen = _gen(seed)
    y = _balanced_labels(n, n_classes, gen)
    # rank of each sample inside its class, in row order, spread over [0, 1]
    t = np.empty(n, np.float64)
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        t[rows] = np.linspace(0.0, 1.0, rows.size)
    angle = 4.0 * (y + t) + noise * _normal(n, gen)
    X = np.stack([t * np.sin(angle), t * np.cos(angle)], axis=1)
    return X.astype(np.float32), y


def make_classification(n_samples: int = 100, n_features: int = 20, n_classes: int = 2,
                        n_informative: int = 2, class_sep: float = 1.0, seed=0):
    """Gaussian clusters on the vertices of a hypercube (a simple form of scikit-learn's).

    Each class gets a distinct random vertex of ``{-class_sep, +class_sep}^n_informative`` as
    its centre; the first ``n_informative`` features are that centre plus standard normal
    noise, the remaining ``n_features - n_informative`` are pure standard normal noise. Classes
    are as balanced as possible and rows are shuffled.

    Args:
        n_samples: number of rows (>= n_classes).
        n_features: total features (>= n_informative).
        n_classes: >= 2, at most ``2 ** n_informative``.
        n_informative: features that carry the class (>= 1).
        class_sep: half the distance between centres along each informative axis (>= 0).
        seed: int seed (or a gf.Generator).

    Returns: X float32 (n_samples, n_features), y int64 (n_samples,).

    Example::

        >>> X, y = gf.data.make_classification(200, 5, n_classes=3, n_informative=2, seed=0)
        >>> X.shape, np.bincount(y).tolist()
        ((200, 5), [67, 67, 66])
    """
    n_informative = check_int("n_informative", n_informative, 1)
    n_features = check_int("n_features", n_features, n_informative)
    n_classes = check_int("n_classes", n_classes, 2)
    if n_informative < 63 and n_classes > 2**n_informative:
        raise ValueError(
            f"n_classes: {n_classes} classes need distinct hypercube vertices, but "
            f"n_informative={n_informative} has only {2**n_informative}"
        )
    n = check_int("n_samples", n_samples, n_classes)
    class_sep = _nonneg(class_sep, "class_sep")
    gen = _gen(seed)
    k = n_informative
    if k <= 16:
        # distinct vertices: the first n_classes of a random order of all 2^k of them
        ids = permutation(2**k, gen)[:n_classes]
        bits = (ids[:, None] >> np.arange(k)) & 1
    else:
        # 2^k is too many to enumerate: random sign vectors; a repeat is dropped and only the
        # missing ones are redrawn (redrawing all never ends once repeats are likely, e.g.
        # thousands of classes on 2^17 vertices)
        bits = np.zeros((0, k), np.int64)
        while len(bits) < n_classes:
            new = (_uniform((n_classes - len(bits), k), gen) < 0.5).astype(np.int64)
            both = np.concatenate([bits, new])
            _, first = np.unique(both, axis=0, return_index=True)
            bits = both[np.sort(first)]  # first occurrences, in draw order
    centres = class_sep * (2.0 * bits - 1.0)
    y = _balanced_labels(n, n_classes, gen)
    X = _normal((n, n_features), gen)
    X[:, :k] += centres[y]
    return X.astype(np.float32), y


def make_regression(n_samples: int = 100, n_features: int = 10, noise: float = 0.0, seed=0,
                    *, n_informative=None, bias: float = 0.0, coef: bool = False):
    """A random linear regression problem: ``y = X w + bias + noise * z``.

    X is standard normal; the first ``n_informative`` entries of ``w`` are uniform on
    [0, 100) and the rest 0; z is standard normal. y is computed in float64 from the float32 X
    that is returned, then rounded to float32.

    Args:
        n_samples: rows (>= 1).
        n_features: columns (>= 1).
        noise: standard deviation of the Gaussian noise on y (>= 0).
        seed: int seed (or a gf.Generator).
        n_informative: non-zero coefficients (default all features).
        bias: added to every target.
        coef: also return ``w`` (float64 (n_features,)).

    Returns: X float32 (n_samples, n_features), y float32 (n_samples,) [, w].

    Example::

        >>> X, y, w = gf.data.make_regression(50, 3, seed=0, coef=True)
        >>> bool(np.allclose(X.astype(np.float64) @ w, y, rtol=1e-5))
        True
    """
    n = check_int("n_samples", n_samples, 1)
    d = check_int("n_features", n_features, 1)
    k = d if n_informative is None else check_int("n_informative", n_informative, 0)
    if k > d:
        raise ValueError(f"n_informative: expected at most n_features={d}, got {k}")
    noise = _nonneg(noise, "noise")
    if isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not math.isfinite(bias):
        raise ValueError(f"bias: expected a finite real number, got {bias!r}")
    if not isinstance(coef, bool):
        raise TypeError(f"coef: expected a bool, got {coef!r}")
    gen = _gen(seed)
    X = _normal((n, d), gen).astype(np.float32)
    w = np.zeros(d, np.float64)
    w[:k] = 100.0 * _uniform(k, gen)
    y = X.astype(np.float64) @ w + float(bias)
    if noise > 0:
        y += noise * _normal(n, gen)
    y = y.astype(np.float32)
    return (X, y, w) if coef else (X, y)
