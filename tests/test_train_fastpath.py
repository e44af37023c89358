"""The training step's fast paths give the numbers of the general paths.

Linear, LayerNorm and CrossEntropy record their node directly (no Function.apply walk), and
Linear computes its weight and bias gradients straight into the optimizer's gradient arena
(``leaf_grad_out``) with the bias gradient as one matrix-vector product. Each is checked
against numpy and against the generic path (Function.apply, gradients copied into the arena),
with gradcheck in float64, and where it must stay off (gf.autograd.grad, a weight that is also
the input, a .grad already there, another dtype).
"""

import numpy as np
import pytest

import gradfuse as gf
from gradfuse import functional as _ops
from gradfuse.tensor import Function

F = gf.nn.functional


def _generic(cls, *args):
    """Function.apply's generic path for an op that has its own apply."""
    return Function.apply.__func__(cls, *args)


def _np_linear_grads(x, w, g):
    x2, g2 = x.reshape(-1, w.shape[1]), g.reshape(-1, w.shape[0])
    return (g2 @ w).reshape(x.shape), g2.T @ x2, g2.astype(np.float64).sum(axis=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 7), (13, 17, 9), (2, 4, 3, 5)])
def test_linear_direct_record_and_arena_grads_match_numpy(rng, dtype, shape):
    # (batch..., in, out); 1 row, 1 feature, sizes not a multiple of 8/16, 3-D input
    *batch, fin, fout = shape
    lin = gf.nn.Linear(fin, fout, dtype=dtype)
    opt = gf.optim.SGD(lin.parameters(), lr=0.0)  # arena views as .grad slots
    x = gf.tensor(rng.standard_normal((*batch, fin)).astype(dtype), requires_grad=True)
    g = rng.standard_normal((*batch, fout)).astype(dtype)
    y = lin(x)
    assert y.grad_fn is not None and type(y.grad_fn) is _ops.Linear
    w, b = lin.weight.data.copy(), lin.bias.data.copy()
    np.testing.assert_allclose(y.data, x.data @ w.T + b, rtol=1e-5, atol=1e-5)
    y.backward(gf.tensor(g))
    gx, gw, gb = _np_linear_grads(x.data, w, g)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.data, gx, **tol)
    np.testing.assert_allclose(lin.weight.grad.data, gw, **tol)
    np.testing.assert_allclose(lin.bias.grad.data, gb, **tol)
    # the gradients live in the arena: .grad is the optimizer's view, not a copy
    for p in lin.parameters():
        assert p.grad is p._grad_slot
        assert p.grad.data.dtype == dtype
    opt.zero_grad()


