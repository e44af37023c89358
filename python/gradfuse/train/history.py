"""History: what a :meth:`Trainer.fit` run measured, per epoch and per optimizer step."""

from __future__ import annotations

import math

__all__ = ["History", "EPOCH_KEYS", "STEP_KEYS"]

EPOCH_KEYS = ("epoch", "train_loss", "train_metric", "val_loss", "val_metric", "lr", "grad_norm",
              "time", "samples_per_s")
STEP_KEYS = ("step", "epoch", "loss", "lr", "grad_norm")


class History:
    """The record of a training run, returned by :meth:`Trainer.fit`.

    Attributes:
        epochs: one dict per epoch with the keys of ``EPOCH_KEYS``: ``epoch`` (1-based),
            ``train_loss`` and ``train_metric`` (sample-weighted means over the epoch's batches,
            the metric None when the trainer has none), ``val_loss`` and ``val_metric`` (None
            without validation data), ``lr`` (of param group 0, as used by the epoch's last
            step), ``grad_norm`` (mean of the steps' total gradient 2-norms, before clipping;
            non-finite steps left out, NaN when there was none), ``time`` (seconds, training
            and validation) and ``samples_per_s`` (training samples over training seconds).
        steps: one dict per optimizer step with the keys of ``STEP_KEYS``: ``step`` (1-based,
            counted over the whole run), ``epoch``, ``loss`` (the batch loss), ``lr`` and
            ``grad_norm`` (the total 2-norm of the gradients before clipping).
        stopped_early: True when a callback (EarlyStopping) ended the run before ``epochs``.
        diverged: True when :class:`NonFiniteGuard` stopped the run on a NaN/inf.
        monitor, mode: the quantity ``best_epoch`` is chosen by (``"val_loss"``, ``"min"`` by
            default, ``"train_loss"`` when there is no validation; EarlyStopping sets its own,
            else a ModelCheckpoint with ``save_best_only`` its own).

    Example::

        >>> h = trainer.fit(train_loader, val=val_loader, epochs=3)
        >>> [round(e["val_metric"], 3) for e in h.epochs]
        [0.912, 0.951, 0.962]
        >>> h.best_epoch, History.from_dict(h.to_dict()).epochs == h.epochs
        (3, True)
    """

    def __init__(self):
        self.epochs: list[dict] = []
        self.steps: list[dict] = []
        self.stopped_early = False
        self.diverged = False
        self.monitor: str | None = None
        self.mode = "min"

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        return (f"History(epochs={len(self.epochs)}, steps={len(self.steps)}, "
                f"best_epoch={self.best_epoch}, stopped_early={self.stopped_early}, "
                f"diverged={self.diverged})")

    def _monitor(self) -> str:
        if self.monitor is not None:
            return self.monitor
        has_val = any(e.get("val_loss") is not None for e in self.epochs)
        return "val_loss" if has_val else "train_loss"

    @property
    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the best ``monitor`` value (the first of equals); None
        before any epoch or when no epoch has a finite value."""
        key = self._monitor()
        best, best_epoch = None, None
        for e in self.epochs:
            v = e.get(key)
            if v is None or not math.isfinite(v):
                continue
            if best is None or (v < best if self.mode == "min" else v > best):
                best, best_epoch = v, e["epoch"]
        return best_epoch

    def column(self, key: str, steps: bool = False) -> list:
        """The values of one key over the epochs (or over the steps), e.g.
        ``h.column("val_metric")``."""
        rows = self.steps if steps else self.epochs
        keys = STEP_KEYS if steps else EPOCH_KEYS
        if key not in keys and not any(key in r for r in rows):
            raise KeyError(f"key: {key!r} is not a history column; one of {', '.join(keys)}")
        return [r.get(key) for r in rows]

    def to_dict(self) -> dict:
        """A JSON-able dict (plain lists, floats, ints, None; NaN/inf stay floats, which
        Python's json writes as NaN/Infinity)."""
        return {"epochs": [dict(e) for e in self.epochs], "steps": [dict(s) for s in self.steps],
                "stopped_early": self.stopped_early, "diverged": self.diverged,
                "monitor": self.monitor, "mode": self.mode, "best_epoch": self.best_epoch}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        """Rebuild a History from :meth:`to_dict`'s output."""
        if not isinstance(d, dict) or "epochs" not in d or "steps" not in d:
            raise ValueError("d: expected a dict from History.to_dict() with 'epochs' and "
                             "'steps'")
        h = cls()
        h.epochs = [dict(e) for e in d["epochs"]]
        h.steps = [dict(s) for s in d["steps"]]
        h.stopped_early = bool(d.get("stopped_early", False))
        h.diverged = bool(d.get("diverged", False))
        h.monitor = d.get("monitor")
        h.mode = d.get("mode", "min")
        return h
