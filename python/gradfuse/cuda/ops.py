"""CUDA versions of the ``_backend`` kernels (csrc/cuda/*.cu), on device arrays.

Every function here has the name and the Python signature of the CPU function it mirrors
(``gradfuse._backend.<name>``) and takes / returns device arrays instead of numpy arrays:
``gradfuse.cuda.array.DeviceArray`` (or anything with its interface: ``.ptr .shape .dtype
.strides``, ``type(a).empty(shape, dtype)``, ``type(a).zeros``, ``type(a).from_numpy`` and
``a.numpy()``). Outputs are allocated with the class of the first device argument. ``_backend``
dispatches a name in ``__all__`` here when any argument is a device array.

Arguments are checked here (dtype, shape, C-contiguity, each error naming the argument) before
any kernel is queued; kernels run on gradfuse's CUDA stream and nothing synchronizes except the
functions that return a host value computed on the device: ``cross_entropy_forward`` (its two
sums and the target check), ``arena_norm_reduce``, ``arena_all_finite``, ``affine_columns``
(the NaN / inf census) and ``ArenaStep.grads_finite``.

Random fills give bitwise the CPU's values for the same (seed, offset) (csrc/rng/philox.h's
counter layout, the same word -> value maps, compiled without FMA contraction).

Example (on a machine with a GPU)::

    >>> from gradfuse.cuda import ops                        # doctest: +SKIP
    >>> x = DeviceArray.from_numpy(np.linspace(-2, 2, 5, dtype=np.float32))
    >>> ops.activation_forward(2, x, 0.0, 0.0, None).numpy()  # relu
    array([0., 0., 0., 1., 2.], dtype=float32)
"""

from __future__ import annotations

import numpy as np

from .._backend import _C

_cu = getattr(_C, "cuda", None)

