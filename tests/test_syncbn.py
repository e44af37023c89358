"""gf.nn.SyncBatchNorm without MPI: one process (BatchNorm exactly), and W ranks simulated by
threads with an in-process all-reduce (the same code path as under mpiexec, where the launched
test in test_distributed_train.py checks it again)."""

import threading

import numpy as np
import pytest

import gradfuse as gf
import reference as ref
from gradfuse.nn import syncbn


def _t(a, grad=False):
    return gf.tensor(a, requires_grad=grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3), (4, 7, 3), (2, 3, 2, 5), (9, 1)])
def test_one_process_is_batchnorm(rng, dtype, shape):
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    sbn = gf.nn.SyncBatchNorm(c, momentum=0.3, dtype=dtype)
    sbn.weight.data[...] = rng.standard_normal(c)
    sbn.bias.data[...] = rng.standard_normal(c)
    xt = _t(x, True)
    y = sbn(xt)
    (y * _t(dy)).sum().backward()
    want, rm, rv, (dx, dw, db) = ref.batch_norm(x, sbn.weight.data, sbn.bias.data, np.zeros(c),
                                                np.ones(c), True, 0.3, 1e-5, dy)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y.detach().numpy(), want, **tol)
    np.testing.assert_allclose(xt.grad.numpy(), dx, **tol)
    np.testing.assert_allclose(sbn.weight.grad.numpy(), dw, **tol)
    np.testing.assert_allclose(sbn.bias.grad.numpy(), db, **tol)
    np.testing.assert_allclose(sbn.running_mean.numpy(), rm, **tol)
    np.testing.assert_allclose(sbn.running_var.numpy(), rv, **tol)
    if len(shape) <= 3:  # bitwise BatchNorm1d's kernels
        bn = gf.nn.BatchNorm1d(c, momentum=0.3, dtype=dtype)
        bn.load_state_dict({k: v for k, v in sbn.state_dict().items()
                            if not k.startswith("running") and k != "num_batches_tracked"},
                           strict=False)
        np.testing.assert_array_equal(bn(_t(x)).detach().numpy(), y.detach().numpy())
    sbn.eval()
    want_eval, _, _ = ref.batch_norm(x, sbn.weight.data, sbn.bias.data, rm, rv, False)
    np.testing.assert_allclose(sbn(_t(x)).detach().numpy(), want_eval, **tol)
    assert int(sbn.num_batches_tracked.data) == 1


