"""Shared by the scripts run under mpiexec and by tests/test_distributed_train.py: the data,
the model and the trainer of the equivalence runs, so both sides build exactly the same."""

import numpy as np

import gradfuse as gf
from gradfuse.train import ModelCheckpoint, Trainer

N_TRAIN, N_VAL, FEATURES, CLASSES = 96, 30, 12, 4
PER_RANK_BATCH, EPOCHS, SEED = 8, 3, 5


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_TRAIN + N_VAL, FEATURES)).astype(np.float32)
    w = rng.standard_normal((FEATURES, CLASSES))
    y = (x @ w).argmax(axis=1).astype(np.int64)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def model(sync_bn: bool):
    gf.manual_seed(SEED)
    # no bias before the norm: its true gradient is 0, and Adam would turn the rounding noise
    # of that 0 into full-size steps that differ between the runs compared
    net = gf.nn.Sequential(gf.nn.Linear(FEATURES, 16, bias=False), gf.nn.BatchNorm1d(16),
                           gf.nn.ReLU(),
                           gf.nn.Linear(16, CLASSES))
    if sync_bn:
        net = gf.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net


def trainer(batch_size: int, sync_bn: bool, ckpt_dir=None, every_steps=None, **kw):
    """(trainer, train loader, val loader). ``batch_size``: per rank under mpiexec."""
    (xt, yt), (xv, yv) = data()
    net = model(sync_bn)
    opt = gf.optim.Adam(net.parameters(), lr=1e-2)
    sched = gf.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    cbs = []
    if ckpt_dir is not None:
        cbs.append(ModelCheckpoint(f"{ckpt_dir}/epoch{{epoch}}.safetensors",
                                   save_best_only=False))
        if every_steps:
            cbs.append(ModelCheckpoint(f"{ckpt_dir}/step{{step}}.safetensors",
                                       save_best_only=False, every_steps=every_steps))
    tr = Trainer(net, opt, gf.nn.CrossEntropyLoss(), scheduler=sched, callbacks=cbs,
                 verbose=0, **kw)
    train = gf.data.DataLoader(gf.data.TensorDataset(xt, yt), batch_size=batch_size,
                               shuffle=True, generator=SEED)
    val = gf.data.DataLoader(gf.data.TensorDataset(xv, yv), batch_size=7)
    return tr, train, val


def params(net) -> dict:
    return {k: np.array(v.data) for k, v in net.state_dict().items()}