__all__ = [
    "activation_forward",
    "activation_backward",
    "softmax_forward",
    "softmax_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "row_norm_forward",
    "row_norm_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "uniform_fill",
    "normal_fill",
    "bernoulli_fill",
    "trunc_normal_fill",
    "dropout_forward",
    "dropout_backward",
    "affine_columns",
    "image_affine",
    "optim_step",
    "lamb_step",
    "ArenaStep",
    "arena_norm_reduce",
    "arena_all_finite",
    "arena_scale",
    "arena_clamp",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _kern():
    if _cu is None or not hasattr(_cu, "activation_forward"):
        raise RuntimeError("gradfuse was built without CUDA kernels (GRADFUSE_CUDA=OFF)")
    return _cu


def _is_dev(a) -> bool:
    return a is not None and hasattr(a, "ptr") and not isinstance(a, np.ndarray)


def _c_contiguous(a) -> bool:
    expect = np.dtype(a.dtype).itemsize
    for n, s in zip(reversed(tuple(a.shape)), reversed(tuple(a.strides))):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


def _dev(a, name, dtype=None, ndim=None, shape=None):
    """``a`` checked: a C-contiguous device array of ``dtype`` (one of a tuple) and ``ndim``."""
    if not _is_dev(a):
        raise TypeError(f"{name}: expected a device array, got {type(a).__name__}")
    dt = np.dtype(a.dtype)
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (np.dtype(dtype),)
        if dt not in allowed:
            want = " or ".join(str(np.dtype(d)) for d in allowed)
            raise TypeError(f"{name}: expected dtype {want}, got {dt}")
    if ndim is not None and len(a.shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if not _c_contiguous(a):
        raise ValueError(f"{name}: expected a C-contiguous array")
    return a


def _opt(a, name, dtype, shape):
    """Device pointer of an optional array (0 for None), checked."""
    if a is None:
        return 0
    return _dev(a, name, dtype, len(shape), shape).ptr


def _float(a, name, ndim=None):
    return _dev(a, name, _FLOATS, ndim)


def _empty(like, shape, dtype=None):
    return type(like).empty(tuple(shape), np.dtype(like.dtype if dtype is None else dtype))


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _isz(a) -> int:
    return np.dtype(a.dtype).itemsize


# ---------------------------------------------------------------- activations


def activation_forward(op, input, a, b, out):
    """y = f(input) element-wise (op codes as the CPU's); ``out`` may be ``input`` (in place).

    Shapes: any; returns an array of input's shape and dtype.
    """
    x = _float(input, "input")
    if out is None:
        out = _empty(x, x.shape)
    else:
        _dev(out, "out", x.dtype, shape=x.shape)
    _kern().activation_forward(int(op), _isz(x), x.ptr, _size(x.shape), float(a), float(b),
                               out.ptr)
    return out


def activation_backward(op, grad_output, saved, a, b):
    """grad_input = grad_output * f'(saved) (saved: the forward output or input, as on the CPU)."""
    s = _float(saved, "saved")
    g = _dev(grad_output, "grad_output", s.dtype, shape=s.shape)
    dx = _empty(s, s.shape)
    _kern().activation_backward(int(op), _isz(s), g.ptr, s.ptr, _size(s.shape), float(a),
                                float(b), dx.ptr)
    return dx


def _axis(x, dim):
    nd = len(x.shape)
    d = int(dim)
    if not -nd <= d < nd:
        raise ValueError(f"dim: {dim} is out of range for a {nd}-D input")
    d %= nd
    return _size(x.shape[:d]), int(x.shape[d]), _size(x.shape[d + 1:])


def softmax_forward(input, dim, log):
    """softmax (log=True: log_softmax) along ``dim``; same shape. input must be C-contiguous."""
    x = _float(input, "input")
    if len(x.shape) == 0:
        raise ValueError("input: expected at least 1 dimension")
    outer, d, inner = _axis(x, dim)
    y = _empty(x, x.shape)
    _kern().softmax_forward(_isz(x), x.ptr, outer, d, inner, bool(log), y.ptr)
    return y


def softmax_backward(grad_output, output, dim, log):
    """grad_input of softmax / log_softmax from the forward output."""
    y = _float(output, "output")
    g = _dev(grad_output, "grad_output", y.dtype, shape=y.shape)
    outer, d, inner = _axis(y, dim)
    dx = _empty(y, y.shape)
    _kern().softmax_backward(_isz(y), g.ptr, y.ptr, outer, d, inner, bool(log), dx.ptr)
    return dx


# ---------------------------------------------------------------- cross entropy


def cross_entropy_forward(input, target, weight, ignore_index, label_smoothing):
    """(input (N, C), target (N,) int64, weight (C,)|None) -> (row_loss (N,), lse (N,),
    loss_sum, weight_sum). Synchronizes once (the two sums are Python floats, and an
    out-of-range target raises ValueError naming its position, as on the CPU)."""
    x = _float(input, "input", 2)
    n, c = (int(s) for s in x.shape)
    if n == 0:
        raise ValueError("input: empty batch (0 rows)")
    if c == 0:
        raise ValueError("input: 0 classes")
    t = _dev(target, "target", np.int64, 1)
    if int(t.shape[0]) != n:
        raise ValueError(f"target: expected shape ({n},) to match input {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    ls = float(label_smoothing)
    if not 0.0 <= ls <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {ls}")
    w = _opt(weight, "weight", x.dtype, (c,))
    row_loss, lse = _empty(x, (n,)), _empty(x, (n,))
    loss_sum, weight_sum = _kern().cross_entropy_forward(_isz(x), x.ptr, t.ptr, w, n, c,
                                                         int(ignore_index), ls, row_loss.ptr,
                                                         lse.ptr)
    return row_loss, lse, loss_sum, weight_sum


def cross_entropy_backward(input, target, weight, lse, grad_output, grad_scale, ignore_index,
                           label_smoothing):
    """-> dinput (N, C); grad_output (N,)|None is multiplied by grad_scale."""
    x = _float(input, "input", 2)
    n, c = (int(s) for s in x.shape)
    t = _dev(target, "target", np.int64, 1, (n,))
    lse = _dev(lse, "lse", x.dtype, 1, (n,))
    w = _opt(weight, "weight", x.dtype, (c,))
    g = _opt(grad_output, "grad_output", x.dtype, (n,))
    dx = _empty(x, (n, c))
    _kern().cross_entropy_backward(_isz(x), x.ptr, t.ptr, w, lse.ptr, g, float(grad_scale), n, c,
                                   int(ignore_index), float(label_smoothing), dx.ptr)
    return dx


# ---------------------------------------------------------------- normalization


def _eps(eps):
    eps = float(eps)
    if not (eps >= 0.0 and np.isfinite(eps)):
        raise ValueError(f"eps: expected a finite value >= 0, got {eps}")
    return eps


def row_norm_forward(input, weight, bias, eps, rms):
    """LayerNorm (rms=False) / RMSNorm over the rows of input (M, D) -> (y, mean|None, rstd)."""
    x = _float(input, "input", 2)
    eps = _eps(eps)
    m, d = (int(s) for s in x.shape)
    if d == 0:
        raise ValueError("normalized_shape: normalizes over 0 elements")
    w = _opt(weight, "weight", x.dtype, (d,))
    b = _opt(bias, "bias", x.dtype, (d,))
    y, rstd = _empty(x, (m, d)), _empty(x, (m,))
    mean = None if rms else _empty(x, (m,))
    _kern().row_norm_forward(_isz(x), x.ptr, w, b, m, d, eps, bool(rms), y.ptr,
                             0 if mean is None else mean.ptr, rstd.ptr)
    return y, mean, rstd


def row_norm_backward(input, grad_output, weight, mean, rstd, rms, need_dx, need_dw, need_db):
    """-> (dx|None, dweight|None, dbias|None)."""
    x = _float(input, "input", 2)
    m, d = (int(s) for s in x.shape)
    dy = _dev(grad_output, "grad_output", x.dtype, 2, (m, d))
    w = _opt(weight, "weight", x.dtype, (d,))
    mp = _opt(mean, "mean", x.dtype, (m,))
    if not rms and not mp:
        raise ValueError("mean: required for layer_norm (rms=False)")
    r = _dev(rstd, "rstd", x.dtype, 1, (m,))
    dx = _empty(x, (m, d)) if need_dx else None
    dw = _empty(x, (d,)) if need_dw else None
    db = _empty(x, (d,)) if need_db else None
    _kern().row_norm_backward(_isz(x), x.ptr, dy.ptr, w, mp, r.ptr, m, d, bool(rms),
                              *(0 if a is None else a.ptr for a in (dx, dw, db)))
    return dx, dw, db


def _ncl(x):
    if len(x.shape) not in (2, 3):
        raise ValueError("input: expected a 2-D (N, C) or 3-D (N, C, L) array, got shape "
                         f"{tuple(x.shape)}")
    n, c = int(x.shape[0]), int(x.shape[1])
    return n, c, int(x.shape[2]) if len(x.shape) == 3 else 1


def batch_norm_forward(input, weight, bias, running_mean, running_var, training, factor, eps):
    """(input (N, C) or (N, C, L), ...) -> (y, save_mean (C,), save_rstd (C,)); the running
    statistics are updated in place (on the device) when training."""
    x = _float(input, "input")
    n, c, ln = _ncl(x)
    eps = _eps(eps)
    w = _opt(weight, "weight", x.dtype, (c,))
    b = _opt(bias, "bias", x.dtype, (c,))
    rm = _opt(running_mean, "running_mean", x.dtype, (c,))
    rv = _opt(running_var, "running_var", x.dtype, (c,))
    if bool(rm) != bool(rv):
        raise ValueError("running_mean, running_var: give both or neither")
    if not training and not rm:
        raise ValueError("running_mean: required when training=False")
    if c == 0:
        raise ValueError("input: 0 channels")
    if training and n * ln <= 1:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)}")
    factor = float(factor)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1], got {factor}")
    y, mean, rstd = _empty(x, x.shape), _empty(x, (c,)), _empty(x, (c,))
    _kern().batch_norm_forward(_isz(x), x.ptr, w, b, rm, rv, n, c, ln, eps, bool(training),
                               bool(training and rm), factor, y.ptr, mean.ptr, rstd.ptr)
    return y, mean, rstd


