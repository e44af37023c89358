"""gradfuse: fused, measured kernels for the optimization side of deep learning.

Example::

    import gradfuse as gf
    x = gf.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()
    x.grad            # tensor([[2., 4.]])
"""

from . import (
    _backend,  # noqa: F401  (loads the compiled core, installs the memory pool)
    autograd,
    cuda,
    data,
    distributed,
    functional,
    memory,
    nn,
    optim,
    random,
    serialization,
    train,
)
from ._config import get_num_threads, set_num_threads, show_config
from ._version import __version__
from .functional import (
    amax,
    cat,
    exp,
    log,
    log_softmax,
    matmul,
    max,
    relu,
    sigmoid,
    softmax,
    stack,
    tanh,
)
from .random import (
    Generator,
    default_generator,
    get_rng_state,
    initial_seed,
    manual_seed,
    rand,
    randn,
    seed,
    set_rng_state,
)
from .serialization import load, save
from .tensor import (
    Tensor,
    arange,
    as_tensor,
    bool_,
    device,
    empty,
    enable_grad,
    float32,
    float64,
    from_numpy,
    full,
    full_like,
    int32,
    int64,
    is_grad_enabled,
    no_grad,
    ones,
    ones_like,
    set_grad_enabled,
    tensor,
    zeros,
    zeros_like,
)

sqrt = functional.sqrt
abs = functional.abs  # noqa: A001
sum = functional.sum  # noqa: A001
mean = functional.mean
reshape = functional.reshape
transpose = functional.transpose
permute = functional.permute

__all__ = [
    "__version__",
    "optim",
    "Tensor",
    "tensor",
    "as_tensor",
    "from_numpy",
    "zeros",
    "ones",
    "empty",
    "full",
    "zeros_like",
    "ones_like",
    "full_like",
    "arange",
    "float32",
    "float64",
    "int32",
    "int64",
    "bool_",
    "device",
    "cuda",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
    "cat",
    "stack",
    "matmul",
    "max",
    "amax",
    "exp",
    "log",
    "sqrt",
    "abs",
    "sum",
    "mean",
    "reshape",
    "transpose",
    "permute",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "manual_seed",
    "Generator",
    "default_generator",
    "seed",
    "initial_seed",
    "get_rng_state",
    "set_rng_state",
    "rand",
    "randn",
    "random",
    "show_config",
    "get_num_threads",
    "set_num_threads",
    "autograd",
    "data",
    "distributed",
    "functional",
    "memory",
    "nn",
    "optim",
    # checkpoints (gradfuse.serialization)
    "serialization",
    "save",
    "load",
    "train",
]
