"""Weight initialization (``gf.nn.init``): PyTorch's names, arguments, fan rules and errors.

Every function fills its tensor in place from a Philox stream (``generator=``, default
:data:`gradfuse.random.default_generator`), records no gradient, and returns the tensor. A
tensor is a ``gf.Tensor`` / ``gf.nn.Parameter`` (or a numpy array); the random ones need float32
or float64. Values are laid out in C order whatever the tensor's strides, so the same seed gives
the same weights on any thread count.

Fans follow PyTorch: for a weight of shape (out, in, *k), ``fan_in = in * prod(k)`` and
``fan_out = out * prod(k)``; fewer than 2 dimensions is an error.

=================  ==========================================================================
scheme             distribution
=================  ==========================================================================
xavier_uniform_    U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))   (Glorot & Bengio 2010)
xavier_normal_     N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))
kaiming_uniform_   U(-b, b), b = gain * sqrt(3 / fan_mode)               (He et al. 2015)
kaiming_normal_    N(0, std^2), std = gain / sqrt(fan_mode)
lecun_uniform_     U(-b, b), b = sqrt(3 / fan_in)   (kaiming_uniform_ with the linear gain)
lecun_normal_      N(0, 1 / fan_in)                 (kaiming_normal_ with the linear gain)
orthogonal_        gain * Q, Q from the QR of a Philox normal matrix   (Saxe et al. 2014)
=================  ==========================================================================

Schemes by name, for configuration files and sweeps: :func:`get` / :func:`init_by_name`, and
:func:`initializer` for ``model.apply``::

    model.apply(gf.nn.init.initializer("he_normal"))       # every weight He-normal, biases 0
    fc = gf.nn.Linear(4, 3, init="xavier_uniform")          # one layer
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import random as _random
from ..cuda.array import DeviceArray
from ..tensor import Tensor

__all__ = [
    "calculate_gain",
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "lecun_uniform_",
    "lecun_normal_",
    "orthogonal_",
    "get",
    "init_by_name",
    "initializer",
    "names",
]

_real = _random._real
_float_array = _random._float_array


def _array(tensor, name: str = "tensor") -> np.ndarray:
    arr = tensor.data if isinstance(tensor, Tensor) else tensor
    # a Tensor on the GPU: its DeviceArray (fills assign through [...], host values uploaded)
    if not isinstance(arr, (np.ndarray, DeviceArray)):
        raise TypeError(f"{name}: expected a gf.Tensor or numpy array, got {type(tensor).__name__}")
    return arr


# ---------------------------------------------------------------- gains and fans


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (PyTorch's table and values).

    ========================  ==========================================
    nonlinearity              gain
    ========================  ==========================================
    linear, conv*, sigmoid    1
    tanh                      5 / 3
    relu                      sqrt(2)
    leaky_relu                sqrt(2 / (1 + negative_slope^2)), slope = param (default 0.01)
    selu                      3 / 4
    ========================  ==========================================

    Example::

        >>> gf.nn.init.calculate_gain("leaky_relu", 0.2)
        1.3867504905630728
    """
    linear_fns = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d"]
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            negative_slope = param
        else:
            raise ValueError(f"param: negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"nonlinearity: Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel), as PyTorch computes them."""
    shape = _array(tensor).shape
    if len(shape) < 2:
        raise ValueError(
            "tensor: Fan in and fan out can not be computed for tensor with fewer than 2 "
            "dimensions"
        )
    receptive_field_size = 1
    for s in shape[2:]:
        receptive_field_size *= s
    return shape[1] * receptive_field_size, shape[0] * receptive_field_size


def _calculate_correct_fan(tensor, mode):
    if not isinstance(mode, str):
        raise TypeError(f"mode: expected 'fan_in' or 'fan_out', got {type(mode).__name__}")
    mode = mode.lower()
    valid_modes = ["fan_in", "fan_out"]
    if mode not in valid_modes:
        raise ValueError(f"mode: Mode {mode} not supported, please use one of {valid_modes}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


# ---------------------------------------------------------------- plain distributions


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    """Fill ``tensor`` with U[a, b) (values never reach b); returns it.

    Example::

        >>> w = gf.nn.init.uniform_(gf.empty(3, 5), -0.1, 0.1)
    """
    arr = _float_array(tensor)
    a, b = _real(a, "a"), _real(b, "b")
    if a > b:
        raise ValueError(
            f"a, b: uniform_ expects to return a [from, to) range, but found from={a} > to={b}"
        )
    _random._fill_uniform(arr, a, b, generator)
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    """Fill ``tensor`` with N(mean, std^2) (Box-Muller from Philox); returns it.

    Example::

        >>> w = gf.nn.init.normal_(gf.empty(3, 5), std=0.02)
    """
    arr = _float_array(tensor)
    mean, std = _real(mean, "mean"), _real(std, "std")
    if std < 0:
        raise ValueError(f"std: normal expects std >= 0.0, but found std {std}")
    _random._fill_normal(arr, mean, std, generator)
    return tensor


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  generator=None):
    """Fill ``tensor`` with N(mean, std^2) restricted to [a, b]; returns it.

    ``a`` and ``b`` are absolute bounds, as in PyTorch (``trunc_normal_(w, std=0.02)`` cuts at
    +-2, i.e. +-100 std). Sampled by inverse CDF, so bounds far in a tail cost no rejections and
    every value lies in [a, b] exactly. ``std == 0`` gives ``mean`` clamped to [a, b], and
    ``a == b`` gives ``a`` (as PyTorch); neither draws from the generator.

    Example::

        >>> w = gf.nn.init.trunc_normal_(gf.empty(3, 5), std=0.02)
    """
    arr = _float_array(tensor)
    mean, std = _real(mean, "mean"), _real(std, "std")
    a, b = _real(a, "a"), _real(b, "b")
    if std < 0:
        raise ValueError(f"std: trunc_normal_ expects std >= 0.0, but found std {std}")
    if a > b:
        raise ValueError(f"a, b: trunc_normal_ expects a <= b, but found a={a} > b={b}")
    if std == 0 or a == b:  # a point mass: the mean clamped to [a, b] (a itself when a == b)
        _random._generator(generator)  # validated as on every other path; nothing is drawn
        arr[...] = min(max(mean, a), b)
        return tensor
    _random._fill_trunc_normal(arr, mean, std, a, b, generator)
    return tensor


def constant_(tensor, val):
    """Fill ``tensor`` with ``val``; returns it."""
    _array(tensor)[...] = val
    return tensor


def ones_(tensor):
    """Fill ``tensor`` with ones; returns it."""
    _array(tensor)[...] = 1
    return tensor


def zeros_(tensor):
    """Fill ``tensor`` with zeros; returns it."""
    _array(tensor)[...] = 0
    return tensor


def eye_(tensor):
    """Fill a 2-D ``tensor`` with the identity (ones on the diagonal of a rectangle); returns it.

    Example::

        >>> gf.nn.init.eye_(gf.empty(2, 3)).numpy().tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    arr = _array(tensor)
    if arr.ndim != 2:
        raise ValueError("tensor: Only tensors with 2 dimensions are supported")
    arr[...] = np.eye(*arr.shape, dtype=arr.dtype)
    return tensor


