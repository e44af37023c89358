"""Backward of every op: finite-difference gradcheck in float64, plus graph semantics."""

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.autograd import GradcheckError, gradcheck


def t64(rng, *shape, positive=False):
    a = rng.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    return gf.tensor(a, dtype=gf.float64, requires_grad=True)


UNARY = {
    "neg": lambda a: -a,
    "exp": lambda a: a.exp(),
    "log": lambda a: a.log(),
    "sqrt": lambda a: a.sqrt(),
    "abs": lambda a: a.abs(),
    "pow2": lambda a: a**2,
    "pow_half": lambda a: a**0.5,
    "pow_neg": lambda a: a**-1.5,
    "rpow": lambda a: 2.0**a,
    "sum": lambda a: a.sum(),
    "sum_dim": lambda a: a.sum(dim=1),
    "sum_dims_keep": lambda a: a.sum(dim=(0, 2), keepdim=True),
    "mean": lambda a: a.mean(),
    "mean_dim": lambda a: a.mean(dim=-1, keepdim=True),
    "max_all": lambda a: a.max(),
    "max_dim": lambda a: a.max(dim=1).values,
    "max_dim_keep": lambda a: a.max(dim=2, keepdim=True).values,
    "amax_dims": lambda a: gf.amax(a, dim=(1, 2)),
    "reshape": lambda a: a.reshape(4, -1) * 1.5,
    "view_flatten": lambda a: a.flatten(1) * 2.0,
    "transpose": lambda a: a.transpose(0, 2) * 2.0,
    "permute": lambda a: a.permute(2, 0, 1) * 2.0,
    "T": lambda a: a.T * 2.0,
    "index_int": lambda a: a[1],
    "index_slice": lambda a: a[:, 1:3, ::2],
    "index_neg_ellipsis": lambda a: a[..., -1],
    "index_fancy_dupes": lambda a: a[[0, 0, 1]],
    "index_mask": lambda a: a[a.detach() > 0],
    "unsqueeze_squeeze": lambda a: a.unsqueeze(0).squeeze(0) * 3.0,
    "clone": lambda a: a.clone() * 2.0,
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_gradcheck_unary(name, rng):
    positive = name in ("log", "sqrt", "pow_half", "pow_neg")
    a = t64(rng, 2, 3, 4, positive=positive)
    assert gradcheck(UNARY[name], [a])


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow_tensor": lambda a, b: a**b,
}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)),
                                    ((1,), (3, 2))])
def test_gradcheck_binary_broadcast(name, shapes, rng):
    a = t64(rng, *shapes[0], positive=True)
    b = t64(rng, *shapes[1], positive=True)
    assert gradcheck(BINARY[name], [a, b])


def test_scalar_operands_on_both_sides(rng):
    a = t64(rng, 3)
    assert gradcheck(lambda x: 2.0 - x * 3.0 + 1.0 / (x * x + 1.0), [a])


@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
                                   ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)),
                                   ((5, 2, 3), (1, 3, 4)), ((3,), (2, 3, 4))])
def test_gradcheck_matmul(sa, sb, rng):
    a, b = t64(rng, *sa), t64(rng, *sb)
    out = a @ b
    assert out.shape == np.matmul(a.data, b.data).shape
    assert gradcheck(lambda x, y: x @ y, [a, b])


def test_gradcheck_cat_stack(rng):
    a, b, c = t64(rng, 2, 3), t64(rng, 4, 3), t64(rng, 2, 3)
    assert gradcheck(lambda x, y: gf.cat([x, y], dim=0) * 2.0, [a, b])
    assert gradcheck(lambda x, y: gf.stack([x, y], dim=1) * 2.0, [a, c])
    assert gradcheck(lambda x, y: gf.cat([x, y], dim=-1) * 2.0, [a, c])


def test_gradcheck_linear_mse_cross_entropy(rng):
    x, w, b = t64(rng, 5, 4), t64(rng, 3, 4), t64(rng, 3)
    assert gradcheck(lambda x, w, b: gf.nn.functional.linear(x, w, b), [x, w, b])
    y = t64(rng, 5, 3)
    assert gradcheck(lambda x, y: gf.nn.functional.mse_loss(x, y), [t64(rng, 5, 3), y])
    t = gf.tensor(rng.integers(0, 3, 5))
    wt = gf.tensor(rng.random(3) + 0.5, dtype=gf.float64)
    for red in ("mean", "sum", "none"):
        assert gradcheck(
            lambda z, red=red: gf.nn.functional.cross_entropy(z, t, weight=wt, reduction=red,
                                                     label_smoothing=0.2),
            [t64(rng, 5, 3)],
        )


