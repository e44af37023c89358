"""Tensor construction, conversion, dtypes and the non-differentiable surface."""

import numpy as np
import pytest

import gradfuse as gf


def test_tensor_infers_pytorch_dtypes():
    assert gf.tensor([1.0, 2.0]).dtype == np.float32
    assert gf.tensor([1, 2]).dtype == np.int64
    assert gf.tensor([True]).dtype == np.bool_
    assert gf.tensor(np.zeros(2)).dtype == np.float64  # numpy arrays keep their dtype
    assert gf.tensor([1, 2], dtype=gf.float64).dtype == np.float64


def test_tensor_copies_from_numpy_shares():
    a = np.arange(3.0)
    t = gf.tensor(a)
    f = gf.from_numpy(a)
    a[0] = 42
    assert t.data[0] == 0 and f.data[0] == 42


def test_shape_properties_len_repr():
    t = gf.zeros(2, 3)
    assert t.shape == (2, 3) and t.ndim == 2 and len(t) == 2 and t.numel() == 6
    assert "tensor(" in repr(t)
    r = repr(gf.ones(2, requires_grad=True) * 2)
    assert "grad_fn=<MulBackward>" in r
    with pytest.raises(TypeError, match="0-d"):
        len(gf.tensor(1.0))


def test_factories():
    assert gf.ones((2, 2)).numpy().sum() == 4
    assert gf.full((2,), 7).dtype == np.int64
    assert gf.full((2,), 7.0).numpy().tolist() == [7.0, 7.0]
    assert gf.arange(3).tolist() == [0, 1, 2]
    assert gf.arange(0, 1, 0.5).dtype == np.float32
    z = gf.zeros_like(gf.ones(3, dtype=gf.float64))
    assert z.dtype == np.float64 and z.numpy().sum() == 0
    assert gf.ones_like(np.zeros((2, 2), np.float32)).shape == (2, 2)
    with pytest.raises(ValueError, match="size"):
        gf.zeros(-1)
    with pytest.raises(ValueError, match="step"):
        gf.arange(0, 3, 0)


def test_item_and_numpy_rules():
    assert gf.tensor([3.5]).item() == 3.5
    with pytest.raises(ValueError, match="one element"):
        gf.ones(2).item()
    with pytest.raises(RuntimeError, match="detach"):
        gf.ones(2, requires_grad=True).numpy()
    assert gf.ones(2, requires_grad=True).detach().numpy().sum() == 2


def test_requires_grad_only_for_floats():
    with pytest.raises(TypeError, match="floating point"):
        gf.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="floating point"):
        gf.arange(3).requires_grad_()


def test_comparisons_and_argmax():
    t = gf.tensor([[1.0, 3.0], [5.0, 2.0]])
    assert (t > 2).tolist() == [[False, True], [True, False]]
    assert t.argmax(dim=1).tolist() == [1, 0]
    assert t.argmax().item() == 2
    assert bool(gf.tensor([1.0]) == 1.0)
    assert {t: 1}[t] == 1  # still hashable although __eq__ is elementwise


def test_inplace_update_needs_no_grad():
    w = gf.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no_grad"):
        w -= 1.0
    with gf.no_grad():
        w -= 0.5
    assert w.data.tolist() == [0.5, 0.5, 0.5]
    assert w.requires_grad and w.is_leaf


def test_inplace_shape_error_names_shapes():
    t = gf.zeros(3)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        t += np.ones(2)


def test_casts():
    t = gf.tensor([1.5, 2.5], requires_grad=True)
    d = t.double()
    assert d.dtype == np.float64 and d.requires_grad
    d.sum().backward()
    assert t.grad.dtype == np.float32 and t.grad.tolist() == [1.0, 1.0]
    assert t.long().dtype == np.int64 and not t.long().requires_grad


def test_no_grad_and_set_grad_enabled():
    x = gf.ones(2, requires_grad=True)
    with gf.no_grad():
        y = x * 2
        with gf.enable_grad():
            z = x * 2
    assert not y.requires_grad and z.requires_grad
    assert gf.is_grad_enabled()

    @gf.no_grad()
    def f(a):
        return a * 3

    assert not f(x).requires_grad


def test_numpy_interop():
    t = gf.tensor([1.0, 2.0])
    assert np.asarray(t).tolist() == [1.0, 2.0]
    r = np.ones(2, np.float32) + t  # numpy defers to the Tensor
    assert isinstance(r, gf.Tensor)


def test_setitem_and_iteration():
    t = gf.zeros(2, 3)
    t[0] = 5.0
    t[1, 1:] = gf.tensor([1.0, 2.0])
    assert t.tolist() == [[5.0, 5.0, 5.0], [0.0, 1.0, 2.0]]
    assert [r.tolist() for r in t] == [[5.0, 5.0, 5.0], [0.0, 1.0, 2.0]]
    w = gf.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no_grad"):
        w[0] = 1.0
    with gf.no_grad():
        w[0] = 1.0
    assert w.data[0] == 1.0
    with pytest.raises(TypeError, match="0-d"):
        list(gf.tensor(3.0))


def test_non_numeric_data_is_refused():
    with pytest.raises(TypeError, match="expected numbers"):
        gf.tensor(["a", "b"])
    with pytest.raises(TypeError, match="expected numbers"):
        gf.tensor(np.array(["a"]))


def test_to_and_bare_no_grad_decorator():
    x = gf.ones(2, requires_grad=True)
    assert x.to("cpu") is x and x.to(device="cpu") is x
    assert x.to(dtype=gf.float64).dtype == np.float64 and x.to("cpu", gf.float64).requires_grad
    with pytest.raises(ValueError, match="device"):
        x.to("cuda")

    @gf.no_grad
    def doubled(t):
        return t * 2

    assert not doubled(x).requires_grad and doubled.__name__ == "doubled"
    assert (x * 2).requires_grad
