"""gf.data: TensorDataset, Subset, random_split, DataLoader, IDX files and synthetic data sets."""

import gzip
import struct

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.data import DataLoader, Subset, TensorDataset, random_split


def _ds(n, d=3):
    X = np.arange(n * d, dtype=np.float32).reshape(n, d)
    return TensorDataset(X, np.arange(n, dtype=np.int64))


def _epoch_labels(loader):
    return [yb.numpy().tolist() for _, yb in loader]


# ------------------------------------------------------------------ TensorDataset / Subset


def test_tensor_dataset_rows_and_gather():
    X = gf.tensor(np.arange(12.0, dtype=np.float32).reshape(4, 3))
    y = np.array([3, 1, 4, 1])
    ds = TensorDataset(X, y)
    assert len(ds) == 4
    x2, y2 = ds[2]
    assert isinstance(x2, gf.Tensor) and x2.numpy().tolist() == [6.0, 7.0, 8.0]
    assert int(y2.item()) == 4
    gx, gy = ds.gather(np.array([3, 0, -1]))
    np.testing.assert_array_equal(gx, X.numpy()[[3, 0, -1]])
    np.testing.assert_array_equal(gy, y[[3, 0, -1]])
    assert ds.tensors[0].data is X.data  # no copy of the data


def test_tensor_dataset_bad_arguments():
    with pytest.raises(ValueError, match=r"tensors\[1\].*size mismatch"):
        TensorDataset(np.zeros((4, 2)), np.zeros(5))
    with pytest.raises(TypeError, match=r"tensors\[0\]"):
        TensorDataset([1, 2, 3])
    with pytest.raises(ValueError, match="tensors"):
        TensorDataset()
    with pytest.raises(ValueError, match=r"tensors\[0\].*scalar"):
        TensorDataset(np.array(1.0, np.float32))
    with pytest.raises(IndexError, match="indices.*out of bounds"):
        _ds(4).gather([4])


def test_tensor_dataset_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    ds = TensorDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 2]))
    (xb, yb), = DataLoader(ds, batch_size=3)
    np.testing.assert_array_equal(xb.numpy(), np.arange(6.0, dtype=np.float32).reshape(3, 2))
    assert yb.dtype == np.int64


def test_subset_indexing_and_gather():
    ds = _ds(6)
    sub = Subset(ds, [5, 1, 3])
    assert len(sub) == 3
    assert int(sub[0][1].item()) == 5
    np.testing.assert_array_equal(sub.gather([2, 0])[1], [3, 5])
    with pytest.raises(IndexError, match="indices"):
        Subset(ds, [6])
    with pytest.raises(TypeError, match="dataset"):
        Subset(42, [0])


# ------------------------------------------------------------------ DataLoader coverage


@pytest.mark.parametrize("n", [1, 7, 10, 33])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 64])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(n, batch_size, shuffle, drop_last):
    ds = _ds(n)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                        generator=3)
    full, rem = divmod(n, batch_size)
    expected_batches = full if drop_last else full + (rem > 0)
    assert len(loader) == expected_batches
    for _ in range(2):  # two epochs
        seen = []
        nb = 0
        for xb, yb in loader:
            assert isinstance(xb, gf.Tensor) and isinstance(yb, gf.Tensor)
            assert xb.shape[1:] == (3,) and xb.dtype == np.float32 and yb.dtype == np.int64
            assert xb.shape[0] == yb.shape[0] <= batch_size
            if drop_last:
                assert xb.shape[0] == batch_size
            # rows stay aligned across the arrays of a sample
            np.testing.assert_array_equal(xb.numpy()[:, 0], 3.0 * yb.numpy())
            seen.extend(yb.numpy().tolist())
            nb += 1
        assert nb == expected_batches
        assert len(seen) == len(set(seen))  # no sample twice
        if drop_last:
            assert len(seen) == full * batch_size
        else:
            assert sorted(seen) == list(range(n))  # every sample
        if not shuffle:
            assert seen == list(range(len(seen)))


