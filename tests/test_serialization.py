"""gf.save / gf.load: safetensors checkpoints with JSON metadata, atomic writes, resumption."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter, OrderedDict

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.optim import lr_scheduler as lrs
from gradfuse.serialization import CheckpointError

safetensors = pytest.importorskip("safetensors")
from safetensors.numpy import load_file as st_load_file  # noqa: E402
from safetensors.numpy import save_file as st_save_file  # noqa: E402


def _same(a, b, where="obj"):
    """Exact equality of nested structures: same types, dtypes, shapes and bits (nan == nan)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, gf.Tensor):
        _same(a.data, b.data, where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            _same(ka, kb, f"{where} key")
            _same(va, vb, f"{where}[{ka!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    elif isinstance(a, np.generic) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def _nested():
    rng = np.random.default_rng(0)
    return {
        "ints": [0, -1, 2**62, 2**70],
        "floats": [0.1, -0.0, 1e-310, math.inf, -math.inf, math.nan, 1.0],
        "flags": (True, False, None),
        "text": "héllo ✓",
        "nested": {"a": {"b": [1, (2.5, "x")]}, "empty": {}, "none": None, "lst": []},
        "int_keys": {0: "zero", 7: [1, 2], -3: None},
        "mixed_keys": {(1, 2): "tuple", 1.5: "float", None: "none", True: "bool", "$x": 1},
        "counter": Counter([3, 3, 5]),
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "np_scalars": [np.float32(1.25), np.int64(-7), np.bool_(True), np.float64(np.nan),
                       np.uint8(255)],
        "bytes": b"\x00\xffabc",
        "arrays": {
            "f32": rng.standard_normal((3, 5)).astype(np.float32),
            "f64": rng.standard_normal(7),
            "f16": np.array([1.5, -2.0], np.float16),
            "i64": np.arange(-3, 3, dtype=np.int64),
            "u8": np.arange(250, 256, dtype=np.uint8).reshape(2, 3),
            "i8": np.array([-128, 127], np.int8),
            "u16": np.array([65535], np.uint16),
            "u32": np.array([1, 2], np.uint32),
            "u64": np.array([2**64 - 1], np.uint64),
            "i16": np.array([-5], np.int16),
            "i32": np.array([[1], [2]], np.int32),
            "bool": np.array([True, False, True]),
            "scalar": np.array(3.5, np.float32),
            "empty": np.zeros((0, 4), np.float64),
            "c64": np.array([1 + 2j], np.complex64),
            "nonfinite": np.array([np.inf, -np.inf, np.nan], np.float32),
            "3d": np.arange(24, dtype=np.float64).reshape(2, 3, 4),
        },
        "list_of_arrays": [np.ones(2, np.float32), np.zeros(3, np.int32)],
    }


# ------------------------------------------------------------------ round trips


def test_round_trip_nested_types_exact(tmp_path):
    obj = _nested()
    p = tmp_path / "c.safetensors"
    gf.save(obj, p)
    got = gf.load(p)
    _same(obj, got)
    for a in (got["arrays"]["f32"], got["arrays"]["scalar"]):
        assert a.flags.writeable and a.flags.aligned and a.dtype.isnative


def test_round_trip_odd_arrays(tmp_path):
    base = np.arange(40, dtype=np.float64).reshape(5, 8)
    obj = {"strided": base[::2, 1::3], "fortran": np.asfortranarray(base), "bigendian":
           np.arange(5, dtype=">f4"), "tensor": gf.tensor([[1.0, 2.0]])}
    gf.save(obj, tmp_path / "c")
    got = gf.load(tmp_path / "c")
    np.testing.assert_array_equal(got["strided"], base[::2, 1::3])
    np.testing.assert_array_equal(got["fortran"], base)
    assert got["bigendian"].dtype == np.float32
    np.testing.assert_array_equal(got["bigendian"], np.arange(5))
    assert isinstance(got["tensor"], np.ndarray)
    got_t = gf.load(tmp_path / "c", tensors=True)
    assert isinstance(got_t["tensor"], gf.Tensor) and got_t["tensor"].shape == (1, 2)


def test_top_level_values(tmp_path):
    for obj in [np.arange(3), 5, "s", None, [1, np.ones(2)], (np.zeros(1),), math.nan]:
        gf.save(obj, tmp_path / "c")
        _same(obj, gf.load(tmp_path / "c"))


def test_array_names_are_dotted_paths_and_unique(tmp_path):
    obj = {"a": {"b": np.ones(1)}, "a.b": np.zeros(1), "l": [np.ones(2), {"x": np.ones(3)}],
           "d": {3: np.ones(4)}}
    gf.save(obj, tmp_path / "c")
    names = set(st_load_file(tmp_path / "c"))
    assert {"a.b", "l.0", "l.1.x", "d.3"} <= names and len(names) == 5
    assert any(n.startswith("a.b#") for n in names)  # a collision gets a suffix
    _same(obj, gf.load(tmp_path / "c"))


def test_loaded_arrays_do_not_share_the_file(tmp_path):
    p = tmp_path / "c"
    gf.save({"w": np.ones(1000, np.float32)}, p)
    w = gf.load(p)["w"]
    gf.save({"w": np.zeros(1000, np.float32)}, p)
    assert (w == 1).all()
    w[:] = 5
    assert (gf.load(p)["w"] == 0).all()


# ------------------------------------------------------------------ objects with state


def _mlp(seed=0, dtype=gf.float32):
    gf.manual_seed(seed)
    return gf.nn.Sequential(gf.nn.Linear(5, 7), gf.nn.BatchNorm1d(7), gf.nn.ReLU(),
                            gf.nn.Dropout(0.2), gf.nn.Linear(7, 3)).to(dtype)


def test_module_saved_by_state_dict_keys(tmp_path):
    net = _mlp()
    gf.save(net, tmp_path / "a")
    gf.save(net.state_dict(), tmp_path / "b")
    gf.save({"model": net}, tmp_path / "c")
    flat = st_load_file(tmp_path / "b")
    assert sorted(flat) == sorted(net.state_dict())
    assert sorted(st_load_file(tmp_path / "c")) == sorted("model." + k for k in flat)
    for name in "abc":
        ck = gf.load(tmp_path / name)
        sd = ck["model"] if name == "c" else ck
        assert isinstance(sd, OrderedDict)
        fresh = _mlp(seed=1)
        fresh.load_state_dict(sd)
        for (k, v), (_, w) in zip(net.state_dict().items(), fresh.state_dict().items()):
            _same(v, w, k)


def test_gf_weights_load_into_torch_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch as stt

    net = _mlp(seed=3)
    x = gf.randn(16, 5, generator=gf.Generator(0))
    net(x)  # training step: running stats and num_batches_tracked move
    net.eval()
    p = tmp_path / "gf.safetensors"
    gf.save(net.state_dict(), p)
    tnet = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(),
                               torch.nn.Dropout(0.2), torch.nn.Linear(7, 3)).eval()
    sd = stt.load_file(str(p))
    assert set(sd) == set(tnet.state_dict())
    tnet.load_state_dict(sd)  # strict: same keys, shapes, dtypes
    for k, v in net.state_dict().items():
        assert tnet.state_dict()[k].shape == v.shape
        np.testing.assert_array_equal(tnet.state_dict()[k].numpy(), v)
    with torch.no_grad():
        ty = tnet(torch.from_numpy(x.numpy())).numpy()
    np.testing.assert_allclose(net(x).detach().numpy(), ty, rtol=1e-5, atol=1e-6)

    # and back: a file written by PyTorch loads into a fresh gradfuse model
    torch.manual_seed(0)
    tnet2 = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(7, 3))
    tnet2(torch.randn(8, 5))
    q = tmp_path / "torch.safetensors"
    stt.save_file(tnet2.state_dict(), str(q))
    ck = gf.load(q)
    assert isinstance(ck, dict) and set(ck) == set(tnet2.state_dict())
    fresh = _mlp(seed=9)
    fresh.load_state_dict(ck)
    for k, v in tnet2.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v.numpy())
    ck_t = gf.load(q, tensors=True)
    assert all(isinstance(v, gf.Tensor) for v in ck_t.values())