def batch_norm_backward(input, grad_output, weight, save_mean, save_rstd, training, need_dx,
                        need_dw, need_db):
    """-> (dx|None, dweight|None, dbias|None)."""
    x = _float(input, "input")
    n, c, ln = _ncl(x)
    dy = _dev(grad_output, "grad_output", x.dtype, shape=x.shape)
    w = _opt(weight, "weight", x.dtype, (c,))
    m = _dev(save_mean, "mean", x.dtype, 1, (c,))
    r = _dev(save_rstd, "rstd", x.dtype, 1, (c,))
    dx = _empty(x, x.shape) if need_dx else None
    dw = _empty(x, (c,)) if need_dw else None
    db = _empty(x, (c,)) if need_db else None
    _kern().batch_norm_backward(_isz(x), x.ptr, dy.ptr, w, m.ptr, r.ptr, n, c, ln, bool(training),
                                *(0 if a is None else a.ptr for a in (dx, dw, db)))
    return dx, dw, db


def _groups(c, g):
    g = int(g)
    if g <= 0 or c % g:
        raise ValueError(f"num_groups: expected a positive divisor of the {c} channels, got {g}")
    return g


def group_norm_forward(input, weight, bias, num_groups, eps):
    """(input (N, C, S), ...) -> (y, mean (N*G,), rstd (N*G,))."""
    x = _float(input, "input", 3)
    n, c, s = (int(v) for v in x.shape)
    g = _groups(c, num_groups)
    eps = _eps(eps)
    if s == 0 or c == 0:
        raise ValueError(f"input: normalizes over 0 elements, shape {tuple(x.shape)}")
    w = _opt(weight, "weight", x.dtype, (c,))
    b = _opt(bias, "bias", x.dtype, (c,))
    y, mean, rstd = _empty(x, x.shape), _empty(x, (n * g,)), _empty(x, (n * g,))
    _kern().group_norm_forward(_isz(x), x.ptr, w, b, n, c, s, g, eps, y.ptr, mean.ptr, rstd.ptr)
    return y, mean, rstd


