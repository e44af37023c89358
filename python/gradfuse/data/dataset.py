"""Map-style data sets: :class:`TensorDataset`, :class:`Subset` and :func:`random_split`.

A data set is anything with ``__len__`` and ``__getitem__(i)`` (PyTorch's map-style protocol).
The classes here also define ``gather(indices)``: the rows of a whole batch as a tuple of numpy
arrays, one fancy-indexing copy per array, which :class:`~gradfuse.data.DataLoader` uses
instead of ``len(batch)`` calls to ``__getitem__``. A data set of your own gets the same fast
path by defining ``gather``.

Example::

    >>> import numpy as np, gradfuse as gf
    >>> ds = gf.data.TensorDataset(np.zeros((10, 3), np.float32), np.arange(10))
    >>> train, val = gf.data.random_split(ds, [0.8, 0.2], generator=gf.Generator(0))
    >>> len(train), len(val)
    (8, 2)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..tensor import Tensor

__all__ = ["Dataset", "TensorDataset", "Subset", "random_split"]


class Dataset:
    """Base class of map-style data sets: subclasses define ``__getitem__`` and ``__len__``.

    Optionally ``gather(indices) -> tuple of arrays`` (first dimension ``len(indices)``) gives
    the DataLoader a whole batch in one call; without it samples are stacked one by one.

    Example::

        >>> class Squares(gf.data.Dataset):
        ...     def __len__(self):
        ...         return 10
        ...     def __getitem__(self, i):
        ...         return np.float32(i), i * i
        >>> xb, yb = next(iter(gf.data.DataLoader(Squares(), batch_size=4)))
        >>> yb.numpy().tolist()
        [0, 1, 4, 9]
    """

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__")


def _as_array(x, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.data
    if isinstance(x, np.ndarray):
        return x
    # a PyTorch tensor or anything else with a numpy view
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        return x.detach().cpu().numpy()
    raise TypeError(f"{name}: expected a gf.Tensor or numpy array, got {type(x).__name__}")


def _index_array(indices, name: str = "indices") -> np.ndarray:
    """``indices`` as an integer array (numpy's indexing checks the range: [-n, n))."""
    idx = np.asarray(indices)
    if idx.dtype == np.bool_ or idx.dtype.kind not in "iu":
        if idx.size == 0:
            return np.zeros(idx.shape, np.intp)
        raise TypeError(f"{name}: expected integer indices, got dtype {idx.dtype}")
    return idx


def _take(a: np.ndarray, idx: np.ndarray, name: str = "indices") -> np.ndarray:
    """Rows ``idx`` of ``a`` as a new array; one gather pass, the least a batch can cost."""
    try:
        # a[idx] is 6x faster than np.take on 1-D arrays (labels), np.take a bit faster on rows
        return a[idx] if a.ndim == 1 else np.take(a, idx, axis=0)
    except IndexError as e:
        raise IndexError(f"{name}: {e}") from None


class TensorDataset(Dataset):
    """Samples are rows of the given arrays: ``ds[i] == (t0[i], t1[i], ...)``.

    Args:
        *tensors: gf Tensors or numpy arrays (PyTorch tensors are converted), all with the
            same first dimension N. They are not copied.

    Shapes: each tensor (N, *) -> ``ds[i]`` a tuple of Tensors of shapes (*);
    ``ds.gather(idx)`` a tuple of numpy arrays of shapes (len(idx), *).

    Example::

        >>> X = np.arange(12, dtype=np.float32).reshape(6, 2); y = np.arange(6)
        >>> ds = gf.data.TensorDataset(X, y)
        >>> x0, y0 = ds[1]; x0.numpy().tolist(), int(y0.item())
        ([2.0, 3.0], 1)
    """

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("tensors: TensorDataset needs at least one tensor")
        arrays = []
        for i, t in enumerate(tensors):
            a = _as_array(t, f"tensors[{i}]")
            if a.ndim == 0:
                raise ValueError(f"tensors[{i}]: expected at least one dimension, got a scalar")
            arrays.append(a)
        n = arrays[0].shape[0]
        for i, a in enumerate(arrays[1:], 1):
            if a.shape[0] != n:
                raise ValueError(
                    f"tensors[{i}]: size mismatch between tensors: first dimension {a.shape[0]}, "
                    f"but tensors[0] has {n}"
                )
        self.arrays = tuple(arrays)

    @property
    def tensors(self) -> tuple:
        """The data as gf Tensors (sharing memory with the arrays)."""
        return tuple(Tensor(a) for a in self.arrays)

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index):
        return tuple(Tensor(a[index]) for a in self.arrays)

    def gather(self, indices) -> tuple:
        """The rows ``indices`` (int array) of every array, as new numpy arrays."""
        idx = _index_array(indices)
        return tuple(_take(a, idx) for a in self.arrays)

    def __repr__(self) -> str:
        shapes = ", ".join(str(a.shape) for a in self.arrays)
        return f"TensorDataset({shapes})"


