"""The communication API: process group state and collectives over mpi4py.

mpi4py is imported lazily, inside :func:`init` (importing ``mpi4py.MPI`` initializes MPI, which
a single-process user must not pay for, and ``import gradfuse`` must work without mpi4py).
Before :func:`init` every function behaves as in a world of one process: rank 0 of 1,
collectives return their input, so the same script runs unchanged with and without ``mpiexec``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import traceback

import numpy as np

from ..tensor import Tensor

__all__ = [
    "is_available",
    "launched",
    "init",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "get_local_world_size",
    "is_main",
    "barrier",
    "all_reduce_",
    "broadcast_",
    "all_gather_object",
    "broadcast_object",
    "get_comm",
]

# Process group state, set once by init(). _node is the communicator of the ranks that share
# memory with this one (MPI.COMM_TYPE_SHARED), for the node-local reducer and thread limits.
_state: dict = {"comm": None, "node": None, "rank": 0, "size": 1, "local_rank": 0,
                "local_size": 1, "blas_limit": None, "excepthook": None, "exit_comm": None}

_OPS = ("sum", "avg", "max", "min")
_LAUNCH_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def is_available() -> bool:
    """Whether mpi4py can be imported (``pip install gradfuse[distributed]``). Does not import
    it, so it does not initialize MPI.

    Example::

        >>> gf.distributed.is_available()
        True
    """
    return importlib.util.find_spec("mpi4py") is not None


def launched() -> bool:
    """Whether this process was started by an MPI launcher with more than one process (MPICH's
    ``PMI_SIZE``/``MPI_LOCALNRANKS``, Open MPI's ``OMPI_COMM_WORLD_SIZE``). Reads the
    environment only: code can decide to call :func:`init` without importing mpi4py.

    Example::

        >>> if gf.distributed.launched():
        ...     gf.distributed.init()
    """
    for k in _LAUNCH_ENV:
        try:
            if int(os.environ.get(k, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def init(comm=None) -> None:
    """Join the process group (collective over ``comm``; idempotent: a second call does nothing).

    Args:
        comm: an mpi4py communicator; default ``MPI.COMM_WORLD``. A later call with another
            communicator is a ValueError (the group is set once per process).

    Records the rank, the world size and the node-local rank and size (the ranks sharing memory
    with this one, ``Split_type(COMM_TYPE_SHARED)``). With more than one process it also:

    * installs an abort hook: an uncaught exception on any rank, in the main thread or in
      any other thread (``sys.excepthook`` and ``threading.excepthook``), prints
      ``gradfuse.distributed: rank R: <error>`` (after the traceback) to stderr and calls
      ``comm.Abort(1)``, so the whole job ends instead of the other ranks waiting forever in
      their next collective;
    * when several ranks share this machine, limits the threads of each to
      ``max(1, cores // local ranks)`` (gradfuse's kernels and numpy's BLAS through
      threadpoolctl), so they do not oversubscribe its cores, unless ``OMP_NUM_THREADS`` or
      ``GRADFUSE_NUM_THREADS`` is set (then that wins).

    Raises RuntimeError when mpi4py is not installed.

    Example (``mpiexec -n 2 python train.py``)::

        >>> gf.distributed.init()
        >>> gf.distributed.get_rank(), gf.distributed.get_world_size()
        (0, 2)
    """
    if _state["comm"] is not None:
        if comm is not None and comm is not _state["comm"]:
            from mpi4py import MPI

            if not isinstance(comm, MPI.Comm) or \
                    MPI.Comm.Compare(comm, _state["comm"]) != MPI.IDENT:
                # silently keeping the first group would run every later collective over a
                # group the caller did not ask for
                raise ValueError(
                    "comm: gf.distributed.init() already ran with another communicator; "
                    "it can be initialized once per process")
        return
    if not is_available():
        raise RuntimeError(
            "gradfuse.distributed.init: mpi4py is not installed (pip install "
            "'gradfuse[distributed]', which brings mpi4py and MPICH's mpiexec)")
    from mpi4py import MPI

    if comm is None:
        comm = MPI.COMM_WORLD
    elif not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm: expected an mpi4py communicator, got {type(comm).__name__}")
    elif comm == MPI.COMM_NULL:
        raise ValueError("comm: MPI.COMM_NULL (this rank is not a member of the group: call "
                         "init only on the ranks of the sub-communicator)")
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    _state.update(comm=comm, node=node, rank=comm.Get_rank(), size=comm.Get_size(),
                  local_rank=node.Get_rank(), local_size=node.Get_size())
    if _state["size"] > 1:
        # a communicator of its own for the exit handshake of abort_if_failed: a collective on
        # `comm` could meet another rank's unfinished training collective
        _state["exit_comm"] = comm.Dup()
        _install_abort_hook(comm)
    if _state["local_size"] > 1:
        _limit_threads(_state["local_size"])


def _abort(comm, status: int, why: str) -> None:
    """Say why on stderr and end the whole job with ``status``."""
    try:  # what this rank printed before the error (stdout is block-buffered in a pipe)
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    sys.stderr.write(f"gradfuse.distributed: rank {comm.Get_rank()}: {why}\n"
                     "gradfuse.distributed: aborting the job (MPI Abort)\n")
    sys.stderr.flush()
    # MPI_Abort makes mpiexec kill every rank at once, and what hydra had not yet forwarded
    # from this rank's pipes is lost: about one run in ten of the tests lost the error
    # message itself. A moment's pause lets it through.
    time.sleep(0.2)
    comm.Abort(status)


_EXIT_GRACE_S = 2.0  # how long a failing rank waits for the others to fail too


def abort_if_failed(code) -> None:
    """End the whole job when this rank is about to exit with a failure status ``code`` (an
    int, or a ``SystemExit.code``: None is success, a string is status 1) in a world of more
    than one rank. ``sys.exit`` never reaches the exception hook, and a rank that exits on its
    own leaves the others waiting in their next collective forever: gradfuse's command line
    calls this on its way out (``python -m mpi4py script.py`` does the same for a script)."""
    if code is None or code == 0 or _state["comm"] is None or _state["size"] <= 1:
        return
    status = code if isinstance(code, int) else 1
    # When every rank fails the same way (a checked error all ranks agreed on) they all come
    # here: a short non-blocking barrier lets them exit normally, each with its own message,
    # rather than the first one's abort cutting the others' output short.
    req = _state["exit_comm"].Ibarrier()
    deadline = time.monotonic() + _EXIT_GRACE_S
    while time.monotonic() < deadline:
        if req.Test():
            return
        time.sleep(0.005)
    _abort(_state["comm"], status, f"exit status {status}")


def _install_abort_hook(comm) -> None:
    previous = sys.excepthook
    previous_thread = threading.excepthook

    def abort(exc_type, exc, where: str) -> None:
        msg = "".join(traceback.format_exception_only(exc_type, exc)).strip()
        _abort(comm, 1, f"{where}{msg}")

    def hook(exc_type, exc, tb):
        try:
            previous(exc_type, exc, tb)
        except Exception:  # noqa: BLE001 - a broken hook must not stop the abort
            traceback.print_exception(exc_type, exc, tb)
        abort(exc_type, exc, "")

    def thread_hook(args):
        # A thread that dies (a data-loading or checkpoint-writing thread) leaves its rank
        # running but usually waiting for it forever, and the other ranks in their next
        # collective: end the job as for the main thread. SystemExit in a thread is normal.
        try:
            previous_thread(args)
        except Exception:  # noqa: BLE001
            traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
        if args.exc_type is SystemExit:
            return
        name = getattr(args.thread, "name", None)
        abort(args.exc_type, args.exc_value, f"in thread {name!r}: " if name else "")

    _state["excepthook"] = previous
    sys.excepthook = hook
    threading.excepthook = thread_hook


def _limit_threads(local_size: int) -> None:
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("GRADFUSE_NUM_THREADS"):
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    n = max(1, cores // max(1, local_size))
    from .._config import set_num_threads

    set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    # kept alive for the process: the limit holds until restore_original_limits()
    _state["blas_limit"] = threadpool_limits(limits=n, user_api="blas")


def is_initialized() -> bool:
    """Whether :func:`init` has run in this process."""
    return _state["comm"] is not None


def get_comm():
    """The mpi4py communicator given to :func:`init` (``MPI.COMM_WORLD`` by default), or None
    before it."""
    return _state["comm"]


def _node_comm():
    return _state["node"]


def get_rank() -> int:
    """This process's rank in the group, 0 before :func:`init`."""
    return _state["rank"]


def get_world_size() -> int:
    """The number of processes in the group, 1 before :func:`init`."""
    return _state["size"]


def get_local_rank() -> int:
    """This process's rank among the processes on its machine, 0 before :func:`init`."""
    return _state["local_rank"]


def get_local_world_size() -> int:
    """The number of processes on this machine, 1 before :func:`init`."""
    return _state["local_size"]


def is_main() -> bool:
    """Whether this is rank 0 (the one that prints and writes files); True before
    :func:`init`."""
    return _state["rank"] == 0


def barrier() -> None:
    """Wait until every rank has called it (nothing to wait for before :func:`init`)."""
    comm = _state["comm"]
    if comm is not None:
        comm.Barrier()


def _host_array(x, name: str) -> np.ndarray:
    arr = x.data if isinstance(x, Tensor) else x
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"{name}: expected a gradfuse Tensor on the CPU or a numpy array, got "
            f"{type(arr).__name__}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (in-place collective)")
    if not arr.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return arr


