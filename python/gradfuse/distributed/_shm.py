"""ShmReducer: all-reduce through an MPI-3 shared-memory window (one node), hierarchical
across nodes.

On one machine MPI's ``Allreduce`` copies every byte through its shared-memory transport
several times (pipelined send/receive chunks plus the reduction): 2.4-2.7 GB/s for 16M-64M
floats on 2 ranks here. When the buffer itself lives in a window that every rank of the node
maps (``MPI.Win.Allocate_shared``), nothing has to be sent: after one barrier each rank sums
*its shard* of the buffer straight from every rank's segment, in rank order, and writes the
sum into every segment; a second barrier and everyone holds the result. Each element is read
W times and written W times in all, once per segment, which is the minimum for W private
copies, and the work is spread over the W ranks' cores, so it runs at memory bandwidth. The
owner's pass is one C++ call (``segment_sum``, csrc/kernels/reduce.cpp: the running sum of a
block in L1). Measured side by side on 2 ranks here (bench/bench_distributed.py): 16M floats in
3.4 ms against 28 ms for ``MPI_Allreduce``, 64M in 21 ms against 115 ms.

``reduce_scatter_`` (ZeRO-1) is the same pass with the result written only into the owner's
own segment, over the contract's ``shard_range`` (the world's shards); ``all_gather_`` copies
each rank's shard into every segment. Every operation is fenced on entry and on exit by
``Win.Sync``, a synchronizing collective, ``Win.Sync`` (the unified memory model's pattern: the
window is in a ``Lock_all`` epoch for its lifetime), so a rank never reads a segment that
another rank is still writing, nor writes one that another is still reading. On entry the
collective is a small ``Allreduce`` of what each rank passed (operation, op, dtype, length,
buffer, offset): ranks that disagree get the same ``ValueError`` instead of a hang or a sum of
the wrong elements (it costs about 6 us more than a barrier on 2 ranks here: 0.7% of a 1M-float
all-reduce). On exit it is a barrier of the node.

Because each element is computed once, by its owner, and copied, every rank ends with bitwise
identical values, and the result does not depend on timing (it is the same from run to run).

Several nodes: ``Split_type(COMM_TYPE_SHARED)`` groups the ranks of one machine. The reduction
is then hierarchical: intra-node reduce-scatter through shared memory (local rank l owns the
node-local shard l), a cross-node sum of that shard among the ranks with the same local rank,
intra-node copy back. The cross-node sum is done by gradfuse, not by ``MPI_Allreduce`` (which
does not promise the same bits on every rank, nor the same order from run to run):
``Alltoallv`` gives node j the j-th piece of every node's shard, it adds them in node order,
and ``Allgatherv`` returns the pieces, so it is a bandwidth-optimal reduce-scatter/all-gather
pair whose results are bitwise identical everywhere. The sum is ``((n0 + n1) + n2) ...`` of
the per-node sums, each of them a rank-order sum, so a 2-node result may differ in the last
bits from a 1-node run with the same ranks (float addition is not associative).

Testing the multi-node path on one machine: ``GRADFUSE_SHM_FAKE_NODES=N`` splits each real
node into N fake nodes (``N`` or ``N,block``: consecutive ranks, rank * N // size;
``N,cyclic``: rank % N), so ``mpiexec -n 4`` with N=2 runs the hierarchical code.

Nodes of different sizes (``-hosts a:3,b:1``): the node-local shards would not line up across
nodes, so every operation uses the deterministic cross-rank sum above over the whole world
(correct and bitwise identical, but no shared-memory speed-up).

Averages are the sum divided by the world size (``s / W``, correctly rounded, as PyTorch's
DDP divides), computed once by the element's owner. ``MPIReducer`` multiplies by ``1 / W``:
the two agree bitwise when W is a power of two and may differ in the last bit otherwise.

Arrays that are not (a contiguous 1-D piece of) a buffer of this reducer are reduced with the
same deterministic cross-rank sum over the world communicator (a fallback, not an error);
wrong dtypes, non-contiguous or not 1-D arrays raise ``TypeError``/``ValueError``; so do
calls whose arrays differ across ranks (on every rank, see above).

Example (under ``mpiexec -n 2 python script.py``)::

    from mpi4py import MPI
    from gradfuse.distributed._shm import ShmReducer
    red = ShmReducer(MPI.COMM_WORLD)
    g = red.buffer(1000, "float32")      # this rank's segment of a shared window, zeroed
    g[:] = MPI.COMM_WORLD.rank + 1
    red.all_reduce_(g, op="avg")         # g == 1.5 on both ranks, bitwise
    red.close()                          # collective: frees the windows no array views
"""

