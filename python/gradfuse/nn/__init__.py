"""Layers, losses and the Module system (``gf.nn``)."""

from . import functional
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
]
