"""Argument checks shared across layers (each raises before anything is changed, naming the
argument). It imports nothing of gradfuse, so any layer may use it."""

from __future__ import annotations

import numbers

__all__ = ["check_int"]


def check_int(name: str, value, low: int) -> int:
    """``int(value)`` for an integer (numpy's too, not a bool) that is at least ``low``; else a
    TypeError or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return int(value)