from __future__ import annotations

import gc
import os
import sys
import warnings

import numpy as np

from .. import _backend
from ._reduce import _DTYPES, _OPS, _aligned_zeros, _check_array, _check_op, _mpi_type, shard_range

__all__ = ["ShmReducer", "FAKE_NODES_ENV"]

FAKE_NODES_ENV = "GRADFUSE_SHM_FAKE_NODES"

_PAGE = 4096
_BLOCK = 1 << 16  # minimum size of the scratch buffer of the cross-node sum
# windows that close() could not free because arrays still view them (kept until exit)
_KEPT: list = []
_ALL_REDUCE, _REDUCE_SCATTER, _ALL_GATHER = range(3)
_ENTRY_NAMES = ("all_reduce_", "reduce_scatter_", "all_gather_")


def _mpi():
    from mpi4py import MPI

    return MPI


def _shm_free_bytes() -> int | None:
    """Bytes free in /dev/shm (where MPICH puts shared windows), None when unknown."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _fake_nodes() -> tuple[int, str] | None:
    v = os.environ.get(FAKE_NODES_ENV, "").strip()
    if not v:
        return None
    count, _, layout = v.partition(",")
    layout = layout.strip() or "block"
    try:
        k = int(count)
    except ValueError:
        k = 0
    if k < 1 or layout not in ("block", "cyclic"):
        raise ValueError(f"{FAKE_NODES_ENV}: expected 'N', 'N,block' or 'N,cyclic' with N >= 1, "
                         f"got {v!r}")
    return k, layout


def _refcounts(objs: list) -> list:
    return [sys.getrefcount(o) for o in objs]


class _Buffer:
    """One shared window: ``segs[l]`` is local rank l's segment (n elements)."""

    __slots__ = ("win", "n", "dtype", "segs", "mine", "addr", "nbytes", "mems")

    def __init__(self, win, n, dtype, segs, mine, mems):
        self.win, self.n, self.dtype, self.segs, self.mine = win, n, dtype, segs, mine
        self.mems = mems  # the mpi4py buffer objects: every numpy view of a segment refers to one
        self.addr = mine.ctypes.data
        self.nbytes = n * dtype.itemsize


