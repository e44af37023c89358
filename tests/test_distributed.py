"""gradfuse.distributed: the communication API, reducers, DataParallel and ZeRO-1.

The multi-process tests launch scripts from tests/dist_scripts under ``mpiexec`` (a few
launches, each checking many things) and are skipped when mpi4py or mpiexec is missing; the
single-process behaviour (before ``init``) is tested in this process.
"""

import sys
import time
from pathlib import Path

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
    # 3 ranks: uneven shards; integer-valued data makes the references exact; DataParallel
    # with and without ZeRO-1 (shards cutting segments) against one process
    res = run_mpi("comm_api.py", n=3, timeout=120)
    check_ok(res)
    lines = json_lines(res.stdout)
    assert sorted(d["rank"] for d in lines) == [0, 1, 2]
    for d in lines:
        bad = [k for k, ok in d["checks"].items() if not ok]
        assert not bad, f"rank {d['rank']}: failed {bad}\n{res.stderr}"
        for k in ("avg_bitwise_equal", "reduce_scatter_float32_1500017", "dp_zero_bitwise",
                  "dp_zero_matches_single", "dp_matches_single", "reinit_other_comm_refused", "init_comm_null_refused",
                  "mixed_zero_params_match_single", "mixed_zero_state_matches_single",
                  "mixed_zero_bitwise", "mixed_params_match_single", "reducer_read_only_buf_default",
                  "reducer_read_only_buf_mpi", "reducer_int_buf_default", "reducer_int_buf_mpi"):
            assert k in d["checks"]


# ------------------------------------------------------------------ DataParallel, ZeRO-1
sys.path.insert(0, str(Path(__file__).parent / "dist_scripts"))
import dp_common as C  # noqa: E402


def _close(a, b):
    # float32 summation order: the 2-rank gradient is the mean of two half-batch means, the
    # single process's one mean over the batch; 20 Adam steps carry the difference along
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """One mpiexec launch (2 ranks) of dist_scripts/data_parallel.py; returns
    (report, outdir, reference) where reference is the single-process run of 20 steps."""
    out = tmp_path_factory.mktemp("dp")
    model, opt = C.single_run(steps=10)
    gf.save({"model": model.state_dict(), "optim": opt.state_dict()}, out / "single_step10.gf")
    C.single_run(start=10, model=model, opt=opt)
    ref = {"params": C.params(model), "optim": opt.state_dict()}
    res = run_mpi("data_parallel.py", n=2, args=[out], timeout=240)
    check_ok(res)
    (report,) = json_lines(res.stdout)
    return report, out, ref


@requires_mpi
def test_dp_checks_pass_on_every_rank(dp_run):
    report, _, _ = dp_run
    assert len(report["checks"]) == 2
    for r, checks in enumerate(report["checks"]):
        bad = [k for k, ok in checks.items() if not ok]
        assert not bad, f"rank {r}: failed {bad}"
    # the checks that matter most are there (a renamed check must not vanish silently)
    for k in ("plain_bitwise_every_step", "zero_bitwise_every_step", "zero_state_is_shard",
              "plain_nonfinite_skipped_everywhere", "zero_clip_norm_matches_single",
              "zero_nadam_params_match_single", "resumed_bitwise",
              "plain_utils_clip_matches_single", "zero_accumulate_params_match_single",
              "plain_add_param_group_unchanged", "zero_add_param_group_then_step",
              "plain_rebound_data_broadcast", "zero_rebound_data_broadcast",
              "zero_bad_load_unchanged", "zero_bad_load_then_step",
              "zero_utils_clip_value_matches_single", "plain_utils_clip_handset_grads_averaged",
              "plain_backward_after_sync_matches_single", "zero_backward_after_sync_unchanged",
              "zero_backward_after_sync_matches_single", "dropped_dataparallels_reclaimed"):
        assert k in report["checks"][0]


@requires_mpi
@pytest.mark.parametrize("tag", ["plain", "zero"])
def test_dp_equals_single_process(dp_run, tag):
    # 2 ranks x batch 64 end 20 Adam steps where 1 process x batch 128 does
    _, out, ref = dp_run
    got = np.load(out / f"{tag}.npz")
    assert sorted(got.files) == sorted(ref["params"])
    for k, v in ref["params"].items():
        _close(got[k], v)
    # the optimizer state: the full dict (gathered from the shards under ZeRO)
    sd = gf.load(out / f"{tag}_optim.gf")
    assert sorted(sd["state"]) == sorted(ref["optim"]["state"])
    for i, st in ref["optim"]["state"].items():
        assert float(sd["state"][i]["step"]) == float(st["step"]) == 20
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(sd["state"][i][k], st[k], rtol=2e-3, atol=1e-6)
    assert sd["param_groups"] == ref["optim"]["param_groups"]


