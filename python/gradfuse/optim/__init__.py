"""Optimizers and learning-rate schedulers (``gf.optim``)."""

from . import lr_scheduler

__all__ = ["lr_scheduler"]
