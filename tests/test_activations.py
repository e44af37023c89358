"""Activations and softmax: compiled kernels against numpy (always) and PyTorch (when
installed), gradcheck in float64, extreme inputs, in-place rules, thread independence and
bad input."""

import math

import numpy as np
import pytest

import gradfuse as gf
import gradfuse.nn.functional as F
from gradfuse import _backend

# --------------------------------------------------------------------------- numpy references
# float64 formulas written from the definitions (not from the kernels' tricks)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sig(x):
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x))
                        / (1 + np.exp(-np.abs(x))))


def _softplus(x, beta, threshold):
    z = beta * x
    with np.errstate(over="ignore"):
        return np.where(z > threshold, x, (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))) / beta)


_K = math.sqrt(2 / math.pi)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(_K * (x + 0.044715 * x**3)))


def _gelu_tanh_grad(x):
    t = np.tanh(_K * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _K * (1 + 3 * 0.044715 * x * x)


# name -> (gradfuse fn, torch fn (given torch), numpy forward, numpy derivative dy/dx)
OPS = {
    "sigmoid": (F.sigmoid, lambda T: T.sigmoid, _sig, lambda x: _sig(x) * (1 - _sig(x))),
    "tanh": (F.tanh, lambda T: T.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "relu": (F.relu, lambda T: T.relu, lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
    "leaky_relu": (lambda t: F.leaky_relu(t, 0.2),
                   lambda T: lambda t: T.nn.functional.leaky_relu(t, 0.2),
                   lambda x: np.where(x > 0, x, 0.2 * x), lambda x: np.where(x > 0, 1.0, 0.2)),
    "leaky_relu_neg": (lambda t: F.leaky_relu(t, -0.3),
                       lambda T: lambda t: T.nn.functional.leaky_relu(t, -0.3),
                       lambda x: np.where(x > 0, x, -0.3 * x),
                       lambda x: np.where(x > 0, 1.0, -0.3)),
    "elu": (lambda t: F.elu(t, 1.5), lambda T: lambda t: T.nn.functional.elu(t, 1.5),
            lambda x: np.where(x > 0, x, 1.5 * np.expm1(np.minimum(x, 0))),
            lambda x: np.where(x > 0, 1.0, 1.5 * np.exp(np.minimum(x, 0)))),
    "elu_neg_alpha": (lambda t: F.elu(t, -0.5), lambda T: lambda t: T.nn.functional.elu(t, -0.5),
                      lambda x: np.where(x > 0, x, -0.5 * np.expm1(np.minimum(x, 0))),
                      lambda x: np.where(x > 0, 1.0, -0.5 * np.exp(np.minimum(x, 0)))),
    "gelu": (F.gelu, lambda T: T.nn.functional.gelu,
             lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
             lambda x: 0.5 * (1 + _erf(x / math.sqrt(2)))
             + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"),
                  lambda T: lambda t: T.nn.functional.gelu(t, approximate="tanh"),
                  _gelu_tanh, _gelu_tanh_grad),
    "silu": (F.silu, lambda T: T.nn.functional.silu, lambda x: x * _sig(x),
             lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    "softplus": (F.softplus, lambda T: T.nn.functional.softplus,
                 lambda x: _softplus(x, 1.0, 20.0), lambda x: np.where(x > 20, 1.0, _sig(x))),
    "softplus_beta": (lambda t: F.softplus(t, beta=2.5, threshold=3.0),
                      lambda T: lambda t: T.nn.functional.softplus(t, beta=2.5, threshold=3.0),
                      lambda x: _softplus(x, 2.5, 3.0),
                      lambda x: np.where(2.5 * x > 3.0, 1.0, _sig(2.5 * x))),
    "softplus_neg": (lambda t: F.softplus(t, beta=-1.5, threshold=-2.0),
                     lambda T: lambda t: T.nn.functional.softplus(t, beta=-1.5, threshold=-2.0),
                     lambda x: _softplus(x, -1.5, -2.0),
                     lambda x: np.where(-1.5 * x > -2.0, 1.0, _sig(-1.5 * x))),
}
NAMES = list(OPS)
SHAPES = [(), (1,), (7,), (1, 1), (3, 17), (2, 3, 5), (1031,), (0, 4)]  # 1031: vector tails
TOL = {np.float32: dict(rtol=3e-6, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def _x(rng, shape, dtype, scale=3.0):
    return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_match_numpy(rng, name, shape, dtype):
    fn, _, fwd, deriv = OPS[name]
    x = _x(rng, shape, dtype)
    g = _x(rng, shape, dtype, 1.0)
    xt = gf.tensor(x, requires_grad=True)
    y = fn(xt)
    assert y.dtype == dtype and y.shape == shape
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y.detach().numpy(), fwd(x64), **TOL[dtype])
    y.backward(gf.tensor(g))
    assert xt.grad.dtype == dtype and xt.grad.shape == shape
    np.testing.assert_allclose(xt.grad.numpy(), g * deriv(x64), **TOL[dtype])


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(rng, name):
    fn = OPS[name][0]
    # keep the points off the kinks (0 for relu-likes, the softplus thresholds) by > eps
    x = _x(rng, (4, 5), np.float64)
    x[np.abs(x) < 1e-3] = 0.5
    x[np.abs(2.5 * x - 3.0) < 1e-3] = 0.5
    x[np.abs(-1.5 * x + 2.0) < 1e-3] = 0.5
    xt = gf.tensor(x, requires_grad=True)
    assert gf.autograd.gradcheck(fn, [xt])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch(rng, name, dtype):
    torch = pytest.importorskip("torch")
    fn, tfn, _, _ = OPS[name]
    x = _x(rng, (5, 67), dtype)
    x[0, :5] = [0.0, -0.0, 1e-8, -1e-8, 40.0]
    g = _x(rng, (5, 67), dtype, 1.0)
    xg = gf.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yg, yt = fn(xg), tfn(torch)(xt)
    np.testing.assert_allclose(yg.detach().numpy(), yt.detach().numpy(), **TOL[dtype])
    yg.backward(gf.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(xg.grad.detach().numpy(), xt.grad.numpy(), **TOL[dtype])


def test_gelu_erf_accuracy_dense_grid():
    # the float32 erf is a fitted polynomial: check it over its whole range, both branches
    x = np.linspace(-9, 9, 200001).astype(np.float32)
    y = F.gelu(gf.tensor(x)).detach().numpy().astype(np.float64)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + _erf(x64 / math.sqrt(2)))
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-6)


EXTREME = np.array([1e30, -1e30, np.inf, -np.inf, 100.0, -100.0, 88.8, -88.8, 1e-30, -1e-30,
                    3.4e38, -3.4e38])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "softplus_beta", "elu", "relu",
                                  "leaky_relu", "gelu", "gelu_tanh", "silu"])
def test_large_inputs_stay_finite_as_torch(name, dtype):
    """No overflow: wherever PyTorch gives a finite value (forward or gradient), so do we, and
    the values agree; where PyTorch says NaN for +-inf (0 * inf), so may we."""
    torch = pytest.importorskip("torch")
    fn, tfn, _, _ = OPS[name]
    x = EXTREME.astype(dtype)
    xg = gf.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yg, yt = fn(xg), tfn(torch)(xt)
    yg.backward(gf.ones_like(yg))
    yt.backward(torch.ones_like(yt))
    for ours, theirs in ((yg.detach().numpy(), yt.detach().numpy()), (xg.grad.detach().numpy(), xt.grad.numpy())):
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-30)
        assert not np.isnan(ours[np.isfinite(x)]).any(), ours


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus"])
def test_saturating_ops_have_no_nan(name):
    fn = OPS[name][0]
    x = gf.tensor(EXTREME.astype(np.float32), requires_grad=True)
    y = fn(x)
    y.sum().backward()
    assert np.isfinite(y.detach().numpy()[np.isfinite(EXTREME) | (name != "softplus")]).all()
    assert not np.isnan(y.detach().numpy()).any() and not np.isnan(x.grad.detach().numpy()).any()


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates(name):
    fn = OPS[name][0]
    x = gf.tensor(np.array([np.nan, 1.0, -1.0], np.float32), requires_grad=True)
    y = fn(x)
    assert np.isnan(y.detach().numpy()[0]) and np.isfinite(y.detach().numpy()[1:]).all()
    y.sum().backward()
    assert np.isfinite(x.grad.detach().numpy()[1:]).all()


def test_nan_gradients_as_torch():
    torch = pytest.importorskip("torch")
    x = np.array([np.nan, 2.0, -2.0], np.float32)
    for name in NAMES:
        fn, tfn, _, _ = OPS[name]
        xg, xt = gf.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        fn(xg).sum().backward()
        tfn(torch)(xt).sum().backward()
        np.testing.assert_array_equal(np.isnan(xg.grad.detach().numpy()), np.isnan(xt.grad.numpy()),
                                      err_msg=name)


# --------------------------------------------------------------------------- softmax


def _np_softmax(x, dim):
    z = x - x.max(axis=dim, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=dim, keepdims=True)


def _np_log_softmax(x, dim):
    z = x - x.max(axis=dim, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


SOFTMAX_SHAPES = [((1,), 0), ((7,), -1), ((1, 1), 1), ((3, 17), 1), ((3, 17), 0), ((2, 3, 5), 0),
                  ((2, 3, 5), 1), ((2, 3, 5), 2), ((4, 9, 131), 1), ((2, 70, 3), -2), ((0, 4), 1)]


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,dim", SOFTMAX_SHAPES, ids=str)
def test_softmax_matches_numpy(rng, shape, dim, dtype, log):
    x = _x(rng, shape, dtype)
    g = _x(rng, shape, dtype, 1.0)
    xt = gf.tensor(x, requires_grad=True)
    y = (F.log_softmax if log else F.softmax)(xt, dim)
    x64 = x.astype(np.float64)
    want = (_np_log_softmax if log else _np_softmax)(x64, dim)
    np.testing.assert_allclose(y.detach().numpy(), want, **TOL[dtype])
    y.backward(gf.tensor(g))
    if log:
        want_g = g - np.exp(want) * g.sum(axis=dim, keepdims=True)
    else:
        want_g = want * (g - (g * want).sum(axis=dim, keepdims=True))
    np.testing.assert_allclose(xt.grad.numpy(), want_g, **TOL[dtype])


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_softmax_gradcheck(rng, dim, log):
    x = gf.tensor(_x(rng, (3, 4, 5), np.float64), requires_grad=True)
    fn = F.log_softmax if log else F.softmax
    assert gf.autograd.gradcheck(lambda t: fn(t, dim), [x])


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,dim", [((6, 33), 1), ((6, 33), 0), ((3, 70, 5), 1)], ids=str)
def test_softmax_matches_torch(rng, shape, dim, log):
    torch = pytest.importorskip("torch")
    x = _x(rng, shape, np.float32, 10.0)
    g = _x(rng, shape, np.float32, 1.0)
    xg, xt = gf.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yg = (F.log_softmax if log else F.softmax)(xg, dim)
    yt = (torch.log_softmax if log else torch.softmax)(xt, dim)
    np.testing.assert_allclose(yg.detach().numpy(), yt.detach().numpy(), rtol=2e-6, atol=2e-6)
    yg.backward(gf.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(xg.grad.detach().numpy(), xt.grad.numpy(), rtol=2e-5, atol=2e-6)


def test_softmax_extremes_and_0d():
    x = np.array([[1e30, 0.0, -1e30], [-np.inf, 0.0, 0.0], [np.nan, 1.0, 2.0]], np.float32)
    y = F.softmax(gf.tensor(x), 1).detach().numpy()
    np.testing.assert_array_equal(y[0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(y[1], [0.0, 0.5, 0.5])
    assert np.isnan(y[2]).all()  # as PyTorch: one NaN poisons its row
    ly = F.log_softmax(gf.tensor(x[:2]), 1).detach().numpy()
    assert ly[1, 0] == -np.inf and np.isclose(ly[1, 1], -math.log(2))
    s = gf.tensor(3.0, requires_grad=True)
    out = F.softmax(s, 0)
    assert out.shape == () and out.item() == 1.0
    out.backward()
    assert s.grad.item() == 0.0
    assert F.log_softmax(gf.tensor(3.0), -1).item() == 0.0


def test_softmax_dtype_argument():
    x = gf.tensor([[1.0, 2.0]])
    y = F.softmax(x, 1, dtype=gf.float64)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.detach().numpy(), _np_softmax(np.array([[1.0, 2.0]]), 1))


def test_softmax_non_contiguous_input(rng):
    x = _x(rng, (6, 5), np.float32)
    xt = gf.tensor(x, requires_grad=True)
    y = F.softmax(xt.transpose(0, 1), 1)  # a transposed view
    np.testing.assert_allclose(y.detach().numpy(), _np_softmax(x.T.astype(np.float64), 1), rtol=3e-6)
    y.sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), 0.0, atol=1e-6)


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("name", NAMES)
def test_bitwise_independent_of_thread_count(rng, name):
    fn = OPS[name][0]
    x = _x(rng, (300007,), np.float32)  # past the parallel grain, odd split
    g = _x(rng, (300007,), np.float32, 1.0)
    prev = gf.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            gf.set_num_threads(threads)
            xt = gf.tensor(x, requires_grad=True)
            y = fn(xt)
            y.backward(gf.tensor(g))
            results.append((y.detach().numpy().copy(), xt.grad.numpy().copy()))
    finally:
        gf.set_num_threads(prev)
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,dim", [((513, 777), 1), ((97, 777, 3), 1), ((5, 3001, 70), 2)],
                         ids=str)
def test_softmax_bitwise_independent_of_thread_count(rng, shape, dim, log):
    x = _x(rng, shape, np.float32)
    g = _x(rng, shape, np.float32, 1.0)
    fn = F.log_softmax if log else F.softmax
    prev = gf.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            gf.set_num_threads(threads)
            xt = gf.tensor(x, requires_grad=True)
            y = fn(xt, dim)
            y.backward(gf.tensor(g))
            results.append((y.detach().numpy().copy(), xt.grad.numpy().copy()))
    finally:
        gf.set_num_threads(prev)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# --------------------------------------------------------------------------- in place


def _mlp_grads(rng, act, inplace):
    gf.manual_seed(0)
    lin = gf.nn.Linear(6, 5).double()
    x = gf.tensor(_x(rng, (4, 6), np.float64))
    h = lin(x)
    y = act(h, inplace)
    assert (y is h) == inplace
    (y * y).sum().backward()
    return y.detach().numpy().copy(), lin.weight.grad.detach().numpy().copy(), lin.bias.grad.detach().numpy().copy()


@pytest.mark.parametrize("act", [
    lambda h, ip: F.relu(h, inplace=ip),
    lambda h, ip: F.leaky_relu(h, 0.1, inplace=ip),
    lambda h, ip: F.leaky_relu(h, -0.1, inplace=ip),
    lambda h, ip: F.elu(h, 0.7, inplace=ip),
    lambda h, ip: F.elu(h, -0.7, inplace=ip),
    lambda h, ip: F.silu(h, inplace=ip),
    lambda h, ip: gf.nn.ReLU(inplace=ip)(h),
    lambda h, ip: gf.nn.SiLU(inplace=ip)(h),
], ids=["relu", "leaky", "leaky_neg", "elu", "elu_neg", "silu", "ReLU", "SiLU"])
def test_inplace_after_linear_matches_out_of_place(act):
    a = _mlp_grads(np.random.default_rng(5), act, False)
    b = _mlp_grads(np.random.default_rng(5), act, True)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-14)


