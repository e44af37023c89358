"""gf.train: Trainer (fit/evaluate/predict, schedules, clipping, resume), History, callbacks,
and Module.register_forward_hook."""

import io
import json
import math

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.train import (
    Callback,
    CSVLogger,
    EarlyStopping,
    GradientMonitor,
    History,
    JSONLogger,
    ModelCheckpoint,
    NonFiniteGuard,
    ProgressBar,
    Trainer,
)

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    X, y = gf.data.load_digits()
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    n_val = 360
    sc = gf.data.StandardScaler()
    xtr = sc.fit_transform(X[n_val:])
    xva = sc.transform(X[:n_val])
    return (xtr, y[n_val:]), (xva, y[:n_val])


def loaders(digits, batch_size=64, n_train=None, seed=0):
    (xtr, ytr), (xva, yva) = digits
    if n_train is not None:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    train = gf.data.DataLoader(gf.data.TensorDataset(xtr, ytr), batch_size=batch_size,
                               shuffle=True, generator=seed)
    val = gf.data.DataLoader(gf.data.TensorDataset(xva, yva), batch_size=256)
    return train, val


def mlp(seed=0, hidden=64, dropout=0.0, norm=False, width=64):
    gf.manual_seed(seed)
    layers = [gf.nn.Linear(width, hidden)]
    if norm:
        layers.append(gf.nn.BatchNorm1d(hidden))
    layers.append(gf.nn.ReLU())
    if dropout:
        layers.append(gf.nn.Dropout(dropout))
    layers.append(gf.nn.Linear(hidden, 10))
    return gf.nn.Sequential(*layers)


def params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ the acceptance tests

def test_digits_adam_reaches_95_percent_within_20_epochs(digits):
    train, val = loaders(digits)
    model = mlp(seed=0, hidden=64)
    trainer = Trainer(model, gf.optim.Adam(model.parameters(), lr=2e-3),
                      gf.nn.CrossEntropyLoss(), verbose=0)
    h = trainer.fit(train, val=val, epochs=20)
    accs = [e["val_metric"] for e in h.epochs]
    assert len(h.epochs) == 20 and len(h.steps) == 20 * len(train)
    assert max(accs) >= 0.95, accs
    assert accs[-1] >= 0.95, accs
    assert h.epochs[-1]["train_loss"] < h.epochs[0]["train_loss"]
    # evaluate() agrees with the last epoch's validation numbers
    r = trainer.evaluate(val)
    assert r["metric"] == pytest.approx(accs[-1], abs=0)
    assert r["loss"] == pytest.approx(h.epochs[-1]["val_loss"], rel=1e-12)
    # and with a numpy computation of the accuracy from predict()
    (_, _), (xva, yva) = digits
    pred = trainer.predict(xva, batch_size=100)
    assert pred.shape == (len(xva), 10)
    assert (pred.argmax(1) == yva).mean() == pytest.approx(accs[-1], abs=0)


def make_resumable(digits, callbacks=()):
    gf.manual_seed(0)
    model = gf.nn.Sequential(gf.nn.Linear(64, 32), gf.nn.BatchNorm1d(32), gf.nn.ReLU(),
                             gf.nn.Dropout(0.2), gf.nn.Linear(32, 10))
    opt = gf.optim.AdamW(model.parameters(), lr=3e-3)
    sched = gf.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)
    train, val = loaders(digits, batch_size=32, n_train=300)
    trainer = Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched,
                      scheduler_interval="step", callbacks=list(callbacks), grad_clip=1.0,
                      verbose=0)
    return trainer, train, val


def test_resume_from_checkpoint_is_bitwise_identical(digits, tmp_path):
    full, train, val = make_resumable(digits)
    full.fit(train, val=val, epochs=5)

    path = tmp_path / "run.ckpt"
    first, train, val = make_resumable(digits, [ModelCheckpoint(path, save_best_only=False,
                                                                every=2)])
    first.fit(train, val=val, epochs=3)  # saves after epochs 2 and 3 (the last)
    assert first.callbacks[-1].saved == [(2, str(path)), (3, str(path))]
    # a fresh process-like start: other seeds, other random state, then resume
    resumed, train, val = make_resumable(digits)
    gf.manual_seed(999)
    gf.rand(7)
    h = resumed.fit(train, val=val, epochs=5, resume_from=path)
    for k, v in params(full.model).items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    so, sr = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for i, st in so["state"].items():
        for key, arr in st.items():
            np.testing.assert_array_equal(sr["state"][i][key], arr)
    assert resumed.scheduler.get_last_lr() == full.scheduler.get_last_lr()
    assert [e["train_loss"] for e in h.epochs] == [e["train_loss"] for e in full.history.epochs]
    assert len(h.steps) == len(full.history.steps)
    assert resumed.epoch == 5 and resumed.global_step == full.global_step
    assert bytes(gf.get_rng_state().numpy()) == bytes(full_rng_after(digits))
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temporary files left


class NumpyShuffleLoader:
    """A loader without state_dict(): a numpy generator draws each epoch's order at iter()."""

    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = np.random.default_rng(seed)

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = self.generator.permutation(len(self.x))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


@pytest.mark.parametrize("kind", ["DataLoader", "list", "numpy generator"])
@pytest.mark.parametrize("at_step", [13, 20])  # inside epoch 2 of 10 steps; its last step
def test_resume_mid_epoch_is_bitwise_identical(digits, tmp_path, kind, at_step):
    (xtr, ytr), (xva, yva) = digits
    xtr, ytr = xtr[:300], ytr[:300]  # 10 batches of 32 (the last of 12)

    def make(callbacks=()):
        trainer, train, val = make_resumable(digits, callbacks)
        if kind == "list":
            train = [(xtr[i:i + 32], ytr[i:i + 32]) for i in range(0, 300, 32)]
        elif kind == "numpy generator":
            train = NumpyShuffleLoader(xtr, ytr, 32, seed=1)
        return trainer, train, val

    full, train, val = make()
    full.fit(train, val=val, epochs=3)
    ck = ModelCheckpoint(tmp_path / "s{step}.ckpt", save_best_only=False, every=100,
                         every_steps=at_step)
    first, train, val = make([ck])
    first.fit(train, val=val, epochs=2)
    assert ck.saved[0] == (2, at_step, str(tmp_path / f"s{at_step}.ckpt"))
    resumed, train, val = make()
    gf.manual_seed(5)
    h = resumed.fit(train, val=val, epochs=3, resume_from=ck.saved[0][2])
    for k, v in params(full.model).items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    assert len(h.steps) == len(full.history.steps) == 30
    assert [s["loss"] for s in h.steps] == [s["loss"] for s in full.history.steps]
    for e, ef in zip(h.epochs, full.history.epochs):
        for key in ("train_loss", "train_metric", "val_loss", "val_metric", "lr", "grad_norm"):
            assert e[key] == ef[key], (e["epoch"], key)


def full_rng_after(digits):
    t, train, val = make_resumable(digits)
    t.fit(train, val=val, epochs=5)
    return gf.get_rng_state().numpy()