# ---------------------------------------------------------------- scaled schemes


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    """Glorot uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)); returns ``tensor``.

    Example::

        >>> gain = gf.nn.init.calculate_gain("tanh")
        >>> w = gf.nn.init.xavier_uniform_(gf.empty(256, 128), gain=gain)
    """
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    gain = _real(gain, "gain")
    if fan_in + fan_out == 0:  # nothing to fill (PyTorch divides by zero here)
        return tensor
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    """Glorot normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)); returns ``tensor``.

    Example::

        >>> w = gf.nn.init.xavier_normal_(gf.empty(256, 128))
    """
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    gain = _real(gain, "gain")
    if fan_in + fan_out == 0:  # nothing to fill (PyTorch divides by zero here)
        return tensor
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)


def _kaiming_std(tensor, a, mode, nonlinearity):
    fan = _calculate_correct_fan(tensor, mode)
    try:
        gain = calculate_gain(nonlinearity, a)
    except ValueError as e:  # the slope is kaiming's `a`: name it so
        msg = str(e)
        if msg.startswith("param: "):
            raise ValueError("a: " + msg[len("param: "):]) from None
        raise
    return gain / math.sqrt(fan)


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator=None):
    """He uniform: U(-b, b), b = gain * sqrt(3 / fan_mode); returns ``tensor``.

    Args:
        a: negative slope of the leaky_relu that follows (only used with 'leaky_relu').
        mode: 'fan_in' keeps the forward variance, 'fan_out' the backward one.
        nonlinearity: a :func:`calculate_gain` name ('relu', 'leaky_relu', 'tanh', ...).

    Example::

        >>> w = gf.nn.init.kaiming_uniform_(gf.empty(64, 32), nonlinearity="relu")
    """
    if 0 in _array(tensor).shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator=None):
    """He normal: N(0, std^2), std = gain / sqrt(fan_mode); returns ``tensor``.

    Example::

        >>> w = gf.nn.init.kaiming_normal_(gf.empty(64, 32), mode="fan_out", nonlinearity="relu")
    """
    if 0 in _array(tensor).shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)