def group_norm_backward(input, grad_output, weight, mean, rstd, num_groups, need_dx, need_dw,
                        need_db):
    """-> (dx|None, dweight|None, dbias|None)."""
    x = _float(input, "input", 3)
    n, c, s = (int(v) for v in x.shape)
    g = _groups(c, num_groups)
    dy = _dev(grad_output, "grad_output", x.dtype, 3, x.shape)
    w = _opt(weight, "weight", x.dtype, (c,))
    m = _dev(mean, "mean", x.dtype, 1, (n * g,))
    r = _dev(rstd, "rstd", x.dtype, 1, (n * g,))
    dx = _empty(x, x.shape) if need_dx else None
    dw = _empty(x, (c,)) if need_dw else None
    db = _empty(x, (c,)) if need_db else None
    _kern().group_norm_backward(_isz(x), x.ptr, dy.ptr, w, m.ptr, r.ptr, n, c, s, g,
                                *(0 if a is None else a.ptr for a in (dx, dw, db)))
    return dx, dw, db


# ---------------------------------------------------------------- random fills and dropout


def uniform_fill(out, seed, offset, a, b):
    """Fill ``out`` with U[a, b) in place -> Philox blocks consumed (bitwise the CPU fill)."""
    o = _float(out, "out")
    return _kern().uniform_fill(_isz(o), o.ptr, _size(o.shape), int(seed), int(offset), float(a),
                                float(b))


