"""Module.to after the optimizer is built: the flat arenas move as whole buffers.

Every test takes the ``dev`` fixture: it runs against ``fake_cuda`` (host memory behind the
DeviceArray interface, the optimizer kernels run as the CPU ones) on every machine, and against
the real GPU where there is one. A run that moves mid-training is compared bitwise with a run
built on the target device from the same point (same kernels on the same values), and, where
the gradients are exact on both devices, with a run that never left the CPU (the optimizer
kernels are bitwise the CPU's, tests/test_cuda_kernels.py).
"""

import importlib

import fake_cuda
import numpy as np
import pytest
from test_cuda import _Net  # the same small net with a buffer

import gradfuse as gf
from gradfuse import _backend
from gradfuse.cuda import DeviceArray, ops

tensor_mod = importlib.import_module("gradfuse.tensor")
array_mod = importlib.import_module("gradfuse.cuda.array")

# the optimizer's device path: names _backend dispatches to gradfuse.cuda.ops
_OPTIM_OPS = ("optim_step", "lamb_step", "ArenaStep", "arena_norm_reduce", "arena_all_finite",
              "arena_scale", "arena_clamp")


@pytest.fixture(params=["fake", pytest.param("cuda", marks=pytest.mark.cuda)])
def dev(request, monkeypatch):
    """tests/test_cuda.py's fixture, plus (fake) the optimizer kernels' dispatch, which a
    build without CUDA does not install."""
    if request.param == "fake":
        monkeypatch.setattr(_backend._C, "cuda", fake_cuda, raising=False)
        monkeypatch.setattr(gf.cuda, "_state", {})
        monkeypatch.setattr(tensor_mod, "_CHECK_DEVICES", True)
        monkeypatch.setattr(ops, "_cu", fake_cuda)
        monkeypatch.setattr(ops, "_kern", lambda: fake_cuda)
        monkeypatch.setattr(_backend, "_DeviceArray", DeviceArray, raising=False)
        for name in _OPTIM_OPS:
            cur = getattr(_backend, name)
            monkeypatch.setattr(_backend, name,
                                _backend._dispatcher(getattr(cur, "cpu", cur), getattr(ops, name)))
    return request.param


OPTS = {
    "adam": lambda ps: gf.optim.Adam(ps, lr=1e-2),
    "sgd_nesterov": lambda ps: gf.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                            weight_decay=1e-3),
    "adamw_amsgrad": lambda ps: gf.optim.AdamW(ps, lr=1e-2, amsgrad=True),
    "nadam": lambda ps: gf.optim.NAdam(ps, lr=1e-2),  # per-segment host extras
    "lamb": lambda ps: gf.optim.LAMB(ps, lr=1e-2),  # its own kernel with a segment table
    "adagrad": lambda ps: gf.optim.Adagrad(ps, lr=1e-2, initial_accumulator_value=0.1),
}


def _host(x):
    return x.numpy() if type(x) is DeviceArray else np.asarray(x)


def _batches(rng, n):
    return [(rng.standard_normal((6, 5)).astype(np.float32),
             rng.standard_normal((6, 3)).astype(np.float32)) for _ in range(n)]


