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


def pytest_collection_modifyitems(config, items):
    # tests marked `cuda` need a GPU and a CUDA build of gradfuse: skipped elsewhere, with why
    import gradfuse as gf

    if gf.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"cuda: {gf.cuda.unavailable_reason()}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def torch_or_skip():
    return pytest.importorskip("torch")