def normal_fill(out, seed, offset, mean, std):
    """Fill ``out`` with N(mean, std^2) -> blocks consumed (bitwise the CPU fill)."""
    o = _float(out, "out")
    return _kern().normal_fill(_isz(o), o.ptr, _size(o.shape), int(seed), int(offset),
                               float(mean), float(std))


def bernoulli_fill(out, seed, offset, p):
    """Fill ``out`` with 1 (probability p) or 0 -> blocks consumed (bitwise the CPU fill)."""
    o = _float(out, "out")
    return _kern().bernoulli_fill(_isz(o), o.ptr, _size(o.shape), int(seed), int(offset),
                                  float(p))


def trunc_normal_fill(out, seed, offset, mean, std, a, b):
    """Fill ``out`` with N(mean, std^2) truncated to [a, b] -> blocks consumed.

    Made by the CPU kernel and uploaded (one host fill and one copy): the float64 path refines
    with the C library's erfc and exp, which CUDA's libm does not match to the bit, and an
    initializer runs once, so the CPU's exact values are worth the transfer.
    """
    o = _float(out, "out")
    host = np.empty(tuple(o.shape), np.dtype(o.dtype))
    blocks = _C.trunc_normal_fill(host, int(seed), int(offset), float(mean), float(std),
                                  float(a), float(b))
    o[...] = host
    return blocks


def dropout_forward(input, seed, offset, p, with_mask):
    """-> (output, uint8 mask | None, blocks consumed); the CPU's mask bit for bit."""
    x = _float(input, "input")
    out = _empty(x, x.shape)
    mask = _empty(x, x.shape, np.uint8) if with_mask else None
    blocks = _kern().dropout_forward(_isz(x), x.ptr, _size(x.shape), int(seed), int(offset),
                                     float(p), out.ptr, 0 if mask is None else mask.ptr)
    return out, mask, blocks


def dropout_backward(grad_output, mask, scale):
    """-> grad_output * mask * scale."""
    g = _float(grad_output, "grad_output")
    m = _dev(mask, "mask", np.uint8, shape=g.shape)
    dx = _empty(g, g.shape)
    _kern().dropout_backward(_isz(g), g.ptr, m.ptr, _size(g.shape), float(scale), dx.ptr)
    return dx


# ---------------------------------------------------------------- scalers


def _host_vec(cls, v, name, d):
    a = np.ascontiguousarray(v, dtype=np.float64)
    if a.shape != (d,):
        raise ValueError(f"{name}: expected shape ({d},), got {a.shape}")
    return cls.from_numpy(a)


def affine_columns(X, shift, mul, add, clip, lo, hi):
    """-> (out, saw_nan, saw_inf); out = clip((X - shift) * mul + add, lo, hi) in X's dtype.

    X (n, d) is on the device; shift / mul / add (d,) float64 (host or device). Synchronizes
    once to read the NaN / inf census.
    """
    x = _float(X, "X", 2)
    n, d = (int(s) for s in x.shape)
    cls = type(x)
    vecs = [v if _is_dev(v) else _host_vec(cls, v, nm, d)
            for v, nm in ((shift, "shift"), (mul, "mul"), (add, "add"))]
    for v, nm in zip(vecs, ("shift", "mul", "add")):
        _dev(v, nm, np.float64, 1, (d,))
    out = _empty(x, (n, d))
    flags = cls.zeros((2,), np.int32)
    _kern().affine_columns(_isz(x), x.ptr, vecs[0].ptr, vecs[1].ptr, vecs[2].ptr, n, d,
                           bool(clip), float(lo), float(hi), out.ptr, flags.ptr)
    seen = flags.numpy()
    return out, bool(seen[0]), bool(seen[1])


