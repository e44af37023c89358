"""Layers, losses and the Module system (``gf.nn``)."""

from . import functional, utils
from .container import Sequential
from .linear import Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module
from .normalization import BatchNorm1d, GroupNorm, LayerNorm, RMSNorm
from .parameter import Parameter

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    "Linear",
    "MSELoss",
    "CrossEntropyLoss",
    "BatchNorm1d",
    "LayerNorm",
    "RMSNorm",
    "GroupNorm",
    "functional",
    "utils",
]
