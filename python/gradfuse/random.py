"""Seeding for parameter initialization.

For now a numpy PCG64 stream; the counter-based Philox generator (same bits on any thread
count and on CUDA) replaces it behind the same ``manual_seed`` / ``Generator`` API.
"""

from __future__ import annotations

import numpy as np

__all__ = ["manual_seed", "default_generator"]

default_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reset the default generator so initialization is reproducible.

    Example::

        >>> gf.manual_seed(0); a = gf.nn.Linear(2, 2).weight.data.copy()
        >>> gf.manual_seed(0); bool((gf.nn.Linear(2, 2).weight.data == a).all())
        True
    """
    global default_generator
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    default_generator = np.random.default_rng(int(seed))


def _generator() -> np.random.Generator:
    return default_generator