def image_affine(x, outer, channels, inner, shift, mul, add):
    """-> float32 (x - shift[c]) * mul[c] + add[c], x's shape (x uint8 on the device)."""
    a = _dev(x, "x", np.uint8)
    outer, channels, inner = int(outer), int(channels), int(inner)
    if outer * channels * inner != _size(a.shape):
        raise ValueError(f"outer, channels, inner: {outer}*{channels}*{inner} does not match "
                         f"x's {_size(a.shape)} elements")
    cls = type(a)
    vecs = [v if _is_dev(v) else _host_vec(cls, v, nm, channels)
            for v, nm in ((shift, "shift"), (mul, "mul"), (add, "add"))]
    out = _empty(a, a.shape, np.float32)
    _kern().image_affine(a.ptr, outer, channels, inner, vecs[0].ptr, vecs[1].ptr, vecs[2].ptr,
                         out.ptr)
    return out


# ---------------------------------------------------------------- optimizers


def _arena(param, grad, s0, s1, s2):
    p = _float(param, "param", 1)
    n = int(p.shape[0])
    g = _dev(grad, "grad", p.dtype, 1, (n,))
    st = [_opt(s, nm, p.dtype, (n,)) for s, nm in ((s0, "state0"), (s1, "state1"), (s2, "state2"))]
    return p, g, n, st


def optim_step(kind, param, grad, state0, state1, state2, scalars, flags, *, skip=None,
               scale=None):
    """One fused update of a flat arena on the device (csrc/kernels/optim.h's kinds, scalars
    and flags). Device-only extras: ``skip`` (int32 (1,) device array: no update when nonzero,
    see :func:`nonfinite_flag`) and ``scale`` (float64 (1,) device array multiplying the
    gradient, see :func:`clip_coef`) keep the non-finite guard and gradient clipping on the
    device (no host round trip)."""
    p, g, n, st = _arena(param, grad, state0, state1, state2)
    sk = _opt(skip, "skip", np.int32, (1,))
    sc = _opt(scale, "scale", np.float64, (1,))
    _kern().optim_step(int(kind), _isz(p), p.ptr, g.ptr, st[0], st[1], st[2], n,
                       [float(v) for v in scalars], int(flags), sk, sc)


def lamb_step(param, grad, exp_avg, exp_avg_sq, offsets, sizes, scalars, flags):
    """LAMB over a device arena with a per-tensor trust ratio; ``offsets`` / ``sizes`` are the
    segment table (host int64 arrays, in elements), as the CPU's ``lamb_step``."""
    p, g, n, st = _arena(param, grad, exp_avg, exp_avg_sq, None)
    if not (st[0] and st[1]):
        raise ValueError("exp_avg, exp_avg_sq: LAMB needs both state buffers")
    _kern().lamb_step(_isz(p), p.ptr, g.ptr, st[0], st[1], n,
                      np.ascontiguousarray(offsets, dtype=np.int64),
                      np.ascontiguousarray(sizes, dtype=np.int64), [float(v) for v in scalars],
                      int(flags))


