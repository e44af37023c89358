"""The Trainer's data-parallel side: which runs are distributed, the training loader's shards,
the evaluation shards and the checkpoint read that every rank shares.

A training :class:`~gradfuse.data.DataLoader` ``L`` (no sampler of its own) is wrapped in a
:class:`ShardedLoader`: every epoch, rank r iterates a ``DataLoader(L.dataset, L.batch_size,
sampler=DistributedSampler(...))`` whose permutation is the one ``L`` itself would draw in that
epoch (its generator's state at the epoch start), and at the end of the epoch ``L``'s generator
is advanced exactly as one epoch of ``L`` advances it. Its ``state_dict()`` has ``L``'s own
format (generator state at the epoch start, batches done), so a checkpoint of a W-rank run
resumes in one process with ``L`` (per-rank batch size times W for the same global batches)
and the other way round.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..data.loader import DataLoader
from ..data.sampler import DistributedSampler, _blocks, _generator_at
from ..random import Generator

__all__ = ["resolve", "ShardedLoader", "shard_for_eval", "DP_OPTIONS"]

DP_OPTIONS = ("shard_optimizer_state", "broadcast_buffers")


def resolve(distributed):
    """``(gf.distributed module, DataParallel kwargs)`` when this trainer runs data-parallel,
    else None. ``distributed``: None (data-parallel when ``gf.distributed`` is initialized with
    more than one rank), False, True (initializes MPI when needed), or a dict of DataParallel
    keyword arguments (implies True)."""
    if distributed is False:
        return None
    opts = {}
    if isinstance(distributed, dict):
        bad = [k for k in distributed if k not in DP_OPTIONS]
        if bad:
            raise ValueError(f"distributed: unknown DataParallel option {bad[0]!r}; expected "
                             f"some of {', '.join(DP_OPTIONS)}")
        for k, v in distributed.items():
            if not isinstance(v, bool):
                raise TypeError(f"distributed[{k!r}]: expected a bool, got {v!r}")
        opts = dict(distributed)
    elif distributed is not None and distributed is not True:
        raise TypeError("distributed: expected None, True, False or a dict of DataParallel "
                        f"options, got {type(distributed).__name__}")
    from .. import distributed as dist
    if distributed is None:
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return None
    elif not dist.is_initialized():
        dist.init()
    if dist.get_world_size() <= 1:
        return None
    return dist, opts


class ShardedLoader:
    """This rank's shard of a DataLoader's epochs (see the module docstring).

    ``len()`` is this rank's number of batches; ``batch_size`` is the global batch (per-rank
    batch times the world size) and ``dataset`` the whole data set, which is what a partial
    epoch's checkpoint compares with the loader that resumes it.
    """

    def __init__(self, loader: DataLoader, world: int, rank: int, dist=None):
        self.loader = loader
        self.world, self.rank = world, rank
        # gf.distributed (None in tests of one process): each epoch starts from rank 0's
        # generator state, so that the shards are of one permutation even when the ranks'
        # loaders were seeded differently (a generator=None loader draws its seed from
        # gf.default_generator, which scripts often seed with the rank for dropout)
        self._dist = dist
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size * world
        # drop_last: the sampler drops the tail too (floor(N / W) samples per rank), so that
        # the ranks take floor(N / (W B)) steps like the one-process loader of batch W B;
        # padded shards of ceil(N / W) would add a step of partly repeated samples
        self.sampler = DistributedSampler(loader.dataset, world, rank, shuffle=loader.shuffle,
                                          seed=0, drop_last=loader.drop_last)
        self._inner = DataLoader(loader.dataset, batch_size=loader.batch_size,
                                 drop_last=loader.drop_last, sampler=self.sampler)
        self._resume = None  # (generator state, batches done) from load_state_dict
        self._epoch = None  # (generator state at the epoch start, batches handed out)

    def __len__(self) -> int:
        return len(self._inner)

    def __iter__(self):
        gen = self.loader.generator
        skip = 0
        if self._resume is not None:
            start, skip = self._resume
            self._resume = None
        else:
            start = gen.get_state().data.copy()
            if self._dist is not None:
                self._dist.broadcast_(start)
        at = Generator().set_state(start)
        seed, offset = at.initial_seed(), at.offset
        self.sampler.seed, self.sampler.offset = seed, offset
        self.sampler.set_epoch(0)
        if self.loader.shuffle:  # L's generator moves on as one epoch of L moves it
            gen.set_state(_generator_at(seed, offset + _blocks(len(self.dataset))).get_state())
        else:
            gen.set_state(start)
        self._inner.load_state_dict({"sampler": self.sampler.state_dict(),
                                     "batches_done": skip})
        self._epoch = (start, skip)
        for b, batch in enumerate(self._inner, start=skip):
            self._epoch = (start, b + 1)  # before the yield: a checkpoint in the body covers it
            yield batch

    def state_dict(self) -> dict:
        """The wrapped DataLoader's format: ``{"generator": state at the epoch start,
        "batches_done": int}`` (between epochs the generator's current state and 0)."""
        if self._resume is not None:
            start, done = self._resume
            return {"generator": start.copy(), "batches_done": done}
        if self._epoch is not None:
            start, done = self._epoch
            if done < len(self):
                return {"generator": start.copy(), "batches_done": done}
        return {"generator": self.loader.generator.get_state().data.copy(), "batches_done": 0}

    def load_state_dict(self, state_dict) -> None:
        """Continue from a state of this loader or of the wrapped DataLoader's kind."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"generator", "batches_done"}:
            raise ValueError("state_dict: expected a dict with keys 'generator' and "
                             "'batches_done' (from DataLoader.state_dict())")
        done = state_dict["batches_done"]
        if isinstance(done, np.ndarray) and done.ndim == 0:
            done = done.item()
        if isinstance(done, bool) or not isinstance(done, numbers.Integral) or \
                not 0 <= done <= len(self):
            raise ValueError(f"state_dict['batches_done']: expected an int in "
                             f"[0, {len(self)}], got {state_dict['batches_done']!r}")
        probe = Generator()
        probe.set_state(np.asarray(state_dict["generator"]))  # validates dtype and shape
        start = probe.get_state().data.copy()
        self._resume = (start, int(done))
        self._epoch = None
        self.loader.generator.set_state(start)

    def __repr__(self) -> str:
        return f"ShardedLoader({self.loader!r}, rank {self.rank} of {self.world})"


def shard_for_eval(loader, world: int, rank: int):
    """A DataLoader of this rank's uneven, unpadded share ``rank::world`` of an evaluation
    DataLoader (no sample counted twice; with ``drop_last`` of the samples the loader itself
    yields); other loaders as they are (each rank evaluates what it was given, and the sums
    are reduced over ranks). Returns ``(loader, whether it was sharded)``."""
    if type(loader) is not DataLoader or loader.sampler is not None:
        return loader, False
    n = len(loader.dataset)
    if loader.drop_last:
        if loader.shuffle:  # which samples it drops is its own random draw: evaluated whole
            return loader, False  # on every rank (the sums are then W times one process's)
        n -= n % loader.batch_size  # the samples the one-process loader yields
    # (the sampler reads only the length of what it is given)
    s = DistributedSampler(range(n), world, rank, shuffle=False, pad=False)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=s), True
