"""gf.optim.lr_scheduler: closed-form (numpy) checks, PyTorch parity over 300 steps,
state_dict round trips (ours <-> ours, torch <-> ours), and bad input.

The schedulers need only ``optimizer.param_groups``, so the gradfuse side is driven through a
tiny stand-in optimizer; the torch side through a real torch.optim.SGD / Adam.
"""

import copy
import math
import warnings

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.optim import lr_scheduler as L

STEPS = 300


class StandIn:
    """The optimizer interface the schedulers use: param_groups (and, optionally, defaults)."""

    def __init__(self, lrs, momentum=0.9, betas=None, defaults=True):
        self.param_groups = []
        for lr in lrs:
            g = {"lr": lr}
            if betas is not None:
                g["betas"] = tuple(betas)
            elif momentum is not None:
                g["momentum"] = momentum
            self.param_groups.append(g)
        if defaults:
            self.defaults = {k: v for k, v in self.param_groups[0].items()}


def lrs_of(opt):
    return [g["lr"] for g in opt.param_groups]


def drive(sched, opt, steps=STEPS, key="lr", torch_opt=False):
    """Values of group[key] (and get_last_lr) after construction and after each step."""
    out = [[g[key] if key != "beta1" else g["betas"][0] for g in opt.param_groups]]
    last = [sched.get_last_lr()]
    for _ in range(steps):
        if torch_opt:
            opt.step()  # so torch does not warn that the scheduler stepped first
        sched.step()
        out.append([g[key] if key != "beta1" else g["betas"][0] for g in opt.param_groups])
        last.append(sched.get_last_lr())
    return np.array(out, dtype=np.float64), np.array(last, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# closed-form checks (no torch)
# ---------------------------------------------------------------------------------------------


def seq(make, lrs=(0.1,), steps=STEPS, **kw):
    opt = StandIn(lrs, **kw)
    return drive(make(opt), opt, steps)[0]


def test_step_and_multistep_closed_form():
    t = np.arange(STEPS + 1)
    got = seq(lambda o: L.StepLR(o, step_size=7, gamma=0.5), lrs=(0.1, 0.02))
    np.testing.assert_allclose(got, np.outer(0.5 ** (t // 7), [0.1, 0.02]), rtol=1e-12)
    got = seq(lambda o: L.MultiStepLR(o, milestones=[120, 30, 30], gamma=0.3))
    want = 0.1 * 0.3 ** ((t >= 30) * 2 + (t >= 120))
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-12)


def test_exponential_polynomial_linear_constant_closed_form():
    t = np.arange(STEPS + 1)
    np.testing.assert_allclose(
        seq(lambda o: L.ExponentialLR(o, gamma=0.98))[:, 0], 0.1 * 0.98**t, rtol=1e-12
    )
    got = seq(lambda o: L.PolynomialLR(o, total_iters=100, power=2.0))[:, 0]
    np.testing.assert_allclose(got, 0.1 * (1 - np.minimum(t, 100) / 100) ** 2, rtol=1e-9, atol=1e-18)
    got = seq(lambda o: L.LinearLR(o, start_factor=0.1, end_factor=0.6, total_iters=50))[:, 0]
    np.testing.assert_allclose(got, 0.1 * (0.1 + 0.5 * np.minimum(t, 50) / 50), rtol=1e-12)
    got = seq(lambda o: L.ConstantLR(o, factor=0.25, total_iters=40))[:, 0]
    np.testing.assert_allclose(got, np.where(t < 40, 0.025, 0.1), rtol=1e-12)


@pytest.mark.parametrize("T_max, eta_min", [(50, 0.0), (37, 1e-3), (300, 0.05)])
def test_cosine_annealing_closed_form(T_max, eta_min):
    # the recursive form follows the cosine of period 2 T_max, past T_max too
    t = np.arange(STEPS + 1)
    got = seq(lambda o: L.CosineAnnealingLR(o, T_max=T_max, eta_min=eta_min), lrs=(0.1, 0.3))
    want = eta_min + np.outer(1 + np.cos(np.pi * t / T_max), np.array([0.1, 0.3]) - eta_min) / 2
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("T_0, T_mult", [(10, 1), (7, 2), (1, 3)])
def test_warm_restarts_closed_form(T_0, T_mult):
    lrs, eta_min = np.array([0.1, 0.01]), 1e-4
    got = seq(lambda o: L.CosineAnnealingWarmRestarts(o, T_0, T_mult, eta_min), lrs=lrs)
    want, T_cur, T_i = [], 0, T_0
    for _ in range(STEPS + 1):
        want.append(eta_min + (lrs - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2)
        T_cur += 1
        if T_cur >= T_i:
            T_cur, T_i = 0, T_i * T_mult
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12)
    assert np.sum(np.isclose(got[:, 0], 0.1)) >= 2  # it did restart


def test_warm_restarts_fractional_epochs():
    opt = StandIn([0.2])
    s = L.CosineAnnealingWarmRestarts(opt, T_0=4, T_mult=2, eta_min=0.0)
    # cycles [0, 4), [4, 12), [12, 28)
    for epoch, (t_cur, t_i) in [(0.5, (0.5, 4)), (3.75, (3.75, 4)), (4.0, (0, 8)),
                                (11.5, (7.5, 8)), (13.25, (1.25, 16)), (2.0, (2.0, 4))]:
        s.step(epoch)
        assert s.last_epoch == math.floor(epoch)
        assert s.T_cur == pytest.approx(t_cur) and s.T_i == t_i
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * t_cur / t_i)))


