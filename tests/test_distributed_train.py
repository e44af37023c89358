"""Data-parallel training (issue 8): Trainer(distributed=...), SyncBatchNorm and
``gradfuse train --distributed`` under ``mpiexec -n 2`` (skipped without mpi4py/mpiexec), plus
the single-process parts (argument checks, the sharded loader) without MPI."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpi_util import check_ok, json_lines, requires_mpi, run_mpi

import gradfuse as gf
from gradfuse.train import Trainer
from gradfuse.train._distributed import ShardedLoader, resolve

SCRIPTS = Path(__file__).parent / "dist_scripts_train"
sys.path.insert(0, str(SCRIPTS))
import _common as C  # noqa: E402


def _close(a: dict, b: dict, tol=2e-4):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


# ------------------------------------------------------------------ without MPI


def test_distributed_argument_is_checked_before_anything():
    net = gf.nn.Linear(2, 2)
    opt = gf.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="distributed"):
        Trainer(net, opt, gf.nn.MSELoss(), distributed="yes")
    with pytest.raises(ValueError, match="distributed"):
        Trainer(net, opt, gf.nn.MSELoss(), distributed={"zero": True})
    with pytest.raises(TypeError, match="distributed"):
        Trainer(net, opt, gf.nn.MSELoss(), distributed={"shard_optimizer_state": 1})
    assert resolve(None) is None and resolve(False) is None  # not launched: one process
    tr = Trainer(net, opt, gf.nn.MSELoss(), verbose=0)
    assert not tr.distributed and tr.is_main and tr.dp is None
    # a DataParallel in one process (MPI not initialized) trains its module as one process
    dp = gf.distributed.DataParallel(net, opt)
    tr = Trainer(dp, opt, gf.nn.MSELoss(), verbose=0, metric=None)
    assert tr.model is net and not tr.distributed
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(dp, gf.optim.SGD(net.parameters(), lr=0.1), gf.nn.MSELoss())
    with pytest.raises(ValueError, match="distributed"):
        Trainer(dp, opt, gf.nn.MSELoss(), distributed=False)
    x = gf.tensor(np.ones((4, 2), np.float32))
    assert len(tr.fit([(x, x)], epochs=2).epochs) == 2


def test_sharded_loader_single_rank_is_the_loader_itself():
    (xt, yt), _ = C.data()
    ds = gf.data.TensorDataset(xt, yt)
    plain = gf.data.DataLoader(ds, batch_size=16, shuffle=True, generator=3)
    wrapped = ShardedLoader(gf.data.DataLoader(ds, batch_size=16, shuffle=True, generator=3),
                            world=1, rank=0)
    for _ in range(2):  # two epochs: the generator moves on the same way
        a = [yb.numpy().tolist() for _, yb in plain]
        b = [yb.numpy().tolist() for _, yb in wrapped]
        assert a == b
    assert wrapped.state_dict()["generator"].tobytes() == \
        plain.state_dict()["generator"].tobytes()


def test_sharded_loader_ranks_cover_the_global_batches_and_resume():
    (xt, yt), _ = C.data()
    ds = gf.data.TensorDataset(xt, yt)
    single = [yb.numpy() for _, yb in gf.data.DataLoader(ds, batch_size=16, shuffle=True,
                                                          generator=8)]
    shards = [ShardedLoader(gf.data.DataLoader(ds, batch_size=8, shuffle=True, generator=8), 2, r)
              for r in range(2)]
    per_rank = [[yb.numpy() for _, yb in s] for s in shards]
    for b, ref in enumerate(single):
        np.testing.assert_array_equal(np.sort(np.concatenate([p[b] for p in per_rank])),
                                      np.sort(ref))
    # the state is the single loader's format: a single-process loader continues it
    s = ShardedLoader(gf.data.DataLoader(ds, batch_size=8, shuffle=True, generator=8), 2, 1)
    it = iter(s)
    next(it), next(it)
    sd = s.state_dict()
    assert sd["batches_done"] == 2
    one = gf.data.DataLoader(ds, batch_size=16, shuffle=True, generator=0)
    one.load_state_dict(sd)
    np.testing.assert_array_equal(np.concatenate([yb.numpy() for _, yb in one]),
                                  np.concatenate(single[2:]))
    s2 = ShardedLoader(gf.data.DataLoader(ds, batch_size=8, shuffle=True, generator=0), 2, 1)
    s2.load_state_dict(sd)
    rest = [yb.numpy() for _, yb in s2]
    assert len(rest) == len(single) - 2
    np.testing.assert_array_equal(rest[0], per_rank[1][2])
    with pytest.raises(ValueError, match="batches_done"):
        s2.load_state_dict({"generator": sd["generator"], "batches_done": 99})


@pytest.mark.parametrize("n,w,b", [(11, 2, 3), (12, 2, 3), (13, 3, 2), (7, 3, 1), (5, 4, 2)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharded_loader_steps_are_the_single_loaders_steps(n, w, b, drop_last):
    # with drop_last, padded shards used to add a step of partly repeated samples that the
    # one-process loader of batch W x B drops (N=11, W=2, B=3: 2 steps instead of 1)
    ds = gf.data.TensorDataset(np.zeros((n, 1), np.float32), np.arange(n))
    single = [yb.numpy() for _, yb in gf.data.DataLoader(ds, batch_size=w * b, shuffle=True,
                                                          drop_last=drop_last, generator=2)]
    shards = [[yb.numpy() for _, yb in ShardedLoader(
        gf.data.DataLoader(ds, batch_size=b, shuffle=True, drop_last=drop_last, generator=2),
        w, r)] for r in range(w)]
    for r in range(w):
        assert len(shards[r]) == len(single)
    exact = len(single) if drop_last or n % w == 0 else len(single) - 1  # the last one padded
    for k in range(exact):
        np.testing.assert_array_equal(np.sort(np.concatenate([s[k] for s in shards])),
                                      np.sort(single[k]))


def test_resume_at_epoch_end_with_a_distributed_sampler_of_the_users():
    # the Trainer calls set_epoch before each epoch; a resumed run used to train the epoch after
    # the checkpoint in the order of the checkpoint's epoch (the loader's saved sampler state
    # overwrote set_epoch at the next iter)
    n = 12
    ds = gf.data.TensorDataset(np.arange(n, dtype=np.float32).reshape(n, 1),
                               np.arange(n, dtype=np.float32).reshape(n, 1))

    class Seen(gf.train.Callback):
        def __init__(self):
            self.seen = []

        def on_batch_start(self, trainer, step):
            self.seen.append((trainer.epoch + 1, trainer.batch[1].numpy().ravel().tolist()))

    def make():
        gf.manual_seed(0)
        net = gf.nn.Linear(1, 1)
        loader = gf.data.DataLoader(ds, batch_size=4, sampler=gf.data.DistributedSampler(
            ds, num_replicas=1, rank=0, seed=3))
        seen = Seen()
        return Trainer(net, gf.optim.SGD(net.parameters(), lr=0.01), gf.nn.MSELoss(),
                       metric=None, verbose=0, callbacks=[seen]), loader, seen

    tr, loader, seen = make()
    tr.fit(loader, epochs=1)
    sd = tr.state_dict()
    tr.fit(loader, epochs=3)
    tr2, loader2, seen2 = make()
    tr2.load_state_dict(sd)
    tr2.fit(loader2, epochs=3)
    assert seen2.seen == [s for s in seen.seen if s[0] > 1]
    np.testing.assert_array_equal(tr2.model.weight.detach().numpy(), tr.model.weight.detach().numpy())


@pytest.mark.parametrize("n,b", [(23, 5), (20, 5), (3, 5)])
def test_eval_shards_cover_what_the_loader_yields(n, b):
    # drop_last was ignored: the ranks evaluated the short last batch the one-process loader
    # drops, so val_loss differed from a one-process run's
    from gradfuse.train._distributed import shard_for_eval

    ds = gf.data.TensorDataset(np.zeros((n, 1), np.float32), np.arange(n))
    for drop_last in (False, True):
        one = gf.data.DataLoader(ds, batch_size=b, drop_last=drop_last)
        want = sorted(int(v) for _, yb in one for v in yb.numpy())
        got = []
        for r in range(3):
            sh, sharded = shard_for_eval(one, 3, r)
            assert sharded
            got += [int(v) for _, yb in sh for v in yb.numpy()]
        assert sorted(got) == want
    shuffled = gf.data.DataLoader(ds, batch_size=b, drop_last=True, shuffle=True, generator=0)
    assert shard_for_eval(shuffled, 3, 1) == (shuffled, False)


# ------------------------------------------------------------------ under mpiexec


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The one-process reference: global batch 2 x PER_RANK_BATCH, BatchNorm1d."""
    d = tmp_path_factory.mktemp("single")
    tr, train, val = C.trainer(2 * C.PER_RANK_BATCH, sync_bn=False, ckpt_dir=str(d),
                               every_steps=8)
    h = tr.fit(train, val=val, epochs=C.EPOCHS)
    return d, C.params(tr.model), h.to_dict()


