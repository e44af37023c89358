"""Schedules set by the step count alone: lambda and multiplicative factors, step, multi-step,
constant, linear (warm-up), exponential, polynomial and cosine annealing (with warm restarts)."""

from __future__ import annotations

import math
import types
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping

from ._base import (
    LRScheduler,
    _check_epoch,
    _check_int,
    _check_optimizer,
    _check_real,
    _is_int,
    _is_real,
    _lambdas,
    _lrs,
)

# ---------------------------------------------------------------------------------------------
# multiplicative-factor schedules
# ---------------------------------------------------------------------------------------------


class _LambdaStateMixin:
    """state_dict for schedulers holding user functions: plain functions and lambdas are not
    saved (``None``); callable objects save their ``__dict__``, as in PyTorch."""

    def state_dict(self):
        sd = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        sd["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
            for fn in self.lr_lambdas
        ]
        return sd

    def load_state_dict(self, state_dict):
        self._check_state_dict(state_dict)
        fns = state_dict["lr_lambdas"]
        for fn in fns:
            if fn is not None and not isinstance(fn, Mapping):
                raise ValueError("state_dict['lr_lambdas'] entries must be None or dicts")
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "lr_lambdas"})
        for own, saved in zip(self.lr_lambdas, fns):
            if saved is not None:
                own.__dict__.update(saved)