def test_resume_with_plateau_scheduler_and_early_stopping_state(digits, tmp_path):
    def make(verbose=0):
        model = mlp(seed=1, hidden=32, dropout=0.1)
        opt = gf.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = gf.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        es = EarlyStopping(patience=10, restore_best=True)
        train, val = loaders(digits, n_train=400, seed=3)
        return Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched,
                       callbacks=[es, ModelCheckpoint(tmp_path / "e{epoch}.ckpt",
                                                      save_best_only=False)],
                       verbose=verbose), train, val
    full, train, val = make()
    full.fit(train, val=val, epochs=4)
    resumed, train, val = make(verbose=2)  # with a ProgressBar in front: states still match
    resumed.fit(train, val=val, epochs=4, resume_from=tmp_path / "e2.ckpt")
    for k, v in params(full.model).items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    assert resumed.scheduler.state_dict() == full.scheduler.state_dict()
    probe, _, _ = make(verbose=2)
    probe.load_checkpoint(tmp_path / "e2.ckpt")
    assert probe.callbacks[1].best == min(e["val_loss"] for e in full.history.epochs[:2])
    es, es_full = resumed.callbacks[1], full.callbacks[0]
    assert isinstance(es, EarlyStopping) and (es.best, es.wait) == (es_full.best, es_full.wait)


def absurd_lr_trainer(digits, action, **kw):
    model = mlp(seed=0)
    guard = NonFiniteGuard(action=action, **kw)
    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=1e12), gf.nn.CrossEntropyLoss(),
                      callbacks=[guard], verbose=0)
    return trainer, guard


def test_nonfinite_guard_stops_on_absurd_learning_rate(digits):
    train, val = loaders(digits, n_train=640)
    trainer, guard = absurd_lr_trainer(digits, "stop")
    with np.errstate(all="ignore"):  # numpy's overflow warnings in the matmuls
        h = trainer.fit(train, val=val, epochs=5)
    assert h.diverged and not h.stopped_early
    assert len(guard.events) == 1
    ev = guard.events[0]
    assert ev["what"] in ("loss", "grad") and ev["step"] == h.steps[-1]["step"]
    assert ev["layer"] in ("0", "2", "loss_fn")
    assert f"step {ev['step']}" in ev["message"] and repr(ev["layer"]) in ev["message"]
    assert ev["step"] < 5 * len(train)  # it stopped
    assert not math.isfinite(h.steps[-1]["loss"]) or not math.isfinite(h.steps[-1]["grad_norm"])
    # the non-finite update was not applied: the parameters are finite
    for v in trainer.model.state_dict().values():
        assert np.isfinite(v).all()


def test_nonfinite_guard_skip_keeps_parameters_finite_and_reports_each_step(digits, capsys):
    train, _ = loaders(digits, n_train=320)
    trainer, guard = absurd_lr_trainer(digits, "skip")
    trainer.verbose = 1  # the guard speaks on stderr
    with np.errstate(all="ignore"):
        h = trainer.fit(train, epochs=2)
    assert not h.diverged
    assert len(guard.events) >= 2
    steps = [e["step"] for e in guard.events]
    assert steps == sorted(set(steps))
    for v in trainer.model.state_dict().values():
        assert np.isfinite(v).all()
    err = capsys.readouterr().err
    assert f"at step {steps[0]} " in err
    # max_skips ends the run after that many consecutive skips
    trainer, guard = absurd_lr_trainer(digits, "skip", max_skips=2)
    with np.errstate(all="ignore"):
        h = trainer.fit(train, epochs=2)
    assert h.diverged and len(guard.events) == 2


def test_nonfinite_guard_names_the_layer_with_nonfinite_gradient():
    model = gf.nn.Sequential(gf.nn.Linear(3, 4), gf.nn.ReLU(), gf.nn.Linear(4, 2))
    guard = NonFiniteGuard("skip")

    class Poison(Callback):  # a NaN in the second layer's gradient only
        def on_after_backward(self, trainer, logs):
            model[2].weight.grad.data[0, 0] = np.nan
            logs["grad_norm"] = trainer._grad_norm()

    x = np.ones((8, 3), np.float32)
    y = np.zeros(8, np.int64)
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    before = params(model)
    Trainer(model, opt, gf.nn.CrossEntropyLoss(), callbacks=[Poison(), guard],
            verbose=0).fit([(x, y)], epochs=1)
    assert guard.events == [{"step": 1, "epoch": 1, "what": "grad", "layer": "2",
                             "message": guard.events[0]["message"]}]
    for k, v in before.items():  # skipped: nothing moved
        np.testing.assert_array_equal(model.state_dict()[k], v)


def deep_sigmoid(init, norm, seed=0, depth=20, width=32):
    gf.manual_seed(seed)
    layers, w = [], 64
    for _ in range(depth - 1):
        fc = gf.nn.Linear(w, width)
        if init == "small":
            gf.nn.init.normal_(fc.weight, 0.0, 0.01)
        else:
            gf.nn.init.xavier_uniform_(fc.weight)
        gf.nn.init.zeros_(fc.bias)
        layers.append(fc)
        if norm:
            layers.append(gf.nn.BatchNorm1d(width))
        layers.append(gf.nn.Sigmoid())
        w = width
    layers.append(gf.nn.Linear(w, 10))
    return gf.nn.Sequential(*layers)


@pytest.mark.parametrize("init,norm,vanishes", [("small", False, True), ("xavier", True, False)])
def test_gradient_monitor_vanishing_gradients(digits, init, norm, vanishes):
    train, _ = loaders(digits, n_train=256)
    model = deep_sigmoid(init, norm)
    mon = GradientMonitor(every=2)
    Trainer(model, gf.optim.SGD(model.parameters(), lr=0.01), gf.nn.CrossEntropyLoss(),
            callbacks=[mon], verbose=0).fit(train, epochs=1)
    n_layers = 20 + (19 if norm else 0)
    assert len(mon.records) == 2 * n_layers  # steps 1 and 3 of 4
    assert {r["step"] for r in mon.records} == {1, 3}
    vanishing = [f for f in mon.flags if f["kind"] == "vanishing"]
    if vanishes:
        assert vanishing
        # the first layers vanish (the gradient shrinks on the way back), not the last
        assert {f["layer"] for f in vanishing} >= {"0", "2"}
        assert "38" not in {f["layer"] for f in vanishing}
    else:
        assert vanishing == []
        assert min(r["grad_norm"] for r in mon.records) > 1e-4
    assert not [f for f in mon.flags if f["kind"] == "exploding"]
    # the hooks are gone after fit
    assert all(m.__dict__.get("_forward_hooks") is None for m in model.modules())