def test_inplace_refuses_leaf_that_requires_grad():
    x = gf.tensor([-1.0, 2.0], requires_grad=True)
    for fn in (F.relu_, lambda t: F.relu(t, inplace=True), lambda t: F.elu_(t),
               lambda t: F.leaky_relu_(t), lambda t: F.silu(t, inplace=True), lambda t: t.relu_()):
        with pytest.raises(RuntimeError, match="leaf Variable"):
            fn(x)
        np.testing.assert_array_equal(x.detach().numpy(), [-1.0, 2.0])  # untouched


def test_inplace_refuses_when_producer_saved_its_output():
    x = gf.tensor([-1.0, 2.0], requires_grad=True)
    s = gf.sigmoid(x)  # saves its output for backward
    before = s.detach().numpy().copy()
    with pytest.raises(RuntimeError, match="saved this tensor"):
        F.relu_(s)
    np.testing.assert_array_equal(s.detach().numpy(), before)


def test_inplace_without_grad_and_on_views():
    x = gf.tensor([[-1.0, 2.0], [3.0, -4.0]])
    assert F.relu_(x) is x
    np.testing.assert_array_equal(x.detach().numpy(), [[0.0, 2.0], [3.0, 0.0]])
    y = gf.tensor([[-1.0, 2.0], [3.0, -4.0]])
    col = y[:, 1]  # a strided view: computed in a copy, written back
    F.leaky_relu_(col, 0.5)
    np.testing.assert_array_equal(y.detach().numpy(), [[-1.0, 2.0], [3.0, -2.0]])
    w = gf.tensor([-1.0, 2.0], requires_grad=True)
    with gf.no_grad():
        F.relu_(w)  # a parameter update outside the graph is allowed, as in PyTorch
    np.testing.assert_array_equal(w.detach().numpy(), [0.0, 2.0])


