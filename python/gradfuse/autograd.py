"""Autograd utilities: :func:`grad` and finite-difference :func:`gradcheck`."""

from __future__ import annotations

import numpy as np

from .tensor import Function, Tensor, no_grad, run_backward

__all__ = ["Function", "grad", "gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when analytical and numerical gradients disagree."""


def grad(output: Tensor, inputs, grad_output=None, retain_graph: bool = False):
    """Gradients of ``output`` with respect to ``inputs``, without touching any ``.grad``.

    Returns a tuple of numpy arrays (None for inputs the output does not depend on).

    Example::

        >>> x = gf.tensor([3.0], requires_grad=True)
        >>> gf.autograd.grad((x * x).sum(), [x])[0]
        array([6.], dtype=float32)
    """
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if not output.requires_grad:
        raise RuntimeError("output: does not require grad and does not have a grad_fn")
    if grad_output is None:
        if output.data.size != 1:
            raise RuntimeError("grad_output: required for a non-scalar output")
        g = np.ones_like(output.data)
    else:
        g = np.asarray(grad_output.data if isinstance(grad_output, Tensor) else grad_output)
        g = g.astype(output.data.dtype, copy=False)
    captured = run_backward(output, g, retain_graph, capture=inputs)
    # copies: the engine may hand back grad_output itself, or one array for two inputs
    res = tuple(None if captured[id(t)] is None else np.array(captured[id(t)]) for t in inputs)
    return res[0] if single else res


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True) -> bool:
    """Compare backward's Jacobian of ``fn`` with central finite differences.

    ``inputs`` are Tensors (or a single Tensor); those with ``requires_grad=True`` must be
    float64 (float32 differences are too coarse). ``fn`` returns one Tensor. Returns True, or
    raises :class:`GradcheckError` naming the input and the worst element (or returns False
    with ``raise_exception=False``).

    Example::

        >>> x = gf.tensor(np.random.rand(3, 4), dtype=gf.float64, requires_grad=True)
        >>> gf.autograd.gradcheck(lambda t: (t * t).sum(dim=1), [x])
        True
    """
    inputs = list(_as_tuple(inputs) if not isinstance(inputs, list) else inputs)
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not diff:
        raise ValueError("inputs: at least one tensor must have requires_grad=True")
    for i in diff:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"inputs[{i}]: gradcheck needs float64, got {inputs[i].dtype}")

    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"fn: expected it to return a Tensor, got {type(out).__name__}")
    out_size = out.data.size

    # analytical: one vector-Jacobian product per output element
    analytical = {i: np.zeros((out_size, inputs[i].data.size)) for i in diff}
    targets = [inputs[i] for i in diff]
    for k in range(out_size):
        onehot = np.zeros(out.data.shape, dtype=out.data.dtype)
        onehot.reshape(-1)[k] = 1.0
        if not out.requires_grad:
            break
        gs = grad(out, targets, grad_output=onehot, retain_graph=True)
        for i, g in zip(diff, gs):
            if g is not None:
                analytical[i][k] = np.asarray(g).reshape(-1)

    # numerical: central differences, one input element at a time
    with no_grad():
        for i in diff:
            data = inputs[i].data  # perturbed in place, whatever its memory layout
            numerical = np.zeros_like(analytical[i])
            for j in range(data.size):
                idx = np.unravel_index(j, data.shape)
                orig = data[idx]
                data[idx] = orig + eps
                plus = np.array(fn(*inputs).data, dtype=np.float64).reshape(-1)
                data[idx] = orig - eps
                minus = np.array(fn(*inputs).data, dtype=np.float64).reshape(-1)
                data[idx] = orig
                numerical[:, j] = (plus - minus) / (2 * eps)
            err = np.abs(analytical[i] - numerical)
            bound = atol + rtol * np.abs(numerical)
            if not np.all(err <= bound):
                k, j = np.unravel_index(np.argmax(err - bound), err.shape)
                msg = (
                    f"gradcheck: inputs[{i}] Jacobian mismatch at output {k}, input element {j}: "
                    f"analytical {analytical[i][k, j]:.8g} vs numerical {numerical[k, j]:.8g} "
                    f"(max abs error {err.max():.3g})"
                )
                if raise_exception:
                    raise GradcheckError(msg)
                return False
    return True
