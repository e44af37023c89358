"""Optimizers over the flat arena: PyTorch parity (100+ steps, state included), state_dict
portability both ways, param groups, thread-count independence, arena semantics, the
non-finite guard, folded clipping and PyTorch's errors for bad hyperparameters."""

import copy

import numpy as np
import pytest

import gradfuse as gf

torch = pytest.importorskip("torch")

SHAPES = [(3, 5), (7,), (1,), (17, 3), ()]  # odd sizes: partial vector blocks, a 0-d param
STEPS = 110

GRID = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, maximize=True, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.2, amsgrad=True)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-3, centered=True, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1,
                     eps=1e-8, maximize=True)),
    ("NAdam", dict(lr=1e-2)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, momentum_decay=1e-2)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=1e-2)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
]


def tol(dtype):
    # The kernels round where PyTorch's CPU kernels round (same operation order, the same FMAs,
    # scalars cast to the dtype; csrc/kernels/optim.cpp, "Rounding model"), so after 110 steps
    # float32 agrees bit for bit on almost every element. What is left is PyTorch's own: its
    # fused kernels' scalar tail loops contract `a * b + c * d` differently from their vector
    # loops, and torch.sqrt on a tensor of more than a few hundred elements is not correctly
    # rounded (1 ulp on ~0.7% of them; the fused kernels' sqrt is), so the per-op path on
    # large tensors differs from the fused one; momentum carries such 1-ulp differences along. rtol is the 1e-6; atol is one float32 epsilon at the
    # scale of the values (parameters ~N(0, 1), state <= O(1)): an element crossing zero can
    # only be compared absolutely, to the rounding of the O(1) terms it was computed from.
    if dtype == np.float64:
        return dict(rtol=1e-12, atol=1e-13)
    return dict(rtol=1e-6, atol=float(np.finfo(np.float32).eps))


def make(name, kw, dtype, seed=0, groups=None, shapes=SHAPES, fused=False):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    tp = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    gp = [gf.nn.Parameter(a.copy()) for a in init]
    if groups:
        targs = [dict(params=tp[:2], **groups[0]), dict(params=tp[2:], **groups[1])]
        gargs = [dict(params=gp[:2], **groups[0]), dict(params=gp[2:], **groups[1])]
    else:
        targs, gargs = tp, gp
    tkw = dict(kw, fused=True) if fused else kw
    return tp, gp, getattr(torch.optim, name)(targs, **tkw), getattr(gf.optim, name)(gargs, **kw)


def feed(rng, tp, gp, dtype, skip=()):
    for i, (t, p) in enumerate(zip(tp, gp)):
        if i in skip:
            t.grad = None
            p.grad = None
            continue
        g = rng.standard_normal(t.shape).astype(dtype)
        t.grad = torch.tensor(g)
        p.grad = gf.Tensor(g.copy())


def assert_same(tp, gp, topt, gopt, dtype):
    for t, p in zip(tp, gp):
        np.testing.assert_allclose(p.data, t.detach().numpy(), **tol(dtype))
    tsd, gsd = topt.state_dict(), gopt.state_dict()
    assert sorted(tsd["state"]) == sorted(gsd["state"])
    for k, ts in tsd["state"].items():
        gs = gsd["state"][k]
        assert sorted(ts) == sorted(gs), (ts.keys(), gs.keys())
        for key, v in ts.items():
            np.testing.assert_allclose(gs[key], v.numpy(), **tol(dtype), err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", GRID, ids=[f"{n}-{i}" for i, (n, _) in enumerate(GRID)])
def test_parity_with_pytorch(name, kw, dtype):
    tp, gp, topt, gopt = make(name, kw, dtype)
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        feed(rng, tp, gp, dtype)
        topt.step()
        assert gopt.step() is True
    assert_same(tp, gp, topt, gopt, dtype)


FUSED_GRID = [(n, kw) for n, kw in GRID if n in ("SGD", "Adam", "AdamW", "Adagrad")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", FUSED_GRID, ids=[f"{n}-{i}" for i, (n, _) in
                                                      enumerate(FUSED_GRID)])
def test_parity_with_pytorch_fused(name, kw, dtype):
    """The same against PyTorch's fused CPU kernels (fused=True), on tensors of a multiple of
    16 elements, which run entirely through their vectorized loop."""
    shapes = [(64, 33), (16,), (3, 16)]
    tp, gp, topt, gopt = make(name, kw, dtype, shapes=shapes, fused=True)
    rng = np.random.default_rng(11)
    for _ in range(STEPS):
        feed(rng, tp, gp, dtype)
        topt.step()
        gopt.step()
    assert_same(tp, gp, topt, gopt, dtype)


