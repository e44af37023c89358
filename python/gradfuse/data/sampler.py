"""Samplers: which sample indices a :class:`~gradfuse.data.DataLoader` takes, and in what order.

:class:`DistributedSampler` gives each of ``num_replicas`` processes (MPI ranks) its own shard
of a data set, with PyTorch's semantics:

* every epoch has one order ``perm`` of ``range(N)``, the same on every rank: with
  ``shuffle=True`` the permutation that ``gf.data.permutation`` draws from
  ``gf.Generator(seed)`` at block offset ``offset + epoch * 16 * ceil(N / 32)``, which is
  exactly the order a ``DataLoader(ds, shuffle=True, generator=seed)`` uses in its epoch
  ``epoch`` (0-based); without shuffle ``range(N)``;
* ``perm`` is padded to ``total_size = num_replicas * num_samples`` by repeating its start
  (``drop_last=False``), or cut to that size (``drop_last=True``: the tail that does not fill
  a sample for every rank is dropped);
* rank r takes the interleaved shard ``perm[r:total_size:num_replicas]``.

So with per-rank batches of B / W samples, batch b of rank r holds samples
``perm[b*B + r + W*j]``: the W ranks' batch b together are exactly batch b of a single process
with batch size B (when N is a multiple of W): a W-rank run sees the data in the same order as
a one-process run with W times the batch.

Example::

    >>> ds = gf.data.TensorDataset(np.arange(10, dtype=np.float32), np.arange(10))
    >>> s = gf.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    >>> list(s)
    [1, 3, 5, 7, 9]
    >>> loader = gf.data.DataLoader(ds, batch_size=2, sampler=s)
    >>> s.set_epoch(3)   # before iterating each epoch
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_int
from ..random import Generator
from .loader import permutation

__all__ = ["Sampler", "SequentialSampler", "DistributedSampler"]


def _generator_at(seed: int, offset: int) -> Generator:
    """A new Generator of ``seed`` at block ``offset`` (modulo 2**64, as the stream wraps)."""
    words = np.array([seed, offset % (1 << 64)], dtype="<u8")
    return Generator(seed).set_state(words.view(np.uint8))


def _blocks(n: int) -> int:
    """Philox blocks one ``permutation(n)`` consumes (n float64 uniforms, 2 per block)."""
    return 16 * math.ceil(n / 32)


class Sampler:
    """Base class: an iterable of sample indices with a ``len``. A :class:`DataLoader` given
    ``sampler=`` takes its batches from ``indices()`` (an int64 array) in order; a subclass
    defines ``indices()`` and ``__len__``, and may define ``state_dict``/``load_state_dict``
    (what its order depends on) and ``set_epoch``.

    Example::

        >>> class Reversed(gf.data.Sampler):
        ...     def __init__(self, n): self.n = n
        ...     def indices(self): return np.arange(self.n - 1, -1, -1)
        ...     def __len__(self): return self.n
    """

    def indices(self) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must define indices()")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__")

    def __iter__(self):
        return iter(self.indices().tolist())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict) -> None:
        pass


class SequentialSampler(Sampler):
    """``0, 1, ..., len(dataset) - 1``.

    Example::

        >>> list(gf.data.SequentialSampler(range(3)))
        [0, 1, 2]
    """

    def __init__(self, data_source):
        self.data_source = data_source

    def indices(self) -> np.ndarray:
        return np.arange(len(self.data_source), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.data_source)


class DistributedSampler(Sampler):
    """This rank's shard of ``dataset``, as ``torch.utils.data.DistributedSampler`` (see the
    module docstring for the exact order).

    Args:
        dataset: a map-style data set (only its ``len`` is used).
        num_replicas: the number of ranks; None: ``gf.distributed.get_world_size()`` (1 when
            MPI is not initialized).
        rank: this rank in ``[0, num_replicas)``; None: ``gf.distributed.get_rank()``.
        shuffle: a new order each epoch (from ``seed`` and the epoch), the same on all ranks.
        seed: the gf.Generator seed of the order (every rank must pass the same).
        drop_last: drop the tail that would need padding (else pad by repeating the order's
            first samples, so every rank has ``ceil(N / num_replicas)`` samples).
        offset: the Philox block offset of epoch 0's draw (default 0; an epoch adds
            ``16 * ceil(N / 32)``, as a DataLoader's generator advances per epoch).
        pad: False gives uneven shards ``perm[rank::num_replicas]`` without padding or dropping
            (no sample counted twice: for evaluation; not in PyTorch). Needs
            ``drop_last=False``.

    ``len(sampler)`` is this rank's ``num_samples``; :meth:`set_epoch` chooses the epoch's
    order (call it before each epoch, as in PyTorch, else every epoch repeats epoch 0's order).

    Example::

        >>> ds = gf.data.TensorDataset(np.zeros((7, 2), np.float32), np.arange(7))
        >>> [list(gf.data.DistributedSampler(ds, 2, r, shuffle=False)) for r in (0, 1)]
        [[0, 2, 4, 6], [1, 3, 5, 0]]
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, *, offset: int = 0, pad: bool = True):
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset: expected a data set with a len, got "
                            f"{type(dataset).__name__}")
        if num_replicas is None or rank is None:
            from .. import distributed as _dist
            if num_replicas is None:
                num_replicas = _dist.get_world_size()
            if rank is None:
                rank = _dist.get_rank()
        num_replicas = check_int("num_replicas", num_replicas, 1)
        rank = check_int("rank", rank, 0)
        if rank >= num_replicas:
            raise ValueError(f"rank: expected an int in [0, {num_replicas - 1}] "
                             f"(num_replicas = {num_replicas}), got {rank}")
        for name, v in (("shuffle", shuffle), ("drop_last", drop_last), ("pad", pad)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {v!r}")
        seed = check_int("seed", seed, 0)
        if seed >= 1 << 64:
            raise ValueError(f"seed: expected an int below 2**64, got {seed}")
        offset = check_int("offset", offset, 0)
        if not pad and drop_last:
            raise ValueError("pad: pad=False (uneven shards) needs drop_last=False")
        n = len(dataset)
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.offset = offset
        self.pad = bool(pad)
        self.epoch = 0
        if not self.pad:
            self.num_samples = len(range(rank, n, num_replicas))
            self.total_size = n
        else:
            if self.drop_last and n % num_replicas:
                self.num_samples = math.ceil((n - num_replicas) / num_replicas)
            else:
                self.num_samples = math.ceil(n / num_replicas)
            self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order (0-based) for the next iterations."""
        self.epoch = check_int("epoch", epoch, 0)

    def generator_state(self) -> Generator:
        """The gf.Generator the current epoch's permutation is drawn from (a new one, at
        ``offset + epoch * 16 * ceil(N / 32)``)."""
        return _generator_at(self.seed, self.offset + self.epoch * _blocks(len(self.dataset)))

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch (int64, ``len(self)`` of them)."""
        n = len(self.dataset)
        if self.shuffle:
            order = permutation(n, self.generator_state())
        else:
            order = np.arange(n, dtype=np.int64)
        if not self.pad:
            return order[self.rank::self.num_replicas]
        if self.total_size > n:  # pad by wrapping around (several times when N < W)
            order = np.resize(order, self.total_size)
        else:
            order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas]

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        """``{"seed", "offset", "epoch"}``: what the order depends on."""
        return {"seed": self.seed, "offset": self.offset, "epoch": self.epoch}

    def load_state_dict(self, state_dict) -> None:
        """Restore :meth:`state_dict` (checked before anything changes)."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"seed", "offset", "epoch"}:
            raise ValueError("state_dict: expected a dict with keys 'seed', 'offset', 'epoch' "
                             "(from DistributedSampler.state_dict())")
        vals = {}
        for k in ("seed", "offset", "epoch"):
            v = state_dict[k]
            if isinstance(v, np.ndarray) and v.ndim == 0:
                v = v.item()
            vals[k] = check_int(f"state_dict[{k!r}]", v, 0)
        if vals["seed"] >= 1 << 64:
            raise ValueError(f"state_dict['seed']: expected an int below 2**64, got "
                             f"{vals['seed']}")
        self.seed, self.offset, self.epoch = vals["seed"], vals["offset"], vals["epoch"]

    def __repr__(self) -> str:
        return (f"DistributedSampler(num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})")