def test_gradient_monitor_statistics_match_numpy():
    gf.manual_seed(3)
    model = gf.nn.Sequential(gf.nn.Linear(5, 7), gf.nn.ReLU(), gf.nn.Linear(7, 3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    w0 = params(model)
    # numpy reference of the forward: layer outputs and dead units of the ReLU
    h = x @ w0["0.weight"].T + w0["0.bias"]
    dead = float((np.maximum(h, 0) == 0).all(axis=0).mean())
    mon = GradientMonitor(every=1, vanishing=0.0, exploding=1e30)
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    grads = {}

    class Grab(Callback):
        def on_after_backward(self, trainer, logs):
            grads.update({k: p.grad.data.copy() for k, p in model.named_parameters()})

    Trainer(model, opt, gf.nn.CrossEntropyLoss(), callbacks=[Grab(), mon], metric=None,
            verbose=0).fit([(x, y)], epochs=1)
    r0, r2 = mon.records
    assert (r0["layer"], r2["layer"]) == ("0", "2")
    np.testing.assert_allclose(r0["act_mean"], h.mean(), rtol=1e-5)
    np.testing.assert_allclose(r0["act_std"], h.std(), rtol=1e-5)
    assert r0["dead_frac"] == dead and r2["dead_frac"] is None
    g0 = math.sqrt(sum((grads[k].astype(np.float64) ** 2).sum() for k in ("0.weight", "0.bias")))
    np.testing.assert_allclose(r0["grad_norm"], g0, rtol=1e-6)
    # update ratio of SGD: lr * ||g|| / ||W||
    wn = math.sqrt(sum((w0[k].astype(np.float64) ** 2).sum() for k in ("0.weight", "0.bias")))
    np.testing.assert_allclose(r0["update_ratio"], 0.1 * g0 / wn, rtol=1e-4)
    assert mon.flags == []
    s = mon.summary()
    assert s["0"]["n"] == 1 and s["0"]["grad_norm"] == r0["grad_norm"]


def test_gradient_monitor_flags_exploding():
    gf.manual_seed(0)
    model = gf.nn.Sequential(gf.nn.Linear(4, 4), gf.nn.Linear(4, 2))
    x = np.full((4, 4), 1e2, np.float32)
    y = np.full((4, 2), 1e4, np.float32)
    mon = GradientMonitor(exploding=10.0)
    Trainer(model, gf.optim.SGD(model.parameters(), lr=0.0), gf.nn.MSELoss(), metric=None,
            callbacks=[mon], verbose=0).fit([(x, y)], epochs=1)
    assert [(f["kind"], f["layer"]) for f in mon.flags] == [("exploding", "0"),
                                                              ("exploding", "1")]
    assert [f["value"] for f in mon.flags] == [r["grad_norm"] for r in mon.records]


# ------------------------------------------------------------------ the loop itself

def hand_loop(model, opt, batches, epochs, clip=None, sched=None):
    """The reference: the loop a user would write."""
    loss_fn = gf.nn.CrossEntropyLoss()
    losses, norms = [], []
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            loss = loss_fn(model(gf.from_numpy(x)), gf.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            g = np.concatenate([p.grad.data.ravel().astype(np.float64)
                                for p in model.parameters()])
            norms.append(float(np.sqrt((g ** 2).sum())))
            if clip:
                opt.clip_grad_norm_(clip)
            opt.step()
            losses.append(loss.item())
        if sched is not None:
            sched.step()
    return losses, norms


@pytest.mark.parametrize("clip", [None, 0.5])
def test_fit_matches_hand_written_loop(digits, clip):
    (xtr, ytr), _ = digits
    batches = [(xtr[i:i + 50], ytr[i:i + 50]) for i in range(0, 333, 50)]  # last batch of 33
    ref = mlp(seed=5, dropout=0.3)
    ropt = gf.optim.Adam(ref.parameters(), lr=1e-2)
    rsched = gf.optim.lr_scheduler.StepLR(ropt, step_size=1, gamma=0.5)
    gf.manual_seed(11)
    losses, norms = hand_loop(ref, ropt, batches, 3, clip, rsched)

    model = mlp(seed=5, dropout=0.3)
    opt = gf.optim.Adam(model.parameters(), lr=1e-2)
    sched = gf.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    gf.manual_seed(11)
    h = Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched, grad_clip=clip,
                verbose=0).fit(batches, epochs=3)
    for k, v in params(ref).items():
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)
    assert [s["loss"] for s in h.steps] == losses
    np.testing.assert_allclose([s["grad_norm"] for s in h.steps], norms, rtol=1e-5)
    assert [s["step"] for s in h.steps] == list(range(1, 22))
    assert [s["epoch"] for s in h.steps] == [e for e in (1, 2, 3) for _ in range(7)]
    assert [e["lr"] for e in h.epochs] == [1e-2, 5e-3, 2.5e-3]
    assert [s["lr"] for s in h.steps][6:8] == [1e-2, 5e-3]
    # epoch loss = sample-weighted mean of batch losses
    w = [len(b[0]) for b in batches]
    assert h.epochs[0]["train_loss"] == pytest.approx(np.dot(losses[:7], w) / sum(w), rel=1e-12)
    assert h.epochs[0]["grad_norm"] == pytest.approx(np.mean([s["grad_norm"] for s in
                                                              h.steps[:7]]), rel=1e-12)
    e = h.epochs[0]
    assert set(e) == {"epoch", "train_loss", "train_metric", "val_loss", "val_metric", "lr",
                      "grad_norm", "time", "samples_per_s"}
    assert e["val_loss"] is None and e["val_metric"] is None and e["samples_per_s"] > 0
    assert set(h.steps[0]) == {"step", "epoch", "loss", "lr", "grad_norm"}


def test_scheduler_per_step_and_plateau_on_validation_metric(digits):
    train, val = loaders(digits, n_train=128)
    model = mlp()
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    sched = gf.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.5, total_iters=4)
    h = Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched,
                scheduler_interval="step", verbose=0).fit(train, epochs=4)
    lrs = [s["lr"] for s in h.steps]  # 2 steps per epoch
    assert lrs[:5] == pytest.approx([0.1, 0.0875, 0.075, 0.0625, 0.05])
    assert lrs[4:] == pytest.approx([0.05] * 4)

    # ReduceLROnPlateau in mode max follows val_metric: a metric that never improves halves
    # the lr after every epoch past the first (patience 0)
    model = mlp()
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    sched = gf.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    h = Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched, verbose=0,
                metric=lambda out, y: 0.5, scheduler_interval="step").fit(train, val=val,
                                                                          epochs=3)
    assert [e["lr"] for e in h.epochs] == [0.1, 0.1, 0.05]
    assert [e["val_metric"] for e in h.epochs] == [0.5] * 3
    assert opt.param_groups[0]["lr"] == 0.025


def test_train_eval_modes(digits):
    (xtr, ytr), _ = digits
    model = mlp(dropout=0.5, norm=True)
    modes = []

    class Spy(Callback):
        def on_after_backward(self, trainer, logs):
            modes.append(trainer.model[3].training)

    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.01), gf.nn.CrossEntropyLoss(),
                      callbacks=[Spy()], verbose=0)
    batches = [(xtr[:64], ytr[:64])]
    trainer.fit(batches, val=batches, epochs=2)
    assert modes == [True, True]
    # evaluate/predict: dropout off, batch norm on running statistics, no graph; deterministic
    p1 = trainer.predict(xtr[:64])
    p2 = trainer.predict(batches)
    np.testing.assert_array_equal(p1, p2)
    assert model.training  # the mode is put back
    model.eval()
    trainer.evaluate(batches)
    assert not model.training
    with gf.no_grad():
        ref = model(gf.from_numpy(xtr[:64])).numpy()
    np.testing.assert_array_equal(p1, ref)


def test_evaluate_callable_metric_on_whole_set():
    gf.manual_seed(0)
    model = gf.nn.Linear(3, 2)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    y = np.array([0, 1] * 5)
    seen = []

    def metric(out, t):
        seen.append(len(out))
        return float((out.argmax(1) == t).mean())

    t = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.0), gf.nn.CrossEntropyLoss(),
                metric=metric, verbose=0)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    r = t.evaluate(batches)
    assert seen == [10]
    t2 = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.0), gf.nn.CrossEntropyLoss(),
                 verbose=0)
    assert r["metric"] == t2.evaluate(batches)["metric"]
    with gf.no_grad():
        out = model(gf.from_numpy(x)).numpy()
    assert r["metric"] == float((out.argmax(1) == y).mean())
    t3 = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.0), gf.nn.MSELoss(), metric=None,
                 verbose=0)
    r3 = t3.evaluate([(x, out)])
    assert r3 == {"loss": 0.0, "metric": None}