def test_cyclic_closed_form():
    t = np.arange(STEPS + 1)
    got = seq(lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=10,
                                   step_size_down=30, mode="triangular2"))[:, 0]
    cycle, pos = t // 40, t % 40
    tri = np.where(pos <= 10, pos / 10, (40 - pos) / 30)
    np.testing.assert_allclose(got, 0.01 + 0.09 * tri * 0.5**cycle, rtol=1e-12, atol=1e-17)
    opt = StandIn([0.1])
    mom = drive(L.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=4), opt, 16, "momentum")[0]
    tri = np.where(t[:17] % 8 <= 4, (t[:17] % 8) / 4, (8 - t[:17] % 8) / 4)
    np.testing.assert_allclose(mom[:, 0], 0.9 - 0.1 * tri, rtol=1e-12)


def test_lambda_and_multiplicative():
    t = np.arange(STEPS + 1)
    got = seq(lambda o: L.LambdaLR(o, [lambda e: 0.95**e, lambda e: 1 / (1 + e)]), lrs=(0.1, 0.2))
    np.testing.assert_allclose(got, np.stack([0.1 * 0.95**t, 0.2 / (1 + t)], 1), rtol=1e-12)
    got = seq(lambda o: L.MultiplicativeLR(o, lambda e: 0.99))[:, 0]
    np.testing.assert_allclose(got, 0.1 * 0.99**t, rtol=1e-11)


def _one_cycle_reference(n, max_lr, pct, div, final_div, three_phase, anneal, base_m, max_m):
    init, lo = max_lr / div, max_lr / div / final_div
    if anneal == "cos":
        def f(a, b, p):
            return b + (a - b) / 2 * (1 + math.cos(math.pi * p))
    else:
        def f(a, b, p):
            return a + (b - a) * p
    if three_phase:
        ends = [pct * n - 1, 2 * pct * n - 2, n - 1]
        lr_pts = [(init, max_lr), (max_lr, init), (init, lo)]
        m_pts = [(max_m, base_m), (base_m, max_m), (max_m, max_m)]
    else:
        ends = [pct * n - 1, n - 1]
        lr_pts = [(init, max_lr), (max_lr, lo)]
        m_pts = [(max_m, base_m), (base_m, max_m)]
    lrs, moms = [], []
    for t in range(n):
        start = 0.0
        for i, end in enumerate(ends):
            if t <= end or i == len(ends) - 1:
                p = (t - start) / (end - start)
                lrs.append(f(*lr_pts[i], p))
                moms.append(f(*m_pts[i], p))
                break
            start = end
    return np.array(lrs), np.array(moms)


@pytest.mark.parametrize("three_phase, anneal", [(False, "cos"), (True, "linear"), (True, "cos")])
def test_one_cycle_closed_form(three_phase, anneal):
    opt = StandIn([0.5])
    s = L.OneCycleLR(opt, max_lr=0.4, total_steps=200, pct_start=0.3, anneal_strategy=anneal,
                     three_phase=three_phase, div_factor=20.0, final_div_factor=50.0)
    lr, _ = drive(s, opt, steps=199)
    opt2 = StandIn([0.5])
    s2 = L.OneCycleLR(opt2, max_lr=0.4, total_steps=200, pct_start=0.3, anneal_strategy=anneal,
                      three_phase=three_phase, div_factor=20.0, final_div_factor=50.0)
    mom, _ = drive(s2, opt2, steps=199, key="momentum")
    want_lr, want_m = _one_cycle_reference(200, 0.4, 0.3, 20.0, 50.0, three_phase, anneal, 0.85, 0.95)
    np.testing.assert_allclose(lr[:, 0], want_lr, rtol=1e-12)
    np.testing.assert_allclose(mom[:, 0], want_m, rtol=1e-12)
    assert lr[0, 0] == pytest.approx(0.02) and lr[-1, 0] == pytest.approx(0.02 / 50)
    assert lr[:, 0].max() == pytest.approx(0.4)


def test_one_cycle_betas_and_stepping_past_the_end():
    opt = StandIn([1e-3], betas=(0.9, 0.999), defaults=False)  # beta1 found through the group
    s = L.OneCycleLR(opt, max_lr=1e-2, epochs=5, steps_per_epoch=4)
    assert opt.param_groups[0]["betas"] == (0.95, 0.999)
    for _ in range(20):
        s.step()
    assert s.last_epoch == 20
    before = (copy.deepcopy(opt.param_groups), copy.deepcopy(s.state_dict()))
    with pytest.raises(ValueError, match="Tried to step 21 times"):
        s.step()
    assert (opt.param_groups, s.state_dict()) == before  # refused before anything changed