@pytest.mark.parametrize("name,kw", [GRID[1], GRID[4], GRID[9], GRID[12], GRID[14], GRID[17]])
def test_state_dict_round_trips_with_pytorch(name, kw):
    """Mid-way: gradfuse -> gradfuse, PyTorch -> gradfuse and gradfuse -> PyTorch all continue
    the same trajectory."""
    dtype = np.float64
    tp, gp, topt, gopt = make(name, kw, dtype)
    rng = np.random.default_rng(2)
    for _ in range(50):
        feed(rng, tp, gp, dtype)
        topt.step()
        gopt.step()
    sd = gopt.state_dict()
    # gradfuse -> fresh gradfuse optimizer over copies of the parameters
    gp2 = [gf.nn.Parameter(p.data.copy()) for p in gp]
    gopt2 = getattr(gf.optim, name)(gp2, lr=123.0)
    gopt2.load_state_dict(copy.deepcopy(sd))
    assert gopt2.param_groups[0]["lr"] == kw["lr"]
    # PyTorch -> gradfuse
    tsd = topt.state_dict()
    tsd_np = {"state": {k: {n: v.numpy().copy() for n, v in s.items()}
                        for k, s in tsd["state"].items()},
              "param_groups": copy.deepcopy(tsd["param_groups"])}
    gp3 = [gf.nn.Parameter(t.detach().numpy().copy()) for t in tp]
    gopt3 = getattr(gf.optim, name)(gp3, **kw)
    gopt3.load_state_dict(tsd_np)
    # gradfuse -> PyTorch
    tp4 = [torch.tensor(p.data.copy(), requires_grad=True) for p in gp]
    topt4 = getattr(torch.optim, name)(tp4, **kw)
    topt4.load_state_dict({"state": {k: {n: torch.tensor(v) for n, v in s.items()}
                                     for k, s in sd["state"].items()},
                           "param_groups": copy.deepcopy(sd["param_groups"])})
    for _ in range(50):
        feed(rng, tp, gp, dtype)
        for p2, p3, p in zip(gp2, gp3, gp):
            p2.grad = gf.Tensor(p.grad.data.copy())
            p3.grad = gf.Tensor(p.grad.data.copy())
        for t4, t in zip(tp4, tp):
            t4.grad = t.grad.clone()
        topt.step()
        gopt.step()
        gopt2.step()
        gopt3.step()
        topt4.step()
    assert_same(tp, gp, topt, gopt, dtype)
    assert_same(tp, gp2, topt, gopt2, dtype)
    assert_same(tp, gp3, topt, gopt3, dtype)
    assert_same(tp4, gp, topt4, gopt, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,groups", [
    ("SGD", [dict(lr=0.1, momentum=0.9), dict(lr=0.01, weight_decay=0.1)]),
    ("Adam", [dict(lr=1e-2), dict(lr=1e-3, betas=(0.5, 0.9), amsgrad=True)]),
    ("RMSprop", [dict(lr=1e-2, centered=True), dict(lr=1e-3, momentum=0.9)]),
])
def test_two_param_groups(name, groups, dtype):
    tp, gp, topt, gopt = make(name, {}, dtype, groups=groups)
    rng = np.random.default_rng(3)
    for _ in range(STEPS):
        feed(rng, tp, gp, dtype)
        topt.step()
        gopt.step()
    assert_same(tp, gp, topt, gopt, dtype)


@pytest.mark.parametrize("name,kw", [GRID[2], GRID[4], GRID[9], GRID[12]])
def test_parameters_without_grad_are_skipped_as_pytorch(name, kw):
    """A None gradient skips the parameter (no update, no step count), so per-parameter step
    counts diverge and the arena is updated in runs."""
    dtype = np.float64
    tp, gp, topt, gopt = make(name, kw, dtype)
    rng = np.random.default_rng(4)
    for k in range(30):
        skip = {k % 5, 2} if k % 3 else ()
        feed(rng, tp, gp, dtype, skip=skip)
        topt.step()
        gopt.step()
    assert_same(tp, gp, topt, gopt, dtype)


@pytest.mark.parametrize("name,kw", [GRID[1], GRID[5], GRID[9], GRID[12], GRID[16],
                                     ("Lion", dict(lr=1e-3))])