def _sched_cases():
    return [
        ("LambdaLR", lambda o: lrs.LambdaLR(o, lambda e: 0.9**e)),
        ("MultiplicativeLR", lambda o: lrs.MultiplicativeLR(o, lambda e: 0.95)),
        ("StepLR", lambda o: lrs.StepLR(o, step_size=3, gamma=0.5)),
        ("MultiStepLR", lambda o: lrs.MultiStepLR(o, milestones=[2, 4, 4, 9], gamma=0.5)),
        ("ConstantLR", lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=4)),
        ("LinearLR", lambda o: lrs.LinearLR(o, start_factor=0.2, total_iters=6)),
        ("ExponentialLR", lambda o: lrs.ExponentialLR(o, gamma=0.9)),
        ("PolynomialLR", lambda o: lrs.PolynomialLR(o, total_iters=8, power=2.0)),
        ("CosineAnnealingLR", lambda o: lrs.CosineAnnealingLR(o, T_max=7, eta_min=1e-4)),
        ("CosineAnnealingWarmRestarts",
         lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
        ("CyclicLR", lambda o: lrs.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3)),
        ("OneCycleLR", lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=20)),
        ("ReduceLROnPlateau", lambda o: lrs.ReduceLROnPlateau(o, patience=1)),
        ("SequentialLR", lambda o: lrs.SequentialLR(
            o, [lrs.LinearLR(o, start_factor=0.5, total_iters=3), lrs.ExponentialLR(o, 0.9)],
            milestones=[3])),
        ("ChainedScheduler", lambda o: lrs.ChainedScheduler(
            [lrs.StepLR(o, 2, 0.5), lrs.ExponentialLR(o, 0.9)])),
    ]


