"""gradfuse.distributed: data-parallel training over MPI (mpi4py).

Run the same script on every rank with an MPI launcher (``mpiexec -n 2 python train.py``);
:func:`init` joins the process group, :class:`DataParallel` keeps the replicas of a model in
step with one in-place all-reduce of each flat gradient arena per step. Importing this module
does not import mpi4py (that happens in :func:`init`), and before :func:`init` everything
behaves as in a world of one process.

Example::

    import gradfuse as gf
    gf.distributed.init()
    model = gf.nn.Linear(4, 2)
    opt = gf.optim.Adam(model.parameters(), lr=1e-3)
    dp = gf.distributed.DataParallel(model, opt)
"""

from ._comm import (
    all_gather_object,
    all_reduce_,
    barrier,
    broadcast_,
    broadcast_object,
    get_comm,
    get_local_rank,
    get_local_world_size,
    get_rank,
    get_world_size,
    init,
    is_available,
    is_initialized,
    is_main,
    launched,
)
from ._reduce import MPIReducer, make_reducer, shard_range
from .parallel import DataParallel

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
    "DataParallel",
    "MPIReducer",
    "make_reducer",
    "shard_range",
]
