"""The README's end-to-end examples on the bundled digits, and the demo command."""

import subprocess
import sys

import numpy as np
import pytest


def test_digits_softmax_regression_learns():
    pytest.importorskip("sklearn")
    from gradfuse.examples.digits_softmax import train

    acc = train(epochs=10, seed=0, log=lambda *a: None)
    assert acc >= 0.93


def test_digits_mlp_learns_and_beats_softmax_regression():
    pytest.importorskip("sklearn")
    from gradfuse.examples.digits_mlp import train

    r = train(epochs=8, seed=0, log=lambda *a: None)
    assert r["val_accuracy"] >= 0.96
    assert r["train_loss"][-1] < 0.5 * r["train_loss"][0]


@pytest.mark.parametrize("opt,act,norm,init", [
    ("sgd", "tanh", "layer", "xavier_uniform"),
    ("rmsprop", "gelu", "none", "he_normal"),
    ("lion", "silu", "rms", "orthogonal"),
])
def test_digits_mlp_options_all_train(opt, act, norm, init):
    pytest.importorskip("sklearn")
    from gradfuse.examples.digits_mlp import train

    r = train(epochs=3, optimizer=opt, activation=act, norm=norm, init=init, seed=1,
              log=lambda *a: None)
    assert np.isfinite(r["train_loss"]).all() and r["train_loss"][-1] < r["train_loss"][0]
    assert r["val_accuracy"] > 0.5


def test_digits_mlp_is_reproducible_from_the_seed():
    pytest.importorskip("sklearn")
    from gradfuse.examples.digits_mlp import train

    a = train(epochs=2, seed=3, log=lambda *a: None)
    b = train(epochs=2, seed=3, log=lambda *a: None)
    assert a["train_loss"] == b["train_loss"] and a["val_accuracy"] == b["val_accuracy"]


@pytest.mark.parametrize("args,name", [
    (["--model", "softmax", "--lr", "-1"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--init", "nope"], "--init"),
    (["--optimizer", "nope"], "--optimizer"),
])
def test_demo_cli_rejects_bad_arguments(args, name):
    r = subprocess.run([sys.executable, "-m", "gradfuse", "demo", *args],
                       capture_output=True, text=True)
    assert r.returncode != 0 and name in r.stderr
