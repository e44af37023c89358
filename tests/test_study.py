"""The optimization study: grid, builders, aggregation and ranking, writers, and the CLI."""

import csv
import json
import math
import os

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.__main__ import main
from gradfuse.study import (
    RunConfig,
    aggregate,
    build_model,
    build_optimizer,
    build_scheduler,
    check_choices,
    default_lr,
    effects,
    expand_grid,
    format_table,
    load_dataset,
    rank,
    varying_axes,
    write_json,
    write_results_csv,
    write_runs_csv,
)

TINY = ["--optimizers", "sgd,adam", "--init", "he", "--norm", "batch", "--activation", "relu",
        "--epochs", "2", "--seeds", "2", "--train-size", "400", "--batch-size", "32", "--jobs", "1"]


# ---------------------------------------------------------------- grid and builders


def test_expand_grid_order_and_default_lrs():
    grid = expand_grid(["sgd", "adam"], ["he", "normal"], ["none"], ["relu", "tanh"], ["none"])
    assert len(grid) == 8
    assert [c.optimizer for c in grid] == ["sgd"] * 4 + ["adam"] * 4  # optimizer outermost
    assert grid[0] == RunConfig("sgd", "he", "none", "relu", "none", default_lr("sgd"))
    assert grid[1].activation == "tanh" and grid[2].init == "normal"
    assert len({c.key for c in grid}) == 8
    lrs = expand_grid(["adam"], lrs=[0.1, 0.01])
    assert [c.lr for c in lrs] == [0.1, 0.01]


def test_check_choices_names_the_flag():
    assert check_choices("--norm", ["none", "batch"], ["none", "batch", "layer"]) == [
        "none", "batch"]
    with pytest.raises(ValueError, match=r"--norm: unknown value 'bacth'"):
        check_choices("--norm", ["bacth"], ["none", "batch"])
    with pytest.raises(ValueError, match="--norm: expected at least one value"):
        check_choices("--norm", [], ["none"])
    with pytest.raises(ValueError, match="--norm: batch given twice"):
        check_choices("--norm", ["batch", "batch"], ["batch"])


@pytest.mark.parametrize("norm,activation,layer_types", [
    ("none", "relu", ["Linear", "ReLU", "Linear", "ReLU", "Linear"]),
    ("batch", "sigmoid", ["Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d", "Sigmoid",
                          "Linear"]),
    ("layer", "tanh", ["Linear", "LayerNorm", "Tanh", "Linear", "LayerNorm", "Tanh", "Linear"]),
])
def test_build_model_layers(norm, activation, layer_types):
    model = build_model(RunConfig("adam", "he", norm, activation), 7, (5, 3), 4, seed=0)
    assert [type(m).__name__ for m in model] == layer_types
    out = model(gf.from_numpy(np.ones((2, 7), np.float32)))
    assert out.shape == (2, 4)


def test_build_model_init_scales_and_seed():
    # the weights' std follows the scheme: N(0, 1) for "normal", sqrt(2 / fan_in) for He,
    # N(0, 0.01^2) for "small"; biases are zero
    for init, std in (("normal", 1.0), ("he", math.sqrt(2 / 256)), ("small", 0.01)):
        model = build_model(RunConfig(init=init), 256, (512,), 10, seed=3)
        w = model[0].weight.data
        assert abs(w.std() / std - 1) < 0.02, init
        assert not model[0].bias.data.any()
    a = build_model(RunConfig(init="xavier"), 8, (6,), 3, seed=5)
    b = build_model(RunConfig(init="xavier"), 8, (6,), 3, seed=5)
    c = build_model(RunConfig(init="xavier"), 8, (6,), 3, seed=6)
    np.testing.assert_array_equal(a[0].weight.data, b[0].weight.data)
    assert not np.array_equal(a[0].weight.data, c[0].weight.data)


