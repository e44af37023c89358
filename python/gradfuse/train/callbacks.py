"""Callbacks of :class:`gradfuse.train.Trainer`: progress, checkpoints, early stopping, logs.

A callback overrides any of the hooks below; the trainer calls, per batch, only the hooks a
callback overrides. Diagnostics (NonFiniteGuard, GradientMonitor) live in diagnostics.py.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import shutil
import sys
import tempfile

__all__ = ["Callback", "ProgressBar", "EarlyStopping", "ModelCheckpoint", "CSVLogger",
           "JSONLogger"]


class Callback:
    """Base class: every hook does nothing. Hooks, in the order they run:

    * ``on_fit_start(trainer)``
    * ``on_epoch_start(trainer, epoch)`` (epoch 1-based)
    * ``on_batch_start(trainer, step)`` (the global step about to run, 1-based)
    * ``on_after_backward(trainer, logs)``: gradients are in ``.grad`` (not yet clipped: the
      clip is folded into the step), before the optimizer step; ``logs`` holds ``step``,
      ``epoch``, ``loss``, ``lr``, ``grad_norm``, ``batch_size``. Set
      ``trainer.skip_step = True`` to skip this update, ``trainer.stop_training = True`` to
      skip it and end the run.
    * ``on_batch_end(trainer, logs)``: after the step; ``logs["skipped"]`` tells whether it
      was applied, ``logs["metric"]`` is the batch's metric (when the trainer has one).
    * ``on_epoch_end(trainer, epoch, logs)``: ``logs`` is the epoch's History record; may set
      ``trainer.stop_training``.
    * ``on_fit_end(trainer)``: also after an exception in fit.

    Callbacks run in list order, except that :class:`ModelCheckpoint`'s ``on_batch_end`` and
    ``on_epoch_end`` run after all others (its checkpoint holds their state of that step).

    ``state_dict()``/``load_state_dict()`` carry what a resumed run needs (saved in the
    trainer's checkpoint).

    Example::

        class PrintLR(Callback):
            def on_epoch_end(self, trainer, epoch, logs):
                print(epoch, logs["lr"])
    """

    #: data-parallel runs call this callback on rank 0 only (printing, log files)
    main_process_only = False

    def on_fit_start(self, trainer) -> None:
        pass

    def on_epoch_start(self, trainer, epoch: int) -> None:
        pass

    def on_batch_start(self, trainer, step: int) -> None:
        pass

    def on_after_backward(self, trainer, logs: dict) -> None:
        pass

    def on_batch_end(self, trainer, logs: dict) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        pass

    def on_fit_end(self, trainer) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def epoch_line(logs: dict, epochs=None) -> str:
    """The one-line summary of an epoch record (what ProgressBar prints)."""
    e = f"epoch {logs['epoch']}" + (f"/{epochs}" if epochs else "")
    s = f"{e}  loss {_fmt(logs['train_loss'])}"
    if logs.get("train_metric") is not None:
        s += f"  metric {_fmt(logs['train_metric'])}"
    if logs.get("val_loss") is not None:
        s += f"  val_loss {_fmt(logs['val_loss'])}"
    if logs.get("val_metric") is not None:
        s += f"  val_metric {_fmt(logs['val_metric'])}"
    return (s + f"  lr {logs['lr']:.3g}  {logs['samples_per_s']:.0f} samples/s  "
            f"{logs['time']:.2f} s")


class ProgressBar(Callback):
    """Progress display: a tqdm bar per epoch (batches, running loss, metric, samples/s; at
    the end of the epoch ``val loss/metric``) when
    ``verbose=1``, the output is a terminal and tqdm is installed (``pip install
    gradfuse[train]``); otherwise one line per epoch (``verbose=1`` or ``2``). ``verbose=0``
    prints nothing. The Trainer adds one by itself when its ``verbose >= 1``.

    Args:
        verbose: 0, 1 or 2 as above.
        file: where to write (default: ``sys.stdout`` at the time of writing).

    Example::

        >>> Trainer(model, opt, loss_fn, callbacks=[ProgressBar(verbose=2)], verbose=0)
    """

    main_process_only = True

    def __init__(self, verbose: int = 1, file=None):
        if isinstance(verbose, bool) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
        self.verbose = verbose
        self.file = file
        self._bar = None
        self._use_bar = False

    def _out(self):
        return self.file if self.file is not None else sys.stdout

    def on_fit_start(self, trainer) -> None:
        out = self._out()
        tty = bool(getattr(out, "isatty", lambda: False)())
        self._use_bar = False
        if self.verbose == 1 and tty:
            try:
                import tqdm  # noqa: F401
                self._use_bar = True
            except ImportError:
                pass

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if not self._use_bar:
            return
        from tqdm import tqdm
        try:
            total = len(trainer.train_loader)
        except TypeError:
            total = None
        # a fixed 12-column bar leaves the line to the numbers; the size is given because
        # tqdm prints nothing on a terminal that reports 0 rows (a bare pty)
        cols, rows = shutil.get_terminal_size((100, 24))
        self._bar = tqdm(total=total, desc=f"epoch {epoch}/{trainer.epochs}", unit="batch",
                         file=self._out(), leave=True, ncols=cols, nrows=rows,
                         bar_format="{desc} {percentage:3.0f}%|{bar:12}| {n_fmt}/{total_fmt}"
                                    "{postfix}")
        self._n = 0
        self._loss = 0.0
        self._metric = 0.0

    def on_batch_end(self, trainer, logs: dict) -> None:
        bar = self._bar
        if bar is None:
            return
        self._n += logs["batch_size"]
        self._loss += logs["loss"] * logs["batch_size"]
        post = f"loss {self._loss / self._n:.4f}"
        if "metric" in logs:
            self._metric += logs["metric"] * logs["batch_size"]
            post += f", metric {self._metric / self._n:.4f}"
        el = bar.format_dict.get("elapsed", 0) or 0
        if el > 0:
            post += f", {self._n / el:.0f} samples/s"
        bar.set_postfix_str(post, refresh=False)
        bar.update(1)

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if self._bar is not None:
            post = f"loss {_fmt(logs['train_loss'])}"
            if logs.get("train_metric") is not None:
                post += f", metric {_fmt(logs['train_metric'])}"
            if logs.get("val_loss") is not None:
                post += f", val {_fmt(logs['val_loss'])}"
                if logs.get("val_metric") is not None:
                    post += f"/{_fmt(logs['val_metric'])}"
            post += f", {logs['samples_per_s']:.0f} samples/s"
            self._bar.set_postfix_str(post)
            self._bar.close()
            self._bar = None
        elif self.verbose:
            print(epoch_line(logs, trainer.epochs), file=self._out(), flush=True)

    def on_fit_end(self, trainer) -> None:
        if self._bar is not None:  # an exception or a stop mid-epoch
            self._bar.close()
            self._bar = None


def _resolve_mode(mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "metric" in monitor or "acc" in monitor else "min"
    return mode


def _check_monitor(monitor) -> str:
    from .history import EPOCH_KEYS
    if monitor not in EPOCH_KEYS or monitor in ("epoch", "time"):
        raise ValueError(
            f"monitor: expected one of train_loss, train_metric, val_loss, val_metric, lr, "
            f"grad_norm, samples_per_s, got {monitor!r}")
    return monitor


def _check_available(monitor: str, trainer, who: str) -> None:
    """Fail at the start of fit, not after the first epoch, when ``monitor`` will be None."""
    if monitor.startswith("val_") and getattr(trainer, "val_loader", True) is None:
        raise ValueError(f"{who}: monitor {monitor!r} needs validation data (fit(..., val=...))")
    if monitor.endswith("_metric") and getattr(trainer, "metric", True) is None:
        raise ValueError(f"{who}: monitor {monitor!r} needs a metric (the trainer has "
                         "metric=None)")


def _monitored(monitor: str, logs: dict, who: str) -> float:
    v = logs.get(monitor)
    if v is None:
        raise ValueError(
            f"{who}: monitor {monitor!r} has no value (no validation data, or metric=None)")
    return float(v)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row (Keras's rule; then ``history.stopped_early`` is True).

    Args:
        monitor: an epoch key of the History (default ``"val_loss"``).
        patience: the number of epochs without improvement after which the run stops
            (>= 0; 0 and 1 both stop at the first epoch that does not improve).
        min_delta: an improvement must exceed this (>= 0).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for metrics, min for losses).
        restore_best: at the end of the run, put back the parameters and buffers of the best
            epoch (kept as a copy in memory); not after a fit that trained no epoch.

    Attributes: ``best``, ``best_epoch``, ``wait``, ``stopped_epoch``.

    Example::

        >>> Trainer(model, opt, loss_fn, callbacks=[EarlyStopping(patience=3,
        ...         restore_best=True)]).fit(train, val=val, epochs=100)
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = False):
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral):
            raise TypeError(f"patience: expected an int, got {type(patience).__name__}")
        if patience < 0:
            raise ValueError(f"patience: expected an int >= 0, got {patience}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real):
            raise TypeError(f"min_delta: expected a number, got {type(min_delta).__name__}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta: expected a finite number >= 0, got {min_delta}")
        if not isinstance(restore_best, bool):
            raise TypeError(f"restore_best: expected a bool, got {restore_best!r}")
        self.monitor = _check_monitor(monitor)
        self.mode = _resolve_mode(mode, monitor)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.restore_best = restore_best
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self.stopped_epoch = None
        self._best_state = None
        self._trained = False  # whether this fit started an epoch (then on_fit_end restores)

    def _improved(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return v < self.best - self.min_delta
        return v > self.best + self.min_delta

    def on_fit_start(self, trainer) -> None:
        _check_available(self.monitor, trainer, "EarlyStopping")
        trainer.history.monitor, trainer.history.mode = self.monitor, self.mode
        self._trained = False

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._trained = True

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        v = _monitored(self.monitor, logs, "EarlyStopping")
        if self._improved(v):
            self.best, self.best_epoch, self.wait = v, epoch, 0
            if self.restore_best:
                self._best_state = trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:  # patience 0 and 1 both stop at the first bad epoch
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def on_fit_end(self, trainer) -> None:
        # not after a fit that trained nothing (refused by a later callback's on_fit_start,
        # or with no epoch left): the weights are the caller's, not this run's last ones
        if self.restore_best and self._best_state is not None and self._trained:
            trainer.model.load_state_dict(self._best_state)
        self._trained = False

    def state_dict(self) -> dict:
        st = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        if self.restore_best and self._best_state is not None:
            st["best_state"] = dict(self._best_state)
        return st

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.wait = int(state.get("wait", 0))
        # None when the saved run had no best yet: weights kept from another run must go
        self._best_state = state.get("best_state")


class ModelCheckpoint(Callback):
    """Save the trainer's full state (model, optimizer, scheduler, epoch, step, random states,
    loader position, history: enough to resume bit for bit with ``fit(..., resume_from=path)``)
    with :func:`gradfuse.save`: one safetensors file, written to a temporary file and renamed
    over the target, so a crash mid-write keeps the previous checkpoint.

    Args:
        path: file path; may contain ``{epoch}`` and ``{step}`` (e.g.
            ``"ckpt/epoch{epoch:03d}.safetensors"``).
        monitor, mode: what "best" means (default ``"val_loss"``, ``"auto"``: max for
            metrics, min for losses).
        save_best_only: at epoch ends, save only when ``monitor`` improves (default); False
            saves every ``every`` epochs and after the last (also when the run stopped
            early).
        every: with ``save_best_only=False``, the epoch interval.
        every_steps: also save every this many optimizer steps, inside epochs (a resumed run
            continues the epoch where the checkpoint was taken: exactly with a
            ``gf.data.DataLoader`` or any loader with ``state_dict()``, or with a loader whose
            order is fixed or drawn from its ``generator`` attribute at each ``iter()``,
            whose first batches are then drawn again and skipped; a loader with another
            batch count, batch size or data set length is refused). None: only at epoch ends.
            With ``save_best_only``, ``path`` must contain ``{step}`` (the step saves must
            not overwrite the best one).

    Attributes: ``best``, ``best_epoch``, ``saved`` (list of (epoch, path) at epoch ends, (epoch,
    step, path) inside epochs).

    Example::

        >>> ckpt = ModelCheckpoint("best.safetensors", monitor="val_metric")
        >>> Trainer(model, opt, loss_fn, callbacks=[ckpt]).fit(train, val=val, epochs=20)
        >>> Trainer(model, opt, loss_fn).load_checkpoint("best.safetensors")
    """

    def __init__(self, path, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = True, every: int = 1, every_steps=None):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(save_best_only, bool):
            raise TypeError(f"save_best_only: expected a bool, got {save_best_only!r}")
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"every: expected an int >= 1, got {every!r}")
        if every_steps is not None and (isinstance(every_steps, bool) or
                                        not isinstance(every_steps, numbers.Integral) or
                                        every_steps < 1):
            raise ValueError(f"every_steps: expected an int >= 1 or None, got {every_steps!r}")
        self.path = os.fspath(path)
        try:
            self.path.format(epoch=1, step=1)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"path: only {{epoch}} and {{step}} may be formatted into it ({e!r})") from None
        if save_best_only and every_steps is not None and \
                self.path.format(epoch=1, step=1) == self.path.format(epoch=1, step=2):
            raise ValueError(
                "path: with save_best_only and every_steps, the step saves would overwrite "
                "the best checkpoint; put {step} in the path, or pass save_best_only=False")
        self.monitor = _check_monitor(monitor)
        self.mode = _resolve_mode(mode, monitor)
        self.save_best_only = save_best_only
        self.every = int(every)
        self.every_steps = None if every_steps is None else int(every_steps)
        self.best = None
        self.best_epoch = None
        self.saved: list[tuple] = []

    def on_fit_start(self, trainer) -> None:
        if self.save_best_only:
            _check_available(self.monitor, trainer, "ModelCheckpoint")
            # history.best_epoch follows this monitor, unless an EarlyStopping sets its own
            if not any(isinstance(cb, EarlyStopping) for cb in getattr(trainer, "callbacks", ())):
                trainer.history.monitor, trainer.history.mode = self.monitor, self.mode

    def on_batch_end(self, trainer, logs: dict) -> None:
        step = logs["step"]
        if self.every_steps is not None and step % self.every_steps == 0:
            path = self.path.format(epoch=logs["epoch"], step=step)
            trainer.save_checkpoint(path)
            self.saved.append((logs["epoch"], step, path))

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if self.save_best_only:
            v = _monitored(self.monitor, logs, "ModelCheckpoint")
            better = math.isfinite(v) and (
                self.best is None or (v < self.best if self.mode == "min" else v > self.best))
            if not better:
                return
            # set before the write, so that the checkpoint holds it; put back when the write
            # fails, so that a best without a file does not block the next save
            old = self.best, self.best_epoch
            self.best, self.best_epoch = v, epoch
        elif epoch % self.every != 0 and epoch != trainer.epochs and not trainer.stop_training:
            return  # (the trainer runs this after the other callbacks' on_epoch_end)
        path = self.path.format(epoch=epoch, step=trainer.global_step)
        try:
            trainer.save_checkpoint(path)
        except BaseException:
            if self.save_best_only:
                self.best, self.best_epoch = old
            raise
        self.saved.append((epoch, path))

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")


def _atomic_write_text(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CSVLogger(Callback):
    """Append one row per epoch (the History record's keys) to a CSV file, flushed at once.

    Args:
        path: the CSV file; a new run overwrites it, a resumed run (trainer at epoch > 0)
            appends unless ``append=False``.

    Example::

        >>> Trainer(model, opt, loss_fn, callbacks=[CSVLogger("log.csv")]).fit(train, epochs=5)
    """

    main_process_only = True

    def __init__(self, path, append: bool | None = None):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        self.path = os.fspath(path)
        self.append = append

    def on_fit_start(self, trainer) -> None:
        from .history import EPOCH_KEYS
        append = self.append if self.append is not None else trainer.epoch > 0
        self._keys = list(EPOCH_KEYS)
        exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        with open(self.path, "a" if append else "w", newline="") as f:
            if not (append and exists):
                csv.writer(f).writerow(self._keys)

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(["" if logs.get(k) is None else logs[k] for k in self._keys])


class JSONLogger(Callback):
    """Rewrite ``path`` after every epoch with the whole ``history.to_dict()`` (atomically;
    NaN/inf written as Python's json does: NaN, Infinity).

    Args:
        path: the JSON file.
        steps: include the per-step records (default True).

    Example::

        >>> Trainer(model, opt, loss_fn, callbacks=[JSONLogger("run.json")]).fit(train, epochs=5)
        >>> History.from_dict(json.load(open("run.json"))).best_epoch
        5
    """

    main_process_only = True

    def __init__(self, path, steps: bool = True):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(steps, bool):
            raise TypeError(f"steps: expected a bool, got {steps!r}")
        self.path = os.fspath(path)
        self.steps = steps

    def _write(self, trainer) -> None:
        d = trainer.history.to_dict()
        if not self.steps:
            d["steps"] = []
        _atomic_write_text(self.path, json.dumps(d))

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        self._write(trainer)

    def on_fit_end(self, trainer) -> None:
        self._write(trainer)  # stopped_early / diverged are final only now