@pytest.mark.parametrize("name, make", _sched_cases(), ids=[c[0] for c in _sched_cases()])
def test_scheduler_state_round_trip(tmp_path, name, make):
    def build():
        p = gf.nn.Parameter(np.zeros(3, np.float32))
        opt = gf.optim.SGD([p], lr=0.05, momentum=0.9)
        return opt, make(opt)

    def step(sched, e):
        if name == "ReduceLROnPlateau":
            sched.step(1.0)  # a metric that never improves: decays every patience+1 epochs
        else:
            sched.step()

    opt, sched = build()
    for e in range(5):
        step(sched, e)
    gf.save({"optimizer": opt, "scheduler": sched}, tmp_path / "c")
    opt2, sched2 = build()
    ck = gf.load(tmp_path / "c")
    opt2.load_state_dict(ck["optimizer"])
    sched2.load_state_dict(ck["scheduler"])
    for e in range(5, 12):
        step(sched, e)
        step(sched2, e)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
    assert sched.state_dict().keys() == sched2.state_dict().keys()


def test_scalers_and_generator_round_trip(tmp_path):
    X = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    mm = gf.data.MinMaxScaler(feature_range=(-1, 1)).fit(X)
    ss = gf.data.StandardScaler().fit(X)
    g = gf.Generator(77)
    gf.rand(5, generator=g)
    loader = gf.data.DataLoader(gf.data.TensorDataset(X), batch_size=3, shuffle=True, generator=4)
    gf.save({"mm": mm, "ss": ss, "unfitted": gf.data.StandardScaler(), "g": g, "loader": loader},
            tmp_path / "c")
    ck = gf.load(tmp_path / "c")
    mm2, ss2 = gf.data.MinMaxScaler(), gf.data.StandardScaler()
    mm2.load_state_dict(ck["mm"])
    ss2.load_state_dict(ck["ss"])
    gf.data.StandardScaler().load_state_dict(ck["unfitted"])
    assert mm2.feature_range == (-1, 1) and isinstance(ck["mm"]["feature_range"], tuple)
    np.testing.assert_array_equal(mm2.transform(X), mm.transform(X))
    np.testing.assert_array_equal(ss2.transform(X), ss.transform(X))
    g2 = gf.Generator(0).set_state(ck["g"])
    assert g2.offset == g.offset and g2.initial_seed() == 77
    l2 = gf.data.DataLoader(gf.data.TensorDataset(X), batch_size=3, shuffle=True, generator=0)
    l2.load_state_dict(ck["loader"])
    assert [b.numpy().tolist() for b, in l2] == [b.numpy().tolist() for b, in loader]


