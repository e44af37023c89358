"""``gradfuse`` on every rank of an mpiexec job: ``mpiexec -n 2 python cli_main.py train
--distributed ...`` is ``mpiexec -n 2 gradfuse train --distributed ...``.

With ``GF_TEST_LOAD_FAILS_ON_RANK=R`` in the environment, loading the data set fails on rank R
only (as a file present on one machine but not on another would)."""

import os
import sys

from gradfuse.__main__ import main

_fail = os.environ.get("GF_TEST_LOAD_FAILS_ON_RANK")
if _fail is not None:
    from gradfuse.study import datasets

    _load = datasets.load_dataset

    def _load_here(*a, **k):
        import gradfuse as gf

        if gf.distributed.get_rank() == int(_fail):
            raise OSError(f"data.idx: no such file on rank {_fail}'s machine")
        return _load(*a, **k)

    datasets.load_dataset = _load_here

sys.exit(main(sys.argv[1:]))