def lecun_uniform_(tensor, generator=None):
    """LeCun uniform: U(-b, b), b = sqrt(3 / fan_in), variance 1 / fan_in; returns ``tensor``.

    (Keras's ``lecun_uniform`` is the same distribution.)
    """
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    bound = math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return uniform_(tensor, -bound, bound, generator)


def lecun_normal_(tensor, generator=None):
    """LeCun normal: N(0, 1 / fan_in), the variance SELU networks need; returns ``tensor``.

    (A plain normal, like PyTorch's kaiming_normal_ with the linear gain; Keras's
    ``lecun_normal`` uses a truncated normal with the same variance instead.)
    """
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    std = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return normal_(tensor, 0.0, std, generator)


def orthogonal_(tensor, gain: float = 1, generator=None):
    """A (semi-)orthogonal matrix scaled by ``gain``; returns ``tensor``.

    The tensor is viewed as (rows, cols) = (shape[0], numel / shape[0]). A rows x cols standard
    normal matrix is drawn from Philox, transposed when rows < cols, and factored A = QR by
    numpy's LAPACK (in float64); Q's columns are multiplied by sign(diag(R)) so that Q is
    uniformly (Haar) distributed rather than biased by the QR's sign convention (Mezzadri 2007).
    Rows (rows <= cols) or columns (rows >= cols) are then orthonormal.

    Example::

        >>> w = gf.nn.init.orthogonal_(gf.empty(4, 6), generator=gf.Generator(0)).numpy()
        >>> bool(np.allclose(w @ w.T, np.eye(4), atol=1e-6))
        True
    """
    arr = _float_array(tensor)
    gain = _real(gain, "gain")
    if arr.ndim < 2:
        raise ValueError("tensor: Only tensors with 2 or more dimensions are supported")
    if arr.size == 0:
        return tensor
    rows = arr.shape[0]
    cols = arr.size // rows
    flattened = np.empty((rows, cols), dtype=arr.dtype)
    _random._fill_normal(flattened, 0.0, 1.0, generator)
    a = flattened.astype(np.float64)
    if rows < cols:
        a = a.T
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    arr[...] = (q * gain).reshape(arr.shape)
    return tensor


# ---------------------------------------------------------------- schemes by name


def _fixed(fn, **bound):
    def init(tensor, generator=None, **kwargs):
        return fn(tensor, **{**bound, **kwargs}, generator=generator)

    init.__name__ = fn.__name__
    init.__doc__ = fn.__doc__
    return init


def _no_generator(fn):
    def init(tensor, generator=None, **kwargs):  # deterministic: the generator is not used
        return fn(tensor, **kwargs)

    init.__name__ = fn.__name__
    init.__doc__ = fn.__doc__
    return init