def _mpi_op(op: str):
    from mpi4py import MPI

    return {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def all_reduce_(x, op: str = "sum"):
    """Reduce ``x`` over all ranks in place; every rank ends with the same values.

    Args:
        x: a CPU Tensor or a C-contiguous numpy array, any shape; the same shape and dtype on
            every rank.
        op: ``"sum"``, ``"avg"`` (the sum divided by the world size; floating dtypes only),
            ``"max"`` or ``"min"``.

    Returns ``x``. No copy of the data is made (``MPI_IN_PLACE``). Elementwise sums of a
    commutative operation reach every rank bitwise equal with MPICH and Open MPI (each element
    is combined once, or symmetrically, and the result distributed).

    Example::

        >>> t = gf.tensor([float(gf.distributed.get_rank())])
        >>> gf.distributed.all_reduce_(t, op="sum")   # on 2 ranks: tensor([1.])
    """
    if op not in _OPS:
        raise ValueError(f"op: expected one of {_OPS}, got {op!r}")
    arr = _host_array(x, "x")
    if op == "avg" and arr.dtype.kind not in "fc":
        raise TypeError(f"x: op='avg' needs a floating dtype, got {arr.dtype}")
    comm = _state["comm"]
    if comm is None or _state["size"] == 1 or arr.size == 0:
        return x
    from mpi4py import MPI

    comm.Allreduce(MPI.IN_PLACE, arr, _mpi_op(op))
    if op == "avg":
        np.divide(arr, _state["size"], out=arr)
    return x


def broadcast_(x, src: int = 0):
    """Copy ``x`` of rank ``src`` into ``x`` of every other rank, in place; returns ``x``.

    Args:
        x: a CPU Tensor or a C-contiguous numpy array, the same shape and dtype on every rank.
        src: the sending rank.

    Example::

        >>> w = gf.randn(3, 3)
        >>> gf.distributed.broadcast_(w, src=0)   # every rank now holds rank 0's values
    """
    arr = _host_array(x, "x")
    src = _check_src(src)
    comm = _state["comm"]
    if comm is None or _state["size"] == 1 or arr.size == 0:
        return x
    comm.Bcast(arr, root=src)
    return x


def _check_src(src) -> int:
    if not isinstance(src, (int, np.integer)) or isinstance(src, bool) or \
            not 0 <= int(src) < _state["size"]:
        raise ValueError(f"src: expected a rank in [0, {_state['size']}), got {src!r}")
    return int(src)


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (pickled; for small objects), as a list in rank order, on every
    rank. ``[obj]`` before :func:`init`.

    Example::

        >>> gf.distributed.all_gather_object(gf.distributed.get_rank())
        [0, 1]
    """
    comm = _state["comm"]
    if comm is None:
        return [obj]
    return comm.allgather(obj)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (pickled), returned on every rank; the other ranks' ``obj`` is
    ignored.

    Example::

        >>> cfg = gf.distributed.broadcast_object(cfg if gf.distributed.is_main() else None)
    """
    src = _check_src(src)
    comm = _state["comm"]
    if comm is None:
        return obj
    return comm.bcast(obj, root=src)
