"""DataParallel: one model replica per rank, gradients averaged over the flat arenas.

Every rank runs the same script on its own share of each batch. ``DataParallel`` makes the
replicas start equal (rank 0's parameters and buffers are broadcast) and keeps them equal: the
optimizer's gradient arenas (one contiguous buffer per param group and dtype) are averaged over
the ranks with ONE in-place all-reduce each before the fused update, which then runs on the
same numbers everywhere, so the parameters stay bitwise identical across ranks without ever
being sent again.

The optimizer calls the synchronizer itself (``Optimizer._grad_sync``): ``step()`` and
``clip_grad_norm_()`` average the gradients first, once per backward, so the norm, the
clipping and the non-finite guard (``skip_nonfinite``) see the averaged gradients and every
rank takes the same decision. Before the all-reduce the ranks compare which parameters got a
gradient (one small all-reduce of a 0/1 vector): a parameter whose ``.grad`` is None on some
ranks only is an error, not a silent divergence.

ZeRO-1 (``shard_optimizer_state=True``, Rajbhandari et al. 2019,
https://arxiv.org/abs/1910.02054): the gradient arena is reduce-scattered instead, each rank
updates only its shard of the parameters (:func:`shard_range`) with optimizer state buffers of
shard length (state memory divided by the world size), and the parameter arena is all-gathered.
"""

from __future__ import annotations

import contextlib
import gc
import math
import weakref

import numpy as np

from .. import _backend
from ..cuda.array import DeviceArray
from ..optim._arena import _arena_empty
from ..optim.optimizer import Optimizer
from ..tensor import Tensor
from . import _comm
from ._reduce import make_reducer

__all__ = ["DataParallel"]


def _describe(arr) -> tuple:
    return (tuple(int(d) for d in arr.shape), str(arr.dtype))