def test_bound_fast_path_follows_group_changes_and_rebinding(name, kw):
    """Gradients written in place (as backward does) keep every view intact, so steps go
    through the arena's bound ArenaStep: it must see a changed lr or momentum, a rebound
    .data, a hand-set .grad and a None grad exactly as the general path does."""
    dtype = np.float32
    if name != "Lion":
        tp, gp, topt, gopt = make(name, kw, dtype)
    else:  # no PyTorch twin: the reference is a second Lion whose steps all take the general path
        rng = np.random.default_rng(0)
        init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        gp = [gf.nn.Parameter(a.copy()) for a in init]
        gq = [gf.nn.Parameter(a.copy()) for a in init]
        gopt, qopt = gf.optim.Lion(gp, **kw), gf.optim.Lion(gq, **kw)
    rng = np.random.default_rng(12)
    used_fast = False
    for k in range(40):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        if k == 10:
            for opt in (topt, gopt) if name != "Lion" else (gopt, qopt):
                opt.param_groups[0]["lr"] *= 0.5
        if k == 15 and "momentum" in kw:
            for opt in (topt, gopt):
                opt.param_groups[0]["momentum"] = 0.3
        if k == 20:
            gp[1].data = gp[1].data.copy()  # rebound: copied back into the arena
        if k == 25:
            gp[2].grad = None  # skipped this step (and by the reference)
            if name != "Lion":
                tp[2].grad = None
            else:
                gq[2].grad = None
        for i, g in enumerate(grads):
            if k == 25 and i == 2:
                continue
            if name != "Lion":
                tp[i].grad = torch.tensor(g)
            if gp[i].grad is not None and k != 30:
                gp[i].grad.data[...] = g  # in place: the fast path stays valid
            else:
                gp[i].grad = gf.Tensor(g.copy())  # by hand (k == 30 and after a None)
            if name == "Lion":
                gq[i].grad = gf.Tensor(g.copy())  # always the general path
        if name != "Lion":
            topt.step()
        else:
            qopt.step()
        gopt.step()
        a = gopt._arenas[0][0][1]
        used_fast |= a.slot_cache is not None and a.slot_cache[3] is not None
    assert used_fast
    if name == "Lion":
        for p, q in zip(gp, gq):
            np.testing.assert_array_equal(p.data, q.data)
    else:
        assert_same(tp, gp, topt, gopt, dtype)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_array_valued_lr_changed_in_place_is_seen(name):
    """A 0-d array lr (as PyTorch allows a tensor lr) may change in place without a write to
    the group: nothing derived from it may be cached."""
    lr = np.array(0.1)
    p = gf.nn.Parameter(np.zeros(4))
    q = gf.nn.Parameter(np.zeros(4))
    opt = getattr(gf.optim, name)([p], lr=lr)
    ref = getattr(gf.optim, name)([q], lr=0.1)
    for k in range(6):
        if k == 3:
            lr[()] = 0.01
            ref.param_groups[0]["lr"] = 0.01
        if p.grad is None:
            p.grad = gf.Tensor(np.ones(4))
        else:
            p.grad.data[...] = 1.0  # in place: the bound path
        q.grad = gf.Tensor(np.ones(4))
        opt.step()
        ref.step()
    np.testing.assert_array_equal(p.data, q.data)


def test_add_param_group_matches_pytorch():
    dtype = np.float64
    tp, gp, topt, gopt = make("Adam", dict(lr=1e-2), dtype)
    extra_t = torch.tensor(np.ones((4, 2)), requires_grad=True)
    extra_g = gf.nn.Parameter(np.ones((4, 2)))
    topt.add_param_group({"params": [extra_t], "lr": 0.5})
    gopt.add_param_group({"params": [extra_g], "lr": 0.5})
    tp, gp = tp + [extra_t], gp + [extra_g]
    rng = np.random.default_rng(5)
    for _ in range(20):
        feed(rng, tp, gp, dtype)
        topt.step()
        gopt.step()
    assert_same(tp, gp, topt, gopt, dtype)
    with pytest.raises(ValueError, match="more than one parameter group"):
        gopt.add_param_group({"params": [gp[0]]})
    assert len(gopt.param_groups) == 2