class LambdaLR(_LambdaStateMixin, LRScheduler):
    """lr = initial_lr * lr_lambda(epoch).

    Args:
        optimizer: the optimizer (``param_groups`` with ``"lr"``).
        lr_lambda (callable or list): ``epoch -> factor``, or one per param group.
        last_epoch (int): default -1.

    Example::

        >>> # linear warm-up over 10 epochs, then constant
        >>> sched = LambdaLR(opt, lr_lambda=lambda e: min(1.0, (e + 1) / 10))
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _check_optimizer(optimizer)
        self.lr_lambdas = _lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        return [b * fn(self.last_epoch) for fn, b in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaStateMixin, LRScheduler):
    """lr_t = lr_{t-1} * lr_lambda(t) (the initial step leaves the lr as it is).

    Args:
        optimizer: the optimizer.
        lr_lambda (callable or list): ``epoch -> factor``, or one per param group.
        last_epoch (int): default -1.

    Example::

        >>> sched = MultiplicativeLR(opt, lr_lambda=lambda e: 0.95)   # lr * 0.95 each epoch
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _check_optimizer(optimizer)
        self.lr_lambdas = _lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        if self._is_initial:
            return _lrs(self.optimizer)
        return [
            g["lr"] * fn(self.last_epoch)
            for fn, g in zip(self.lr_lambdas, self.optimizer.param_groups)
        ]


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs:
    lr = initial_lr * gamma ** (epoch // step_size).

    Args:
        optimizer: the optimizer.
        step_size (int): period of the decay, >= 1.
        gamma (float): multiplicative factor, default 0.1.
        last_epoch (int): default -1.

    Example::

        >>> # with lr=0.05: 0.05 for epochs 0-29, 0.005 for 30-59, 0.0005 for 60-89, ...
        >>> sched = StepLR(opt, step_size=30, gamma=0.1)
    """

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = _check_int("step_size", step_size, low=1)
        self.gamma = _check_real("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _lrs(self.optimizer)
        return [g["lr"] * self.gamma for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [b * self.gamma ** (self.last_epoch // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone epoch (a milestone listed twice
    multiplies by ``gamma ** 2``).

    Args:
        optimizer: the optimizer.
        milestones (iterable of int): epochs at which to decay (need not be sorted).
        gamma (float): multiplicative factor, default 0.1.
        last_epoch (int): default -1.

    Example::

        >>> # with lr=0.05: 0.05 before epoch 30, 0.005 until epoch 80, then 0.0005
        >>> sched = MultiStepLR(opt, milestones=[30, 80], gamma=0.1)
    """

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        try:
            ms = list(milestones)
        except TypeError:
            raise TypeError(
                f"milestones must be an iterable of integers, got {type(milestones).__name__}"
            ) from None
        for m in ms:
            _check_int("milestones", m, low=0)
        self.milestones = Counter(int(m) for m in ms)
        self.gamma = _check_real("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        if self.last_epoch not in self.milestones:
            return _lrs(self.optimizer)
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [g["lr"] * factor for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        ms = sorted(self.milestones.elements())
        return [b * self.gamma ** bisect_right(ms, self.last_epoch) for b in self.base_lrs]


class ConstantLR(LRScheduler):
    """lr = initial_lr * factor for the first ``total_iters`` epochs, then initial_lr.

    Args:
        optimizer: the optimizer.
        factor (float): in (0, 1], default 1/3. (PyTorch accepts 0 and then divides by zero
            at epoch ``total_iters``; here 0 is refused up front.)
        total_iters (int): number of epochs at the reduced lr, >= 1, default 5.
        last_epoch (int): default -1.

    Example::

        >>> # with lr=0.05: 0.025 for epochs 0-3, then 0.05
        >>> sched = ConstantLR(opt, factor=0.5, total_iters=4)
    """

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5, last_epoch=-1):
        self.factor = _check_real("factor", factor, low=0.0, low_inclusive=False, high=1.0)
        self.total_iters = _check_int("total_iters", total_iters, low=1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        if self.last_epoch == 0:
            return [g["lr"] * self.factor for g in self.optimizer.param_groups]
        if self.last_epoch != self.total_iters:
            return _lrs(self.optimizer)
        return [g["lr"] * (1.0 / self.factor) for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [
            b * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
            for b in self.base_lrs
        ]


class LinearLR(LRScheduler):
    """Scale the lr linearly from ``start_factor`` to ``end_factor`` over ``total_iters``
    epochs: lr = initial_lr * (start + (end - start) * min(epoch, total_iters) / total_iters).

    Args:
        optimizer: the optimizer.
        start_factor (float): in (0, 1], default 1/3.
        end_factor (float): in [0, 1], default 1.
        total_iters (int): length of the ramp, >= 1, default 5.
        last_epoch (int): default -1.

    Example::

        >>> # warm-up with lr=0.05: 0.0125, 0.025, 0.0375 in epochs 0-2, then 0.05
        >>> sched = LinearLR(opt, start_factor=0.25, total_iters=3)
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        if not _is_real(start_factor) or not (0 < start_factor <= 1.0):
            raise ValueError(
                "start_factor: Starting multiplicative factor expected to be greater than 0 "
                f"and less or equal to 1, got {start_factor!r}"
            )
        if not _is_real(end_factor) or not (0 <= end_factor <= 1.0):
            raise ValueError(
                "end_factor: Ending multiplicative factor expected to be between 0 and 1, "
                f"got {end_factor!r}"
            )
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = _check_int("total_iters", total_iters, low=1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        if self.last_epoch == 0:
            return [g["lr"] * self.start_factor for g in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return _lrs(self.optimizer)
        # ratio of consecutive points of the linear ramp, so composed schedules chain
        d = self.end_factor - self.start_factor
        ratio = 1.0 + d / (self.total_iters * self.start_factor + (self.last_epoch - 1) * d)
        return [g["lr"] * ratio for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [
            b * (self.start_factor + (self.end_factor - self.start_factor)
                 * min(self.total_iters, self.last_epoch) / self.total_iters)
            for b in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    """lr = initial_lr * gamma ** epoch.

    Args:
        optimizer: the optimizer.
        gamma (float): multiplicative factor per epoch.
        last_epoch (int): default -1.

    Example::

        >>> sched = ExponentialLR(opt, gamma=0.95)
    """

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = _check_real("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        if self._is_initial:
            return _lrs(self.optimizer)
        return [g["lr"] * self.gamma for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [b * self.gamma ** self.last_epoch for b in self.base_lrs]


class PolynomialLR(LRScheduler):
    """lr = initial_lr * (1 - min(epoch, total_iters) / total_iters) ** power.

    Args:
        optimizer: the optimizer.
        total_iters (int): epochs until the lr reaches 0, >= 1, default 5.
        power (float): exponent of the polynomial, default 1.
        last_epoch (int): default -1.

    Example::

        >>> # lr decays to 0 at epoch 50 along (1 - t/50) ** 0.9
        >>> sched = PolynomialLR(opt, total_iters=50, power=0.9)
    """

    def __init__(self, optimizer, total_iters=5, power=1.0, last_epoch=-1):
        self.total_iters = _check_int("total_iters", total_iters, low=1)
        self.power = _check_real("power", power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        if self._is_initial or self.last_epoch > self.total_iters:
            return _lrs(self.optimizer)
        t, n = self.last_epoch, self.total_iters
        factor = ((1.0 - t / n) / (1.0 - (t - 1) / n)) ** self.power
        return [g["lr"] * factor for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        n = self.total_iters
        return [b * (1.0 - min(n, self.last_epoch) / n) ** self.power for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from initial_lr down to ``eta_min`` over ``T_max`` epochs:

        lr_t = eta_min + (initial_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    computed recursively, as PyTorch does (so that it chains with other schedulers):
    lr_t = eta_min + (lr_{t-1} - eta_min) * (1 + cos(pi t/T)) / (1 + cos(pi (t-1)/T)),
    except at the bottom of each cosine, t = T_max + 1 (mod 2 T_max), where that ratio would be
    0/0 and the lr instead climbs by (initial_lr - eta_min) * (1 - cos(pi/T)) / 2. Past T_max
    the lr therefore rises again (a cosine of period 2 T_max), exactly as in PyTorch; use
    :class:`CosineAnnealingWarmRestarts` for restarts at the top.

    Args:
        optimizer: the optimizer.
        T_max (number): half-period in epochs, > 0.
        eta_min (float): minimum lr, default 0.
        last_epoch (int): default -1.

    Example::

        >>> sched = CosineAnnealingLR(opt, T_max=100, eta_min=1e-5)
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = _check_real("T_max", T_max, low=0, low_inclusive=False)
        self.eta_min = _check_real("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        t, T, m = self.last_epoch, self.T_max, self.eta_min
        groups = self.optimizer.param_groups
        if self._is_initial:
            return _lrs(self.optimizer)
        if self._step_count == 1 and t > 0:
            return [m + (b - m) * (1 + math.cos(t * math.pi / T)) / 2 for b in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [
                g["lr"] + (b - m) * (1 - math.cos(math.pi / T)) / 2
                for b, g in zip(self.base_lrs, groups)
            ]
        return [
            (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
            * (g["lr"] - m) + m
            for g in groups
        ]

    def _get_closed_form_lr(self):
        t, T, m = self.last_epoch, self.T_max, self.eta_min
        return [m + (b - m) * (1 + math.cos(math.pi * t / T)) / 2 for b in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR, https://arxiv.org/abs/1608.03983):

        lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2

    where T_cur counts epochs since the last restart and the i-th cycle lasts
    T_i = T_0 * T_mult ** i epochs.

    ``step(epoch)`` accepts a fractional epoch (e.g. ``epoch + batch / n_batches``, to anneal
    per batch); it does not warn, as in PyTorch.

    Args:
        optimizer: the optimizer.
        T_0 (int): length of the first cycle, >= 1.
        T_mult (int): growth factor of the cycle length, >= 1, default 1.
        eta_min (float): minimum lr, default 0.
        last_epoch (int): default -1.

    Example::

        >>> sched = CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2)  # restarts at 10, 30, 70
        >>> for epoch in range(70):
        ...     for i, batch in enumerate(loader):
        ...         train_step(batch)
        ...         sched.step(epoch + i / len(loader))
    """

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0, last_epoch=-1):
        if not _is_int(T_0) or T_0 <= 0:
            raise ValueError(f"T_0: Expected positive integer T_0, but got {T_0!r}")
        if not _is_int(T_mult) or T_mult < 1:
            raise ValueError(f"T_mult: Expected integer T_mult >= 1, but got {T_mult!r}")
        if not _is_real(eta_min) or not math.isfinite(eta_min):
            raise ValueError(f"eta_min: Expected float or int eta_min, but got {eta_min!r}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        m = self.eta_min
        c = 1 + math.cos(math.pi * self.T_cur / self.T_i)
        return [m + (b - m) * c / 2 for b in self.base_lrs]

    def step(self, epoch=None):
        """Advance one epoch, or jump to ``epoch`` (may be fractional, >= 0).

        Example::

            >>> sched.step()          # next epoch
            >>> sched.step(12.5)      # halfway through epoch 12
        """
        _check_epoch(epoch)
        if epoch is not None and epoch < 0:
            raise ValueError(f"epoch: Expected non-negative epoch, but got {epoch!r}")
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        elif epoch >= self.T_0:
            if self.T_mult == 1:
                self.T_cur = epoch % self.T_0
            else:
                # cycle n starts at T_0 (T_mult^n - 1) / (T_mult - 1): invert for n
                n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                self.T_i = self.T_0 * self.T_mult**n
        else:
            self.T_i = self.T_0
            self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)