class DataParallel:
    """Data-parallel training of ``model`` with ``optimizer`` over the ranks of
    ``gf.distributed.init()`` (collective: every rank constructs it, in the same order).

    Args:
        model: the ``gf.nn.Module`` replica on this rank.
        optimizer: a gradfuse optimizer over (some of) ``model``'s parameters.
        shard_optimizer_state: ZeRO-1: each rank keeps and updates only its shard of the
            optimizer state and parameters (elementwise optimizers: not LAMB, whose trust
            ratio needs whole-tensor norms). ``optimizer.state_dict()`` is then collective and
            returns the full state on every rank; ``load_state_dict`` takes a full dict.
        broadcast_buffers: broadcast ``model``'s buffers (BatchNorm running statistics) from
            rank 0 at construction and before every forward in training mode (PyTorch DDP's
            default), so all replicas hold rank 0's statistics.

    Construction checks that every rank has the same parameters and buffers (names, shapes,
    dtypes) and the same optimizer (type, param groups, hyperparameters, step counts) and
    raises ValueError on every rank, naming the first mismatch, instead of hanging. It then
    broadcasts rank 0's parameters (one ``Bcast`` per parameter arena) and buffers, and moves
    each gradient arena (with ZeRO-1 the parameter arena too) into a buffer of the reducer.

    After that, ``loss.backward(); optimizer.step()`` is all a training step needs: ``step()``
    (or ``clip_grad_norm_()``, whichever comes first) averages the gradients. A backward after
    that averaging (more accumulation after a ``clip_grad_norm_()``) makes the step average
    again; under ZeRO-1 it is a RuntimeError, as is a backward after ``step()`` without
    ``zero_grad()``. Under ZeRO-1, ``p.grad`` holds the averaged gradient only in this rank's
    shard after the reduction. ``optimizer.add_param_group`` is refused while attached.

    Outside ``gf.distributed.init()`` or with one rank, nothing is attached and the model
    trains exactly as in one process.

    Example (``mpiexec -n 2 python train.py``)::

        gf.distributed.init()
        model = gf.nn.Sequential(gf.nn.Linear(784, 256), gf.nn.ReLU(), gf.nn.Linear(256, 10))
        opt = gf.optim.Adam(model.parameters(), lr=1e-3)
        dp = gf.distributed.DataParallel(model, opt)
        for x, y in loader:                 # this rank's share of each batch
            loss = gf.nn.functional.cross_entropy(dp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()                      # averages the gradients, then the fused update
    """

    def __init__(self, model, optimizer, *, shard_optimizer_state: bool = False,
                 broadcast_buffers: bool = True):
        from ..nn.module import Module

        if not isinstance(model, Module):
            raise TypeError(f"model: expected a gf.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer: expected a gradfuse optimizer, got {type(optimizer).__name__}")
        for name, v in (("shard_optimizer_state", shard_optimizer_state),
                        ("broadcast_buffers", broadcast_buffers)):
            if not isinstance(v, bool):
                raise TypeError(f"{name}: expected a bool, got {v!r}")
        if optimizer._grad_sync is not None:
            raise ValueError("optimizer: already attached to a DataParallel (close() it first)")
        arenas = [(g, a) for g, ars in zip(optimizer.param_groups, optimizer._arenas)
                  for _, a in ars]
        if any(a.device for _, a in arenas) or any(
                type(p.data) is DeviceArray for p in model.parameters()):
            raise TypeError("model: DataParallel runs on CPU parameters (move the model to the "
                            "CPU before building the optimizer)")
        if shard_optimizer_state and (type(optimizer)._update is not Optimizer._update):
            raise ValueError(
                f"shard_optimizer_state: {type(optimizer).__name__} is not elementwise (its "
                "update needs whole-tensor norms), so its state cannot be sharded; use "
                "shard_optimizer_state=False")
        self.module = model
        self.optimizer = optimizer
        self.shard_optimizer_state = shard_optimizer_state
        self.broadcast_buffers = broadcast_buffers
        self._sync = None
        self._has_buffers = False
        if _comm.get_world_size() == 1:
            return  # one process: nothing to synchronize, the optimizer stays as it is

        names = {id(p): n for n, p in model.named_parameters()}
        self._check_same_everywhere(model, optimizer, names)
        for _, a in arenas:
            # adopt a rebound p.data (and a hand-set .grad) into the arena now: the broadcast
            # below sends the arenas, and the next step would otherwise copy this rank's own
            # rebound values back in (their shapes were compared across ranks above, so an
            # error here is raised on every rank)
            a.sync()
        comm = _comm.get_comm()
        _reclaim(comm)
        reducer = make_reducer(comm)
        for _, a in arenas:
            if shard_optimizer_state:
                a.rebind_buffers(param=reducer.buffer(a.n, a.dtype),
                                 grad=reducer.buffer(a.n, a.dtype))
            else:
                a.rebind_buffers(grad=reducer.buffer(a.n, a.dtype))
        # rank 0's values everywhere: one Bcast per parameter arena, then what no arena holds
        in_arena = set()
        for _, a in arenas:
            _comm.broadcast_(a.param)
            in_arena.update(id(p) for p in a.params)
        for _, p in model.named_parameters():
            if id(p) not in in_arena:
                _comm.broadcast_(p.data)
        self._has_buffers = self._bcast_buffers()
        self._sync = _GradSync(optimizer, arenas, reducer, comm, names, shard_optimizer_state)
        optimizer._grad_sync = self._sync
        _track(self._sync, comm)

    # ------------------------------------------------------------ construction checks
    @staticmethod
    def _check_same_everywhere(model, optimizer, names) -> None:
        """Compare parameter names/shapes/dtypes, buffers and the optimizer's layout with rank
        0's; every rank sees all descriptions, so every rank raises the same error."""
        desc = {
            "params": [(n, *_describe(p.data)) for n, p in model.named_parameters()],
            "buffers": [(n, *_describe(b.data if isinstance(b, Tensor) else np.asarray(b)))
                        for n, b in model.named_buffers()],
            "optimizer": [[(names.get(id(p), f"param_groups[{gi}][{i}]"), *_describe(p.data))
                           for i, p in enumerate(g["params"])]
                          for gi, g in enumerate(optimizer.param_groups)],
            "optimizer_type": type(optimizer).__name__,
            # hyperparameters and step counts: a different lr, or a checkpoint loaded on one
            # rank only, would make the replicas drift apart
            "hyper": [sorted((k, repr(v)) for k, v in g.items() if k != "params")
                      for g in optimizer.param_groups],
            "steps": [[a.step_of(i) for _, a in ars for i in range(len(a.params))]
                      for ars in optimizer._arenas],
        }
        every = _comm.all_gather_object(desc)
        ref = every[0]
        for r, d in enumerate(every[1:], start=1):
            for kind, what in (("params", "parameter"), ("buffers", "buffer")):
                msg = _first_mismatch(ref[kind], d[kind], what, r)
                if msg:
                    raise ValueError(f"DataParallel: {msg}")
            if d["optimizer_type"] != ref["optimizer_type"]:
                raise ValueError(
                    f"DataParallel: optimizer is {d['optimizer_type']} on rank {r} but "
                    f"{ref['optimizer_type']} on rank 0")
            if len(d["optimizer"]) != len(ref["optimizer"]):
                raise ValueError(
                    f"DataParallel: optimizer has {len(d['optimizer'])} param groups on rank {r}"
                    f" but {len(ref['optimizer'])} on rank 0")
            for gi, (a, b) in enumerate(zip(ref["optimizer"], d["optimizer"])):
                msg = _first_mismatch(a, b, f"optimizer param group {gi}: parameter", r)
                if msg:
                    raise ValueError(f"DataParallel: {msg}")
            for gi, (a, b) in enumerate(zip(ref["hyper"], d["hyper"])):
                a, b = dict(a), dict(b)
                for k in sorted(set(a) | set(b)):
                    v0, v1 = a.get(k, "(not set)"), b.get(k, "(not set)")
                    if v0 != v1:
                        raise ValueError(
                            f"DataParallel: optimizer param group {gi}: {k} = {v1} on rank {r} "
                            f"but {k} = {v0} on rank 0")
            for gi, (a, b) in enumerate(zip(ref["steps"], d["steps"])):
                if a != b:
                    raise ValueError(
                        f"DataParallel: the optimizer's state differs: param group {gi} has step "
                        f"counts {b} on rank {r} but {a} on rank 0 (load the same checkpoint on "
                        "every rank, or build DataParallel before training)")

    def _bcast_buffers(self) -> bool:
        """Broadcast rank 0's buffers; returns whether the module has any."""
        if not self.broadcast_buffers:
            return False
        found = False
        for _, b in self.module.named_buffers():
            found = True
            arr = b.data if isinstance(b, Tensor) else b
            if not isinstance(arr, np.ndarray) or not arr.size:
                continue
            if arr.flags.c_contiguous and arr.flags.writeable:
                _comm.broadcast_(arr)
            else:
                tmp = np.ascontiguousarray(arr)
                _comm.broadcast_(tmp)
                arr[...] = tmp
        return found

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank now (collective;
        a no-op with ``broadcast_buffers=False`` or in one process). The training forward does
        it by itself; the Trainer also calls it after each epoch's training, so evaluation and
        checkpoints see one model."""
        if self._sync is not None:
            self._bcast_buffers()

    # ------------------------------------------------------------ the model's interface
    def __call__(self, *args, **kwargs):
        """``model(*args, **kwargs)``; in training mode with ``broadcast_buffers``, rank 0's
        buffers are broadcast first (PyTorch DDP's behaviour), which makes the call collective
        for a model that has buffers: call it on every rank, or the module itself on one."""
        if self._has_buffers and self.module.training and self._sync is not None:
            self._bcast_buffers()
        return self.module(*args, **kwargs)

    forward = __call__

    def sync_gradients(self) -> None:
        """Average the gradients now (collective). ``optimizer.step()`` and
        ``optimizer.clip_grad_norm_()`` do it by themselves, once per backward; call this to
        read averaged ``p.grad`` values before them (under ZeRO-1 only this rank's shard of
        the gradient arena is averaged)."""
        if self._sync is not None:
            self._sync.sync()

    def parameters(self, recurse: bool = True):
        return self.module.parameters(recurse)

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        return self.module.named_parameters(prefix, recurse)

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """The module's state_dict (keys without PyTorch DDP's ``module.`` prefix, so a
        checkpoint loads into the bare model)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def close(self) -> None:
        """Detach from the optimizer (collective under ZeRO-1, which gathers the full state
        back onto every rank): the arenas move back into ordinary buffers and the optimizer
        steps as in one process again. A second call does nothing."""
        sync = self._sync
        if sync is None:
            return
        sync.detach()
        self._sync = None

    def _release_when_dropped(self) -> None:
        """For an owner that never hands this object out (the Trainer): when it is dropped
        without close() on every rank, the next DataParallel construction detaches the
        optimizer and frees the reducer (collectively, in construction order)."""
        if self._sync is not None:
            _release_with(self, self._sync)

    def __getattr__(self, name):
        # anything else is the module's (its methods and submodules)
        if name in ("module", "optimizer", "_sync", "_has_buffers"):
            raise AttributeError(name)
        return getattr(self.module, name)

    def __repr__(self) -> str:
        return (f"DataParallel(world_size={_comm.get_world_size()}, "
                f"shard_optimizer_state={self.shard_optimizer_state},\n  {self.module!r})")


