"""``gradfuse`` on every rank of an mpiexec job: ``mpiexec -n 2 python cli_main.py train
--distributed ...`` is ``mpiexec -n 2 gradfuse train --distributed ...``."""

import sys

from gradfuse.__main__ import main

sys.exit(main(sys.argv[1:]))