def test_shuffle_order_is_the_documented_permutation():
    n, bs = 37, 8
    loader = DataLoader(_ds(n), batch_size=bs, shuffle=True, generator=gf.Generator(11))
    ref = gf.Generator(11)
    for _ in range(3):
        # the documented derivation: argsort (stable) of n float64 uniforms, one fill per epoch
        u = gf.rand(n, dtype=gf.float64, generator=ref).numpy()
        perm = np.argsort(u, kind="stable")
        got = np.concatenate([yb.numpy() for _, yb in loader])
        np.testing.assert_array_equal(got, perm)
    # the generator moved one fill of n float64 values (16 blocks per 32 values) per epoch
    assert loader.generator.offset == 3 * 16 * -(-n // 32)


def test_reproducible_from_seed_and_different_across_epochs():
    a = DataLoader(_ds(50), batch_size=7, shuffle=True, generator=123)
    b = DataLoader(_ds(50), batch_size=7, shuffle=True, generator=gf.Generator(123))
    ea1, ea2 = _epoch_labels(a), _epoch_labels(a)
    assert ea1 == _epoch_labels(b) and ea2 == _epoch_labels(b)
    assert ea1 != ea2
    c = DataLoader(_ds(50), batch_size=7, shuffle=True, generator=124)
    assert _epoch_labels(c) != ea1


def test_default_generator_seeds_the_loader():
    gf.manual_seed(5)
    a = _epoch_labels(DataLoader(_ds(40), batch_size=8, shuffle=True))
    gf.manual_seed(5)
    b = _epoch_labels(DataLoader(_ds(40), batch_size=8, shuffle=True))
    gf.manual_seed(6)
    c = _epoch_labels(DataLoader(_ds(40), batch_size=8, shuffle=True))
    assert a == b and a != c
    # without shuffle nothing is drawn: building a loader leaves the default stream alone
    gf.manual_seed(5)
    plain = DataLoader(_ds(3))
    assert isinstance(plain.generator, gf.Generator) and gf.default_generator.offset == 0
    _epoch_labels(plain)
    assert plain.generator.offset == 0


def test_generator_state_resumes_future_order():
    loader = DataLoader(_ds(30), batch_size=4, shuffle=True, generator=9)
    _epoch_labels(loader)
    state = loader.generator.get_state()
    later = [_epoch_labels(loader) for _ in range(2)]
    fresh = DataLoader(_ds(30), batch_size=4, shuffle=True, generator=0)
    fresh.generator.set_state(state)
    assert [_epoch_labels(fresh) for _ in range(2)] == later


@pytest.mark.parametrize("shuffle", [False, True])
def test_state_dict_resumes_mid_epoch(shuffle):
    ref = DataLoader(_ds(23), batch_size=4, shuffle=shuffle, generator=2)
    order = [_epoch_labels(ref) for _ in range(3)]
    flat = [b for ep in order for b in ep]
    loader = DataLoader(_ds(23), batch_size=4, shuffle=shuffle, generator=2)
    _epoch_labels(loader)
    got = []
    for k, (_, yb) in enumerate(loader):
        got.append(yb.numpy().tolist())
        if k == 2:
            sd = loader.state_dict()
            break
    assert sd["batches_done"] == 3
    resumed = DataLoader(_ds(23), batch_size=4, shuffle=shuffle, generator=777)
    resumed.load_state_dict(sd)
    assert resumed.state_dict()["batches_done"] == 3
    got += _epoch_labels(resumed)  # the rest of epoch 1
    got += _epoch_labels(resumed)  # epoch 2
    assert got == flat[len(order[0]):]


def test_state_dict_between_epochs_is_the_generator_state():
    loader = DataLoader(_ds(10), batch_size=5, shuffle=True, generator=4)
    for _ in loader:
        pass
    sd = loader.state_dict()
    assert sd["batches_done"] == 0
    np.testing.assert_array_equal(sd["generator"], loader.generator.get_state().numpy())


def test_load_state_dict_rejects_bad_input_unchanged():
    loader = DataLoader(_ds(10), batch_size=5, shuffle=True, generator=4)
    before = loader.generator.get_state().numpy()
    good = loader.state_dict()
    for bad, match in [
        ({"generator": good["generator"]}, "batches_done"),
        ({**good, "batches_done": 3}, "batches_done"),
        ({**good, "batches_done": -1}, "batches_done"),
        ({**good, "batches_done": 1.0}, "batches_done"),
        ({**good, "generator": None}, "generator"),
        ({**good, "generator": np.zeros(3, np.uint8)}, "new_state"),
        ({**good, "generator": np.zeros(16, np.int64)}, "new_state"),
        ([("generator", 1)], "state_dict"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            loader.load_state_dict(bad)
        np.testing.assert_array_equal(loader.generator.get_state().numpy(), before)
        assert loader.state_dict()["batches_done"] == 0


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                      (True, TypeError), ("4", TypeError), (None, TypeError)])
def test_bad_batch_size_is_named(bad, exc):
    with pytest.raises(exc, match="batch_size"):
        DataLoader(_ds(4), batch_size=bad)


def test_bad_loader_arguments_are_named():
    with pytest.raises(TypeError, match="shuffle"):
        DataLoader(_ds(4), shuffle="yes")
    with pytest.raises(TypeError, match="drop_last"):
        DataLoader(_ds(4), drop_last=1)
    with pytest.raises(TypeError, match="generator"):
        DataLoader(_ds(4), shuffle=True, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="seed"):
        DataLoader(_ds(4), shuffle=True, generator=-1)
    with pytest.raises(TypeError, match="dataset"):
        DataLoader([1, 2, 3][0])
    with pytest.raises(ValueError, match="dataset.*empty"):
        DataLoader(TensorDataset(np.zeros((0, 2))))


class _Squares:
    """A map-style data set without gather: samples are (x, y, dict) built per index."""

    def __init__(self, n):
        self.n = n
        self.calls = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls += 1
        return np.array([i, i * i], np.float64), i % 3


def test_generic_dataset_is_collated_per_sample():
    ds = _Squares(11)
    loader = DataLoader(ds, batch_size=4, shuffle=True, generator=0)
    seen = []
    for xb, yb in loader:
        assert xb.dtype == np.float64 and xb.shape[1] == 2
        np.testing.assert_array_equal(xb.numpy()[:, 1], xb.numpy()[:, 0] ** 2)
        np.testing.assert_array_equal(yb.numpy(), xb.numpy()[:, 0].astype(np.int64) % 3)
        seen.extend(xb.numpy()[:, 0].astype(int).tolist())
    assert sorted(seen) == list(range(11)) and ds.calls == 11
    # a Subset of it fetches per sample too, through Subset.gather
    (xb, _), = DataLoader(Subset(ds, [3, 1]), batch_size=2)
    np.testing.assert_array_equal(xb.numpy()[:, 0], [3, 1])


def test_collate_dicts_and_errors():
    b = gf.data.collate([{"x": np.zeros(2), "y": 1}, {"x": np.ones(2), "y": 2}])
    assert b["x"].shape == (2, 2) and b["y"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="shapes"):
        gf.data.collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="fields"):
        gf.data.collate([(1, 2), (1,)])


