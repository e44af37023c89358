"""Property test: broadcasting ops send back gradients of exactly each input's shape and value."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import gradfuse as gf


@settings(max_examples=60, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3),
       seed=st.integers(0, 2**16))
def test_mul_add_gradients_reduce_to_input_shapes(shapes, seed):
    rng = np.random.default_rng(seed)
    (sa, sb), out_shape = shapes.input_shapes, shapes.result_shape
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb)
    ta, tb = gf.tensor(a, requires_grad=True), gf.tensor(b, requires_grad=True)
    g = rng.standard_normal(out_shape)
    (ta * tb + ta).backward(g)
    # d/da = g * b + g, d/db = g * a, each summed over the broadcast axes
    ga = np.broadcast_to(g * b + g, out_shape)
    gb = np.broadcast_to(g * a, out_shape)

    def reduce_to(x, shape):
        lead = x.ndim - len(shape)
        x = x.sum(axis=tuple(range(lead))) if lead else x
        axes = tuple(i for i, s in enumerate(shape) if s == 1)
        return x.sum(axis=axes, keepdims=True) if axes else x

    assert ta.grad.shape == sa and tb.grad.shape == sb
    np.testing.assert_allclose(ta.grad.data, reduce_to(ga, sa), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tb.grad.data, reduce_to(gb, sb), rtol=1e-12, atol=1e-12)