@requires_mpi
def test_zero_checkpoint_resumes_in_one_process(dp_run):
    # written by the 2-rank ZeRO run after step 10, continued here for 10 steps
    _, out, ref = dp_run
    ck = gf.load(out / "zero_step10.gf")
    model = C.make_model(seed=99)
    model.load_state_dict(ck["model"])
    opt = gf.optim.Adam(model.parameters(), **C.ADAM)
    opt.load_state_dict(ck["optim"])
    C.single_run(start=10, model=model, opt=opt)
    for k, v in C.params(model).items():
        _close(v, ref["params"][k])


@requires_mpi
def test_zero_resumes_from_single_process_checkpoint(dp_run):
    # the single-process checkpoint of step 10 loaded by both ranks under ZeRO, 10 more steps
    _, out, ref = dp_run
    got = np.load(out / "zero_resumed.npz")
    for k, v in ref["params"].items():
        _close(got[k], v)


@requires_mpi
def test_dp_errors_are_raised_on_every_rank(dp_run):
    report, _, _ = dp_run
    errs = report["errors"]
    for msg in errs["shape_mismatch"]:
        assert msg.startswith("ValueError") and "'0.weight'" in msg and "rank 1" in msg
        assert "(34, 20)" in msg and "(33, 20)" in msg
    for msg in errs["extra_param"]:
        assert msg.startswith("ValueError") and "'3.weight'" in msg
    for msg in errs["lr_mismatch"]:
        assert msg.startswith("ValueError") and "lr = 0.2 on rank 1 but lr = 0.1 on rank 0" in msg
    for msg in errs["steps_mismatch"]:
        assert msg.startswith("ValueError") and "step counts [0, 0, 0, 0] on rank 1" in msg
    for msg in errs["lamb_zero"]:
        assert msg.startswith("ValueError") and "shard_optimizer_state" in msg
    for msg in errs["hyper_keys_mismatch"]:
        assert msg.startswith("ValueError") and "zz_note" in msg and "rank 1" in msg
    for msg in errs["zero_bad_load"]:
        assert msg.startswith("ValueError") and "exp_avg" in msg and "shape" in msg
    for tag in ("zero_backward_after_sync", "zero_backward_after_step"):
        for msg in errs[tag]:
            assert msg.startswith("RuntimeError") and "cannot be averaged again" in msg
    for msg in errs["zero_utils_clip"]:
        assert msg.startswith("RuntimeError") and "optimizer.clip_grad_norm_" in msg
    for tag in ("plain", "zero"):
        for msg in errs[f"{tag}_add_param_group"]:
            assert msg.startswith("RuntimeError") and "add_param_group" in msg
        for msg in errs[f"{tag}_active_mismatch"]:
            assert msg.startswith("RuntimeError") and "'2.bias'" in msg
            assert "ranks [0]" in msg and "ranks [1]" in msg


def test_dataparallel_single_process_is_transparent():
    # no init (or one rank): nothing attached, training is exactly the single-process one
    if dist.is_initialized():
        pytest.skip("the process group was initialized in this process")
    m1, o1 = C.single_run(steps=3)
    model = C.make_model()
    opt = gf.optim.Adam(model.parameters(), **C.ADAM)
    dp = dist.DataParallel(model, opt, shard_optimizer_state=True)
    assert opt._grad_sync is None and dp.module is model and dp.optimizer is opt
    C.single_run(steps=3, model=dp, opt=opt)
    for (k, v), w in zip(C.params(m1).items(), model.parameters()):
        assert np.array_equal(v, w.data), k
    dp.close()


def test_dataparallel_rejects_bad_arguments():
    model = C.make_model()
    opt = gf.optim.Adam(model.parameters())
    with pytest.raises(TypeError, match="model"):
        dist.DataParallel(object(), opt)
    with pytest.raises(TypeError, match="optimizer"):
        dist.DataParallel(model, "adam")
    with pytest.raises(TypeError, match="shard_optimizer_state"):
        dist.DataParallel(model, opt, shard_optimizer_state=1)
    with pytest.raises(ValueError, match="shard_optimizer_state"):
        dist.DataParallel(model, gf.optim.LAMB(model.parameters()), shard_optimizer_state=True)