def _train(model, opt, batches, device):
    for x, y in batches:
        out = model(gf.tensor(x, device=device))
        loss = ((out - gf.tensor(y, device=device)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _arenas(opt):
    return [a for arenas in opt._arenas for _, a in arenas]


def _addr(x):
    return x.ptr if type(x) is DeviceArray else x.__array_interface__["data"][0]


def _check_arena_views(opt, device):
    """Every buffer of every arena on `device`; each parameter's .data and .grad a view at its
    offset of the arena's buffers."""
    kind = DeviceArray if device == "cuda" else np.ndarray
    for a in _arenas(opt):
        assert type(a.param) is kind and type(a.grad) is kind and a.device == (device == "cuda")
        assert all(type(v) is kind for v in a.state.values())
        isz = a.dtype.itemsize
        for p, o, v, gt in zip(a.params, a.offsets, a.views, a.grad_tensors):
            assert p.data is v and type(v) is kind and p.device == device
            assert _addr(v) == _addr(a.param) + o * isz
            assert p._grad_slot is gt and gt._gf_arena is a
            assert _addr(gt.data) == _addr(a.grad) + o * isz
            assert p.grad is None or p.grad is gt


def _same_state(sd1, sd2):
    assert sd1["param_groups"] == sd2["param_groups"]
    assert sd1["state"].keys() == sd2["state"].keys()
    for i, st in sd1["state"].items():
        assert st.keys() == sd2["state"][i].keys()
        for k, v in st.items():
            np.testing.assert_array_equal(v, sd2["state"][i][k], err_msg=f"{i}.{k}")


def _same_params(m1, m2):
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        np.testing.assert_array_equal(_host(v1), _host(v2), err_msg=k)


@pytest.mark.parametrize("name", sorted(OPTS))
def test_move_mid_training_matches_a_run_on_the_target_device(dev, rng, name):
    gf.manual_seed(0)
    model = _Net()
    opt = OPTS[name](model.parameters())
    batches = _batches(rng, 3)
    _train(model, opt, batches, "cpu")
    for device in ("cuda", "cpu", "cuda", "cpu"):
        # the reference: model and optimizer built on `device` from this point's state
        ref = _Net().to(device)
        ref.load_state_dict({k: _host(v) for k, v in model.state_dict().items()})
        ref_opt = OPTS[name](ref.parameters())
        ref_opt.load_state_dict(opt.state_dict())
        before = opt.state_dict()
        params = list(model.parameters())
        assert model.to(device) is model
        assert list(model.parameters()) == params  # the same Parameter objects, in place
        assert model.scale.device == device
        _check_arena_views(opt, device)
        _same_state(opt.state_dict(), before)  # the state moved unchanged
        _train(model, opt, batches, device)
        _train(ref, ref_opt, batches, device)
        _check_arena_views(opt, device)
        cache = _arenas(opt)[0].slot_cache
        bound = cache[3] if cache is not None else None
        assert (bound is not None) == (opt._fast_step and type(opt)._update is
                                       gf.optim.Optimizer._update)
        if bound is not None and device == "cuda":  # bound again, to the moved buffers
            assert isinstance(bound, ops.ArenaStep)
            assert bound._keep[0] is _arenas(opt)[0].param
        _same_params(model, ref)
        _same_state(opt.state_dict(), ref_opt.state_dict())
        for p, q in zip(model.parameters(), ref.parameters()):
            np.testing.assert_array_equal(_host(p.grad.data), _host(q.grad.data))
    # and the whole run stays close to one that never left the CPU
    gf.manual_seed(0)
    cpu = _Net()
    cpu_opt = OPTS[name](cpu.parameters())
    _train(cpu, cpu_opt, batches * 5, "cpu")
    for k, v in cpu.state_dict().items():
        np.testing.assert_allclose(_host(model.state_dict()[k]), v, rtol=1e-4, atol=1e-5)


class _Bag(gf.nn.Module):
    """Parameters of two dtypes in two groups of one optimizer, one in a second optimizer, one
    in none (frozen by the user but still getting gradients), and a buffer."""

    def __init__(self, rng):
        super().__init__()
        for name, shape, dt in (("a", (3, 5), np.float32), ("b", (7,), np.float64),
                                ("c", (1,), np.float32), ("d", (4, 4), np.float64),
                                ("e", (17,), np.float32), ("f", (2, 3), np.float32)):
            setattr(self, name, gf.nn.Parameter(gf.tensor(rng.standard_normal(shape).astype(dt))))
        self.register_buffer("count", gf.zeros(2, dtype=gf.float64))
        self.w = {n: rng.standard_normal(getattr(self, n).shape).astype(
            getattr(self, n).data.dtype) for n in "abcdef"}

    def grads(self):
        # grad of p*w + p*p is w + 2p: exact on either device, so runs compare bitwise
        dev = self.a.device
        terms = {32: None, 64: None}
        for n in "abcdef":
            p = getattr(self, n)
            t = (p * gf.tensor(self.w[n], device=dev) + p * p).sum()
            bits = p.data.dtype.itemsize * 8
            terms[bits] = t if terms[bits] is None else terms[bits] + t
        terms[32].backward()
        terms[64].backward()


def _bag_opts(bag):
    opt1 = gf.optim.Adam([{"params": [bag.a, bag.b, bag.c], "lr": 0.01},
                          {"params": [bag.d], "lr": 0.03, "betas": (0.8, 0.9)}])
    opt2 = gf.optim.SGD([bag.e], lr=0.1, momentum=0.9)
    return opt1, opt2


def _bag_steps(bag, opts, n):
    for _ in range(n):
        for o in opts:
            o.zero_grad()
        bag.grads()
        for o in opts:
            o.step()


def test_groups_dtypes_two_optimizers_and_loose_parameters_move_back_and_forth(dev):
    bag = _Bag(np.random.default_rng(3))
    ref = _Bag(np.random.default_rng(3))  # never moves
    opts, ref_opts = _bag_opts(bag), _bag_opts(ref)
    assert len(_arenas(opts[0])) == 3  # group 0: float32 and float64; group 1: float64
    _bag_steps(bag, opts, 2)
    _bag_steps(ref, ref_opts, 2)
    for i, device in enumerate(("cuda", "cpu", "cuda", "cuda", "cpu")):
        bag.to(device)
        if i % 2:  # a state_dict round trip on the moved optimizers changes nothing either
            for o in opts:
                o.load_state_dict(o.state_dict())
        for o in opts:
            _check_arena_views(o, device)
        assert bag.f.device == device and bag.f.grad.device == device  # in no optimizer
        assert bag.count.device == device
        _bag_steps(bag, opts, 2)
        _bag_steps(ref, ref_opts, 2)
        for n in "abcdef":
            np.testing.assert_array_equal(_host(getattr(bag, n).data), getattr(ref, n).data,
                                          err_msg=n)
        for o, r in zip(opts, ref_opts):
            _same_state(o.state_dict(), r.state_dict())


@pytest.mark.parametrize("name", ["sgd_nesterov", "adagrad"])
def test_move_before_the_first_step(dev, rng, name):
    # the state is created on the device (SGD's at the first step, Adagrad's already moved)
    gf.manual_seed(0)
    model = _Net()
    opt = OPTS[name](model.parameters())
    ref = _Net().to("cuda")
    ref.load_state_dict(model.state_dict())
    ref_opt = OPTS[name](ref.parameters())
    model.to("cuda")
    batches = _batches(rng, 3)
    _train(model, opt, batches, "cuda")
    _train(ref, ref_opt, batches, "cuda")
    _check_arena_views(opt, "cuda")
    _same_params(model, ref)
    _same_state(opt.state_dict(), ref_opt.state_dict())


def test_move_between_backward_and_step_keeps_the_gradients(dev, rng):
    gf.manual_seed(0)
    model = _Net()
    opt = gf.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _batches(rng, 1)[0]
    ((model(gf.tensor(x)) - gf.tensor(y)) ** 2).mean().backward()
    held = [p.grad for p in model.parameters()]
    grads = [p.grad.data.copy() for p in model.parameters()]
    ref = _Net().to("cuda")
    ref.load_state_dict(model.state_dict())
    ref_opt = gf.optim.Adam(ref.parameters(), lr=1e-2)
    for q, g in zip(ref.parameters(), grads):
        q.grad = gf.tensor(g, device="cuda")  # copied into the arena at the step
    model.cuda()
    for p, h, g in zip(model.parameters(), held, grads):
        assert p.grad is h and h.device == "cuda"  # the same .grad tensor, now on the GPU
        np.testing.assert_array_equal(h.data.numpy(), g)
    opt.step()
    ref_opt.step()
    _same_params(model, ref)
    _same_state(opt.state_dict(), ref_opt.state_dict())
    # a held .grad still writes into the moved arena
    held[0].data = np.ones(held[0].shape, np.float32)
    assert opt._arenas[0][0][1].grad[:1].numpy()[0] == 1.0


def test_same_device_is_a_no_op(dev):
    model = _Net()
    opt = gf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, _batches(np.random.default_rng(0), 1), "cpu")
    a = _arenas(opt)[0]
    bufs = (a.param, a.grad, dict(a.state), list(a.views), a.slot_cache)
    model.to("cpu")
    assert (a.param, a.grad, a.state, a.views, a.slot_cache) == bufs
    model.to("cuda")
    bufs = (a.param, a.grad, dict(a.state), list(a.views))
    model.to("cuda:0").cuda()
    assert (a.param, a.grad, a.state, a.views) == bufs


def _snapshot(model, opt):
    a = _arenas(opt)
    return ([p.data for p in model.parameters()], [p.grad for p in model.parameters()],
            [b.data for b in model.buffers()],
            [(x.param, x.grad, dict(x.state), list(x.views), x.slot_cache, x.device) for x in a],
            [gt.data for x in a for gt in x.grad_tensors])


def _unchanged(model, opt, snap):
    now = _snapshot(model, opt)
    for s, n in zip(snap, now):
        assert len(s) == len(n) and all(x is y or x == y for x, y in zip(s, n))


@pytest.mark.parametrize("fail_at", [3, 5])  # the arena's 1st state buffer; the model's buffer
@pytest.mark.parametrize("where", ["cuda", "cpu"])
def test_a_move_that_fails_changes_nothing(dev, monkeypatch, rng, where, fail_at):
    gf.manual_seed(0)
    model = _Net()
    opt = gf.optim.Adam(model.parameters(), lr=1e-2)
    ref = _Net()
    ref.load_state_dict(model.state_dict())
    ref_opt = gf.optim.Adam(ref.parameters(), lr=1e-2)
    batches = _batches(rng, 2)
    start = "cpu" if where == "cuda" else "cuda"
    model.to(start)
    ref.to(start)
    _train(model, opt, batches, start)
    _train(ref, ref_opt, batches, start)
    snap = _snapshot(model, opt)
    calls = []
    # a copy runs out of memory: after the arena's first buffers, or after the whole arena
    owner, attr = (array_mod, "from_numpy") if where == "cuda" else (DeviceArray, "numpy")
    real = getattr(owner, attr)

    def copy(x):
        calls.append(1)
        if len(calls) == fail_at:
            raise MemoryError("out of memory (simulated)")
        return real(x)

    monkeypatch.setattr(owner, attr, copy)
    with pytest.raises(MemoryError, match="simulated"):
        model.to(where)
    monkeypatch.setattr(owner, attr, real)
    assert len(calls) == fail_at
    _unchanged(model, opt, snap)
    _check_arena_views(opt, start)
    # training goes on as if nothing had been tried
    _train(model, opt, batches, start)
    _train(ref, ref_opt, batches, start)
    _same_params(model, ref)
    _same_state(opt.state_dict(), ref_opt.state_dict())


def test_an_unavailable_device_is_refused_before_anything_moves(dev, monkeypatch, rng):
    model = _Net()
    opt = gf.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, _batches(rng, 1), "cpu")
    snap = _snapshot(model, opt)
    monkeypatch.setattr(gf.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gf.cuda, "unavailable_reason", lambda: "no driver (simulated)")
    with pytest.raises(ValueError, match="not available"):
        model.to("cuda")
    _unchanged(model, opt, snap)