def test_reduce_on_plateau_scripted():
    opt = StandIn([1.0, 0.1])
    s = L.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2, cooldown=1,
                            min_lr=[0.2, 0.0], threshold=0.1, threshold_mode="abs")
    metrics = [5.0, 4.0, 3.95, 3.95, 3.95, 3.9, 3.9, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    got = []
    for m in metrics:
        s.step(m)
        got.append(lrs_of(opt))
    # best 4.0 at epoch 2; 3 bad epochs (3.95 x3 are not 0.1 below) -> halve at the 5th metric;
    # cooldown 1 swallows the 6th; 3.9 twice more is 2 bad; 2.0 improves; 2.0 x3 bad -> halve,
    # cooldown, 3 more bad -> halve again, with group 0 stopped at min_lr 0.2
    want = [[1.0, 0.1]] * 4 + [[0.5, 0.05]] * 6 + [[0.25, 0.025]] * 4
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-15)
    for _ in range(4):
        s.step(2.0)
    assert lrs_of(opt) == [0.2, 0.0125]
    assert s.get_last_lr() == [0.2, 0.0125]


def test_sequential_and_chained_values():
    opt = StandIn([0.1])
    warm = L.LinearLR(opt, start_factor=0.1, total_iters=5)
    decay = L.ExponentialLR(opt, gamma=0.5)
    s = L.SequentialLR(opt, [warm, decay], milestones=[5])
    got = drive(s, opt, steps=8)[0][:, 0]
    want = [0.01, 0.028, 0.046, 0.064, 0.082, 0.1, 0.05, 0.025, 0.0125]
    np.testing.assert_allclose(got, want, rtol=1e-12)

    opt = StandIn([1.0])
    s = L.ChainedScheduler([L.ConstantLR(opt, factor=0.1, total_iters=2),
                            L.ExponentialLR(opt, gamma=0.9)])
    got = drive(s, opt, steps=4)[0][:, 0]
    np.testing.assert_allclose(got, [0.1, 0.09, 0.81, 0.729, 0.6561], rtol=1e-12)


def test_state_dict_round_trip_without_torch():
    def make(o):
        return L.OneCycleLR(o, max_lr=[0.3, 0.1], total_steps=300, three_phase=True)
    ref_opt = StandIn([0.1, 0.1])
    ref = drive(make(ref_opt), ref_opt)[0]
    opt = StandIn([0.1, 0.1])
    s = make(opt)
    for _ in range(123):
        s.step()
    saved_groups, saved = copy.deepcopy(opt.param_groups), copy.deepcopy(s.state_dict())
    opt2 = StandIn([0.1, 0.1])
    s2 = make(opt2)
    opt2.param_groups[:] = saved_groups
    s2.load_state_dict(saved)
    rest = drive(s2, opt2, steps=STEPS - 123)[0]
    np.testing.assert_array_equal(rest, ref[123:])


def test_get_lr_outside_step_and_epoch_argument_warn():
    opt = StandIn([0.1])
    s = L.StepLR(opt, step_size=3)
    with pytest.warns(UserWarning, match="get_last_lr"):
        s.get_lr()
    with pytest.warns(UserWarning, match="epoch parameter"):
        s.step(7)
    assert s.last_epoch == 7 and lrs_of(opt) == [pytest.approx(0.001)]


def test_works_with_gf_tensor_metric_and_is_exported():
    assert gf.optim.lr_scheduler is L
    opt = StandIn([0.1])
    s = L.ReduceLROnPlateau(opt, patience=0)
    s.step(gf.tensor(1.0))
    s.step(gf.tensor([1.0]))
    assert lrs_of(opt) == [pytest.approx(0.01)]


# ---------------------------------------------------------------------------------------------
# PyTorch parity: same options, same 300-step sequence (exact: the same float operations)
# ---------------------------------------------------------------------------------------------


class Counted:
    """A callable object: LambdaLR saves its __dict__ in state_dict."""

    def __init__(self):
        self.scale = 0.97

    def __call__(self, epoch):
        return self.scale**epoch


