"""Trainer: the training loop (fit / evaluate / predict), its schedule, and its checkpoints.

One step is ``forward -> loss -> zero_grad -> backward -> gradient norm -> callbacks -> step``.
The gradient norm costs one read pass over each of the optimizer's gradient arenas (and with
``grad_clip`` it is the same pass: ``optimizer.clip_grad_norm_`` folds the clip scale into the
fused update instead of rewriting the gradients). Nothing loops over parameters in Python
unless a callback asks for per-layer statistics (:class:`GradientMonitor`) or something went
wrong (:class:`NonFiniteGuard` looks for the layer only when it fires).

Data-parallel (``distributed``, under ``mpiexec``): the model and optimizer are wrapped in
``gf.distributed.DataParallel``; a training DataLoader is sharded over the ranks
(:class:`~gradfuse.train._distributed.ShardedLoader`); each step's gradients are averaged
before the gradient norm (so clipping, the non-finite guard and every callback see the same
numbers on every rank), and the step's loss, sample count and metric are summed over ranks (one
3-value all-reduce), so the History, the stop decisions and the checkpoints are the same on
every rank; only rank 0 prints, logs and writes files.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Iterable, Iterator

import numpy as np

from .. import random as _random
from .._checks import check_int
from .._grad_norm import total_norm
from ..nn.module import Module
from ..optim.lr_scheduler import ReduceLROnPlateau
from ..tensor import Tensor, no_grad
from . import _checkpoint
from . import _distributed as _dp
from ._device import host, model_device
from .callbacks import Callback, ModelCheckpoint, ProgressBar
from .history import STEP_KEYS, History

__all__ = ["Trainer"]

_HOOKS = ("on_fit_start", "on_epoch_start", "on_batch_start", "on_after_backward",
          "on_batch_end", "on_epoch_end", "on_fit_end")


def _check_loader(name: str, loader) -> None:
    # without calling iter(): a loader may draw its epoch order there (a random draw that
    # would shift every later epoch and break reproducibility)
    if isinstance(loader, Iterator):  # a generator or iterator: empty from the 2nd epoch on
        raise TypeError(
            f"{name}: got a one-shot iterator ({type(loader).__name__}); pass something that "
            "can be iterated once per epoch (a DataLoader or a list of batches)")
    if not isinstance(loader, Iterable) and not hasattr(loader, "__getitem__"):
        raise TypeError(
            f"{name}: expected an iterable of (x, y) batches (a DataLoader, a list), got "
            f"{type(loader).__name__}")


def _as_tensor(a, name: str) -> Tensor:
    if isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        return Tensor(a)
    try:
        return Tensor(np.asarray(a))
    except Exception:
        raise TypeError(f"{name}: cannot make a tensor of {type(a).__name__}") from None


def _xy(batch, name: str):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
                else f"a {type(batch).__name__}")
        raise TypeError(f"{name}: each batch must be an (x, y) pair, got {what}")
    return _as_tensor(batch[0], f"{name} x"), _as_tensor(batch[1], f"{name} y")


def _rows(x: Tensor) -> int:
    return int(x.data.shape[0]) if x.data.ndim else 1


def _accuracy_count(out: np.ndarray, y: np.ndarray) -> int:
    """Correct predictions: argmax over classes (N, C), or a logit > 0 for (N,)/(N, 1) outputs
    with 0/1 targets."""
    if out.ndim == 2 and out.shape[1] > 1:
        if y.shape != (out.shape[0],):
            raise ValueError(
                f"metric 'accuracy': expected class-index targets of shape ({out.shape[0]},) "
                f"for outputs of shape {out.shape}, got targets of shape {y.shape} (for "
                "regression pass metric=None or a callable)")
        return int(np.count_nonzero(out.argmax(axis=1) == y))
    if out.ndim in (1, 2) and out.size == y.size:
        return int(np.count_nonzero((out.reshape(-1) > 0) == (y.reshape(-1) > 0.5)))
    raise ValueError(
        f"metric 'accuracy': cannot compare outputs of shape {out.shape} with targets of shape "
        f"{y.shape} (for regression pass metric=None or a callable)")


def _has_state_dict(loader) -> bool:
    return callable(getattr(loader, "state_dict", None)) and \
        callable(getattr(loader, "load_state_dict", None))


def _len(loader):
    try:
        return len(loader)
    except TypeError:
        return None


def _loader_size(loader) -> dict:
    """What a partial epoch's position depends on: the number of batches, and for a DataLoader
    its batch size and data set length (None where the loader does not tell)."""
    bs = getattr(loader, "batch_size", None)
    try:
        samples = len(loader.dataset)
    except (AttributeError, TypeError):
        samples = None
    return {"batches": _len(loader),
            "batch_size": bs if isinstance(bs, numbers.Integral) and not isinstance(bs, bool)
            else None,
            "samples": samples}


def _check_loader_size(loader, saved) -> None:
    """A partial epoch resumes by batch count: refuse a loader that cuts the epoch otherwise
    (resuming would silently skip or repeat samples)."""
    if not saved:
        return
    now = _loader_size(loader)
    for key in ("samples", "batch_size", "batches"):
        a, b = saved.get(key), now[key]
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"train: the checkpoint was taken inside an epoch of a loader with {key} = "
                f"{a}, this one has {b}; resume a partial epoch with the same loader (or "
                "resume from a checkpoint taken at an epoch end)")


def _loader_state(loader):
    """Whatever makes ``loader``'s next epoch reproducible: its state_dict() when it has one,
    else the state of its ``generator`` (a gf.Generator or a numpy Generator); None else."""
    if loader is None:
        return None
    if _has_state_dict(loader):
        return {"state_dict": loader.state_dict()}
    gen = getattr(loader, "generator", None)
    if isinstance(gen, _random.Generator):
        return {"gf_generator": gen.get_state().data.copy()}
    if isinstance(gen, np.random.Generator):
        return {"numpy_generator": gen.bit_generator.state}
    return None


def _set_loader_state(loader, state) -> None:
    if state is None:
        return
    if "state_dict" in state:
        if not callable(getattr(loader, "load_state_dict", None)):
            raise ValueError(
                "train: the checkpoint holds a loader state_dict but this loader has no "
                "load_state_dict(); resume with the same kind of loader")
        loader.load_state_dict(state["state_dict"])
        return
    gen = getattr(loader, "generator", None)
    if "gf_generator" in state and isinstance(gen, _random.Generator):
        gen.set_state(np.asarray(state["gf_generator"], dtype=np.uint8))
    elif "numpy_generator" in state and isinstance(gen, np.random.Generator):
        gen.bit_generator.state = state["numpy_generator"]
    else:
        raise ValueError(
            "train: the checkpoint holds the state of a loader generator this loader does not "
            "have; resume with the same kind of loader")


def _sampler_mismatch(loader, dist):
    """Why ``loader``'s DistributedSampler does not shard for this rank of this world (None
    when it does, or when it has none). Built before ``gf.distributed.init()`` (e.g. by a
    ``Trainer(distributed=True)`` that initializes MPI afterwards), its defaults are rank 0 of
    1: every rank would train on the whole data set."""
    from ..data.sampler import DistributedSampler

    s = getattr(loader, "sampler", None)
    if not isinstance(s, DistributedSampler):
        return None
    w, r = dist.get_world_size(), dist.get_rank()
    if (s.num_replicas, s.rank) == (w, r):
        return None
    return (f"DistributedSampler was built for rank {s.rank} of {s.num_replicas} "
            f"(num_replicas={s.num_replicas}, rank={s.rank}), but this is rank {r} of {w}: "
            "build it after gf.distributed.init() (or pass num_replicas and rank)")


def _portable_error(err):
    """An exception that survives pickling to the other ranks (the original when it does)."""
    if err is None:
        return None
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return ValueError(f"{type(err).__name__}: {err}")


def _gather_rows(dist, outs, ys, sharded):
    """All ranks' evaluation outputs and targets, in the data set's order when each rank held
    the rows ``rank::world`` (shard_for_eval), else rank after rank."""
    mine = (np.concatenate(outs) if outs else None, np.concatenate(ys) if ys else None)
    parts = dist.all_gather_object(mine)
    parts = [p for p in parts if p[0] is not None]
    if not parts:
        return [], []
    if not sharded:
        return [p[0] for p in parts], [p[1] for p in parts]
    w = len(parts)
    total = sum(len(p[0]) for p in parts)
    out = np.empty((total,) + parts[0][0].shape[1:], parts[0][0].dtype)
    y = np.empty((total,) + parts[0][1].shape[1:], parts[0][1].dtype)
    for r, (o, t) in enumerate(parts):
        out[r::w], y[r::w] = o, t
    return [out], [y]


class Trainer:
    """The training loop: ``fit`` / ``evaluate`` / ``predict``, with callbacks.

    Args:
        model: a :class:`gf.nn.Module` mapping a batch ``x`` to outputs (logits ``(N, C)`` for
            classification), or a ``gf.distributed.DataParallel`` of one (built with
            ``optimizer``; the trainer then runs data-parallel with it).
        optimizer: a gradfuse optimizer over the model's parameters.
        loss_fn: ``loss_fn(outputs, y) -> scalar Tensor`` with mean reduction (the epoch loss
            is the sample-weighted mean of the batch losses).
        scheduler: an lr scheduler, or None. Stepped once per epoch (after validation) or,
            with ``scheduler_interval="step"``, after every optimizer step.
            :class:`ReduceLROnPlateau` is always stepped per epoch, on the validation loss in
            mode ``"min"`` and on the validation metric in mode ``"max"`` (the training values
            when there is no validation data).
        callbacks: a list of :class:`Callback`. With ``verbose >= 1`` and no
            :class:`ProgressBar` among them, one is added.
        grad_clip: clip the total gradient 2-norm to this value (folded into the step).
        metric: ``"accuracy"`` (argmax of ``(N, C)`` outputs against class indices, or
            ``logit > 0`` against 0/1 targets), None, or ``callable(outputs, y) -> float`` on
            numpy arrays (evaluate applies it to the whole set at once; the training value is
            the sample-weighted mean over batches).
        scheduler_interval: ``"epoch"`` or ``"step"``.
        verbose: 0 prints nothing; 1 a tqdm bar per epoch when stdout is a terminal and tqdm
            is installed, else one line per epoch; 2 one line per epoch.
        distributed: data-parallel training over MPI ranks (``mpiexec -n W python train.py``,
            the same script on every rank). None (default): when ``gf.distributed`` is
            initialized with more than one rank; True: also initializes it (needs mpi4py);
            False: never; a dict: True, with ``gf.distributed.DataParallel`` options
            (``{"shard_optimizer_state": True}`` for ZeRO-1). Constructing the trainer is then
            collective (parameters and buffers are broadcast from rank 0). A training
            ``gf.data.DataLoader`` of batch size B is sharded (every rank B samples per step,
            W B in all, epoch orders the same as the loader's own, see ``_distributed.py``);
            an evaluation DataLoader is split without padding; other iterables are used as
            they are (each rank must then get its own part, with the same number of batches).
            Callbacks run on every rank with the same logs (so their decisions agree), except
            ProgressBar, CSVLogger and JSONLogger, which run on rank 0 only; checkpoints are
            gathered on every rank and written by rank 0.

    Attributes: ``history`` (:class:`History`), ``epoch`` (completed epochs), ``global_step``
    (optimizer steps taken, skipped ones included), ``stop_training`` (a callback sets it to
    end the run), ``skip_step`` (set in ``on_after_backward`` to skip this batch's update),
    ``batch`` (the ``(x, y)`` Tensors of the step in progress), ``train_loader``,
    ``val_loader``, ``epochs`` (the target of the current fit); data-parallel: ``dp`` (the
    ``gf.distributed.DataParallel``, None in one process), ``distributed``, ``is_main``
    (rank 0). Under ZeRO-1, ``p.grad`` outside this rank's shard is not averaged, so
    GradientMonitor's per-layer norms (and NonFiniteGuard's layer name) are this rank's view;
    the total gradient norm, the loss and every decision are global.

    Example::

        >>> model = gf.nn.Sequential(gf.nn.Linear(64, 32), gf.nn.ReLU(), gf.nn.Linear(32, 10))
        >>> opt = gf.optim.Adam(model.parameters(), lr=1e-3)
        >>> trainer = Trainer(model, opt, gf.nn.CrossEntropyLoss(), verbose=0)
        >>> history = trainer.fit(train_batches, val=val_batches, epochs=10)
        >>> trainer.evaluate(val_batches)
        {'loss': 0.11, 'metric': 0.97}
    """

    def __init__(self, model, optimizer, loss_fn, scheduler=None, callbacks=None,
                 grad_clip=None, metric="accuracy", scheduler_interval="epoch", verbose=1,
                 distributed=None):
        given_dp = None
        if type(model).__name__ == "DataParallel" and isinstance(getattr(model, "module", None),
                                                                  Module):
            given_dp, model = model, model.module  # a gf.distributed.DataParallel of the user's
            if getattr(given_dp, "optimizer", optimizer) is not optimizer:
                raise ValueError("optimizer: the DataParallel given as model was built for "
                                 "another optimizer")
            if distributed is False:
                raise ValueError("distributed: False, but model is a DataParallel")
        if not isinstance(model, Module):
            raise TypeError(f"model: expected a gf.nn.Module, got {type(model).__name__}")
        if not isinstance(getattr(optimizer, "param_groups", None), list) or \
                not callable(getattr(optimizer, "step", None)):
            raise TypeError(
                f"optimizer: expected a gf.optim optimizer, got {type(optimizer).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
        if scheduler is not None:
            if not callable(getattr(scheduler, "step", None)):
                raise TypeError(
                    f"scheduler: expected an lr scheduler, got {type(scheduler).__name__}")
            if getattr(scheduler, "optimizer", optimizer) is not optimizer:
                raise ValueError("scheduler: it was built for another optimizer")
        if callbacks is None:
            callbacks = []
        if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            raise TypeError(
                f"callbacks: expected a list of Callback, got {type(callbacks).__name__}")
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks[{i}]: expected a Callback, got {type(cb).__name__}")
        if grad_clip is not None:
            if isinstance(grad_clip, bool) or not isinstance(grad_clip, numbers.Real):
                raise TypeError(
                    f"grad_clip: expected a positive number or None, got "
                    f"{type(grad_clip).__name__}")
            if not (math.isfinite(grad_clip) and grad_clip > 0):
                raise ValueError(f"grad_clip: expected a positive number, got {grad_clip}")
            grad_clip = float(grad_clip)
        if not (metric is None or metric == "accuracy" or callable(metric)):
            raise ValueError(
                f"metric: expected 'accuracy', None or a callable(outputs, y) -> float, got "
                f"{metric!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval: expected 'epoch' or 'step', got {scheduler_interval!r}")
        if isinstance(verbose, bool) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
        # checked (and MPI initialized) before any state
        # (a DataParallel given as model: data-parallel exactly when it is, i.e. in a world of
        # more than one rank)
        world = _dp.resolve(None if given_dp is not None else distributed)
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.metric = metric
        self.scheduler_interval = scheduler_interval
        self.verbose = verbose
        callbacks = list(callbacks)
        if verbose and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.insert(0, ProgressBar(verbose=verbose))
        self.callbacks = callbacks
        self.history = History()
        self.epoch = 0
        self.global_step = 0
        self.stop_training = False
        self.skip_step = False
        self.epochs = None  # the target of the current fit
        self.train_loader = self.val_loader = None
        self.batch = None  # the (x, y) of the step in progress, for callbacks
        self._pending_loader_state = None
        self._in_epoch = None  # the epoch being trained, None between epochs
        self._acc = None  # its running sums
        self._epoch_loader_start = None
        self._epoch_loader_size = None
        self._resume_partial = None  # a partial epoch restored by load_state_dict
        self._device = "cpu"
        self._dist = self.dp = None
        self._owns_dp = self._closed = False
        if world is not None:
            dist, opts = world
            if given_dp is not None:
                if opts:
                    raise ValueError("distributed: DataParallel options with a DataParallel "
                                     "given as model (set them where it is built)")
                self.dp = given_dp
            else:
                from ..distributed import DataParallel
                if getattr(optimizer, "_grad_sync", None) is not None:
                    raise ValueError(
                        "optimizer: already attached to a DataParallel, e.g. of an earlier "
                        "Trainer: call that trainer's close() first (on every rank), or pass "
                        "its trainer.dp as model")
                self.dp = DataParallel(model, optimizer, **opts)  # collective: rank 0's weights
                self.dp._release_when_dropped()  # see close()
                self._owns_dp = True
            self._dist = dist

    @property
    def distributed(self) -> bool:
        """Whether this trainer runs data-parallel over several MPI ranks."""
        return self._dist is not None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (and in a single process): the rank that prints and writes."""
        return self._dist is None or self._dist.get_rank() == 0

    def close(self) -> None:
        """Release the data-parallel resources of this trainer (collective: call it on every
        rank, e.g. after the last ``fit``): the ``DataParallel`` it built is closed, so the
        optimizer steps as in one process again (under ZeRO-1 with its full state gathered)
        and the reducer's shared-memory windows and MPI communicators are freed. A
        ``DataParallel`` given as ``model`` is left to its owner. A data-parallel trainer
        refuses ``fit`` afterwards; ``evaluate`` and the model stay usable. In one process
        it does nothing (``fit`` goes on working); a second call does nothing. A trainer
        dropped without ``close()`` (and its ``dp``) is closed at the next ``DataParallel``
        construction, once every rank has garbage-collected it (MPICH has 2048
        communicators per process: about 680 unclosed trainers exhausted them before that).

        Example::

            >>> for lr in (1e-3, 3e-3, 1e-2):
            ...     trainer = Trainer(make_model(), ..., verbose=0)
            ...     trainer.fit(train, epochs=5)
            ...     trainer.close()
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_dp and self.dp is not None:
            self.dp.close()

    # ------------------------------------------------------------ callbacks
    def _hooks(self, name: str) -> list:
        """The bound hook ``name`` of every callback that overrides it (the per-batch loop
        calls only those), in list order, except that ModelCheckpoint's step and epoch ends
        come last: its checkpoint then holds the other callbacks' state of that step or
        epoch (an EarlyStopping listed after it would resume one epoch behind) and it sees
        their ``stop_training``."""
        base = getattr(Callback, name)
        cbs = [cb for cb in self._callbacks_here()
               if getattr(type(cb), name, base) is not base]
        if name in ("on_batch_end", "on_epoch_end"):
            cbs.sort(key=lambda cb: isinstance(cb, ModelCheckpoint))  # stable
        return [getattr(cb, name) for cb in cbs]

    def _callbacks_here(self) -> list:
        """The callbacks that run on this rank: all of them, except on ranks other than 0 those
        marked ``main_process_only`` (progress and log files)."""
        if self.is_main:
            return list(self.callbacks)
        return [cb for cb in self.callbacks if not getattr(cb, "main_process_only", False)]

    def _callback_keys(self):
        """``("EarlyStopping:0", cb)``...: a callback's state is found again by its class and
        its rank among those of its class (not its index: the ProgressBar that verbose adds
        would shift it)."""
        seen: dict[str, int] = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            k = seen.get(name, 0)
            seen[name] = k + 1
            yield f"{name}:{k}", cb

    # ------------------------------------------------------------ helpers
    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _grad_norm(self) -> float:
        """Total gradient 2-norm: one read pass per gradient arena (the clip folds into it)."""
        opt = self.optimizer
        if self.grad_clip is not None:
            clip = getattr(opt, "clip_grad_norm_", None)
            if clip is not None:
                return float(clip(self.grad_clip))
            from ..nn.utils import clip_grad_norm_
            return float(clip_grad_norm_(self.model.parameters(), self.grad_clip).item())
        sync = getattr(opt, "_grad_sync", None)
        if sync is not None and getattr(sync, "sharded", False):
            # ZeRO-1: only this rank's shard of the arena holds averaged gradients; the shards'
            # partial sums are combined in rank order (the same float on every rank)
            return float(sync.grad_norm(opt._plans(), 2.0))
        plans = getattr(opt, "_plans", None)
        if plans is not None:  # a gradfuse optimizer: whole arenas (active segments only)
            return float(total_norm(opt._grad_ranges(plans()), 2.0))
        grads = [p.grad.data.reshape(-1) for p in self.model.parameters() if p.grad is not None]
        return float(total_norm([np.ascontiguousarray(g) for g in grads], 2.0))

    def _to_device(self, t: Tensor) -> Tensor:
        """``t`` on the model's device (batches come from the host; a no-op on the CPU)."""
        dev = model_device(self.model)
        return t if str(dev) == "cpu" else t.to(dev)

    def _metric_batch(self, out: np.ndarray, y: np.ndarray) -> float:
        """The metric of one batch: a count of correct predictions for accuracy, else the
        callable's value times the batch size (both summed over the epoch)."""
        if self.metric == "accuracy":
            return float(_accuracy_count(out, y))
        return float(self.metric(out, y)) * out.shape[0]

    def _plateau_value(self, train_loss, train_metric, val_loss, val_metric):
        s = self.scheduler
        if getattr(s, "mode", "min") == "max":
            v = val_metric if val_metric is not None else train_metric
            if v is None:
                raise ValueError(
                    "scheduler: ReduceLROnPlateau in mode 'max' follows the metric, but the "
                    "trainer has metric=None")
            return v
        return val_loss if val_loss is not None else train_loss

    # ------------------------------------------------------------ fit
    def fit(self, train, val=None, epochs=1, resume_from=None) -> History:
        """Train until ``epochs`` epochs are complete; returns :attr:`history`.

        Args:
            train: an iterable of ``(x, y)`` batches (Tensors or arrays; a DataLoader, or a
                list), iterated once per epoch.
            val: the same for validation (evaluated after every epoch), or None.
            epochs: the total number of epochs of the run, counting those already done: after
                ``resume_from`` (or a previous ``fit``) at epoch k, ``fit`` trains epochs
                k+1..epochs.
            resume_from: a checkpoint path (from :class:`ModelCheckpoint` or
                :meth:`save_checkpoint`): model, optimizer, scheduler, epoch, step, random
                states and history are restored first, so the run continues bit for bit as if
                it had not been interrupted.

        Example::

            >>> h = trainer.fit(train_loader, val=val_loader, epochs=20)
            >>> h.epochs[-1]["val_metric"]
            0.975
        """
        if self._closed and self._dist is not None:
            raise RuntimeError("fit: this data-parallel Trainer was closed (close()); build a "
                               "new one")
        epochs = check_int("epochs", epochs, 1)
        _check_loader("train", train)
        if val is not None:
            _check_loader("val", val)
        if self._dist is not None:
            train = self._shard_train(train)
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.metric is None and \
                getattr(self.scheduler, "mode", "min") == "max":
            # checked here, not when the first epoch ends and its steps are already taken
            raise ValueError(
                "scheduler: ReduceLROnPlateau in mode 'max' follows the metric, but the "
                "trainer has metric=None")
        if resume_from is not None:
            if not isinstance(resume_from, (str, os.PathLike)):
                raise TypeError("resume_from: expected a str or os.PathLike, got "
                                f"{type(resume_from).__name__}")
            state = self._read_checkpoint(resume_from)
            # refused before anything is restored: a rejected call leaves the trainer as it was
            done = state.get("epoch") if isinstance(state, dict) else None
            if isinstance(done, int) and done > epochs:
                raise ValueError(
                    f"epochs: the checkpoint already has {done} epochs; pass the total number "
                    f"of epochs (>= {done})")
            partial = state.get("partial") if isinstance(state, dict) else None
            if isinstance(partial, dict):
                _check_loader_size(train, partial.get("loader_size"))
            self.load_state_dict(state)
        if self.epoch > epochs:
            raise ValueError(
                f"epochs: the run already has {self.epoch} epochs; pass the total number of "
                f"epochs (>= {self.epoch})")
        partial = self._resume_partial
        if partial is not None:
            _check_loader_size(train, partial.get("loader_size"))
        self.train_loader, self.val_loader = train, val
        if partial is not None and not _has_state_dict(train):
            # a loader that cannot seek restarts the epoch from its start state; the batches
            # already trained are drawn again and skipped
            _set_loader_state(train, partial["loader_start"])
            partial["skip"] = partial["acc"]["batches"]
        elif self._pending_loader_state is not None:
            _set_loader_state(train, self._pending_loader_state)
        self._pending_loader_state = None
        self.epochs = epochs
        self.stop_training = False
        self.history.stopped_early = self.history.diverged = False  # of this fit
        started = []  # on_fit_end goes to the callbacks whose on_fit_start ran
        try:
            for cb in self._callbacks_here():
                cb.on_fit_start(self)
                started.append(cb)
            for epoch in range(self.epoch + 1, epochs + 1):
                self._train_epoch(epoch, train, val)
                if self.stop_training:
                    if not self.history.diverged and epoch < epochs:
                        self.history.stopped_early = True
                    break
        finally:
            for cb in started:
                cb.on_fit_end(self)
        return self.history

    def _train_epoch(self, epoch: int, train, val) -> None:
        model, opt, loss_fn = self.model, self.optimizer, self.loss_fn
        # data-parallel: the forward goes through DataParallel, which first broadcasts rank 0's
        # buffers (BatchNorm running statistics), as PyTorch's DDP does
        forward = model if self.dp is None else self.dp
        sched = self.scheduler
        plateau = isinstance(sched, ReduceLROnPlateau)
        step_sched = sched is not None and not plateau and self.scheduler_interval == "step"
        on_batch_start = self._hooks("on_batch_start")
        on_after_backward = self._hooks("on_after_backward")
        on_batch_end = self._hooks("on_batch_end")
        steps = self.history.steps
        metric = self.metric
        self._device = model_device(model)
        device_move = str(self._device) != "cpu"
        # The epoch's running sums live on the trainer, so that a checkpoint taken inside the
        # epoch (ModelCheckpoint(every_steps=...)) can resume it mid-way.
        partial, self._resume_partial = self._resume_partial, None
        skip = 0
        if partial is not None and partial["epoch"] != epoch:
            partial = None
        if partial is not None:
            acc = dict(partial["acc"])
            skip = partial["skip"]
        else:
            acc = {"batches": 0, "n": 0, "loss_sum": 0.0, "metric_sum": 0.0, "norm_sum": 0.0,
                   "norm_n": 0, "lr": self._lr()}
        self._acc = acc
        # where a loader without its own state_dict() starts this epoch
        self._epoch_loader_start = None if _has_state_dict(train) else _loader_state(train)
        self._epoch_loader_size = _loader_size(train)
        dist = self._dist
        if dist is not None:
            every = dist.all_gather_object((_len(train), _sampler_mismatch(train, dist)))
            counts = [c for c, _ in every]
            wrong = [(r, m) for r, (_, m) in enumerate(every) if m is not None]
            if wrong:  # the same error on every rank
                raise ValueError(f"train: rank {wrong[0][0]}'s {wrong[0][1]}")
            if len(set(counts)) > 1:  # a rank with fewer steps would hang the others
                raise ValueError(
                    f"train: the ranks' loaders have different numbers of batches {counts}; "
                    "give every rank the same number (a gf.data.DataLoader is sharded evenly "
                    "by the trainer)")
        sampler = getattr(train, "sampler", None)
        if not isinstance(train, _dp.ShardedLoader) and callable(getattr(sampler, "set_epoch",
                                                                          None)):
            sampler.set_epoch(epoch - 1)  # a DistributedSampler of the user's: PyTorch's habit
        self._in_epoch = epoch
        for hook in self._hooks("on_epoch_start"):
            hook(self, epoch)
        model.train()
        t0 = time.perf_counter()
        n0 = acc["n"]
        n_batches = _len(train)
        exhausted = partial is not None and n_batches is not None and acc["batches"] >= n_batches
        for batch in (() if exhausted else train):
            if skip:  # resuming mid-epoch a loader that cannot seek: replay its order
                skip -= 1
                continue
            x, y = _xy(batch, "train")
            if device_move:
                x, y = x.to(self._device), y.to(self._device)
            bs = _rows(x)
            step = self.global_step + 1
            self.batch = (x, y)
            for hook in on_batch_start:
                hook(self, step)
            lr = self._lr()
            out = forward(x)
            loss = loss_fn(out, y)
            loss_v = float(loss.item())
            opt.zero_grad()
            loss.backward()
            m = None
            if dist is None:
                loss_sum = loss_v * bs
            else:
                # averaged gradients before the norm: clipping, the guard and the callbacks see
                # the same numbers on every rank; loss, samples and metric summed over ranks
                self.dp.sync_gradients()
                m = self._metric_batch(host(out), host(y)) if metric is not None else 0.0
                red = np.array([loss_v * bs, bs, m], np.float64)
                dist.all_reduce_(red, op="sum")
                loss_sum, bs, m = float(red[0]), int(red[1]), float(red[2])
                loss_v = loss_sum / bs
            gnorm = self._grad_norm()
            logs = {"step": step, "epoch": epoch, "loss": loss_v, "lr": lr, "grad_norm": gnorm,
                    "batch_size": bs}
            self.skip_step = False
            for hook in on_after_backward:
                hook(self, logs)
            if dist is not None:  # a callback's decision on one rank is everyone's
                self.skip_step, self.stop_training = self._agree(self.skip_step,
                                                                 self.stop_training)
            skipped = self.skip_step or self.stop_training
            if skipped:
                opt.zero_grad()  # also drops a clip scale folded for this batch
            else:
                opt.step()
            self.global_step = step
            if step_sched:
                sched.step()
            steps.append({k: logs[k] for k in STEP_KEYS})
            acc["batches"] += 1
            acc["n"] += bs
            acc["loss_sum"] += loss_sum
            acc["lr"] = lr
            if metric is not None:
                if m is None:
                    m = self._metric_batch(host(out), host(y))
                acc["metric_sum"] += m
                logs["metric"] = m / bs
            if math.isfinite(gnorm):
                acc["norm_sum"] += gnorm
                acc["norm_n"] += 1
            logs["skipped"] = skipped
            for hook in on_batch_end:
                hook(self, logs)
            if dist is not None:
                (self.stop_training,) = self._agree(self.stop_training)
            if self.stop_training:
                break
        if dist is not None:
            self._sync_buffers()
        n = acc["n"]
        if n == 0:
            raise ValueError(f"train: the loader yielded no batches in epoch {epoch}")
        train_time = time.perf_counter() - t0
        train_loss = acc["loss_sum"] / n
        train_metric = acc["metric_sum"] / n if metric is not None else None
        val_loss = val_metric = None
        if val is not None:
            r = self.evaluate(val)
            val_loss, val_metric = r["loss"], r["metric"]
        if sched is not None:
            if plateau:
                sched.step(self._plateau_value(train_loss, train_metric, val_loss, val_metric))
            elif not step_sched:
                sched.step()
        total_time = time.perf_counter() - t0
        if dist is not None:  # the slowest rank's times, so that the History is everyone's
            times = np.array([train_time, total_time])
            dist.all_reduce_(times, op="max")
            train_time, total_time = float(times[0]), float(times[1])
        rec = {"epoch": epoch, "train_loss": train_loss, "train_metric": train_metric,
               "val_loss": val_loss, "val_metric": val_metric, "lr": acc["lr"],
               "grad_norm": acc["norm_sum"] / acc["norm_n"] if acc["norm_n"] else math.nan,
               "time": total_time,
               "samples_per_s": (n - n0) / train_time if train_time > 0 else math.inf}
        self.history.epochs.append(rec)
        self.epoch = epoch
        self._in_epoch = None
        for hook in self._hooks("on_epoch_end"):
            hook(self, epoch, rec)
        if dist is not None:
            (self.stop_training,) = self._agree(self.stop_training)

    def _agree(self, *flags) -> list:
        """Data-parallel: each flag as the OR over the ranks (one tiny all-reduce). A callback
        that decides from something of its own rank (a wall-clock budget, a file, a random
        draw) would otherwise stop or skip on that rank alone: the others would wait in the
        next step's collectives forever (or, for a skipped step, their replicas would drift
        apart)."""
        a = np.array([1.0 if f else 0.0 for f in flags])
        self._dist.all_reduce_(a, op="max")
        return [bool(v) for v in a]

    def _sync_buffers(self) -> None:
        """Data-parallel with ``broadcast_buffers``: rank 0's buffers (per-rank BatchNorm's
        running statistics) on every rank, at the end of each epoch's training. DataParallel
        broadcasts them before each training forward only, so after the last step every rank
        kept the statistics of its own last batch: the validation (each rank evaluates its
        share with its own replica), the weights EarlyStopping keeps and the final models
        differed from rank 0's, the one the checkpoints hold."""
        if self.dp is not None:
            self.dp.sync_buffers()

    # ------------------------------------------------------------ evaluate / predict
    def evaluate(self, loader) -> dict:
        """Mean loss and metric over ``loader`` (``(x, y)`` batches), in eval mode under
        ``gf.no_grad()``; the model's mode is restored afterwards.

        Returns ``{"loss": float, "metric": float or None}``. Data-parallel: collective (the
        sums are reduced over the ranks): call it on every rank, not under ``is_main``.
        Example::

            >>> trainer.evaluate(val_loader)
            {'loss': 0.093, 'metric': 0.972}
        """
        _check_loader("loader", loader)
        dist = self._dist
        sharded = False
        if dist is not None:
            loader, sharded = _dp.shard_for_eval(loader, dist.get_world_size(), dist.get_rank())
        model = self.model
        was_training = model.training
        model.eval()
        n = 0
        loss_sum = metric_sum = 0.0
        outs, ys = [], []
        try:
            with no_grad():
                for batch in loader:
                    x, y = _xy(batch, "loader")
                    x, y = self._to_device(x), self._to_device(y)
                    bs = _rows(x)
                    out = model(x)
                    loss_sum += float(self.loss_fn(out, y).item()) * bs
                    n += bs
                    if self.metric == "accuracy":
                        metric_sum += _accuracy_count(host(out), host(y))
                    elif self.metric is not None:
                        outs.append(host(out))
                        ys.append(host(y))
        finally:
            model.train(was_training)
        if dist is not None:  # sums over the ranks' shares (every rank gets the same)
            red = np.array([loss_sum, n, metric_sum], np.float64)
            dist.all_reduce_(red, op="sum")
            loss_sum, n, metric_sum = float(red[0]), int(red[1]), float(red[2])
            if self.metric is not None and self.metric != "accuracy":
                outs, ys = _gather_rows(dist, outs, ys, sharded)
        if n == 0:
            raise ValueError("loader: it yielded no batches")
        metric = None
        if self.metric == "accuracy":
            metric = metric_sum / n
        elif self.metric is not None:
            metric = float(self.metric(np.concatenate(outs), np.concatenate(ys)))
        return {"loss": loss_sum / n, "metric": metric}

    def predict(self, data, batch_size: int = 1024) -> np.ndarray:
        """The model's outputs, in eval mode under ``gf.no_grad()``, as one numpy array.

        Args:
            data: an array or Tensor of inputs (run in chunks of ``batch_size`` rows), or an
                iterable of batches: ``(x, y)`` pairs (``y`` is ignored) or bare ``x``.

        Example::

            >>> trainer.predict(x_test).argmax(axis=1)[:5]
            array([3, 8, 1, 0, 7])
        """
        batch_size = check_int("batch_size", batch_size, 1)
        if isinstance(data, (Tensor, np.ndarray)):
            arr = data.data if isinstance(data, Tensor) else data
            if arr.ndim == 0:
                raise ValueError("data: expected an array of inputs with a batch dimension")
            batches = [arr[i:i + batch_size] for i in range(0, len(arr), batch_size)]
        else:
            _check_loader("data", data)
            batches = data
        model = self.model
        was_training = model.training
        model.eval()
        outs = []
        try:
            with no_grad():
                for b in batches:
                    x = b[0] if isinstance(b, (tuple, list)) else b
                    outs.append(host(model(self._to_device(_as_tensor(x, "data x")))))
        finally:
            model.train(was_training)
        if not outs:
            raise ValueError("data: no inputs to predict")
        return np.concatenate(outs)

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit: model (parameters and
        buffers), optimizer and scheduler state, completed epochs and steps, the default
        random generator's state (dropout), the training loader's shuffle state, the history
        and the callbacks' states (best values, patience counters)."""
        return {
            "format": _checkpoint.FORMAT,
            "model": dict(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.global_step,
            "rng": _random.get_rng_state().data.copy(),
            "loader": _loader_state(self.train_loader) if self.train_loader is not None
            else self._pending_loader_state,
            "history": self.history.to_dict(),
            "partial": None if self._in_epoch is None else {
                "epoch": self._in_epoch, "acc": dict(self._acc),
                "loader_start": self._epoch_loader_start,
                "loader_size": self._epoch_loader_size},
            "callbacks": {key: cb.state_dict() for key, cb in self._callback_keys()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output. Everything is checked first (a mismatch
        raises ValueError and leaves model, optimizer and scheduler as they were)."""
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        if state.get("format", _checkpoint.FORMAT) != _checkpoint.FORMAT:
            raise ValueError(f"state: format {state['format']!r}, expected {_checkpoint.FORMAT!r}")
        need = ("model", "optimizer", "scheduler", "epoch", "step", "rng", "history")
        missing = [k for k in need if k not in state]
        if missing:
            raise ValueError(f"state: not a trainer state (missing {missing})")
        epoch = check_int("state['epoch']", state["epoch"], 0)
        step = check_int("state['step']", state["step"], 0)
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise ValueError(
                "state: the checkpoint was saved " +
                ("without a scheduler but this trainer has one" if state["scheduler"] is None
                 else "with a scheduler but this trainer has none"))
        history = History.from_dict(state["history"])
        partial = state.get("partial")
        if partial is not None:
            keys = {"epoch", "acc", "loader_start"}
            if not isinstance(partial, dict) or set(partial) - {"loader_size"} != keys \
                    or partial["epoch"] != epoch + 1:
                raise ValueError("state['partial']: expected the running sums of epoch "
                                 f"{epoch + 1} (the epoch in progress)")
            partial = dict(partial, skip=0)
        rng = np.asarray(state["rng"])
        if rng.dtype != np.uint8 or rng.shape != (16,):
            raise ValueError("state['rng']: expected 16 uint8 values")
        old_model = self.model.state_dict()
        old_opt = self.optimizer.state_dict()
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except Exception:
            self.model.load_state_dict(old_model)
            self.optimizer.load_state_dict(old_opt)
            raise
        _random.set_rng_state(rng)
        self.epoch, self.global_step, self.history = epoch, step, history
        self._pending_loader_state = state.get("loader")
        self._resume_partial = partial
        self._in_epoch = None
        self.train_loader = None
        saved = state.get("callbacks") or {}
        for key, cb in self._callback_keys():
            if key in saved:
                cb.load_state_dict(saved[key])

    def save_checkpoint(self, path) -> None:
        """Write :meth:`state_dict` to ``path`` with :func:`gradfuse.save` (one safetensors
        file; atomically: temporary file, fsync, rename).

        Data-parallel: collective (every rank builds the state, rank 0 writes, and a failed
        write raises the same error on every rank)."""
        state = self.state_dict()
        self._on_main(lambda: _checkpoint.save(state, path))

    def _read_checkpoint(self, path) -> dict:
        """:func:`_checkpoint.load`; data-parallel: rank 0 reads and broadcasts (the file need
        only be on rank 0's machine), errors raised on every rank."""
        return self._on_main(lambda: _checkpoint.load(path))

    def _on_main(self, fn):
        """``fn()`` here in one process; data-parallel, on rank 0 alone (the checkpoint file's
        reads and writes), with its result returned and its error raised on every rank, so
        no rank waits on another that failed. One broadcast."""
        if self._dist is None:
            return fn()
        out = err = None
        if self.is_main:
            try:
                out = fn()
            except Exception as e:  # every rank raises, none waits on the others
                err = e
        err, out = self._dist.broadcast_object((_portable_error(err), out))
        if err is not None:
            raise err
        return out

    def _shard_train(self, train):
        """This rank's shard of a training DataLoader (see _distributed.ShardedLoader); other
        loaders as they are."""
        from ..data.loader import DataLoader

        if type(train) is DataLoader and train.sampler is None:
            d = self._dist
            return _dp.ShardedLoader(train, d.get_world_size(), d.get_rank(), dist=d)
        return train

    def load_checkpoint(self, path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` or ModelCheckpoint; the
        next :meth:`fit` continues from its epoch (data-parallel: collective)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        self.load_state_dict(self._read_checkpoint(path))