def _resume_single(path):
    tr, train, val = C.trainer(2 * C.PER_RANK_BATCH, sync_bn=False)
    tr.fit(train, val=val, epochs=C.EPOCHS, resume_from=path)
    return C.params(tr.model), tr.history.to_dict()


@requires_mpi
def test_two_ranks_equal_one_process_and_checkpoints_move_both_ways(tmp_path, single_run):
    sdir, p1, h1 = single_run
    res = run_mpi(SCRIPTS / "train_equivalence.py", n=2,
                  args=(tmp_path, sdir / "step8.safetensors"), timeout=180)
    check_ok(res)
    (line,) = json_lines(res.stdout)
    assert line["world"] == 2
    failed = [k for k, v in line["checks"].items() if not v]
    assert not failed, f"{failed}\n{res.stderr}"
    for k in ("unclosed_trainers_reclaimed", "close_frees_the_reducer",
              "second_trainer_same_optimizer_refused", "second_trainer_after_close"):
        assert k in line["checks"]
    for run in ("dist", "zero", "resumed"):
        p = dict(np.load(tmp_path / f"params_{run}.npz"))
        _close(p, p1)  # the same parameters as one process with the global batch
    # the History of the distributed run matches the single process's (sample-weighted means)
    hd = json.loads((tmp_path / "history_dist.json").read_text())
    for e1, ed in zip(h1["epochs"], hd["epochs"]):
        for k in ("train_loss", "train_metric", "val_loss", "val_metric", "lr", "grad_norm"):
            assert ed[k] == pytest.approx(e1[k], rel=1e-4, abs=1e-5), k
    assert [s["step"] for s in hd["steps"]] == [s["step"] for s in h1["steps"]]
    # checkpoints of the 2-rank runs (epoch end, mid-epoch, ZeRO) resume in one process
    for ck in ("dist/epoch1", "dist/step8", "zero/epoch1"):
        p, h = _resume_single(tmp_path / f"{ck}.safetensors")
        _close(p, p1)
        assert len(h["epochs"]) == C.EPOCHS


