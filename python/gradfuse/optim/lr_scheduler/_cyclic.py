"""Cycling schedules: CyclicLR and OneCycleLR, which cycle the momentum (or Adam's beta1) against
the lr."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping

from ._base import (
    LRScheduler,
    _check_epoch,
    _check_int,
    _check_optimizer,
    _check_real,
    _format_param,
    _is_int,
)


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
