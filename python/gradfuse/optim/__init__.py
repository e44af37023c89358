"""Optimizers over a flat parameter arena (DESIGN.md, decision 3), and lr schedulers.

Every optimizer moves its parameters into one contiguous buffer per param group and dtype and
updates them with one fused compiled call per group and dtype; see
:mod:`gradfuse.optim.optimizer` for the arena semantics (``.data``/``.grad`` views,
``zero_grad``, non-finite guard, folded gradient clipping, ``state_dict`` portability).
:mod:`gradfuse.optim.lr_scheduler` holds PyTorch's learning-rate schedulers; they change
``group["lr"]``, which every step reads afresh.

Example::

    >>> opt = gf.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    >>> sched = gf.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
"""

from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .lamb import LAMB
from .lion import Lion
from .nadam import NAdam
from .optimizer import Optimizer
from .radam import RAdam
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Lion", "LAMB",
    "lr_scheduler",
]