_OPTIMIZERS = [
    ("SGD", lambda ps: gf.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", lambda ps: gf.optim.Adam(ps, lr=1e-2, amsgrad=True)),
    ("AdamW", lambda ps: gf.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)),
    ("RMSprop", lambda ps: gf.optim.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True)),
    ("Adagrad", lambda ps: gf.optim.Adagrad(ps, lr=0.1)),
    ("NAdam", lambda ps: gf.optim.NAdam(ps, lr=1e-2)),
    ("RAdam", lambda ps: gf.optim.RAdam(ps, lr=1e-2)),
    ("Lion", lambda ps: gf.optim.Lion(ps, lr=1e-3)),
    ("LAMB", lambda ps: gf.optim.LAMB(ps, lr=1e-2)),
]


@pytest.mark.parametrize("name, make", _OPTIMIZERS, ids=[o[0] for o in _OPTIMIZERS])
def test_every_optimizer_resumes_bitwise(tmp_path, name, make):
    x = gf.randn(9, 5, generator=gf.Generator(1), dtype=gf.float64)

    def build(seed):
        net = _mlp(seed, dtype=gf.float64)
        params = list(net.parameters())
        # two groups, so param ids run across groups as in PyTorch's layout
        return net, make([{"params": params[:3]}, {"params": params[3:], "lr": 5e-3}])

    def steps(net, opt, k):
        for _ in range(k):
            opt.zero_grad()
            (net(x) ** 2).mean().backward()
            opt.step()

    net, opt = build(0)
    gf.manual_seed(3)
    steps(net, opt, 3)
    gf.save({"model": net, "optimizer": opt, "rng": gf.default_generator}, tmp_path / "c")
    steps(net, opt, 3)
    net2, opt2 = build(1)
    ck = gf.load(tmp_path / "c", tensors=True)
    net2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optimizer"])
    gf.set_rng_state(ck["rng"])
    steps(net2, opt2, 3)
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert a.tobytes() == b.tobytes(), k


# ------------------------------------------------------------------ resumption is bitwise


def _training(seed_offset=0):
    model = _mlp(seed=11 + seed_offset)
    opt = gf.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    sched = lrs.CosineAnnealingLR(opt, T_max=30)
    X, y = gf.data.make_classification(53, 5, n_classes=3, n_informative=3, seed=2)
    loader = gf.data.DataLoader(gf.data.TensorDataset(X, y), batch_size=8, shuffle=True,
                                generator=21 + seed_offset)
    return model, opt, sched, loader


def _train(model, opt, sched, loader, start, stop, save_at=None, path=None):
    """Steps start..stop-1 (global step numbers), one scheduler step per optimizer step;
    the loop rolls over epochs; saves a checkpoint right after step ``save_at``."""
    loss_fn = gf.nn.CrossEntropyLoss()
    step = start
    while step < stop:
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)  # dropout draws from the default generator
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == save_at:
                gf.save({"model": model, "optimizer": opt, "scheduler": sched,
                         "loader": loader, "rng": gf.get_rng_state(), "step": step}, path)
            if step == stop:
                return