def test_one_copy_per_arena_buffer(dev, monkeypatch, rng):
    model = _Net()
    frozen = gf.nn.Linear(2, 2)
    model.extra = frozen  # in no optimizer: moves tensor by tensor
    opt = gf.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("extra")],
                         lr=1e-2, amsgrad=True)
    _train(model, opt, _batches(rng, 1), "cpu")
    a = _arenas(opt)[0]
    assert sorted(a.state) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    sizes = []
    real = array_mod.from_numpy
    monkeypatch.setattr(array_mod, "from_numpy", lambda x: sizes.append(np.size(x)) or real(x))
    model.to("cuda")
    # param, grad and 3 state buffers of the arena; frozen's weight and bias; the buffer
    assert sorted(sizes) == sorted([a.n] * 5 + [4, 2, 3])
    down = []
    real_numpy = DeviceArray.numpy
    monkeypatch.setattr(DeviceArray, "numpy", lambda s: down.append(s.size) or real_numpy(s))
    model.to("cpu")
    assert sorted(down) == sorted([a.n] * 5 + [4, 2, 3])


def test_an_arena_shared_with_parameters_outside_the_module_is_refused(dev):
    model = _Net()
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    snap = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="outside it"):
        model.fc1.to("cuda")
    _unchanged(model, opt, snap)
    # a module over its own optimizer's parameters moves alone
    other = gf.nn.Linear(3, 2)
    other_opt = gf.optim.SGD(other.parameters(), lr=0.1)
    other.to("cuda")
    _check_arena_views(other_opt, "cuda")
    _unchanged(model, opt, snap)