def lion_reference(p, g, m, lr, b1, b2, wd):
    c = b1 * m + (1 - b1) * g
    p = p * (1 - lr * wd) - lr * np.sign(c)
    return p, b2 * m + (1 - b2) * g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lion_matches_reference(dtype):
    rng = np.random.default_rng(6)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    gp = [gf.nn.Parameter(a.copy()) for a in init]
    opt = gf.optim.Lion(gp, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    ref = [(a.astype(np.float64), np.zeros(a.shape)) for a in init]
    for _ in range(STEPS):
        gs = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        for p, g in zip(gp, gs):
            p.grad = gf.Tensor(g)
        opt.step()
        ref = [lion_reference(p, g.astype(np.float64), m, 1e-3, 0.9, 0.99, 0.1)
               for (p, m), g in zip(ref, gs)]
    for p, (rp, rm), k in zip(gp, ref, range(len(gp))):
        np.testing.assert_allclose(p.data, rp, rtol=1e-4 if dtype == np.float32 else 1e-10)
        np.testing.assert_allclose(opt.state_dict()["state"][k]["exp_avg"], rm,
                                   rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-6)


# ---------------------------------------------------------------- arena semantics


def test_params_and_grads_are_arena_views_and_backward_accumulates():
    model = gf.nn.Sequential(gf.nn.Linear(5, 7), gf.nn.Linear(7, 3))
    opt = gf.optim.SGD(model.parameters(), lr=0.1)
    (arena,) = [a for _, a in opt._arenas[0]]
    for p in model.parameters():
        assert np.shares_memory(p.data, arena.param)
    x = gf.tensor(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    model(x).sum().backward()
    g1 = [p.grad.data.copy() for p in model.parameters()]
    for p in model.parameters():
        assert np.shares_memory(p.grad.data, arena.grad)
    model(x).sum().backward()  # accumulates in place
    for p, g in zip(model.parameters(), g1):
        np.testing.assert_allclose(p.grad.data, 2 * g, rtol=1e-6)
        assert np.shares_memory(p.grad.data, arena.grad)
    opt.zero_grad()  # set_to_none: PyTorch's meaning
    assert all(p.grad is None for p in model.parameters())
    model(x).sum().backward()  # copies into the arena again, no stale sum
    for p, g in zip(model.parameters(), g1):
        np.testing.assert_allclose(p.grad.data, g, rtol=1e-6)
        assert np.shares_memory(p.grad.data, arena.grad)
    opt.zero_grad(set_to_none=False)
    assert not arena.grad.any()
    assert all(p.grad is not None and not p.grad.data.any() for p in model.parameters())


def test_model_state_dict_round_trip_keeps_arena_views():
    model = gf.nn.Linear(4, 3)
    opt = gf.optim.Adam(model.parameters(), lr=0.1)
    sd = model.state_dict()
    x = gf.tensor(np.ones((2, 4), np.float32))
    for _ in range(3):
        opt.zero_grad()
        (model(x) ** 2).sum().backward()
        opt.step()
    changed = model.state_dict()
    assert not np.allclose(changed["weight"], sd["weight"])
    model.load_state_dict(sd)
    (arena,) = [a for _, a in opt._arenas[0]]
    for p in model.parameters():
        assert np.shares_memory(p.data, arena.param)
    np.testing.assert_array_equal(model.weight.data, sd["weight"])
    opt.zero_grad()
    (model(x) ** 2).sum().backward()
    before = model.weight.data.copy()
    opt.step()
    assert not np.array_equal(model.weight.data, before)  # the step reached the module


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.5)),
                                     ("Adam", dict(lr=0.1, weight_decay=0.1)),
                                     ("AdamW", dict(lr=0.1))])
def test_zero_grad_keep_leaves_none_grads_none_as_pytorch(name, kw):
    # zero_grad(set_to_none=False) must not give a parameter that never got a gradient (unused
    # or frozen) a zero .grad: it would then take part in step() (decay, momentum).
    torch = pytest.importorskip("torch")
    w = np.linspace(-1, 1, 6).astype(np.float32)
    ps = [gf.nn.Parameter(w.copy()) for _ in range(3)]
    ts = [torch.nn.Parameter(torch.tensor(w)) for _ in range(3)]
    ps[2].requires_grad_(False)
    ts[2].requires_grad_(False)
    opt = getattr(gf.optim, name)(ps, **kw)
    topt = getattr(torch.optim, name)(ts, **kw)
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        topt.zero_grad(set_to_none=False)
        (ps[0] * ps[0]).sum().backward()  # ps[1] unused, ps[2] frozen
        (ts[0] * ts[0]).sum().backward()
        opt.step()
        topt.step()
    for p, t in zip(ps, ts):
        assert (p.grad is None) == (t.grad is None)
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert len(opt.state_dict()["state"]) == len(topt.state_dict()["state"])


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_assigning_grad_data_reaches_the_step(name):
    # p.grad.data = array on an arena gradient: the bound fast path only checks that p.grad is
    # the arena tensor, so the new values must land in the arena.
    torch = pytest.importorskip("torch")
    p = gf.nn.Parameter(np.ones(4, np.float32))
    t = torch.nn.Parameter(torch.ones(4))
    opt = getattr(gf.optim, name)([p], lr=0.5)
    topt = getattr(torch.optim, name)([t], lr=0.5)
    (arena,) = [a for _, a in opt._arenas[0]]
    for k in range(3):
        opt.zero_grad()
        topt.zero_grad()
        (p * p).sum().backward()
        (t * t).sum().backward()
        new = np.arange(4, dtype=np.float32) * (k + 1) - 1
        p.grad.data = new
        t.grad.data = torch.tensor(new)
        assert np.shares_memory(p.grad.data, arena.grad)
        p.grad.data += 1  # in place through the attribute: still the view
        t.grad.data += 1
        assert np.shares_memory(p.grad.data, arena.grad)
        opt.step()
        topt.step()
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="grad.data"):
        p.grad.data = np.zeros(3, np.float32)
    np.testing.assert_array_equal(p.grad.data, t.grad.numpy())  # unchanged by the rejection