def test_inplace_rebases_graph_through_non_contiguous_view(rng):
    x = gf.tensor(_x(rng, (3, 4), np.float64), requires_grad=True)
    h = (x * 2.0).transpose(0, 1)  # non-contiguous, produced by an op that saved nothing of it
    F.relu_(h)
    h.sum().backward()
    np.testing.assert_array_equal(x.grad.detach().numpy(), 2.0 * (x.detach().numpy() > 0))


# --------------------------------------------------------------------------- API surface


def test_modules_match_functional(rng):
    x = gf.tensor(_x(rng, (3, 7), np.float32))
    pairs = [
        (gf.nn.ReLU(), F.relu(x)),
        (gf.nn.LeakyReLU(0.3), F.leaky_relu(x, 0.3)),
        (gf.nn.Sigmoid(), F.sigmoid(x)),
        (gf.nn.Tanh(), F.tanh(x)),
        (gf.nn.ELU(alpha=0.5), F.elu(x, 0.5)),
        (gf.nn.GELU(), F.gelu(x)),
        (gf.nn.GELU(approximate="tanh"), F.gelu(x, approximate="tanh")),
        (gf.nn.SiLU(), F.silu(x)),
        (gf.nn.Softplus(beta=2.0, threshold=5.0), F.softplus(x, 2.0, 5.0)),
        (gf.nn.Softmax(dim=0), F.softmax(x, 0)),
        (gf.nn.LogSoftmax(dim=1), F.log_softmax(x, 1)),
    ]
    for mod, want in pairs:
        np.testing.assert_array_equal(mod(x).detach().numpy(), want.detach().numpy(), err_msg=repr(mod))
    assert repr(gf.nn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert "negative_slope=0.3" in repr(gf.nn.LeakyReLU(0.3))
    assert "approximate='tanh'" in repr(gf.nn.GELU("tanh"))


def test_modules_in_sequential_train(rng):
    model = gf.nn.Sequential(gf.nn.Linear(4, 8), gf.nn.ReLU(inplace=True), gf.nn.Linear(8, 3),
                             gf.nn.LogSoftmax(dim=1))
    out = model(gf.tensor(_x(rng, (5, 4), np.float32)))
    np.testing.assert_allclose(np.exp(out.detach().numpy()).sum(axis=1), 1.0, rtol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tensor_methods_and_top_level(rng):
    x = gf.tensor(_x(rng, (2, 3), np.float32))
    np.testing.assert_array_equal(x.relu().detach().numpy(), F.relu(x).detach().numpy())
    np.testing.assert_array_equal(x.sigmoid().detach().numpy(), gf.sigmoid(x).detach().numpy())
    np.testing.assert_array_equal(x.tanh().detach().numpy(), gf.tanh(x).detach().numpy())
    np.testing.assert_array_equal(x.softmax(1).detach().numpy(), gf.softmax(x, 1).detach().numpy())
    np.testing.assert_array_equal(x.log_softmax(0).detach().numpy(), gf.log_softmax(x, 0).detach().numpy())
    np.testing.assert_array_equal(gf.relu(x).detach().numpy(), np.maximum(x.detach().numpy(), 0))
    y = gf.tensor([-1.0, 1.0])
    assert y.relu_() is y and y.tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", NAMES)
def test_integer_and_half_input_rejected(name):
    fn = OPS[name][0]
    for bad in (gf.tensor([1, -2]), gf.tensor(np.array([1.0], np.float16))):
        with pytest.raises(TypeError, match="input: expected (a |dtype )?float32 or float64"):
            fn(bad)
    with pytest.raises(TypeError, match="input: expected a Tensor"):
        fn(np.array([1.0]))


def test_bad_hyperparameters():
    x = gf.tensor([1.0])
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="approximate"):
        gf.nn.GELU("exact")
    with pytest.raises(ValueError, match="beta"):
        F.softplus(x, beta=0)
    with pytest.raises(ValueError, match="beta"):
        gf.nn.Softplus(beta=0.0)
    with pytest.raises(ValueError, match="threshold"):
        F.softplus(x, threshold=float("nan"))
    with pytest.raises(ValueError, match="negative_slope"):
        F.leaky_relu(x, float("inf"))
    with pytest.raises(TypeError, match="negative_slope"):
        gf.nn.LeakyReLU("0.1")
    with pytest.raises(TypeError, match="alpha"):
        F.elu(x, alpha=None)
    with pytest.raises(TypeError, match="inplace"):
        gf.nn.ReLU(inplace=1)
    with pytest.raises(TypeError, match="dim"):
        gf.nn.Softmax(dim=None)


def test_softmax_bad_dim():
    x = gf.tensor(np.zeros((2, 3), np.float32))
    for dim in (2, -3):
        with pytest.raises(IndexError, match="dim"):
            F.softmax(x, dim)
    with pytest.raises(IndexError, match="dim"):
        F.log_softmax(gf.tensor(1.0), 1)
    with pytest.raises(TypeError, match="dim"):
        F.softmax(x, None)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.softmax(gf.tensor([1, 2]), 0)


def test_backend_rejects_bad_arrays():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="op"):
        _backend.activation_forward(42, x, 0.0, 0.0, None)
    with pytest.raises(TypeError, match="input"):
        _backend.activation_forward(0, x.astype(np.int32), 0.0, 0.0, None)
    with pytest.raises(ValueError, match="out: expected a C-contiguous"):
        _backend.activation_forward(0, x, 0.0, 0.0, np.zeros((4, 3), np.float32).T)
    np.testing.assert_array_equal(  # a strided input is read through a C-order copy
        _backend.activation_forward(2, x.T - 1, 0.0, 0.0, None), np.maximum(x.T - 1, 0))
    with pytest.raises(ValueError, match="out: expected shape"):
        _backend.activation_forward(0, x, 0.0, 0.0, np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="out: expected dtype"):
        _backend.activation_forward(0, x, 0.0, 0.0, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        _backend.activation_backward(0, np.zeros(5, np.float32), x, 0.0, 0.0)
    with pytest.raises(IndexError, match="dim"):
        _backend.softmax_forward(x, 2, False)
    with pytest.raises(ValueError, match="grad_output"):
        _backend.softmax_backward(np.zeros((4, 3), np.float32), x, 1, False)


def test_docs_activations_example_runs():
    from docs_util import python_block

    scope = {}
    exec(compile(python_block("docs/layers.md", "Activations"), "docs/layers.md activations",
                 "exec"), scope)
    np.testing.assert_allclose(scope["probs"].detach().numpy(), 1.0, rtol=1e-6)
    assert all(p.grad is not None for p in scope["model"].parameters())
    sp = gf.nn.functional.softplus(gf.tensor([-1e30, 0.0, 1e30])).tolist()
    assert sp == [0.0, pytest.approx(math.log(2)), float(np.float32(1e30))]


def test_python_saved_array_rule_matches_kernel():
    from gradfuse import functional as core

    for op in range(9):
        for a in (-1.0, 0.0, 0.5):
            assert core._uses_output(op, a) == _backend.activation_backward_uses_output(op, a, 0.0)