def test_binary_accuracy_from_single_logit():
    gf.manual_seed(0)
    model = gf.nn.Linear(2, 1)
    x = np.random.default_rng(1).standard_normal((9, 2)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    t = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.0), gf.nn.MSELoss(), verbose=0)
    with gf.no_grad():
        out = model(gf.from_numpy(x)).numpy()
    assert t.evaluate([(x, y)])["metric"] == float(((out > 0) == (y > 0.5)).mean())


def test_early_stopping_and_restore_best(digits):
    train, val = loaders(digits, n_train=256)
    model = mlp()
    # a validation metric that peaks at the second epoch, then never improves
    values = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    snapshots = {}

    class Snap(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["val_metric"] = next(values)
            snapshots[epoch] = params(trainer.model)

    es = EarlyStopping(monitor="val_metric", patience=2, restore_best=True)
    trainer = Trainer(model, gf.optim.Adam(model.parameters(), lr=1e-3),
                      gf.nn.CrossEntropyLoss(), callbacks=[Snap(), es], verbose=0)
    h = trainer.fit(train, val=val, epochs=8)
    assert len(h.epochs) == 4 and h.stopped_early and not h.diverged
    assert es.best_epoch == 2 and es.best == 0.9 and es.stopped_epoch == 4
    assert h.best_epoch == 2  # history follows the monitor of EarlyStopping
    for k, v in snapshots[2].items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    # min_delta: improvements smaller than it do not count
    es = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.05)

    class FakeTrainer:
        stop_training = False
        model = mlp()

    ft = FakeTrainer()
    for epoch, v in enumerate([1.0, 0.99, 0.98, 0.97], 1):
        es.on_epoch_end(ft, epoch, {"val_loss": v})
        if ft.stop_training:
            break
    assert epoch == 3 and es.best == 1.0


def test_model_checkpoint_best_only(digits, tmp_path):
    train, val = loaders(digits, n_train=256)
    vals = iter([0.5, 0.4, 0.6, 0.3])
    ck = ModelCheckpoint(tmp_path / "best.ckpt", monitor="val_loss")
    model = mlp()
    opt = gf.optim.Adam(model.parameters(), lr=1e-3)

    class FakeVal(Callback):  # overwrite val_loss before the checkpoint sees it
        def on_epoch_end(self, trainer, epoch, logs):
            logs["val_loss"] = next(vals)
            self.snap = getattr(self, "snap", {})
            self.snap[epoch] = params(trainer.model)

    fv = FakeVal()
    Trainer(model, opt, gf.nn.CrossEntropyLoss(), callbacks=[fv, ck], verbose=0).fit(
        train, val=val, epochs=4)
    assert [e for e, _ in ck.saved] == [1, 2, 4] and ck.best == 0.3 and ck.best_epoch == 4
    fresh = mlp(seed=9)
    t = Trainer(fresh, gf.optim.Adam(fresh.parameters(), lr=1e-3), gf.nn.CrossEntropyLoss(),
                verbose=0)
    t.load_checkpoint(tmp_path / "best.ckpt")
    for k, v in fv.snap[4].items():
        np.testing.assert_array_equal(t.model.state_dict()[k], v)
    assert t.epoch == 4 and len(t.history.epochs) == 4


def test_checkpoint_is_written_atomically(digits, tmp_path, monkeypatch):
    train, _ = loaders(digits, n_train=64)
    model = mlp()
    t = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
                verbose=0)
    t.fit(train, epochs=1)
    path = tmp_path / "c.ckpt"
    t.save_checkpoint(path)
    good = path.read_bytes()
    t.fit(train, epochs=2)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gf.serialization.os, "replace", crash)  # dies before the rename
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == good  # the previous checkpoint survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]
    # a file that is not a checkpoint is a clear error, and leaves the trainer unchanged
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    before = params(model)
    with pytest.raises(ValueError, match="bad.ckpt"):
        t.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        t.load_checkpoint(tmp_path / "missing.ckpt")
    gf.save(model.state_dict(), tmp_path / "weights.ckpt")  # a checkpoint, not a trainer's
    with pytest.raises(ValueError, match="not a gradfuse.train checkpoint"):
        t.load_checkpoint(tmp_path / "weights.ckpt")
    (tmp_path / "weights.ckpt").unlink()
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    assert t.epoch == 2


def test_load_state_dict_mismatch_changes_nothing(digits):
    train, _ = loaders(digits, n_train=64)
    model = mlp(hidden=16)
    a = Trainer(model, gf.optim.Adam(model.parameters()), gf.nn.CrossEntropyLoss(), verbose=0)
    a.fit(train, epochs=1)
    sd = a.state_dict()
    other = mlp(hidden=16, seed=3)
    b = Trainer(other, gf.optim.Adam(other.parameters()), gf.nn.CrossEntropyLoss(), verbose=0)
    before = params(other)
    opt_before = b.optimizer.state_dict()
    bad = dict(sd)
    bad["optimizer"] = {"state": {}, "param_groups": [{"params": [0]}]}
    with pytest.raises(ValueError):
        b.load_state_dict(bad)
    for k, v in before.items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    assert b.optimizer.state_dict()["state"] == opt_before["state"] == {}
    assert b.epoch == 0
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"model": sd["model"]})
    with pytest.raises(ValueError, match="scheduler"):
        b.load_state_dict(dict(sd, scheduler={"last_epoch": 1}))
    b.load_state_dict(sd)
    assert b.epoch == 1
    for k, v in params(model).items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    with pytest.raises(ValueError, match="epochs"):
        b.fit(train, epochs=0)


def test_history_round_trip_and_loggers(digits, tmp_path):
    train, val = loaders(digits, n_train=128)
    model = mlp()
    csv_path, json_path = tmp_path / "log.csv", tmp_path / "sub" / "log.json"
    t = Trainer(model, gf.optim.Adam(model.parameters()), gf.nn.CrossEntropyLoss(),
                callbacks=[CSVLogger(csv_path), JSONLogger(json_path)], verbose=0)
    h = t.fit(train, val=val, epochs=3)
    d = json.loads(json.dumps(h.to_dict()))
    h2 = History.from_dict(d)
    assert h2.epochs == h.epochs and h2.steps == h.steps and h2.best_epoch == h.best_epoch
    assert d["best_epoch"] == h.best_epoch
    assert History.from_dict(json.loads(json_path.read_text())).epochs == h.epochs
    rows = csv_path.read_text().splitlines()
    assert rows[0].split(",") == list(h.epochs[0])
    assert len(rows) == 4
    assert float(rows[2].split(",")[1]) == h.epochs[1]["train_loss"]
    assert h.column("val_loss") == [e["val_loss"] for e in h.epochs]
    assert h.column("loss", steps=True) == [s["loss"] for s in h.steps]
    with pytest.raises(KeyError, match="nope"):
        h.column("nope")
    # a resumed fit appends to the CSV
    t.fit(train, val=val, epochs=4)
    assert len(csv_path.read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="d:"):
        History.from_dict({"epochs": []})


def test_history_best_epoch_without_validation():
    h = History()
    assert h.best_epoch is None
    h.epochs = [{"epoch": 1, "train_loss": 2.0, "val_loss": None},
                {"epoch": 2, "train_loss": float("nan"), "val_loss": None},
                {"epoch": 3, "train_loss": 1.0, "val_loss": None}]
    assert h.best_epoch == 3
    h.monitor, h.mode = "train_loss", "max"
    assert h.best_epoch == 1


# ------------------------------------------------------------------ progress output