def test_linear_arena_path_equals_generic_path(rng):
    x = rng.standard_normal((11, 6)).astype(np.float32)
    g = rng.standard_normal((11, 5)).astype(np.float32)
    grads = []
    for fast in (True, False):
        gf.manual_seed(3)
        lin = gf.nn.Linear(6, 5)
        gf.optim.Adam(lin.parameters())
        xt = gf.tensor(x, requires_grad=True)
        args = (xt, lin.weight, lin.bias)
        y = _ops.Linear.apply(*args) if fast else _generic(_ops.Linear, *args)
        y.backward(gf.tensor(g))
        grads.append([xt.grad.data.copy(), lin.weight.grad.data.copy(), lin.bias.grad.data.copy()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_linear_accumulates_on_second_backward_and_shared_use(rng):
    lin = gf.nn.Linear(4, 3)
    gf.optim.SGD(lin.parameters(), lr=0.1)
    x = gf.tensor(rng.standard_normal((7, 4)).astype(np.float32))
    (lin(x).sum() + lin(x).sum()).backward()  # one weight, two nodes in one graph
    lin(x).sum().backward()  # and a second backward on top
    ones = np.ones((7, 3), np.float32)
    np.testing.assert_allclose(lin.weight.grad.data, 3 * ones.T @ x.data, rtol=1e-5)
    np.testing.assert_allclose(lin.bias.grad.data, np.full(3, 21.0), rtol=1e-6)
    assert lin.weight.grad is lin.weight._grad_slot


def test_linear_weight_that_is_also_the_input_is_not_written_twice(rng):
    # F.linear(w, w): the input's gradient reaches w.grad first, so the weight gradient must
    # not be computed into the same arena view
    w = gf.nn.Parameter(rng.standard_normal((3, 3)).astype(np.float64))
    gf.optim.SGD([w], lr=0.1)
    g = rng.standard_normal((3, 3))  # not symmetric: g @ w and g.T @ w differ
    F.linear(w, w).backward(gf.tensor(g))
    ww = w.data
    np.testing.assert_allclose(w.grad.data, g @ ww + g.T @ ww, rtol=1e-12)
    b = gf.nn.Parameter(rng.standard_normal(3).astype(np.float64))
    gf.optim.SGD([b], lr=0.1)
    x = gf.tensor(rng.standard_normal((2, 3)))
    W = gf.tensor(np.eye(3))
    (F.linear(x, W, b) + b).sum().backward()  # bias used by two nodes, 2 rows each
    np.testing.assert_allclose(b.grad.data, np.full(3, 4.0))


def test_autograd_grad_leaves_the_arena_alone(rng):
    lin = gf.nn.Linear(5, 2)
    gf.optim.Adam(lin.parameters())
    x = gf.tensor(rng.standard_normal((4, 5)).astype(np.float32))
    lin(x).sum().backward()
    before = lin.weight.grad.data.copy()
    lin.zero_grad()  # .grad None, the arena keeps the old values
    gw, gb = gf.autograd.grad(lin(2 * x).sum(), [lin.weight, lin.bias])  # other values
    assert lin.weight.grad is None and lin.bias.grad is None
    np.testing.assert_allclose(gw, np.ones((4, 2), np.float32).T @ (2 * x.data), rtol=1e-5)
    np.testing.assert_allclose(gb, np.full(2, 4.0))
    np.testing.assert_array_equal(lin.weight._grad_slot.data, before)


def test_leaf_grad_out_conditions():
    from gradfuse.tensor import leaf_grad_out

    p = gf.nn.Parameter(np.zeros((2, 3), np.float32))
    assert leaf_grad_out(p, p.dtype) is None  # no optimizer: nowhere to write
    gf.optim.SGD([p], lr=0.1)
    out = leaf_grad_out(p, np.dtype(np.float32))
    assert out is p._grad_slot.data
    assert leaf_grad_out(p, np.dtype(np.float64)) is None  # computed in another dtype
    p.grad = p._grad_slot
    assert leaf_grad_out(p, p.dtype) is None  # a gradient is there: accumulate instead


def test_linear_float32_weights_float64_input_casts_gradient(rng):
    lin = gf.nn.Linear(3, 2)
    gf.optim.SGD(lin.parameters(), lr=0.1)
    x = gf.tensor(rng.standard_normal((4, 3)))  # float64
    y = lin(x)
    assert y.dtype == np.float64
    y.sum().backward()
    assert lin.weight.grad.dtype == np.float32
    np.testing.assert_allclose(lin.weight.grad.data, np.ones((4, 2)).T @ x.data, rtol=1e-6)


def test_linear_empty_batch_gives_zero_bias_gradient():
    lin = gf.nn.Linear(3, 2)
    gf.optim.SGD(lin.parameters(), lr=0.1)
    lin(gf.zeros(0, 3)).sum().backward()
    np.testing.assert_array_equal(lin.bias.grad.data, np.zeros(2, np.float32))
    np.testing.assert_array_equal(lin.weight.grad.data, np.zeros((2, 3), np.float32))


def test_linear_no_grad_and_non_tensor_arguments(rng):
    lin = gf.nn.Linear(3, 2)
    x = gf.tensor(rng.standard_normal((4, 3)).astype(np.float32))
    with gf.no_grad():
        y = lin(x)
    assert not y.requires_grad and y.grad_fn is None
    # a plain array as input takes the generic path, with the same numbers
    y2 = _ops.Linear.apply(x.data, lin.weight, lin.bias)
    np.testing.assert_allclose(y2.data, lin(x).data, rtol=1e-6)
    with pytest.raises(ValueError, match="linear: input shape"):
        lin(gf.zeros(4, 5))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck_with_arena(rng, bias):
    lin = gf.nn.Linear(5, 3, bias=bias, dtype=np.float64)
    gf.optim.SGD(lin.parameters(), lr=0.1)
    x = gf.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    params = [lin.weight] + ([lin.bias] if bias else [])
    assert gf.autograd.gradcheck(lambda a, *p: F.linear(a, *p), [x, *params])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_direct_record_equals_generic(rng, dtype):
    ln = gf.nn.LayerNorm(7, dtype=dtype)
    ln.weight.data[...] = rng.standard_normal(7)
    gf.optim.Adam(ln.parameters())
    x = rng.standard_normal((5, 3, 7)).astype(dtype)
    g = rng.standard_normal((5, 3, 7)).astype(dtype)
    out = []
    for fast in (True, False):
        xt = gf.tensor(x, requires_grad=True)
        args = (xt, ln.weight, ln.bias, 1, 1e-5, False)
        y = _ops.LayerNorm.apply(*args) if fast else _generic(_ops.LayerNorm, *args)
        ln.zero_grad()
        y.backward(gf.tensor(g))
        out.append([y.data, xt.grad.data, ln.weight.grad.data.copy(), ln.bias.grad.data.copy()])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    mean = x.mean(-1, keepdims=True)
    ref = (x - mean) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * ln.weight.data
    np.testing.assert_allclose(out[0][0], ref, rtol=1e-4, atol=1e-4)
    xd = gf.tensor(x.astype(np.float64), requires_grad=True)
    w = gf.tensor(rng.standard_normal(7), requires_grad=True)
    assert gf.autograd.gradcheck(lambda a, ww: _ops.LayerNorm.apply(a, ww, None, 1, 1e-5, False),
                                 [xd, w])


def test_cross_entropy_direct_record_equals_generic(rng):
    x = rng.standard_normal((9, 5)).astype(np.float32)
    t = rng.integers(0, 5, 9)
    res = []
    for fast in (True, False):
        xt = gf.tensor(x, requires_grad=True)
        args = (xt, t, None, -100, 0.1, "mean")
        loss = _ops.CrossEntropy.apply(*args) if fast else _generic(_ops.CrossEntropy, *args)
        loss.backward()
        res.append([loss.data, xt.grad.data])
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)
    xd = gf.tensor(x.astype(np.float64), requires_grad=True)
    assert gf.autograd.gradcheck(lambda a: F.cross_entropy(a, gf.tensor(t)), [xd])
    with gf.no_grad():
        assert not F.cross_entropy(xd, gf.tensor(t)).requires_grad


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_backward_of_one_element_tensor(shape):
    x = gf.tensor(np.full(shape, 3.0, np.float32), requires_grad=True)
    (x * x).backward()
    assert x.grad.shape == shape and x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.data, np.full(shape, 6.0, np.float32))


