"""Losses: the fused cross-entropy kernel against numpy and PyTorch, MSE, and bad input."""

import numpy as np
import pytest

import gradfuse as gf
import gradfuse.nn.functional as F
import reference as ref

CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.1),
    dict(weight=True),
    dict(weight=True, label_smoothing=0.25, reduction="mean"),
    dict(ignore_index=3),
    dict(ignore_index=3, weight=True, label_smoothing=0.1, reduction="sum"),
]


def _make(rng, n, c, dtype, case):
    x = (rng.standard_normal((n, c)) * 4).astype(dtype)
    t = rng.integers(0, c, n)
    kw = dict(case)
    if kw.pop("weight", False):
        kw["weight"] = (rng.random(c) + 0.2).astype(dtype)
    return x, t, kw


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("n,c", [(1, 1), (7, 3), (129, 37), (33, 1001)])  # odd sizes: partial SIMD tails
def test_cross_entropy_matches_numpy(rng, case, dtype, tol, n, c):
    x, t, kw = _make(rng, n, c, dtype, case)
    xt = gf.tensor(x, requires_grad=True)
    wt = None if "weight" not in kw else gf.tensor(kw["weight"])
    loss = F.cross_entropy(xt, gf.tensor(t), **{**kw, "weight": wt})
    assert loss.dtype == dtype
    want, want_grad = ref.cross_entropy(x, t, **kw)
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=tol, atol=tol)
    red = kw.get("reduction", "mean")
    (loss.sum() if red == "none" else loss).backward()
    np.testing.assert_allclose(xt.grad.numpy(), want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_cross_entropy_matches_torch(rng, case):
    torch = pytest.importorskip("torch")
    x, t, kw = _make(rng, 65, 11, np.float32, case)
    xg = gf.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    gkw = dict(kw)
    tkw = dict(kw)
    if "weight" in kw:
        gkw["weight"] = gf.tensor(kw["weight"])
        tkw["weight"] = torch.tensor(kw["weight"])
    lg = gf.nn.CrossEntropyLoss(**gkw)(xg, gf.tensor(t))
    lt = torch.nn.CrossEntropyLoss(**tkw)(xt, torch.tensor(t))
    np.testing.assert_allclose(lg.detach().numpy(), lt.detach().numpy(), rtol=1e-5, atol=1e-6)
    red = kw.get("reduction", "mean")
    (lg.sum() if red == "none" else lg).backward()
    (lt.sum() if red == "none" else lt).backward()
    np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_cross_entropy_higher_dim_and_1d_match_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 5, 4, 2))
    t = rng.integers(0, 5, (3, 4, 2))
    xg, xt = gf.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    F.cross_entropy(xg, gf.tensor(t)).backward()
    torch.nn.functional.cross_entropy(xt, torch.tensor(t)).backward()
    np.testing.assert_allclose(xg.grad.data, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    v = rng.standard_normal(6)
    lg = F.cross_entropy(gf.tensor(v), gf.tensor(2))
    lt = torch.nn.functional.cross_entropy(torch.tensor(v), torch.tensor(2))
    np.testing.assert_allclose(lg.item(), lt.item(), rtol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    x = gf.tensor([[1e4, 0.0, -1e4], [-3e38, 3e38, 0.0]], requires_grad=True)
    loss = F.cross_entropy(x, gf.tensor([1, 1]), reduction="none")
    assert np.isfinite(loss.detach().numpy()).all()
    np.testing.assert_allclose(loss.detach().numpy(), [1e4, 0.0], rtol=1e-6)
    loss.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_cross_entropy_all_ignored_gives_nan_like_torch():
    loss = F.cross_entropy(gf.zeros(2, 3), gf.tensor([-100, -100]))
    assert np.isnan(loss.item())


def test_nan_logits_propagate_to_the_loss():
    # a NaN input is a training failure to detect (non-finite guard), not a crash
    loss = F.cross_entropy(gf.tensor([[0.0, float("nan")], [1.0, 2.0]]), gf.tensor([0, 1]),
                           reduction="none")
    assert np.isnan(loss.numpy()[0]) and np.isfinite(loss.numpy()[1])


def test_cross_entropy_accepts_other_integer_label_dtypes(rng):
    x = gf.tensor(rng.standard_normal((4, 3)))
    t = np.array([0, 2, 1, 2])
    a = F.cross_entropy(x, gf.tensor(t)).item()
    assert F.cross_entropy(x, t.astype(np.uint8)).item() == a
    assert F.cross_entropy(x, t.astype(np.int32)).item() == a


@pytest.mark.parametrize(
    "logits,target,kw,exc,match",
    [
        (np.zeros((3, 4), np.float32), [0, 4, 1], {}, ValueError, r"class index 4 at position 1.*\[0, 4\)"),
        (np.zeros((3, 4), np.float32), [0, -1, 1], {}, ValueError, r"class index -1"),
        (np.zeros((3, 4), np.float32), np.zeros(3, np.float32), {}, TypeError, "integer class indices"),
        (np.zeros((3, 4), np.float32), [0, 1], {}, ValueError, r"target: expected shape \(3,\)"),
        (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), {}, ValueError, "empty batch"),
        (np.zeros((3, 4), np.int64), [0, 1, 2], {}, TypeError, "float32 or float64"),
        (np.zeros((3, 4), np.float16), [0, 1, 2], {}, TypeError, "float32 or float64"),
        (np.zeros((3, 4), np.float32), [0, 1, 2], {"reduction": "avg"}, ValueError, "reduction"),
        (np.zeros((3, 4), np.float32), [0, 1, 2], {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        (np.zeros((3, 4), np.float32), [0, 1, 2], {"weight": np.ones(3)}, ValueError, r"weight: expected shape \(4,\)"),
    ],
)
def test_cross_entropy_bad_input(logits, target, kw, exc, match):
    with pytest.raises(exc, match=match):
        F.cross_entropy(gf.tensor(logits), gf.tensor(np.asarray(target)), **kw)


def test_mse_matches_numpy_and_torch(rng):
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    for red in ("mean", "sum", "none"):
        ga = gf.tensor(a, requires_grad=True)
        out = gf.nn.MSELoss(reduction=red)(ga, gf.tensor(b))
        np.testing.assert_allclose(out.detach().numpy(), ref.mse(a, b, red), rtol=1e-12)
        (out.sum() if red == "none" else out).backward()
        scale = 2 / a.size if red == "mean" else 2
        np.testing.assert_allclose(ga.grad.data, scale * (a - b), rtol=1e-12)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(
        F.mse_loss(gf.tensor(a), gf.tensor(b)).item(),
        torch.nn.functional.mse_loss(torch.tensor(a), torch.tensor(b)).item(), rtol=1e-12)


def test_mse_refuses_silent_broadcasting():
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(4,\)"):
        F.mse_loss(gf.zeros(4, 1), gf.zeros(4))


def test_hyperparameter_types():
    x, t = gf.zeros(2, 3), gf.tensor([0, 1])
    a = F.cross_entropy(x, t, label_smoothing=np.float32(0.1)).item()
    assert a == pytest.approx(np.log(3), rel=1e-6)
    with pytest.raises(ValueError, match="ignore_index"):
        F.cross_entropy(x, t, ignore_index=2**70)
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, t, label_smoothing=True)
