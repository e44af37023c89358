"""The LRScheduler base class and the argument checks every scheduler shares."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping

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