class ShmReducer:
    """The contract's Reducer over MPI-3 shared memory (see the module docstring).

    Args:
        comm: an mpi4py intracommunicator (``MPI.COMM_WORLD``); collective.

    Every method is collective over ``comm``: all ranks call it in the same order with the
    same sizes, and with the same kind of array (a buffer of this reducer, or a view of one at
    the same offset and length, on every rank; or a foreign array on every rank).

    Example::

        red = ShmReducer(MPI.COMM_WORLD)
        g = red.buffer(2_900_000, np.float32)   # (n,) zeroed, 64-byte (page) aligned
        ... write this rank's gradients into g ...
        red.all_reduce_(g, "avg")
        lo, hi = red.reduce_scatter_(g)          # g[lo:hi] reduced (ZeRO)
        red.all_gather_(g)                       # every rank's g[shard] to everyone
    """

    def __init__(self, comm):
        MPI = _mpi()
        if comm is None:
            raise TypeError("comm: expected an mpi4py communicator, got None")
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        fake = _fake_nodes()  # a bad value raises before any communicator exists
        shared = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        if fake is not None:
            k, layout = fake
            s, r = shared.Get_size(), shared.Get_rank()
            color = r * k // s if layout == "block" else r % k
            node = shared.Split(color, r)
            shared.Free()
        else:
            node = shared
        self.node = node
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        # same-local-rank communicator across nodes, and whether the nodes are all alike
        self.cross = comm.Split(self.local_rank, self.rank)
        self.n_nodes = self.cross.Get_size()
        self._cross_ranks = self.cross.allgather(self.rank)  # world ranks, one per node
        sizes = comm.allgather(self.local_size)
        self.uniform = len(set(sizes)) == 1
        self._buffers: list[_Buffer] = []
        self._scratch: dict[np.dtype, np.ndarray] = {}
        self._desc = np.zeros(12, dtype=np.int64)
        self._closed = False

    # ---------------------------------------------------------------- buffers
    def buffer(self, n: int, dtype="float32") -> np.ndarray:
        """A zeroed ``(n,)`` array in shared memory: this rank's segment of a new window.

        Collective over the node (every rank asks for the same n and dtype, in the same order).
        Segments start on page boundaries (``alloc_shared_noncontig``: each rank's segment is
        placed on its own pages, first touched by its owner). Any number of buffers may be
        alive; they stay valid until :meth:`close`.

        MPICH backs the window with a file in ``/dev/shm``. When the node's window would not
        fit in the space left there on some node of the job (containers default to a 64 MiB
        ``/dev/shm``; touching a page past it kills the process with SIGBUS), the buffer is an
        ordinary private array instead, on every rank of every node (so all ranks reduce it
        the same way), reduced like a foreign array (correct, bitwise identical on every rank,
        but at MPI speed), and a ``RuntimeWarning`` says so (``docker run --shm-size`` fixes
        it). Ranks asking for different ``n`` or ``dtype`` get a ``ValueError`` / ``TypeError``
        naming it, on every rank.
        """
        self._check_open()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
        if dt not in _DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {dt}")
        MPI = _mpi()
        n = int(n)
        # one page of slack: a window of one rank (or MPICH's fallback) may come from malloc
        nbytes = -(-n * dt.itemsize // _PAGE) * _PAGE + _PAGE
        need = self.local_size * nbytes
        # One Allreduce over the world: every rank asked for the same n and dtype (segments of
        # different sizes would make the views of the others' segments run past their ends),
        # and whether the window fits in /dev/shm on every node (each node's rank 0 looks), so
        # all ranks take the same path: a node with a shared window and one with a private
        # array would call different collectives in every reduction and hang.
        free = _shm_free_bytes() if self.local_rank == 0 else None
        fits = free is None or need <= free
        desc = np.array([n, -n, dt.itemsize, -dt.itemsize, 0 if fits else 1,
                         -(free if free is not None and not fits else 1 << 62)], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, desc, MPI.MAX)
        if desc[0] != -desc[1]:
            raise ValueError(f"n: ShmReducer.buffer() is collective and every rank must ask for "
                             f"the same size; got sizes from {-desc[1]} to {desc[0]}")
        if desc[2] != -desc[3]:
            raise TypeError("dtype: ShmReducer.buffer() is collective and every rank must ask "
                            "for the same dtype; got float32 on some ranks, float64 on others")
        if desc[4]:
            free = -int(desc[5])
            warnings.warn(
                f"ShmReducer: a {need / 2**20:.1f} MiB shared window does not fit in the "
                f"{free / 2**20:.1f} MiB free in /dev/shm (on a node of this job); this buffer "
                "is private and reduced through MPI (slower), on every rank. Give the "
                "container more shared memory (docker run --shm-size=...).",
                RuntimeWarning, stacklevel=2)
            return _aligned_zeros(n, dt)
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")
        try:
            win = MPI.Win.Allocate_shared(nbytes, dt.itemsize, info, self.node)
        finally:
            info.Free()
        segs, mems = [], []
        for r in range(self.local_size):
            mem, _ = win.Shared_query(r)
            mems.append(mem)
            arr = np.frombuffer(mem, dtype=np.uint8)
            skip = -arr.ctypes.data % _PAGE  # page-aligned start (64-byte aligned at least)
            segs.append(arr[skip:skip + n * dt.itemsize].view(dt))
        mine = segs[self.local_rank]
        mine.fill(0)
        # Passive-target epoch for the window's lifetime; Win.Sync + node barrier then order
        # the plain loads and stores (the unified-model pattern of the MPI standard).
        win.Lock_all(MPI.MODE_NOCHECK)
        b = _Buffer(win, n, dt, segs, mine, mems)
        self._buffers.append(b)
        self._fence(b)
        return mine

    def shard_range(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """``rank``'s (default: this rank's) shard ``[lo, hi)`` of ``n`` elements."""
        return shard_range(int(n), self.rank if rank is None else int(rank), self.size)

    # ---------------------------------------------------------------- collectives
    def all_reduce_(self, buf: np.ndarray, op: str = "sum") -> None:
        """In place: every rank's ``buf`` becomes the sum (``op="avg"``: sum / world size)
        over ranks, bitwise identical on all ranks.

        Raises ``ValueError`` naming ``buf`` (or ``op``) on every rank, before anything is
        changed, when the ranks passed different sizes, dtypes, buffers or offsets (or ops)."""
        _check_array(buf)
        _check_op(op)
        self._check_open()
        self._all_reduce(buf, op, self._enter(_ALL_REDUCE, buf, op))

    def _all_reduce(self, buf: np.ndarray, op: str, found) -> None:
        div = self.size if op == "avg" else 1
        if found is None or not self.uniform:
            self._cross_sum(self.comm, buf, div)
            return
        b, off = found
        lo, hi = shard_range(buf.size, self.local_rank, self.local_size)
        if self.n_nodes == 1:
            self._reduce_block(b, off + lo, off + hi, div, b.segs)
        else:
            # node-local shard summed into this rank's segment, then across nodes, then copied
            self._reduce_block(b, off + lo, off + hi, 1, [b.mine])
            self._cross_sum(self.cross, b.mine[off + lo:off + hi], div)
            self._copy_out(b, off + lo, off + hi)
        self._fence(b)

    def reduce_scatter_(self, buf: np.ndarray, op: str = "sum") -> tuple[int, int]:
        """Afterwards ``buf[lo:hi]`` (this rank's :meth:`shard_range`) holds the reduced
        values; returns ``(lo, hi)``. The rest of ``buf`` is unspecified (on several nodes,
        or for a foreign array, it holds the full reduction). Mismatched calls raise as
        :meth:`all_reduce_` does."""
        _check_array(buf)
        _check_op(op)
        self._check_open()
        found = self._enter(_REDUCE_SCATTER, buf, op)
        lo, hi = self.shard_range(buf.size)
        if found is None or self.n_nodes > 1 or not self.uniform:
            self._all_reduce(buf, op, found)
            return lo, hi
        b, off = found
        self._reduce_block(b, off + lo, off + hi, self.size if op == "avg" else 1, [b.mine])
        self._fence(b)
        return lo, hi

    def all_gather_(self, buf: np.ndarray) -> None:
        """Every rank's shard (:meth:`shard_range`) of its ``buf`` copied into everyone's.
        Mismatched calls raise as :meth:`all_reduce_` does."""
        _check_array(buf)
        self._check_open()
        found = self._enter(_ALL_GATHER, buf, "sum")
        n = buf.size
        if found is None or not self.uniform:
            self._allgatherv(self.comm, buf, [self.shard_range(n, r) for r in range(self.size)])
            return
        b, off = found
        if self.n_nodes > 1:
            # gather the shards of the ranks with my local rank (other nodes) into my segment:
            # only its owner writes it, and the others read it after the exit fence
            ranks = self._cross_ranks
            self._allgatherv(self.cross, buf, [self.shard_range(n, r) for r in ranks])
        else:
            ranks = [self.rank]
        for r in ranks:
            lo, hi = self.shard_range(n, r)
            self._copy_out(b, off + lo, off + hi)
        self._fence(b)

    def close(self) -> None:
        """Free the windows (collective); idempotent.

        A window whose memory some array still views, on any rank of the node (a ``.data`` of
        a gradient kept after ``DataParallel.close()``), is not freed but kept mapped until
        the process ends, so such an array stays valid instead of pointing at unmapped memory.
        """
        if self._closed:
            return
        MPI = _mpi()
        self._closed = True
        for b in self._buffers:
            b.win.Unlock_all()
            b.segs = b.mine = None
        in_use = np.array([self._viewed(b) for b in self._buffers], dtype=np.int32)
        if in_use.any():
            gc.collect()  # arrays only cycles still hold (autograd graphs)
            in_use = np.array([self._viewed(b) for b in self._buffers], dtype=np.int32)
        if in_use.size:
            self.node.Allreduce(MPI.IN_PLACE, in_use, MPI.MAX)
        for b, keep in zip(self._buffers, in_use):
            if keep:
                _KEPT.append((b.win, b.mems))
            else:
                b.mems = None
                b.win.Free()
        self._buffers.clear()
        self._scratch.clear()
        self.cross.Free()
        self.node.Free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("ShmReducer: used after close()")

    @staticmethod
    def _viewed(b: _Buffer) -> int:
        # A view of a segment keeps its root array alive, which holds the mpi4py buffer. With
        # no view left, a buffer is referenced only as an object in our list is. The baseline
        # is measured on a fresh object through the same code, not assumed: how many
        # references the interpreter itself holds here (the loop variable, getrefcount's
        # argument) differs between Python versions (3.14 borrows some), and a wrong guess
        # would free a window that an array still views.
        return int(any(c > base for c, base in zip(_refcounts(b.mems),
                                                    _refcounts([object() for _ in b.mems]))))

    def _enter(self, what: int, buf: np.ndarray, op: str):
        """The entry of every collective: ``(buffer, offset)`` or None for a foreign array.

        One Allreduce over the world of what each rank passed (operation, op, dtype, size,
        which buffer, offset) does two things. It is the entry fence: ``Win.Sync``, an
        operation that no rank leaves before every rank has entered it, ``Win.Sync``; so every
        rank's stores into its segment are visible before anyone reads it. And it checks that
        the ranks agree: a mismatch (a different length, offset, dtype, a buffer on one rank
        and a foreign array on another) would otherwise hang in mismatched collectives or
        reduce the wrong elements; it raises the same ``ValueError`` on every rank instead,
        before anything is written.
        """
        MPI = _mpi()
        found = self._find(buf)
        if found is not None:
            found[0].win.Sync()
            index, off = self._buffers.index(found[0]), found[1]
        else:
            index, off = -1, -1
        both = self._desc  # (what each rank passed, its negation): max and -min in one MAX
        both[:6] = (what, _OPS.index(op), buf.dtype.itemsize, buf.size, index, off)
        np.negative(both[:6], out=both[6:])
        self.comm.Allreduce(MPI.IN_PLACE, both, MPI.MAX)
        hi, lo = both[:6], -both[6:]
        if (hi != lo).any():
            name = _ENTRY_NAMES[what]
            if hi[0] != lo[0]:
                raise ValueError(f"buf: the ranks called different collectives of ShmReducer "
                                 f"at the same time ({name} on this rank); every rank must "
                                 "call the same ones in the same order")
            if hi[1] != lo[1]:
                raise ValueError(f"op: ShmReducer.{name} was called with different ops on "
                                 f"different ranks ({op!r} on this rank)")
            if hi[2] != lo[2]:
                raise ValueError(f"buf: ShmReducer.{name} was called with float32 on some ranks "
                                 "and float64 on others")
            if hi[3] != lo[3]:
                raise ValueError(f"buf: ShmReducer.{name} was called with arrays of different "
                                 f"lengths on different ranks ({lo[3]} to {hi[3]}; "
                                 f"{buf.size} on this rank)")
            mine = "a foreign array" if index < 0 else f"buffer {index} at offset {off}"
            raise ValueError(
                f"buf: ShmReducer.{name} was called with different arrays on different ranks "
                f"(this rank: {mine}); pass the same buffer of this reducer at the same offset "
                "on every rank, or a foreign array on every rank")
        if found is not None:
            found[0].win.Sync()
        return found

    def _fence(self, b: _Buffer) -> None:
        # stores before the barrier are visible to loads after it on every rank of the node
        b.win.Sync()
        self.node.Barrier()
        b.win.Sync()

    def _find(self, buf: np.ndarray):
        """(buffer, element offset) when ``buf`` is a contiguous piece of one of our buffers."""
        addr = buf.ctypes.data
        for b in self._buffers:
            if b.dtype == buf.dtype and b.addr <= addr and addr + buf.nbytes <= b.addr + b.nbytes:
                off, rem = divmod(addr - b.addr, b.dtype.itemsize)
                if rem == 0:
                    return b, off
        return None

    def _scratch_array(self, dtype: np.dtype, n: int) -> np.ndarray:
        t = self._scratch.get(dtype)
        if t is None or t.size < n:
            t = np.empty(max(n, _BLOCK), dtype=dtype)
            self._scratch[dtype] = t
        return t[:n]

    def _reduce_block(self, b: _Buffer, lo: int, hi: int, div: int, outs: list) -> None:
        """Sum ``[lo, hi)`` over the node's segments in local-rank order, divide by ``div`` if
        > 1, write into each of ``outs``: one C++ pass (csrc/kernels/reduce.cpp), the running
        sum of each block in L1."""
        if hi > lo:
            _backend.segment_sum([s[lo:hi] for s in b.segs], [o[lo:hi] for o in outs],
                                 float(div))

    def _copy_out(self, b: _Buffer, lo: int, hi: int) -> None:
        src = b.mine[lo:hi]
        for seg in b.segs:
            if seg is not b.mine:
                np.copyto(seg[lo:hi], src)

    def _cross_sum(self, comm, x: np.ndarray, div: int) -> None:
        """In place over ``comm``: x = (sum over ranks in rank order) / div, the same bits
        everywhere. Alltoallv hands rank j the j-th piece of everyone's x, j adds them in rank
        order, Allgatherv returns the pieces (the traffic of a ring all-reduce)."""
        size, me, n = comm.Get_size(), comm.Get_rank(), x.size
        if size == 1:
            if div > 1:
                np.divide(x, div, out=x)
            return
        parts = [shard_range(n, j, size) for j in range(size)]
        counts = [hi - lo for lo, hi in parts]
        displs = [lo for lo, _ in parts]
        mlo, mhi = parts[me]
        m = mhi - mlo
        recv = (self._scratch_array(x.dtype, size * m).reshape(size, m) if m
                else np.empty((size, 0), x.dtype))
        mpi_t = _mpi_type(x.dtype)
        comm.Alltoallv([x, (counts, displs), mpi_t],
                       [recv, ([m] * size, [j * m for j in range(size)]), mpi_t])
        if m:
            _backend.segment_sum(list(recv), [x[mlo:mhi]], float(div))
        self._allgatherv(comm, x, parts)

    @staticmethod
    def _allgatherv(comm, x: np.ndarray, parts) -> None:
        MPI = _mpi()
        mpi_t = _mpi_type(x.dtype)
        counts = [hi - lo for lo, hi in parts]
        displs = [lo for lo, _ in parts]
        comm.Allgatherv(MPI.IN_PLACE, [x, (counts, displs), mpi_t])
