import os
import sys

# Before gradfuse loads: run a kernel on two threads from 32K units of work instead of the
# default 1M, so the thread-count tests exercise every kernel's multi-thread path on small
# inputs (the grain is a speed setting; results are the same bits either way).
os.environ.setdefault("GRADFUSE_PARALLEL_GRAIN", str(1 << 15))

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def torch_or_skip():
    return pytest.importorskip("torch")
