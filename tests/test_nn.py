"""Module system, Linear and Sequential, state_dict, and PyTorch parity of a model."""

import numpy as np
import pytest

import gradfuse as gf
from gradfuse import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3, bias=False)
        self.register_buffer("steps", gf.zeros(1))

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * h)


def test_registration_and_traversal():
    m = MLP()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight"]
    assert [n for n, _ in m.named_buffers()] == ["steps"]
    assert len(list(m.children())) == 2 and len(list(m.modules())) == 3
    assert m.fc2.bias is None
    m.eval()
    assert not m.training and not m.fc1.training
    m.train()
    assert m.fc2.training
    with pytest.raises(TypeError, match="Parameter or None"):
        m.fc1.weight = np.zeros((8, 4))


def test_shared_parameter_listed_once():
    fc = nn.Linear(3, 3)
    seq = nn.Sequential(fc, fc)
    assert len(list(seq.parameters())) == 2


def test_linear_forward_backward_matches_numpy(rng):
    fc = nn.Linear(5, 3)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    xt = gf.tensor(x, requires_grad=True)
    y = fc(xt)
    np.testing.assert_allclose(y.detach().numpy(), x @ fc.weight.data.T + fc.bias.data, rtol=1e-5)
    y.sum().backward()
    np.testing.assert_allclose(fc.weight.grad.data, np.ones((7, 3)).T @ x, rtol=1e-5)
    np.testing.assert_allclose(fc.bias.grad.data, np.full(3, 7.0))
    np.testing.assert_allclose(xt.grad.data, np.ones((7, 3)) @ fc.weight.data, rtol=1e-5)
    assert fc(gf.ones(2, 6, 5)).shape == (2, 6, 3)  # leading batch dims


def test_linear_init_bounds_and_seed():
    gf.manual_seed(3)
    a = nn.Linear(100, 50)
    gf.manual_seed(3)
    b = nn.Linear(100, 50)
    assert np.array_equal(a.weight.data, b.weight.data)
    assert np.abs(a.weight.data).max() <= 0.1 and np.abs(a.weight.data).max() > 0.09
    assert a.weight.dtype == np.float32
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        gf.manual_seed(-1)


def test_linear_bad_input():
    with pytest.raises(ValueError, match=r"shape \(2, 6\).*expects 5"):
        nn.Linear(5, 3)(gf.ones(2, 6))
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(-1, 3)


def test_state_dict_round_trip():
    a, b = MLP(), MLP()
    sd = a.state_dict()
    assert list(sd) == ["steps", "fc1.weight", "fc1.bias", "fc2.weight"]  # PyTorch order
    sd["fc1.weight"][0, 0] = 123.0  # a snapshot: editing it does not touch the model
    assert a.fc1.weight.data[0, 0] != 123.0
    w_before = b.fc1.weight.data
    b.load_state_dict(a.state_dict())
    assert b.fc1.weight.data is w_before  # copied in place: views of it stay valid
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_load_state_dict_errors_leave_module_untouched():
    m = MLP()
    before = m.state_dict()
    bad = m.state_dict()
    bad["fc1.bias"] = np.zeros(9, np.float32)
    bad["fc1.weight"] = np.full((8, 4), 5.0, np.float32)
    with pytest.raises(ValueError, match=r"size mismatch for fc1.bias.*\(9,\).*\(8,\)"):
        m.load_state_dict(bad)
    missing = m.state_dict()
    del missing["fc2.weight"]
    missing["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: \['fc2.weight'\].*unexpected keys: \['extra'\]"):
        m.load_state_dict(missing)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    res = m.load_state_dict({k: v for k, v in before.items() if k != "steps"}, strict=False)
    assert res.missing_keys == ["steps"]


def test_zero_grad_and_double():
    m = MLP()
    m(gf.ones(2, 4)).sum().backward()
    m.zero_grad(set_to_none=False)
    assert m.fc1.weight.grad.data.sum() == 0
    m.zero_grad()
    assert m.fc1.weight.grad is None
    m.double()
    assert m.fc1.weight.dtype == np.float64


def test_sequential_indexing_and_repr():
    s = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert len(s) == 2 and isinstance(s[0], nn.Linear) and len(s[0:1]) == 1
    assert "in_features=2" in repr(s)


def test_model_matches_torch_values_and_gradients(rng):
    torch = pytest.importorskip("torch")
    gm = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 4))
    tm = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Linear(16, 4))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in gm.state_dict().items()})
    x = rng.standard_normal((10, 6)).astype(np.float32)
    y = rng.integers(0, 4, 10)
    lg = nn.CrossEntropyLoss(label_smoothing=0.05)(gm(gf.tensor(x)), gf.tensor(y))
    lt = torch.nn.CrossEntropyLoss(label_smoothing=0.05)(tm(torch.tensor(x)), torch.tensor(y))
    lg.backward()
    lt.backward()
    np.testing.assert_allclose(lg.item(), lt.item(), rtol=1e-5)
    for (name, p), tp in zip(gm.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    # and MSE on a regression head
    r = rng.standard_normal((10, 4)).astype(np.float32)
    gm.zero_grad()
    tm.zero_grad()
    nn.MSELoss()(gm(gf.tensor(x)), gf.tensor(r)).backward()
    torch.nn.MSELoss()(tm(torch.tensor(x)), torch.tensor(r)).backward()
    for p, tp in zip(gm.parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_quickstart_regression_converges():
    gf.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3)).astype(np.float32)
    y = x @ np.array([[2.0], [-1.0], [0.5]], np.float32) + 0.3
    model = nn.Linear(3, 1)
    for _ in range(200):
        loss = nn.functional.mse_loss(model(gf.tensor(x)), gf.tensor(y))
        model.zero_grad()
        loss.backward()
        with gf.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    np.testing.assert_allclose(model.weight.data.ravel(), [2.0, -1.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(model.bias.item(), 0.3, atol=1e-3)


def test_buffer_and_dtype_assignment_errors():
    m = MLP()
    with pytest.raises(TypeError, match="buffer 'steps'"):
        m.steps = np.zeros(1)
    m.steps = gf.ones(1)
    assert m.state_dict()["steps"].tolist() == [1.0]
    with pytest.raises(TypeError, match="floating"):
        m.to(gf.int64)
    if not gf.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda:0' is not available"):
            m.to("cuda:0")
    assert m.to("cpu:0") is m
    assert m.fc1.weight.dtype == np.float32


def test_sequential_slice_keeps_state_dict_keys():
    s = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert list(s[1:].state_dict()) == ["1.weight", "1.bias"]
