"""The only module that imports the compiled core ``gradfuse._C`` (DESIGN.md, layers).

Everything above calls kernels through the names defined here. With only the CPU backend
compiled in, each name is the ``_C`` function itself (no wrapper, no per-call overhead);
a device backend will add its table here and dispatch stays one lookup.
"""

from __future__ import annotations

import os


def _preload_cublas() -> bool:
    """Load libcublas from the PyPI wheel (site-packages/nvidia/cu13/lib, or nvidia/cublas/lib
    for CUDA 12) when the loader did not find it through _C's RPATH (editable installs, a
    wheel installed elsewhere). True when something was loaded."""
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        for sub in ("cu13", "cublas", "cu12"):
            lib = os.path.join(root, sub, "lib")
            if not os.path.isdir(lib):
                continue
            names = sorted(n for n in os.listdir(lib) if n.startswith("libcublas"))
            # cublasLt first: libcublas needs it
            names.sort(key=lambda n: not n.startswith("libcublasLt"))
            if not any(n.startswith("libcublas.so") for n in names):
                continue
            for n in names:
                if n.startswith(("libcublasLt.so", "libcublas.so")):
                    ctypes.CDLL(os.path.join(lib, n), mode=ctypes.RTLD_GLOBAL)
            return True
    return False


def _load_core():
    """Import ``_C`` with OpenMP's idle threads sleeping instead of spinning.

    A training step alternates numpy's BLAS (OpenBLAS's own thread pool) with gradfuse's
    OpenMP regions. With libgomp's default, a worker spins for a while after each region and
    OpenBLAS's workers spin after each matmul, so on 2 cores each pool holds the core the other
    needs: a 784-1024-1024-10 MLP step took 41 ms on 2 threads against 8.5 ms on 1 thread,
    and 8.5 ms with OMP_WAIT_POLICY=PASSIVE. libgomp reads the variable once, when it loads
    (with ``_C``), so it is set only for that import and removed again: libraries loaded later
    with their own OpenMP runtime keep their defaults (PyTorch linked to the same system libgomp
    shares its setting). A value the user set is left alone, and
    GRADFUSE_OMP_PASSIVE=0 keeps libgomp's default (the bench uses it: PyTorch, when it shares
    the system libgomp, would otherwise run with sleeping workers too).
    """
    ours = ("OMP_WAIT_POLICY" not in os.environ
            and os.environ.get("GRADFUSE_OMP_PASSIVE", "1") not in ("0", "false", "off", "no"))
    if ours:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        try:
            from . import _C
        except ImportError as e:
            # a CUDA build whose libcublas the loader cannot see: preload it from the wheel
            if "libcublas" not in str(e) or not _preload_cublas():
                raise
            from . import _C
    finally:
        if ours:
            del os.environ["OMP_WAIT_POLICY"]
    return _C


_C = _load_core()

cross_entropy_forward = _C.cross_entropy_forward
cross_entropy_backward = _C.cross_entropy_backward

# optimizers over a flat arena (gradfuse.optim)
optim_step = _C.optim_step
ArenaStep = _C.ArenaStep
lamb_step = _C.lamb_step
arena_intact = _C.arena_intact
arena_norm_reduce = _C.arena_norm_reduce
arena_all_finite = _C.arena_all_finite
arena_scale = _C.arena_scale
arena_clamp = _C.arena_clamp

# segment sums for the shared-memory all-reduce (csrc/kernels/reduce.cpp)
segment_sum = _C.segment_sum

# data scaling (csrc/kernels/scale.cpp)
column_stats = _C.column_stats
affine_columns = _C.affine_columns
image_channel_stats = _C.image_channel_stats
image_affine = _C.image_affine

row_norm_forward = _C.row_norm_forward
row_norm_backward = _C.row_norm_backward
batch_norm_forward = _C.batch_norm_forward
batch_norm_backward = _C.batch_norm_backward
# SyncBatchNorm pieces (CPU only: the statistics cross ranks through MPI on the host)
batch_norm_stats = _C.batch_norm_stats
batch_norm_grad_sums = _C.batch_norm_grad_sums
batch_norm_grad_input = _C.batch_norm_grad_input
group_norm_forward = _C.group_norm_forward
group_norm_backward = _C.group_norm_backward

# random fills and dropout (Philox4x32-10, csrc/kernels/init.cpp)
philox4x32_10 = _C.philox4x32_10
philox_words = _C.philox_words
philox_tile_words = _C.philox_tile_words
uniform_fill = _C.uniform_fill
normal_fill = _C.normal_fill
trunc_normal_fill = _C.trunc_normal_fill
bernoulli_fill = _C.bernoulli_fill
dropout_forward = _C.dropout_forward
dropout_backward = _C.dropout_backward

activation_forward = _C.activation_forward
activation_backward = _C.activation_backward
activation_backward_uses_output = _C.activation_backward_uses_output
softmax_forward = _C.softmax_forward
softmax_backward = _C.softmax_backward

build_info = _C.build_info
get_num_threads = _C.get_num_threads
set_num_threads = _C.set_num_threads

pool_stats = _C.pool_stats
pool_empty_cache = _C.pool_empty_cache
pool_set_cache_limit = _C.pool_set_cache_limit
pool_empty = _C.pool_empty
install_numpy_allocator = _C.install_numpy_allocator
uninstall_numpy_allocator = _C.uninstall_numpy_allocator

# Large numpy arrays come from the pool unless GRADFUSE_POOL=0 (see gradfuse.memory).
if os.environ.get("GRADFUSE_POOL", "1") not in ("0", "false", "off", "no"):
    install_numpy_allocator()

# ---------------------------------------------------------------------- cuda dispatch
# With the CUDA backend compiled in, every kernel that gradfuse.cuda.ops mirrors becomes a
# dispatcher: the CUDA op when an argument is a DeviceArray, else the _C function unchanged.
# A CPU-only build keeps the plain _C functions above (no wrapper, no per-call cost).
CUDA_BUILT = hasattr(_C, "cuda")


def _dispatcher(cpu, gpu):
    def dispatch(*args, **kwargs):
        for a in args:
            if type(a) is _DeviceArray:
                return gpu(*args, **kwargs)
        for a in kwargs.values():
            if type(a) is _DeviceArray:
                return gpu(*args, **kwargs)
        return cpu(*args, **kwargs)

    dispatch.__name__ = getattr(cpu, "__name__", "dispatch")
    dispatch.__doc__ = getattr(cpu, "__doc__", None)
    dispatch.cpu, dispatch.cuda = cpu, gpu
    return dispatch


def _install_cuda_dispatch() -> list:
    """Wraps each name of gradfuse.cuda.ops.__all__; returns the names wrapped."""
    try:
        from .cuda import ops as _ops
    except ImportError as e:  # the kernels' Python side is not there (yet)
        if "gradfuse.cuda.ops" not in str(e) and "ops" not in str(e):
            raise
        return []
    g = globals()
    done = []
    for name in getattr(_ops, "__all__", ()):
        gpu = getattr(_ops, name)
        cpu = g.get(name)
        g[name] = gpu if cpu is None else _dispatcher(cpu, gpu)
        done.append(name)
    return done


if CUDA_BUILT:
    from .cuda.array import DeviceArray as _DeviceArray

    CUDA_DISPATCHED = _install_cuda_dispatch()