class Subset(Dataset):
    """The samples ``dataset[indices[i]]``, without copying data.

    Args:
        dataset: a map-style data set.
        indices: sequence of ints in [0, len(dataset)).

    Example::

        >>> ds = gf.data.TensorDataset(np.arange(5))
        >>> sub = gf.data.Subset(ds, [4, 0]); len(sub), int(sub[0][0].item())
        (2, 4)
    """

    def __init__(self, dataset, indices):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"dataset: expected a map-style data set (__getitem__ and __len__), got "
                f"{type(dataset).__name__}"
            )
        n = len(dataset)
        idx = _index_array(indices).astype(np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices: expected a 1-D sequence, got shape {idx.shape}")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"indices: index {int(bad)} is out of range for length {n}")
        self.dataset = dataset
        self.indices = np.where(idx < 0, idx + n, idx)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, index):
        if isinstance(index, (numbers.Integral, np.integer)):
            return self.dataset[int(self.indices[index])]
        return [self.dataset[int(i)] for i in self.indices[index]]

    def gather(self, indices):
        """The collated batch of ``indices`` (positions in this subset): one call to the
        wrapped data set's ``gather`` when it has one, else its samples stacked."""
        from .loader import collate

        inner = _take(self.indices, _index_array(indices))
        fetch = getattr(self.dataset, "gather", None)
        if fetch is not None:
            return fetch(inner)
        return collate([self.dataset[int(i)] for i in inner])

    def __repr__(self) -> str:
        return f"Subset({self.dataset!r}, {len(self)} samples)"


def _split_lengths(lengths, n: int) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__"):
        raise TypeError(f"lengths: expected a sequence of ints or fractions, got {lengths!r}")
    vals = list(lengths)
    if not vals:
        raise ValueError("lengths: expected at least one length")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"lengths: expected ints or fractions, got {v!r}")
    if all(isinstance(v, numbers.Integral) for v in vals):
        out = [int(v) for v in vals]
        if any(v < 0 for v in out):
            raise ValueError(f"lengths: expected lengths >= 0, got {out}")
        if sum(out) != n:
            raise ValueError(
                f"lengths: sum of input lengths ({sum(out)}) does not equal the length of the "
                f"input dataset ({n})"
            )
        return out
    fr = [float(v) for v in vals]
    if any(not 0.0 <= f <= 1.0 for f in fr):
        raise ValueError(f"lengths: fractions must be in [0, 1], got {fr}")
    if not math.isclose(sum(fr), 1.0, abs_tol=1e-9):
        raise ValueError(f"lengths: fractions must sum to 1, got sum {sum(fr)!r}")
    # PyTorch's rule: floor each share, then hand the remainder out one by one round robin
    out = [int(math.floor(n * f)) for f in fr]
    for i in range(n - sum(out)):
        out[i % len(out)] += 1
    return out


def random_split(dataset, lengths, generator=None) -> list:
    """Split ``dataset`` into disjoint random :class:`Subset` s of the given lengths.

    Args:
        dataset: a map-style data set of length N.
        lengths: ints summing to N, or fractions summing to 1 (each share is ``floor(N f)``
            and the remainder goes one each to the first splits, as in PyTorch).
        generator: gf.Generator or int seed for the permutation (default: gf.default_generator).

    The permutation is ``argsort`` of N float64 uniforms drawn from the generator (see
    :func:`gradfuse.data.loader.permutation`); split k takes the next ``lengths[k]`` indices.

    Example::

        >>> ds = gf.data.TensorDataset(np.arange(10))
        >>> a, b = gf.data.random_split(ds, [7, 3], generator=0)
        >>> sorted(a.indices.tolist() + b.indices.tolist()) == list(range(10))
        True
    """
    from .loader import _as_generator, permutation

    n = len(dataset)
    sizes = _split_lengths(lengths, n)
    gen = _as_generator(generator, default=True)
    perm = permutation(n, gen)
    out, start = [], 0
    for s in sizes:
        out.append(Subset(dataset, perm[start : start + s]))
        start += s
    return out
