"""The README's quick start runs and does what it says."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs_and_fits(capsys):
    text = README.read_text()
    block = re.search(r"## Quick start\n+```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README quick start", "exec"), scope)
    model = scope["model"]
    np.testing.assert_allclose(model.weight.data.ravel(), [2.0, -1.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(model.bias.data, [0.3], atol=1e-3)


def test_data_loading_and_checkpoints_example_runs(capsys):
    text = README.read_text()
    block = re.search(r"## Data loading and checkpoints\n.*?```python\n(.*?)```", text,
                      re.S).group(1)
    scope = {}
    exec(compile(block, "README data loading and checkpoints", "exec"), scope)
    assert scope["same"] is True  # resumed training is bitwise the uninterrupted run
    assert scope["accuracy"] > 0.85
