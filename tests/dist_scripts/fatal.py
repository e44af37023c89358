"""Run under ``mpiexec -n 2 python fatal.py raise|kill|thread|cli``: rank 1 fails in the middle
of training (an uncaught exception, SIGKILL, an uncaught exception in another thread that
the main thread then waits for, or gradfuse's command line exiting with status 2) while rank 0 waits in the next all-reduce. The
job must end by itself (the test bounds the time) with a clear error on stderr."""

import os
import signal
import sys
import threading
import time

from dp_common import ADAM, make_data, make_model, rank_slice, train_step

import gradfuse as gf
import gradfuse.distributed as dist

mode = sys.argv[1]
dist.init()
rank = dist.get_rank()
model = make_model()
opt = gf.optim.Adam(model.parameters(), **ADAM)
dp = dist.DataParallel(model, opt)
X, Y = make_data()
rows = rank_slice(rank, dist.get_world_size())
for s in range(20):
    if s == 3 and rank == 1:
        # not flushed: the abort hook flushes stdout before MPI_Abort (kill mode: no hook)
        print(f"rank 1 fails at step {s}", flush=mode == "kill")
        if mode == "raise":
            raise RuntimeError("rank 1 fails on purpose")
        if mode == "thread":
            def work():
                raise RuntimeError("rank 1 fails on purpose")

            t = threading.Thread(target=work, name="loader")
            t.start()
            t.join()  # without the thread hook rank 1 would go on training
        if mode == "cli":
            from gradfuse.__main__ import main

            main(["train", "--no-such-option"])  # argparse: SystemExit(2), no exception hook
        os.kill(os.getpid(), signal.SIGKILL)
    train_step(dp, opt, X[s][rows], Y[s][rows])
    if s == 3:
        time.sleep(0.2)  # rank 0 reached step 4's all-reduce alone; it must not wait forever
print(f"rank {rank} finished", flush=True)