def test_state_dict_is_a_snapshot_and_load_copies():
    p = gf.nn.Parameter(np.ones(5, np.float32))
    opt = gf.optim.Adam([p], lr=0.1)
    (p * p).sum().backward()
    opt.step()
    sd = opt.state_dict()
    kept = copy.deepcopy(sd)
    opt.step()  # the snapshot does not follow later steps
    for k in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(sd["state"][0][k], kept["state"][0][k])
    live = opt.state_dict()
    sd["state"][0]["exp_avg"][...] = 123.0  # mutating the snapshot does not reach the optimizer
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"],
                                  live["state"][0]["exp_avg"])
    ref = copy.deepcopy(kept)
    opt.load_state_dict(kept)
    kept["state"][0]["exp_avg"][...] = 7.0  # nor does mutating a loaded dict afterwards
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"],
                                  ref["state"][0]["exp_avg"])


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "NAdam"])
def test_rejected_constructor_leaves_every_parameter_untouched(name):
    a = gf.nn.Parameter(np.ones(3, np.float32))
    b = gf.nn.Parameter(np.ones(2, np.float32))
    da, db = a.data, b.data
    bad_groups = [
        [{"params": [a]}, {"params": [b], "lr": -1.0}],  # bad hyperparameter in group 2
        [{"params": [a]}, {"params": [b, a]}],  # a in two groups
        [{"params": [a]}, {"params": [b, "x"]}],  # not a tensor
    ]
    for groups in bad_groups:
        with pytest.raises((ValueError, TypeError)):
            getattr(gf.optim, name)(groups, lr=0.1)
        assert a.data is da and b.data is db  # not moved into an orphaned arena
        assert a._grad_slot is None and b._grad_slot is None
    opt = getattr(gf.optim, name)([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1)
    ((a * a).sum() + (b * b).sum()).backward()
    opt.step()
    assert len(opt.state_dict()["state"]) == (0 if name == "SGD" else 2)  # SGD: no momentum
    assert not np.array_equal(a.data, np.ones(3)) and not np.array_equal(b.data, np.ones(2))


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_drops_a_folded_clip_scale(set_to_none):
    # PyTorch's clip_grad_norm_ scales the gradients that zero_grad then drops: the next step
    # sees unscaled new gradients. The folded scale must not outlive its gradients either.
    p = gf.nn.Parameter(np.ones(3, np.float32))
    opt = gf.optim.SGD([p], lr=0.1)
    (p * p).sum().backward()
    opt.clip_grad_norm_(0.01)  # would scale by ~0.003
    opt.zero_grad(set_to_none=set_to_none)
    (p * p).sum().backward()
    opt.step()
    np.testing.assert_allclose(p.data, np.full(3, 0.8), rtol=1e-6)


def test_model_copies_after_optimizer_construction_are_independent():
    # copy.deepcopy / pickle of a model whose parameters live in an arena: the copy holds its
    # own values (no arena, no unpicklable bound step) and never writes into the original's
    # gradient arena.
    import pickle

    x = gf.tensor(np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32))
    model = gf.nn.Sequential(gf.nn.Linear(4, 5), gf.nn.Linear(5, 2))
    opt = gf.optim.Adam(model.parameters(), lr=0.1)
    (model(x) ** 2).sum().backward()
    opt.step()  # binds the compiled fast path
    (model(x) ** 2).sum().backward()
    for make in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
        clone = make(model)
        (arena,) = [a for _, a in opt._arenas[0]]
        grads = arena.grad.copy()
        for p, q in zip(model.parameters(), clone.parameters()):
            np.testing.assert_array_equal(p.data, q.data)
            assert not np.shares_memory(q.data, arena.param)
            assert q._grad_slot is None
        for q in clone.parameters():
            q.grad = None
        (clone(x) ** 2).sum().backward()
        np.testing.assert_array_equal(arena.grad, grads)  # the original's grads untouched
        for q in clone.parameters():
            assert not np.shares_memory(q.grad.data, arena.grad)
        before = [q.data.copy() for q in clone.parameters()]
        opt.step()
        for q, b in zip(clone.parameters(), before):
            np.testing.assert_array_equal(q.data, b)


def test_rebound_data_and_second_optimizer_are_readopted():
    p = gf.nn.Parameter(np.zeros(5))
    o1 = gf.optim.SGD([p], lr=1.0)
    o2 = gf.optim.SGD([p], lr=1.0)  # moves p into o2's arena
    p.grad = gf.Tensor(np.ones(5))
    o1.step()  # copies p back into o1's arena: both update the same values
    p.grad = gf.Tensor(np.ones(5))
    o2.step()
    np.testing.assert_array_equal(p.data, -2 * np.ones(5))
    p.data = np.full(5, 3.0)
    p.grad = gf.Tensor(np.ones(5))
    o1.step()
    np.testing.assert_array_equal(p.data, np.full(5, 2.0))
    p.data = np.zeros(3)
    with pytest.raises(RuntimeError, match="replaced by an array of shape"):
        o1.step()


@pytest.mark.parametrize("name,kw", [GRID[1], GRID[4], GRID[9], GRID[12], GRID[14],
                                     ("LAMB", dict(lr=1e-2, weight_decay=0.1))])