CASES = {
    "step": ((0.1,), lambda m, o: m.StepLR(o, step_size=7, gamma=0.5)),
    "step_every": ((0.1, 0.03), lambda m, o: m.StepLR(o, step_size=1, gamma=0.97)),
    "step_default_gamma": ((0.1,), lambda m, o: m.StepLR(o, step_size=30)),
    "multistep": ((0.1, 0.01), lambda m, o: m.MultiStepLR(o, milestones=[10, 50, 50, 200], gamma=0.3)),
    "multistep_unsorted": ((0.1,), lambda m, o: m.MultiStepLR(o, milestones=[120, 30])),
    "exponential": ((0.1,), lambda m, o: m.ExponentialLR(o, gamma=0.99)),
    "exponential_2g": ((0.1, 0.5), lambda m, o: m.ExponentialLR(o, gamma=0.9)),
    "cosine": ((0.1,), lambda m, o: m.CosineAnnealingLR(o, T_max=50)),
    "cosine_eta_min": ((0.1,), lambda m, o: m.CosineAnnealingLR(o, T_max=100, eta_min=1e-3)),
    "cosine_2g_odd": ((0.1, 0.01), lambda m, o: m.CosineAnnealingLR(o, T_max=37, eta_min=0.05)),
    "cosine_long": ((0.1,), lambda m, o: m.CosineAnnealingLR(o, T_max=300, eta_min=1e-4)),
    "warm_restarts": ((0.1,), lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=10)),
    "warm_restarts_mult": ((0.1, 0.02), lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=2, eta_min=1e-4)),
    "warm_restarts_1": ((0.1,), lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=1, T_mult=3)),
    "linear": ((0.1,), lambda m, o: m.LinearLR(o)),
    "linear_warmup": ((0.1, 0.2), lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=50)),
    "linear_decay": ((0.1,), lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=100)),
    "linear_mixed": ((0.1,), lambda m, o: m.LinearLR(o, start_factor=0.5, end_factor=0.25, total_iters=200)),
    "constant": ((0.1,), lambda m, o: m.ConstantLR(o)),
    "constant_long": ((0.1, 0.3), lambda m, o: m.ConstantLR(o, factor=0.5, total_iters=100)),
    "lambda": ((0.1,), lambda m, o: m.LambdaLR(o, lambda e: 0.95**e)),
    "lambda_2g": ((0.1, 0.2), lambda m, o: m.LambdaLR(o, [lambda e: e // 30 + 1, lambda e: 1 / (1 + e)])),
    "lambda_object": ((0.1,), lambda m, o: m.LambdaLR(o, Counted())),
    "multiplicative": ((0.1,), lambda m, o: m.MultiplicativeLR(o, lambda e: 0.99)),
    "multiplicative_2g": ((0.1, 0.2), lambda m, o: m.MultiplicativeLR(o, [lambda e: 0.99, lambda e: 1.0 if e % 10 else 0.5])),
    "polynomial": ((0.1,), lambda m, o: m.PolynomialLR(o)),
    "polynomial_sq": ((0.1,), lambda m, o: m.PolynomialLR(o, total_iters=100, power=2.0)),
    "polynomial_sqrt": ((0.1, 0.05), lambda m, o: m.PolynomialLR(o, total_iters=300, power=0.5)),
    "onecycle": ((0.1,), lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=STEPS)),
    "onecycle_linear": ((0.1,), lambda m, o: m.OneCycleLR(o, max_lr=0.5, total_steps=STEPS, anneal_strategy="linear")),
    "onecycle_three_phase": ((0.1,), lambda m, o: m.OneCycleLR(o, max_lr=0.5, total_steps=STEPS + 17, three_phase=True)),
    "onecycle_epochs": ((0.1, 0.1), lambda m, o: m.OneCycleLR(o, max_lr=[0.3, 0.03], epochs=30, steps_per_epoch=10, pct_start=0.25, div_factor=10.0, final_div_factor=100.0, base_momentum=[0.8, 0.7], max_momentum=[0.9, 0.99])),
    "onecycle_no_momentum": ((0.1,), lambda m, o: m.OneCycleLR(o, max_lr=0.2, total_steps=STEPS, cycle_momentum=False, pct_start=0.123)),
    "cyclic": ((0.1,), lambda m, o: m.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=20)),
    "cyclic_triangular2": ((0.1, 0.2), lambda m, o: m.CyclicLR(o, base_lr=[0.01, 0.02], max_lr=[0.1, 0.3], step_size_up=15, step_size_down=35, mode="triangular2", base_momentum=[0.8, 0.85], max_momentum=0.95)),
    "cyclic_exp_range": ((0.1,), lambda m, o: m.CyclicLR(o, base_lr=0.001, max_lr=0.1, step_size_up=13, mode="exp_range", gamma=0.99)),
    "cyclic_custom": ((0.1,), lambda m, o: m.CyclicLR(o, base_lr=0.001, max_lr=0.1, step_size_up=9.5, scale_fn=lambda x: 1 / (1 + 0.01 * x), scale_mode="iterations", cycle_momentum=False)),
    "sequential": ((0.1,), lambda m, o: m.SequentialLR(o, [m.LinearLR(o, start_factor=0.1, total_iters=5), m.CosineAnnealingLR(o, T_max=95)], milestones=[5])),
    "sequential_3": ((0.1, 0.05), lambda m, o: m.SequentialLR(o, [m.ConstantLR(o, factor=0.1, total_iters=20), m.StepLR(o, step_size=10, gamma=0.8), m.ExponentialLR(o, gamma=0.99)], milestones=[10, 100])),
    "sequential_lambda": ((0.1,), lambda m, o: m.SequentialLR(o, [m.LambdaLR(o, lambda e: (e + 1) / 20), m.PolynomialLR(o, total_iters=250, power=1.5)], milestones=[20])),
    "chained": ((0.1,), lambda m, o: m.ChainedScheduler([m.ConstantLR(o, factor=0.1, total_iters=2), m.ExponentialLR(o, gamma=0.9)])),
    "chained_3": ((0.1, 0.2), lambda m, o: m.ChainedScheduler([m.LinearLR(o, start_factor=0.2, total_iters=30), m.CosineAnnealingLR(o, T_max=60), m.StepLR(o, step_size=45, gamma=0.5)])),
}

MOMENTUM_KEY = {name: "momentum" for name in CASES if name.startswith(("onecycle", "cyclic"))}
MOMENTUM_KEY.pop("onecycle_no_momentum")
MOMENTUM_KEY.pop("cyclic_custom")