def test_clip_and_nonfinite_guard_after_a_move(dev, rng):
    gf.manual_seed(0)
    model = _Net()
    opt = gf.optim.Adam(model.parameters(), lr=1e-2, skip_nonfinite=True)
    _train(model, opt, _batches(rng, 2), "cpu")
    model.to("cuda")
    x, y = _batches(rng, 1)[0]
    ((model(gf.tensor(x, device="cuda")) - gf.tensor(y, device="cuda")) ** 2).mean().backward()
    grads = np.concatenate([p.grad.data.numpy().ravel() for p in model.parameters()])
    norm = gf.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    np.testing.assert_allclose(norm, np.linalg.norm(grads.astype(np.float64)), rtol=1e-5)
    before = [p.data.numpy() for p in model.parameters()]
    model.fc1.weight.grad.data[0, 0] = float("nan")  # written into the moved gradient arena
    assert opt.step() is False and opt.skipped_steps == 1
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data.numpy(), b)
    model.fc1.weight.grad.data[0, 0] = 0.0
    assert opt.step() is True
    assert not np.array_equal(model.fc2.weight.data.numpy(), before[2])


def test_a_parameter_shared_by_two_optimizers_follows_the_last_one(dev):
    # known limit: the move follows the arena holding the gradient (the optimizer built last
    # over the parameter); the first optimizer says so at its next step instead of mixing
    # devices
    model = gf.nn.Linear(3, 2)
    first = gf.optim.SGD(model.parameters(), lr=0.1)
    last = gf.optim.SGD(model.parameters(), lr=0.1)
    model.to("cuda")
    _check_arena_views(last, "cuda")
    (model(gf.ones(4, 3, device="cuda")) ** 2).sum().backward()
    assert last.step() is True
    with pytest.raises(RuntimeError, match="on another device now"):
        first.step()
