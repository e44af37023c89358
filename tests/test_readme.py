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


def test_gpu_section_example_runs_on_the_device_there_is(capsys):
    # on a machine without a GPU (or a CPU-only build) the same code runs on the CPU
    text = README.read_text()
    block = re.search(r"## GPU \(CUDA\).*?```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README GPU section", "exec"), scope)
    assert scope["model"][0].weight.device == scope["device"]
    loss, dev = capsys.readouterr().out.split()
    assert np.isfinite(float(loss)) and dev in ("cpu", "cuda:0")