def torch_pair(torch, name, betas=False):
    lrs, make = CASES[name]
    params = [torch.zeros(3, requires_grad=True) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    if betas:
        t_opt = torch.optim.Adam(groups, lr=lrs[0], betas=(0.9, 0.999))
        g_opt = StandIn(lrs, betas=(0.9, 0.999))
    else:
        t_opt = torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
        g_opt = StandIn(lrs, momentum=0.9)
    return make, t_opt, g_opt


def group_values(opt, key):
    if key == "beta1":
        return [g["betas"][0] for g in opt.param_groups]
    return [g[key] for g in opt.param_groups]


def run_both(torch, name, steps=STEPS, betas=False):
    make, t_opt, g_opt = torch_pair(torch, name, betas)
    ts, gs = make(torch.optim.lr_scheduler, t_opt), make(L, g_opt)
    mkey = "beta1" if betas else MOMENTUM_KEY.get(name)
    t_rec, g_rec = [], []
    for i in range(steps + 1):
        if i:
            t_opt.step()
            ts.step()
            gs.step()
        t_rec.append(group_values(t_opt, "lr") + ts.get_last_lr()
                     + (group_values(t_opt, mkey) if mkey else []))
        g_rec.append(group_values(g_opt, "lr") + gs.get_last_lr()
                     + (group_values(g_opt, mkey) if mkey else []))
    return np.array(t_rec, dtype=np.float64), np.array(g_rec, dtype=np.float64), ts, gs, t_opt, g_opt


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    t, g, *_ = run_both(torch, name)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g, t)
    assert len(np.unique(g[:, 0])) > 1  # the schedule does something


def test_one_cycle_and_cyclic_betas_match_torch_adam():
    torch = pytest.importorskip("torch")
    t, g, *_ = run_both(torch, "onecycle_epochs", betas=True)
    np.testing.assert_array_equal(g, t)
    assert g[:, -1].min() == pytest.approx(0.7) and g[:, -1].max() == pytest.approx(0.99)
    t, g, *_ = run_both(torch, "cyclic_triangular2", betas=True)
    np.testing.assert_array_equal(g, t)
    assert g[:, -2].min() == pytest.approx(0.8) and g[:, -2].max() == pytest.approx(0.95)


def _torch_groups(t_opt):
    return [{k: v for k, v in grp.items() if k != "params"} for grp in t_opt.param_groups]


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip_continues_torch_sequence(name):
    """Stop at 137 steps, rebuild the scheduler, load the state: the rest matches torch's
    uninterrupted run; and the states cross between torch and gradfuse both ways."""
    torch = pytest.importorskip("torch")
    t_full, *_ = run_both(torch, name)
    make, t_opt, g_opt = torch_pair(torch, name)
    ts, gs = make(torch.optim.lr_scheduler, t_opt), make(L, g_opt)
    for _ in range(137):
        t_opt.step()
        ts.step()
        gs.step()
    mkey = MOMENTUM_KEY.get(name)

    def rest(sched, opt, step_opt=None):
        rec = []
        for _ in range(STEPS - 137):
            if step_opt is not None:
                step_opt.step()
            sched.step()
            rec.append(group_values(opt, "lr") + sched.get_last_lr()
                       + (group_values(opt, mkey) if mkey else []))
        return np.array(rec, dtype=np.float64)

    # as in PyTorch: build the new scheduler first, then restore the optimizer, then the state
    sources = {"gradfuse": (copy.deepcopy(g_opt.param_groups), copy.deepcopy(gs.state_dict())),
               "torch": (copy.deepcopy(_torch_groups(t_opt)), copy.deepcopy(ts.state_dict()))}
    for source, (groups, state) in sources.items():
        _, _, g2 = torch_pair(torch, name)
        s2 = make(L, g2)
        g2.param_groups[:] = copy.deepcopy(groups)
        s2.load_state_dict(copy.deepcopy(state))
        np.testing.assert_array_equal(rest(s2, g2), t_full[138:], err_msg=f"from {source}")

    # gradfuse's state into torch
    _, t2, _ = torch_pair(torch, name)
    ts2 = make(torch.optim.lr_scheduler, t2)
    for grp, saved in zip(t2.param_groups, sources["gradfuse"][0]):
        grp.update(saved)
    ts2.load_state_dict(copy.deepcopy(sources["gradfuse"][1]))
    np.testing.assert_array_equal(rest(ts2, t2, t2), t_full[138:])


PLATEAU_OPTIONS = {
    "default": dict(),
    "abs_cooldown": dict(patience=3, cooldown=2, threshold=0.01, threshold_mode="abs", factor=0.5),
    "max_rel": dict(mode="max", patience=4, factor=0.3, min_lr=1e-4),
    "max_abs": dict(mode="max", threshold_mode="abs", threshold=0.02, patience=2, cooldown=5),
    "min_lr_list_eps": dict(patience=1, factor=0.5, min_lr=[1e-3, 1e-2], eps=1e-3),
}