def test_gradcheck_detects_a_wrong_backward(rng):
    class BadSquare(gf.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved
            return (g * a,)  # missing the factor 2

    with pytest.raises(GradcheckError, match="inputs\\[0\\]"):
        gradcheck(BadSquare.apply, [t64(rng, 3)])


def test_gradcheck_requires_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda a: a * 2, [gf.ones(2, requires_grad=True)])


def test_broadcast_gradient_reduced_to_input_shape(rng):
    a = gf.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    b = gf.tensor(rng.standard_normal((1, 3)), requires_grad=True)
    c = gf.tensor(rng.standard_normal(()), requires_grad=True)
    ((a * b) + c).sum().backward()
    assert b.grad.shape == (1, 3) and c.grad.shape == ()
    np.testing.assert_allclose(b.grad.data, a.data.sum(0, keepdims=True), rtol=1e-6)
    assert c.grad.item() == 12


def test_gradients_accumulate_until_cleared():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    assert x.grad.tolist() == [5.0, 7.0]
    g = x.grad
    (x * 1.0).sum().backward()
    assert x.grad is g  # accumulated in place, not rebound


def test_shared_subexpression_gets_both_paths():
    x = gf.tensor([2.0], requires_grad=True)
    y = x * x
    (y + y * 3.0).sum().backward()  # d/dx 4 x^2 = 8x
    assert x.grad.tolist() == [16.0]


def test_retain_graph_semantics():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert x.grad.tolist() == [4.0, 8.0]
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_backward_errors():
    with pytest.raises(RuntimeError, match="does not require grad"):
        gf.ones(2).sum().backward()
    y = gf.ones(2, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="scalar outputs"):
        y.backward()
    with pytest.raises(ValueError, match="gradient"):
        y.backward(gf.ones(3))
    y.backward(gf.ones(2))


def test_leaf_nonleaf_retain_grad_detach():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2.0
    h.retain_grad()
    out = h.detach() * h
    assert x.is_leaf and not h.is_leaf
    out.sum().backward()
    assert h.grad.tolist() == [2.0, 4.0]  # only through the non-detached factor
    assert x.grad.tolist() == [4.0, 8.0]
    with pytest.raises(RuntimeError, match="leaf"):
        h.requires_grad_(False)


def test_deep_graph_has_no_recursion_limit():
    x = gf.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    assert x.grad.tolist() == [1.0]


def test_autograd_grad_does_not_touch_dot_grad(rng):
    x = gf.tensor([3.0], requires_grad=True)
    w = gf.tensor([2.0], requires_grad=True)
    (gx,) = gf.autograd.grad((x * x * w).sum(), [x])
    assert gx.tolist() == [12.0] and x.grad is None and w.grad is None


def test_max_dim_returns_values_and_indices():
    v, i = gf.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 7.5]], requires_grad=True).max(dim=1)
    assert v.tolist() == [5.0, 7.5] and i.tolist() == [1, 2] and i.dtype == np.int64


def test_max_ties_share_gradient():
    x = gf.tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    assert x.grad.tolist() == [0.0, 0.5, 0.5]


