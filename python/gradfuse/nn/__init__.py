"""Layers, losses and the Module system (``gf.nn``)."""

from . import functional, init, utils
from .activation import (
    ELU,
    GELU,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from .container import Sequential
from .dropout import Dropout
from .linear import Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module
from .normalization import BatchNorm1d, GroupNorm, LayerNorm, RMSNorm
from .parameter import Parameter
from .syncbn import SyncBatchNorm

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
    "SyncBatchNorm",
    "Dropout",
    "functional",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "ELU",
    "GELU",
    "SiLU",
    "Softplus",
    "Softmax",
    "LogSoftmax",
    "init",
    "utils",
]