def plateau_metrics():
    """Loss-like curve: improves, sits on plateaus (with sub-threshold wiggles), NaN once."""
    rng = np.random.default_rng(5)
    t = np.arange(STEPS)
    base = 1.0 / (1.0 + (t // 25) * 0.3)  # flat stretches of 25 epochs
    m = base * (1 + 1e-5 * rng.standard_normal(STEPS))
    m[40:60] = m[39]  # exact plateau
    m[100:130] -= np.linspace(0, 0.02, 30)  # slow drift, relevant for the abs threshold
    m[200] = np.nan
    return m


@pytest.mark.parametrize("opts", sorted(PLATEAU_OPTIONS))
def test_reduce_on_plateau_matches_torch(opts):
    torch = pytest.importorskip("torch")
    kw = PLATEAU_OPTIONS[opts]
    metrics = plateau_metrics()
    if kw.get("mode") == "max":
        metrics = -metrics
    params = [torch.zeros(2, requires_grad=True) for _ in range(2)]
    t_opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.1},
                             {"params": [params[1]], "lr": 0.5}], lr=0.1)
    g_opt = StandIn([0.1, 0.5])
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, **kw)
    gs = L.ReduceLROnPlateau(g_opt, **kw)
    t_rec, g_rec = [], []
    for i, m in enumerate(metrics):
        if i == 150:  # a round trip half-way, each side through the other's state_dict
            t_sd, g_sd = copy.deepcopy(ts.state_dict()), copy.deepcopy(gs.state_dict())
            gs = L.ReduceLROnPlateau(g_opt, **kw)
            gs.load_state_dict(t_sd)
            ts = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, **kw)
            ts.load_state_dict(g_sd)
        ts.step(m)
        gs.step(m)
        t_rec.append(lrs_of(t_opt) + ts.get_last_lr() + [ts.num_bad_epochs, ts.cooldown_counter, ts.best])
        g_rec.append(lrs_of(g_opt) + gs.get_last_lr() + [gs.num_bad_epochs, gs.cooldown_counter, gs.best])
    t_rec, g_rec = np.array(t_rec), np.array(g_rec)
    np.testing.assert_array_equal(g_rec, t_rec)
    assert len(np.unique(g_rec[:, 0])) >= 3  # several reductions happened


@pytest.mark.parametrize("T_0, T_mult", [(5, 1), (3, 2), (2, 3)])
def test_warm_restarts_fractional_epochs_match_torch(T_0, T_mult):
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    t_opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    g_opt = StandIn([0.1])
    ts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(t_opt, T_0, T_mult, eta_min=1e-3)
    gs = L.CosineAnnealingWarmRestarts(g_opt, T_0, T_mult, eta_min=1e-3)
    t_rec, g_rec = [], []
    for epoch in range(30):
        for i in range(10):
            t_opt.step()
            ts.step(epoch + i / 10)
            gs.step(epoch + i / 10)
            t_rec.append([t_opt.param_groups[0]["lr"], ts.T_cur, ts.T_i, ts.last_epoch])
            g_rec.append([g_opt.param_groups[0]["lr"], gs.T_cur, gs.T_i, gs.last_epoch])
    np.testing.assert_array_equal(np.array(g_rec), np.array(t_rec))


@pytest.mark.parametrize("name", ["step", "multistep", "exponential", "cosine_eta_min", "linear_warmup",
                                  "constant_long", "polynomial_sq"])