def test_progress_output_modes(digits, capsys):
    train, val = loaders(digits, n_train=128)

    def run(**kw):
        model = mlp()
        Trainer(model, gf.optim.Adam(model.parameters()), gf.nn.CrossEntropyLoss(),
                **kw).fit(train, val=val, epochs=2)
        return capsys.readouterr().out

    assert run(verbose=0) == ""
    out = run(verbose=1)  # stdout is not a terminal under pytest: one line per epoch
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ")
    assert "val_metric" in lines[1] and "samples/s" in lines[1]
    assert run(verbose=2).splitlines()[1].startswith("epoch 2/2")


def test_progress_bar_uses_tqdm_on_a_terminal(digits):
    pytest.importorskip("tqdm")
    train, val = loaders(digits, n_train=128)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    model = mlp()
    Trainer(model, gf.optim.Adam(model.parameters()), gf.nn.CrossEntropyLoss(),
            callbacks=[ProgressBar(file=out)], verbose=0).fit(train, val=val, epochs=2)
    text = out.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert ", val " in text and "metric " in text and "samples/s" in text and "2/2" in text


# ------------------------------------------------------------------ argument checks

def test_bad_arguments_are_named(digits):
    model = mlp()
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    loss = gf.nn.CrossEntropyLoss()
    cases = [
        (dict(model=object()), TypeError, "model"),
        (dict(optimizer=object()), TypeError, "optimizer"),
        (dict(loss_fn=3), TypeError, "loss_fn"),
        (dict(metric="f1"), ValueError, "metric"),
        (dict(scheduler_interval="batch"), ValueError, "scheduler_interval"),
        (dict(grad_clip=-1.0), ValueError, "grad_clip"),
        (dict(grad_clip="1"), TypeError, "grad_clip"),
        (dict(verbose=3), ValueError, "verbose"),
        (dict(callbacks=[object()]), TypeError, r"callbacks\[0\]"),
        (dict(callbacks=EarlyStopping()), TypeError, "callbacks"),
        (dict(scheduler=object()), TypeError, "scheduler"),
    ]
    for kw, exc, name in cases:
        args = dict(model=model, optimizer=opt, loss_fn=loss)
        args.update(kw)
        with pytest.raises(exc, match=name):
            Trainer(args.pop("model"), args.pop("optimizer"), args.pop("loss_fn"), **args)
    other = gf.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scheduler"):
        Trainer(model, opt, loss, scheduler=gf.optim.lr_scheduler.StepLR(other, 1))
    t = Trainer(model, opt, loss, verbose=0)
    train, _ = loaders(digits, n_train=64)
    before = params(model)
    for kw, exc, name in [(dict(epochs=0), ValueError, "epochs"),
                          (dict(epochs=2.0), TypeError, "epochs"),
                          (dict(epochs=1, val=3), TypeError, "val")]:
        with pytest.raises(exc, match=name):
            t.fit(train, **kw)
    with pytest.raises(TypeError, match="train: got a one-shot iterator"):
        t.fit(iter(train), epochs=1)
    with pytest.raises(TypeError, match="train: got a one-shot iterator"):
        t.fit((b for b in [(1, 2)]), epochs=1)
    # checking a loader draws nothing from it (this one draws its order in iter() itself)

    class Eager:
        def __init__(self):
            self.draws = 0

        def __iter__(self):
            self.draws += 1
            return iter([(np.zeros((2, 64), np.float32), np.zeros(2, np.int64))])

    eager = Eager()
    with pytest.raises(TypeError, match="val"):
        t.fit(eager, val=object(), epochs=1)
    assert eager.draws == 0
    with pytest.raises(TypeError, match=r"train: each batch must be an \(x, y\) pair, got a tuple of 3"):
        t.fit([(1, 2, 3)], epochs=1)
    with pytest.raises(ValueError, match="train"):
        t.fit([], epochs=1)
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    assert t.epoch == 0 and t.history.epochs == []
    t2 = Trainer(model, opt, lambda out, y: (out * out).mean(), verbose=0)
    with pytest.raises(ValueError, match="metric 'accuracy'"):
        t2.evaluate([(np.zeros((3, 64), np.float32), np.zeros((3, 2), np.int64))])
    with pytest.raises(ValueError, match="batch_size"):
        t.predict(np.zeros((2, 64), np.float32), batch_size=0)
    for ctor, kw, exc, name in [
        (EarlyStopping, dict(patience=-1), ValueError, "patience"),
        (EarlyStopping, dict(patience=1.5), TypeError, "patience"),
        (EarlyStopping, dict(min_delta=-0.1), ValueError, "min_delta"),
        (EarlyStopping, dict(monitor="acc"), ValueError, "monitor"),
        (EarlyStopping, dict(mode="up"), ValueError, "mode"),
        (NonFiniteGuard, dict(action="ignore"), ValueError, "action"),
        (NonFiniteGuard, dict(max_skips=0), ValueError, "max_skips"),
        (GradientMonitor, dict(every=0), ValueError, "every"),
        (GradientMonitor, dict(vanishing=-1.0), ValueError, "vanishing"),
        (GradientMonitor, dict(vanishing=1.0, exploding=0.5), ValueError, "exploding"),
        (ModelCheckpoint, dict(path=3), TypeError, "path"),
        (ModelCheckpoint, dict(path="x{batch}"), ValueError, "path"),
        (ModelCheckpoint, dict(path="x", every_steps=0), ValueError, "every_steps"),
        (ModelCheckpoint, dict(path="x", every=0), ValueError, "every"),
        (ProgressBar, dict(verbose=5), ValueError, "verbose"),
        (CSVLogger, dict(path=None), TypeError, "path"),
        (JSONLogger, dict(path="x", steps=1), TypeError, "steps"),
    ]:
        with pytest.raises(exc, match=name):
            ctor(**kw)
    # a monitor without a value (no validation data, no metric) is named before training
    for cb, kw in [(EarlyStopping(), {}), (ModelCheckpoint("x.ckpt"), {}),
                   (EarlyStopping("train_metric"), dict(metric=None))]:
        t = Trainer(model, opt, loss, callbacks=[cb], verbose=0, **kw)
        with pytest.raises(ValueError, match=cb.monitor):
            t.fit(train, epochs=1)
        assert t.epoch == 0 and t.global_step == 0
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


# ------------------------------------------------------------------ forward hooks

def test_register_forward_hook():
    fc = gf.nn.Linear(3, 2)
    seen = []
    h = fc.register_forward_hook(lambda m, inp, out: seen.append((m, len(inp), out.shape)))
    x = gf.ones(4, 3)
    fc(x)
    assert seen == [(fc, 1, (4, 2))]
    # a hook returning a value replaces the output, and gradients flow through it
    h2 = fc.register_forward_hook(lambda m, inp, out: out * 2.0)
    w = gf.tensor(np.ones((1, 3), np.float32), requires_grad=True)
    y = fc(w)
    with gf.no_grad():
        ref = (fc.forward(w) * 2.0).numpy()
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    y.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2.0 * fc.weight.data.sum(0, keepdims=True))
    h.remove()
    h.remove()  # twice is fine
    h2.remove()
    fc(x)
    assert len(seen) == 2  # the second call ran with both hooks; none after removal
    assert "_forward_hooks" not in fc.__dict__  # back to the hook-free path
    with fc.register_forward_hook(lambda m, i, o: seen.append(0)):
        fc(x)
    fc(x)
    assert seen[-1] == 0 and len(seen) == 3
    with pytest.raises(TypeError, match="hook"):
        fc.register_forward_hook(3)
    assert "weight" in fc.state_dict() and len(fc.state_dict()) == 2


