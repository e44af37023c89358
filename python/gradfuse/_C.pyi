"""Type stub of the compiled core. Import through ``gradfuse._backend`` only."""

import numpy as np

def cross_entropy_forward(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[np.ndarray, np.ndarray, float, float]: ...
def cross_entropy_backward(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    lse: np.ndarray,
    grad_output: np.ndarray | None,
    grad_scale: float,
    ignore_index: int,
    label_smoothing: float,
) -> np.ndarray: ...
def optim_step(
    kind: int,
    param: np.ndarray,
    grad: np.ndarray,
    state0: np.ndarray | None,
    state1: np.ndarray | None,
    state2: np.ndarray | None,
    scalars: list[float] | tuple[float, ...],
    flags: int,
) -> None: ...
class ArenaStep:
    def __init__(
        self,
        kind: int,
        param: np.ndarray,
        grad: np.ndarray,
        state0: np.ndarray | None,
        state1: np.ndarray | None,
        state2: np.ndarray | None,
        scalars: list[float] | tuple[float, ...],
        flags: int,
        params: list,
        grads: list,
        views: list,
    ) -> None: ...
    def __call__(self, scalars: list[float] | tuple[float, ...], flags: int) -> bool: ...
    def grads_finite(self) -> int: ...

def lamb_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    scalars: list[float] | tuple[float, ...],
    flags: int,
) -> None: ...
def arena_intact(params: list, grads: list, views: list) -> bool: ...
def arena_norm_reduce(x: np.ndarray, norm_type: float) -> float: ...
def arena_all_finite(x: np.ndarray) -> bool: ...
def arena_scale(x: np.ndarray, s: float) -> None: ...
def arena_clamp(x: np.ndarray, lo: float, hi: float) -> None: ...
def install_numpy_allocator() -> bool: ...
def uninstall_numpy_allocator() -> bool: ...
def pool_stats() -> dict[str, int]: ...
def pool_empty_cache() -> None: ...
def pool_set_cache_limit(bytes: int) -> None: ...
def pool_empty(shape: list[int], dtype: np.dtype) -> np.ndarray: ...
def build_info() -> dict[str, object]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