def test_step_with_epoch_uses_torchs_closed_form(name):
    torch = pytest.importorskip("torch")
    make, t_opt, g_opt = torch_pair(torch, name)
    ts, gs = make(torch.optim.lr_scheduler, t_opt), make(L, g_opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # both warn that epoch is deprecated
        for epoch in [3, 17, 50, 7, 0, 120, 121]:
            t_opt.step()
            ts.step(epoch)
            gs.step(epoch)
            assert lrs_of(g_opt) == lrs_of(t_opt)
            ts.step()
            gs.step()
            assert lrs_of(g_opt) == lrs_of(t_opt)


def test_resume_with_last_epoch_matches_torch():
    torch = pytest.importorskip("torch")
    for name in ["step", "exponential", "cosine", "linear_warmup", "polynomial_sq", "constant_long"]:
        make, t_opt, g_opt = torch_pair(torch, name)
        for grp in t_opt.param_groups:
            grp["initial_lr"] = grp["lr"]
        for grp in g_opt.param_groups:
            grp["initial_lr"] = grp["lr"]
        # rebuild the factories' schedulers with last_epoch=9 through keyword injection
        ts = make(lambda_module(torch.optim.lr_scheduler, last_epoch=9), t_opt)
        gs = make(lambda_module(L, last_epoch=9), g_opt)
        for _ in range(40):
            t_opt.step()
            ts.step()
            gs.step()
            assert lrs_of(g_opt) == lrs_of(t_opt), name


class lambda_module:  # noqa: N801  (stands in for a module in the CASES factories)
    """Module proxy whose scheduler classes get an extra keyword (here last_epoch)."""

    def __init__(self, module, **extra):
        self.module, self.extra = module, extra

    def __getattr__(self, name):
        cls = getattr(self.module, name)
        return lambda *a, **k: cls(*a, **{**k, **self.extra})


# ---------------------------------------------------------------------------------------------
# bad input: a ValueError/TypeError naming the argument, the optimizer untouched
# ---------------------------------------------------------------------------------------------

BAD = [
    # (constructor, exception, match, torch also raises ValueError/TypeError[, "children":
    # the children, built first, legitimately record initial_lr: compare after that])
    (lambda m, o: m.StepLR(o, step_size=0), ValueError, "step_size", False),
    (lambda m, o: m.StepLR(o, step_size=2.5), ValueError, "step_size", False),
    (lambda m, o: m.StepLR(o, step_size=3, gamma=float("nan")), ValueError, "gamma", False),
    (lambda m, o: m.MultiStepLR(o, milestones=[3, 1.5]), ValueError, "milestones", False),
    (lambda m, o: m.MultiStepLR(o, milestones=3), TypeError, "milestones", True),
    (lambda m, o: m.ConstantLR(o, factor=1.5), ValueError, "factor", True),
    (lambda m, o: m.ConstantLR(o, factor=0.0), ValueError, "factor", False),
    (lambda m, o: m.ConstantLR(o, total_iters=0), ValueError, "total_iters", False),
    (lambda m, o: m.LinearLR(o, start_factor=0.0), ValueError, "start_factor", True),
    (lambda m, o: m.LinearLR(o, end_factor=1.5), ValueError, "end_factor", True),
    (lambda m, o: m.LinearLR(o, total_iters=-1), ValueError, "total_iters", False),
    (lambda m, o: m.ExponentialLR(o, gamma=float("inf")), ValueError, "gamma", False),
    (lambda m, o: m.CosineAnnealingLR(o, T_max=0), ValueError, "T_max", False),
    (lambda m, o: m.CosineAnnealingLR(o, T_max=10, eta_min=float("nan")), ValueError, "eta_min", False),
    (lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0", True),
    (lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=2.5), ValueError, "T_0", True),
    (lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0), ValueError, "T_mult", True),
    (lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=2, eta_min="0"), ValueError, "eta_min", True),
    (lambda m, o: m.PolynomialLR(o, total_iters=0), ValueError, "total_iters", False),
    (lambda m, o: m.PolynomialLR(o, power=float("nan")), ValueError, "power", False),
    (lambda m, o: m.LambdaLR(o, [lambda e: 1.0] * 3), ValueError, "lr_lambda", True),
    (lambda m, o: m.MultiplicativeLR(o, 0.9), TypeError, "lr_lambda", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1), ValueError, "total_steps", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=0), ValueError, "total_steps", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, epochs=0, steps_per_epoch=3), ValueError, "epochs", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, epochs=2, steps_per_epoch=1.5), ValueError, "steps_per_epoch", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1), ValueError, "pct_start", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, anneal_strategy="exp"), ValueError, "anneal_strategy", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=[0.1, 0.2, 0.3], total_steps=10), ValueError, "max_lr", True),
    (lambda m, o: m.OneCycleLR(o, max_lr=-0.1, total_steps=10), ValueError, "max_lr", False),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, div_factor=0.0), ValueError, "div_factor", False),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, max_momentum=[0.9]), ValueError, "max_momentum", True),
    (lambda m, o: m.CyclicLR(o, base_lr=0.01, max_lr=0.1, mode="sine"), ValueError, "mode", True),
    (lambda m, o: m.CyclicLR(o, base_lr=[0.01], max_lr=0.1), ValueError, "base_lr", True),
    (lambda m, o: m.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=0), ValueError, "step_size_up", False),
    (lambda m, o: m.CyclicLR(o, base_lr=0.01, max_lr=0.1, scale_mode="epoch"), ValueError, "scale_mode", False),
    (lambda m, o: m.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor", True),
    (lambda m, o: m.ReduceLROnPlateau(o, mode="avg"), ValueError, "mode", True),
    (lambda m, o: m.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold_mode", True),
    (lambda m, o: m.ReduceLROnPlateau(o, min_lr=[0.0]), ValueError, "min_lr", True),
    (lambda m, o: m.ReduceLROnPlateau(o, patience=-1), ValueError, "patience", False),
    (lambda m, o: m.ReduceLROnPlateau(o, eps=-1.0), ValueError, "eps", False),
    (lambda m, o: m.SequentialLR(o, [m.StepLR(o, 2), m.StepLR(o, 3)], milestones=[]), ValueError, "milestones", True, "children"),
    (lambda m, o: m.SequentialLR(o, [], milestones=[]), ValueError, "schedulers", True),
    (lambda m, o: m.SequentialLR(o, [m.ReduceLROnPlateau(o)], milestones=[]), ValueError, "ReduceLROnPlateau", True, "children"),
    (lambda m, o: m.ChainedScheduler([]), ValueError, "schedulers", True),
    (lambda m, o: m.StepLR(o, step_size=2, last_epoch=-2), ValueError, "last_epoch", False),
    (lambda m, o: m.StepLR(o, step_size=2, last_epoch=4), KeyError, "initial_lr", True),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_raises_and_changes_nothing(i):
    make, exc, match, _, *children = BAD[i]
    opt = StandIn([0.1, 0.2])
    if children:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    before = copy.deepcopy(opt.param_groups)
    with pytest.raises(exc, match=match):
        make(L, opt)
    assert opt.param_groups == before


@pytest.mark.parametrize("i", [i for i, b in enumerate(BAD) if b[3]])
def test_bad_input_torch_agrees(i):
    torch = pytest.importorskip("torch")
    make, exc, *_ = BAD[i]
    params = [torch.zeros(1, requires_grad=True) for _ in range(2)]
    t_opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.1},
                             {"params": [params[1]], "lr": 0.2}], lr=0.1, momentum=0.9)
    with pytest.raises(exc):
        make(torch.optim.lr_scheduler, t_opt)