def test_docs_training_loop_section_runs(capsys):
    from docs_util import python_block

    scope = {}
    exec(compile(python_block("docs/training.md", "Training loop"), "docs/training.md training loop",
                 "exec"), scope)
    h = scope["history"]
    assert h.epochs[-1]["val_metric"] >= 0.95
    assert capsys.readouterr().out.strip().endswith(f"{h.epochs[-1]['val_metric']:.3f}")


def test_fit_matches_pytorch_loop(digits):
    torch = pytest.importorskip("torch")
    (xtr, ytr), (xva, yva) = digits
    batches = [(xtr[i:i + 64], ytr[i:i + 64]) for i in range(0, 500, 64)]  # last batch of 52
    model = mlp(seed=2, hidden=32)
    tmodel = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 10)).double()
    with torch.no_grad():
        for (_, v), p in zip(model.state_dict().items(), tmodel.parameters()):
            p.copy_(torch.from_numpy(v.astype(np.float64)))
    opt = gf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = gf.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    h = Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched, grad_clip=0.5,
                verbose=0).fit(batches, val=[(xva, yva)], epochs=3)

    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=3)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses, norms, val_acc = [], [], []
    for _ in range(3):
        for x, y in batches:
            loss = loss_fn(tmodel(torch.from_numpy(x).double()), torch.from_numpy(y))
            topt.zero_grad()
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.5)))
            topt.step()
            losses.append(loss.item())
        tsched.step()
        with torch.no_grad():
            out = tmodel(torch.from_numpy(xva).double()).numpy()
        val_acc.append(float((out.argmax(1) == yva).mean()))
    np.testing.assert_allclose([s["loss"] for s in h.steps], losses, rtol=2e-4)
    np.testing.assert_allclose([s["grad_norm"] for s in h.steps], norms, rtol=2e-3)
    assert [e["val_metric"] for e in h.epochs] == pytest.approx(val_acc, abs=1 / len(yva) + 1e-12)
    for (k, v), p in zip(model.state_dict().items(), tmodel.parameters()):
        np.testing.assert_allclose(v, p.detach().numpy(), rtol=1e-3, atol=1e-4, err_msg=k)


def test_nonfinite_guard_names_input_and_first_nonfinite_module():
    gf.manual_seed(0)
    model = gf.nn.Sequential(gf.nn.Linear(3, 4), gf.nn.BatchNorm1d(4), gf.nn.Dropout(0.5),
                             gf.nn.Linear(4, 2))
    y = np.zeros(4, np.int64)
    x_nan = np.ones((4, 3), np.float32)
    x_nan[1, 2] = np.nan
    guard = NonFiniteGuard("skip")
    t = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
                callbacks=[guard], verbose=0)
    with np.errstate(all="ignore"):
        t.fit([(x_nan, y)], epochs=1)
    assert [(e["what"], e["layer"]) for e in guard.events] == [("loss", "input")]
    # an overflow inside the net: the first module whose output is not finite is named, and
    # the extra forward that finds it leaves the random stream and running statistics alone
    model[3].weight.data[...] = 3e38
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    rng_before = None

    class Watch(Callback):
        def on_after_backward(self, trainer, logs):
            nonlocal rng_before
            rng_before = (gf.get_rng_state().numpy().copy(),
                          [b.data.copy() for b in trainer.model.buffers()])

    t = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
                callbacks=[Watch(), guard], verbose=0)
    with np.errstate(all="ignore"):
        t.fit([(x, y)], epochs=1)
    assert guard.events[-1]["what"] == "loss" and guard.events[-1]["layer"] == "3"
    np.testing.assert_array_equal(gf.get_rng_state().numpy(), rng_before[0])
    for b, saved in zip(model.buffers(), rng_before[1]):
        np.testing.assert_array_equal(b.data, saved)


# ------------------------------------------------------------------ review round: regressions

def small_data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


def small_mlp(seed=0):
    gf.manual_seed(seed)
    return gf.nn.Sequential(gf.nn.Linear(5, 8), gf.nn.ReLU(), gf.nn.Linear(8, 3))


def small_loader(x, y, batch_size=16, n=None):
    n = len(x) if n is None else n
    return gf.data.DataLoader(gf.data.TensorDataset(x[:n], y[:n]), batch_size=batch_size,
                              shuffle=True, generator=0)


def test_plateau_on_metric_without_metric_fails_before_training():
    x, y = small_data()
    model = small_mlp()
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    sched = gf.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
    trainer = Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched, metric=None,
                      verbose=0)
    before = params(model)
    with pytest.raises(ValueError, match="scheduler.*metric=None"):
        trainer.fit(small_loader(x, y), epochs=2)
    # nothing was trained: the error comes before the first step, not after an epoch
    assert trainer.global_step == 0 and trainer.history.steps == []
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_model_checkpoint_failed_write_does_not_count_as_best(tmp_path):
    x, y = small_data()
    model = small_mlp()
    blocker = tmp_path / "ckpt"
    blocker.write_text("a file where the checkpoint directory should be")
    ck = ModelCheckpoint(str(blocker / "best.safetensors"), monitor="train_loss")
    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1),
                      gf.nn.CrossEntropyLoss(), callbacks=[ck], verbose=0)
    with pytest.raises(OSError):
        trainer.fit(small_loader(x, y), epochs=3)
    # the epoch is recorded, but no file was written: it is not "the best checkpoint"
    assert trainer.epoch == 1 and ck.saved == []
    assert ck.best is None and ck.best_epoch is None
    blocker.unlink()
    blocker.mkdir()
    # once the directory can be written, the next epoch is saved even if it is not better
    # than the epoch whose write failed
    class Worse(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["train_loss"] = 10.0 + epoch

    trainer.callbacks.insert(0, Worse())
    trainer.fit(small_loader(x, y), epochs=2)
    assert [s[0] for s in ck.saved] == [2] and ck.best == 12.0
    assert (blocker / "best.safetensors").exists()


def test_model_checkpoint_creates_its_directory(tmp_path):
    # the docstring's "ckpt/epoch{epoch:03d}.safetensors" with no ckpt/ yet (as CSVLogger and
    # JSONLogger do for their files)
    x, y = small_data()
    model = small_mlp()
    ck = ModelCheckpoint(str(tmp_path / "ckpt" / "run1" / "epoch{epoch:03d}.safetensors"),
                         save_best_only=False)
    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1),
                      gf.nn.CrossEntropyLoss(), callbacks=[ck], verbose=0)
    trainer.fit(small_loader(x, y), epochs=2)
    assert sorted(p.name for p in (tmp_path / "ckpt" / "run1").iterdir()) == \
        ["epoch001.safetensors", "epoch002.safetensors"]
    trainer.save_checkpoint(tmp_path / "other" / "last.safetensors")
    model2 = small_mlp(seed=1)
    other = Trainer(model2, gf.optim.SGD(model2.parameters(), lr=0.1),
                    gf.nn.CrossEntropyLoss(), verbose=0)
    other.load_checkpoint(tmp_path / "other" / "last.safetensors")
    assert other.epoch == 2
    for k, v in params(model).items():
        np.testing.assert_array_equal(params(model2)[k], v)


