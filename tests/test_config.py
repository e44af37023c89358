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
    assert cfg["cuda"] is False
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
