"""Data-parallel communication and training throughput under ``mpiexec`` (issue 8).

``python -m bench.bench_distributed`` launches MPI jobs (``mpiexec -n 2`` by default) and
prints tables:

1. All-reduce (sum, in place) of 1M / 3M (about the MLP's gradient arena) / 16M / 64M float32
   on every rank, side by side in one job: gradfuse's ``ShmReducer`` (shared-memory window),
   gradfuse's ``MPIReducer`` (plain ``MPI_Allreduce``), raw ``mpi4py``
   ``Allreduce(IN_PLACE)`` and ``torch.distributed`` (gloo, ``env://`` rendezvous from the MPI
   rank). The implementations take turns (round-robin rounds), so machine noise hits them
   alike. Columns: time per call (slowest rank; min and median over samples), algorithm
   bandwidth ``S / t`` (S = the buffer's bytes, NCCL-tests' algbw) and the memory traffic an
   all-reduce of W private copies must make at least, ``2 W S`` (every copy read once and
   written once), as a fraction of the machine's copy bandwidth measured just before (W
   threads copying, read + write).
2. Training throughput of the 784-1024x3-10 ReLU MLP (bench/bench_train.py's model), Adam,
   float32, global batch 256 cycling through 32 random batches: 1 process x 1 thread with
   batch 256 against 2 ranks x 1 thread with batch 128 each (gradfuse ``DataParallel`` with
   ShmReducer, with ShmReducer and ZeRO-1, with MPIReducer; PyTorch ``DistributedDataParallel``
   on gloo), samples/s and the scaling efficiency
   ``samples/s(2 ranks) / (2 * samples/s(1 process))``. One more row runs the 2 processes
   without any gradient exchange: the bound the machine allows at that moment (on a shared
   machine, far below 2x). Each (library, ranks) runs in its own
   job, gradfuse's without torch loaded (they would share one libgomp).

Options: ``--quick`` (shorter), ``--ranks N`` (all-reduce ranks), ``--skip-train``,
``--skip-allreduce``, ``--sizes 1M 16M``.

Timing under MPI: every rank runs the same number of calls (collectives), a barrier starts
each sample, and a sample's time is the slowest rank's (an all-reduce of the maxima).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"1M": 1 << 20, "3M": 3 << 20, "16M": 1 << 24, "64M": 1 << 26}
SHM, MPIRED, MPI4PY, GLOO = ("gradfuse ShmReducer", "gradfuse MPIReducer", "mpi4py Allreduce",
                             "torch.distributed gloo")
WIDTHS = (784, 1024, 1024, 1024, 10)
GLOBAL_BATCH = 256
GF_PLAIN, GF_SHM, GF_MPI = ("gradfuse", "gradfuse DataParallel ShmReducer",
                            "gradfuse DataParallel MPIReducer")
TORCH_PLAIN, TORCH_DDP = "pytorch", "pytorch DDP gloo"
# 2 ranks each training alone on its half batch, no gradient exchange: what the machine gives
# two concurrent processes at that moment (the bound DataParallel can reach)
GF_NOSYNC = "gradfuse 2 processes, no all-reduce (bound)"
GF_ZERO = "gradfuse DataParallel ShmReducer ZeRO-1"
# one process with one rank's share (batch 128) alone: what a rank's step costs without a
# partner; DataParallel against it is the weak-scaling efficiency (the communication's cost)
GF_HALF = "gradfuse 1 process x 128 (one rank's work)"
N_BATCHES = 32
LR = 1e-3


def _mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("bench_distributed: mpiexec not found (pip install mpi4py mpich)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, worker_args: list, threads: int = 1, timeout: float = 900) -> list:
    """Run ``python -m bench.bench_distributed --worker ...`` on n ranks; rank 0's JSON lines."""
    env = dict(os.environ)
    for k in ("GRADFUSE_OMP_PASSIVE", "OMP_WAIT_POLICY", "GRADFUSE_SHM_FAKE_NODES"):
        env.pop(k, None)
    t = str(threads)
    env.update(GRADFUSE_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
               MKL_NUM_THREADS=t, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    cmd = [_mpiexec(), "-n", str(n), sys.executable, "-m", "bench.bench_distributed",
           "--worker", *map(str, worker_args)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def _timed(comm, fn, calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls, the slowest rank's."""
    from mpi4py import MPI

    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    dt = (time.perf_counter() - t0) / calls
    return comm.allreduce(dt, op=MPI.MAX)


# ------------------------------------------------------------------------------ all-reduce
def _allreduce_impls(comm, n: int):
    """name -> (callable doing one in-place sum all-reduce of n float32, cleanup)."""
    from mpi4py import MPI

    from gradfuse.distributed._reduce import MPIReducer
    from gradfuse.distributed._shm import ShmReducer

    impls = {}
    shm = ShmReducer(comm)
    a = shm.buffer(n, np.float32)
    a.fill(1.0)
    impls[SHM] = (lambda: shm.all_reduce_(a, "sum"), shm.close)
    mr = MPIReducer(comm)
    b = mr.buffer(n, np.float32)
    b.fill(1.0)
    impls[MPIRED] = (lambda: mr.all_reduce_(b, "sum"), mr.close)
    c = np.ones(n, np.float32)
    impls[MPI4PY] = (lambda: comm.Allreduce(MPI.IN_PLACE, c, MPI.SUM), lambda: None)
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return impls
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="env://", rank=comm.Get_rank(),
                                world_size=comm.Get_size())
    d = torch.ones(n, dtype=torch.float32)
    impls[GLOO] = (lambda: dist.all_reduce(d), lambda: None)
    return impls


def _worker_allreduce(sizes: list, budget_s: float, rounds: int) -> None:
    from mpi4py import MPI

    import gradfuse  # noqa: F401  (before torch: gradfuse's OpenMP runtime first)

    comm = MPI.COMM_WORLD
    for label in sizes:
        n = SIZES[label]
        impls = _allreduce_impls(comm, n)
        samples = {k: [] for k in impls}
        calls = {}
        for name, (fn, _) in impls.items():
            fn()  # first touch, lazy setup
            # calls per sample so one sample lasts ~budget/(rounds*3)
            t = _timed(comm, fn, 1)
            calls[name] = comm.bcast(max(1, int(budget_s / rounds / 3 / max(t, 1e-6))), root=0)
        for _ in range(rounds):
            for name, (fn, _) in impls.items():
                for _ in range(3):
                    samples[name].append(_timed(comm, fn, calls[name]))
        for _, cleanup in impls.values():
            cleanup()
        del impls
        if comm.Get_rank() == 0:
            for name, s in samples.items():
                print(json.dumps({"size": label, "n": n, "impl": name, "min_s": min(s),
                                  "median_s": statistics.median(s), "samples": len(s)}),
                      flush=True)


def run_allreduce(ranks: int, sizes: list, budget_s: float, rounds: int) -> tuple[list, dict]:
    sys.path.insert(0, str(ROOT))
    import gradfuse as gf
    from bench.harness import copy_bandwidth

    gf.set_num_threads(ranks)
    copy = copy_bandwidth(ranks, 5)
    rows = _launch(ranks, ["allreduce", ",".join(sizes), budget_s, rounds])
    for r in rows:
        nbytes = r["n"] * 4
        r["algbw"] = nbytes / r["min_s"] / 1e9
        r["pct_copy"] = 100.0 * 2 * ranks * nbytes / r["min_s"] / 1e9 / copy["gbs"]
    return rows, copy


def format_allreduce(rows: list, ranks: int, copy: dict) -> str:
    by = {(r["size"], r["impl"]): r for r in rows}
    lines = [f"All-reduce (sum, in place), float32, {ranks} ranks on one machine; copy bandwidth "
             f"{copy['gbs']:.1f} GB/s (best of {', '.join(copy['gbs_by_threads'])} threads)", "",
             "| size | implementation | min | median | algbw GB/s | 2WS traffic % of copy BW "
             "| vs mpi4py |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = by.get((r["size"], MPI4PY))
        ratio = f"{ref['min_s'] / r['min_s']:.2f}x" if ref else "n/a"
        lines.append(f"| {r['size']} | {r['impl']} | {r['min_s'] * 1e3:.2f} ms "
                     f"| {r['median_s'] * 1e3:.2f} ms | {r['algbw']:.2f} | {r['pct_copy']:.0f}% "
                     f"| {ratio} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ training
def _data(rank: int, world: int):
    """This rank's part of each of the N_BATCHES global batches (the contiguous block r of
    256 / world rows; DistributedSampler's interleaving would be the same work)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_BATCHES, GLOBAL_BATCH, WIDTHS[0]), dtype=np.float32)
    t = rng.integers(0, WIDTHS[-1], (N_BATCHES, GLOBAL_BATCH), dtype=np.int64)
    per = GLOBAL_BATCH // world
    sl = slice(rank * per, (rank + 1) * per)
    return np.ascontiguousarray(x[:, sl]), np.ascontiguousarray(t[:, sl])


def _layers(seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in zip(WIDTHS, WIDTHS[1:]):
        bound = 1.0 / np.sqrt(fan_in)
        out.append((rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                    rng.uniform(-bound, bound, fan_out).astype(np.float32)))
    return out


def _gf_step(rank: int, world: int, reducer: str = "shm", sync: bool = True,
             zero: bool = False):
    import gradfuse as gf
    import gradfuse.distributed.parallel as parallel
    from gradfuse.distributed._reduce import MPIReducer
    from gradfuse.distributed._shm import ShmReducer

    # the reducer DataParallel gets (make_reducer's choice, whatever it is, is overridden)
    parallel.make_reducer = lambda comm=None: (ShmReducer if reducer == "shm" else MPIReducer)(
        comm if comm is not None else gf.distributed.get_comm())

    mods = []
    for i, (w, b) in enumerate(_layers()):
        fc = gf.nn.Linear(w.shape[1], w.shape[0])
        fc.weight.data[...] = w
        fc.bias.data[...] = b
        mods += [fc] if i == len(WIDTHS) - 2 else [fc, gf.nn.ReLU()]
    net = gf.nn.Sequential(*mods)
    opt = gf.optim.Adam(net.parameters(), lr=LR)
    model = net
    if world > 1 and sync:
        gf.distributed.init()
        model = gf.distributed.DataParallel(net, opt, shard_optimizer_state=zero)
    loss_fn = gf.nn.CrossEntropyLoss()
    x, t = _data(rank, world)
    batches = [(gf.tensor(xb), gf.tensor(tb)) for xb, tb in zip(x, t)]
    it = iter(range(1 << 62))

    def step():
        xb, tb = batches[next(it) % N_BATCHES]
        opt.zero_grad()
        loss = loss_fn(model(xb), tb)
        loss.backward()
        opt.step()

    return step


def _torch_step(rank: int, world: int):
    import torch

    torch.set_num_threads(1)
    mods = []
    for i, (w, b) in enumerate(_layers()):
        fc = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            fc.weight.copy_(torch.from_numpy(w))
            fc.bias.copy_(torch.from_numpy(b))
        mods += [fc] if i == len(WIDTHS) - 2 else [fc, torch.nn.ReLU()]
    net = torch.nn.Sequential(*mods)
    model = net
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(net)
    try:
        opt = torch.optim.Adam(net.parameters(), lr=LR, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(net.parameters(), lr=LR, foreach=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, t = _data(rank, world)
    batches = [(torch.from_numpy(xb), torch.from_numpy(tb)) for xb, tb in zip(x, t)]
    it = iter(range(1 << 62))

    def step():
        xb, tb = batches[next(it) % N_BATCHES]
        opt.zero_grad()
        loss = loss_fn(model(xb), tb)
        loss.backward()
        opt.step()

    return step


def _worker_train(lib: str, steps: int, samples: int) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if lib.startswith("gradfuse"):
        import gradfuse as gf

        gf.set_num_threads(1)
        split = 2 if lib == GF_HALF else world  # GF_HALF: one process, batch 256 / 2
        step = _gf_step(rank, split, "mpi" if lib.endswith("MPIReducer") else "shm",
                        sync=lib not in (GF_NOSYNC, GF_HALF), zero=lib == GF_ZERO)
        if "torch" in sys.modules:
            raise RuntimeError("the gradfuse worker must not load torch (shared libgomp)")
    else:
        step = _torch_step(rank, world)
    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(1, user_api="blas")
    except ImportError:
        limit = None
    for _ in range(N_BATCHES):  # warm-up: one pass over the batches
        step()
    times, cpus = [], []
    for _ in range(samples):
        c0 = time.process_time()
        times.append(_timed(comm, step, steps))
        # CPU seconds per step summed over the ranks (busy waiting in MPI included): what the
        # step costs the machine, which a loaded machine distorts much less than wall time
        cpus.append(comm.allreduce((time.process_time() - c0) / steps))
    del limit
    if rank == 0:
        batch = GLOBAL_BATCH // (2 if lib == GF_HALF else world)
        print(json.dumps({"lib": lib, "ranks": world, "batch": batch, "min_s": min(times),
                          "median_s": statistics.median(times), "cpu_s": min(cpus),
                          "cpu_median_s": statistics.median(cpus)}), flush=True)


def run_train(steps: int, samples: int, with_torch: bool, repeats: int) -> list:
    """Every job ``repeats`` times, in turns; per job the run with the best min is kept."""
    jobs = [(GF_PLAIN, 1), (GF_SHM, 2), (GF_ZERO, 2), (GF_MPI, 2), (GF_NOSYNC, 2), (GF_HALF, 1)]
    if with_torch:
        jobs += [(TORCH_PLAIN, 1), (TORCH_DDP, 2)]
    best = {}
    for _ in range(repeats):
        for lib, ranks in jobs:
            (r,) = _launch(ranks, ["train", lib, steps, samples])
            if lib not in best or r["min_s"] < best[lib]["min_s"]:
                best[lib] = r
    return [best[lib] for lib, _ in jobs]


_BASE = {GF_SHM: GF_PLAIN, GF_ZERO: GF_PLAIN, GF_MPI: GF_PLAIN, GF_NOSYNC: GF_PLAIN,
         TORCH_DDP: TORCH_PLAIN}


def format_train(rows: list) -> str:
    by = {r["lib"]: r for r in rows}
    lines = ["Training 784-1024x3-10 ReLU, Adam, float32, global batch 256, 1 thread per rank", "",
             "| implementation | ranks x batch | min / step | median / step | samples/s (min) "
             "| samples/s (median) | scaling efficiency (min / median) | CPU s / step, all ranks "
             "| CPU efficiency |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        batch = r.get("batch", GLOBAL_BATCH // r["ranks"])
        one = by.get(_BASE.get(r["lib"]))
        eff = cpu_eff = ""
        if one:
            e_min = one["min_s"] / (r["ranks"] * r["min_s"])
            e_med = one["median_s"] / (r["ranks"] * r["median_s"])
            eff = f"{100 * e_min:.0f}% / {100 * e_med:.0f}%"
            cpu_eff = f"{100 * one['cpu_s'] / r['cpu_s']:.0f}%"
        n = r["ranks"] * batch
        lines.append(f"| {r['lib']} | {r['ranks']} x {batch} "
                     f"| {r['min_s'] * 1e3:.2f} ms | {r['median_s'] * 1e3:.2f} ms "
                     f"| {n / r['min_s']:,.0f} | {n / r['median_s']:,.0f} "
                     f"| {eff} | {r['cpu_s'] * 1e3:.1f} ms | {cpu_eff} |")
    # A job whose ranks got much less CPU than wall time was descheduled (other load on the
    # machine): its time, and every efficiency computed from it, measures the load, not the
    # code (an efficiency above 100% is the usual symptom: a starved 1-process baseline).
    starved = [r["lib"] for r in rows if r["cpu_s"] / r["ranks"] < 0.7 * r["min_s"]]
    if starved:
        lines += ["", "WARNING: the machine was busy: these jobs got less than 70% of a core per "
                  "rank (CPU s / step / ranks < 0.7 x min / step), so their times and the "
                  f"efficiencies built on them are not meaningful; rerun: {', '.join(starved)}"]
    bound, shm = by.get(GF_NOSYNC), by.get(GF_SHM)
    if bound and shm:
        lines += ["", "DataParallel (ShmReducer) step / the same 2 processes without the "
                  f"all-reduce: {shm['min_s'] / bound['min_s']:.3f} (min), "
                  f"{shm['median_s'] / bound['median_s']:.3f} (median)"]
    half = by.get(GF_HALF)
    if half:
        # the same work per rank as one process doing one rank's share alone: what is left
        # is the exchange (and waiting for the slower rank)
        weak = [f"{lib}: {100 * half['min_s'] / by[lib]['min_s']:.0f}%"
                for lib in (GF_SHM, GF_ZERO, GF_MPI) if lib in by]
        lines += ["", "Weak scaling (2 ranks x 128 against 1 process x 128, samples/s per rank): "
                  + ", ".join(weak)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_distributed",
        description="All-reduce and data-parallel training throughput under mpiexec, gradfuse "
        "vs mpi4py and torch.distributed (gloo), side by side.")
    parser.add_argument("--ranks", type=int, default=2, help="ranks for the all-reduce table")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--quick", action="store_true", help="shorter timing")
    parser.add_argument("--skip-allreduce", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "allreduce":
            _worker_allreduce(rest[0].split(","), float(rest[1]), int(rest[2]))
        else:
            _worker_train(rest[0], int(rest[1]), int(rest[2]))
        return 0
    import importlib.util

    with_torch = importlib.util.find_spec("torch") is not None
    report = {}
    if not args.skip_allreduce:
        budget, rounds = (0.3, 2) if args.quick else (2.0, 3)
        rows, copy = run_allreduce(args.ranks, args.sizes, budget, rounds)
        print(format_allreduce(rows, args.ranks, copy))
        report["allreduce"] = {"rows": rows, "copy_bandwidth": copy}
    if not args.skip_train:
        steps, samples, repeats = (5, 3, 1) if args.quick else (10, 7, 2)
        rows = run_train(steps, samples, with_torch, repeats)
        print(format_train(rows))
        report["train"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
