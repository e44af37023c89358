"""gf.nn.utils.clip_grad_norm_ / clip_grad_value_ against PyTorch and numpy, over arena-backed
gradients (one pass per arena) and plain ones (per tensor)."""

import numpy as np
import pytest

import gradfuse as gf

SHAPES = [(3, 5), (7,), (1,), (17, 3)]


def numpy_clip(grads, max_norm, p):
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads])
    total = np.max(np.abs(flat)) if np.isinf(p) else np.sum(np.abs(flat) ** p) ** (1 / p)
    coef = min(max_norm / (total + 1e-6), 1.0)
    return total, [g * coef for g in grads]


@pytest.mark.parametrize("arena", [True, False])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_numpy_and_pytorch(arena, norm_type, dtype):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ps = [gf.nn.Parameter(np.zeros(s, dtype)) for s in SHAPES]
    if arena:
        gf.optim.SGD(ps, lr=0.1)
    for p, g in zip(ps, grads):
        p.grad = gf.Tensor(g.copy())
    if arena:  # put the gradients into the arena as a backward would
        for p in ps:
            p.grad = None
        for p, g in zip(ps, grads):
            from gradfuse.tensor import _accumulate_leaf

            _accumulate_leaf(p, g)
            assert p.grad is p._grad_slot
    total = gf.nn.utils.clip_grad_norm_(ps, 0.5, norm_type=norm_type)
    ref_total, ref = numpy_clip(grads, 0.5, norm_type)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert float(total.data) == pytest.approx(ref_total, rel=rtol)
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p.grad.data, r, rtol=rtol, atol=1e-7)
    torch = pytest.importorskip("torch")
    tp = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    for t, g in zip(tp, grads):
        t.grad = torch.tensor(g.astype(np.float64))
    tt = torch.nn.utils.clip_grad_norm_(tp, 0.5, norm_type=norm_type)
    assert float(total.data) == pytest.approx(float(tt), rel=rtol)


def test_clip_grad_norm_nonfinite_and_empty():
    p = gf.nn.Parameter(np.zeros(3, np.float32))
    p.grad = gf.Tensor(np.array([1.0, np.nan, 2.0], np.float32))
    with pytest.raises(RuntimeError, match="non-finite"):
        gf.nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert np.isnan(float(gf.nn.utils.clip_grad_norm_([p], 1.0).data))
    assert float(gf.nn.utils.clip_grad_norm_([gf.nn.Parameter(np.zeros(2))], 1.0).data) == 0.0
    with pytest.raises(ValueError, match="norm_type"):
        gf.nn.utils.clip_grad_norm_([p], 1.0, norm_type=-1)


def test_clip_grad_value_and_non_contiguous_grad():
    p = gf.nn.Parameter(np.zeros((4, 3)))
    g = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2] - 10  # non-contiguous view
    p.grad = gf.Tensor(g)
    gf.nn.utils.clip_grad_value_([p], 3.0)
    np.testing.assert_array_equal(p.grad.data, np.clip(np.arange(24.0).reshape(4, 6)[:, ::2] - 10,
                                                       -3, 3))
    q = gf.nn.Parameter(np.zeros(5, np.float32))
    gf.optim.Adam([q])
    q.grad = gf.Tensor(np.array([-5, -1, 0, 1, 5], np.float32))
    gf.nn.utils.clip_grad_value_(q, 2.0)
    np.testing.assert_array_equal(q.grad.data, [-2, -1, 0, 1, 2])


def test_clip_bad_argument_types_name_the_argument_and_leave_grads():
    p = gf.nn.Parameter(np.zeros(3, np.float32))
    p.grad = gf.Tensor(np.array([3.0, -4.0, 0.0], np.float32))
    for kw, name in [(dict(max_norm="a"), "max_norm"), (dict(max_norm=None), "max_norm"),
                     (dict(max_norm=1.0, norm_type="two"), "norm_type")]:
        with pytest.raises(TypeError, match=name):
            gf.nn.utils.clip_grad_norm_([p], **kw)
    with pytest.raises(TypeError, match="clip_value"):
        gf.nn.utils.clip_grad_value_([p], None)
    opt = gf.optim.SGD([p], lr=0.1)
    with pytest.raises(TypeError, match="norm_type"):
        opt.clip_grad_norm_(1.0, norm_type=None)
    np.testing.assert_array_equal(p.grad.data, [3.0, -4.0, 0.0])


def test_clip_grad_norm_generator_none_grads_and_single_tensor_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    ps = [gf.nn.Parameter(np.zeros(s, np.float32)) for s in SHAPES]
    tp = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    gf.optim.Adam(ps)
    for i, (p, t, g) in enumerate(zip(ps, tp, grads)):
        if i != 1:  # parameter 1 has no gradient: ignored by both
            p.grad = gf.Tensor(g.copy())
            t.grad = torch.tensor(g)
    for norm_type in (1.0, float("inf")):
        total = gf.nn.utils.clip_grad_norm_((p for p in ps), 0.3, norm_type=norm_type)
        tt = torch.nn.utils.clip_grad_norm_((t for t in tp), 0.3, norm_type=norm_type)
        assert float(total.data) == pytest.approx(float(tt), rel=1e-5)
        for p, t in zip(ps, tp):
            assert (p.grad is None) == (t.grad is None)
            if p.grad is not None:
                np.testing.assert_allclose(p.grad.data, t.grad.numpy(), rtol=1e-5, atol=1e-7)
    total = gf.nn.utils.clip_grad_norm_(ps[0], 0.01)
    tt = torch.nn.utils.clip_grad_norm_(tp[0], 0.01)
    assert float(total.data) == pytest.approx(float(tt), rel=1e-5)
    np.testing.assert_allclose(ps[0].grad.data, tp[0].grad.numpy(), rtol=1e-5, atol=1e-7)