def _first_mismatch(ref: list, mine: list, what: str, rank: int) -> str | None:
    for i in range(max(len(ref), len(mine))):
        a = ref[i] if i < len(ref) else None
        b = mine[i] if i < len(mine) else None
        if a == b:
            continue
        if a is None:
            return f"{what} {b[0]!r} exists on rank {rank} but not on rank 0"
        if b is None:
            return f"{what} {a[0]!r} exists on rank 0 but not on rank {rank}"
        if a[0] != b[0]:
            return (f"{what} {i} is named {a[0]!r} on rank 0 but {b[0]!r} on rank {rank} (the "
                    "models differ)")
        return (f"{what} {a[0]!r} has shape {b[1]} and dtype {b[2]} on rank {rank}, but shape "
                f"{a[1]} and dtype {a[2]} on rank 0")
    return None


# Reducers hold MPI resources (shared-memory windows and node/cross communicators; MPICH
# has 2048 context ids per process, and every window takes one too) that only a collective
# call can free, so they cannot be freed from a garbage collector's finalizer, which runs
# at a different moment on each rank. A DataParallel dropped without close() (a Trainer
# built per trial, 50 or 700 times in a loop) is instead reclaimed at the next DataParallel
# construction, which is collective: each rank lists the reducers whose _GradSync (that is,
# whose optimizer) it has garbage-collected, and the reducers dead on every rank of that
# communicator are closed, in construction order (the same order everywhere).
_SERIAL = [0]
_LIVE: dict = {}  # serial -> (reducer, comm) of attached DataParallels
_DEAD: set = set()  # serials whose _GradSync this rank has garbage-collected
_GC_AFTER = 8  # attached DataParallels beyond which a construction runs gc.collect() first
_GC_AT = [_GC_AFTER]  # doubled when the DataParallels are alive (no full GC per construction)