@requires_mpi
@pytest.mark.parametrize("mode", ["raise", "kill", "thread", "cli"])
def test_failing_rank_ends_the_job(mode):
    # rank 1 raises (or is SIGKILLed) at step 3 while rank 0 goes on into the next all-reduce:
    # the job must end by itself, quickly, with a clear error; run_mpi's timeout turns a hang
    # into a failure instead of a stalled suite
    t0 = time.monotonic()
    # block-buffered stdout (as in a pipe without PYTHONUNBUFFERED): the hook flushes it
    res = run_mpi("fatal.py", n=2, args=[mode], timeout=60, env={"PYTHONUNBUFFERED": ""})
    elapsed = time.monotonic() - t0
    assert res.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.0f} s to end"
    assert "rank 1 fails at step 3" in res.stdout
    assert "finished" not in res.stdout  # rank 0 did not complete training alone
    if mode == "raise":
        assert "gradfuse.distributed: rank 1: RuntimeError: rank 1 fails on purpose" in res.stderr
        assert "Traceback" in res.stderr
    elif mode == "thread":
        assert ("gradfuse.distributed: rank 1: in thread 'loader': RuntimeError: rank 1 fails "
                "on purpose") in res.stderr
        assert "Traceback" in res.stderr
    elif mode == "cli":
        assert "gradfuse.distributed: rank 1: exit status 2" in res.stderr
    else:
        both = res.stdout + res.stderr  # hydra reports the signal on stdout
        assert "signal 9" in both or "Killed" in both, both


@requires_mpi
def test_docs_example_two_ranks_matches_one_process(tmp_path, monkeypatch, capsys):
    # docs/distributed.md's DataParallel example: under mpiexec -n 2 and in this process (one
    # rank); both checkpoints hold the same model up to float32 summation order
    import re

    from docs_util import python_block

    block = python_block("docs/distributed.md", "gf.distributed and DataParallel")
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    script = tmp_path / "readme_dp.py"
    script.write_text(block)
    res = run_mpi(script, n=2, cwd=tmp_path / "two", timeout=120)
    check_ok(res)
    assert re.fullmatch(r"2 ranks, last loss \d+\.\d{3}\n", res.stdout), res.stdout
    monkeypatch.chdir(tmp_path / "one")
    exec(compile(block, "docs/distributed.md DataParallel", "exec"), {})
    assert capsys.readouterr().out.startswith("1 ranks, last loss")
    two, one = gf.load(tmp_path / "two" / "ckpt.gf"), gf.load(tmp_path / "one" / "ckpt.gf")
    for k, v in one["model"].items():
        np.testing.assert_allclose(two["model"][k], v, rtol=1e-4, atol=1e-5)
    assert sorted(two["optim"]["state"]) == sorted(one["optim"]["state"])
    # the full ZeRO state loads into a single-process optimizer
    model = gf.nn.Sequential(gf.nn.Linear(20, 64), gf.nn.ReLU(), gf.nn.Linear(64, 2))
    model.load_state_dict(two["model"])
    opt = gf.optim.Adam(model.parameters(), lr=1e-2)
    opt.load_state_dict(two["optim"])
    assert float(opt.state_dict()["state"][0]["step"]) == 40


def test_init_without_mpi4py_is_a_clear_error(monkeypatch):
    if dist.is_initialized():
        pytest.skip("the process group was initialized in this process")
    from gradfuse.distributed import _comm

    monkeypatch.setattr(_comm, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="mpi4py is not installed"):
        dist.init()
    assert not dist.is_initialized()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arena_rebind_buffers_keeps_training_identical(dtype):
    # what DataParallel does to the arenas (into a reducer's buffers), in one process: the
    # views follow, the bound step rebinds, training continues bitwise as without the move
    def run(move):
        gf.manual_seed(0)
        model = gf.nn.Sequential(gf.nn.Linear(5, 7), gf.nn.Tanh(), gf.nn.Linear(7, 3))
        if dtype == np.float64:
            model.double()
        opt = gf.optim.Adam(model.parameters(), lr=1e-2)
        x = gf.Tensor(np.linspace(-1, 1, 40, dtype=dtype).reshape(8, 5))
        for s in range(4):
            if move and s == 2:
                a = opt._arenas[0][0][1]
                old_grad = a.grad
                p_buf, g_buf = np.zeros(a.n + 3, dtype)[3:], np.zeros(a.n, dtype)
                a.rebind_buffers(param=p_buf, grad=g_buf)
                assert a.param is p_buf and a.grad is g_buf and a.slot_cache is None
                assert all(np.shares_memory(p.data, p_buf) for p in model.parameters())
                assert all(np.shares_memory(p.grad.data, g_buf) for p in model.parameters())
                assert np.array_equal(g_buf, old_grad)
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        return [p.data.copy() for p in model.parameters()]

    for a, b in zip(run(False), run(True)):
        assert np.array_equal(a, b)


def test_arena_rebind_buffers_rejects_bad_buffers():
    model = gf.nn.Linear(3, 2)
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    a = opt._arenas[0][0][1]
    before = a.param
    with pytest.raises(ValueError, match="grad"):
        a.rebind_buffers(param=np.zeros(a.n, np.float32), grad=np.zeros(a.n + 1, np.float32))
    with pytest.raises(ValueError, match="param"):
        a.rebind_buffers(param=np.zeros(a.n, np.float64))
    assert a.param is before and np.shares_memory(model.weight.data, before)
