"""Hyperparameter checks with PyTorch's messages (``Invalid learning rate: -1.0``), plus a
finiteness check PyTorch does not make: a NaN or infinite hyperparameter is a ValueError."""

from __future__ import annotations

import math


def number(name: str, value, label: str | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"Invalid {label or name} value: {value} (must be finite)")
    return v


def lr(value) -> None:
    v = number("lr", value, "learning rate")
    if v < 0.0:
        raise ValueError(f"Invalid learning rate: {value}")


def nonneg(name: str, value, label: str | None = None) -> None:
    v = number(name, value, label)
    if v < 0.0:
        raise ValueError(f"Invalid {label or name} value: {value}")


def betas(value) -> None:
    try:
        b0, b1 = value
    except (TypeError, ValueError):
        raise TypeError(f"betas: expected a pair of floats, got {value!r}") from None
    for i, b in enumerate((b0, b1)):
        v = number(f"betas[{i}]", b, f"beta parameter at index {i}")
        if not 0.0 <= v < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")


def flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}")


def adam_family(group, *flags: str) -> None:
    """The checks every Adam-like group shares (lr, eps, betas, weight_decay), then its flags,
    in PyTorch's order, so the first bad value is the one reported."""
    lr(group["lr"])
    nonneg("eps", group["eps"], "epsilon")
    betas(group["betas"])
    nonneg("weight_decay", group["weight_decay"])
    for name in flags:
        flag(name, group.get(name, False))
