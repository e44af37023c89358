"""DataLoader: mini-batches of a map-style data set, shuffled by gradfuse's Philox generator.

Epoch order (the exact contract, so a run is reproduced from its seed):

* With ``shuffle=True``, each epoch (each ``iter(loader)``) starts by drawing N float64
  uniforms from ``loader.generator`` (one fill: ``gf.rand(N, dtype=float64, generator=g)``,
  which advances the generator's offset by ``16 * ceil(N / 32)`` blocks) and takes
  ``perm = np.argsort(u, kind="stable")``. Batch b is ``perm[b*B : (b+1)*B]``. So the order of
  epoch e is fixed by the generator state at its start, and that state moves once per epoch:
  epoch e of a loader seeded with s is the permutation drawn at offset
  ``e * 16 * ceil(N / 32)`` of the stream of seed s.
* With ``shuffle=False`` batch b is ``range(b*B, min((b+1)*B, N))`` and nothing is drawn.
* ``drop_last=True`` drops the final short batch.
* With ``sampler=`` (e.g. a :class:`~gradfuse.data.DistributedSampler`) batch b is
  ``idx[b*B : (b+1)*B]`` of the sampler's indices for the epoch (drawn once at its start);
  ``shuffle`` must then be False and the generator is not used.

Resuming: :meth:`DataLoader.state_dict` returns the generator state (with a sampler: the
sampler's ``state_dict()``) at the start of the current epoch and the number of batches
already handed out; after :meth:`DataLoader.load_state_dict`
(on a loader built the same way) the next ``iter(loader)`` redraws that epoch's permutation and
skips those batches, so the data order continues exactly as in an uninterrupted run.

A batch costs one gather per array (``np.take(arr, idx, axis=0)``) when the data set has a
``gather`` method (:class:`TensorDataset`, :class:`Subset` of one); otherwise, or when a
subclass overrides ``__getitem__`` but not ``gather``, its samples are fetched one by one and
stacked with ``np.stack`` (:func:`collate`).

Example::

    >>> X = np.arange(10, dtype=np.float32).reshape(5, 2); y = np.arange(5)
    >>> loader = gf.data.DataLoader(gf.data.TensorDataset(X, y), batch_size=2, shuffle=True,
    ...                             generator=0)
    >>> [yb.numpy().tolist() for _, yb in loader]
    [[2, 0], [3, 4], [1]]
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from .. import random as _random
from ..random import Generator
from ..tensor import Tensor
from .dataset import _batch_gather

__all__ = ["DataLoader", "collate", "permutation"]

_U64 = (1 << 64) - 1


def permutation(n: int, generator: Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` (int64) drawn from ``generator``.

    ``np.argsort(u, kind="stable")`` of ``n`` float64 uniforms from one fill of the generator
    (53 random bits per key, so ties are all but impossible, and the stable sort breaks any
    tie the same way everywhere). Advances the generator by ``16 * ceil(n / 32)`` blocks.

    Example::

        >>> gf.data.permutation(5, gf.Generator(0)).tolist()
        [2, 0, 3, 4, 1]
    """
    if isinstance(n, bool) or not isinstance(n, (numbers.Integral, np.integer)) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    if not isinstance(generator, Generator):
        raise TypeError(f"generator: expected a gf.Generator, got {type(generator).__name__}")
    u = np.empty(int(n), np.float64)
    if n:
        _random._fill_uniform(u, 0.0, 1.0, generator)
    # With distinct keys every correct sort gives the same order, so the fast unstable argsort
    # (5-10x quicker than the stable one) is used, and the stable sort only when two keys tie
    # (probability ~ n^2 / 2^54): the result is always exactly argsort(u, kind="stable").
    perm = np.argsort(u)
    s = u[perm]
    if n > 1 and (s[1:] == s[:-1]).any():
        perm = np.argsort(u, kind="stable")
    return perm