def test_bad_optimizer_and_other_refusals():
    with pytest.raises(TypeError, match="optimizer"):
        L.StepLR(object(), step_size=2)
    with pytest.raises(ValueError, match="lr"):
        L.StepLR(type("O", (), {"param_groups": [{"momentum": 0.9}]})(), step_size=2)
    opt = StandIn([0.1], momentum=None, defaults=False)
    with pytest.raises(ValueError, match="momentum"):
        L.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    assert opt.param_groups == [{"lr": 0.1}]
    L.OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=False)  # fine without it

    opt = StandIn([0.1])
    other = StandIn([0.1])
    with pytest.raises(ValueError, match="same optimizer"):
        L.SequentialLR(opt, [L.StepLR(opt, 2), L.StepLR(other, 2)], milestones=[3])

    s = L.CosineAnnealingWarmRestarts(opt, T_0=3)
    state = copy.deepcopy(s.state_dict())
    with pytest.raises(ValueError, match="epoch"):
        s.step(-1)
    with pytest.raises(ValueError, match="epoch"):
        s.step(float("nan"))
    assert s.state_dict() == state

    p = L.ReduceLROnPlateau(opt)
    state = copy.deepcopy(p.state_dict())
    with pytest.raises(TypeError, match="metrics"):
        p.step("low")
    assert p.state_dict() == state


def test_load_state_dict_refuses_a_foreign_state():
    opt = StandIn([0.1, 0.2])
    s = L.StepLR(opt, step_size=3)
    for _ in range(5):
        s.step()
    state = copy.deepcopy(s.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        s.load_state_dict(L.ExponentialLR(StandIn([0.1, 0.2]), gamma=0.9).state_dict())
    one_group = L.StepLR(StandIn([0.1]), step_size=3).state_dict()
    with pytest.raises(ValueError, match="base_lrs"):
        s.load_state_dict(one_group)
    with pytest.raises(TypeError, match="state_dict"):
        s.load_state_dict([("last_epoch", 3)])
    assert s.state_dict() == state

    seq_opt = StandIn([0.1])
    sq = L.SequentialLR(seq_opt, [L.StepLR(seq_opt, 2), L.ExponentialLR(seq_opt, 0.9)], [4])
    sd = copy.deepcopy(sq.state_dict())
    bad = copy.deepcopy(sd)
    bad["_schedulers"][1] = L.StepLR(StandIn([0.1]), 2).state_dict()  # wrong second child
    with pytest.raises(ValueError, match="ExponentialLR"):
        sq.load_state_dict(bad)
    assert sq.state_dict() == sd


def test_docs_scheduler_example():
    """docs/optimizers.md's block runs with gf.optim.SGD and gives the warm-up-then-cosine
    sequence it describes."""
    from docs_util import python_block

    block = python_block("docs/optimizers.md", "Learning-rate schedulers")
    scope = {}
    exec(compile(block, "docs/optimizers.md schedulers", "exec"), scope)
    lrs = scope["lrs"]
    assert len(lrs) == 100
    np.testing.assert_allclose(lrs[:5], [0.028, 0.046, 0.064, 0.082, 0.1], rtol=1e-12)
    assert lrs[-1] == pytest.approx(1e-4) and min(lrs) == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotone decay after warm-up


def test_lambda_object_state_is_saved_and_restored():
    fn = Counted()
    fn.scale = 0.5
    opt = StandIn([1.0])
    s = L.LambdaLR(opt, fn)
    s.step()
    sd = copy.deepcopy(s.state_dict())
    assert sd["lr_lambdas"] == [{"scale": 0.5}]
    fn2 = Counted()  # scale 0.97
    s2 = L.LambdaLR(StandIn([1.0]), fn2)
    s2.load_state_dict(sd)
    assert fn2.scale == 0.5 and s2.last_epoch == 1
    s2.step()
    assert s2.get_last_lr() == [0.25]
    assert L.LambdaLR(StandIn([1.0]), lambda e: 1.0).state_dict()["lr_lambdas"] == [None]


@pytest.mark.parametrize("opt_name", ["SGD", "Adam", "RMSprop"])
def test_real_optimizer_reads_the_scheduled_lr_every_step(opt_name):
    """The fused step takes lr from param_groups afresh, so a scheduler changes the update:
    parameters after 6 steps equal PyTorch's with the same scheduler."""
    torch = pytest.importorskip("torch")
    w0 = np.linspace(-1.0, 1.0, 7)
    g = np.cos(np.arange(7.0))
    p = gf.nn.Parameter(gf.tensor(w0.copy()))
    tp = torch.nn.Parameter(torch.tensor(w0.copy()))
    opt = getattr(gf.optim, opt_name)([p], lr=0.1)
    topt = getattr(torch.optim, opt_name)([tp], lr=0.1)
    sched = L.StepLR(opt, step_size=2, gamma=0.1)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.1)
    for _ in range(6):
        p.grad = gf.tensor(g.copy())
        tp.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)
    # and the schedule mattered: a constant lr would end elsewhere
    q = gf.nn.Parameter(gf.tensor(w0.copy()))
    const = getattr(gf.optim, opt_name)([q], lr=0.1)
    for _ in range(6):
        q.grad = gf.tensor(g.copy())
        const.step()
    assert np.abs(q.data - p.data).max() > 1e-3