def test_tensor_dataset_loader_does_not_call_getitem():
    class Counting(TensorDataset):
        calls = 0

        def __getitem__(self, i):
            Counting.calls += 1
            return super().__getitem__(i)

    loader = DataLoader(Counting(np.zeros((100, 2)), np.arange(100)), batch_size=16, shuffle=True,
                        generator=0)
    assert sum(xb.shape[0] for xb, _ in loader) == 100
    assert Counting.calls == 0


# ------------------------------------------------------------------ random_split


@pytest.mark.parametrize("lengths, sizes", [([3, 7], [3, 7]), ([0.5, 0.5], [5, 5]),
                                            ([0.33, 0.33, 0.34], [4, 3, 3]),
                                            ([1.0], [10]), ([10, 0], [10, 0])])
def test_random_split_disjoint_and_complete(lengths, sizes):
    parts = random_split(_ds(10), lengths, generator=gf.Generator(0))
    assert [len(p) for p in parts] == sizes
    allidx = np.concatenate([p.indices for p in parts])
    assert sorted(allidx.tolist()) == list(range(10))
    again = random_split(_ds(10), lengths, generator=0)
    for p, q in zip(parts, again):
        np.testing.assert_array_equal(p.indices, q.indices)
    # the parts load through the fast path and give their own samples
    for p in parts:
        if len(p):
            got = np.concatenate([yb.numpy() for _, yb in DataLoader(p, batch_size=3)])
            np.testing.assert_array_equal(got, p.indices)


def test_random_split_matches_torch_lengths():
    torch = pytest.importorskip("torch")
    for n, fr in [(10, [0.33, 0.33, 0.34]), (7, [0.5, 0.5]), (101, [0.8, 0.1, 0.1])]:
        ours = [len(p) for p in random_split(_ds(n), fr, generator=0)]
        theirs = [len(p) for p in torch.utils.data.random_split(range(n), fr)]
        assert ours == theirs