def test_build_optimizer_names():
    params = lambda: build_model(RunConfig(), 4, (3,), 2).parameters()  # noqa: E731
    opt = build_optimizer(RunConfig(optimizer="momentum", lr=0.02), params())
    assert type(opt).__name__ == "SGD" and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["lr"] == 0.02
    assert type(build_optimizer(RunConfig(optimizer="adagrad"), params())).__name__ == "Adagrad"
    assert build_optimizer(RunConfig(optimizer="nesterov"), params()).param_groups[0]["nesterov"]


def _lrs(schedule, lr=0.1, epochs=4, steps=5):
    model = build_model(RunConfig(), 4, (3,), 2)
    cfg = RunConfig(optimizer="momentum", schedule=schedule, lr=lr)
    opt = build_optimizer(cfg, model.parameters())
    sched = build_scheduler(cfg, opt, epochs, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        if sched is not None:
            sched.step()
    return np.array(out)


def test_build_scheduler_shapes():
    assert (_lrs("none") == 0.1).all()
    cos = _lrs("cosine")
    assert cos[0] == pytest.approx(0.1) and cos[-1] < 0.002 and (np.diff(cos) <= 1e-12).all()
    step = _lrs("step")
    assert step[9] == pytest.approx(0.1) and step[10] == pytest.approx(0.01)
    assert step[15] == pytest.approx(0.001)
    one = _lrs("onecycle")
    assert one.max() == pytest.approx(0.1) and one[0] < 0.01 and one[-1] < 1e-4
    warm = _lrs("warmup")
    assert warm[0] == pytest.approx(0.02) and warm[4] == pytest.approx(0.1) and warm[-1] < 0.01


def test_load_dataset_standardizes_on_the_train_split():
    ds = load_dataset("digits", train_size=300)
    assert ds.x_train.shape == (300, 64) and ds.x_val.shape == (359, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    keep = ds.x_train.std(0) > 0
    np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(0)[keep], 1, rtol=1e-4)
    assert ds.n_classes == 10
    with pytest.raises(ValueError, match="--dataset: unknown dataset 'mnist'"):
        load_dataset("mnist")


def _write_idx(path, arr, gz=False):
    import gzip
    import struct

    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)


def test_load_dataset_idx_files_and_spirals(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (50, 4, 3)), rng.integers(0, 3, 50)
    _write_idx(tmp_path / "img.idx.gz", images, gz=True)
    _write_idx(tmp_path / "lab.idx", labels)
    ds = load_dataset(f"idx:{tmp_path / 'img.idx.gz'},{tmp_path / 'lab.idx'}")
    assert ds.x_train.shape == (40, 12) and ds.x_val.shape == (10, 12)
    assert sorted(np.concatenate([ds.y_train, ds.y_val]).tolist()) == sorted(labels.tolist())
    _write_idx(tmp_path / "short.idx", labels[:7])
    with pytest.raises(ValueError, match="--dataset: 50 images but 7 labels"):
        load_dataset(f"idx:{tmp_path / 'img.idx.gz'},{tmp_path / 'short.idx'}")
    with pytest.raises(ValueError, match="--dataset: expected idx:"):
        load_dataset("idx:only-one-file")
    sp = load_dataset("spirals")
    assert sp.n_features == 2 and sp.n_classes == 3 and len(sp.x_train) == 1200


# ---------------------------------------------------------------- aggregation and ranking


def _run(opt, seed, accs, losses=None, diverged=False, wall=1.0, threshold=0.9):
    losses = losses or [1.0 / (i + 1) for i in range(len(accs))]
    cfg = RunConfig(optimizer=opt, lr=default_lr(opt))
    hist = [{"epoch": i + 1, "train_loss": losses[i], "train_acc": a, "val_loss": losses[i],
             "val_acc": a, "lr": cfg.lr, "grad_norm": 1.0, "time": 0.1}
            for i, a in enumerate(accs)]
    reached = [h["epoch"] for h in hist if np.isfinite(h["val_acc"]) and h["val_acc"] >= threshold]
    return {"key": cfg.key, "config": cfg.as_dict(), "seed": seed, "history": hist,
            "final_val_acc": accs[-1], "final_val_loss": losses[-1],
            "final_train_loss": losses[-1], "best_val_acc": max(accs),
            "epochs_to_threshold": reached[0] if reached else None, "diverged": diverged,
            "stopped_epoch": len(accs), "wall_time": wall,
            "grad_norms": {"fc1 (0)": [[0, 1e-3], [1, 2e-3]], "fc2 (2)": [[0, 1.0], [1, 1.0]]},
            "grad_flags": {"vanishing": 0, "exploding": 0}}


