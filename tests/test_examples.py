"""The README's end-to-end example: softmax regression on the bundled digits."""

import subprocess
import sys

import pytest


def test_digits_softmax_regression_learns():
    pytest.importorskip("sklearn")
    from gradfuse.examples.digits_softmax import train

    acc = train(epochs=10, seed=0, log=lambda *a: None)
    assert acc >= 0.93


def test_demo_cli_rejects_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "gradfuse", "demo", "--lr", "-1"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--lr" in r.stderr
