"""Schedulers made of schedulers: SequentialLR (one after another at milestones) and
ChainedScheduler (all at once)."""

from __future__ import annotations

from bisect import bisect_right

from ._base import LRScheduler, _check_int, _check_optimizer, _lrs
from ._plateau import ReduceLROnPlateau

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