def test_resume_is_bitwise_identical(tmp_path):
    total, cut = 23, 10  # 7 batches per epoch: the cut falls inside epoch 2
    path = tmp_path / "ckpt.safetensors"
    model, opt, sched, loader = _training()
    gf.manual_seed(100)
    _train(model, opt, sched, loader, 0, total, save_at=cut, path=path)
    reference = model.state_dict()

    # a fresh "process": new objects built differently, then restored from the file
    gf.manual_seed(999)
    model2, opt2, sched2, loader2 = _training(seed_offset=5)
    ck = gf.load(path)
    assert ck["step"] == cut and ck["loader"]["batches_done"] == cut - 7
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optimizer"])
    sched2.load_state_dict(ck["scheduler"])
    loader2.load_state_dict(ck["loader"])
    gf.set_rng_state(ck["rng"])
    _train(model2, opt2, sched2, loader2, ck["step"], total)
    for k, v in reference.items():
        assert v.tobytes() == model2.state_dict()[k].tobytes(), k
    # and the run was not trivially unchanged by the steps after the cut
    assert any(v.tobytes() != ck["model"][k].tobytes() for k, v in reference.items())


def test_resume_without_dropout_rng_diverges(tmp_path):
    """The RNG state matters: skip restoring it and the result differs (the test above
    would catch a checkpoint that forgot it)."""
    total, cut = 16, 9
    path = tmp_path / "ckpt"
    model, opt, sched, loader = _training()
    gf.manual_seed(100)
    _train(model, opt, sched, loader, 0, total, save_at=cut, path=path)
    model2, opt2, sched2, loader2 = _training(seed_offset=5)
    ck = gf.load(path)
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optimizer"])
    sched2.load_state_dict(ck["scheduler"])
    loader2.load_state_dict(ck["loader"])
    gf.manual_seed(12345)
    _train(model2, opt2, sched2, loader2, cut, total)
    assert any(v.tobytes() != model2.state_dict()[k].tobytes()
               for k, v in model.state_dict().items())


# ------------------------------------------------------------------ bad input and bad files


def _files_in(d):
    return sorted(os.listdir(d))


def test_save_rejects_unsupported_values_before_writing(tmp_path):
    p = tmp_path / "c"
    gf.save({"v": 1}, p)
    before = p.read_bytes()
    cyc = []
    cyc.append(cyc)
    for bad, match in [
        ({"x": object()}, r"obj\['x'\].*object"),
        ({"x": [1, {"y": np.array(["a"])}]}, r"obj\['x'\]\[1\]\['y'\].*dtype"),
        ({"x": np.array([None], dtype=object)}, "dtype object"),
        ({"x": {1, 2}}, "set"),
        ({"x": np.complex128(1j)}, "complex128"),
        ({frozenset(): 1}, "dict key"),
        ({"k": lambda: 0}, "function"),
    ]:
        with pytest.raises(TypeError, match=match):
            gf.save(bad, p)
    with pytest.raises(ValueError, match="cycle"):
        gf.save({"c": cyc}, p)
    with pytest.raises(TypeError, match="path"):
        gf.save({}, 3)
    assert p.read_bytes() == before
    assert _files_in(tmp_path) == ["c"]  # no temporary files left behind


def test_load_missing_empty_truncated_foreign(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ValueError, match="no such checkpoint") as ei:
        gf.load(missing)
    assert isinstance(ei.value, FileNotFoundError) and str(missing) in str(ei.value)

    good = tmp_path / "good"
    gf.save({"model": _mlp(), "epoch": 1}, good)
    raw = good.read_bytes()
    cases = {"empty": b"", "text": b"this is a text file, not a checkpoint\n",
             "npy": np.lib.format.header_data_from_array_1_0(np.zeros(2)).__repr__().encode(),
             "zeros": bytes(100), "header_only": raw[:20]}
    for cut in (len(raw) - 1, len(raw) // 2, 9):
        cases[f"trunc{cut}"] = raw[:cut]
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError) as ei:
            gf.load(p)
        assert isinstance(ei.value, ValueError) and str(p) in str(ei.value), name
    with pytest.raises(CheckpointError, match="directory"):
        gf.load(tmp_path)
    with pytest.raises(TypeError, match="tensors"):
        gf.load(good, tensors="yes")
    assert gf.load(good)["epoch"] == 1  # the original is fine


