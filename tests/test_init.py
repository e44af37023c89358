"""gf.nn.init: PyTorch's gains, fans, bounds and errors; orthogonality; schemes by name;
Linear's default and init= option; the deep-tanh demonstration."""

import math

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.nn import init


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------- gains and fans

GAINS = [("linear", None), ("conv1d", None), ("conv2d", None), ("conv3d", None),
         ("conv_transpose1d", None), ("conv_transpose2d", None), ("conv_transpose3d", None),
         ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
         ("leaky_relu", 0.2), ("leaky_relu", 1), ("leaky_relu", math.sqrt(5)), ("selu", None)]


@pytest.mark.parametrize("nonlinearity,param", GAINS)
def test_calculate_gain_equals_torch(nonlinearity, param):
    t = _torch()
    assert init.calculate_gain(nonlinearity, param) == t.nn.init.calculate_gain(nonlinearity, param)


def test_calculate_gain_values_and_errors():
    assert init.calculate_gain("tanh") == 5.0 / 3
    assert init.calculate_gain("relu") == math.sqrt(2.0)
    assert init.calculate_gain("leaky_relu", 0.2) == math.sqrt(2 / (1 + 0.04))
    with pytest.raises(ValueError, match="Unsupported nonlinearity swish"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope True not a valid number"):
        init.calculate_gain("leaky_relu", True)
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", "0.1")


SHAPES = [(3, 4), (1, 1), (8, 3, 5), (2, 3, 4, 5), (16, 1, 3, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_equal_torch(shape):
    t = _torch()
    assert init._calculate_fan_in_and_fan_out(gf.empty(*shape)) == \
        t.nn.init._calculate_fan_in_and_fan_out(t.empty(*shape))
    for mode in ("fan_in", "fan_out", "FAN_IN"):
        assert init._calculate_correct_fan(gf.empty(*shape), mode) == \
            t.nn.init._calculate_correct_fan(t.empty(*shape), mode)


def test_fans_by_hand():
    assert init._calculate_fan_in_and_fan_out(gf.empty(8, 3, 5, 7)) == (3 * 35, 8 * 35)
    assert init._calculate_fan_in_and_fan_out(np.empty((4, 6))) == (6, 4)


@pytest.mark.parametrize("fn", [init.xavier_uniform_, init.xavier_normal_, init.kaiming_uniform_,
                                init.kaiming_normal_, init.lecun_uniform_, init.lecun_normal_])
def test_fan_of_1d_tensor_is_torch_error(fn):
    w = gf.zeros(5)
    with pytest.raises(ValueError, match="Fan in and fan out can not be computed for tensor "
                                         "with fewer than 2 dimensions"):
        fn(w)
    assert not w.data.any()


# ---------------------------------------------------------------- scheme distributions


def _expected(name, shape):
    """(kind, bound or std) from the formula written with PyTorch's own gain and fan."""
    t = _torch()
    fan_in, fan_out = t.nn.init._calculate_fan_in_and_fan_out(t.empty(*shape))
    if name == "xavier_uniform":
        return "uniform", math.sqrt(6.0 / (fan_in + fan_out))
    if name == "xavier_normal":
        return "normal", math.sqrt(2.0 / (fan_in + fan_out))
    if name == "kaiming_uniform_relu_fan_out":
        return "uniform", t.nn.init.calculate_gain("relu") * math.sqrt(3.0 / fan_out)
    if name == "kaiming_normal_leaky":
        return "normal", t.nn.init.calculate_gain("leaky_relu", 0.1) / math.sqrt(fan_in)
    if name == "lecun_uniform":
        return "uniform", math.sqrt(3.0 / fan_in)
    if name == "lecun_normal":
        return "normal", math.sqrt(1.0 / fan_in)
    raise KeyError(name)


SCHEMES = {
    "xavier_uniform": lambda w, g: init.xavier_uniform_(w, generator=g),
    "xavier_normal": lambda w, g: init.xavier_normal_(w, generator=g),
    "kaiming_uniform_relu_fan_out": lambda w, g: init.kaiming_uniform_(
        w, mode="fan_out", nonlinearity="relu", generator=g),
    "kaiming_normal_leaky": lambda w, g: init.kaiming_normal_(w, a=0.1, generator=g),
    "lecun_uniform": lambda w, g: init.lecun_uniform_(w, generator=g),
    "lecun_normal": lambda w, g: init.lecun_normal_(w, generator=g),
}


@pytest.mark.parametrize("name", sorted(SCHEMES))
@pytest.mark.parametrize("shape", [(300, 200), (64, 16, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scheme_distribution(name, shape, dtype):
    w = gf.empty(*shape, dtype=dtype)
    out = SCHEMES[name](w, gf.Generator(17))
    assert out is w and w.dtype == dtype
    x = w.data.astype(np.float64).ravel()
    n = x.size
    kind, v = _expected(name, shape)
    if kind == "uniform":
        assert np.abs(x).max() < v and np.abs(x).max() > v * (1 - 20 / n)
        std = v / math.sqrt(3)
        assert abs(x.var() - std**2) < 5 * std**2 * math.sqrt(0.8 / n)  # mu4/s^4 = 9/5
    else:
        std = v
        assert abs(x.var() - std**2) < 5 * std**2 * math.sqrt(2 / n)
    assert abs(x.mean()) < 5 * std / math.sqrt(n)


def test_scheme_bounds_match_torch_samples():
    # the same formula as PyTorch's: its samples never exceed our bound and come close to it
    t = _torch()
    for fn, tfn in [(init.xavier_uniform_, t.nn.init.xavier_uniform_),
                    (lambda w: init.kaiming_uniform_(w, a=math.sqrt(5)),
                     lambda w: t.nn.init.kaiming_uniform_(w, a=math.sqrt(5)))]:
        ours = fn(gf.empty(500, 300)).data
        theirs = tfn(t.empty(500, 300)).numpy()
        assert np.abs(theirs).max() <= np.abs(ours).max() * (1 + 1e-3)
        assert np.abs(ours).max() <= np.abs(theirs).max() * (1 + 1e-3)


def test_uniform_normal_trunc_normal_defaults_and_values():
    g = gf.Generator(0)
    u = init.uniform_(gf.empty(10_000), generator=g).data
    assert u.min() >= 0 and u.max() < 1
    u = init.uniform_(gf.empty(10_000), -2, -1, generator=g).data
    assert u.min() >= -2 and u.max() < -1
    z = init.normal_(gf.empty(100_000), 3.0, 0.5, generator=g).data
    # 5 standard errors: of the mean std / sqrt(n), of the sample std about std / sqrt(2 n)
    assert abs(z.mean() - 3) < 5 * 0.5 / math.sqrt(z.size)
    assert abs(z.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * z.size)
    tn = init.trunc_normal_(gf.empty(100_000), std=0.02, generator=g).data
    # cut at +-100 std: the truncation changes nothing measurable
    assert abs(tn.std() - 0.02) < 5 * 0.02 / math.sqrt(2 * tn.size) and np.abs(tn).max() <= 2
    c = init.trunc_normal_(gf.empty(4), mean=5.0, std=0.0, a=-1.0, b=1.0, generator=g)
    assert c.data.tolist() == [1.0] * 4  # std 0: the mean, clamped
    d = init.trunc_normal_(gf.empty(3, dtype=gf.float64), std=1.0, a=0.5, b=0.5, generator=g)
    assert d.data.tolist() == [0.5] * 3  # a == b: a, as PyTorch (no mass to sample)
    t = pytest.importorskip("torch")
    assert t.nn.init.trunc_normal_(t.empty(3, dtype=t.float64), a=0.5, b=0.5).tolist() == [0.5] * 3
    assert init.uniform_(gf.empty(3), 2.0, 2.0).data.tolist() == [2.0] * 3


def test_deterministic_fills():
    for fn in (init.uniform_, init.normal_, init.trunc_normal_, init.xavier_normal_,
               init.orthogonal_):
        a = fn(gf.empty(17, 9), generator=gf.Generator(5)).data
        b = fn(gf.empty(17, 9), generator=gf.Generator(5)).data
        c = fn(gf.empty(17, 9), generator=gf.Generator(6)).data
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_constant_zeros_ones_eye():
    w = gf.nn.Parameter(np.full((2, 3), 7.0, np.float32))
    assert init.zeros_(w) is w and not w.data.any()
    assert init.ones_(w).data.tolist() == [[1.0] * 3] * 2
    assert init.constant_(w, 0.25).data.tolist() == [[0.25] * 3] * 2
    assert init.eye_(w).data.tolist() == [[1, 0, 0], [0, 1, 0]]
    assert init.eye_(gf.empty(3, 2, dtype=gf.float64)).data.tolist() == [[1, 0], [0, 1], [0, 0]]
    assert init.ones_(gf.empty(2, dtype=gf.int64)).data.tolist() == [1, 1]
    with pytest.raises(ValueError, match="Only tensors with 2 dimensions are supported"):
        init.eye_(gf.empty(2, 2, 2))


def test_init_records_no_gradient():
    p = gf.nn.Parameter(np.zeros((4, 3), np.float32))
    for fn in (init.uniform_, init.normal_, init.xavier_uniform_, init.kaiming_normal_,
               init.orthogonal_, init.zeros_, init.eye_):
        assert fn(p) is p
        assert p.requires_grad and p.grad is None and p.grad_fn is None and p.is_leaf
    y = (p * 2).sum()
    y.backward()
    assert p.grad.shape == (4, 3)


# ---------------------------------------------------------------- orthogonal


@pytest.mark.parametrize("shape", [(64, 64), (30, 50), (50, 30), (1, 7), (7, 1), (8, 3, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orthogonal_is_orthogonal(shape, dtype):
    w = init.orthogonal_(gf.empty(*shape, dtype=dtype), generator=gf.Generator(3)).data
    m = w.reshape(shape[0], -1).astype(np.float64)
    small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    np.testing.assert_allclose(small, np.eye(small.shape[0]), atol=1e-5)


def test_orthogonal_gain_and_reference_qr():
    g = gf.Generator(12)
    w = init.orthogonal_(gf.empty(6, 10, dtype=gf.float64), gain=2.5, generator=g).data
    # numpy reference: the same Philox normal matrix, QR of its transpose, sign-corrected
    a = init.normal_(gf.empty(6, 10, dtype=gf.float64), generator=gf.Generator(12)).data
    q, r = np.linalg.qr(a.T)
    q = (q * np.sign(np.diag(r))).T
    np.testing.assert_allclose(w, 2.5 * q, atol=1e-12)
    np.testing.assert_allclose(w @ w.T, 6.25 * np.eye(6), atol=1e-10)


def test_orthogonal_errors_and_empty():
    with pytest.raises(ValueError, match="Only tensors with 2 or more dimensions are supported"):
        init.orthogonal_(gf.empty(5))
    e = gf.empty(0, 3)
    assert init.orthogonal_(e) is e


# ---------------------------------------------------------------- bad input


def test_bad_input_errors_and_state_unchanged():
    g = gf.Generator(1)
    w = gf.zeros(4, 5)
    cases = [
        (lambda: init.normal_(w, std=-1.0, generator=g), ValueError,
         "std: normal expects std >= 0.0, but found std -1.0"),
        (lambda: init.uniform_(w, 1.0, 0.0, generator=g), ValueError,
         r"uniform_ expects to return a \[from, to\) range, but found from=1.0 > to=0.0"),
        (lambda: init.trunc_normal_(w, a=1.0, b=0.0, generator=g), ValueError, "a <= b"),
        (lambda: init.trunc_normal_(w, std=-0.1, generator=g), ValueError, "std"),
        (lambda: init.kaiming_uniform_(w, nonlinearity="swish", generator=g), ValueError,
         "Unsupported nonlinearity swish"),
        (lambda: init.kaiming_normal_(w, mode="fan_avg", generator=g), ValueError,
         r"Mode fan_avg not supported, please use one of \['fan_in', 'fan_out'\]"),
        (lambda: init.normal_(w, mean=float("nan"), generator=g), ValueError, "mean: got nan"),
        (lambda: init.uniform_(w, "0", 1, generator=g), TypeError, "a: expected a real number"),
        (lambda: init.normal_(gf.zeros(3, dtype=gf.int64), generator=g), TypeError,
         "tensor: random fills need dtype float32 or float64, got int64"),
        (lambda: init.xavier_uniform_([[0.0]], generator=g), TypeError, "tensor: expected"),
        (lambda: init.normal_(w, generator=3), TypeError, "generator"),
        (lambda: init.trunc_normal_(w, std=0.0, generator=3), TypeError, "generator"),
        (lambda: init.xavier_normal_(w, gain="1", generator=g), TypeError, "gain"),
        (lambda: init.orthogonal_(w, gain=float("nan"), generator=g), ValueError, "gain"),
        (lambda: init.calculate_gain("leaky_relu", "0.1"), ValueError, "param"),
        (lambda: init.kaiming_uniform_(w, a="0.1", generator=g), ValueError,
         "a: negative_slope 0.1 not a valid number"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()
    assert g.offset == 0 and not w.data.any()


@pytest.mark.parametrize("fn", [init.xavier_uniform_, init.xavier_normal_])
def test_xavier_on_tensor_with_zero_fans_is_a_no_op(fn):
    g = gf.Generator(0)
    for shape in [(0, 0), (0, 0, 3), (4, 0, 3)]:  # fan_in + fan_out == 0: PyTorch divides by zero
        w = gf.empty(*shape)
        assert fn(w, generator=g) is w
    assert g.offset == 0


def test_kaiming_on_zero_element_tensor_warns_as_torch():
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
        init.kaiming_uniform_(gf.empty(0, 3))
    with pytest.warns(UserWarning, match="zero-element"):
        init.kaiming_normal_(gf.empty(3, 0))


# ---------------------------------------------------------------- Linear and schemes by name


def test_linear_default_init_is_pytorch_scheme_from_philox():
    gf.manual_seed(123)
    fc = gf.nn.Linear(20, 7)
    g = gf.Generator(123)  # the default generator right after manual_seed(123)
    bound = 1 / math.sqrt(20)
    w = init.uniform_(gf.empty(7, 20), -bound, bound, generator=g).data
    b = init.uniform_(gf.empty(7), -bound, bound, generator=g).data
    # kaiming_uniform_(a=sqrt(5)) computes the same bound through the gain: within an ulp
    assert math.isclose(math.sqrt(3.0) * init.calculate_gain("leaky_relu", math.sqrt(5))
                        / math.sqrt(20), bound, rel_tol=1e-15)
    np.testing.assert_allclose(fc.weight.data, w, rtol=1e-6)
    np.testing.assert_array_equal(fc.bias.data, b)
    assert np.abs(fc.weight.data).max() < bound


def test_linear_init_option_by_name_and_callable():
    for name in init.names():
        if name in ("constant",):
            continue
        fc = gf.nn.Linear(6, 4, init=name)
        if name != "default":
            assert not fc.bias.data.any(), name
    fc = gf.nn.Linear(6, 4, init="He_Normal_")
    assert "init='He_Normal_'" in repr(fc)
    fc = gf.nn.Linear(6, 4, init=lambda w, generator=None: init.constant_(w, 0.5))
    assert (fc.weight.data == 0.5).all() and not fc.bias.data.any()
    with pytest.raises(ValueError, match="init: unknown initializer 'he_normall'"):
        gf.nn.Linear(6, 4, init="he_normall")
    with pytest.raises(TypeError, match="init: expected an initializer name"):
        gf.nn.Linear(6, 4, init=3)


def test_get_and_init_by_name():
    g1, g2 = gf.Generator(8), gf.Generator(8)
    a = init.get("he_normal")(gf.empty(64, 32), generator=g1).data
    b = init.kaiming_normal_(gf.empty(64, 32), nonlinearity="relu", generator=g2).data
    np.testing.assert_array_equal(a, b)
    c = init.init_by_name(gf.empty(64, 32), "normal", std=0.02, generator=gf.Generator(8))
    d = init.normal_(gf.empty(64, 32), std=0.02, generator=gf.Generator(8))
    np.testing.assert_array_equal(c.data, d.data)
    e = init.get("kaiming_normal", mode="fan_out")(gf.empty(64, 32), generator=gf.Generator(8))
    assert abs(e.data.std() - math.sqrt(2 / 64)) < 0.01
    assert init.get("constant", val=3.0)(gf.empty(2)).data.tolist() == [3.0, 3.0]
    for name in ("xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "lecun_normal",
                 "orthogonal", "normal", "zeros", "Glorot-Uniform", "kaiming_uniform_"):
        assert init.get(name)(gf.empty(8, 4)).shape == (8, 4)
    with pytest.raises(ValueError, match="name: unknown initializer 'xavier'; known: "):
        init.get("xavier")
    with pytest.raises(TypeError, match="name"):
        init.get(None)


def test_initializer_with_model_apply():
    model = gf.nn.Sequential(gf.nn.Linear(16, 32), gf.nn.Linear(32, 8), gf.nn.Linear(8, 1))
    assert model.apply(init.initializer("he_normal", generator=gf.Generator(2))) is model
    for layer in model:
        assert not layer.bias.data.any()
    w0 = model[0].weight.data.copy()
    model.apply(init.initializer("he_normal", generator=gf.Generator(2)))
    np.testing.assert_array_equal(model[0].weight.data, w0)  # same generator, same weights
    model.apply(init.initializer("orthogonal", bias=None))
    np.testing.assert_allclose(model[1].weight.data @ model[1].weight.data.T, np.eye(8),
                               atol=1e-5)
    model.apply(init.initializer("default", generator=gf.Generator(2)))
    assert model[0].bias.data.any() and np.abs(model[0].weight.data).max() < 0.25
    model.apply(init.initializer(lambda w, generator=None: init.zeros_(w), bias="ones"))
    assert not model[2].weight.data.any() and (model[2].bias.data == 1).all()
    with pytest.raises(ValueError, match="weight: unknown initializer"):
        init.initializer("nope")
    with pytest.raises(TypeError, match="bias"):
        init.initializer("zeros", bias=5)


def test_default_seed_reproduces_models():
    gf.manual_seed(0)
    a = [p.data.copy() for p in gf.nn.Sequential(gf.nn.Linear(4, 8), gf.nn.Linear(8, 2))
         .parameters()]
    gf.manual_seed(0)
    b = [p.data.copy() for p in gf.nn.Sequential(gf.nn.Linear(4, 8), gf.nn.Linear(8, 2))
         .parameters()]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------- the demonstration in docs/layers.md


def test_deep_tanh_demo_vanishes_saturates_and_stays_healthy():
    from gradfuse.examples.init_demo import activation_stats

    small = activation_stats("normal_(std=0.01)")
    large = activation_stats("normal_(std=1)")
    xavier = activation_stats("xavier_normal_")
    assert len(small) == len(large) == len(xavier) == 20
    # vanishing: shrinks by ~0.16 per layer, ~1e-16 after 20
    assert small[-1][0] < 1e-12
    assert all(b[0] < a[0] * 0.25 for a, b in zip(small, small[1:]))
    # saturating: std near 1 everywhere and most units pinned at +-1
    assert all(s > 0.95 for s, _ in large) and large[-1][1] > 0.8
    # healthy: order one throughout, decaying slowly, nothing saturated
    assert all(0.1 < s < 0.8 for s, _ in xavier) and xavier[-1][1] < 0.01


def test_docs_random_section_runs():
    from docs_util import python_block

    block = python_block("docs/layers.md", "Random numbers, initialization and dropout")
    scope = {}
    exec(compile(block, "docs/layers.md random section", "exec"), scope)
    model = scope["model"]
    w = model[0].weight.data
    np.testing.assert_allclose(w @ w.T, np.eye(64), atol=1e-5)  # orthogonal rows after apply
    assert not model[2].bias.data.any()