def test_mlp_training_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    widths = (6, 9, 4)
    ws = [(rng.uniform(-0.3, 0.3, (b, a)).astype(np.float32),
           rng.uniform(-0.3, 0.3, b).astype(np.float32)) for a, b in zip(widths, widths[1:])]
    x = rng.standard_normal((13, 6)).astype(np.float32)
    t = rng.integers(0, 4, 13)

    def build(lib):
        nn = lib.nn
        layers = [nn.Linear(6, 9), nn.LayerNorm(9), nn.ReLU(), nn.Linear(9, 4)]
        for lin, (w, b) in zip([layers[0], layers[3]], ws):
            if lib is torch:
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(w))
                    lin.bias.copy_(torch.from_numpy(b))
            else:
                lin.weight.data[...] = w
                lin.bias.data[...] = b
        return nn.Sequential(*layers)

    g_net, t_net = build(gf), build(torch)
    g_opt = gf.optim.Adam(g_net.parameters(), lr=1e-2)
    t_opt = torch.optim.Adam(t_net.parameters(), lr=1e-2)
    for _ in range(5):
        g_opt.zero_grad()
        gf.nn.functional.cross_entropy(g_net(gf.tensor(x)), gf.tensor(t)).backward()
        g_opt.step()
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(t_net(torch.from_numpy(x)), torch.from_numpy(t)).backward()
        t_opt.step()
    for gp, tp in zip(g_net.parameters(), t_net.parameters()):
        np.testing.assert_allclose(gp.data, tp.detach().numpy(), rtol=1e-4, atol=1e-5)