def _write_with_metadata(path, arrays, metadata):
    st_save_file(arrays, str(path), metadata=metadata)


def test_load_wrong_version_and_corrupt_metadata(tmp_path):
    ok_struct = json.dumps({"w": {"$t": "array", "v": "w"}})
    arrays = {"w": np.ones(2, np.float32)}
    cases = [
        ({"gradfuse.format": "99", "gradfuse.structure": ok_struct}, "format version '99'"),
        ({"gradfuse.format": "1"}, "structure"),
        ({"gradfuse.format": "1", "gradfuse.structure": "{not json"}, "corrupt"),
        ({"gradfuse.format": "1", "gradfuse.structure": '{"w": NaN}'}, "corrupt"),
        ({"gradfuse.format": "1", "gradfuse.structure":
          json.dumps({"w": {"$t": "array", "v": "missing"}})}, "does not hold"),
        ({"gradfuse.format": "1", "gradfuse.structure": json.dumps({"w": {"$t": "nope",
                                                                          "v": 1}})},
         "unknown tag"),
        ({"gradfuse.format": "1", "gradfuse.structure": json.dumps({"x": 1})}, "not in its"),
    ]
    for i, (meta, match) in enumerate(cases):
        p = tmp_path / f"m{i}"
        _write_with_metadata(p, arrays, meta)
        with pytest.raises(CheckpointError, match=match) as ei:
            gf.load(p)
        assert str(p) in str(ei.value)
    # a foreign safetensors file (no gradfuse metadata) is a flat dict of arrays
    p = tmp_path / "foreign"
    _write_with_metadata(p, arrays, {"format": "pt"})
    _same(gf.load(p), {"w": np.ones(2, np.float32)})


# ------------------------------------------------------------------ kill -9 during a save

_SAVER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import gradfuse as gf

    path, mode = sys.argv[1], sys.argv[2]
    big = np.empty(4_000_000, np.float32)   # 16 MB per save
    k = 0
    while True:
        k += 1
        big.fill(k)
        if mode == "hang" and k == 2:
            real = os.fsync
            def hang(fd):
                print("in-fsync", flush=True)
                time.sleep(60)
            os.fsync = hang      # the temp file is written, the rename has not happened
        gf.save({"version": k, "w": big, "v": np.full(3, k)}, path)
        print("saved", k, flush=True)
""")


def _start_saver(tmp_path, mode):
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    target = tmp_path / "ckpt.safetensors"
    proc = subprocess.Popen([sys.executable, str(script), str(target), mode],
                            stdout=subprocess.PIPE, text=True)
    return proc, target


def _check_consistent(target):
    ck = gf.load(target)
    k = ck["version"]
    assert k >= 1
    assert (ck["w"] == k).all() and (ck["v"] == k).all()
    return k


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    proc, target = _start_saver(tmp_path, "hang")
    try:
        assert proc.stdout.readline().split() == ["saved", "1"]
        assert proc.stdout.readline().strip() == "in-fsync"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert _check_consistent(target) == 1
    strays = [f for f in _files_in(tmp_path) if f.endswith(".tmp")]
    assert len(strays) == 1 and strays[0].startswith(".ckpt.safetensors.")
    # the next save works and replaces the target
    gf.save({"version": 7, "w": np.full(2, 7, np.float32), "v": np.full(3, 7)}, target)
    assert _check_consistent(target) == 7


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.041])
def test_kill_at_random_moments_leaves_a_whole_checkpoint(tmp_path, delay):
    import time

    proc, target = _start_saver(tmp_path, "loop")
    try:
        assert proc.stdout.readline().split() == ["saved", "1"]
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    _check_consistent(target)
