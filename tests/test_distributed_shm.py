"""ShmReducer (gradfuse.distributed._shm) under ``mpiexec``: numpy reference sums, bitwise.

Each test launches this file as an MPI program (``__main__`` below) once per layout: the worker
runs every case (float32/float64, sizes 1..40001, sum/avg, all_reduce_, reduce_scatter_,
all_gather_, a view of a buffer, a foreign array, several live buffers, a slow rank against
ranks that overwrite their segment as soon as the call returns (the exit fence), bad input,
calls that differ across ranks, a window that does not fit in /dev/shm on one node, close()
with a view still held) and writes its arrays to
``<tmp>/rank<r>.npz``; the test recomputes the inputs and checks

* the result against numpy summing the ranks' inputs in the order the reducer documents
  (rank order on one node; node partial sums in node order across nodes), bitwise;
* that every rank holds the same bits.

Layouts: 2, 3, 4 ranks on one node; 4 ranks split into 2 fake nodes (block and cyclic,
``GRADFUSE_SHM_FAKE_NODES``), 2 ranks as 2 nodes of one rank, and 3 ranks on 2 fake nodes of
unequal size (the deterministic world fallback). Without MPI: the owner's C++ pass
(``_backend.segment_sum``) against numpy on 1 and 2 threads, its bad-input errors, the
fake-node variable's parsing.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from mpi_util import check_ok, requires_mpi, run_mpi

SIZES = (1, 15, 17, 100, 4099, 40_001)
DTYPES = ("float32", "float64")
N_BUFFERS = 3  # buffers alive at once (grad arenas of several groups, a param arena)


def _inputs(size: int, dtype: str, rank: int, case: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * case + rank)
    return rng.standard_normal(size).astype(dtype)


def _gather_vals(size: int, dtype: str, rank: int) -> np.ndarray:
    return (np.arange(size) * 10 + rank + 1).astype(dtype)


# ------------------------------------------------------------------------------ the worker
def _worker(out_dir: str) -> None:
    from mpi4py import MPI

    from gradfuse.distributed import _shm
    from gradfuse.distributed._shm import ShmReducer

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    red = ShmReducer(comm)
    res: dict[str, np.ndarray] = {}
    meta = {"local_size": red.local_size, "n_nodes": red.n_nodes, "uniform": red.uniform,
            "shards": {}}
    case = 0
    for dtype in DTYPES:
        for size in SIZES:
            bufs = [red.buffer(size, dtype) for _ in range(N_BUFFERS)]
            assert all(not b.any() for b in bufs), "buffer() not zeroed"
            assert all(b.ctypes.data % 64 == 0 for b in bufs), "buffer() not 64-byte aligned"
            # several buffers alive, reduced interleaved: sum, avg, foreign array
            for i in range(2):  # bufs[0] gets "sum", bufs[1] "avg"
                bufs[i][:] = _inputs(size, dtype, rank, case + i)
            foreign = _inputs(size, dtype, rank, case + 2)
            red.all_reduce_(bufs[1], "avg")
            red.all_reduce_(bufs[0], "sum")
            red.all_reduce_(foreign, "sum")
            res[f"sum/{dtype}/{size}"] = bufs[0].copy()
            res[f"avg/{dtype}/{size}"] = bufs[1].copy()
            res[f"foreign/{dtype}/{size}"] = foreign
            # reduce_scatter_ then all_gather_ (the ZeRO pair)
            b = bufs[2]
            b[:] = _inputs(size, dtype, rank, case + 3)
            lo, hi = red.reduce_scatter_(b, "sum")
            assert (lo, hi) == red.shard_range(size), "reduce_scatter_ range != shard_range"
            res[f"rs/{dtype}/{size}"] = b[lo:hi].copy()
            meta["shards"][f"{size}"] = [red.shard_range(size, r) for r in range(red.size)]
            b[:] = _inputs(size, dtype, rank, case + 5)
            red.reduce_scatter_(b, "avg")  # ZeRO-1's op: the shard of the average
            res[f"rsavg/{dtype}/{size}"] = b[lo:hi].copy()
            b[:] = -1.0
            b[lo:hi] = _gather_vals(size, dtype, rank)[lo:hi]
            red.all_gather_(b)
            res[f"ag/{dtype}/{size}"] = b.copy()
            # a view of a buffer (same offset on every rank) is reduced through shared memory
            if size > 40:
                bufs[0][:] = _inputs(size, dtype, rank, case + 4)
                red.all_reduce_(bufs[0][16:size - 7], "sum")
                res[f"view/{dtype}/{size}"] = bufs[0].copy()
            case += 10
    # the exit fence: the last rank is slow to sum its shard, and the others overwrite their
    # segment with the next step's values (NaN) the moment all_reduce_ returns; the slow rank
    # must never see them (nor a fast rank the slow rank's late writes)
    race = red.buffer(4099, "float64")
    real = red._reduce_block
    if rank == red.size - 1:
        def slow(*args):
            time.sleep(0.03)
            real(*args)
        red._reduce_block = slow
    for it in range(3):
        race[:] = _inputs(4099, "float64", rank, 500 + it)
        red.all_reduce_(race)
        res[f"race{it}"] = race.copy()
        race[:] = np.nan
    red._reduce_block = real
    del race
    # bad input: clear errors, nothing changed
    b = red.buffer(33, "float32")
    b[:] = rank
    errors = []
    for bad, op in ((b.astype(np.int32), "sum"), (b[::2], "sum"), (b.reshape(3, 11), "sum"),
                    (b, "max"), ([1.0, 2.0], "sum")):
        try:
            red.all_reduce_(bad, op)
            errors.append("no error")
        except (TypeError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    for bad_n in (-1, 2.5):
        try:
            red.buffer(bad_n)
            errors.append("no error")
        except (TypeError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    for bad_dtype in ("int64", "no such dtype"):
        try:
            red.buffer(4, bad_dtype)
            errors.append("no error")
        except TypeError as e:
            errors.append(f"{type(e).__name__}: {e}")
    # calls that differ across ranks: the same ValueError on every rank (not a hang, not a
    # silent sum of the wrong elements), nothing written, and the reducer still works after
    other = b.copy()
    mismatched = {
        "length": lambda x: red.all_reduce_(np.full(20 + 16 * rank, 1.0, np.float32)),
        "offset": lambda x: red.all_reduce_(x[rank:rank + 16]),
        "kind": lambda x: red.all_reduce_(x if rank == 0 else other),
        "op": lambda x: red.all_reduce_(x, "sum" if rank == 0 else "avg"),
        "dtype": lambda x: red.all_reduce_(np.zeros(8, np.float32 if rank else np.float64)),
        "collective": lambda x: (red.all_reduce_ if rank == 0 else red.reduce_scatter_)(x),
        "gather": lambda x: red.all_gather_(x[:32 - rank]),
        "rs": lambda x: red.reduce_scatter_(x[:16 + 16 * rank]),
        "buffer n": lambda x: red.buffer(8 + rank),
        "buffer dtype": lambda x: red.buffer(8, "float32" if rank else "float64"),
    }
    n_buffers = len(red._buffers)
    for what, call in mismatched.items():
        try:
            call(b)
            errors.append(f"{what}: no error")
        except (TypeError, ValueError) as e:
            errors.append(f"{what}: {type(e).__name__}: {e}")
    assert len(red._buffers) == n_buffers, "a rejected buffer() call left a window"
    np.testing.assert_array_equal(other, b)
    meta["errors"] = errors
    res["unchanged"] = b.copy()
    # /dev/shm too small for a window (a container's 64 MiB): a private buffer, a warning.
    # Only rank 0's node looks short of space: the other nodes must take the private path too
    # (a shared window on one node and a private array on another would hang in the reduce).
    real_free = _shm._shm_free_bytes
    if rank == 0:
        _shm._shm_free_bytes = lambda: 1 << 16
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            small = red.buffer(40_001, "float64")
    finally:
        _shm._shm_free_bytes = real_free
    meta["shm_full_warning"] = [str(w.message) for w in caught]
    assert red._find(small) is None and not small.any() and small.ctypes.data % 64 == 0
    small[:] = _inputs(40_001, "float64", rank, 999)
    red.all_reduce_(small, "avg")
    res["private"] = small
    held = red.buffer(5, "float64")  # a view kept past close(): its window stays mapped
    held[:] = rank + 0.5
    view = held[1:4]
    del held
    gone = red.buffer(1 << 20, "float32")  # no view left: freed
    del gone, bufs, b
    red.close()
    meta["held_after_close"] = view.tolist()
    meta["kept"] = len(_shm._KEPT)
    red.close()  # idempotent
    try:
        red.all_reduce_(np.zeros(4, np.float32))
        meta["after_close"] = "no error"
    except RuntimeError as e:
        meta["after_close"] = str(e)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **res)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(meta, f)


# ------------------------------------------------------------------------------ the tests
def _expected_sum(xs: list, nodes: list) -> np.ndarray:
    """The documented order: rank order inside a node, then node partials in node order."""
    partial = [functools.reduce(np.add, [xs[r] for r in node]) for node in nodes]
    return functools.reduce(np.add, partial)


# (ranks, GRADFUSE_SHM_FAKE_NODES, nodes as lists of ranks in summation order)
LAYOUTS = {
    "2 ranks": (2, "", [[0, 1]]),
    "3 ranks": (3, "", [[0, 1, 2]]),
    "4 ranks": (4, "", [[0, 1, 2, 3]]),
    "4 ranks, 2 fake nodes (block)": (4, "2", [[0, 1], [2, 3]]),
    "4 ranks, 2 fake nodes (cyclic)": (4, "2,cyclic", [[0, 2], [1, 3]]),
    "2 ranks, 2 fake nodes of 1": (2, "2", [[0], [1]]),
    # unequal nodes (2 + 1): the world fallback sums in rank order
    "3 ranks, 2 unequal fake nodes": (3, "2", [[0], [1], [2]]),
}


@requires_mpi
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_shm_reducer_matches_numpy_bitwise(layout, tmp_path):
    n, fake, nodes = LAYOUTS[layout]
    env = {"GRADFUSE_SHM_FAKE_NODES": fake} if fake else {}
    env["GRADFUSE_NUM_THREADS"] = "1"
    check_ok(run_mpi(Path(__file__), n=n, args=(tmp_path,), env=env, timeout=180))
    out = [dict(np.load(tmp_path / f"rank{i}.npz")) for i in range(n)]
    meta = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(n)]
    fake_nodes = len(nodes) if fake else 1
    assert meta[0]["n_nodes"] == (fake_nodes if meta[0]["uniform"] else meta[0]["n_nodes"])
    assert meta[0]["uniform"] == (layout != "3 ranks, 2 unequal fake nodes")
    world = [list(range(n))]  # foreign arrays: the world's deterministic sum in rank order
    case = 0
    for dtype in DTYPES:
        for size in SIZES:
            xs = {k: [_inputs(size, dtype, i, case + k) for i in range(n)] for k in range(6)}
            expect = {
                "sum": _expected_sum(xs[0], nodes),
                "avg": _expected_sum(xs[1], nodes) / np.asarray(n, dtype),
                "foreign": _expected_sum(xs[2], world),
            }
            for key, want in expect.items():
                for i in range(n):
                    got = out[i][f"{key}/{dtype}/{size}"]
                    assert got.dtype == np.dtype(dtype)
                    np.testing.assert_array_equal(got, want, err_msg=f"{key} {dtype} {size} r{i}")
            # reduce_scatter_: each rank's shard of the full sum
            full = _expected_sum(xs[3], nodes)
            shards = meta[0]["shards"][str(size)]
            assert shards[0][0] == 0 and shards[-1][1] == size
            for i in range(n):
                lo, hi = shards[i]
                assert lo % 16 == 0 or lo == size
                assert hi % 16 == 0 or hi == size
                np.testing.assert_array_equal(out[i][f"rs/{dtype}/{size}"], full[lo:hi],
                                              err_msg=f"reduce_scatter {dtype} {size} r{i}")
                avg = _expected_sum(xs[5], nodes) / np.asarray(n, dtype)
                np.testing.assert_array_equal(out[i][f"rsavg/{dtype}/{size}"], avg[lo:hi],
                                              err_msg=f"reduce_scatter avg {dtype} {size} r{i}")
            # all_gather_: rank i's shard from rank i, on every rank
            want = np.concatenate([_gather_vals(size, dtype, i)[lo:hi]
                                   for i, (lo, hi) in enumerate(shards)])
            for i in range(n):
                np.testing.assert_array_equal(out[i][f"ag/{dtype}/{size}"], want,
                                              err_msg=f"all_gather {dtype} {size} r{i}")
            if size > 40:
                for i in range(n):
                    got = out[i][f"view/{dtype}/{size}"]
                    np.testing.assert_array_equal(got[:16], xs[4][i][:16])
                    np.testing.assert_array_equal(got[size - 7:], xs[4][i][size - 7:])
                    np.testing.assert_array_equal(
                        got[16:size - 7], _expected_sum([x[16:size - 7] for x in xs[4]], nodes),
                        err_msg=f"view {dtype} {size} r{i}")
            case += 10
    for i in range(n):
        errs = meta[i]["errors"]
        assert errs[0].startswith("TypeError: buf:") and "int32" in errs[0]
        assert errs[1].startswith("ValueError: buf:") and "contiguous" in errs[1]
        assert errs[2].startswith("ValueError: buf:") and "1-D" in errs[2]
        assert errs[3].startswith("ValueError: op:")
        assert errs[4].startswith("TypeError: buf:")
        assert errs[5].startswith("ValueError: n:") and errs[6].startswith("ValueError: n:")
        assert errs[7].startswith("TypeError: dtype:") and errs[8].startswith("TypeError: dtype:")
        names = {"length": "buf", "offset": "buf", "kind": "buf", "op": "op", "dtype": "buf",
                 "collective": "buf", "gather": "buf", "rs": "buf", "buffer n": "n"}
        for err, (what, arg) in zip(errs[9:], names.items()):
            assert err.startswith(f"{what}: ValueError: {arg}:"), err
        assert errs[-1].startswith("buffer dtype: TypeError: dtype:"), errs[-1]
        assert "lengths" in errs[9] and "offset" in errs[10] and "foreign" in errs[11]
        np.testing.assert_array_equal(out[i]["unchanged"], np.full(33, i, np.float32))
        assert "after close" in meta[i]["after_close"]
        assert meta[i]["held_after_close"] == [i + 0.5] * 3
        assert meta[i]["kept"] == 1
        assert len(meta[i]["shm_full_warning"]) == 1
        assert "/dev/shm" in meta[i]["shm_full_warning"][0]
        for it in range(3):
            np.testing.assert_array_equal(
                out[i][f"race{it}"],
                _expected_sum([_inputs(4099, "float64", r, 500 + it) for r in range(n)], nodes),
                err_msg=f"exit fence, step {it}, rank {i}")
        want = _expected_sum([_inputs(40_001, "float64", r, 999) for r in range(n)], world)
        np.testing.assert_array_equal(out[i]["private"], want / np.float64(n))


@requires_mpi
def test_bench_distributed_allreduce_runs(tmp_path):
    """Smoke test of `python -m bench.bench_distributed` (speed is never asserted)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "bench.bench_distributed", "--quick", "--skip-train",
                        "--sizes", "1M", "--json", str(out)], cwd=root, capture_output=True,
                       text=True, timeout=300)  # generous: a loaded machine
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["allreduce"]["rows"]
    impls = {row["impl"] for row in rows}
    assert {"gradfuse ShmReducer", "gradfuse MPIReducer", "mpi4py Allreduce"} <= impls
    assert all(row["min_s"] > 0 and row["median_s"] >= row["min_s"] for row in rows)
    assert "| 1M | gradfuse ShmReducer |" in r.stdout