def _track(sync, comm) -> None:
    serial = _SERIAL[0]
    _SERIAL[0] += 1
    _LIVE[serial] = (sync.reducer.close, comm)
    sync._serial = serial
    # the callback must not reference sync itself (it would never die)
    sync._finalizer = weakref.finalize(sync, _DEAD.add, serial)


def _release_with(owner, sync) -> None:
    """Reclaim ``sync`` (detach the optimizer and free its reducer) once ``owner`` is dropped
    on every rank, rather than once the optimizer is (a Trainer owns the DataParallel it
    builds: the optimizer may stay referenced by the caller long after)."""
    sync._finalizer.detach()
    _LIVE[sync._serial] = (sync.detach, _LIVE[sync._serial][1])
    sync._finalizer = weakref.finalize(owner, _DEAD.add, sync._serial)


def _untrack(sync) -> None:
    serial = getattr(sync, "_serial", None)
    if serial is not None:
        sync._finalizer.detach()
        _LIVE.pop(serial, None)
        _DEAD.discard(serial)


def _reclaim(comm) -> None:
    """Close the reducers of DataParallels that every rank of ``comm`` has dropped
    (collective: called by every DataParallel construction)."""
    from mpi4py import MPI

    mine = [s for s, (_, c) in _LIVE.items() if c is comm or c == comm]
    if len(mine) >= _GC_AT[0]:
        gc.collect()  # _GradSync lives in reference cycles (optimizer <-> arenas)
        _GC_AT[0] = max(_GC_AFTER, 2 * (len(mine) - sum(s in _DEAD for s in mine)))
    dead = sorted(s for s in mine if s in _DEAD)
    # one small allreduce decides for all ranks whether there is anything to agree on; then
    # the serials (issued in the same order everywhere) dead on every rank are closed in
    # order, and one that some rank still holds waits for a later construction
    n = np.array([len(dead)], np.int64)
    comm.Allreduce(MPI.IN_PLACE, n, MPI.MIN)
    if not n[0]:
        return
    every = comm.allgather(dead)
    common = sorted(set(every[0]).intersection(*every[1:]))
    for s in common:
        close, _ = _LIVE.pop(s)
        _DEAD.discard(s)
        close()