class ArenaStep:
    """``optim_step`` bound to one device arena, as ``_C.ArenaStep`` on the CPU.

    ``ArenaStep(kind, param, grad, state0, state1, state2, scalars, flags, params, grads,
    views)``; ``step(scalars, flags) -> bool`` is False (nothing written) when a parameter's
    ``.data`` or ``.grad`` is no longer its arena view. ``grads_finite()`` -> -1 (a view was
    rebound), else 1 / 0 (synchronizes). ``step_if_finite(scalars, flags, scale=None)`` runs the
    non-finite check and the guarded update back to back on the device and returns the int32
    flag (nonzero: the step was skipped) without synchronizing.
    """

    def __init__(self, kind, param, grad, state0, state1, state2, scalars, flags, params, grads,
                 views):
        p, g, n, st = _arena(param, grad, state0, state1, state2)
        self._keep = (param, grad, state0, state1, state2)
        self._ptrs = (p.ptr, g.ptr, st[0], st[1], st[2], n, _isz(p))
        self.kind = int(kind)
        self._lists = (list(params), list(grads), list(views))
        self._flag = type(p).zeros((1,), np.int32)
        _kern()  # the build has the kernels
        # the constructor checks what the CPU's does: a known kind, 14 scalars, the state
        # buffers this kind needs present - by a no-op launch (n = 0)
        _cu.optim_step(self.kind, _isz(p), p.ptr, g.ptr, st[0], st[1], st[2], 0,
                       [float(v) for v in scalars], int(flags), 0, 0)

    def _intact(self):
        return _C.arena_intact(*self._lists)

    def grads_finite(self):
        if not self._intact():
            return -1
        p, g, *_ = self._ptrs
        return int(_cu.arena_all_finite(self._ptrs[6], g, self._ptrs[5]))

    def __call__(self, scalars, flags, *, skip=None, scale=None):
        if not self._intact():
            return False
        p, g, s0, s1, s2, n, isz = self._ptrs
        sk = _opt(skip, "skip", np.int32, (1,))
        sc = _opt(scale, "scale", np.float64, (1,))
        _cu.optim_step(self.kind, isz, p, g, s0, s1, s2, n, [float(v) for v in scalars],
                       int(flags), sk, sc)
        return True

    step = __call__

    def step_if_finite(self, scalars, flags, *, scale=None):
        """Non-finite check + guarded update, no synchronization -> the device skip flag."""
        p, g, s0, s1, s2, n, isz = self._ptrs
        self._flag.fill(0)
        _cu.arena_nonfinite_flag(isz, g, n, self._flag.ptr)
        self(scalars, flags, skip=self._flag, scale=scale)
        return self._flag


def nonfinite_flag(xs, flag=None):
    """OR into ``flag`` (int32 (1,) device array, allocated zeroed when None) whether any of the
    device arrays ``xs`` holds a NaN or inf; no synchronization. Returns the flag."""
    xs = [_float(x, "x") for x in xs]
    if flag is None:
        flag = type(xs[0]).zeros((1,), np.int32)
    _dev(flag, "flag", np.int32, 1, (1,))
    for x in xs:
        _kern().arena_nonfinite_flag(_isz(x), x.ptr, _size(x.shape), flag.ptr)
    return flag


def clip_coef(xs, max_norm, norm_type=2.0):
    """clip_grad_norm_ on the device: -> (total_norm, coef), float64 (1,) device arrays with
    coef = min(max_norm / (total_norm + 1e-6), 1); pass coef as ``scale`` to a step. No
    synchronization."""
    xs = [_float(x, "x", 1) for x in xs]
    cls = type(xs[0])
    total, coef, norm = (cls.zeros((1,), np.float64) for _ in range(3))
    nt = float(norm_type)
    for x in xs:
        _kern().arena_norm_reduce_dev(_isz(x), x.ptr, int(x.shape[0]), nt, total.ptr, True)
    _kern().clip_coef(total.ptr, nt, float(max_norm), coef.ptr, norm.ptr)
    return norm, coef


def arena_norm_reduce(x, norm_type):
    """sum |x|^p (p=2: sum of squares; p=inf: max |x|), NaN if any NaN; synchronizes."""
    a = _float(x, "x", 1)
    return float(_kern().arena_norm_reduce(_isz(a), a.ptr, int(a.shape[0]), float(norm_type)))


def arena_all_finite(x):
    """Whether every element of the device arena is finite; synchronizes."""
    a = _float(x, "x", 1)
    return bool(_kern().arena_all_finite(_isz(a), a.ptr, int(a.shape[0])))


def arena_scale(x, s):
    """x *= s in place."""
    a = _float(x, "x", 1)
    _kern().arena_scale(_isz(a), a.ptr, int(a.shape[0]), float(s))


def arena_clamp(x, lo, hi):
    """x = min(max(x, lo), hi) in place (NaN stays NaN)."""
    a = _float(x, "x", 1)
    _kern().arena_clamp(_isz(a), a.ptr, int(a.shape[0]), float(lo), float(hi))
