"""Layers, losses and the Module system (``gf.nn``)."""

from . import functional, init
from .container import Sequential
from .dropout import Dropout
from .linear import Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module
from .parameter import Parameter

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    "Linear",
    "MSELoss",
    "CrossEntropyLoss",
    "Dropout",
    "functional",
    "init",
]
