"""Helpers for tests that launch scripts under ``mpiexec`` (gradfuse.distributed).

``requires_mpi`` skips a test when mpi4py or an ``mpiexec`` launcher is missing;
``run_mpi(script, n)`` runs ``mpiexec -n N python script args...`` with a timeout and returns
the CompletedProcess (stdout/stderr as text). Scripts report results as JSON lines on stdout
(see :func:`json_lines`) or write files into a temporary directory passed as an argument.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "dist_scripts"


def find_mpiexec() -> str | None:
    """``mpiexec`` next to the running Python (a virtual environment with the ``mpich`` wheel),
    else the one on PATH, else None."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    return shutil.which("mpiexec")


def mpi_missing() -> str | None:
    """Why MPI tests cannot run here, or None when they can."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'gradfuse[distributed]')"
    if find_mpiexec() is None:
        return "no mpiexec launcher found (pip install mpich)"
    return None


requires_mpi = pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))


def run_mpi(script: str | Path, n: int = 2, args=(), timeout: float = 120,
            env: dict | None = None, cwd: str | Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n sys.executable script *args``; returns the CompletedProcess.

    ``script`` is a path, or a file name in tests/dist_scripts. ``env`` entries are added to
    the current environment; ``cwd`` is the ranks' working directory. On timeout the launcher and its ranks (a process group of their
    own) are killed and ``subprocess.TimeoutExpired`` is raised, so a hang fails the test
    instead of stalling the suite.
    """
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise RuntimeError(mpi_missing())
    path = Path(script)
    if not path.is_absolute() and not path.exists():
        path = SCRIPTS / path
    full_env = dict(os.environ)
    if env:
        full_env.update({k: str(v) for k, v in env.items()})
    cmd = [mpiexec, "-n", str(n), sys.executable, str(path), *map(str, args)]
    before = _mpich_shm_files()
    try:
        return _run(cmd, full_env, cwd, timeout)
    finally:
        _remove_orphans(_mpich_shm_files() - before)


_SHM = Path("/dev/shm")


def _mpich_shm_files() -> set:
    try:
        return {p.name for p in _SHM.glob("mpich_shm_*")}
    except OSError:
        return set()


def _remove_orphans(names) -> None:
    """MPICH leaves its 2 MB ``/dev/shm/mpich_shm_*`` segment behind when a job is aborted or a
    rank killed (the failure tests do both on purpose): remove the ones this job created that
    no live process maps, so repeated test runs do not fill /dev/shm."""
    names = set(names)
    for _ in range(20):  # the ranks of an aborted job may take a moment to go away
        mapped = set()
        for maps in Path("/proc").glob("[0-9]*/maps"):
            try:
                text = maps.read_text()
            except OSError:
                continue
            mapped.update(n for n in names if n in text)
        for n in names - mapped:
            try:
                (_SHM / n).unlink()
            except OSError:
                pass
        names = mapped
        if not names:
            return
        time.sleep(0.1)


def _run(cmd, full_env, cwd, timeout) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def json_lines(text: str) -> list:
    """The JSON objects printed one per line in ``text`` (other lines are ignored)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def check_ok(res: subprocess.CompletedProcess) -> None:
    """Assert the job exited 0, showing its output when it did not."""
    assert res.returncode == 0, (
        f"mpiexec exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
