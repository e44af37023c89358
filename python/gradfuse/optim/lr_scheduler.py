"""Learning-rate schedulers (``gf.optim.lr_scheduler``), with PyTorch's semantics.

A scheduler adjusts ``group["lr"]`` (and, for :class:`OneCycleLR`, ``group["momentum"]`` or
``group["betas"][0]``) in each of an optimizer's ``param_groups``. It needs nothing else from
the optimizer, so it works with any object whose ``param_groups`` is a list of dicts holding
``"lr"``: gradfuse's optimizers, or a plain stand-in.

Everything here is pure Python on Python floats: one step costs a few microseconds per
parameter group, negligible beside an optimizer step, so there is nothing to compile.

Each scheduler reproduces PyTorch 2.13's sequence exactly, not just approximately: where
PyTorch updates the lr recursively (``lr_t = lr_{t-1} * ratio``, the "chainable" form that lets
schedulers compose), so do we, with the same floating-point operations in the same order, so
that ``get_last_lr()`` equals ``torch.optim.lr_scheduler``'s bit for bit (tested over 300 steps).
Attribute names follow PyTorch too, so a ``state_dict()`` saved by either loads into the other.

Usage, as in PyTorch: build the optimizer, then the scheduler (which performs the initial step,
setting the epoch-0 learning rate), and call ``scheduler.step()`` once per epoch (or per batch
for :class:`OneCycleLR`) *after* ``optimizer.step()``::

    opt = gf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = gf.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
    for epoch in range(90):
        train_one_epoch(model, opt)
        sched.step()
"""

from __future__ import annotations

import math
import numbers
import types
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being deprecated where "
    "possible (as in PyTorch). Please use `scheduler.step()` to step the scheduler. If epoch is "
    "given, the closed form is used instead of the chainable form, where available."
)


# ---------------------------------------------------------------------------------------------
# argument checks: each raises before anything is changed, naming the argument
# ---------------------------------------------------------------------------------------------


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_real(name, value, *, low=None, low_inclusive=True, high=None, high_inclusive=True):
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value!r}")
    return value


def _check_int(name, value, *, low):
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_optimizer(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(
            f"optimizer: {type(optimizer).__name__} is not an Optimizer "
            "(expected an object whose param_groups is a list of dicts)"
        )
    for i, group in enumerate(groups):
        if "lr" not in group:
            raise ValueError(f"optimizer: param_groups[{i}] has no 'lr'")
    return optimizer


def _check_epoch(epoch):
    if epoch is not None and (not _is_real(epoch) or not math.isfinite(epoch)):
        raise ValueError(f"epoch must be a finite number or None, got {epoch!r}")


def _format_param(name, optimizer, param):
    """One value per param group: a scalar is repeated, a list/tuple must match in length."""
    if isinstance(param, (list, tuple)):
        if len(param) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(param)} values, param_groups has "
                f"{len(optimizer.param_groups)}."
            )
        values = list(param)
    else:
        values = [param] * len(optimizer.param_groups)
    for v in values:
        _check_real(name, v)
    return values


def _momentum_uses_beta1(optimizer) -> bool:
    """Whether a cycled momentum is Adam's beta1 (True) or SGD's momentum (False); an optimizer
    with neither is refused (CyclicLR and OneCycleLR with ``cycle_momentum``)."""
    defaults = getattr(optimizer, "defaults", None)
    if not isinstance(defaults, Mapping):
        defaults = optimizer.param_groups[0] if optimizer.param_groups else {}
    if "momentum" not in defaults and "betas" not in defaults:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option "
            "enabled"
        )
    return "betas" in defaults


def _set_momentum(group, momentum, use_beta1: bool) -> None:
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


def _init_momentum(optimizer, max_momentums, base_momentums, use_beta1: bool) -> None:
    """A cycle starts at the max momentum; both bounds are recorded in each group."""
    for m_mom, b_mom, group in zip(max_momentums, base_momentums, optimizer.param_groups):
        _set_momentum(group, m_mom, use_beta1)
        group["max_momentum"] = m_mom
        group["base_momentum"] = b_mom


def _lrs(optimizer, key="lr"):
    return [group[key] for group in optimizer.param_groups]