def _cut(state: dict, shard: tuple, dtype) -> dict:
    """Each full-length state buffer's ``shard`` ``[lo, hi)`` as a buffer of its own."""
    lo, hi = shard
    out = {}
    for k, v in state.items():
        out[k] = _arena_empty(hi - lo, dtype)
        np.copyto(out[k], v[lo:hi])
    return out


class _GradSync:
    """The object DataParallel hangs on ``optimizer._grad_sync`` (see Optimizer)."""

    def __init__(self, optimizer, arenas, reducer, comm, names, sharded: bool):
        self.optimizer = optimizer
        self.arenas = arenas  # [(group, arena)] in the optimizer's order
        self.reducer = reducer
        self.comm = comm
        self.world = comm.Get_size()
        self.sharded = sharded
        # _synced: the gradients of this step are averaged (cleared by step() and
        # zero_grad()); _reduced: the arenas hold reduced values (cleared by zero_grad() only);
        # _written: a backward added into them after that (see grads_written)
        self._synced = self._reduced = self._written = False
        self._n_arenas = len(arenas)
        self._seg_names = []
        for g, a in arenas:
            gi = next(k for k, gg in enumerate(optimizer.param_groups) if gg is g)
            pos = {id(p): i for i, p in enumerate(g["params"])}
            self._seg_names += [names.get(id(p), f"param_groups[{gi}][{pos[id(p)]}]")
                                for p in a.params]
        for _, a in arenas:
            a.grad_sync = self
        # one 0/1 per parameter (has a gradient), summed over the ranks: 0 or W everywhere
        self._ctl = np.zeros(len(self._seg_names), np.int32)
        if sharded:
            for _, a in arenas:
                a.shard = reducer.shard_range(a.n)
                a.state = _cut(a.state, a.shard, a.dtype)  # made before (Adagrad's, a load)
                a.slot_cache = None

    # ------------------------------------------------------------ gradients
    def reset(self) -> None:
        self._synced = self._reduced = self._written = False

    def grads_written(self) -> None:
        """Called by the arena's gradient tensors when a backward adds into them (or a
        gradient is assigned) after they were averaged, e.g. a backward after
        ``clip_grad_norm_()`` or ``sync_gradients()``: the next step must average again
        (without it each rank would step with its own sum, and the replicas would drift)."""
        if self._reduced:
            self._written = True
            self._synced = False

    def sync(self, consume: bool = False) -> None:
        if not self._synced:
            if self._written and self.sharded:
                # the plain all-reduce can average again (avg(avg + g) = avg + avg(g)); after a
                # reduce-scatter only this rank's shard holds the average
                raise RuntimeError(
                    "DataParallel (ZeRO-1): gradients were written (a backward, or an "
                    "assignment or in-place operation on p.grad.data) after they were "
                    "reduce-scattered (by clip_grad_norm_(), sync_gradients() or step() "
                    "without zero_grad() after it); only each rank's shard holds averaged "
                    "values, so they cannot be averaged again. Call clip_grad_norm_() and "
                    "sync_gradients() after the last backward of a step, and zero_grad() "
                    "after step(); change gradients in place with p.grad.data[...] = ...")
            self._reduce()
            self._reduced = True
            self._written = False
        # a step uses the averaged gradients: the next backward's need averaging again
        self._synced = not consume

    def sync_for_utils(self, whole: bool = True) -> None:
        """For gf.nn.utils.clip_grad_norm_ (``whole``: it needs every averaged gradient) and
        clip_grad_value_ (elementwise: under ZeRO-1 this rank's shard, the one its step
        reads, is clamped correctly)."""
        if self.sharded and whole:
            raise RuntimeError(
                "gf.nn.utils.clip_grad_norm_ under ZeRO-1 (shard_optimizer_state=True): each "
                "rank holds only its shard of the averaged gradients; use "
                "optimizer.clip_grad_norm_(max_norm), which combines the shards' norms")
        self.sync()

    def _reduce(self) -> None:
        from mpi4py import MPI

        if sum(len(ars) for ars in self.optimizer._arenas) != self._n_arenas:
            raise RuntimeError(
                "DataParallel: the optimizer got a new param group after DataParallel was "
                "built; build DataParallel after add_param_group")
        ctl = self._ctl
        pos = 0
        for _, a in self.arenas:
            active = a.sync()  # adopts hand-set .grad / rebound .data into the arenas first
            k = len(a.params)
            ctl[pos : pos + k] = 1 if active is None else active
            pos += k
        mine = ctl.copy()
        self.comm.Allreduce(MPI.IN_PLACE, ctl, MPI.SUM)
        if ctl.size and ctl.min() != self.world and not np.all((ctl == 0) | (ctl == self.world)):
            i = int(np.flatnonzero((ctl != 0) & (ctl != self.world))[0])
            has = self.comm.allgather(bool(mine[i]))  # every rank is here: safe to gather
            with_grad = [r for r, h in enumerate(has) if h]
            without = [r for r, h in enumerate(has) if not h]
            raise RuntimeError(
                f"DataParallel: parameter {self._seg_names[i]!r} has a gradient on ranks "
                f"{with_grad} but none (.grad is None) on ranks {without}; every rank must "
                "compute gradients for the same parameters (use set_to_none=False in "
                "zero_grad, or make unused parameters take part in the loss)")
        for _, a in self.arenas:
            if self.sharded:
                self.reducer.reduce_scatter_(a.grad, "avg")
            else:
                self.reducer.all_reduce_(a.grad, "avg")

    def _shard_grads(self, plans):
        """This rank's shard of the gradients of the parameters taking part in the step."""
        for _, a, active in plans:
            lo, hi = a.shard
            if active is None:
                if hi > lo:
                    yield a.grad[lo:hi]
                continue
            for i, on in enumerate(active):
                if on:
                    o = a.offsets[i]
                    b, e = max(o, lo), min(o + a.sizes[i], hi)
                    if b < e:
                        yield a.grad[b:e]

    def grad_norm(self, plans, norm_type: float) -> float:
        """The total gradient norm under ZeRO-1: each rank reduces its shard, the partial sums
        are gathered and combined in rank order (the same float on every rank)."""
        inf = math.isinf(norm_type)
        part = 0.0
        for x in self._shard_grads(plans):
            v = _backend.arena_norm_reduce(x, norm_type)
            if math.isnan(v):
                part = v
                break
            part = max(part, v) if inf else part + v
        parts = np.zeros(self.world, np.float64)
        self.comm.Allgather(np.array([part], np.float64), parts)
        if np.isnan(parts).any():
            return float("nan")
        if inf:
            return float(parts.max())
        total = 0.0
        for v in parts:
            total += float(v)
        if norm_type == 2.0:
            return math.sqrt(total)
        if norm_type == 1.0:
            return total
        return total ** (1.0 / norm_type)

    def _all_finite(self, plans) -> bool:
        from mpi4py import MPI

        ok = all(_backend.arena_all_finite(x) for x in self._shard_grads(plans))
        return bool(self.comm.allreduce(int(ok), op=MPI.MIN))

    # ------------------------------------------------------------ ZeRO-1 step
    def step(self, loss, closure):
        """Optimizer.step() under ZeRO-1, after the reduce-scatter: update this rank's shard,
        all-gather the parameters. The guard and the clip scale act as in Optimizer.step."""
        opt = self.optimizer
        plans = opt._plans()
        # Optimizer._update runs the kernel on each arena's shard only (_Arena.shard)
        out = opt._guarded_update(plans, loss, closure, lambda: self._all_finite(plans),
                                  opt._update)
        if not opt.last_step_skipped:
            for _, a in self.arenas:
                self.reducer.all_gather_(a.param)
        return out

    # ------------------------------------------------------------ ZeRO-1 state
    def _gather(self, shard: np.ndarray, a) -> np.ndarray:
        """The full arena-length buffer of which every rank holds ``shard`` (collective)."""
        full = _arena_empty(a.n, a.dtype)
        lo, hi = a.shard
        full[lo:hi] = shard
        self.reducer.all_gather_(full)  # a plain array: every reducer takes one
        return full

    @contextlib.contextmanager
    def full_state(self, load: bool = False):
        """Within it every arena has its full state (shard None): gathered from all ranks
        (collective), or, with ``load``, fresh full buffers that load_state_dict fills and
        this rank's shard is cut from on exit. On an error everything is put back."""
        saved = [(a.state, a.shard, a.slot_cache) for _, a in self.arenas]
        try:
            for _, a in self.arenas:
                if load:
                    full = {k: _arena_empty(a.n, a.dtype) for k in a.state}
                else:
                    full = {k: self._gather(a.state[k], a) for k in sorted(a.state)}
                a.state, a.shard, a.slot_cache = full, None, None
            yield
        except BaseException:
            for (_, a), (st, sh, sc) in zip(self.arenas, saved):
                a.state, a.shard, a.slot_cache = st, sh, sc
            raise
        for (_, a), (st, sh, sc) in zip(self.arenas, saved):
            if load:
                a.state, a.shard, a.slot_cache = _cut(a.state, sh, a.dtype), sh, None
            else:
                a.state, a.shard, a.slot_cache = st, sh, sc

    def detach(self) -> None:
        """Undo DataParallel: full state on every rank (collective under ZeRO-1), arenas back
        in ordinary buffers, the optimizer's hook removed."""
        for _, a in self.arenas:
            if self.sharded:
                a.state = {k: self._gather(a.state[k], a) for k in sorted(a.state)}
                a.shard = None
            a.rebind_buffers(param=_arena_empty(a.n, a.dtype) if self.sharded else None,
                             grad=_arena_empty(a.n, a.dtype))
            a.grad_sync = None
        self.optimizer._grad_sync = None
        _untrack(self)
        self.reducer.close()
