"""The only module that imports the compiled core ``gradfuse._C`` (DESIGN.md, layers).

Everything above calls kernels through the names defined here. With only the CPU backend
compiled in, each name is the ``_C`` function itself (no wrapper, no per-call overhead);
a device backend will add its table here and dispatch stays one lookup.
"""

from __future__ import annotations

import os

from . import _C

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
