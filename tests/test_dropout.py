"""Dropout: Philox mask in the same pass as the scaling, keep rate, exact mask reference,
gradient through the mask, eval identity, PyTorch's edge cases, thread independence, errors."""

import math

import numpy as np
import pytest

import gradfuse as gf
import gradfuse.nn.functional as F
import reference as ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scaling(dtype, p):
    n = 300_001
    x = gf.tensor(np.random.default_rng(0).standard_normal(n).astype(dtype))
    y = F.dropout(x, p, generator=gf.Generator(3)).data
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    scale = dtype(1.0 / (1.0 - p))
    np.testing.assert_array_equal(y[kept], x.data[kept] * scale)  # same rounding as x * scale
    assert y.dtype == dtype


@pytest.mark.parametrize("p", [0.25, 0.5])
@pytest.mark.parametrize("n", [1, 63, 64, 1001])
def test_mask_is_the_documented_threshold(p, n):
    y = F.dropout(gf.ones(n), p, generator=gf.Generator(10)).data
    words = ref.philox_fill_words(10, 0, n).astype(np.uint64)
    keep = words < np.uint64(round((1 - p) * 2**32))
    np.testing.assert_array_equal(y != 0, keep)


@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (2, 3, 4), (7,)])
def test_gradcheck_through_the_mask(shape):
    x = gf.tensor(np.random.default_rng(1).standard_normal(shape), dtype=gf.float64,
                  requires_grad=True)
    # a fresh generator per call: every evaluation uses the same mask
    assert gf.autograd.gradcheck(lambda t: F.dropout(t, 0.4, generator=gf.Generator(7)), [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_reuses_the_forward_mask(dtype):
    x = gf.tensor(np.full((50, 41), 3.0, dtype), requires_grad=True)
    y = F.dropout(x, 0.3, generator=gf.Generator(2))
    g = np.random.default_rng(2).standard_normal((50, 41)).astype(dtype)
    y.backward(gf.tensor(g))
    scale = dtype(1 / 0.7)
    np.testing.assert_array_equal(x.grad.data, np.where(y.data != 0, g * scale, 0))


def test_eval_mode_and_p0_return_the_input_and_draw_nothing():
    x = gf.randn(4, 6, requires_grad=True)
    g = gf.Generator(1)
    assert F.dropout(x, 0.5, training=False, generator=g) is x
    assert F.dropout(x, 0.0, generator=g) is x
    assert g.offset == 0
    drop = gf.nn.Dropout(0.5).eval()
    assert drop(x) is x


def test_p1_zeros_everything_as_torch():
    x = gf.tensor([1.0, float("nan"), -2.0], requires_grad=True)
    y = F.dropout(x, 1.0, generator=gf.Generator(0))
    assert y.data[0] == 0 and np.isnan(y.data[1]) and y.data[2] == 0  # x * 0, as PyTorch
    y.sum().backward()
    assert x.grad.data.tolist() == [0.0, 0.0, 0.0]
    torch = pytest.importorskip("torch")
    t = torch.nn.functional.dropout(torch.tensor([1.0, float("nan"), -2.0]), 1.0)
    assert t[0] == 0 and torch.isnan(t[1]) and t[2] == 0


def test_module_in_a_model_uses_the_default_generator():
    model = gf.nn.Sequential(gf.nn.Linear(8, 16), gf.nn.Dropout(0.5), gf.nn.Linear(16, 2))
    x = gf.randn(5, 8)
    gf.manual_seed(4)
    a = model(x).data
    gf.manual_seed(4)
    np.testing.assert_array_equal(model(x).data, a)
    b = model(x).data  # the stream moved on: another mask
    assert not np.array_equal(a, b)
    model.eval()
    np.testing.assert_array_equal(model(x).data, model(x).data)
    assert repr(model[1]) == "Dropout(p=0.5, inplace=False)"


def test_bitwise_independent_of_thread_count():
    x = gf.tensor(np.random.default_rng(0).standard_normal(300_007).astype(np.float32),
                  requires_grad=True)
    before = gf.get_num_threads()
    try:
        outs, grads = [], []
        for threads in (1, 2):
            gf.set_num_threads(threads)
            x.grad = None
            y = F.dropout(x, 0.3, generator=gf.Generator(9))
            y.sum().backward()
            outs.append(y.data)
            grads.append(x.grad.data.copy())
    finally:
        gf.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(grads[0], grads[1])


def test_inplace():
    x = gf.ones(3, 4)
    y = F.dropout(x, 0.5, inplace=True, generator=gf.Generator(0))
    assert y is x and set(np.unique(x.data).tolist()) <= {0.0, 2.0}
    # a tensor that needs a gradient: a new tensor, the input untouched
    z = gf.ones(3, 4, requires_grad=True)
    w = gf.nn.Dropout(0.5, inplace=True)(z)
    assert w is not z and (z.data == 1).all()
    w.sum().backward()
    np.testing.assert_array_equal(z.grad.data, w.data)  # x = 1: grad = mask * scale = output


def test_non_contiguous_input():
    base = np.arange(24, dtype=np.float64).reshape(4, 6) + 1
    x = gf.tensor(base).transpose(0, 1)  # (6, 4) view
    y = F.dropout(x, 0.5, generator=gf.Generator(5))
    want = F.dropout(gf.tensor(np.ascontiguousarray(base.T)), 0.5, generator=gf.Generator(5))
    np.testing.assert_array_equal(y.data, want.data)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_bad_p(p):
    g = gf.Generator(0)
    with pytest.raises(ValueError, match="p: dropout probability has to be between 0 and 1"):
        F.dropout(gf.ones(3), p, generator=g)
    with pytest.raises(ValueError, match="dropout probability"):
        gf.nn.Dropout(p)
    assert g.offset == 0


def test_bad_input():
    g = gf.Generator(0)
    with pytest.raises(TypeError, match="input: expected a Tensor"):
        F.dropout(np.ones(3), 0.5, generator=g)
    with pytest.raises(TypeError, match="input: dropout needs float32 or float64"):
        F.dropout(gf.tensor([1, 2, 3]), 0.5, generator=g)
    with pytest.raises(TypeError, match="training: expected a bool"):
        F.dropout(gf.ones(3), 0.5, training=1, generator=g)
    with pytest.raises(TypeError, match="generator"):
        F.dropout(gf.ones(3), 0.5, generator=5)
    with pytest.raises(TypeError, match="inplace"):
        gf.nn.Dropout(0.5, inplace=1)
    assert g.offset == 0


def test_torch_message_and_statistics_parity():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError) as ours:
        F.dropout(gf.ones(2), 1.5)
    with pytest.raises(ValueError) as theirs:
        torch.nn.functional.dropout(torch.ones(2), 1.5)
    assert str(theirs.value) in str(ours.value)
    n, p = 200_000, 0.2
    kept_t = (torch.nn.functional.dropout(torch.ones(n), p) != 0).double().mean().item()
    kept_g = float((F.dropout(gf.ones(n), p).data != 0).mean())
    tol = 10 * math.sqrt(p * (1 - p) / n)
    assert abs(kept_t - (1 - p)) < tol and abs(kept_g - (1 - p)) < tol
    assert float(F.dropout(gf.ones(n), p).data.max()) == float(
        torch.nn.functional.dropout(torch.ones(n), p).max())  # the same 1/(1-p) in float32


def test_large_dropout_with_streaming_stores_equals_small_calls():
    n = (4 << 20) // 4 + 77  # >= 4 MiB: output and mask written with non-temporal stores
    x = gf.tensor(np.random.default_rng(3).standard_normal(n).astype(np.float32),
                  requires_grad=True)
    y = F.dropout(x, 0.3, generator=gf.Generator(4))
    first = n // 2 // 64 * 64
    g = gf.Generator(4)
    a = F.dropout(gf.tensor(x.data[:first]), 0.3, generator=g)
    b = F.dropout(gf.tensor(x.data[first:]), 0.3, generator=g)
    np.testing.assert_array_equal(y.data, np.concatenate([a.data, b.data]))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data != 0, y.data != 0)