def test_random_split_bad_lengths():
    with pytest.raises(ValueError, match="lengths.*sum"):
        random_split(_ds(10), [3, 3])
    with pytest.raises(ValueError, match="lengths.*sum to 1"):
        random_split(_ds(10), [0.5, 0.4])
    with pytest.raises(ValueError, match="lengths"):
        random_split(_ds(10), [11, -1])
    with pytest.raises(TypeError, match="lengths"):
        random_split(_ds(10), 10)
    with pytest.raises(TypeError, match="lengths"):
        random_split(_ds(10), ["5", "5"])


def test_random_split_default_generator_advances():
    gf.manual_seed(0)
    a = random_split(_ds(20), [10, 10])
    b = random_split(_ds(20), [10, 10])
    assert not np.array_equal(a[0].indices, b[0].indices)
    gf.manual_seed(0)
    np.testing.assert_array_equal(random_split(_ds(20), [10, 10])[0].indices, a[0].indices)


def test_permutation_reference():
    g = gf.Generator(99)
    p = gf.data.permutation(1000, g)
    assert sorted(p.tolist()) == list(range(1000)) and p.dtype == np.int64
    u = gf.rand(1000, dtype=gf.float64, generator=gf.Generator(99)).numpy()
    np.testing.assert_array_equal(p, np.argsort(u, kind="stable"))
    assert gf.data.permutation(0, g).tolist() == []
    assert gf.data.permutation(1, g).tolist() == [0]
    with pytest.raises(ValueError, match="n"):
        gf.data.permutation(-1, g)
    with pytest.raises(TypeError, match="generator"):
        gf.data.permutation(3, 0)


def test_permutation_with_tied_keys_is_the_stable_order(monkeypatch):
    """Ties (chance ~ n^2 / 2^54) take the stable sort, so the documented order holds."""
    from gradfuse import random as R

    def coarse(arr, a, b, generator=None):  # keys in {0, .25, .5, .75}: many ties
        arr[...] = np.floor(np.random.default_rng(0).uniform(size=arr.shape) * 4) / 4

    monkeypatch.setattr(R, "_fill_uniform", coarse)
    p = gf.data.permutation(500, gf.Generator(0))
    u = np.empty(500)
    coarse(u, 0, 1)
    np.testing.assert_array_equal(p, np.argsort(u, kind="stable"))
    assert not np.array_equal(p, np.argsort(u))  # the unstable sort would differ here


# ------------------------------------------------------------------ IDX files

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
          np.float64: 0x0E}


def _idx_bytes(arr):
    """An IDX file written from the format description, independently of gradfuse."""
    code = _CODES[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 5), (1, 1, 1, 7), (0, 3)])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, rng, dtype, shape, compress):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        arr = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        arr = rng.standard_normal(shape).astype(dtype)
    data = _idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(data) if compress else data)
    got = gf.data.load_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == shape and got.flags.writeable
    np.testing.assert_array_equal(got, arr)
    assert gf.data.load_idx(str(path)).shape == shape


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    p = tmp_path / "plain-name"
    p.write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(gf.data.load_idx(p), arr)


def test_idx_errors_name_the_path(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    data = _idx_bytes(arr)
    cases = {
        "trunc": (data[:-3], "truncated IDX file"),
        "trunc_header": (data[:9], "truncated IDX header"),
        "magic": (b"\x01\x02" + data[2:], "magic"),
        "code": (data[:2] + b"\x0a" + data[3:], "type byte 0x0a"),
        "extra": (data + b"\x00\x00", "2 unexpected bytes"),
        "tiny": (b"\x00\x00", "only 2 bytes"),
        "gztrunc": (gzip.compress(data)[:-12], "gzip"),
        "gzbody": (gzip.compress(data[:-4]), "truncated IDX file"),
    }
    for name, (content, match) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match=match) as ei:
            gf.data.load_idx(p)
        assert str(p) in str(ei.value)
    with pytest.raises(FileNotFoundError):
        gf.data.load_idx(tmp_path / "missing")
    with pytest.raises(TypeError, match="path"):
        gf.data.load_idx(3)


# ------------------------------------------------------------------ bundled / synthetic sets


