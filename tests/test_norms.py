"""Normalization layers: the fused kernels (csrc/kernels/norms.cpp) against numpy references,
finite differences and PyTorch; accuracy at large offsets; thread-count independence; bad input.
"""

import numpy as np
import pytest

import gradfuse as gf
import gradfuse.nn.functional as F
import reference as ref

TOL = {np.float32: 2e-5, np.float64: 1e-11}


def _t(a, grad=False):
    return gf.tensor(a, requires_grad=grad)


def _grads(*ts):
    return [None if t is None or t.grad is None else t.grad.numpy() for t in ts]


def _close(got, want, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- numpy references

# odd sizes: partial SIMD tails, one row, one feature, a 3-D input, a row past one stats block
LN_SHAPES = [((1, 1), 1), ((1, 7), 1), ((5, 1), 1), ((33, 17), 1), ((4, 3, 19), 1),
             ((2, 3, 4, 5), 2), ((3, 4099), 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ndim", LN_SHAPES)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_matches_numpy(rng, dtype, shape, ndim, affine):
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ns = shape[len(shape) - ndim:]
    w = (rng.random(ns) + 0.5).astype(dtype) if affine != "none" else None
    b = rng.standard_normal(ns).astype(dtype) if affine == "both" else None
    xt, wt = _t(x, True), None if w is None else _t(w, True)
    bt = None if b is None else _t(b, True)
    y = F.layer_norm(xt, ns, wt, bt, eps=1e-5)
    assert y.dtype == dtype and y.shape == shape
    want, (dx, dw, db) = ref.layer_norm(x, ndim, w, b, 1e-5, dy)
    _close(y.detach().numpy(), want, dtype)
    y.backward(_t(dy))
    gx, gw, gb = _grads(xt, wt, bt)
    _close(gx, dx, dtype, 10)
    if w is not None:
        _close(gw, dw, dtype, 10)
    if b is not None:
        _close(gb, db, dtype, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ndim", LN_SHAPES)
def test_rms_norm_matches_numpy(rng, dtype, shape, ndim):
    x = (rng.standard_normal(shape) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ns = shape[len(shape) - ndim:]
    w = (rng.random(ns) + 0.5).astype(dtype)
    xt, wt = _t(x, True), _t(w, True)
    y = F.rms_norm(xt, ns, wt, eps=1e-6)
    want, (dx, dw, _) = ref.layer_norm(x, ndim, w, None, 1e-6, dy, rms=True)
    _close(y.detach().numpy(), want, dtype)
    y.backward(_t(dy))
    _close(xt.grad.numpy(), dx, dtype, 10)
    _close(wt.grad.numpy(), dw, dtype, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,groups", [((2, 6, 5), 3), ((3, 4), 2), ((1, 8, 3, 3), 4),
                                          ((2, 5, 17), 1), ((4, 6, 1), 6), ((2, 2, 4100), 1)])
def test_group_norm_matches_numpy(rng, dtype, shape, groups):
    x = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    w, b = (rng.random(c) + 0.5).astype(dtype), rng.standard_normal(c).astype(dtype)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    y = F.group_norm(xt, groups, wt, bt)
    want, (dx, dw, db) = ref.group_norm(x, groups, w, b, 1e-5, dy)
    _close(y.detach().numpy(), want, dtype)
    y.backward(_t(dy))
    _close(xt.grad.numpy(), dx, dtype, 10)
    _close(wt.grad.numpy(), dw, dtype, 10)
    _close(bt.grad.numpy(), db, dtype, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 1), (7, 3), (300, 37), (5, 4, 1), (6, 3, 7), (2, 3, 300),
                                   (3, 2, 4100),  # runs longer than a stats block
                                   (517, 5, 3), (2, 3, 63), (2, 3, 64)])  # short runs as rows
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_numpy(rng, dtype, shape, training):
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    w, b = (rng.random(c) + 0.5).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    rmt, rvt = _t(rm.copy()), _t(rv.copy())
    y = F.batch_norm(xt, rmt, rvt, wt, bt, training=training, momentum=0.3)
    want, new_rm, new_rv, (dx, dw, db) = ref.batch_norm(x, w, b, rm, rv, training, 0.3, 1e-5, dy)
    _close(y.detach().numpy(), want, dtype, 10)
    if training:
        _close(rmt.numpy(), new_rm, dtype, 10)
        _close(rvt.numpy(), new_rv, dtype, 10)
    else:
        np.testing.assert_array_equal(rmt.numpy(), rm)
        np.testing.assert_array_equal(rvt.numpy(), rv)
    y.backward(_t(dy))
    _close(xt.grad.numpy(), dx, dtype, 30)
    _close(wt.grad.numpy(), dw, dtype, 30)
    _close(bt.grad.numpy(), db, dtype, 30)


def test_batch_norm_without_running_stats_or_affine(rng):
    x = rng.standard_normal((9, 4)).astype(np.float32)
    y = F.batch_norm(_t(x), None, None, training=True)
    want, _, _ = ref.batch_norm(x)
    _close(y.numpy(), want, np.float32, 10)


# --------------------------------------------------------------------------- gradcheck (float64)


def _p(rng, shape, grad=True, offset=0.0):
    return gf.tensor(rng.standard_normal(shape) + offset, dtype=gf.float64, requires_grad=grad)


def test_gradcheck_layer_norm(rng):
    x, w, b = _p(rng, (3, 2, 5)), _p(rng, (2, 5), offset=1.0), _p(rng, (2, 5))
    assert gf.autograd.gradcheck(lambda x, w, b: F.layer_norm(x, (2, 5), w, b), [x, w, b])
    x1 = _p(rng, (1, 1, 4))  # one row
    assert gf.autograd.gradcheck(lambda x: F.layer_norm(x, 4), [x1])


def test_gradcheck_rms_norm(rng):
    x, w = _p(rng, (4, 6)), _p(rng, (6,), offset=1.0)
    assert gf.autograd.gradcheck(lambda x, w: F.rms_norm(x, (6,), w, eps=1e-5), [x, w])


def test_gradcheck_group_norm(rng):
    x, w, b = _p(rng, (2, 4, 3)), _p(rng, (4,), offset=1.0), _p(rng, (4,))
    assert gf.autograd.gradcheck(lambda x, w, b: F.group_norm(x, 2, w, b), [x, w, b])


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_batch_norm(rng, shape, training):
    x, w, b = _p(rng, shape), _p(rng, (shape[1],), offset=1.0), _p(rng, (shape[1],))
    rm = gf.tensor(rng.standard_normal(shape[1]), dtype=gf.float64)
    rv = gf.tensor(rng.random(shape[1]) + 0.5, dtype=gf.float64)
    # running stats are passed only in eval: gradcheck calls fn many times and a training
    # call would move them between calls
    stats = (None, None) if training else (rm, rv)

    def fn(x, w, b):
        return F.batch_norm(x, *stats, w, b, training=training)

    assert gf.autograd.gradcheck(fn, [x, w, b])


# --------------------------------------------------------------------------- accuracy


def test_batch_norm_stats_accurate_for_a_million_rows_at_large_offset(rng):
    # 1000 + N(0, 1) in float32: a naive float32 sum of squares would lose the variance.
    x = (1000.0 + rng.standard_normal((1_000_000, 2))).astype(np.float32)
    bn = gf.nn.BatchNorm1d(2, momentum=1.0)  # running stats = this batch's
    bn(gf.tensor(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(bn.running_mean.numpy(), x64.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(bn.running_var.numpy(), x64.var(axis=0, ddof=1), rtol=1e-5)


def test_layer_norm_accurate_for_a_long_row_at_large_offset(rng):
    x = (1000.0 + rng.standard_normal((2, 1_000_003))).astype(np.float32)
    y = F.layer_norm(gf.tensor(x), x.shape[1]).numpy()
    want = ref.layer_norm(x, 1)
    np.testing.assert_allclose(y, want, atol=2e-4)
    assert abs(y.astype(np.float64).std(axis=1) - 1).max() < 1e-5


# --------------------------------------------------------------------------- thread count


def _run_all(rng_seed=7):
    rng = np.random.default_rng(rng_seed)
    out = []
    for shape, kind in [((300, 1000), "ln"), ((2000, 40), "bn"), ((40, 30, 50), "bn"),
                        ((20, 8, 400), "gn"), ((300, 1000), "rms")]:
        x = gf.tensor(rng.standard_normal(shape).astype(np.float32) + 2, requires_grad=True)
        dy = gf.tensor(rng.standard_normal(shape).astype(np.float32))
        c = shape[-1] if kind in ("ln", "rms") else shape[1]
        w = gf.tensor(rng.random(c).astype(np.float32) + 0.5, requires_grad=True)
        b = gf.tensor(rng.random(c).astype(np.float32), requires_grad=True)
        rm, rv = gf.zeros(c), gf.ones(c)
        if kind == "ln":
            y = F.layer_norm(x, c, w, b)
        elif kind == "rms":
            y = F.rms_norm(x, c, w)
        elif kind == "bn":
            y = F.batch_norm(x, rm, rv, w, b, training=True)
        else:
            y = F.group_norm(x, 4, w, b)
        y.backward(dy)
        out += [y.detach().numpy(), x.grad.numpy(), w.grad.numpy(), rm.numpy(), rv.numpy()]
        if kind != "rms":
            out.append(b.grad.numpy())
    return out


# Outputs of >= 8 MiB are written with streaming stores through an L1 buffer (norms.cpp); odd
# widths put row starts off 16-byte alignment, so the scalar head and tail of each row are used.
@pytest.mark.parametrize("dtype,shape", [(np.float32, (2049, 1025)), (np.float64, (1031, 1021)),
                                         (np.float32, (7, 301, 1001)),
                                         (np.float32, (32771, 16, 4))])  # short runs as rows
def test_large_outputs_streamed_match_the_cached_path(rng, dtype, shape):
    assert np.prod(shape) * np.dtype(dtype).itemsize >= 8 << 20
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    # LayerNorm rows are independent: the streamed rows must equal the same rows computed
    # alone (small output, ordinary stores) bit for bit
    d = shape[-1]
    w, b = (rng.random(d) + 0.5).astype(dtype), rng.standard_normal(d).astype(dtype)
    big, small = _t(x, True), _t(x[:3].copy(), True)
    outs = []
    for xt in (big, small):
        wt, bt = _t(w, True), _t(b, True)
        y = F.layer_norm(xt, (d,), wt, bt)
        y.backward(_t(dy[: xt.shape[0]]))
        outs.append((y.detach().numpy(), xt.grad.numpy()))
    assert outs[0][0][:3].tobytes() == outs[1][0].tobytes()
    assert outs[0][1][:3].tobytes() == outs[1][1].tobytes()
    # BatchNorm: against the numpy reference (its statistics span the whole batch), and the
    # same bytes on 1 and 2 threads
    wc, bc = (rng.random(c) + 0.5).astype(dtype), rng.standard_normal(c).astype(dtype)
    before = gf.get_num_threads()
    try:
        for training in (True, False):
            got = []
            for threads in (1, 2):
                gf.set_num_threads(threads)
                xt = _t(x, True)
                y = F.batch_norm(xt, _t(np.zeros(c, dtype)), _t(np.ones(c, dtype)), _t(wc),
                                 _t(bc), training=training)
                y.backward(_t(dy))
                got.append((y.detach().numpy(), xt.grad.numpy()))
            want, _, _, (dx, _, _) = ref.batch_norm(x, wc, bc, np.zeros(c), np.ones(c),
                                                    training, 0.1, 1e-5, dy)
            _close(got[0][0], want, dtype, 10)
            _close(got[0][1], dx, dtype, 30)
            assert got[0][0].tobytes() == got[1][0].tobytes()
            assert got[0][1].tobytes() == got[1][1].tobytes()
    finally:
        gf.set_num_threads(before)


def test_results_bitwise_independent_of_thread_count():
    before = gf.get_num_threads()
    try:
        gf.set_num_threads(1)
        one = _run_all()
        gf.set_num_threads(2)
        two = _run_all()
        gf.set_num_threads(3)
        three = _run_all()
    finally:
        gf.set_num_threads(before)
    for a, b, c in zip(one, two, three):
        assert a.tobytes() == b.tobytes() == c.tobytes()


# --------------------------------------------------------------------------- modules and PyTorch


def test_batchnorm_state_dict_keys_and_defaults():
    bn = gf.nn.BatchNorm1d(3)
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    np.testing.assert_array_equal(sd["running_var"], np.ones(3, np.float32))
    assert list(gf.nn.BatchNorm1d(3, affine=False, track_running_stats=False).state_dict()) == []
    assert list(gf.nn.LayerNorm((2, 3)).state_dict()) == ["weight", "bias"]
    assert list(gf.nn.LayerNorm(3, bias=False).state_dict()) == ["weight"]
    assert list(gf.nn.RMSNorm(3).state_dict()) == ["weight"]
    assert list(gf.nn.GroupNorm(2, 4).state_dict()) == ["weight", "bias"]


def _copy_params(src_gf, dst_torch, torch):
    dst_torch.load_state_dict({k: torch.tensor(v) for k, v in src_gf.state_dict().items()})


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(16, 5), (6, 5, 7)])
def test_batchnorm1d_matches_torch_over_training_then_eval(rng, momentum, shape):
    torch = pytest.importorskip("torch")
    bn = gf.nn.BatchNorm1d(5, momentum=momentum)
    bn.weight.data[:] = rng.random(5) + 0.5
    bn.bias.data[:] = rng.standard_normal(5)
    tb = torch.nn.BatchNorm1d(5, momentum=momentum)
    _copy_params(bn, tb, torch)
    for step in range(4):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xg, xt = gf.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        yg, yt = bn(xg), tb(xt)
        yg.backward(gf.tensor(dy))
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(yg.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        for p, q in ((bn.weight, tb.weight), (bn.bias, tb.bias)):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-4)
            p.grad, q.grad = None, None
    for k, v in tb.state_dict().items():
        np.testing.assert_allclose(bn.state_dict()[k], v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    bn.eval()
    tb.eval()
    x = rng.standard_normal((1,) + shape[1:]).astype(np.float32)  # batch of 1 is fine in eval
    xg, xt = gf.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yg, yt = bn(xg), tb(xt)
    np.testing.assert_allclose(yg.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    yg.sum().backward()
    yt.sum().backward()
    np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.weight.grad.numpy(), tb.weight.grad.numpy(), rtol=1e-5,
                               atol=1e-5)


def test_batchnorm_without_tracking_uses_batch_stats_in_eval(rng):
    torch = pytest.importorskip("torch")
    bn = gf.nn.BatchNorm1d(4, track_running_stats=False, affine=False).eval()
    tb = torch.nn.BatchNorm1d(4, track_running_stats=False, affine=False).eval()
    x = rng.standard_normal((8, 4)).astype(np.float32)
    np.testing.assert_allclose(bn(gf.tensor(x)).numpy(), tb(torch.tensor(x)).numpy(), atol=1e-5)
    assert bn.running_mean is None


def test_state_dict_moves_between_torch_and_gradfuse(rng):
    torch = pytest.importorskip("torch")
    tb = torch.nn.BatchNorm1d(3)
    for _ in range(3):
        tb(torch.randn(10, 3) * 2 + 1)
    bn = gf.nn.BatchNorm1d(3)
    bn.load_state_dict(tb.state_dict())
    assert int(bn.num_batches_tracked.numpy()) == 3
    np.testing.assert_allclose(bn.running_var.numpy(), tb.running_var.numpy())
    tb2 = torch.nn.BatchNorm1d(3)
    tb2.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    np.testing.assert_allclose(tb2.running_mean.numpy(), tb.running_mean.numpy())


@pytest.mark.parametrize("kind", ["layer", "layer_nobias", "layer_noaffine", "rms", "rms_eps",
                                  "group"])
def test_norm_modules_match_torch(rng, kind):
    torch = pytest.importorskip("torch")
    shape = (5, 6, 7) if kind == "group" else (3, 4, 7)
    if kind == "layer":
        g, t = gf.nn.LayerNorm((4, 7)), torch.nn.LayerNorm((4, 7))
    elif kind == "layer_nobias":
        g, t = gf.nn.LayerNorm(7, bias=False), torch.nn.LayerNorm(7, bias=False)
    elif kind == "layer_noaffine":
        g = gf.nn.LayerNorm(7, eps=1e-3, elementwise_affine=False)
        t = torch.nn.LayerNorm(7, eps=1e-3, elementwise_affine=False)
    elif kind == "rms":
        g, t = gf.nn.RMSNorm(7), torch.nn.RMSNorm(7)
    elif kind == "rms_eps":
        g, t = gf.nn.RMSNorm((4, 7), eps=1e-2), torch.nn.RMSNorm((4, 7), eps=1e-2)
    else:
        g, t = gf.nn.GroupNorm(3, 6), torch.nn.GroupNorm(3, 6)
    for p in g.parameters():
        p.data[...] = rng.random(p.shape) + 0.5
    _copy_params(g, t, torch)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    xg, xt = gf.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yg, yt = g(xg), t(xt)
    np.testing.assert_allclose(yg.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    yg.backward(gf.tensor(dy))
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(g.named_parameters(), t.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=name)


def test_float64_module():
    ln = gf.nn.LayerNorm(3).double()
    y = ln(gf.tensor(np.arange(6.0).reshape(2, 3), dtype=gf.float64))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.detach().numpy(), ref.layer_norm(np.arange(6.0).reshape(2, 3), 1))


# --------------------------------------------------------------------------- bad input


def _bn_state(bn):
    return {k: v.copy() for k, v in bn.state_dict().items()}


def _assert_state(bn, state):
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


@pytest.mark.parametrize("shape,exc,match", [
    ((4, 3), ValueError, "num_features"),
    ((4, 5, 2, 2), ValueError, "expected 2D or 3D input"),
    ((5,), ValueError, "expected 2D or 3D input"),
    ((1, 5), ValueError, "Expected more than 1 value per channel when training"),
    ((1, 5, 1), ValueError, "Expected more than 1 value per channel when training"),
])
def test_batchnorm_rejects_bad_input_and_keeps_state(rng, shape, exc, match):
    bn = gf.nn.BatchNorm1d(5)
    bn(gf.tensor(rng.standard_normal((8, 5)).astype(np.float32)))
    state = _bn_state(bn)
    with pytest.raises(exc, match=match):
        bn(gf.tensor(rng.standard_normal(shape).astype(np.float32)))
    _assert_state(bn, state)
    assert int(bn.num_batches_tracked.numpy()) == 1


def test_batchnorm_rejects_wrong_dtype_and_keeps_state(rng):
    bn = gf.nn.BatchNorm1d(5)
    state = _bn_state(bn)
    with pytest.raises(TypeError, match="dtype float64"):
        bn(gf.tensor(rng.standard_normal((8, 5))))  # float64 input, float32 module
    with pytest.raises(TypeError, match="input"):
        bn(gf.tensor(np.ones((8, 5), np.int64)))
    _assert_state(bn, state)


def test_negative_eps_is_rejected():
    for make in (lambda: gf.nn.BatchNorm1d(3, eps=-1e-5), lambda: gf.nn.LayerNorm(3, eps=-1.0),
                 lambda: gf.nn.RMSNorm(3, eps=-1.0), lambda: gf.nn.GroupNorm(1, 3, eps=-1.0),
                 lambda: gf.nn.LayerNorm(3, eps=float("nan"))):
        with pytest.raises(ValueError, match="eps"):
            make()
    x = gf.ones(4, 3)
    rm, rv = gf.zeros(3), gf.ones(3)
    with pytest.raises(ValueError, match="eps"):
        F.batch_norm(x, rm, rv, training=True, eps=-1.0)
    np.testing.assert_array_equal(rm.numpy(), 0)
    np.testing.assert_array_equal(rv.numpy(), 1)
    with pytest.raises(ValueError, match="eps"):
        F.layer_norm(x, 3, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        F.group_norm(x, 1, eps=-1.0)


def test_functional_batch_norm_bad_arguments_change_nothing():
    x = gf.ones(4, 3)
    rm, rv = gf.zeros(3), gf.ones(3)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(x, gf.zeros(4), rv, training=True)
    with pytest.raises(ValueError, match="weight"):
        F.batch_norm(x, rm, rv, gf.ones(2), training=True)
    with pytest.raises(ValueError, match="momentum"):
        F.batch_norm(x, rm, rv, training=True, momentum=2.0)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="more than 1 value"):
        F.batch_norm(gf.ones(1, 3), rm, rv, training=True)
    np.testing.assert_array_equal(rm.numpy(), 0)
    np.testing.assert_array_equal(rv.numpy(), 1)


def test_layer_norm_shape_errors():
    with pytest.raises(ValueError, match="normalized_shape"):
        gf.nn.LayerNorm(5)(gf.ones(3, 4))
    with pytest.raises(ValueError, match="normalized_shape"):
        F.layer_norm(gf.ones(3, 4), (3, 4, 1))
    with pytest.raises(ValueError, match="normalized_shape"):
        gf.nn.LayerNorm(0)
    with pytest.raises(TypeError, match="normalized_shape"):
        gf.nn.LayerNorm("x")
    with pytest.raises(ValueError, match="weight"):
        F.layer_norm(gf.ones(3, 4), 4, weight=gf.ones(3))
    with pytest.raises(ValueError, match="normalized_shape"):
        gf.nn.RMSNorm(5)(gf.ones(3, 4))
    with pytest.raises(TypeError, match="input"):
        F.layer_norm(np.ones((3, 4), np.float32), 4)


def test_group_norm_errors():
    with pytest.raises(ValueError, match="num_channels"):
        gf.nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="num_channels"):
        gf.nn.GroupNorm(2, 6)(gf.ones(2, 4, 3))
    with pytest.raises(ValueError, match="num_groups"):
        F.group_norm(gf.ones(2, 6, 3), 4)
    with pytest.raises(ValueError, match="num_groups"):
        gf.nn.GroupNorm(0, 6)


def test_backend_rejects_bad_arrays():
    from gradfuse import _backend

    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="weight"):
        _backend.row_norm_forward(x, np.ones(2, np.float32), None, 1e-5, False)
    with pytest.raises(TypeError, match="weight"):
        _backend.row_norm_forward(x, np.ones(3, np.float64), None, 1e-5, False)
    with pytest.raises(ValueError, match="eps"):
        _backend.row_norm_forward(x, None, None, -1.0, False)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="more than 1 value"):
        _backend.batch_norm_forward(np.ones((1, 3, 1), np.float32), None, None, rm, rv, True,
                                    0.1, 1e-5)
    with pytest.raises(ValueError, match="num_groups"):
        _backend.group_norm_forward(np.ones((2, 3, 1), np.float32), None, None, 2, 1e-5)
    # zero channels: each group's statistics would start from an element that is not there
    with pytest.raises(ValueError, match="0 elements"):
        _backend.group_norm_forward(np.ones((2, 0, 3), np.float32), None, None, 1, 1e-5)
    with pytest.raises(ValueError, match="not writeable|writeable"):
        ro = np.zeros(3, np.float32)
        ro.flags.writeable = False
        _backend.batch_norm_forward(np.ones((4, 3), np.float32), None, None, ro, rv, True,
                                    0.1, 1e-5)
    with pytest.raises(ValueError, match="running_var"):
        _backend.batch_norm_forward(np.ones((4, 3), np.float32), None, None, rm,
                                    np.ones(4, np.float32), True, 0.1, 1e-5)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_docs_normalization_example_runs(capsys):
    from docs_util import python_block

    block = python_block("docs/layers.md", "Normalization layers")
    scope = {}
    exec(compile(block, "docs/layers.md normalization example", "exec"), scope)
    assert capsys.readouterr().out.split("\n")[0] == "1"
    assert scope["y"].shape == (1, 16)
    assert not scope["model"].training


def test_non_contiguous_and_empty_inputs(rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)
    xt = gf.tensor(x.T.copy().T)  # a transposed (Fortran-order) view: copied to rows inside
    assert not xt.data.flags.c_contiguous
    np.testing.assert_allclose(F.layer_norm(xt, 5).numpy(), ref.layer_norm(x, 1), atol=1e-5)
    want, _, _ = ref.batch_norm(x)
    np.testing.assert_allclose(F.batch_norm(xt, None, None, training=True).numpy(), want,
                               atol=1e-5)
    empty = gf.tensor(np.zeros((0, 5), np.float32), requires_grad=True)
    ln = gf.nn.LayerNorm(5)
    y = ln(empty)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert empty.grad.shape == (0, 5)
    np.testing.assert_array_equal(ln.weight.grad.numpy(), 0)


_ONES = np.ones((3, 4, 5))


@pytest.mark.parametrize("make", [
    lambda: (gf.nn.GroupNorm(2, 4, affine=False),
             lambda x: ref.group_norm(x, 2, dy=_ONES)),
    lambda: (gf.nn.BatchNorm1d(4, affine=False),
             lambda x: (lambda r: (r[0], r[3]))(ref.batch_norm(x, dy=_ONES))),
    lambda: (gf.nn.RMSNorm(5, eps=1e-6, elementwise_affine=False),
             lambda x: ref.layer_norm(x, 1, eps=1e-6, dy=_ONES, rms=True)),
], ids=["group", "batch", "rms"])
def test_modules_without_affine(rng, make):
    module, want = make()
    assert list(module.parameters()) == []
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    xt = gf.tensor(x, requires_grad=True)
    y = module(xt)
    want_y, (want_dx, _, _) = want(x)
    np.testing.assert_allclose(y.detach().numpy(), want_y, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), want_dx, rtol=1e-4, atol=1e-5)
