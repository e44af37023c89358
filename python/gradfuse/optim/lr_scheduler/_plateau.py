"""ReduceLROnPlateau: the lr follows a metric (driven by ``step(metric)``), not the step count."""

from __future__ import annotations

import math
import warnings

from ._base import (
    EPOCH_DEPRECATION_WARNING,
    LRScheduler,
    _check_epoch,
    _check_int,
    _check_optimizer,
    _check_real,
    _is_real,
    _lrs,
)

# ---------------------------------------------------------------------------------------------
# metric-driven
# ---------------------------------------------------------------------------------------------


class ReduceLROnPlateau(LRScheduler):
    """Multiply the lr by ``factor`` when a metric has stopped improving.

    ``step(metric)`` counts the epochs since the best value ("bad epochs"); after more than
    ``patience`` of them, every group's lr becomes ``max(lr * factor, min_lr)`` (a change smaller
    than ``eps`` is skipped), and the count waits ``cooldown`` epochs before starting again.
    A metric improves on the best when (mode 'min') it is below ``best * (1 - threshold)``
    ('rel') or ``best - threshold`` ('abs'); in mode 'max', above ``best * (1 + threshold)`` or
    ``best + threshold``. A NaN metric never improves.

    Args:
        optimizer: the optimizer.
        mode (str): 'min' (default) or 'max'.
        factor (float): in [0, 1), default 0.1.
        patience (int): bad epochs tolerated, >= 0, default 10.
        threshold (float): >= 0, default 1e-4.
        threshold_mode (str): 'rel' (default) or 'abs'.
        cooldown (int): epochs to wait after a reduction, >= 0, default 0.
        min_lr (float or list): lower bound, one per group if a list, default 0.
        eps (float): minimal change applied, >= 0, default 1e-8.

    Example::

        >>> sched = ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=3)
        >>> for epoch in range(100):
        ...     train_one_epoch(model, opt)
        ...     sched.step(validation_loss(model))
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        if not _is_real(factor) or not (0 <= factor < 1.0):
            raise ValueError(f"factor should be in [0, 1), got {factor!r}")
        _check_optimizer(optimizer)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(
                    f"min_lr: expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}"
                )
            for v in min_lr:
                _check_real("min_lr", v, low=0)
        else:
            _check_real("min_lr", min_lr, low=0)
        patience = _check_int("patience", patience, low=0)
        cooldown = _check_int("cooldown", cooldown, low=0)
        _check_real("threshold", threshold, low=0)
        _check_real("eps", eps, low=0)
        self._check_modes(mode, threshold_mode)
        self.factor = factor
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _lrs(optimizer)
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _reset(self):
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @staticmethod
    def _check_modes(mode, threshold_mode):
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is unknown! (expected 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"threshold_mode {threshold_mode!r} is unknown! (expected 'rel' or 'abs')"
            )

    def _init_is_better(self, mode, threshold, threshold_mode):
        self._check_modes(mode, threshold_mode)
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def _is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics, epoch=None):
        """Record one epoch's metric and reduce the lr if it has plateaued.

        Args:
            metrics: a number (or anything ``float()`` accepts, e.g. a one-element Tensor).
            epoch (int, optional): deprecated, as in PyTorch (warns).

        Example::

            >>> sched.step(val_loss)
        """
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(
                f"metrics must be a number (or convertible by float()), got "
                f"{type(metrics).__name__}"
            ) from None
        _check_epoch(epoch)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _lrs(self.optimizer)

    def _reduce_lr(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the optimizer ({len(groups)}) differs "
                    f"from when ReduceLROnPlateau was initialized ({len(self.min_lrs)}), "
                    "usually because a param group was added; set `min_lrs` to match."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def load_state_dict(self, state_dict):
        """Restore a state saved by :meth:`state_dict` (PyTorch's keys); see
        :meth:`LRScheduler.load_state_dict`."""
        self._check_state_dict(state_dict)
        self._check_modes(state_dict["mode"], state_dict["threshold_mode"])
        self.__dict__.update(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