def test_thread_count_independent(name, kw):
    n = 3 * 40_000 + 7  # over the parallel grain, not a multiple of the vector width
    out = []
    for threads in (1, 2):
        old = gf.get_num_threads()
        gf.set_num_threads(threads)
        try:
            rng = np.random.default_rng(7)
            p = gf.nn.Parameter(rng.standard_normal(n).astype(np.float32))
            opt = getattr(gf.optim, name)([p], **kw)
            for _ in range(5):
                p.grad = gf.Tensor(rng.standard_normal(n).astype(np.float32))
                opt.step()
            norm = gf.nn.utils.clip_grad_norm_([p], 1.0)
            out.append((p.data.copy(), float(norm.data)))
        finally:
            gf.set_num_threads(old)
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


# ---------------------------------------------------------------- guard and folded clipping


def test_nonfinite_guard_skips_whole_step():
    p = gf.nn.Parameter(np.ones(6, np.float32))
    q = gf.nn.Parameter(np.ones(3, np.float32))
    opt = gf.optim.Adam([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1,
                        skip_nonfinite=True)
    p.grad = gf.Tensor(np.ones(6, np.float32))
    q.grad = gf.Tensor(np.ones(3, np.float32))
    assert opt.step() is True
    before = (p.data.copy(), q.data.copy(), copy.deepcopy(opt.state_dict()))
    for bad in (np.nan, np.inf, -np.inf):
        g = np.ones(3, np.float32)
        g[1] = bad
        p.grad = gf.Tensor(np.ones(6, np.float32))
        q.grad = gf.Tensor(g)
        assert opt.step() is False
        assert opt.last_step_skipped
        np.testing.assert_array_equal(p.data, before[0])
        np.testing.assert_array_equal(q.data, before[1])
        sd = opt.state_dict()
        for k in before[2]["state"]:
            for n, v in before[2]["state"][k].items():
                np.testing.assert_array_equal(sd["state"][k][n], v)
    assert opt.skipped_steps == 3
    q.grad = gf.Tensor(np.ones(3, np.float32))
    assert opt.step() is True and opt.skipped_steps == 3


def test_nonfinite_guard_on_the_bound_path():
    """Gradients written in place keep the bound path; the guard there checks every arena
    (two groups, float32 and float64) before updating any."""
    p = gf.nn.Parameter(np.ones(40, np.float32))
    q = gf.nn.Parameter(np.ones(3, np.float64))
    r = gf.nn.Parameter(np.ones(5, np.float32))
    opt = gf.optim.Adam([{"params": [p, q]}, {"params": [r], "lr": 0.5}], lr=0.1,
                        skip_nonfinite=True)
    for t in (p, q, r):
        t.grad = gf.Tensor(np.ones(t.shape, t.data.dtype))
    assert opt.step() is True and opt.step() is True  # the second one is bound
    assert all(a.slot_cache[3] is not None for arenas in opt._arenas for _, a in arenas)
    before = [t.data.copy() for t in (p, q, r)]
    for t in (p, q, r):
        t.grad.data[...] = 1.0
    r.grad.data[4] = np.nan  # the last arena: nothing may have been updated before it
    assert opt.step() is False and opt.skipped_steps == 1
    for t, b in zip((p, q, r), before):
        np.testing.assert_array_equal(t.data, b)
    r.grad.data[4] = 1.0
    q.grad.data[0] = -np.inf
    assert opt.step() is False and opt.skipped_steps == 2
    q.grad.data[0] = 1.0
    assert opt.step() is True and not opt.last_step_skipped
    # the same three steps through the general path agree
    p2, q2, r2 = (gf.nn.Parameter(np.ones(t.shape, t.data.dtype)) for t in (p, q, r))
    ref = gf.optim.Adam([{"params": [p2, q2]}, {"params": [r2], "lr": 0.5}], lr=0.1)
    for _ in range(3):
        for t in (p2, q2, r2):
            t.grad = gf.Tensor(np.ones(t.shape, t.data.dtype))
        ref.step()
    for t, u in zip((p, q, r), (p2, q2, r2)):
        np.testing.assert_array_equal(t.data, u.data)


def test_folded_clip_equals_clip_then_step():
    rng = np.random.default_rng(8)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [10 * rng.standard_normal(s) for s in SHAPES]
    a = [gf.nn.Parameter(x.copy()) for x in init]
    b = [gf.nn.Parameter(x.copy()) for x in init]
    oa = gf.optim.Adam(a, lr=0.1)
    ob = gf.optim.Adam(b, lr=0.1, skip_nonfinite=True)
    for p, q, g in zip(a, b, grads):
        p.grad = gf.Tensor(g.copy())
        q.grad = gf.Tensor(g.copy())
    na = gf.nn.utils.clip_grad_norm_(a, 1.0)
    oa.step()
    nb = ob.clip_grad_norm_(1.0)
    ob.step()
    assert float(na.data) == pytest.approx(nb, rel=1e-12)
    for p, q, g in zip(a, b, grads):
        np.testing.assert_allclose(q.data, p.data, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(q.grad.data, g)  # folded: .grad itself is not scaled
    # a non-finite norm with the guard: the step is skipped without another pass
    b[0].grad.data[0, 0] = np.nan
    ob.clip_grad_norm_(1.0)
    assert ob.step() is False and ob.skipped_steps == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name,kw,msg", [
    ("SGD", dict(lr=-0.1), "Invalid learning rate"),
    ("SGD", dict(lr=0.1, momentum=-0.5), "Invalid momentum value"),
    ("SGD", dict(lr=0.1, nesterov=True), "Nesterov momentum requires"),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.5, nesterov=True), "Nesterov"),
    ("SGD", dict(lr=0.1, weight_decay=-1), "Invalid weight_decay value"),
    ("Adam", dict(lr=-1e-3), "Invalid learning rate"),
    ("Adam", dict(eps=-1e-8), "Invalid epsilon value"),
    ("Adam", dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    ("Adam", dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    ("AdamW", dict(weight_decay=-0.1), "Invalid weight_decay value"),
    ("RMSprop", dict(alpha=-0.5), "Invalid alpha value"),
    ("RMSprop", dict(momentum=-0.5), "Invalid momentum value"),
    ("RMSprop", dict(eps=-1.0), "Invalid epsilon value"),
    ("Adagrad", dict(lr_decay=-1.0), "Invalid lr_decay value"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), "Invalid initial_accumulator_value"),
    ("NAdam", dict(momentum_decay=-1.0), "Invalid momentum_decay value"),
    ("RAdam", dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1"),
])
def test_bad_hyperparameters_match_pytorch(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **kw)
    p = gf.nn.Parameter(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=msg):
        getattr(gf.optim, name)([p], **kw)
    assert p._grad_slot is None  # rejected before the parameter was moved into an arena