class _ThreadWorld:
    """W ranks as threads: all_reduce_ sums the ranks' buffers in rank order (the contract of
    gf.distributed.all_reduce_: every rank ends with bitwise the same values)."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world
        self.local = threading.local()
        self.calls = 0

    def get_world_size(self):
        return self.world

    def get_rank(self):
        return self.local.rank

    def all_reduce_(self, buf, op="sum"):
        assert op == "sum"
        r = self.local.rank
        self.slots[r] = buf.copy()
        self.barrier.wait()
        total = self.slots[0].copy()
        for s in self.slots[1:]:
            total += s
        self.barrier.wait()
        buf[...] = total
        if r == 0:
            self.calls += 1
        return buf

    def run(self, fn):
        out, errs = [None] * self.world, []

        def body(r):
            self.local.rank = r
            try:
                out[r] = fn(r)
            except BaseException as e:  # pragma: no cover - reported below
                errs.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errs:
            raise errs[0]
        return out


@pytest.fixture
def world(monkeypatch):
    worlds = {}

    def make(w):
        worlds["w"] = _ThreadWorld(w)
        monkeypatch.setattr(syncbn, "_dist_world", lambda: worlds["w"])
        return worlds["w"]

    return make


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes,tail", [((6, 10), ()), ((3, 0, 5), (4,)), ((1, 1), ()),
                                        ((8, 8, 8), (3,))])
def test_ranks_equal_batchnorm_on_the_concatenated_batch(rng, world, dtype, sizes, tail):
    c = 5
    w = len(sizes)
    xs = [(rng.standard_normal((n, c) + tail) * 3 + 10).astype(dtype) for n in sizes]
    dys = [rng.standard_normal((n, c) + tail).astype(dtype) for n in sizes]
    weight = rng.standard_normal(c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    wd = world(w)

    def rank(r):
        m = gf.nn.SyncBatchNorm(c, momentum=0.2, dtype=dtype)
        m.weight.data[...] = weight
        m.bias.data[...] = bias
        xt = _t(xs[r], True)
        y = m(xt)
        (y * _t(dys[r])).sum().backward()
        return (y.detach().numpy(), xt.grad.numpy(), m.weight.grad.numpy(), m.bias.grad.numpy(),
                m.running_mean.numpy().copy(), m.running_var.numpy().copy())

    res = wd.run(rank)
    assert wd.calls == 2  # one all-reduce forward (statistics), one backward (gradient sums)
    x = np.concatenate(xs)
    dy = np.concatenate(dys)
    want, rm, rv, (dx, dw, db) = ref.batch_norm(x, weight, bias, np.zeros(c), np.ones(c), True,
                                                0.2, 1e-5, dy)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([r[0] for r in res]), want, **tol)
    np.testing.assert_allclose(np.concatenate([r[1] for r in res]), dx, **tol)
    # weight/bias grads are each rank's share: their sum is the concatenated batch's
    np.testing.assert_allclose(sum(r[2] for r in res), dw, **tol)
    np.testing.assert_allclose(sum(r[3] for r in res), db, **tol)
    for r in res:  # running statistics: bitwise the same on every rank
        np.testing.assert_array_equal(r[4], res[0][4])
        np.testing.assert_array_equal(r[5], res[0][5])
    np.testing.assert_allclose(res[0][4], rm, **tol)
    np.testing.assert_allclose(res[0][5], rv, **tol)


def test_ranks_match_torch_batchnorm(rng, world):
    torch = pytest.importorskip("torch")
    c = 4
    xs = [rng.standard_normal((n, c)).astype(np.float64) for n in (7, 3)]
    wd = world(2)

    def rank(r):
        m = gf.nn.SyncBatchNorm(c, dtype=np.float64)
        xt = _t(xs[r], True)
        y = m(xt)
        (y * y).sum().backward()
        return y.detach().numpy(), xt.grad.numpy()

    res = wd.run(rank)
    tx = torch.tensor(np.concatenate(xs), requires_grad=True)
    ty = torch.nn.BatchNorm1d(c, dtype=torch.float64)(tx)
    (ty * ty).sum().backward()
    np.testing.assert_allclose(np.concatenate([r[0] for r in res]), ty.detach().numpy(),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.concatenate([r[1] for r in res]), tx.grad.numpy(),
                               rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kw", [dict(momentum=None), dict(affine=False),
                                dict(track_running_stats=False),
                                dict(momentum=None, affine=False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranks_match_torch_variants_over_steps(rng, world, kw, dtype):
    # cumulative average (momentum=None: 1/count with the count of batches), no affine, no
    # running statistics; 3 steps of (N, C, L) input with an empty share on one rank, then
    # eval mode (running statistics, or each rank's own batch without them, as PyTorch)
    torch = pytest.importorskip("torch")
    c = 3
    sizes = (4, 0, 5) if kw.get("track_running_stats", True) else (4, 2, 5)
    steps = [[(rng.standard_normal((n, c, 2)) * 3 + 1).astype(dtype) for n in sizes]
             for _ in range(3)]
    wd = world(len(sizes))

    def rank(r):
        m = gf.nn.SyncBatchNorm(c, dtype=dtype, **kw)
        outs = []
        for xs in steps:
            xt = _t(xs[r], True)
            y = m(xt)
            (y * y).sum().backward()
            outs.append((y.detach().numpy(), xt.grad.numpy()))
        m.eval()
        return outs, m(_t(steps[0][r])).detach().numpy(), \
            {k: np.array(v) for k, v in m.state_dict().items()}

    res = wd.run(rank)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    tm = torch.nn.BatchNorm1d(c, dtype=tdt, **kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    for s, xs in enumerate(steps):
        tx = torch.tensor(np.concatenate(xs), requires_grad=True)
        ty = tm(tx)
        (ty * ty).sum().backward()
        np.testing.assert_allclose(np.concatenate([r[0][s][0] for r in res]),
                                   ty.detach().numpy(), **tol)
        np.testing.assert_allclose(np.concatenate([r[0][s][1] for r in res]),
                                   tx.grad.numpy(), **tol)
    tm.eval()
    if kw.get("track_running_stats", True):
        want = tm(torch.tensor(np.concatenate(steps[0]))).detach().numpy()
    else:
        want = np.concatenate([tm(torch.tensor(x)).detach().numpy() for x in steps[0]])
    np.testing.assert_allclose(np.concatenate([r[1] for r in res]), want, **tol)
    sd = tm.state_dict()
    for r in res:
        assert sorted(r[2]) == sorted(sd)
        for k, v in r[2].items():
            np.testing.assert_allclose(v, sd[k].numpy(), **tol, err_msg=k)


def test_gradcheck_through_the_collective_path(rng, world):
    wd = world(1)  # a world of one through the all-reduce path (not the BatchNorm fallback)
    wd.local.rank = 0
    x = gf.tensor(rng.standard_normal((5, 3, 2)), requires_grad=True)
    w = gf.tensor(rng.standard_normal(3), requires_grad=True)
    b = gf.tensor(rng.standard_normal(3), requires_grad=True)

    def fn(x, w, b):
        y = syncbn._SyncBatchNormFn.apply(x, w, b, None, None, 0.1, 1e-5, wd)
        return y * y

    assert gf.autograd.gradcheck(fn, [x, w, b])


def test_stats_are_bitwise_equal_across_ranks_and_merge_in_rank_order(rng):
    parts = [rng.standard_normal((n, 3)) * 5 + 1e3 for n in (4, 0, 9, 2)]
    counts = np.array([len(p) for p in parts], float)
    means = np.array([p.mean(0) if len(p) else np.zeros(3) for p in parts])
    m2s = np.array([((p - p.mean(0)) ** 2).sum(0) if len(p) else np.zeros(3) for p in parts])
    n, mean, m2 = syncbn.merge_stats(counts, means, m2s)
    x = np.concatenate(parts)
    assert n == len(x)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(m2, ((x - x.mean(0)) ** 2).sum(0), rtol=1e-10)


def test_one_value_over_all_ranks_is_refused(world):
    wd = world(2)
    sizes = (1, 0)

    def rank(r):
        m = gf.nn.SyncBatchNorm(2)
        with pytest.raises(ValueError, match="more than 1 value"):
            m(_t(np.ones((sizes[r], 2), np.float32)))
        return int(m.num_batches_tracked.data)

    assert wd.run(rank) == [0, 0]


def test_convert_sync_batchnorm_shares_parameters_and_state_dict():
    net = gf.nn.Sequential(gf.nn.Linear(4, 6), gf.nn.BatchNorm1d(6, momentum=None),
                           gf.nn.Sequential(gf.nn.ReLU(), gf.nn.BatchNorm1d(6, affine=False)))
    bn = net[1]
    opt = gf.optim.SGD(net.parameters(), lr=0.1)
    keys = list(net.state_dict())
    out = gf.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert out is net
    assert type(net[1]) is gf.nn.SyncBatchNorm and type(net[2][1]) is gf.nn.SyncBatchNorm
    assert net[1].weight is bn.weight and net[1].running_mean is bn.running_mean
    assert net[1].momentum is None and net[2][1].affine is False
    assert list(net.state_dict()) == keys
    x = gf.tensor(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    net(x).sum().backward()
    before = bn.bias.detach().numpy().copy()
    opt.step()  # the optimizer built before the conversion updates the shared parameters
    assert not np.array_equal(before, net[1].bias.detach().numpy())
    root = gf.nn.SyncBatchNorm.convert_sync_batchnorm(gf.nn.BatchNorm1d(3).eval())
    assert type(root) is gf.nn.SyncBatchNorm and not root.training
    with pytest.raises(ValueError, match="process_group"):
        gf.nn.SyncBatchNorm.convert_sync_batchnorm(net, process_group="world")
    with pytest.raises(TypeError, match="module"):
        gf.nn.SyncBatchNorm.convert_sync_batchnorm("net")


def test_bad_input_changes_nothing():
    m = gf.nn.SyncBatchNorm(3)
    with pytest.raises(ValueError, match="num_features"):
        m(_t(np.ones((4, 2), np.float32)))
    with pytest.raises(ValueError, match="input"):
        m(_t(np.ones(4, np.float32)))
    with pytest.raises(TypeError, match="input"):
        m(np.ones((4, 3)))
    assert int(m.num_batches_tracked.data) == 0
    np.testing.assert_array_equal(m.running_mean.numpy(), np.zeros(3))


@pytest.mark.parametrize("shape", [(70001, 3), (300, 5, 70), (2000, 6, 5)])
def test_kernels_are_bitwise_independent_of_threads(rng, shape):
    from gradfuse import _backend

    x = (rng.standard_normal(shape) + 5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    mean = x.mean(axis=(0,) + tuple(range(2, x.ndim))).astype(np.float32)
    rstd = np.full(c, 0.7, np.float32)
    w = np.linspace(0.5, 1.5, c).astype(np.float32)
    sdy, sdyx = rng.standard_normal(c), rng.standard_normal(c)
    old = gf.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            gf.set_num_threads(n)
            outs.append((*_backend.batch_norm_stats(x), *_backend.batch_norm_grad_sums(x, dy, mean),
                         _backend.batch_norm_grad_input(x, dy, w, mean, rstd, sdy, sdyx, 1e5)))
    finally:
        gf.set_num_threads(old)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    # and against numpy
    axes = (0,) + tuple(range(2, x.ndim))
    x64 = x.astype(np.float64)
    # block sums in float32 (the norms kernels' documented scheme), blocks added in double
    np.testing.assert_allclose(outs[0][0], x64.mean(axis=axes), rtol=1e-6)
    sh = (1, -1) + (1,) * (x.ndim - 2)
    np.testing.assert_allclose(outs[0][1], ((x64 - x64.mean(axis=axes).reshape(sh)) ** 2)
                               .sum(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(outs[0][2], dy.astype(np.float64).sum(axis=axes), rtol=1e-5,
                               atol=1e-3)
    want = (rstd * w).reshape(sh) * (dy - (sdy / 1e5).reshape(sh)
                                     - (x - mean.reshape(sh)) * (rstd ** 2 * sdyx / 1e5).reshape(sh))
    np.testing.assert_allclose(outs[0][4], want, rtol=1e-4, atol=1e-5)


def test_kernel_arguments_are_checked():
    from gradfuse import _backend

    x = np.ones((4, 3), np.float32)
    m = np.zeros(3, np.float32)
    s = np.zeros(3)
    with pytest.raises(ValueError, match="sum_dy"):
        _backend.batch_norm_grad_input(x, x, None, m, m, np.zeros(2), s, 4.0)
    with pytest.raises(ValueError, match="count"):
        _backend.batch_norm_grad_input(x, x, None, m, m, s, s, 0.0)
    with pytest.raises(ValueError, match="grad_output"):
        _backend.batch_norm_grad_sums(x, np.ones((4, 2), np.float32), m)
    with pytest.raises(TypeError, match="input"):
        _backend.batch_norm_stats(np.ones((4, 3), np.int64))
    mean, m2 = _backend.batch_norm_stats(np.ones((0, 3), np.float64))  # an empty shard
    assert mean.tolist() == [0, 0, 0] and m2.tolist() == [0, 0, 0]