def _lambdas(optimizer, lr_lambda):
    if isinstance(lr_lambda, (list, tuple)):
        if len(lr_lambda) != len(optimizer.param_groups):
            raise ValueError(
                f"lr_lambda: expected {len(optimizer.param_groups)} lr_lambdas, "
                f"but got {len(lr_lambda)}"
            )
        fns = list(lr_lambda)
    else:
        fns = [lr_lambda] * len(optimizer.param_groups)
    for fn in fns:
        if not callable(fn):
            raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
    return fns


# ---------------------------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------------------------


class LRScheduler:
    """Base class of the epoch-driven schedulers.

    Construction records each group's starting lr as ``group["initial_lr"]`` (``base_lrs``;
    kept if already there, as when resuming) and performs the initial step, which sets the
    epoch-0 learning rate (``last_epoch`` becomes 0). Each :meth:`step` advances ``last_epoch``
    by one and writes :meth:`get_lr`'s values into the groups.

    Subclasses implement :meth:`get_lr` (the recursive, chainable form: it may read the current
    ``group["lr"]``) and optionally ``_get_closed_form_lr`` (from ``base_lrs`` and
    ``last_epoch`` only), which ``step(epoch)`` uses.

    Args:
        optimizer: object with ``param_groups``, a list of dicts holding ``"lr"``.
        last_epoch (int): index of the last epoch; -1 (default) starts fresh. A value >= 0
            resumes and needs ``"initial_lr"`` in every group (else ``KeyError``, as PyTorch).

    Example::

        >>> class Sched(LRScheduler):          # halve the lr every epoch
        ...     def get_lr(self):
        ...         return [b * 0.5 ** self.last_epoch for b in self.base_lrs]
        >>> opt = gf.optim.SGD(model.parameters(), lr=1.0)
        >>> s = Sched(opt); s.step(); s.get_last_lr()
        [0.5]
    """

    _get_lr_called_within_step = False
    _is_initial = False
    _unsaved = ("optimizer",)  # attributes that state_dict leaves out

    def __init__(self, optimizer, last_epoch=-1):
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, low=-1)
        if last_epoch != -1:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when "
                        "resuming scheduler with last_epoch >= 0 (load the optimizer's state "
                        "first, or use last_epoch=-1 for a fresh run)"
                    )
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.base_lrs = _lrs(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self):
        """Reset the step count and perform the step that sets the starting lr."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self):
        """The scheduler's state as a dict: every attribute except the optimizer.

        The keys and values are PyTorch's, so ``torch_sched.load_state_dict(sd)`` and
        ``gf_sched.load_state_dict(torch_sd)`` both work for the same scheduler class.

        Example::

            >>> sd = sched.state_dict(); sd["last_epoch"]
            10
        """
        return {k: v for k, v in self.__dict__.items() if k not in self._unsaved}

    def load_state_dict(self, state_dict):
        """Restore the state saved by :meth:`state_dict`.

        The keys must be exactly this scheduler's (a state from another scheduler class, or one
        with a different number of parameter groups, raises ``ValueError`` and changes nothing).

        Example::

            >>> sched2 = StepLR(opt, step_size=30)
            >>> sched2.load_state_dict(sched.state_dict())
        """
        self._check_state_dict(state_dict)
        self.__dict__.update(state_dict)

    def _check_state_dict(self, state_dict, skip=()):
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        mine = {k for k in self.__dict__ if k not in self._unsaved}
        theirs = set(state_dict)
        if mine != theirs:
            missing, unexpected = sorted(mine - theirs), sorted(theirs - mine)
            raise ValueError(
                f"state_dict does not match {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected} (was it saved from another scheduler?)"
            )
        n = len(self.optimizer.param_groups)
        for key in ("base_lrs", "_last_lr", "min_lrs", "lr_lambdas", "_schedulers"):
            if key in state_dict and key not in skip and len(state_dict[key]) != len(
                self.__dict__[key]
            ):
                raise ValueError(
                    f"state_dict[{key!r}] has {len(state_dict[key])} entries, expected "
                    f"{len(self.__dict__[key])} (optimizer has {n} param groups)"
                )
        if "last_epoch" in state_dict and not _is_real(state_dict["last_epoch"]):
            raise ValueError(
                f"state_dict['last_epoch'] must be a number, got {state_dict['last_epoch']!r}"
            )

    def get_last_lr(self):
        """The learning rates the last step set, one per param group (a new list).

        Example::

            >>> sched.get_last_lr()
            [0.1, 0.01]
        """
        return list(self._last_lr)

    def get_lr(self):
        """The learning rates of the step being taken (called by :meth:`step`).

        To read the current learning rate use :meth:`get_last_lr`: called from outside
        :meth:`step` the recursive form would compute the *next* value (PyTorch warns too).
        """
        raise NotImplementedError

    def _warn_get_lr_outside_step(self):
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use "
                "`get_last_lr()`.",
                UserWarning,
                stacklevel=3,
            )

    def step(self, epoch=None):
        """Advance one epoch and set the new learning rates in the optimizer.

        Args:
            epoch (number, optional): deprecated, as in PyTorch: jump to this epoch, using the
                closed form where the scheduler has one (warns ``UserWarning``).

        Example::

            >>> opt.step(); sched.step()
        """
        _check_epoch(epoch)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch=None):
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed = getattr(self, "_get_closed_form_lr", None)
                values = closed() if closed is not None else self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)


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


class CyclicLR(LRScheduler):
    r"""Cyclical learning rate (https://arxiv.org/abs/1506.01186), stepped once per *batch*:
    the lr goes from ``base_lr`` up to ``max_lr`` in ``step_size_up`` steps and back down in
    ``step_size_down`` steps, the amplitude scaled per cycle or per iteration:

    * 'triangular': constant amplitude;
    * 'triangular2': amplitude halved each cycle;
    * 'exp_range': amplitude times ``gamma ** iteration``;
    * or a custom ``scale_fn(x)`` with ``scale_mode`` 'cycle' or 'iterations'.

    Momentum (or beta1) cycles the other way between ``max_momentum`` and ``base_momentum``.

    Args:
        optimizer: the optimizer.
        base_lr, max_lr (float or list): the bounds, one per group if a list.
        step_size_up (number): steps in the rising half, > 0, default 2000.
        step_size_down (number): steps in the falling half, >= 0; default ``step_size_up``.
        mode (str): 'triangular' (default), 'triangular2' or 'exp_range'.
        gamma (float): for 'exp_range', default 1.
        scale_fn (callable): overrides ``mode``.
        scale_mode (str): 'cycle' (default) or 'iterations', for ``scale_fn``.
        cycle_momentum (bool): default True.
        base_momentum, max_momentum (float or list): default 0.8 and 0.9.
        last_epoch (int): index of the last *batch*, default -1.

    Example::

        >>> opt = gf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> sched = CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=500,
        ...                  mode="triangular2")
        >>> for batch in loader:
        ...     train_step(batch); opt.step(); sched.step()
    """

    _unsaved = ("optimizer", "_scale_fn_ref")

    def __init__(self, optimizer, base_lr, max_lr, step_size_up=2000, step_size_down=None,
                 mode="triangular", gamma=1.0, scale_fn=None, scale_mode="cycle",
                 cycle_momentum=True, base_momentum=0.8, max_momentum=0.9, last_epoch=-1):
        _check_optimizer(optimizer)
        # every check first: the groups are written below
        base_lrs = _format_param("base_lr", optimizer, base_lr)
        max_lrs = _format_param("max_lr", optimizer, max_lr)
        _check_real("step_size_up", step_size_up, low=0, low_inclusive=False)
        if step_size_down is not None:
            _check_real("step_size_down", step_size_down, low=0)
        if scale_fn is None and mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(
                f"mode {mode!r} is invalid and scale_fn is None (expected 'triangular', "
                "'triangular2' or 'exp_range')"
            )
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable, got {type(scale_fn).__name__}")
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        _check_real("gamma", gamma)
        _check_int("last_epoch", last_epoch, low=-1)
        if cycle_momentum:
            use_beta1 = _momentum_uses_beta1(optimizer)
            base_momentums = _format_param("base_momentum", optimizer, base_momentum)
            max_momentums = _format_param("max_momentum", optimizer, max_momentum)

        self.optimizer = optimizer
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups):
                group["lr"] = lr
        self.max_lrs = max_lrs
        step_size_up = float(step_size_up)
        step_size_down = float(step_size_down) if step_size_down is not None else step_size_up
        self.total_size = step_size_up + step_size_down
        self.step_ratio = step_size_up / self.total_size
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = use_beta1
            self.base_momentums = base_momentums
            self.max_momentums = max_momentums
            if last_epoch == -1:
                _init_momentum(optimizer, max_momentums, base_momentums, use_beta1)
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self):
        if self._scale_fn_custom is not None:
            return
        if self.mode == "triangular":
            self._scale_fn_ref = self._triangular_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "triangular2":
            self._scale_fn_ref = self._triangular2_scale_fn
            self.scale_mode = "cycle"
        else:
            self._scale_fn_ref = self._exp_range_scale_fn
            self.scale_mode = "iterations"

    def scale_fn(self, x):
        """The amplitude scale at cycle (or iteration) ``x``.

        Example::

            >>> CyclicLR(opt, 0.01, 0.1, mode="triangular2").scale_fn(3)
            0.25
        """
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    @staticmethod
    def _triangular_scale_fn(x):
        return 1.0

    @staticmethod
    def _triangular2_scale_fn(x):
        return 1 / 2.0 ** (x - 1)

    def _exp_range_scale_fn(self, x):
        return self.gamma**x

    def get_lr(self):
        self._warn_get_lr_outside_step()
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle  # position in the cycle, [0, 1)
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else self.last_epoch)
        lrs = [b + (m - b) * scale_factor * scale for b, m in zip(self.base_lrs, self.max_lrs)]
        if self.cycle_momentum:
            for b, m, group in zip(self.base_momentums, self.max_momentums,
                                   self.optimizer.param_groups):
                _set_momentum(group, m - (m - b) * scale_factor * scale, self.use_beta1)
        return lrs

    def state_dict(self):
        """See :meth:`LRScheduler.state_dict`; a custom ``scale_fn`` is saved as its
        ``__dict__`` if it is a callable object, not at all if it is a function (as PyTorch)."""
        sd = super().state_dict()
        fn = sd.pop("_scale_fn_custom")
        sd["_scale_fn_custom"] = (
            fn.__dict__.copy() if fn is not None and not isinstance(fn, types.FunctionType)
            else None
        )
        return sd

    def load_state_dict(self, state_dict):
        """See :meth:`LRScheduler.load_state_dict`."""
        self._check_state_dict(state_dict)
        fn = state_dict["_scale_fn_custom"]
        if fn is not None and not isinstance(fn, Mapping):
            raise ValueError("state_dict['_scale_fn_custom'] must be None or a dict")
        custom = self._scale_fn_custom
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "_scale_fn_custom"})
        if fn is not None and custom is not None:
            custom.__dict__.update(fn)
        self._init_scale_fn()


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (https://arxiv.org/abs/1708.07120), stepped once per *batch*.

    The lr rises from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start * total_steps`` steps, then anneals to ``max_lr / div_factor /
    final_div_factor`` by step ``total_steps - 1``; momentum (``group["momentum"]``, or
    ``group["betas"][0]`` for Adam-style optimizers) moves the opposite way between
    ``max_momentum`` and ``base_momentum``. With ``three_phase=True`` the lr comes back down
    symmetrically to the start, and a third phase anneals it to the minimum.
    Each phase interpolates with ``anneal_strategy``: 'cos' ``end + (start - end)/2 *
    (1 + cos(pi * pct))`` or 'linear'.

    Args:
        optimizer: the optimizer.
        max_lr (float or list): peak lr, one per group if a list.
        total_steps (int): number of steps; or give ``epochs`` and ``steps_per_epoch``.
        epochs (int), steps_per_epoch (int): total_steps = epochs * steps_per_epoch.
        pct_start (float): fraction of the cycle spent rising, in [0, 1], default 0.3.
        anneal_strategy (str): 'cos' (default) or 'linear'.
        cycle_momentum (bool): default True; the optimizer must have 'momentum' or 'betas'
            (looked up in ``optimizer.defaults`` if it has one, else in its first group).
        base_momentum, max_momentum (float or list): default 0.85 and 0.95.
        div_factor (float): initial_lr = max_lr / div_factor, default 25.
        final_div_factor (float): min_lr = initial_lr / final_div_factor, default 1e4.
        three_phase (bool): default False.
        last_epoch (int): index of the last *batch*, default -1.

    Stepping past ``total_steps`` raises ``ValueError`` (as PyTorch), but here before anything
    changes (PyTorch has already advanced ``last_epoch`` when it raises).

    Example::

        >>> opt = gf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> sched = OneCycleLR(opt, max_lr=0.1, epochs=10, steps_per_epoch=len(loader))
        >>> for epoch in range(10):
        ...     for batch in loader:
        ...         train_step(batch); opt.step(); sched.step()
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False,
                 last_epoch=-1):
        _check_optimizer(optimizer)
        # every check first: the groups are written below
        if total_steps is not None:
            if not _is_int(total_steps) or total_steps <= 0:
                raise ValueError(
                    f"total_steps: Expected positive integer total_steps, but got {total_steps!r}"
                )
            n_steps = int(total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            if not _is_int(epochs) or epochs <= 0:
                raise ValueError(f"epochs: Expected positive integer epochs, but got {epochs!r}")
            if not _is_int(steps_per_epoch) or steps_per_epoch <= 0:
                raise ValueError(
                    "steps_per_epoch: Expected positive integer steps_per_epoch, but got "
                    f"{steps_per_epoch!r}"
                )
            n_steps = int(epochs) * int(steps_per_epoch)
        else:
            raise ValueError(
                "You must define either total_steps OR (epochs AND steps_per_epoch)"
            )
        if not isinstance(pct_start, float) or not (0 <= pct_start <= 1):
            raise ValueError(
                f"pct_start: Expected float between 0 and 1 pct_start, but got {pct_start!r}"
            )
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                "anneal_strategy must be one of 'cos' or 'linear', instead got "
                f"{anneal_strategy!r}"
            )
        _check_real("div_factor", div_factor, low=0, low_inclusive=False)
        _check_real("final_div_factor", final_div_factor, low=0, low_inclusive=False)
        max_lrs = _format_param("max_lr", optimizer, max_lr)
        for v in max_lrs:
            _check_real("max_lr", v, low=0)
        _check_int("last_epoch", last_epoch, low=-1)
        if cycle_momentum:
            use_beta1 = _momentum_uses_beta1(optimizer)
            max_momentums = _format_param("max_momentum", optimizer, max_momentum)
            base_momentums = _format_param("base_momentum", optimizer, base_momentum)

        self.optimizer = optimizer
        self.total_steps = n_steps
        # phase boundaries are float step indices, as in PyTorch (a non-integer boundary
        # makes pct fractional at the transition step)
        first = float(pct_start * n_steps) - 1
        if three_phase:
            self._schedule_phases = [
                {"end_step": first, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * n_steps) - 2, "start_lr": "max_lr",
                 "end_lr": "initial_lr", "start_momentum": "base_momentum",
                 "end_momentum": "max_momentum"},
                {"end_step": n_steps - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self._schedule_phases = [
                {"end_step": first, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": n_steps - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]
        self._anneal_func_type = anneal_strategy
        if last_epoch == -1:
            for lr, group in zip(max_lrs, optimizer.param_groups):
                group["initial_lr"] = lr / div_factor
                group["max_lr"] = lr
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = use_beta1
            if last_epoch == -1:
                _init_momentum(optimizer, max_momentums, base_momentums, use_beta1)
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _annealing_cos(start, end, pct):
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out

    @staticmethod
    def _annealing_linear(start, end, pct):
        return (end - start) * pct + start

    def _anneal_func(self, start, end, pct):
        if self._anneal_func_type == "cos":
            return self._annealing_cos(start, end, pct)
        return self._annealing_linear(start, end, pct)

    def step(self, epoch=None):
        """Advance one batch (refused past ``total_steps``, before any state changes).

        Example::

            >>> opt.step(); sched.step()
        """
        _check_epoch(epoch)
        target = self.last_epoch + 1 if epoch is None else epoch
        if target > self.total_steps:
            raise ValueError(
                f"Tried to step {target} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        super().step(epoch)

    def get_lr(self):
        self._warn_get_lr_outside_step()
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(
                f"Tried to step {step_num} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        lrs = []
        last = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step_num <= end_step or i == last:
                    pct = (step_num - start_step) / (end_step - start_step)
                    lr = self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        mom = self._anneal_func(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                        )
                    break
                start_step = phase["end_step"]
            lrs.append(lr)
            if self.cycle_momentum:
                _set_momentum(group, mom, self.use_beta1)
        return lrs


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


# ---------------------------------------------------------------------------------------------
# composition
# ---------------------------------------------------------------------------------------------


def _check_children(owner, optimizer, schedulers):
    if not isinstance(schedulers, (list, tuple)) or len(schedulers) < 1:
        raise ValueError(f"schedulers: {owner} expects at least one scheduler, but got none")
    for i, s in enumerate(schedulers):
        if not hasattr(s, "optimizer"):
            raise TypeError(
                f"schedulers: {owner} at index {i} should have `optimizer` as its attribute"
            )
        if isinstance(s, ReduceLROnPlateau):
            raise ValueError(
                f"schedulers: {owner} does not support `ReduceLROnPlateau` (its step needs a "
                f"metric), but got one at index {i}"
            )
        if s.optimizer is not optimizer:
            raise ValueError(
                f"schedulers: {owner} expects all schedulers to belong to the same optimizer, "
                f"but scheduler {type(s).__name__} at index {i} has another one"
            )


class _CompositeStateMixin:
    def state_dict(self):
        sd = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        sd["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return sd

    def load_state_dict(self, state_dict):
        self._check_state_dict(state_dict)
        children = state_dict["_schedulers"]
        # check every child before loading any, so a bad state changes nothing
        for own, saved in zip(self._schedulers, children):
            own._check_state_dict(saved)
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "_schedulers"})
        for own, saved in zip(self._schedulers, children):
            own.load_state_dict(saved)


class SequentialLR(_CompositeStateMixin, LRScheduler):
    """Run ``schedulers`` one after another, switching at the ``milestones`` epochs; each
    scheduler starts from its own epoch 0 (closed form) at its milestone.

    Args:
        optimizer: the optimizer all the schedulers drive.
        schedulers (list): schedulers built on ``optimizer`` (not ReduceLROnPlateau).
        milestones (list of int): ``len(schedulers) - 1`` switching epochs.
        last_epoch (int): default -1.

    Example::

        >>> # 5 epochs of linear warm-up from 0.1 * lr, then cosine decay over 95 epochs
        >>> warm = LinearLR(opt, start_factor=0.1, total_iters=5)
        >>> decay = CosineAnnealingLR(opt, T_max=95)
        >>> sched = SequentialLR(opt, schedulers=[warm, decay], milestones=[5])
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        _check_optimizer(optimizer)
        _check_children(type(self).__name__, optimizer, schedulers)
        try:
            milestones = list(milestones)
        except TypeError:
            raise TypeError("milestones must be a list of integers") from None
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "milestones: Sequential Schedulers expects number of schedulers provided to be "
                f"one more than the number of milestone points, but got number of schedulers "
                f"{len(schedulers)} and the number of milestones to be equal to "
                f"{len(milestones)}"
            )
        for m in milestones:
            _check_int("milestones", m, low=0)
        _check_int("last_epoch", last_epoch, low=-1)
        for i, group in enumerate(optimizer.param_groups):
            if "initial_lr" not in group:
                raise ValueError(f"optimizer: param_groups[{i}] has no 'initial_lr'")
        self._schedulers = list(schedulers)
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        # the children each took an initial step when built: undo them, and take the initial
        # step only for the scheduler that owns epoch 0
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    def recursive_undo(self, sched=None):
        """Step back the ``last_epoch`` of every (nested) child scheduler by one."""
        s = self if sched is None else sched
        if hasattr(s, "_schedulers"):
            for child in s._schedulers:
                self.recursive_undo(child)
        elif hasattr(s, "last_epoch"):
            s.last_epoch -= 1

    def step(self):
        """Advance one epoch: the scheduler owning it steps, or restarts at its milestone.

        Example::

            >>> opt.step(); sched.step()
        """
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_CompositeStateMixin, LRScheduler):
    """Step several schedulers together each epoch, so their (chainable) factors multiply.

    Args:
        schedulers (list): schedulers built on the same optimizer (not ReduceLROnPlateau).
        optimizer: optional; defaults to the first scheduler's.

    Example::

        >>> # constant 0.1x for 2 epochs and exponential decay, at the same time
        >>> s1 = ConstantLR(opt, factor=0.1, total_iters=2)
        >>> s2 = ExponentialLR(opt, gamma=0.9)
        >>> sched = ChainedScheduler([s1, s2])
    """

    def __init__(self, schedulers, optimizer=None):
        if not isinstance(schedulers, (list, tuple)) or len(schedulers) < 1:
            raise ValueError(
                "schedulers: ChainedScheduler expects at least one scheduler to be chained, "
                "but got none"
            )
        if optimizer is None:
            optimizer = getattr(schedulers[0], "optimizer", None)
        _check_optimizer(optimizer)
        _check_children(type(self).__name__, optimizer, schedulers)
        self._schedulers = list(schedulers)
        self.optimizer = optimizer
        self._last_lr = _lrs(self._schedulers[-1].optimizer)

    def step(self):
        """Step every chained scheduler once.

        Example::

            >>> opt.step(); sched.step()
        """
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _lrs(self._schedulers[-1].optimizer)