def test_bench_train_table_flags_a_starved_job():
    """A job descheduled by other load (CPU time per step far below its wall time) makes the
    efficiencies meaningless (above 100% when it is the 1-process baseline): the table says so.
    """
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import bench_distributed as bd

    def row(lib, ranks, wall, cpu):
        return {"lib": lib, "ranks": ranks, "min_s": wall, "median_s": wall, "cpu_s": cpu,
                "cpu_median_s": cpu}

    fine = [row(bd.GF_PLAIN, 1, 0.032, 0.031), row(bd.GF_SHM, 2, 0.020, 0.040)]
    text = bd.format_train(fine)
    assert "| 80% / 80% |" in text and "WARNING" not in text  # 0.032 / (2 x 0.020)
    starved = [row(bd.GF_PLAIN, 1, 0.108, 0.037), row(bd.GF_SHM, 2, 0.045, 0.085)]
    text = bd.format_train(starved)
    assert "| 120% / 120% |" in text  # the misleading figure is still shown, with the warning below it
    warning = text[text.index("WARNING"):]
    assert bd.GF_PLAIN in warning and bd.GF_SHM not in warning


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 15, 17, 2047, 2049, 70_001])
@pytest.mark.parametrize("nsrc", [1, 2, 3, 5])
def test_segment_sum_kernel_matches_numpy_order_and_threads(dtype, n, nsrc):
    """The owner's step (csrc/kernels/reduce.cpp): sum in source order, / div, into every dst;
    bitwise numpy's chain, the same bits on 1 and 2 threads, a dst may be a src."""
    import gradfuse as gf
    from gradfuse import _backend

    rng = np.random.default_rng(n * 10 + nsrc)
    srcs = [rng.standard_normal(n).astype(dtype) for _ in range(nsrc)]
    for div in (1, 3):
        want = functools.reduce(np.add, srcs)
        if div > 1:
            want = want / np.asarray(div, dtype)
        got = {}
        for threads in (1, 2):
            old = gf.get_num_threads()
            gf.set_num_threads(threads)
            try:
                ins = [x.copy() for x in srcs]
                dsts = [np.full(n, np.nan, dtype), ins[-1]]  # a fresh array and a source
                _backend.segment_sum(ins, dsts, float(div))
            finally:
                gf.set_num_threads(old)
            for d in dsts:
                np.testing.assert_array_equal(d, want)
            got[threads] = dsts[0]
        assert got[1].tobytes() == got[2].tobytes()