@requires_mpi
def test_killed_rank_ends_the_job_and_the_last_checkpoint_loads(tmp_path):
    t0 = time.monotonic()
    try:
        res = run_mpi(SCRIPTS / "kill_rank.py", n=2, args=(tmp_path,), timeout=60)
    except subprocess.TimeoutExpired as e:  # pragma: no cover - the failure being tested
        pytest.fail(f"the job hung after a rank was killed:\n{e.stdout}\n{e.stderr}")
    assert time.monotonic() - t0 < 60
    assert res.returncode != 0
    assert "finished" not in res.stdout
    saved = sorted(os.listdir(tmp_path))
    assert "step6.safetensors" in saved and "step8.safetensors" not in saved, saved
    tr, train, val = C.trainer(2 * C.PER_RANK_BATCH, sync_bn=False)
    tr.load_checkpoint(tmp_path / "step6.safetensors")
    assert tr.global_step == 6
    tr.fit(train, val=val, epochs=C.EPOCHS)  # and the run goes on from there
    assert tr.global_step == C.EPOCHS * C.N_TRAIN // (2 * C.PER_RANK_BATCH)


@requires_mpi
def test_cli_train_distributed_prints_and_saves_once(tmp_path):
    save = tmp_path / "model.safetensors"
    res = run_mpi(SCRIPTS / "cli_main.py", n=2, timeout=120, args=(
        "train", "--distributed", "--sync-bn", "--dataset", "spirals", "--epochs", "2",
        "--hidden", "16", "--batch-size", "16", "--lr-schedule", "cosine", "--lr", "0.01",
        "--save", save))
    check_ok(res)
    out = res.stdout
    # the per-step cosine runs over the steps the ranks take (N / (2 x 16) per epoch), not over
    # the unsharded loader's twice as many: it used to end half-way, at lr 0.005
    last = [ln.split() for ln in out.splitlines() if ln.strip().startswith("2 ")][-1]
    assert float(last[5]) < 1e-3, out
    assert out.count("final: val acc") == 1, out
    assert out.count("per rank x 2 ranks = 32, SyncBatchNorm") == 1, out
    assert out.count("epoch 2/2") == 1, out  # the progress lines: rank 0 only
    assert out.count("saved the model's state_dict") == 1, out
    state = gf.load(save)
    assert any(k.endswith("running_mean") for k in state)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no stray temp file