class _SaveAndInterrupt(Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_batch_end(self, trainer, logs):
        if logs["step"] == self.step:
            trainer.save_checkpoint(self.path)
            raise KeyboardInterrupt


@pytest.mark.parametrize("kind", ["dataloader", "list"])
def test_resume_mid_epoch_with_another_loader_size_is_refused(tmp_path, kind):
    x, y = small_data()
    path = str(tmp_path / "mid.safetensors")

    def make(batch_size=16, n=100):
        model = small_mlp()
        if kind == "dataloader":
            train = small_loader(x, y, batch_size=batch_size, n=n)
        else:
            train = [(x[i:i + batch_size], y[i:i + batch_size])
                     for i in range(0, n, batch_size)]
        return Trainer(model, gf.optim.Adam(model.parameters(), lr=1e-2),
                       gf.nn.CrossEntropyLoss(), verbose=0), train

    trainer, train = make()
    trainer.callbacks.append(_SaveAndInterrupt(3, path))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, epochs=2)
    for bs, n in ((32, 100), (16, 40)):
        trainer, train = make(bs, n)
        with pytest.raises(ValueError, match="train:.*(batches|batch_size|samples)"):
            trainer.fit(train, epochs=2, resume_from=path)
        assert trainer.global_step == 0  # refused before the checkpoint is restored
        # a retry with the right loader resumes
        _, good = make()
        trainer.fit(good, epochs=2, resume_from=path)
        assert trainer.epoch == 2
    # the run resumed with the right loader matches the uninterrupted one
    ref, train = make()
    ref.fit(train, epochs=2)
    assert params(trainer.model).keys() == params(ref.model).keys()
    for k, v in params(ref.model).items():
        np.testing.assert_array_equal(params(trainer.model)[k], v)


def test_gradient_monitor_does_not_flag_frozen_layers():
    x, y = small_data()
    model = small_mlp()
    for p in model[0].parameters():
        p.requires_grad = False
    mon = GradientMonitor()
    trainable = [p for p in model.parameters() if p.requires_grad]
    Trainer(model, gf.optim.SGD(trainable, lr=0.1), gf.nn.CrossEntropyLoss(),
            callbacks=[mon], verbose=0).fit(small_loader(x, y), epochs=1)
    assert not [f for f in mon.flags if f["layer"] == "0"]
    frozen = [r for r in mon.records if r["layer"] == "0"]
    assert frozen and all(r["grad_norm"] == 0.0 and r["update_ratio"] == 0.0 for r in frozen)
    # a trainable layer with a tiny gradient is still flagged
    mon = GradientMonitor(vanishing=1e9, exploding=1e10)
    model = small_mlp()
    Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
            callbacks=[mon], verbose=0).fit(small_loader(x, y), epochs=1)
    assert {f["layer"] for f in mon.flags} == {"0", "2"}


@pytest.mark.parametrize("early_stopping_first", [True, False])
def test_model_checkpoint_every_saves_the_last_epoch_of_an_early_stopped_run(
        tmp_path, early_stopping_first):
    x, y = small_data()
    model = small_mlp()

    class Losses(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["train_loss"] = [3.0, 1.0, 2.0, 2.0, 2.0, 2.0][epoch - 1]

    ck = ModelCheckpoint(str(tmp_path / "e{epoch}.safetensors"), save_best_only=False, every=5)
    es = EarlyStopping("train_loss", patience=2, restore_best=True)
    cbs = [Losses(), es, ck] if early_stopping_first else [Losses(), ck, es]
    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1),
                      gf.nn.CrossEntropyLoss(), callbacks=cbs, verbose=0)
    h = trainer.fit(small_loader(x, y), epochs=6)
    assert h.stopped_early and trainer.epoch == 4
    assert ck.saved == [(4, str(tmp_path / "e4.safetensors"))]
    # the checkpoint is the state the run ended in (resumable), not the restored best weights
    state = gf.train._checkpoint.load(str(tmp_path / "e4.safetensors"))
    assert state["epoch"] == 4 and state["step"] == trainer.global_step
    assert not all(np.array_equal(state["model"][k], v) for k, v in params(model).items())
    # a run that ends normally is saved once at its last epoch (not again by on_fit_end)
    ck2 = ModelCheckpoint(str(tmp_path / "n{epoch}.safetensors"), save_best_only=False, every=5)
    model = small_mlp()
    Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
            callbacks=[ck2], verbose=0).fit(small_loader(x, y), epochs=3)
    assert [s[0] for s in ck2.saved] == [3]


class _NaNGrads(Callback):
    """Makes the gradients of the given steps NaN (as a diverging step would)."""

    def __init__(self, steps):
        self.steps = set(steps)

    def on_after_backward(self, trainer, logs):
        if logs["step"] in self.steps:
            for p in trainer.model.parameters():
                p.grad.data[...] = np.nan
            logs["grad_norm"] = math.nan


def test_nonfinite_guard_consecutive_skips_survive_resume(tmp_path):
    # steps 5..7 are NaN; max_skips=3 ends the run at step 7. A checkpoint taken after step 6
    # (two skips in a row) must resume into the same ending.
    x, y = small_data()
    path = str(tmp_path / "mid.safetensors")

    def make(extra=()):
        model = small_mlp()
        guard = NonFiniteGuard("skip", max_skips=3)
        t = Trainer(model, gf.optim.Adam(model.parameters(), lr=1e-2),
                    gf.nn.CrossEntropyLoss(), callbacks=[_NaNGrads({5, 6, 7}), guard,
                                                         *extra], verbose=0)
        return t, guard

    ref, g_ref = make()
    h = ref.fit(small_loader(x, y), epochs=2)
    assert h.diverged and ref.global_step == 7 and len(g_ref.events) == 3
    t, _ = make([_SaveAndInterrupt(6, path)])
    with pytest.raises(KeyboardInterrupt):
        t.fit(small_loader(x, y), epochs=2)
    t, g = make()
    h = t.fit(small_loader(x, y), epochs=2, resume_from=path)
    assert h.diverged and t.global_step == 7 and [e["step"] for e in g.events] == [7]
    # a new fit of a guard that was not loaded starts counting afresh
    t2, g2 = make()
    t2.callbacks[0].steps = {1, 2}
    g2._run = 2
    assert not t2.fit(small_loader(x, y), epochs=1).diverged


def test_early_stopping_load_state_without_best_weights_drops_stale_ones():
    x, y = small_data()
    model = small_mlp()
    es = EarlyStopping("train_loss", restore_best=True)
    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1),
                      gf.nn.CrossEntropyLoss(), callbacks=[es], verbose=0)
    fresh = trainer.state_dict()  # before any epoch: no best yet, no best weights
    assert "best_state" not in fresh["callbacks"]["EarlyStopping:0"]
    trainer.fit(small_loader(x, y), epochs=2)
    assert es._best_state is not None
    trainer.load_state_dict(fresh)
    assert es.best is None and es._best_state is None
    # an epoch without a finite value is no improvement: fit ends with the weights this
    # timeline trained, not the stale best weights of the other one put back

    class NaNLoss(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["train_loss"] = math.nan

        def on_fit_end(self, trainer):
            self.trained = params(trainer.model)

    nan = NaNLoss()
    trainer.callbacks.insert(0, nan)
    trainer.fit(small_loader(x, y), epochs=1)
    for k, v in nan.trained.items():
        np.testing.assert_array_equal(params(model)[k], v)


def test_checkpoint_holds_the_epoch_state_of_callbacks_listed_after_it(tmp_path):
    # ModelCheckpoint listed before EarlyStopping: its epoch-2 checkpoint must hold
    # EarlyStopping's state after epoch 2 (not after epoch 1), or the resumed run stops at
    # another epoch than the uninterrupted one
    x, y = small_data()
    losses = [3.0, 1.0, 2.0, 2.0, 2.0, 2.0]

    class Losses(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["train_loss"] = losses[epoch - 1]

    def make():
        model = small_mlp()
        es = EarlyStopping("train_loss", patience=2)
        ck = ModelCheckpoint(str(tmp_path / "e{epoch}.safetensors"), save_best_only=False)
        return Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1),
                       gf.nn.CrossEntropyLoss(), callbacks=[Losses(), ck, es], verbose=0), es

    full, es_full = make()
    h = full.fit(small_loader(x, y), epochs=6)
    assert h.stopped_early and full.epoch == 4
    state = gf.train._checkpoint.load(str(tmp_path / "e2.safetensors"))
    assert state["callbacks"]["EarlyStopping:0"]["best"] == 1.0
    resumed, es = make()
    h = resumed.fit(small_loader(x, y), epochs=6, resume_from=str(tmp_path / "e2.safetensors"))
    assert h.stopped_early and resumed.epoch == 4
    assert (es.best, es.best_epoch, es.wait) == (es_full.best, es_full.best_epoch, es_full.wait)
    for k, v in params(full.model).items():
        np.testing.assert_array_equal(params(resumed.model)[k], v)