def test_arena_step_rejects_bad_buffers():
    from gradfuse import _backend

    p, g, m = (np.zeros(8, np.float32) for _ in range(3))
    sc = [0.1] + [0.0] * 4 + [0.9] + [0.0] * 6 + [1.0, 0.0]  # lr 0.1, momentum 0.9
    with pytest.raises(ValueError, match="grad"):
        _backend.ArenaStep(0, p, np.zeros(7, np.float32), m, None, None, sc, 0, [], [], [])
    with pytest.raises(ValueError, match="state"):  # momentum needs its buffer
        _backend.ArenaStep(0, p, g, None, None, None, sc, 0, [], [], [])
    with pytest.raises(ValueError, match="scalars"):
        _backend.ArenaStep(0, p, g, m, None, None, sc[:5], 0, [], [], [])
    step = _backend.ArenaStep(0, p, g, None, None, None, [0.1] + [0.0] * 11 + [1.0, 0.0], 0,
                              [], [], [])
    with pytest.raises(ValueError, match="state"):  # momentum switched on without a buffer
        step(sc, 0)
    g[:] = 1
    assert step([0.1] + [0.0] * 11 + [1.0, 0.0], 0) is True
    np.testing.assert_allclose(p, -0.1)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("key", ["lr", "eps", "weight_decay"])
def test_nonfinite_hyperparameters_rejected(key, value):
    with pytest.raises(ValueError, match="Invalid"):
        gf.optim.Adam([gf.nn.Parameter(np.zeros(2))], **{key: value})


def test_bad_params():
    with pytest.raises(ValueError, match="empty parameter list"):
        gf.optim.Adam([])
    with pytest.raises(TypeError, match="iterable of Tensors"):
        gf.optim.SGD(gf.nn.Parameter(np.zeros(2)), lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        gf.optim.SGD([np.zeros(2)], lr=0.1)
    x = gf.tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="non-leaf"):
        gf.optim.SGD([x * 2], lr=0.1)
    p = gf.nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        gf.optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        gf.optim.SGD([p, p], lr=0.1)