def _seed_from(gen: Generator) -> int:
    """A 64-bit seed from two float64 draws (53 bits each) of ``gen``."""
    u = np.empty(2, np.float64)
    _random._fill_uniform(u, 0.0, 1.0, gen)
    a, b = (int(v * 2.0**53) for v in u)
    return ((a << 11) ^ b) & _U64


def _as_generator(generator, default: bool) -> Generator:
    """``generator`` as a gf.Generator: itself, a new one for an int seed, or for None the
    default generator (``default=True``) or a new one seeded from it."""
    if generator is None:
        return _random.default_generator if default else Generator(
            _seed_from(_random.default_generator))
    if isinstance(generator, Generator):
        return generator
    if isinstance(generator, (numbers.Integral, np.integer)) and not isinstance(generator, bool):
        return Generator(int(generator))
    raise TypeError(
        f"generator: expected a gf.Generator, an int seed or None, got "
        f"{type(generator).__name__}"
    )


def _to_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Tensor):
        return x.data
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a PyTorch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def collate(samples: list):
    """Stack a list of samples into one batch of numpy arrays, field by field.

    A sample that is a tuple/list gives a tuple of arrays; a dict gives a dict; anything else
    (Tensor, array, number) one array of shape (len(samples), *sample_shape).

    Example::

        >>> b = gf.data.collate([(np.zeros(2), 1), (np.ones(2), 0)])
        >>> b[0].shape, b[1].tolist()
        ((2, 2), [1, 0])
    """
    if not samples:
        raise ValueError("samples: cannot collate an empty batch")
    first = samples[0]
    if isinstance(first, Mapping):
        keys = list(first)
        for s in samples:
            if not isinstance(s, Mapping) or list(s) != keys:
                raise ValueError(f"samples: every sample must be a dict with keys {keys}")
        return {k: collate([s[k] for s in samples]) for k in keys}
    if isinstance(first, (tuple, list)):
        m = len(first)
        for s in samples:
            if not isinstance(s, (tuple, list)) or len(s) != m:
                raise ValueError(f"samples: every sample must be a sequence of {m} fields")
        return tuple(collate([s[k] for s in samples]) for k in range(m))
    arrays = [_to_numpy(s) for s in samples]
    shape = arrays[0].shape
    for a in arrays:
        if a.shape != shape:
            raise ValueError(
                f"samples: cannot stack samples of shapes {shape} and {a.shape} into one batch"
            )
    return np.stack(arrays)


def _wrap(batch):
    if type(batch) is np.ndarray:
        return Tensor(batch)
    if isinstance(batch, tuple):
        # the common case (a TensorDataset's arrays) without a recursive call per array
        return tuple(Tensor(b) if type(b) is np.ndarray else _wrap(b) for b in batch)
    if isinstance(batch, list):  # a custom gather's [X, y]: fields, not rows to stack
        return [_wrap(b) for b in batch]
    if isinstance(batch, dict) or isinstance(batch, Mapping):
        return {k: _wrap(v) for k, v in batch.items()}
    return Tensor(_to_numpy(batch))


def _check_bool(v, name):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {v!r}")
    return bool(v)