@requires_mpi
def test_cli_data_set_failing_on_one_rank_exits_every_rank(tmp_path):
    # the failing rank used to exit alone (code 2) while the other waited in DataParallel's
    # first collective for ever
    args = ("train", "--distributed", "--dataset", "spirals", "--epochs", "1", "--hidden", "8")
    try:
        res = run_mpi(SCRIPTS / "cli_main.py", n=2, timeout=60, args=args,
                      env={"GF_TEST_LOAD_FAILS_ON_RANK": "1"})
    except subprocess.TimeoutExpired as e:  # pragma: no cover - the failure being tested
        pytest.fail(f"the job hung:\n{e.stdout}\n{e.stderr}")
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("--dataset: data.idx: no such file on rank 1's machine (on rank 1)") \
        == 2, res.stderr
    # --distributed without a launcher: one process, and it says so
    res = subprocess.run([sys.executable, str(SCRIPTS / "cli_main.py"), *args], text=True,
                         capture_output=True, timeout=120,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                                           "MPI_LOCALNRANKS")})
    assert res.returncode == 0, res.stderr
    assert "--distributed in a world of one process" in res.stderr
    assert "per rank x 1 ranks" in res.stdout


def test_study_loaders_drop_a_one_sample_last_batch_per_rank():
    # 3 ranks x batch 3 over 1200 samples: 400 per rank, a last batch of 1 on every rank,
    # which per-rank BatchNorm refuses (the job aborted); one process: 1200 % 3 == 0
    from gradfuse.study.runner import make_loaders

    data = gf.study.load_dataset("spirals")
    assert len(data.x_train) == 1200
    assert not make_loaders(data, 3, 0, "batch")[0].drop_last
    assert make_loaders(data, 3, 0, "batch", world=3)[0].drop_last
    assert not make_loaders(data, 3, 0, "none", world=3)[0].drop_last
    train = make_loaders(data, 3, 0, "batch", world=3)[0]
    assert all(len(yb) == 3 for _, yb in ShardedLoader(train, 3, 2))


def test_cli_under_a_launcher_without_distributed_warns(monkeypatch, capsys):
    from gradfuse.__main__ import main

    monkeypatch.setattr(gf.distributed, "launched", lambda: True)
    assert main(["train", "--dataset", "spirals", "--epochs", "1", "--hidden", "8",
                 "--train-size", "64"]) in (0, 1)
    assert "without --distributed: every process trains the whole run on its own" in \
        capsys.readouterr().err
    assert not gf.distributed.is_initialized()


def _docs_block() -> str:
    from docs_util import python_block

    return python_block("docs/distributed.md", "Trainer and CLI")


def test_docs_example_runs_in_one_process(capsys):
    exec(compile(_docs_block(), "docs/distributed.md Trainer and CLI", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("1 rank(s): val acc ")
    assert float(out.split()[-1]) > 0.8


@requires_mpi
def test_docs_example_runs_under_mpiexec(tmp_path):
    script = tmp_path / "train_dp.py"
    script.write_text(_docs_block())
    res = run_mpi(script, n=2, timeout=120)
    check_ok(res)
    lines = [ln for ln in res.stdout.splitlines() if "rank(s): val acc" in ln]
    assert len(lines) == 1 and lines[0].startswith("2 rank(s)"), res.stdout
    assert float(lines[0].split()[-1]) > 0.8


def test_cli_distributed_flags_are_checked(monkeypatch, capsys):
    from gradfuse.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--sync-bn", "--epochs", "1"])
    assert e.value.code == 2 and "--sync-bn: needs --distributed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # no BatchNorm to synchronize: refused, not ignored
        main(["train", "--distributed", "--sync-bn", "--norm", "layer", "--epochs", "1"])
    assert e.value.code == 2 and "--sync-bn: needs --norm batch, got --norm layer" in \
        capsys.readouterr().err
    assert not gf.distributed.is_initialized()
    monkeypatch.setattr(gf.distributed, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(["train", "--distributed", "--epochs", "1"])
    assert e.value.code == 2 and "--distributed: mpi4py is not installed" in \
        capsys.readouterr().err
    assert not gf.distributed.is_initialized()