def test_bad_state_dict_leaves_optimizer_untouched():
    tp, gp, topt, gopt = make("Adam", dict(lr=1e-2, amsgrad=True), np.float64)
    rng = np.random.default_rng(9)
    for _ in range(3):
        feed(rng, tp, gp, np.float64)
        gopt.step()
    good = gopt.state_dict()
    snapshot = copy.deepcopy(good)

    def bad(mutate):
        sd = copy.deepcopy(good)
        mutate(sd)
        return sd

    cases = [
        (bad(lambda s: s["state"][0].__setitem__("exp_avg", np.zeros((2, 2)))), "shape"),
        (bad(lambda s: s["state"][1].pop("exp_avg_sq")), "missing state"),
        (bad(lambda s: s["state"][2].__setitem__("momentum_buffer", np.zeros(1))), "another"),
        (bad(lambda s: s["param_groups"][0]["params"].pop()), "doesn't match"),
        (bad(lambda s: s["param_groups"][0].__setitem__("lr", -1.0)), "learning rate"),
        (bad(lambda s: s.pop("state")), "'state'"),
        (bad(lambda s: s["param_groups"].append(dict(params=[]))), "number of parameter"),
        # the last parameter's state is written last: a bad value there must be caught first
        (bad(lambda s: s["state"][max(s["state"])].__setitem__(
            "exp_avg", np.full(s["state"][max(s["state"])]["exp_avg"].shape, "x"))), "dtype"),
    ]
    sgd = gf.optim.SGD([gf.nn.Parameter(np.zeros(s)) for s in SHAPES], lr=0.1, momentum=0.9)
    sgd.zero_grad()
    for p in sgd.param_groups[0]["params"]:
        p.grad = gf.Tensor(np.ones(p.shape))
    sgd.step()
    cases.append((sgd.state_dict(), "another optimizer"))
    for sd, msg in cases:
        with pytest.raises(ValueError, match=msg):
            gopt.load_state_dict(sd)
        now = gopt.state_dict()
        assert now["param_groups"] == snapshot["param_groups"]
        for k, st in snapshot["state"].items():
            for n, v in st.items():
                np.testing.assert_array_equal(now["state"][k][n], v)


def lamb_reference(p, g, m, v, t, lr, b1, b2, eps, wd):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p
    r1, r2 = np.linalg.norm(p), np.linalg.norm(u)
    trust = r1 / r2 if r1 > 0 and r2 > 0 else 1.0
    return p - lr * trust * u, m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lamb_matches_reference_with_per_tensor_trust_ratio(dtype):
    rng = np.random.default_rng(10)
    shapes = SHAPES + [(70_000,)]  # one tensor spans two reduction blocks
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    init[2][...] = 0  # ||p|| = 0: trust ratio 1
    gp = [gf.nn.Parameter(a.copy()) for a in init]
    opt = gf.optim.LAMB(gp, lr=1e-2, weight_decay=0.1)
    ref = [(a.astype(np.float64), np.zeros(a.shape), np.zeros(a.shape)) for a in init]
    for t in range(1, 31):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for k, (p, g) in enumerate(zip(gp, gs)):
            p.grad = None if (t % 4 == 0 and k == 1) else gf.Tensor(g)
        opt.step()
        ref = [r if (t % 4 == 0 and k == 1) else
               lamb_reference(r[0], g.astype(np.float64), r[1], r[2],
                              t - (t // 4 if k == 1 else 0), 1e-2, 0.9, 0.999, 1e-6, 0.1)
               for k, (r, g) in enumerate(zip(ref, gs))]
    rtol = 2e-4 if dtype == np.float32 else 1e-10
    for p, r in zip(gp, ref):
        np.testing.assert_allclose(p.data, r[0], rtol=rtol, atol=1e-6)


def test_large_arena_is_huge_page_aligned_and_small_one_cache_line_aligned():
    big = [gf.nn.Parameter(np.zeros(600_000, np.float32)), gf.nn.Parameter(np.zeros(5))]
    opt = gf.optim.Adam(big)
    arenas = {a.dtype: a for _, a in opt._arenas[0]}
    assert arenas[np.dtype(np.float32)].param.ctypes.data % (2 << 20) == 0
    assert arenas[np.dtype(np.float32)].grad.ctypes.data % (2 << 20) == 0
    assert arenas[np.dtype(np.float64)].param.ctypes.data % 64 == 0
    for p in big:  # one arena per dtype inside the group
        assert p.data.base is not None


def test_docs_optimizer_example_runs():
    from docs_util import python_block

    scope = {}
    exec(compile(python_block("docs/optimizers.md", "Optimizers"), "docs/optimizers.md", "exec"),
         scope)
    assert scope["applied"] is True
    assert set(scope["sd"]["state"]) == {0, 1, 2, 3}


def test_optimizer_that_stepped_is_garbage_collected():
    # the bound ArenaStep holds the arena's gradient tensors, which refer back to the arena:
    # without tp_traverse on ArenaStep the cycle was invisible to the GC and every optimizer
    # that had stepped leaked its param/grad/state buffers (and, under DataParallel, its
    # shared-memory windows)
    import gc
    import weakref

    def one(steps):
        model = gf.nn.Sequential(gf.nn.Linear(5, 7), gf.nn.ReLU(), gf.nn.Linear(7, 3))
        opt = gf.optim.Adam(model.parameters(), lr=1e-2)
        x, y = gf.Tensor(np.ones((4, 5), np.float32)), gf.Tensor(np.zeros(4, np.int64))
        for _ in range(steps):
            opt.zero_grad()
            gf.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        arena = opt._arenas[0][0][1]
        assert steps == 0 or arena.slot_cache[3] is not None  # the bound step exists
        return weakref.ref(opt), weakref.ref(arena)

    for steps in (0, 1, 3):
        refs = one(steps)
        gc.collect()
        assert all(r() is None for r in refs), steps
