"""Version, build configuration and the command line."""

import subprocess
import sys

import gradfuse as gf
from gradfuse._config import config


def test_version_and_config(capsys):
    assert gf.__version__.count(".") == 2
    cfg = config()
    for key in ("compiler", "openmp", "threads", "simd_dispatch", "cuda", "numpy_blas"):
        assert key in cfg
    if not gf.cuda.is_compiled():
        assert cfg["cuda"].startswith("not compiled")
    elif gf.cuda.is_available():
        assert gf.cuda.get_device_name() in cfg["cuda"]
    else:
        assert gf.cuda.unavailable_reason() in cfg["cuda"]
    assert cfg["threads"] == gf.get_num_threads() >= 1
    gf.show_config()
    out = capsys.readouterr().out
    assert "gradfuse" in out and "openmp" in out


def test_cli_info():
    out = subprocess.run([sys.executable, "-m", "gradfuse", "info"], capture_output=True,
                         text=True, check=True).stdout
    assert "simd_dispatch" in out


def test_pool_can_be_disabled_by_environment():
    code = "import gradfuse, numpy as np; a = np.ones(1 << 20); print(gradfuse.memory.stats()['allocs'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "GRADFUSE_POOL": "0"}).stdout
    assert out.strip() == "0"


def test_parallel_grain_and_wait_policy_are_set_at_load():
    """GRADFUSE_PARALLEL_GRAIN is read once when gradfuse loads (the suite runs with 32K, see
    conftest.py; the default is 1M), and OMP_WAIT_POLICY=PASSIVE is applied to gradfuse's
    libgomp only: the variable is not left in the environment for libraries loaded later."""
    import os
    import subprocess
    import sys

    code = ("import os, gradfuse as gf; print(gf._backend.build_info()['parallel_grain'], "
            "'OMP_WAIT_POLICY' in os.environ)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRADFUSE_PARALLEL_GRAIN", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(1 << 20), "False"]
    env["GRADFUSE_PARALLEL_GRAIN"] = "4096"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    code2 = code.replace("'OMP_WAIT_POLICY' in os.environ", "os.environ['OMP_WAIT_POLICY']")
    out = subprocess.run([sys.executable, "-c", code2], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["4096", "ACTIVE"]  # a user's own setting is kept
