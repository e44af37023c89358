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
# segment sums for the shared-memory all-reduce (csrc/kernels/reduce.cpp)
def segment_sum(srcs: list[np.ndarray], dsts: list[np.ndarray], div: float) -> None: ...
# data scaling (csrc/kernels/scale.cpp)
def column_stats(
    X: np.ndarray, moments: bool
) -> tuple[
    np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None
]: ...
def affine_columns(
    X: np.ndarray,
    shift: np.ndarray,
    mul: np.ndarray,
    add: np.ndarray,
    clip: bool,
    lo: float,
    hi: float,
) -> tuple[np.ndarray, bool, bool]: ...
def image_channel_stats(
    x: np.ndarray, outer: int, channels: int, inner: int
) -> tuple[np.ndarray, np.ndarray]: ...
def image_affine(
    x: np.ndarray,
    outer: int,
    channels: int,
    inner: int,
    shift: np.ndarray,
    mul: np.ndarray,
    add: np.ndarray,
) -> np.ndarray: ...
def row_norm_forward(
    input: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    rms: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]: ...
def row_norm_backward(
    input: np.ndarray,
    grad_output: np.ndarray,
    weight: np.ndarray | None,
    mean: np.ndarray | None,
    rstd: np.ndarray,
    rms: bool,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]: ...
def batch_norm_forward(
    input: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    training: bool,
    factor: float,
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def batch_norm_backward(
    input: np.ndarray,
    grad_output: np.ndarray,
    weight: np.ndarray | None,
    save_mean: np.ndarray,
    save_rstd: np.ndarray,
    training: bool,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]: ...
def batch_norm_stats(input: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
def batch_norm_grad_sums(
    input: np.ndarray, grad_output: np.ndarray, mean: np.ndarray
) -> tuple[np.ndarray, np.ndarray]: ...
def batch_norm_grad_input(
    input: np.ndarray,
    grad_output: np.ndarray,
    weight: np.ndarray | None,
    mean: np.ndarray,
    rstd: np.ndarray,
    sum_dy: np.ndarray,
    sum_dy_xmu: np.ndarray,
    count: float,
) -> np.ndarray: ...
def group_norm_forward(
    input: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    num_groups: int,
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def group_norm_backward(
    input: np.ndarray,
    grad_output: np.ndarray,
    weight: np.ndarray | None,
    mean: np.ndarray,
    rstd: np.ndarray,
    num_groups: int,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]: ...

# random fills: each writes `out` in place and returns the Philox blocks it consumed
def philox4x32_10(
    counter: tuple[int, int, int, int], key: tuple[int, int]
) -> tuple[int, int, int, int]: ...
def philox_words(seed: int, offset: int, n_blocks: int) -> np.ndarray: ...
def philox_tile_words(seed: int, offset: int, n_tiles: int, isa: str) -> np.ndarray | None: ...
def uniform_fill(out: np.ndarray, seed: int, offset: int, a: float, b: float) -> int: ...
def normal_fill(out: np.ndarray, seed: int, offset: int, mean: float, std: float) -> int: ...
def trunc_normal_fill(
    out: np.ndarray, seed: int, offset: int, mean: float, std: float, a: float, b: float
) -> int: ...
def bernoulli_fill(out: np.ndarray, seed: int, offset: int, p: float) -> int: ...
def dropout_forward(
    input: np.ndarray, seed: int, offset: int, p: float, with_mask: bool
) -> tuple[np.ndarray, np.ndarray | None, int]: ...
def dropout_backward(grad_output: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray: ...

def activation_forward(
    op: int, input: np.ndarray, a: float, b: float, out: np.ndarray | None
) -> np.ndarray: ...
def activation_backward(
    op: int, grad_output: np.ndarray, saved: np.ndarray, a: float, b: float
) -> np.ndarray: ...
def activation_backward_uses_output(op: int, a: float, b: float) -> bool: ...
def softmax_forward(input: np.ndarray, dim: int, log: bool) -> np.ndarray: ...
def softmax_backward(
    grad_output: np.ndarray, output: np.ndarray, dim: int, log: bool
) -> np.ndarray: ...
def install_numpy_allocator() -> bool: ...
def uninstall_numpy_allocator() -> bool: ...
def pool_stats() -> dict[str, int]: ...
def pool_empty_cache() -> None: ...
def pool_set_cache_limit(bytes: int) -> None: ...
def pool_empty(shape: list[int], dtype: np.dtype) -> np.ndarray: ...
def build_info() -> dict[str, object]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...

# --- cuda runtime and arrays (csrc/cuda/runtime.cu, array.cu): `_C.cuda`, only in builds with
# GRADFUSE_CUDA=ON. Device memory travels as integer addresses with element strides; a scalar
# operand is address 0 plus its value. gradfuse.cuda.array is the only caller.
class _CudaModule:
    class DeviceBuffer:
        def __init__(self, nbytes: int) -> None: ...
        @property
        def ptr(self) -> int: ...
        @property
        def nbytes(self) -> int: ...

    def device_count(self) -> tuple[int, str]: ...
    def device_properties(self, device: int = 0) -> dict[str, object]: ...
    def synchronize(self) -> None: ...
    def memory_stats(self) -> dict[str, int]: ...
    def reset_alloc_counters(self) -> None: ...
    def empty_cache(self) -> None: ...
    def stream(self) -> int: ...
    def upload(self, dst: int, src: np.ndarray) -> None: ...
    def download(self, dst: np.ndarray, src: int) -> None: ...
    def memcpy(self, dst: int, src: int, nbytes: int) -> None: ...
    def copy(self, dst: int, dst_dtype: int, dst_strides: list[int], src: int, src_dtype: int,
             src_strides: list[int], value: float, shape: list[int]) -> None: ...
    def unary(self, op: int, dtype: int, out: int, out_strides: list[int], a: int,
              a_strides: list[int], av: float, shape: list[int]) -> None: ...
    def binary(self, op: int, dtype: int, out: int, out_strides: list[int], a: int,
               a_strides: list[int], av: float, b: int, b_strides: list[int], bv: float,
               shape: list[int]) -> None: ...
    def where(self, dtype: int, out: int, out_strides: list[int], c: int, c_strides: list[int],
              cv: float, a: int, a_strides: list[int], av: float, b: int, b_strides: list[int],
              bv: float, shape: list[int]) -> None: ...
    def reduce(self, op: int, dtype: int, out: int, inp: int, outer: int, n: int,
               inner: int) -> None: ...
    def take(self, kind: int, dtype: int, out: int, inp: int, index: int, outer: int, n: int,
             inner: int, m: int) -> None: ...
    def gemm(self, dtype: int, ta: bool, tb: bool, m: int, n: int, k: int, a: int, lda: int,
             sa: int, b: int, ldb: int, sb: int, c: int, ldc: int, sc: int,
             batch: int) -> None: ...

cuda: _CudaModule