def test_composite_matches_torch(rng):
    torch = pytest.importorskip("torch")
    a = rng.standard_normal((4, 5))
    b = rng.standard_normal((5, 3))
    ga, gb = gf.tensor(a, requires_grad=True), gf.tensor(b, requires_grad=True)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)

    def f(lib_a, lib_b, exp, log):
        h = (lib_a @ lib_b).abs() + 1.0
        return (log(h) * exp(-h) / h.sqrt()).mean() - (h**1.5).sum() / 7.0

    out_g = f(ga, gb, gf.exp, gf.log)
    out_t = f(ta, tb, torch.exp, torch.log)
    out_g.backward()
    out_t.backward()
    np.testing.assert_allclose(out_g.item(), out_t.item(), rtol=1e-12)
    np.testing.assert_allclose(ga.grad.data, ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb.grad.data, tb.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_float32_stays_float32_with_python_scalars():
    x = gf.ones(3, requires_grad=True)
    y = (x * 0.5 + 2.0) / 3.0 - 1.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_fresh_gradients_are_adopted_but_never_shared():
    # backward's own fresh arrays become .grad without a copy; an array that is also held
    # elsewhere (the other input of an add, the caller's gradient) is copied
    a = gf.ones(3, requires_grad=True)
    b = gf.ones(3, requires_grad=True)
    (a + b).backward(gf.ones(3))
    a.grad.data[0] = 5.0
    assert b.grad.data[0] == 1.0
    user = np.ones(3, np.float32)
    c = gf.ones(3, requires_grad=True)
    (c * 1.0).backward(user)
    c.grad.data[0] = 7.0
    assert user[0] == 1.0
    d = gf.ones(3, requires_grad=True)
    d.backward(user)
    d.grad.data[1] = 9.0
    assert user[1] == 1.0
    x = gf.ones(2, 3, requires_grad=True)
    loss = gf.nn.functional.cross_entropy(x, gf.tensor([0, 1]))
    loss.backward()
    g1 = x.grad
    gf.nn.functional.cross_entropy(x, gf.tensor([0, 1])).backward()
    assert x.grad is g1  # later backwards accumulate in place
    np.testing.assert_allclose(g1.data, 2 * (np.full((2, 3), 1 / 3) - np.eye(2, 3)) / 2, rtol=1e-6)


def test_tensor_exponent_with_negative_and_zero_bases(rng):
    a = np.array([-2.0, 0.0, 3.0, -1.5])
    b = np.array([2.0, 2.0, 0.5, 3.0])
    ta, tb = gf.tensor(a, requires_grad=True), gf.tensor(b, requires_grad=True)
    out = ta**tb
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(out.data, np.power(a, b))
    out.sum().backward()
    np.testing.assert_allclose(ta.grad.data, b * np.power(a, b - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        want_b = np.where(a == 0, 0.0, np.power(a, b) * np.log(a))
    np.testing.assert_allclose(tb.grad.data, want_b)  # nan for negative bases, as PyTorch
    assert (2.0 ** gf.tensor([3.0])).item() == 8.0
    assert ((-2.0) ** gf.tensor([2.0])).item() == 4.0
    assert (np.array([2.0, 3.0]) ** gf.tensor([2.0, 2.0])).tolist() == [4.0, 9.0]
    # exponent 0: gradient 0 even at base 0
    z = gf.tensor([0.0, 5.0], requires_grad=True)
    (z ** gf.tensor([0.0, 0.0])).sum().backward()
    assert z.grad.tolist() == [0.0, 0.0]
    assert gradcheck(lambda x: x ** gf.tensor([2.0, 3.0, 1.0, 4.0], dtype=gf.float64),
                     [gf.tensor(a, requires_grad=True)])


def test_tensor_exponent_matches_torch(rng):
    torch = pytest.importorskip("torch")
    a = rng.standard_normal((3, 4))
    b = rng.integers(-2, 4, (3, 4)).astype(np.float64)
    ga, gb = gf.tensor(a, requires_grad=True), gf.tensor(b, requires_grad=True)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (ga**gb).sum().backward()
    (ta**tb).sum().backward()
    np.testing.assert_allclose(ga.grad.data, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gb.grad.data, tb.grad.numpy(), rtol=1e-12)  # nan where torch has nan


def test_gradcheck_handles_non_contiguous_inputs(rng):
    x = gf.tensor(rng.standard_normal((3, 4)).T, requires_grad=True)  # F-ordered copy
    assert not x.data.flags.c_contiguous
    assert gradcheck(lambda t: (t * t).sum(dim=0), [x])


def test_backward_frees_the_graph_so_a_kept_loss_holds_no_activations():
    import weakref

    x = gf.ones(4, 4, requires_grad=True)
    h = x * 2.0
    ref = weakref.ref(h)
    loss = (h * h).sum()
    del h
    loss.backward()
    assert ref() is None  # the activation died with the graph
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_engine_rejects_wrong_gradients_from_a_function():
    class WrongShape(gf.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return (np.ones(2),)

    class TooFew(gf.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            return a + b

        @staticmethod
        def backward(ctx, g):
            return (g,)

    x = gf.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"WrongShape.*shape \(2,\).*\(3,\)"):
        WrongShape.apply(x).sum().backward()
    with pytest.raises(RuntimeError, match="TooFew.backward returned 1 gradients for 2 inputs"):
        TooFew.apply(x, x).sum().backward()


def test_grad_mode_is_per_thread_and_set_grad_enabled_works_as_a_call():
    import threading

    x = gf.ones(2, requires_grad=True)
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait()
        seen["other"] = (x * 2).requires_grad
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with gf.no_grad():
        inside.set()
        done.wait()
    t.join()
    assert seen["other"] is True  # the main thread's no_grad does not leak into another
    gf.set_grad_enabled(False)
    try:
        assert not gf.is_grad_enabled() and not (x * 2).requires_grad
    finally:
        gf.set_grad_enabled(True)
    assert (x * 2).requires_grad

    @gf.set_grad_enabled(False)
    def f():
        return (x * 2).requires_grad

    assert gf.is_grad_enabled() and f() is False and gf.is_grad_enabled()


def test_numpy_scalars_do_not_promote_float32():
    x = gf.ones(3)
    assert (x * np.float64(2.0)).dtype == np.float32
    assert (x * np.sqrt(2.0)).dtype == np.float32
    assert (x ** np.float64(2.0)).dtype == np.float32
    assert (gf.arange(4) / 2).dtype == np.float32  # true division of ints, as PyTorch


@pytest.mark.parametrize("op", [
    lambda t: t.unsqueeze(5), lambda t: t.transpose(0, 5), lambda t: t.permute(2, 1),
    lambda t: t.squeeze(5), lambda t: t.flatten(7), lambda t: t.sum(dim=3), lambda t: t.max(dim=-4),
])
def test_out_of_range_dims_raise(op):
    with pytest.raises((IndexError, ValueError), match="dim"):
        op(gf.ones(2, 3, 1))


def test_zero_d_reductions_take_dim_zero():
    s = gf.tensor(3.0, requires_grad=True)
    assert s.sum(0).item() == 3.0 and s.mean(dim=-1).item() == 3.0
    assert gf.ones(2, 3).sum(dim=()).item() == 6.0  # empty dims reduce everything, as PyTorch


def test_autograd_grad_returns_private_copies():
    a = gf.ones(3, requires_grad=True)
    b = gf.ones(3, requires_grad=True)
    g = np.ones(3, np.float32)
    ga, gb = gf.autograd.grad(a + b, [a, b], grad_output=g)
    ga[0] = 9.0
    assert gb[0] == 1.0 and g[0] == 1.0


def test_integer_powers_follow_pytorch():
    assert (2 ** gf.tensor([-1, 2])).tolist() == [0, 4]
    assert (gf.tensor([1, 2, -1]) ** gf.tensor([-3, -1, -3])).tolist() == [1, 0, -1]
    with pytest.raises(ValueError, match=r"pow: shapes \(2,\) and \(3,\)"):
        gf.ones(2) ** gf.ones(3)


def test_max_cat_stack_on_zero_d_tensors():
    s = gf.tensor(3.0, requires_grad=True)
    v, i = gf.max(s, dim=0)
    assert v.item() == 3.0 and i.item() == 0
    v.backward()
    assert s.grad.item() == 1.0
    with pytest.raises(ValueError, match="zero-dimensional"):
        gf.cat([s, s])
    assert gf.stack([s, s]).shape == (2,)


def test_set_grad_enabled_instance_can_be_entered_again():
    g = gf.set_grad_enabled(False)
    with g:
        pass
    assert gf.is_grad_enabled()
    with g:
        assert not gf.is_grad_enabled()
    assert gf.is_grad_enabled()


def test_autograd_entry_points_reject_bad_arguments():
    with pytest.raises(ValueError, match="at least one tensor must have requires_grad"):
        gradcheck(lambda t: t * 2.0, [gf.ones(2, dtype=gf.float64)])
    with pytest.raises(RuntimeError, match="output: does not require grad"):
        gf.autograd.grad(gf.ones(2).sum(), [gf.ones(2)])
    with pytest.raises(RuntimeError, match="grad_output: required"):
        gf.autograd.grad(gf.ones(2, requires_grad=True) * 2.0, [gf.ones(2)])