def test_model_checkpoint_best_only_with_every_steps_needs_a_step_in_the_path(tmp_path):
    # the mid-epoch saves would overwrite the best checkpoint with whatever state the run is in
    with pytest.raises(ValueError, match="path.*every_steps"):
        ModelCheckpoint(str(tmp_path / "best.safetensors"), every_steps=5)
    with pytest.raises(ValueError, match="path.*every_steps"):
        ModelCheckpoint(str(tmp_path / "best{epoch}.safetensors"), every_steps=5)
    ModelCheckpoint(str(tmp_path / "c{epoch}-{step}.safetensors"), every_steps=5)
    ModelCheckpoint(str(tmp_path / "last.safetensors"), save_best_only=False, every_steps=5)
    ModelCheckpoint(str(tmp_path / "best.safetensors"))


def test_model_checkpoint_sets_the_history_monitor(tmp_path):
    # History's docstring: EarlyStopping and ModelCheckpoint set the monitor best_epoch uses
    x, y = small_data()
    vals = [0.2, 0.9, 0.5]

    class Metric(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["val_metric"] = vals[epoch - 1]
            logs["val_loss"] = 1.0 - epoch * 0.1  # best loss at the last epoch

    def run(callbacks):
        model = small_mlp()
        t = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
                    callbacks=[Metric(), *callbacks], verbose=0)
        return t.fit(small_loader(x, y), val=small_loader(x, y), epochs=3)

    ck = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_metric")
    h = run([ck])
    assert ck.best_epoch == 2 and (h.monitor, h.mode) == ("val_metric", "max")
    assert h.best_epoch == 2
    # EarlyStopping's monitor wins over ModelCheckpoint's whatever the order
    for cbs in ([ModelCheckpoint(tmp_path / "b.safetensors", monitor="val_metric"),
                 EarlyStopping("val_loss", patience=5)],
                [EarlyStopping("val_loss", patience=5),
                 ModelCheckpoint(tmp_path / "b.safetensors", monitor="val_metric")]):
        h = run(cbs)
        assert (h.monitor, h.best_epoch) == ("val_loss", 3)
    # save_best_only=False does not monitor anything
    h = run([ModelCheckpoint(tmp_path / "l.safetensors", monitor="val_metric",
                             save_best_only=False)])
    assert h.monitor is None and h.best_epoch == 3


def test_rejected_fit_does_not_restore_early_stopping_weights(tmp_path):
    # a fit refused by a callback's on_fit_start trains nothing, so EarlyStopping(restore_best)
    # must not put its best weights back in its on_fit_end
    x, y = small_data()
    model = small_mlp()
    es = EarlyStopping("train_loss", restore_best=True)
    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1),
                      gf.nn.CrossEntropyLoss(), callbacks=[es], verbose=0)
    trainer.fit(small_loader(x, y), epochs=2)
    for p in model.parameters():  # the user changes the weights after the run
        p.data[...] += 1.0
    before = params(model)
    trainer.callbacks.append(ModelCheckpoint(tmp_path / "never.safetensors",
                                                      monitor="val_loss"))
    with pytest.raises(ValueError, match="ModelCheckpoint.*validation"):
        trainer.fit(small_loader(x, y), epochs=3)  # no val: refused at fit start
    for k, v in before.items():
        np.testing.assert_array_equal(params(model)[k], v)
    # a fit with nothing left to train does not restore either
    trainer.callbacks.pop()
    trainer.fit(small_loader(x, y), epochs=2)
    for k, v in before.items():
        np.testing.assert_array_equal(params(model)[k], v)


def test_review_edge_cases_that_hold(tmp_path):
    x, y = small_data()
    model = small_mlp()
    ck = ModelCheckpoint(tmp_path / "e{epoch}.safetensors", save_best_only=False, every=10)
    trainer = Trainer(model, gf.optim.SGD(model.parameters(), lr=0.1), gf.nn.CrossEntropyLoss(),
                      callbacks=[ck], verbose=0)
    h = trainer.fit(small_loader(x, y), epochs=3)
    assert ck.saved == [(3, str(tmp_path / "e3.safetensors"))]  # every > epochs: the last
    # NaN / inf survive History's JSON round trip and the checkpoint's metadata
    h.epochs[0]["grad_norm"], h.epochs[1]["samples_per_s"] = math.nan, math.inf
    h.steps[0]["loss"] = -math.inf
    h2 = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert math.isnan(h2.epochs[0]["grad_norm"]) and h2.epochs[1]["samples_per_s"] == math.inf
    assert h2.steps[0]["loss"] == -math.inf
    trainer.save_checkpoint(tmp_path / "nan.safetensors")
    state = gf.train._checkpoint.load(str(tmp_path / "nan.safetensors"))
    h3 = History.from_dict(state["history"])
    assert math.isnan(h3.epochs[0]["grad_norm"]) and h3.steps[0]["loss"] == -math.inf
    # predict: one sample, a 1-row Tensor, a loader of (x, y), a list of bare x
    ref = model(gf.from_numpy(x)).data
    np.testing.assert_allclose(trainer.predict(x[:1]), ref[:1], rtol=1e-6)
    np.testing.assert_allclose(trainer.predict(gf.from_numpy(x[3:4])), ref[3:4], rtol=1e-6)
    batches = [(x[i:i + 7], y[i:i + 7]) for i in range(0, 100, 7)]
    np.testing.assert_allclose(trainer.predict(batches), ref, rtol=1e-6)
    np.testing.assert_allclose(trainer.predict([b for b, _ in batches]), ref, rtol=1e-6)


def test_resume_with_too_few_epochs_is_refused_before_anything_is_restored(digits, tmp_path):
    path = tmp_path / "run.ckpt"
    first, train, val = make_resumable(digits, [ModelCheckpoint(path, save_best_only=False,
                                                                every=3)])
    first.fit(train, val=val, epochs=3)
    fresh, train, val = make_resumable(digits)
    before = {k: v.copy() for k, v in params(fresh.model).items()}
    with pytest.raises(ValueError, match="epochs: the checkpoint already has 3 epochs"):
        fresh.fit(train, val=val, epochs=2, resume_from=path)
    assert fresh.epoch == 0 and fresh.global_step == 0 and not fresh.history.epochs
    for k, v in params(fresh.model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    with pytest.raises(TypeError, match="resume_from"):
        fresh.fit(train, val=val, epochs=4, resume_from=3)
