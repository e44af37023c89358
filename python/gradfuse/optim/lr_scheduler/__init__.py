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

The schedulers live beside this module by kind: ``_base`` (LRScheduler and the checks they
share), ``_fixed`` (set by the step count), ``_cyclic``, ``_plateau`` and ``_composite``.
"""

from ._base import LRScheduler
from ._composite import ChainedScheduler, SequentialLR
from ._cyclic import CyclicLR, OneCycleLR
from ._fixed import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from ._plateau import ReduceLROnPlateau

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