def test_backend_backward_checks_the_mask():
    B = gf._backend
    g = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="mask: expected a C-contiguous array of grad_output's"):
        B.dropout_backward(g, np.ones((6, 4), np.uint8), 2.0)  # same size, other shape
    with pytest.raises(ValueError, match="mask"):
        B.dropout_backward(g, np.ones(23, np.uint8), 2.0)
    with pytest.raises(ValueError, match="mask"):
        B.dropout_backward(g, np.ones((6, 4), np.uint8).T, 2.0)  # right shape, not C order
    with pytest.raises(TypeError, match="mask: expected dtype uint8"):
        B.dropout_backward(g, np.ones((4, 6), np.float32), 2.0)
    np.testing.assert_array_equal(B.dropout_backward(g, np.eye(4, 6, dtype=np.uint8), 2.0),
                                  2 * np.eye(4, 6, dtype=np.float32))


def test_p_rounding_to_one_keeps_nothing_and_passes_no_gradient():
    # keep = 2^-34 rounds to a threshold of 0 words: nothing may be kept (mask 0), or backward
    # would scale a gradient by 2^34 where forward wrote 0
    p = 1.0 - 2.0**-34
    x = gf.ones(5000, dtype=np.float64, requires_grad=True)
    y = F.dropout(x, p, generator=gf.Generator(0))
    assert not y.data.any()
    y.sum().backward()
    assert not x.grad.data.any()
    out, mask, _ = gf._backend.dropout_forward(np.ones(5000), 0, 0, p, True)
    assert not out.any() and not mask.any()
