"""Run under ``mpiexec -n 2``: rank 1 is SIGKILLed inside step 7 of a data-parallel Trainer run
that checkpoints every 2 steps. The launcher must end the job (rank 0 blocks in the step's
all-reduce until it is killed); OUT_DIR/step6.safetensors must stay loadable. Arg: OUT_DIR."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))

import _common as C  # noqa: E402

import gradfuse.distributed as dist  # noqa: E402
from gradfuse.train import Callback, ModelCheckpoint  # noqa: E402

out_dir = sys.argv[1]
dist.init()


class Die(Callback):
    def on_after_backward(self, trainer, logs):
        if logs["step"] == 7 and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)


tr, train, val = C.trainer(C.PER_RANK_BATCH, sync_bn=True, distributed=True)
tr.callbacks += [ModelCheckpoint(os.path.join(out_dir, "step{step}.safetensors"),
                                 save_best_only=False, every_steps=2), Die()]
print(f"rank {dist.get_rank()} training", flush=True)
tr.fit(train, val=val, epochs=C.EPOCHS)
print("finished", flush=True)  # never reached
