"""Run under mpiexec (any number of ranks; the test uses 3): checks gf.distributed's
communication API and MPIReducer against numpy references, and DataParallel (with and without
ZeRO-1) on that world against one process. Rank 0 prints one JSON line per rank:
{"rank": r, "world": w, "checks": {name: bool}}."""

import json
import os
import sys

import numpy as np

import gradfuse as gf
import gradfuse.distributed as dist

before = (dist.is_initialized(), dist.get_rank(), dist.get_world_size(), dist.is_main(),
          dist.get_comm() is None)
launched = dist.launched()
from mpi4py import MPI  # noqa: E402

try:  # a rank outside a sub-communicator (COMM_NULL): a clear error, nothing initialized
    dist.init(comm=MPI.COMM_NULL)
    null_refused = False
except ValueError as e:
    null_refused = "COMM_NULL" in str(e) and not dist.is_initialized()
dist.init()
dist.init()  # idempotent
dist.init(comm=MPI.COMM_WORLD)  # the same communicator: nothing to do
rank, world = dist.get_rank(), dist.get_world_size()
checks = {}
checks["before_init_is_single"] = before == (False, 0, 1, True, True)
checks["launched"] = launched
checks["init_comm_null_refused"] = null_refused
checks["initialized"] = dist.is_initialized() and dist.get_comm() is not None
checks["rank_range"] = 0 <= rank < world and dist.is_main() == (rank == 0)
checks["local"] = dist.get_local_world_size() == world and dist.get_local_rank() == rank
cores = len(os.sched_getaffinity(0))
if not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("GRADFUSE_NUM_THREADS")):
    checks["threads_limited"] = gf.get_num_threads() == max(1, cores // world)
checks["abort_hook_installed"] = sys.excepthook.__name__ == "hook"
try:  # another communicator after init: refused, not silently ignored
    dist.init(comm=MPI.COMM_SELF)
    checks["reinit_other_comm_refused"] = False
except ValueError as e:
    checks["reinit_other_comm_refused"] = "comm" in str(e) and dist.get_comm() is MPI.COMM_WORLD


def data(r, shape, dtype):
    # integer-valued floats: sums are exact in any order, so references are exact
    return np.random.default_rng(100 + r).integers(-50, 50, size=shape).astype(dtype)


def gathered_equal(arr):
    """Whether every rank holds bitwise the same array."""
    mine = arr.tobytes()
    return all(b == mine for b in dist.all_gather_object(mine))


for dtype in (np.float32, np.float64):
    shape = (7, 5)
    ref = sum(data(r, shape, dtype) for r in range(world))
    x = data(rank, shape, dtype)
    out = dist.all_reduce_(x)
    checks[f"sum_{np.dtype(dtype).name}"] = out is x and np.array_equal(x, ref)
    t = gf.Tensor(data(rank, shape, dtype))
    dist.all_reduce_(t, op="avg")
    checks[f"avg_tensor_{np.dtype(dtype).name}"] = np.allclose(t.data, ref / world) and \
        gathered_equal(t.data)
    x = data(rank, shape, dtype)
    dist.all_reduce_(x, op="max")
    checks[f"max_{np.dtype(dtype).name}"] = np.array_equal(
        x, np.max([data(r, shape, dtype) for r in range(world)], axis=0))
    x = data(rank, shape, dtype)
    dist.all_reduce_(x, op="min")
    checks[f"min_{np.dtype(dtype).name}"] = np.array_equal(
        x, np.min([data(r, shape, dtype) for r in range(world)], axis=0))
xi = np.array([rank + 1], dtype=np.int64)
dist.all_reduce_(xi)
checks["sum_int"] = int(xi[0]) == world * (world + 1) // 2
# non-integer floats: every rank ends bitwise equal
xf = np.random.default_rng(rank).standard_normal(1001).astype(np.float32)
dist.all_reduce_(xf, op="avg")
checks["avg_bitwise_equal"] = gathered_equal(xf)

# bad input is refused before any communication
errs = []
for bad, kw in ((np.zeros((4, 4), np.float32)[:, 1], {}), (np.zeros(3, np.float32), {"op": "x"}),
                (np.zeros(3, np.int32), {"op": "avg"}), ([1.0, 2.0], {})):
    try:
        dist.all_reduce_(bad, **kw)
        errs.append(None)
    except (TypeError, ValueError) as e:
        errs.append(type(e).__name__)
checks["bad_input"] = errs == ["ValueError", "ValueError", "TypeError", "TypeError"]
try:
    dist.broadcast_(np.zeros(2), src=world)
    checks["bad_src"] = False
except ValueError as e:
    checks["bad_src"] = "src" in str(e)

b = np.full(5, float(rank), np.float64)
dist.broadcast_(b, src=world - 1)
checks["broadcast"] = np.array_equal(b, np.full(5, world - 1.0))
tb = gf.Tensor(np.full((2, 3), float(rank), np.float32))
checks["broadcast_tensor"] = dist.broadcast_(tb) is tb and np.all(tb.data == 0.0)
checks["all_gather_object"] = dist.all_gather_object({"r": rank}) == [
    {"r": r} for r in range(world)]
checks["broadcast_object"] = dist.broadcast_object(("cfg", rank), src=1 % world) == (
    "cfg", 1 % world)
dist.barrier()

# ---- shard_range and MPIReducer
for n in (0, 1, 15, 16, 17, 100, 1000, 4099):
    rs = [dist.shard_range(n, r, world) for r in range(world)]
    ok = rs[0][0] == 0 and rs[-1][1] == n and all(
        rs[i][1] == rs[i + 1][0] for i in range(world - 1))
    ok &= all(lo % 16 == 0 and lo <= hi for lo, hi in rs)
    sizes = [hi - lo for lo, hi in rs]
    ok &= max(sizes) - min(sizes) <= 16
    checks[f"shard_range_{n}"] = ok
red = dist.make_reducer()
checks["reducer_shard_range"] = red.shard_range(100) == dist.shard_range(100, rank, world)
# the large size takes MPI's large-message algorithms (MPICH's in-place reduce-scatter there
# memcpy'd overlapping ranges and aborted)
for dtype, n in [(d, n) for d in (np.float32, np.float64) for n in (5, 1000, 4099)] + [
        (np.float32, 1_500_017)]:
    name = f"{np.dtype(dtype).name}_{n}"
    buf = red.buffer(n, dtype)
    checks[f"buffer_{name}"] = (buf.shape == (n,) and buf.dtype == dtype and
                                buf.ctypes.data % 64 == 0 and not buf.any())
    ref = sum(data(r, n, dtype) for r in range(world))
    buf[:] = data(rank, n, dtype)
    red.all_reduce_(buf)
    checks[f"all_reduce_sum_{name}"] = np.array_equal(buf, ref)
    buf[:] = data(rank, n, dtype)
    red.all_reduce_(buf, "avg")
    checks[f"all_reduce_avg_{name}"] = np.allclose(buf, ref / world) and gathered_equal(buf)
    buf[:] = data(rank, n, dtype)
    lo, hi = red.reduce_scatter_(buf, "sum")
    checks[f"reduce_scatter_{name}"] = (lo, hi) == red.shard_range(n) and np.array_equal(
        buf[lo:hi], ref[lo:hi])
    buf[:] = data(rank, n, dtype)
    red.reduce_scatter_(buf, "avg")
    checks[f"reduce_scatter_avg_{name}"] = np.allclose(buf[lo:hi], ref[lo:hi] / world)
    full = np.arange(n, dtype=dtype) * 3
    buf[:] = -1
    buf[lo:hi] = full[lo:hi]
    red.all_gather_(buf)
    checks[f"all_gather_{name}"] = np.array_equal(buf, full)
try:
    red.all_reduce_(np.zeros((2, 2), np.float32))
    checks["reducer_bad_buf"] = False
except ValueError as e:
    checks["reducer_bad_buf"] = "buf" in str(e)
# both reducers check a buffer the same way, before any communication
ro = np.zeros(4, np.float32)
ro.flags.writeable = False
for tag, rr in (("default", red), ("mpi", dist.MPIReducer(dist.get_comm()))):
    try:
        rr.all_reduce_(ro)
        checks[f"reducer_read_only_buf_{tag}"] = False
    except ValueError as e:
        checks[f"reducer_read_only_buf_{tag}"] = "buf" in str(e) and "read-only" in str(e)
    try:
        rr.all_gather_(np.zeros(4, np.int32))
        checks[f"reducer_int_buf_{tag}"] = False
    except TypeError as e:
        checks[f"reducer_int_buf_{tag}"] = "buf" in str(e)
    rr.close()

checks = {k: bool(v) for k, v in checks.items()}
# ---- DataParallel on an odd world (uneven ZeRO shards that cut segments) vs one process
from dp_common import make_data, make_model, train_step  # noqa: E402

X, Y = make_data(steps=5, batch=32 * world)
for zero in (False, True):
    ref = make_model(seed=3)
    ref_opt = gf.optim.AdamW(ref.parameters(), lr=1e-2)
    model = make_model(seed=3 + rank)
    opt = gf.optim.AdamW(model.parameters(), lr=1e-2)
    dp = dist.DataParallel(model, opt, shard_optimizer_state=zero)
    same = []
    for s in range(5):
        train_step(dp, opt, X[s][rank::world], Y[s][rank::world])
        train_step(ref, ref_opt, X[s], Y[s])
        same.append(gathered_equal(np.concatenate([p.data.ravel() for p in model.parameters()])))
    tag = "dp_zero" if zero else "dp"
    checks[f"{tag}_bitwise"] = all(same)
    checks[f"{tag}_matches_single"] = all(
        np.allclose(p.data, q.data, rtol=1e-4, atol=1e-6)
        for p, q in zip(model.parameters(), ref.parameters()))
    if zero:
        a = opt._arenas[0][0][1]
        checks["dp_zero_shards"] = a.shard == dist.shard_range(a.n, rank, world)
    dp.close()

# ---- mixed dtypes (two arenas in one param group), float64, per-group hyperparameters,
# a parameter frozen on every rank for a step, hand-set gradients, and arenas so small that
# some ranks' ZeRO shards are empty (3 ranks: n = 32 -> shards of 0/16/16, n = 16 -> 0/0/16)


class Mixed(gf.nn.Module):
    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.a = gf.nn.Parameter(rng.standard_normal(20).astype(np.float32))
        self.b = gf.nn.Parameter(rng.standard_normal((3, 7)))
        self.c = gf.nn.Parameter(rng.standard_normal(5))


def mixed_grads(step, r):
    rng = np.random.default_rng(1000 * step + r)
    return {k: rng.standard_normal(shape).astype(dt) for k, shape, dt in (
        ("a", (20,), np.float32), ("b", (3, 7), np.float64), ("c", (5,), np.float64))}


def mixed_run(zero, distributed):
    model = Mixed(seed=40 + (rank if distributed else 0))
    opt = gf.optim.AdamW([{"params": [model.a, model.b]},
                          {"params": [model.c], "lr": 0.1, "weight_decay": 0.3}], lr=1e-2)
    dp = dist.DataParallel(model, opt, shard_optimizer_state=zero) if distributed else None
    same = []
    for s in range(4):
        opt.zero_grad()
        gs = mixed_grads(s, rank) if distributed else {
            k: np.mean([mixed_grads(s, r)[k] for r in range(world)], axis=0)
            for k in ("a", "b", "c")}
        for k, g in gs.items():
            if not (k == "c" and s == 1):  # c frozen at step 1 on every rank
                getattr(model, k).grad = gf.Tensor(g)
        opt.step()
        if distributed:
            same.append(gathered_equal(np.concatenate(
                [p.data.ravel().astype(np.float64) for p in model.parameters()])))
    st = opt.state[model.b]  # collective under ZeRO: the full state
    out = ({n: p.data.copy() for n, p in model.named_parameters()}, opt.state_dict(),
           {k: np.asarray(v).copy() for k, v in st.items()}, all(same))
    if dp is not None:
        dp.close()
    return out


for zero in (False, True):
    tag = "mixed_zero" if zero else "mixed"
    p1, s1, st1, _ = mixed_run(zero, False)
    p2, s2, st2, same = mixed_run(zero, True)
    checks[f"{tag}_bitwise"] = same
    checks[f"{tag}_params_match_single"] = all(
        p1[k].dtype == p2[k].dtype and np.allclose(p1[k], p2[k], rtol=1e-5, atol=1e-6)
        for k in p1)
    checks[f"{tag}_state_matches_single"] = sorted(s1["state"]) == sorted(s2["state"]) and all(
        np.allclose(np.asarray(s1["state"][i][k], np.float64),
                    np.asarray(s2["state"][i][k], np.float64), rtol=1e-4, atol=1e-6)
        for i in s1["state"] for k in s1["state"][i])
    checks[f"{tag}_steps"] = [float(s2["state"][i]["step"]) for i in range(3)] == [4, 4, 3]
    checks[f"{tag}_state_view"] = sorted(st1) == sorted(st2) and all(
        np.allclose(st1[k], st2[k], rtol=1e-4, atol=1e-6) for k in st1)

everyone = dist.all_gather_object(checks)  # one writer: ranks' stdout lines could interleave
if rank == 0:
    for r, c in enumerate(everyone):
        print(json.dumps({"rank": r, "world": world, "checks": c}), flush=True)