def _constructed():
    return [
        _run("sgd", 0, [0.5, 0.90, 0.93]), _run("sgd", 1, [0.6, 0.80, 0.95]),
        _run("adam", 0, [0.92, 0.93, 0.94]), _run("adam", 1, [0.91, 0.93, 0.94]),
        # same mean accuracy as adam but reaches 0.9 later: ranked after it
        _run("rmsprop", 0, [0.5, 0.91, 0.94]), _run("rmsprop", 1, [0.5, 0.92, 0.94]),
        # the best accuracy, but one seed diverged: ranked last
        _run("momentum", 0, [0.97, 0.98, 0.99]),
        _run("momentum", 1, [0.1, float("nan")], losses=[2.0, float("nan")], diverged=True),
        _run("adagrad", 0, [0.3, 0.4, 0.5]), _run("adagrad", 1, [0.3, 0.4, 0.6]),
    ]


def test_aggregate_means_and_stds_against_numpy():
    rows = {r["optimizer"]: r for r in aggregate(_constructed())}
    sgd = rows["sgd"]
    assert sgd["n_runs"] == 2 and sgd["seeds"] == [0, 1]
    assert sgd["val_acc_mean"] == pytest.approx(np.mean([0.93, 0.95]))
    assert sgd["val_acc_std"] == pytest.approx(np.std([0.93, 0.95]))
    assert sgd["epochs_to_threshold_mean"] == pytest.approx(np.mean([2, 3]))
    assert sgd["n_reached"] == 2 and sgd["n_diverged"] == 0
    assert sgd["val_acc_curve"] == pytest.approx([0.55, 0.85, 0.94])
    mom = rows["momentum"]
    assert mom["n_diverged"] == 1 and mom["val_acc_mean"] == pytest.approx(0.99)  # finite only
    assert mom["val_acc_curve"] == pytest.approx([np.mean([0.97, 0.1]), 0.98, 0.99])
    ada = rows["adagrad"]
    assert ada["epochs_to_threshold_mean"] is None and ada["n_reached"] == 0


def test_rank_orders_by_accuracy_speed_and_divergence():
    rows = rank(aggregate(_constructed()))
    assert [r["optimizer"] for r in rows] == ["adam", "rmsprop", "sgd", "adagrad", "momentum"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]


def test_format_table_rows_and_columns():
    rows = rank(aggregate(_constructed()))
    text = format_table(rows, threshold=0.9, axes=["optimizer", "lr"])
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    assert lines[0].split()[:3] == ["#", "optimizer", "lr"] and "ep>=0.9" in lines[0]
    assert lines[2].split()[:3] == ["1", "adam", "0.001"]
    assert "0.940 +- 0.000" in lines[2]
    assert lines[-1].split()[1] == "momentum" and "1/2" in lines[-1]  # diverged count
    assert "- (0/2)" in lines[-2]  # adagrad never reached the threshold
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned
    short = format_table(rows, top=1, axes=["optimizer"]).splitlines()
    assert [ln.split()[0] for ln in short[2:]] == ["1", "...", "3", "4", "5"]
    assert format_table(rows, top=2, axes=["optimizer"]) == format_table(rows, axes=["optimizer"])


