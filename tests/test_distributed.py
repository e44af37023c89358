"""gradfuse.distributed: the communication API, reducers, DataParallel and ZeRO-1.

The multi-process tests launch scripts from tests/dist_scripts under ``mpiexec`` (a few
launches, each checking many things) and are skipped when mpi4py or mpiexec is missing; the
single-process behaviour (before ``init``) is tested in this process.
"""

import sys

import numpy as np
import pytest
from mpi_util import check_ok, json_lines, requires_mpi, run_mpi

import gradfuse as gf
import gradfuse.distributed as dist


def test_import_does_not_load_mpi4py():
    # `import gradfuse` must work without mpi4py and must not initialize MPI
    import subprocess

    code = "import sys, gradfuse; print('mpi4py.MPI' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_single_process_defaults():
    if dist.is_initialized():
        pytest.skip("the process group was initialized in this process")
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank(),
            dist.get_local_world_size()) == (0, 1, 0, 1)
    assert dist.is_main() and dist.get_comm() is None
    x = np.arange(6, dtype=np.float32)
    assert dist.all_reduce_(x, op="avg") is x and np.array_equal(x, np.arange(6))
    t = gf.ones(3)
    assert dist.broadcast_(t) is t
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object(5) == 5
    dist.barrier()
    with pytest.raises(ValueError, match="op"):
        dist.all_reduce_(x, op="prod")
    with pytest.raises(ValueError, match="src"):
        dist.broadcast_(x, src=1)
    with pytest.raises(TypeError, match="x"):
        dist.all_reduce_([1.0])


def test_launched_reads_environment(monkeypatch):
    for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(k, raising=False)
    assert not dist.launched()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not dist.launched()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist.launched()


def test_shard_range_covers_in_rank_order():
    for n in (0, 1, 16, 33, 1000, 12345):
        for w in (1, 2, 3, 4, 7):
            rs = [dist.shard_range(n, r, w) for r in range(w)]
            assert rs[0][0] == 0 and rs[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(rs, rs[1:]))
            assert all(lo % 16 == 0 and lo <= hi for lo, hi in rs)
            sizes = [hi - lo for lo, hi in rs]
            assert max(sizes) - min(sizes) <= 16
    with pytest.raises(ValueError, match="rank"):
        dist.shard_range(10, 2, 2)


@requires_mpi
def test_comm_api_and_reducer_three_ranks():
    # 3 ranks: uneven shards; integer-valued data makes the references exact
    res = run_mpi("comm_api.py", n=3, timeout=120)
    check_ok(res)
    lines = json_lines(res.stdout)
    assert sorted(d["rank"] for d in lines) == [0, 1, 2]
    for d in lines:
        bad = [k for k, ok in d["checks"].items() if not ok]
        assert not bad, f"rank {d['rank']}: failed {bad}\n{res.stderr}"