def test_segment_sum_kernel_rejects_bad_input():
    from gradfuse import _backend

    a, b = np.ones(8, np.float32), np.ones(8, np.float32)
    out = np.zeros(8, np.float32)
    cases = [
        (([], [out], 1.0), ValueError, "srcs"),
        (([a, b.astype(np.float64)], [out], 1.0), TypeError, "srcs"),
        (([a.astype(np.int32)], [out], 1.0), TypeError, "srcs"),
        (([a, b[:7]], [out], 1.0), ValueError, "srcs"),
        (([a, b], [out[:7]], 1.0), ValueError, "dsts"),
        (([a, b], [out.reshape(2, 4)], 1.0), ValueError, "dsts"),
        (([a, b], [np.zeros(16, np.float32)[::2]], 1.0), ValueError, "dsts"),
        (([a, b], [out], 0.0), ValueError, "div"),
    ]
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    cases.append((([a, b], [ro], 1.0), ValueError, "dsts"))
    for args, exc, name in cases:
        with pytest.raises(exc, match=name):
            _backend.segment_sum(*args)
        assert not out.any() and not ro.any()  # nothing written


def test_fake_nodes_env_is_validated(monkeypatch):
    _shm = pytest.importorskip("gradfuse.distributed._shm")
    for bad in ("0", "x", "2,ring"):
        monkeypatch.setenv(_shm.FAKE_NODES_ENV, bad)
        with pytest.raises(ValueError, match=_shm.FAKE_NODES_ENV):
            _shm._fake_nodes()
    monkeypatch.setenv(_shm.FAKE_NODES_ENV, "3,cyclic")
    assert _shm._fake_nodes() == (3, "cyclic")
    monkeypatch.setenv(_shm.FAKE_NODES_ENV, "2")
    assert _shm._fake_nodes() == (2, "block")


if __name__ == "__main__":
    try:
        _worker(sys.argv[1])
    except BaseException:  # end the whole job (the other ranks would wait in a collective)
        import traceback

        from mpi4py import MPI

        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
