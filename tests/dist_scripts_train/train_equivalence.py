"""Run under ``mpiexec -n 2``: SyncBatchNorm against BatchNorm on the concatenated batch, a
data-parallel Trainer run (plain and ZeRO-1) and the resume of a single-process checkpoint.
Args: OUT_DIR SINGLE_CHECKPOINT. Rank 0 prints one JSON line {"checks": {...}} and writes
OUT_DIR/params_<run>.npz; the runs' checkpoints go to OUT_DIR/<run>/."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

import _common as C  # noqa: E402

import gradfuse as gf  # noqa: E402
import gradfuse.distributed as dist  # noqa: E402
import reference as ref  # noqa: E402

out_dir, single_ckpt = sys.argv[1], sys.argv[2]
dist.init()
rank, world = dist.get_rank(), dist.get_world_size()
checks = {}


def same_everywhere(obj) -> bool:
    mine = repr(obj) if not isinstance(obj, bytes) else obj
    return all(o == mine for o in dist.all_gather_object(mine))


def params_bytes(p: dict) -> bytes:
    return b"".join(p[k].tobytes() for k in sorted(p))


# ------------------------------------------------------------------ SyncBatchNorm
for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-4)):
    c, sizes = 5, (7, 4)[:world] if world == 2 else (3,) * world
    rng = np.random.default_rng(42)
    xs = [(rng.standard_normal((n, c, 3)) * 2 + 50).astype(dtype) for n in sizes]
    dys = [rng.standard_normal((n, c, 3)).astype(dtype) for n in sizes]
    m = gf.nn.SyncBatchNorm(c, momentum=0.3, dtype=dtype)
    m.weight.data[...] = np.linspace(0.5, 2, c)
    m.bias.data[...] = np.linspace(-1, 1, c)
    x = gf.tensor(xs[rank], requires_grad=True)
    y = m(x)
    (y * gf.tensor(dys[rank])).sum().backward()
    want, rm, rv, (dx, dw, db) = ref.batch_norm(
        np.concatenate(xs), m.weight.data, m.bias.data, np.zeros(c), np.ones(c), True, 0.3,
        1e-5, np.concatenate(dys))
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])
    name = np.dtype(dtype).name
    checks[f"syncbn_forward_{name}"] = bool(np.allclose(y.detach().numpy(), want[rows],
                                                         rtol=tol, atol=tol))
    checks[f"syncbn_dx_{name}"] = bool(np.allclose(x.grad.numpy(), dx[rows], rtol=tol, atol=tol))
    gw = m.weight.grad.numpy().copy()
    gb = m.bias.grad.numpy().copy()
    dist.all_reduce_(gw)
    dist.all_reduce_(gb)
    checks[f"syncbn_dweight_sum_{name}"] = bool(np.allclose(gw, dw, rtol=tol, atol=tol))
    checks[f"syncbn_dbias_sum_{name}"] = bool(np.allclose(gb, db, rtol=tol, atol=tol))
    checks[f"syncbn_running_{name}"] = bool(
        np.allclose(m.running_mean.numpy(), rm, rtol=tol, atol=tol)
        and np.allclose(m.running_var.numpy(), rv, rtol=tol, atol=tol))
    checks[f"syncbn_stats_bitwise_{name}"] = same_everywhere(
        m.running_mean.numpy().tobytes() + m.running_var.numpy().tobytes())

# ------------------------------------------------------------------ Trainer runs
for run, opts in (("dist", True), ("zero", {"shard_optimizer_state": True})):
    tr, train, val = C.trainer(C.PER_RANK_BATCH, sync_bn=True,
                               ckpt_dir=os.path.join(out_dir, run), every_steps=8,
                               distributed=opts)
    checks[f"{run}_is_distributed"] = tr.distributed and tr.is_main == (rank == 0)
    h = tr.fit(train, val=val, epochs=C.EPOCHS)
    p = C.params(tr.model)
    checks[f"{run}_params_bitwise_across_ranks"] = same_everywhere(params_bytes(p))
    checks[f"{run}_history_identical"] = same_everywhere(h.to_dict())
    checks[f"{run}_steps"] = tr.global_step == C.EPOCHS * C.N_TRAIN // (C.PER_RANK_BATCH * world)
    if rank == 0:
        np.savez(os.path.join(out_dir, f"params_{run}.npz"), **p)
        with open(os.path.join(out_dir, f"history_{run}.json"), "w") as f:
            json.dump(h.to_dict(), f)

# evaluation: split over the ranks without padding, the same numbers as one process; a
# callable metric sees the rows in the data set's order (this one depends on the order)
(xv, yv) = C.data()[1]


def first_rows(out, y):
    return float(out[:3].sum() + 10 * y[:3].sum())


for metric in ("accuracy", first_rows):
    tr.metric = metric
    local = gf.train.Trainer(tr.model, tr.optimizer, gf.nn.CrossEntropyLoss(), metric=metric,
                             verbose=0, distributed=False)
    for n in (1, 7, C.N_VAL):
        loader = gf.data.DataLoader(gf.data.TensorDataset(xv[:n], yv[:n]), batch_size=4)
        a, b = tr.evaluate(loader), local.evaluate(loader)
        key = f"evaluate_{getattr(metric, '__name__', metric)}_{n}"
        checks[key] = abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["metric"] - b["metric"]) < 1e-5
tr.metric = "accuracy"

# a single-process checkpoint (taken mid-epoch) resumed on all ranks
tr, train, val = C.trainer(C.PER_RANK_BATCH, sync_bn=True, distributed=True)
tr.fit(train, val=val, epochs=C.EPOCHS, resume_from=single_ckpt)
p = C.params(tr.model)
checks["resumed_params_bitwise_across_ranks"] = same_everywhere(params_bytes(p))
if rank == 0:
    np.savez(os.path.join(out_dir, "params_resumed.npz"), **p)
    with open(os.path.join(out_dir, "history_resumed.json"), "w") as f:
        json.dump(tr.history.to_dict(), f)

# the same decisions on every rank: a NaN input on rank 1 only makes the step's loss NaN on
# every rank (NonFiniteGuard skips it everywhere), and EarlyStopping stops everywhere
class Poison(gf.train.Callback):
    def on_batch_start(self, trainer, step):
        if step == 3 and rank == 1:
            trainer.batch[0].data[0, 0] = np.nan


(xt, yt), _ = C.data()
gf.manual_seed(1)
net = gf.nn.Sequential(gf.nn.Linear(C.FEATURES, 16), gf.nn.ReLU(), gf.nn.Linear(16, C.CLASSES))
opt = gf.optim.Adam(net.parameters(), lr=1e-2)
guard = gf.train.NonFiniteGuard(action="skip")
stop = gf.train.EarlyStopping(monitor="train_metric", patience=1, min_delta=10.0)
tr = gf.train.Trainer(net, opt, gf.nn.CrossEntropyLoss(), callbacks=[Poison(), guard, stop],
                      verbose=0)
h = tr.fit(gf.data.DataLoader(gf.data.TensorDataset(xt, yt), batch_size=8, shuffle=True,
                              generator=1), epochs=5)
checks["guard_skipped_step3_everywhere"] = same_everywhere(
    [(e["step"], e["what"]) for e in guard.events]) and [e["step"] for e in guard.events] == [3]
checks["early_stop_everywhere"] = same_everywhere((len(h.epochs), h.stopped_early)) and \
    len(h.epochs) == 2 and h.stopped_early
checks["after_skip_params_bitwise"] = same_everywhere(params_bytes(C.params(net)))
checks["after_skip_finite"] = all(np.isfinite(v).all() for v in C.params(net).values())

# the same with SyncBatchNorm, whose forward is collective: the guard's search for the layer
# re-runs the forward, and used to do so on rank 0 only (rank 1 saw the NaN in its own input
# and answered "input"): a hang
net = C.model(sync_bn=True)
opt = gf.optim.Adam(net.parameters(), lr=1e-2)
guard = gf.train.NonFiniteGuard(action="skip")
tr = gf.train.Trainer(net, opt, gf.nn.CrossEntropyLoss(), callbacks=[Poison(), guard],
                      verbose=0)
tr.fit(gf.data.DataLoader(gf.data.TensorDataset(xt, yt), batch_size=8, shuffle=True,
                          generator=1), epochs=1)
checks["syncbn_guard_same_layer_everywhere"] = same_everywhere(
    [(e["step"], e["what"], e["layer"]) for e in guard.events]) and \
    [(e["step"], e["layer"]) for e in guard.events] == [(3, "input")]
checks["syncbn_guard_params_bitwise"] = same_everywhere(params_bytes(C.params(net)))


# a callback that decides from something of its own rank (here the rank itself, in practice
# a wall-clock budget): its stop or skip holds on every rank, instead of one rank leaving the
# loop (the others then wait in the next step's all-reduce) or stepping alone
class OneRankDecides(gf.train.Callback):
    def on_after_backward(self, trainer, logs):
        if logs["step"] == 2 and rank == 0:
            trainer.skip_step = True

    def on_batch_end(self, trainer, logs):
        if logs["step"] == 5 and rank == world - 1:
            trainer.stop_training = True


class StopAtEpochEnd(gf.train.Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 1 and rank == world - 1:
            trainer.stop_training = True


for cb, want_steps in ((OneRankDecides(), 5), (StopAtEpochEnd(), C.N_TRAIN // (8 * world))):
    gf.manual_seed(2)
    net = gf.nn.Sequential(gf.nn.Linear(C.FEATURES, 8), gf.nn.ReLU(),
                           gf.nn.Linear(8, C.CLASSES))
    tr = gf.train.Trainer(net, gf.optim.Adam(net.parameters(), lr=1e-2),
                          gf.nn.CrossEntropyLoss(), callbacks=[cb], verbose=0)
    h = tr.fit(gf.data.DataLoader(gf.data.TensorDataset(xt, yt), batch_size=8, shuffle=True,
                                  generator=1), epochs=3)
    name = type(cb).__name__
    checks[f"{name}_stops_everywhere"] = same_everywhere((tr.global_step, len(h.epochs))) and \
        tr.global_step == want_steps and len(h.epochs) == 1 and h.stopped_early
    checks[f"{name}_params_bitwise"] = same_everywhere(params_bytes(C.params(net)))

# per-rank BatchNorm: DataParallel broadcasts rank 0's running statistics before each training
# forward only; at the epoch's end every rank used to keep its own last batch's, so the
# validation mixed the replicas and the final models differed from the checkpointed rank 0's
# (and EarlyStopping(restore_best) puts back the same best replica on every rank)
tr, train, val = C.trainer(C.PER_RANK_BATCH, sync_bn=False, distributed=True)
stop = gf.train.EarlyStopping(patience=5, restore_best=True)
tr.callbacks.append(stop)
h = tr.fit(train, val=val, epochs=C.EPOCHS)
checks["per_rank_bn_buffers_bitwise"] = same_everywhere(params_bytes(C.params(tr.model)))
alone = gf.train.Trainer(tr.model, tr.optimizer, gf.nn.CrossEntropyLoss(), verbose=0,
                         distributed=False).evaluate(val)
checks["per_rank_bn_val_is_the_models"] = abs(stop.best - alone["loss"]) < 1e-6 and \
    stop.best == min(e["val_loss"] for e in h.epochs)

# loaders seeded differently on the ranks (generator=None draws from gf.default_generator,
# seeded here with the rank, as scripts do for dropout): every epoch is still one permutation
# split over the ranks (each epoch starts from rank 0's generator state), not overlapping
# shards of different permutations
class Seen(gf.train.Callback):
    def __init__(self):
        self.seen = []

    def on_batch_start(self, trainer, step):
        self.seen.append((trainer.epoch + 1, trainer.batch[1].numpy().tolist()))


gf.manual_seed(100 + rank)
net = gf.nn.Sequential(gf.nn.Linear(C.FEATURES, 8), gf.nn.ReLU(), gf.nn.Linear(8, C.CLASSES))
seen = Seen()
tr = gf.train.Trainer(net, gf.optim.SGD(net.parameters(), lr=0.1),
                      lambda out, y: (out * out).mean(), metric=None, callbacks=[seen], verbose=0)
ids = np.arange(C.N_TRAIN)  # the targets: which samples each rank got
tr.fit(gf.data.DataLoader(gf.data.TensorDataset(xt, ids), batch_size=8, shuffle=True), epochs=2)
every = dist.all_gather_object(seen.seen)
checks["unseeded_loaders_one_permutation_per_epoch"] = all(
    sorted(i for s in every for e, b in s if e == ep for i in b) == list(range(C.N_TRAIN))
    for ep in (1, 2))

# a DistributedSampler built before init() (defaults: rank 0 of 1) would give every rank the
# whole data set: refused on every rank, naming the sampler
ds = gf.data.TensorDataset(xt, yt)
bad = gf.data.DataLoader(ds, batch_size=8, sampler=gf.data.DistributedSampler(ds, 1, 0))
try:
    tr.fit(bad, epochs=3)
    checks["early_sampler_refused"] = False
except ValueError as e:
    checks["early_sampler_refused"] = "rank 0's DistributedSampler was built for rank 0 of 1" \
        in str(e)

# a DataParallel of the user's given as the model: used as it is
net = C.model(sync_bn=True)
opt = gf.optim.SGD(net.parameters(), lr=0.1)
dp = dist.DataParallel(net, opt)
tr = gf.train.Trainer(dp, opt, gf.nn.CrossEntropyLoss(), verbose=0)
checks["given_dataparallel_used"] = tr.dp is dp and tr.model is net and tr.distributed
tr.fit([(gf.tensor(xt[rank::2][:16]), gf.tensor(yt[rank::2][:16]))], epochs=2)
checks["given_dataparallel_params_bitwise"] = same_everywhere(params_bytes(C.params(net)))

# a missing checkpoint: the same error on every rank, nobody hangs
try:
    tr.load_checkpoint(os.path.join(out_dir, "missing.safetensors"))
    checks["missing_checkpoint_raises"] = False
except ValueError:
    checks["missing_checkpoint_raises"] = True
checks["missing_checkpoint_raises"] = all(dist.all_gather_object(
    checks["missing_checkpoint_raises"]))

# Trainers built one after another (a study loop): each builds a DataParallel whose reducer
# holds shared-memory windows and communicators. Without close() they are reclaimed at the
# next construction once garbage (MPICH has 2048 communicators: about 680 trainers ran out
# before); close() frees them at once, and a second Trainer on the same optimizer needs it.
from gradfuse.distributed import parallel as _par  # noqa: E402

for _ in range(800):
    net = gf.nn.Sequential(gf.nn.Linear(4, 3))
    tr = gf.train.Trainer(net, gf.optim.SGD(net.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
                          verbose=0)
    tr.fit([(gf.tensor(xt[rank::2][:4, :4]), gf.tensor(yt[rank::2][:4] % 3))], epochs=1)
checks["unclosed_trainers_reclaimed"] = len(_par._LIVE) <= _par._GC_AFTER + 1
net = gf.nn.Sequential(gf.nn.Linear(4, 3))
opt = gf.optim.SGD(net.parameters(), lr=0.1)
tr = gf.train.Trainer(net, opt, gf.nn.CrossEntropyLoss(), verbose=0)
try:
    gf.train.Trainer(net, opt, gf.nn.CrossEntropyLoss(), verbose=0)
    checks["second_trainer_same_optimizer_refused"] = False
except ValueError as e:
    checks["second_trainer_same_optimizer_refused"] = "close()" in str(e)
live = len(_par._LIVE)
tr.close()
tr.close()
checks["close_frees_the_reducer"] = len(_par._LIVE) == live - 1 and opt._grad_sync is None
try:
    tr.fit([(gf.tensor(xt[:4, :4]), gf.tensor(yt[:4] % 3))], epochs=2)
    checks["fit_after_close_refused"] = False
except RuntimeError:
    checks["fit_after_close_refused"] = True
tr2 = gf.train.Trainer(net, opt, gf.nn.CrossEntropyLoss(), verbose=0)
tr2.fit([(gf.tensor(xt[rank::2][:4, :4]), gf.tensor(yt[rank::2][:4] % 3))], epochs=1)
checks["second_trainer_after_close"] = same_everywhere(params_bytes(C.params(net)))
tr2.close()

allc = dist.all_gather_object(checks)
if rank == 0:
    merged = {k: all(c[k] for c in allc) for k in checks}
    print(json.dumps({"checks": merged, "world": world}), flush=True)