def test_load_digits():
    pytest.importorskip("sklearn")
    X, y = gf.data.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.max() == 16
    assert y.shape == (1797,) and y.dtype == np.int64 and sorted(set(y.tolist())) == list(range(10))
    Xt, yt = gf.data.load_digits(return_tensors=True)
    assert isinstance(Xt, gf.Tensor) and np.array_equal(Xt.numpy(), X)


def test_load_digits_without_sklearn(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"pip install gradfuse\[examples\]"):
        gf.data.load_digits()


@pytest.mark.parametrize("maker, kwargs, shape", [
    (gf.data.make_spirals, dict(n_samples=301, n_classes=4, noise=0.1), (301, 2)),
    (gf.data.make_classification, dict(n_samples=97, n_features=7, n_classes=3, n_informative=3),
     (97, 7)),
    (gf.data.make_classification, dict(n_samples=40, n_features=20, n_classes=5,
                                       n_informative=18), (40, 20)),
])
def test_synthetic_classification_shapes_and_determinism(maker, kwargs, shape):
    X, y = maker(**kwargs, seed=7)
    assert X.shape == shape and X.dtype == np.float32 and np.isfinite(X).all()
    assert y.shape == (shape[0],) and y.dtype == np.int64
    k = kwargs["n_classes"]
    counts = np.bincount(y, minlength=k)
    assert counts.max() - counts.min() <= 1 and len(counts) == k  # balanced
    X2, y2 = maker(**kwargs, seed=7)
    assert X.tobytes() == X2.tobytes() and np.array_equal(y, y2)
    X3, _ = maker(**kwargs, seed=8)
    assert not np.array_equal(X, X3)


def test_spirals_geometry():
    X, y = gf.data.make_spirals(300, n_classes=3, noise=0.0, seed=0)
    r = np.hypot(X[:, 0], X[:, 1])
    for c in range(3):
        rc = np.sort(r[y == c])
        np.testing.assert_allclose(rc, np.linspace(0, 1, 100), atol=1e-6)


def test_classification_is_separable_along_informative_features():
    X, y = gf.data.make_classification(2000, 6, n_classes=4, n_informative=2, class_sep=3.0,
                                       seed=0)
    # nearest class mean on the informative features classifies nearly everything
    means = np.stack([X[y == c, :2].mean(0) for c in range(4)])
    pred = np.argmin(((X[:, None, :2] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == y).mean() > 0.95
    # the noise features carry nothing: their class means are all near 0
    noise_means = np.stack([X[y == c, 2:].mean(0) for c in range(4)])
    assert np.abs(noise_means).max() < 0.2


def test_make_regression():
    X, y, w = gf.data.make_regression(80, 5, noise=0.0, seed=3, n_informative=3, bias=2.0,
                                      coef=True)
    assert X.shape == (80, 5) and X.dtype == np.float32 and y.dtype == np.float32
    assert (w[3:] == 0).all() and ((w[:3] >= 0) & (w[:3] < 100)).all()
    np.testing.assert_allclose(y, X.astype(np.float64) @ w + 2.0, rtol=1e-6)
    Xn, yn = gf.data.make_regression(80, 5, noise=1.5, seed=3, n_informative=3, bias=2.0)
    np.testing.assert_array_equal(Xn, X)
    resid = yn - (X.astype(np.float64) @ w + 2.0)
    assert 0.8 < resid.std() < 2.2
    X2, y2 = gf.data.make_regression(80, 5, noise=1.5, seed=3, n_informative=3, bias=2.0)
    assert y2.tobytes() == yn.tobytes()


def test_synthetic_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_samples"):
        gf.data.make_spirals(2, n_classes=3)
    with pytest.raises(ValueError, match="n_classes"):
        gf.data.make_spirals(10, n_classes=1)
    with pytest.raises(ValueError, match="noise"):
        gf.data.make_spirals(10, noise=-1.0)
    with pytest.raises(ValueError, match="seed"):
        gf.data.make_spirals(10, seed=-3)
    with pytest.raises(ValueError, match="n_classes"):
        gf.data.make_classification(10, 5, n_classes=5, n_informative=2)
    with pytest.raises(ValueError, match="n_features"):
        gf.data.make_classification(10, 1, n_informative=2)
    with pytest.raises(TypeError, match="n_samples"):
        gf.data.make_regression(10.0, 3)
    with pytest.raises(ValueError, match="n_informative"):
        gf.data.make_regression(10, 3, n_informative=4)