def _pytorch_linear_weight(tensor, generator=None):
    """PyTorch's default for Linear (and Conv) weights: kaiming_uniform_ with a = sqrt(5), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)


_SCHEMES = {
    "xavier_uniform": _fixed(xavier_uniform_),
    "xavier_normal": _fixed(xavier_normal_),
    "glorot_uniform": _fixed(xavier_uniform_),
    "glorot_normal": _fixed(xavier_normal_),
    "kaiming_uniform": _fixed(kaiming_uniform_),
    "kaiming_normal": _fixed(kaiming_normal_),
    "he_uniform": _fixed(kaiming_uniform_, nonlinearity="relu"),
    "he_normal": _fixed(kaiming_normal_, nonlinearity="relu"),
    "lecun_uniform": _fixed(lecun_uniform_),
    "lecun_normal": _fixed(lecun_normal_),
    "orthogonal": _fixed(orthogonal_),
    "uniform": _fixed(uniform_),
    "normal": _fixed(normal_),
    "trunc_normal": _fixed(trunc_normal_),
    "default": _pytorch_linear_weight,
    "zeros": _no_generator(zeros_),
    "ones": _no_generator(ones_),
    "constant": _no_generator(constant_),
    "eye": _no_generator(eye_),
}


def names() -> list:
    """The scheme names :func:`get` accepts."""
    return sorted(_SCHEMES)


def _normalize(name, what: str = "name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what}: expected an initializer name (str), got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").rstrip("_")
    if key not in _SCHEMES:
        raise ValueError(f"{what}: unknown initializer {name!r}; known: {', '.join(names())}")
    return key


def get(name, **kwargs):
    """The initializer called ``name``, as ``fn(tensor, generator=None) -> tensor``.

    Names: xavier_uniform / glorot_uniform, xavier_normal / glorot_normal, kaiming_uniform,
    kaiming_normal (PyTorch's defaults: leaky_relu with a=0), he_uniform and he_normal
    (kaiming with nonlinearity='relu'), lecun_uniform, lecun_normal, orthogonal, uniform,
    normal, trunc_normal, zeros, ones, constant (needs ``val=``), eye, and default (PyTorch's
    Linear weight default, kaiming_uniform_ with a=sqrt(5)). Case and a trailing underscore do
    not matter. ``kwargs`` are bound (``get("normal", std=0.02)``, ``get("he_normal",
    mode="fan_out")``).

    Example::

        >>> init = gf.nn.init.get("he_normal")
        >>> w = init(gf.empty(64, 32), generator=gf.Generator(0))
    """
    fn = _SCHEMES[_normalize(name)]
    if not kwargs:
        return fn

    def init(tensor, generator=None):
        return fn(tensor, generator=generator, **kwargs)

    init.__name__ = fn.__name__
    init.__doc__ = fn.__doc__
    return init


def init_by_name(tensor, name, generator=None, **kwargs):
    """Initialize ``tensor`` in place with the scheme called ``name`` (see :func:`get`).

    Example::

        >>> w = gf.nn.init.init_by_name(gf.empty(64, 32), "xavier_uniform")
    """
    return get(name, **kwargs)(tensor, generator=generator)


def _resolve(scheme, what: str):
    if scheme is None or callable(scheme):
        return scheme
    if isinstance(scheme, str):
        return _SCHEMES[_normalize(scheme, what)]
    raise TypeError(f"{what}: expected an initializer name, a callable or None, got "
                    f"{type(scheme).__name__}")


def initializer(weight="default", bias="zeros", generator=None):
    """A function for ``model.apply`` that re-initializes every layer's ``weight`` and ``bias``.

    A module is touched when it has a ``weight`` Parameter of 2 or more dimensions (Linear and
    the convolution-like layers). ``weight`` and ``bias`` are names (see :func:`get`) or
    callables ``fn(tensor, generator=None)``; ``bias=None`` leaves biases as they are.
    ``weight="default"`` restores the layer's own default initialization (PyTorch's, via
    ``reset_parameters``), biases included, and ignores ``bias``.

    Example::

        >>> model = gf.nn.Sequential(gf.nn.Linear(4, 8), gf.nn.Linear(8, 2))
        >>> _ = model.apply(gf.nn.init.initializer("he_normal", generator=gf.Generator(0)))
        >>> float(model[1].bias.data.sum())
        0.0
    """
    default = isinstance(weight, str) and _normalize(weight, "weight") == "default"
    winit = _resolve(weight, "weight")
    binit = _resolve(bias, "bias")

    def apply(module):
        w = module._parameters.get("weight")
        if w is None or w.data.ndim < 2:
            return
        if default and hasattr(module, "reset_parameters"):
            if generator is None:
                module.reset_parameters()
            else:
                module.reset_parameters(generator=generator)
            return
        winit(w, generator=generator)
        b = module._parameters.get("bias")
        if b is not None and binit is not None:
            binit(b, generator=generator)

    return apply