def test_varying_axes_and_effects():
    rows = rank(aggregate(_constructed()))
    assert varying_axes(rows) == ["optimizer"]  # each optimizer at its own default lr
    eff = effects(rows)
    assert list(eff) == ["optimizer"]
    assert eff["optimizer"][0][0] == "momentum"  # its finite seed has the top accuracy
    assert [v for v, *_ in eff["optimizer"]][-1] == "adagrad"


def test_writers_round_trip(tmp_path):
    results = _constructed()
    rows = rank(aggregate(results))
    write_results_csv(rows, tmp_path / "results.csv")
    write_runs_csv(results, tmp_path / "runs.csv")
    write_json({"runs": results}, tmp_path / "runs.json")
    with open(tmp_path / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert [g["optimizer"] for g in got] == [r["optimizer"] for r in rows]
    assert float(got[0]["val_acc_mean"]) == pytest.approx(rows[0]["val_acc_mean"])
    assert got[3]["epochs_to_threshold_mean"] == ""  # adagrad: never reached
    with open(tmp_path / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == len(results)
    assert runs[0]["val_acc_history"] == "0.5000;0.9000;0.9300"
    assert runs[7]["diverged"] == "True"
    # one entry per epoch, NaN included: a skipped epoch would shift the later ones
    assert runs[7]["val_acc_history"] == "0.1000;nan"
    assert runs[7]["train_loss_history"] == "2;nan"
    data = json.loads((tmp_path / "runs.json").read_text())  # strict JSON: NaN became null
    assert data["runs"][7]["history"][1]["val_acc"] is None
    assert not list(tmp_path.glob(".tmp-*"))
    # written through a temporary file, but with a plain file's permissions (mkstemp's are
    # 0600: results nobody else on the machine could read)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.csv", "runs.csv", "runs.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ---------------------------------------------------------------- the CLI


def test_compare_tiny_grid_writes_table_csv_json(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["compare", *TINY, "--out", str(out), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "2 configurations x 2 seeds = 4 runs" in text
    table = text[text.index("Ranked by"):].splitlines()
    assert table[1].split()[:2] == ["#", "optimizer"]
    body = [ln.split() for ln in table[3:5]]
    assert sorted(b[1] for b in body) == ["adam", "sgd"] and [b[0] for b in body] == ["1", "2"]
    assert "ETA" in text and "plots skipped (--no-plots)" in text
    for name in ("results.csv", "results.json", "runs.csv", "runs.json"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == [b[1] for b in body]
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert len(runs) == 4 and {r["seed"] for r in runs} == {0, 1}
    for r in runs:
        assert len(r["history"]) == 2 and not r["diverged"]
        assert 0.5 < r["final_val_acc"] <= 1
        # the five Linear layers of the default 64-128-128-64-64-10 MLP (BatchNorm layers
        # are left out), input to output, one norm per step: 13 batches of 32 x 2 epochs
        assert list(r["grad_norms"]) == ["fc1 (0)", "fc2 (3)", "fc3 (6)", "fc4 (9)", "fc5 (12)"]
        for series in r["grad_norms"].values():
            assert [s for s, _ in series] == list(range(1, 27))
            assert all(0 < g < 1e3 for _, g in series)
    assert not list(out.glob("*.png"))


def test_compare_writes_png_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "res"
    assert main(["compare", *TINY, "--seeds", "1", "--init", "he,normal", "--out",
                 str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "plots: " in text
    for name in ("loss_curves.png", "accuracy.png", "grad_norms.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", name


def test_compare_without_matplotlib_says_why(tmp_path, capsys, monkeypatch):
    from gradfuse.study import plots

    monkeypatch.setattr(plots, "available", lambda: (False, "matplotlib is not installed"))
    assert main(["compare", *TINY, "--optimizers", "adam", "--seeds", "1", "--out",
                 str(tmp_path), "-q"]) == 0
    assert "plots skipped: matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "results.csv").stat().st_size > 0


def test_compare_diverged_runs_are_kept_and_ranked_last(tmp_path, capsys):
    # plain SGD at lr 1e3 without normalization overflows within a few steps; the
    # NonFiniteGuard stops the run, and the study goes on
    assert main(["compare", *TINY, "--optimizers", "sgd", "--norm", "none", "--lr", "1e3,0.1",
                 "--out",
                 str(tmp_path), "--no-plots", "-q"]) == 0
    text = capsys.readouterr().out
    table = text[text.index("Ranked by"):].splitlines()
    first, last = table[3].split(), table[4].split()
    assert "0.1" in first and "0/2" in first
    assert "1000" in last and "2/2" in last
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [r["diverged"] for r in runs] == [True, True, False, False]


def test_worker_processes_give_the_same_results(tmp_path, capsys):
    # each run is seeded on its own: 2 spawned workers reproduce the in-process numbers
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["compare", *TINY, "--out", str(one), "--no-plots", "-q"]) == 0
    assert main(["compare", *TINY, "--jobs", "2", "--out", str(two), "--no-plots", "-q"]) == 0
    assert "4 runs on 2 processes" in capsys.readouterr().out
    a = json.loads((one / "runs.json").read_text())["runs"]
    b = json.loads((two / "runs.json").read_text())["runs"]
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["seed"] == rb["seed"] and ra["history"][-1]["val_acc"] == rb["history"][-1][
            "val_acc"]
        assert [h["train_loss"] for h in ra["history"]] == [h["train_loss"] for h in rb["history"]]
        assert ra["grad_norms"] == rb["grad_norms"]
    assert (one / "results.csv").read_text().splitlines()[1].split(",")[:8] == \
        (two / "results.csv").read_text().splitlines()[1].split(",")[:8]


@pytest.mark.parametrize("args,flag", [
    (["--optimizers", "sgd,adm"], "--optimizers"),
    (["--epochs", "0"], "--epochs"),
    (["--init", "glorious"], "--init"),
    (["--init", "he,constant"], "--init"),  # a gf.nn.init name that needs a value
    (["--norm", "group"], "--norm"),
    (["--activation", "swish"], "--activation"),
    (["--lr-schedule", "linear"], "--lr-schedule"),
    (["--lr", "-0.1"], "--lr"),
    (["--seeds", "0"], "--seeds"),
    (["--seed", str(2**64)], "--seed"),  # the generators take 64-bit seeds: was a traceback
    (["--seed", str(2**64 - 1), "--seeds", "2"], "--seed"),
    (["--jobs", "0"], "--jobs"),
    (["--top", "0"], "--top"),
    (["--out", __file__], "--out"),
    (["--hidden", "64,x"], "--hidden"),
    (["--val-fraction", "0.9999"], "--val-fraction"),  # rounds to every sample
    (["--hidden=-5"], "--hidden"),  # "-" separates widths: was read as 5
    (["--hidden", "64,-32"], "--hidden"),
    (["--threshold", "1.5"], "--threshold"),
    (["--dataset", "mnist"], "--dataset"),
    (["--dataset", "idx:/nonexistent/a.idx,/nonexistent/b.idx"], "--dataset"),
    # one lr twice (or two that print the same) would make two configurations with one key,
    # merged into one row of 2 x --seeds runs
    (["--lr", "0.1,0.1"], "--lr"),
    (["--lr", "0.1,0.1000001"], "--lr"),
    # BatchNorm cannot normalize batches of one sample: refused, not a traceback mid-run
    (["--norm", "none,batch", "--batch-size", "1"], "--batch-size"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:3"], "--device"),  # no such GPU here, or not the one gradfuse uses
])
def test_bad_flags_exit_2_naming_the_flag(args, flag, tmp_path, capsys):
    out = tmp_path / "res"
    with pytest.raises(SystemExit) as e:
        main(["compare", "--epochs", "1", "--seeds", "1", "--out", str(out), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {flag}" in err
    assert not out.exists()  # refused before anything was trained or written


def test_train_one_configuration_and_save(tmp_path, capsys):
    ckpt = tmp_path / "model.safetensors"
    assert main(["train", "--optimizer", "adam", "--init", "he", "--norm", "batch",
                 "--epochs", "2", "--train-size", "160", "--save", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert "adam/he/batch/relu/cosine" in text
    table = text[text.index(" epoch  train loss"):].splitlines()
    assert [ln.split()[0] for ln in table[1:3]] == ["1", "2"]
    assert "final: val acc" in text
    state = gf.load(str(ckpt))
    model = build_model(RunConfig(norm="batch"), 64, (128, 128, 64, 64), 10, seed=1)
    model.load_state_dict(state)
    assert set(state) == set(model.state_dict())


def test_train_takes_one_value_per_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--optimizer", "sgd,adam"])
    assert e.value.code == 2 and "error: --optimizer: train takes one value" in \
        capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs a folder no one can write into")
def test_unwritable_out_and_save_refused_before_training(tmp_path, capsys):
    # /proc is a folder that not even root can create files in: the error must come before
    # the training, not as a traceback after it
    with pytest.raises(SystemExit) as e:
        main(["compare", *TINY, "--out", "/proc", "--no-plots"])
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert "error: --out: cannot write into '/proc'" in cap.err and "Ranked by" not in cap.out
    for save, msg in ((tmp_path, "is a folder"), ("/proc/model.safetensors", "cannot write")):
        with pytest.raises(SystemExit) as e:
            main(["train", "--epochs", "1", "--train-size", "100", "--save", str(save)])
        assert e.value.code == 2
        cap = capsys.readouterr()
        assert "error: --save: " in cap.err and msg in cap.err
        assert "final:" not in cap.out


def test_rerun_into_the_same_out_leaves_no_stale_plots(tmp_path, capsys):
    # the figures of an earlier study in --out would sit beside results they do not show
    for name in ("loss_curves.png", "accuracy.png", "grad_norms.png", "notes.png"):
        (tmp_path / name).write_bytes(b"old")
    assert main(["compare", *TINY, "--optimizers", "adam", "--seeds", "1", "--out",
                 str(tmp_path), "--no-plots", "-q"]) == 0
    text = capsys.readouterr().out
    assert "removed the plots of an earlier run" in text
    assert "ETA" not in text  # -q: no progress lines, and no promise of them
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.png", "results.csv", "results.json", "runs.csv", "runs.json"]


def test_load_dataset_refuses_labels_that_are_not_class_indices(tmp_path, capsys):
    import struct

    def write(path, arr, code):
        with open(path, "wb") as f:
            f.write(bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
                    + arr.tobytes())

    rng = np.random.default_rng(0)
    write(tmp_path / "img.idx", rng.integers(0, 256, (20, 3)).astype(np.uint8), 0x08)
    write(tmp_path / "neg.idx", np.array([-1, 0, 1, 2] * 5, np.int8), 0x09)
    write(tmp_path / "frac.idx", np.linspace(0, 2, 20).astype(">f4"), 0x0D)
    write(tmp_path / "one.idx", np.zeros((1, 3), np.uint8), 0x08)
    write(tmp_path / "onel.idx", np.zeros(1, np.uint8), 0x08)
    for labels, msg in (("neg.idx", "labels must be class indices >= 0, found -1"),
                        ("frac.idx", "labels must be whole numbers, found 0.105")):
        spec = f"idx:{tmp_path / 'img.idx'},{tmp_path / labels}"
        with pytest.raises(ValueError, match=f"--dataset: {msg}"):
            load_dataset(spec)
        # the CLI: exit 2 before training (was a traceback from the loss mid-run)
        with pytest.raises(SystemExit) as e:
            main(["train", "--epochs", "1", "--dataset", spec])
        assert e.value.code == 2 and "error: --dataset: labels" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--dataset: 1 sample; at least 2 are needed"):
        load_dataset(f"idx:{tmp_path / 'one.idx'},{tmp_path / 'onel.idx'}")


def test_grad_norm_picks_with_infinite_norms_are_quiet(recwarn):
    from gradfuse.study import plots

    # a diverging run records inf norms before the guard stops it: inf / inf was a NaN
    # depth ratio and a RuntimeWarning printed in the middle of compare's output
    results = [_run("sgd", 0, [0.1]), _run("adam", 0, [0.9])]
    results[0]["grad_norms"] = {"fc1 (0)": [[1, 3e3], [2, float("inf")], [3, float("inf")]],
                                "fc2 (2)": [[1, 6e3], [2, float("inf")], [3, float("nan")]]}
    results[0]["diverged"] = True
    rows = rank(aggregate(results))
    assert plots._depth_ratio(results[0]) == pytest.approx(math.log10(0.5))
    picks = plots.pick_contrasting(rows, results)
    assert [why for why, _ in picks][:2] == ["most vanishing", "largest gradients"]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_one_seed_shows_no_std(tmp_path, capsys):
    # the spread over one seed is unknown, not 0.000
    rows = rank(aggregate([_run("adam", 0, [0.9, 0.94]), _run("sgd", 0, [0.5, 0.8]),
                           _run("sgd", 1, [0.5, 0.9])]))
    assert rows[0]["val_acc_std"] is None and rows[1]["val_acc_std"] == pytest.approx(0.05)
    lines = format_table(rows, axes=["optimizer"]).splitlines()
    assert lines[2].split()[:3] == ["1", "adam", "0.940"] and "+-" not in lines[2]
    assert "0.850 +- 0.050" in lines[3]
    assert main(["compare", *TINY, "--optimizers", "adam", "--seeds", "1", "--out",
                 str(tmp_path), "--no-plots", "-q"]) == 0
    text = capsys.readouterr().out
    assert "(mean over 1 seed)" in text and "+-" not in text
    with open(tmp_path / "results.csv") as f:
        assert next(csv.DictReader(f))["val_acc_std"] == ""


def test_train_diverging_run_exits_1_with_an_aligned_table(capsys):
    assert main(["train", "--optimizer", "sgd", "--init", "normal", "--norm", "none",
                 "--lr", "1e4", "--epochs", "2", "--train-size", "100"]) == 1
    text = capsys.readouterr().out
    assert "DIVERGED at epoch" in text
    table = text[text.index(" epoch  train loss"):].split("\n\n")[0].splitlines()
    # a loss of 1e35 printed as %10.4f was 41 characters wide and shifted its row
    assert len({len(line) for line in table}) == 1, table


def test_run_grid_stops_the_pool_when_a_run_fails(monkeypatch):
    # an error in one run used to wait for every queued run (maybe an hour) before it showed
    import concurrent.futures as cf
    import time

    from gradfuse.study import runner

    started = []

    def task(args):
        cfg, _, seed, _ = args
        started.append(seed)
        if seed == 0:
            raise RuntimeError("boom")
        time.sleep(0.05)
        return None

    class ThreadPool(cf.ThreadPoolExecutor):  # the same executor API, inspectable in-process
        def __init__(self, max_workers, mp_context=None, initializer=None, initargs=()):
            super().__init__(max_workers=1)

    monkeypatch.setattr(runner, "_run_task", task)
    monkeypatch.setattr(cf, "ProcessPoolExecutor", ThreadPool)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run_grid([RunConfig()], None, seeds=range(20), jobs=2, log=lambda s: None)
    time.sleep(0.2)
    assert len(started) < 5, started


def test_train_without_scikit_learn_exits_2_naming_the_dataset(monkeypatch, capsys):
    # `pip install gradfuse[distributed]` brings no scikit-learn, which the default digits
    # data set needs: a usage error (exit 2 on every rank under --distributed), not a traceback
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: --dataset: load_digits needs scikit-learn" in err
    assert "gradfuse[examples]" in err