class DataLoader:
    """Mini-batches of a map-style data set as gf Tensors.

    Args:
        dataset: a map-style data set (``__len__`` and ``__getitem__``, e.g.
            :class:`TensorDataset`) with at least one sample.
        batch_size: int >= 1.
        shuffle: draw a new order each epoch from ``generator`` (see the module docstring for
            the exact derivation).
        drop_last: drop the final batch when it has fewer than ``batch_size`` samples.
        sampler: None, or the indices to draw from: an object with ``__len__`` and
            ``__iter__`` (ints), e.g. :class:`~gradfuse.data.DistributedSampler`; an
            ``indices()`` method returning an int array is used when present (no Python loop).
            Mutually exclusive with ``shuffle=True``.
        generator: a gf.Generator (used and advanced in place: share it knowingly), an int seed
            (a new ``gf.Generator(seed)``), or None: with ``shuffle`` a new generator seeded
            from two draws of ``gf.default_generator`` at construction (so ``gf.manual_seed``
            before building the loader fixes its order); without shuffle a
            ``gf.Generator()`` that nothing draws from (``loader.generator`` is always a
            Generator, and building a loader never moves the default stream then).

    Yields: for a :class:`TensorDataset` a tuple of Tensors of shapes (B, *) per batch (B =
    batch_size, or what is left for the last batch); for other data sets the collated samples
    (see :func:`collate`) as Tensors.

    ``len(loader)`` is the number of batches per epoch. ``loader.generator.get_state()`` is the
    state the next epoch's order is drawn from; :meth:`state_dict` also records a position
    inside the epoch.

    Example::

        >>> ds = gf.data.TensorDataset(np.zeros((10, 3), np.float32), np.arange(10))
        >>> loader = gf.data.DataLoader(ds, batch_size=4, shuffle=True, generator=0)
        >>> len(loader), [xb.shape for xb, _ in loader]
        (3, [(4, 3), (4, 3), (2, 3)])
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, generator=None, sampler=None):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                "dataset: expected a map-style data set (__getitem__ and __len__), got "
                f"{type(dataset).__name__}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (numbers.Integral,
                                                                          np.integer)):
            raise TypeError(f"batch_size: expected a positive int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        shuffle = _check_bool(shuffle, "shuffle")
        drop_last = _check_bool(drop_last, "drop_last")
        n = len(dataset)
        if n == 0:
            raise ValueError("dataset: is empty (a DataLoader needs at least one sample)")
        if sampler is not None:
            if shuffle:
                raise ValueError("sampler: option is mutually exclusive with shuffle=True")
            if not hasattr(sampler, "__len__") or not (
                    hasattr(sampler, "__iter__") or callable(getattr(sampler, "indices", None))):
                raise TypeError(
                    "sampler: expected a sampler (__len__ and __iter__ over sample indices), "
                    f"got {type(sampler).__name__}")
        if generator is None and not shuffle:
            gen = Generator()  # unused unless shuffle is switched on later
        else:
            gen = _as_generator(generator, default=False)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = gen
        self.sampler = sampler
        # (generator state at the epoch's start, None without shuffle; batches handed out)
        self._epoch = None
        self._resume = None  # what load_state_dict asked the next epoch to continue

    def _num_samples(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataset)

    def __len__(self) -> int:
        n, b = self._num_samples(), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _sampler_state(self):
        sd = getattr(self.sampler, "state_dict", None)
        return sd() if callable(sd) else {}

    def _sampler_indices(self) -> np.ndarray:
        ind = getattr(self.sampler, "indices", None)
        if callable(ind):
            idx = np.asarray(ind())
        else:
            idx = np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        n = len(self.dataset)
        if idx.ndim != 1 or (idx.size and (idx.dtype.kind not in "iu" or idx.min() < -n
                                           or idx.max() >= n)):
            raise ValueError(
                f"sampler: expected int indices in [0, {n}) (the data set's length), got "
                f"{idx.dtype} values of shape {idx.shape}")
        return idx.astype(np.int64, copy=False)

    def __iter__(self):
        return self._epoch_batches()

    def _epoch_batches(self):
        n, bs = self._num_samples(), self.batch_size
        nb = len(self)
        skip = 0
        if self._resume is not None:
            state, skip = self._resume
            self._resume = None
            if self.sampler is not None:
                if state:
                    self.sampler.load_state_dict(state)
            else:
                self.generator.set_state(state)
        start = None
        order = None
        if self.sampler is not None:
            start = self._sampler_state()
            order = self._sampler_indices()
        elif self.shuffle:
            start = self.generator.get_state().data
            order = permutation(n, self.generator)
        gather = _batch_gather(self.dataset)
        self._epoch = (start, skip)
        for b in range(skip, nb):
            lo, hi = b * bs, min((b + 1) * bs, n)
            idx = order[lo:hi] if order is not None else np.arange(lo, hi, dtype=np.int64)
            if gather is not None:
                batch = gather(idx)
            else:
                batch = collate([self.dataset[int(i)] for i in idx])
            # counted before the yield: a checkpoint taken in the loop body covers this batch
            self._epoch = (start, b + 1)
            yield _wrap(batch)

    # ------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Where the data order stands: ``{"generator": uint8 (16,) array, "batches_done":
        int}``.

        Inside an epoch, ``generator`` is the state the epoch's permutation was drawn from and
        ``batches_done`` the batches handed out so far; between epochs (or after the last
        batch) it is the generator's current state and 0. Describes the most recently started
        epoch when several iterators run at once.

        Example::

            >>> sd = loader.state_dict(); sorted(sd)
            ['batches_done', 'generator']
        """
        if self._resume is not None:
            state, done = self._resume
            if self.sampler is not None:
                return {"sampler": dict(state), "batches_done": done}
            return {"generator": state.copy(), "batches_done": done}
        if self._epoch is not None:
            start, done = self._epoch
            if done < len(self):
                if self.sampler is not None:
                    return {"sampler": dict(start), "batches_done": done}
                state = start if start is not None else self.generator.get_state().data
                return {"generator": state.copy(), "batches_done": done}
        if self.sampler is not None:
            return {"sampler": self._sampler_state(), "batches_done": 0}
        return {"generator": self.generator.get_state().data, "batches_done": 0}

    def load_state_dict(self, state_dict) -> None:
        """Continue from :meth:`state_dict`: the next ``iter(self)`` resumes that epoch.

        The loader must be built like the saved one (data set length, batch_size, shuffle,
        drop_last). Everything is checked before anything changes.

        Example::

            >>> loader2 = gf.data.DataLoader(ds, batch_size=4, shuffle=True)
            >>> loader2.load_state_dict(loader.state_dict())
        """
        key = "generator" if self.sampler is None else "sampler"
        if not isinstance(state_dict, Mapping) or set(state_dict) != {key, "batches_done"}:
            raise ValueError(
                f"state_dict: expected a dict with keys {key!r} and 'batches_done' "
                "(from the state_dict() of a DataLoader built the same way"
                + (", with a sampler)" if self.sampler is not None else ", without sampler)")
            )
        done = state_dict["batches_done"]
        if isinstance(done, (np.ndarray, Tensor)) and done.ndim == 0:
            done = _to_numpy(done).item()
        if isinstance(done, bool) or not isinstance(done, (numbers.Integral, np.integer)) \
                or not 0 <= done <= len(self):
            raise ValueError(
                f"state_dict['batches_done']: expected an int in [0, {len(self)}], got "
                f"{state_dict['batches_done']!r}"
            )
        if self.sampler is not None:
            state = state_dict["sampler"]
            if not isinstance(state, Mapping):
                raise ValueError("state_dict['sampler']: expected the sampler's state_dict()")
            state = dict(state)
            if state:
                # validated by the sampler itself, on a copy's worth of state: put back on error
                old = self._sampler_state()
                try:
                    self.sampler.load_state_dict(state)
                except Exception:
                    if old:
                        self.sampler.load_state_dict(old)
                    raise
            # between epochs the sampler's state is now restored, and nothing is replayed at
            # the next iter(): a set_epoch() in between (PyTorch's habit, and the Trainer's)
            # must choose the next epoch's order, not be overwritten by the saved epoch's
            self._resume = (state, int(done)) if done else None
            self._epoch = None
            return
        state = state_dict["generator"]
        if state is None:
            raise ValueError("state_dict['generator']: expected a generator state, got None")
        probe = Generator()
        probe.set_state(_to_numpy(state))  # validates dtype and shape
        state = probe.get_state().data
        self._resume = (state, int(done))
        self._epoch = None
        self.generator.set_state(state)

    def __repr__(self) -> str:
        extra = "" if self.sampler is None else f", sampler={self.sampler!r}"
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}{extra})")
