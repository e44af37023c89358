"""gf.data scalers and image scaling: numpy references always, scikit-learn parity when installed.

Sizes are odd on purpose: 1 row, 1 feature, feature counts that are not multiples of the
16-lane segments (3, 37, 65), more rows than one block/superblock of the stats kernel, and more
than 2048 features (the column-tile path).
"""

import math

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.data import MinMaxScaler, NotFittedError, StandardScaler

F32_EPS = np.finfo(np.float32).eps
F64_EPS = np.finfo(np.float64).eps

SHAPES = [(1, 1), (1, 5), (7, 1), (9, 3), (129, 37), (300, 65), (20, 2100), (5000, 4)]
DTYPES = [np.float32, np.float64]


# --------------------------------------------------------------------------- references

def ref_minmax(X, feature_range=(0, 1)):
    """scikit-learn's MinMaxScaler in float64 numpy (attributes and transform)."""
    x = np.asarray(X, np.float64)
    lo, hi = feature_range
    dmin, dmax = np.nanmin(x, axis=0), np.nanmax(x, axis=0)
    rng = dmax - dmin
    eps = F32_EPS if np.asarray(X).dtype == np.float32 else F64_EPS
    scale = (hi - lo) / np.where(rng < 10 * eps, 1.0, rng)
    return {"data_min_": dmin, "data_max_": dmax, "data_range_": rng, "scale_": scale,
            "min_": lo - dmin * scale, "out": (x - dmin) * scale + lo}


def ref_standard(X):
    """scikit-learn's StandardScaler in float64 numpy (attributes and transform)."""
    x = np.asarray(X, np.float64)
    n = (~np.isnan(x)).sum(axis=0)
    mean = np.nanmean(x, axis=0)
    var = np.nanmean((x - mean) ** 2, axis=0)  # two-pass
    const = var <= n * F64_EPS * var + (n * mean * F64_EPS) ** 2
    scale = np.where(const, 1.0, np.sqrt(var))
    return {"mean_": mean, "var_": var, "scale_": scale, "out": (x - mean) / scale}


def tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def data(rng, shape, dtype, offset=3.0, spread=2.0):
    return (rng.standard_normal(shape) * spread + offset).astype(dtype)


# --------------------------------------------------------------------------- vs numpy

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("feature_range", [(0, 1), (-1.0, 3.5)])
def test_minmax_matches_numpy(rng, dtype, shape, feature_range):
    X = data(rng, shape, dtype)
    s = MinMaxScaler(feature_range)
    out = s.fit_transform(X)
    want = ref_minmax(X, feature_range)
    for k in ("data_min_", "data_max_", "data_range_", "scale_", "min_"):
        np.testing.assert_allclose(getattr(s, k), want[k], rtol=1e-12, atol=1e-12, err_msg=k)
        assert getattr(s, k).dtype == np.float64
    assert out.dtype == dtype and out.shape == X.shape
    np.testing.assert_allclose(out, want["out"], **tol(dtype))
    assert s.n_samples_seen_ == shape[0] and s.n_features_in_ == shape[1]
    np.testing.assert_allclose(s.inverse_transform(out), X, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_standard_matches_numpy(rng, dtype, shape):
    X = data(rng, shape, dtype)
    s = StandardScaler()
    out = s.fit_transform(X)
    want = ref_standard(X)
    for k in ("mean_", "var_", "scale_"):
        np.testing.assert_allclose(getattr(s, k), want[k], rtol=1e-12, atol=1e-13, err_msg=k)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, want["out"], **tol(dtype))
    assert s.n_samples_seen_ == shape[0] and isinstance(s.n_samples_seen_, int)
    np.testing.assert_allclose(s.inverse_transform(out), X, **tol(dtype))


@pytest.mark.parametrize("with_mean,with_std", [(True, False), (False, True), (False, False)])
def test_standard_flags(rng, with_mean, with_std):
    X = data(rng, (41, 6), np.float64)
    s = StandardScaler(with_mean=with_mean, with_std=with_std).fit(X)
    want = ref_standard(X)
    mean = X.mean(axis=0) if with_mean else 0.0
    scale = want["scale_"] if with_std else 1.0
    np.testing.assert_allclose(s.transform(X), (X - mean) / scale, rtol=1e-12, atol=1e-12)
    assert (s.mean_ is None) == (not with_mean and not with_std)
    assert (s.var_ is None) == (s.scale_ is None) == (not with_std)
    if s.mean_ is not None:
        np.testing.assert_allclose(s.mean_, want["mean_"], rtol=1e-13)
    np.testing.assert_allclose(s.inverse_transform(s.transform(X)), X, rtol=1e-12)
    assert s.n_samples_seen_ == 41


def test_standard_is_accurate_far_from_zero(rng):
    # mean 1e6, std 1e-3: sum(x^2) - n mean^2 would lose every digit; blocks shifted by a value
    # of the column and merged pairwise keep them (checked against exactly rounded sums)
    X = 1e6 + 1e-3 * rng.standard_normal((20000, 3))
    X[:, 2] -= 2e6  # a negative mean too
    s = StandardScaler().fit(X)
    mean = np.array([math.fsum(c) for c in X.T]) / len(X)
    var = np.array([math.fsum((c - m) ** 2) for c, m in zip(X.T, mean)]) / len(X)
    np.testing.assert_allclose(s.mean_, mean, rtol=2 * F64_EPS)
    np.testing.assert_allclose(s.var_, var, rtol=1e-12)


def test_integer_bool_and_float16_input_give_float32(rng):
    Xi = rng.integers(-50, 200, (30, 4))
    s = StandardScaler().fit(Xi)
    out = s.transform(Xi)
    assert out.dtype == np.float32
    np.testing.assert_allclose(s.mean_, Xi.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(out, ref_standard(Xi)["out"], rtol=1e-6, atol=1e-6)
    Xu = Xi.astype(np.uint8)
    assert MinMaxScaler().fit_transform(Xu).dtype == np.float32
    Xb = rng.random((10, 3)) > 0.5
    assert MinMaxScaler().fit(Xb).transform(Xb).dtype == np.float32
    Xh = Xi.astype(np.float16)
    assert StandardScaler().fit_transform(Xh).dtype == np.float32
    # big int64 values are converted exactly (through float64), not via float32
    big = np.array([[2**40 + 1], [2**40 + 3]], dtype=np.int64)
    np.testing.assert_array_equal(MinMaxScaler().fit(big).data_min_, [2.0**40 + 1])


def test_tensor_in_tensor_out(rng):
    X = data(rng, (17, 3), np.float32)
    s = StandardScaler().fit(gf.tensor(X))
    out = s.transform(gf.tensor(X, requires_grad=True))
    assert isinstance(out, gf.Tensor) and out.dtype == np.float32 and not out.requires_grad
    np.testing.assert_allclose(out.numpy(), s.transform(X), rtol=0, atol=0)
    back = s.inverse_transform(out)
    assert isinstance(back, gf.Tensor)
    assert isinstance(MinMaxScaler().fit_transform(gf.tensor(X)), gf.Tensor)
    np.testing.assert_allclose(StandardScaler().fit(X.tolist()).mean_, s.mean_)  # lists too


def test_non_contiguous_input(rng):
    X = data(rng, (40, 10), np.float64)
    Xf = np.asfortranarray(X)
    view = X[::2, ::3]
    s = StandardScaler().fit(Xf)
    np.testing.assert_allclose(s.transform(Xf), ref_standard(X)["out"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(MinMaxScaler().fit_transform(view), ref_minmax(view)["out"],
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- streaming fit

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1000, 7), (20001, 3), (300, 2100)], ids=str)
def test_partial_fit_ten_chunks_equals_fit(rng, dtype, shape):
    X = data(rng, shape, dtype, offset=1e3, spread=1.0)
    cuts = np.sort(rng.choice(np.arange(1, shape[0]), 9, replace=False))  # uneven chunks
    for cls in (StandardScaler, MinMaxScaler):
        whole = cls().fit(X)
        part = cls()
        for chunk in np.split(X, cuts):
            part.partial_fit(chunk)
        attrs = ("mean_", "var_", "scale_") if cls is StandardScaler else (
            "data_min_", "data_max_", "scale_", "min_")
        for k in attrs:
            np.testing.assert_allclose(getattr(part, k), getattr(whole, k), rtol=1e-12,
                                       atol=0, err_msg=k)
        assert part.n_samples_seen_ == whole.n_samples_seen_ == shape[0]
        np.testing.assert_allclose(part.transform(X), whole.transform(X), **tol(dtype))


def test_fit_forgets_and_partial_fit_continues(rng):
    A, B = data(rng, (20, 3), np.float64), data(rng, (30, 3), np.float64, offset=-5)
    s = StandardScaler().fit(A).fit(B)
    np.testing.assert_allclose(s.mean_, B.mean(axis=0), rtol=1e-13)
    s.partial_fit(A)
    np.testing.assert_allclose(s.mean_, np.vstack([B, A]).mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(s.var_, np.vstack([B, A]).var(axis=0), rtol=1e-12)
    assert s.n_samples_seen_ == 50


# --------------------------------------------------------------------------- constant features

def test_constant_features_scale_one(rng):
    X = np.column_stack([np.full(9, 4.0), rng.standard_normal(9), np.full(9, -1e9)])
    mm = MinMaxScaler((-2, 2)).fit(X)
    np.testing.assert_array_equal(mm.scale_[[0, 2]], [4.0, 4.0])  # (hi - lo) / 1
    np.testing.assert_array_equal(mm.transform(X)[:, [0, 2]], -2.0)
    st = StandardScaler().fit(X)
    np.testing.assert_array_equal(st.scale_[[0, 2]], [1.0, 1.0])
    np.testing.assert_array_equal(st.var_[[0, 2]], [0.0, 0.0])
    out = st.transform(X)
    np.testing.assert_array_equal(out[:, [0, 2]], 0.0)
    assert np.isfinite(out).all()
    # one row: every feature is constant
    one = StandardScaler().fit(X[:1])
    np.testing.assert_array_equal(one.transform(X[:1]), 0.0)
    np.testing.assert_array_equal(MinMaxScaler().fit_transform(X[:1]), 0.0)


def test_near_constant_float32_feature_counts_as_constant():
    # range 1 ulp of float32 at 1.0: below 10 eps(float32), as scikit-learn decides
    X = np.array([[1.0], [np.nextafter(np.float32(1), np.float32(2))]], dtype=np.float32)
    assert MinMaxScaler().fit(X).scale_[0] == 1.0
    assert MinMaxScaler().fit(X.astype(np.float64)).scale_[0] != 1.0


# --------------------------------------------------------------------------- NaN and inf

def _with_nans(rng, shape=(50, 4), dtype=np.float64):
    X = data(rng, shape, dtype)
    X[3, 1] = X[10, 1] = X[7, 3] = np.nan
    return X


@pytest.mark.parametrize("cls", [MinMaxScaler, StandardScaler])
def test_nan_raise_names_the_column_and_changes_nothing(rng, cls):
    X = _with_nans(rng)
    with pytest.raises(ValueError, match=r"X: column 1 contains NaN \(first at row 3\).*nan_policy"):
        cls().fit(X)
    good = data(rng, (20, 4), np.float64)
    s = cls().fit(good)
    before = s.state_dict()
    with pytest.raises(ValueError, match="column 1 contains NaN"):
        s.partial_fit(X)
    with pytest.raises(ValueError, match="column 1 contains NaN"):
        s.fit(X)
    with pytest.raises(ValueError, match="column 1 contains NaN"):
        s.transform(X)
    Y = X.copy()
    Y[:, 1] = 0.0  # the first NaN is now in column 3
    with pytest.raises(ValueError, match=r"column 3 contains NaN \(first at row 7\)"):
        s.inverse_transform(Y)
    _assert_state_equal(s.state_dict(), before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_ignore_matches_numpy(rng, dtype):
    X = _with_nans(rng, dtype=dtype)
    st = StandardScaler(nan_policy="ignore").fit(X)
    want = ref_standard(X)
    np.testing.assert_allclose(st.mean_, want["mean_"], rtol=1e-12)
    np.testing.assert_allclose(st.var_, want["var_"], rtol=1e-12)
    np.testing.assert_array_equal(st.n_samples_seen_, [50, 48, 50, 49])
    out = st.transform(X)
    assert np.isnan(out[3, 1]) and np.isnan(out[7, 3]) and np.isfinite(out[3, 0])
    np.testing.assert_allclose(out, want["out"], **tol(dtype))
    mm = MinMaxScaler(nan_policy="ignore").fit(X)
    np.testing.assert_allclose(mm.data_min_, np.nanmin(X.astype(np.float64), axis=0))
    assert mm.n_samples_seen_ == 50
    np.testing.assert_allclose(mm.transform(X), ref_minmax(X)["out"], **tol(dtype))
    np.testing.assert_allclose(mm.inverse_transform(mm.transform(X)), X, **tol(dtype))


def test_nan_ignore_streaming_and_all_nan_column(rng):
    X = _with_nans(rng, (60, 4))
    X[:, 2] = np.nan
    X[40:, 2] = rng.standard_normal(20)  # column 2 has values only in the last chunk
    st = StandardScaler(nan_policy="ignore")
    mm = MinMaxScaler(nan_policy="ignore")
    for chunk in np.split(X, [20, 40]):
        st.partial_fit(chunk)
        mm.partial_fit(chunk)
    np.testing.assert_allclose(st.mean_, np.nanmean(X, axis=0), rtol=1e-13)
    np.testing.assert_allclose(st.var_, np.nanvar(X, axis=0), rtol=1e-12)
    np.testing.assert_allclose(mm.data_min_, np.nanmin(X, axis=0))
    np.testing.assert_allclose(mm.data_max_, np.nanmax(X, axis=0))
    # a column with no value at all: statistics NaN, transform NaN (no crash, no warning)
    Y = np.column_stack([np.full(5, np.nan), np.arange(5.0)])
    s = StandardScaler(nan_policy="ignore").fit(Y)
    assert np.isnan(s.mean_[0]) and np.isnan(s.transform(Y)[:, 0]).all()
    m = MinMaxScaler(nan_policy="ignore").fit(Y)
    assert np.isnan(m.data_min_[0]) and np.isnan(m.transform(Y)[:, 0]).all()
    np.testing.assert_allclose(m.transform(Y)[:, 1], np.arange(5) / 4)


@pytest.mark.parametrize("cls", [MinMaxScaler, StandardScaler])
@pytest.mark.parametrize("policy", ["raise", "ignore"])
def test_infinity_is_always_rejected(rng, cls, policy):
    X = data(rng, (9, 3), np.float32)
    X[5, 2] = -np.inf
    with pytest.raises(ValueError, match=r"column 2 contains infinity \(first at row 5\)"):
        cls(nan_policy=policy).fit(X)
    s = cls(nan_policy=policy).fit(X[:4])
    with pytest.raises(ValueError, match="column 2 contains infinity"):
        s.transform(X)
    X[1, 0] = np.nan
    with pytest.raises(ValueError, match="column 0 contains NaN" if policy == "raise"
                       else "column 2 contains infinity"):
        s.transform(X)


# --------------------------------------------------------------------------- clip, round trip

def test_clip(rng):
    X = data(rng, (30, 5), np.float32)
    s = MinMaxScaler((-1, 2), clip=True).fit(X)
    Y = np.vstack([X, X.max(axis=0) + 10, X.min(axis=0) - 10])
    out = s.transform(Y)
    assert out.min() == -1 and out.max() == 2
    np.testing.assert_array_equal(out[-2], 2.0)
    np.testing.assert_array_equal(out[-1], -1.0)
    np.testing.assert_allclose(out[:30], ref_minmax(X, (-1, 2))["out"], **tol(np.float32))
    unclipped = MinMaxScaler((-1, 2)).fit(X).transform(Y)
    assert unclipped.max() > 2
    # inverse_transform does not clip (scikit-learn's behaviour)
    np.testing.assert_allclose(s.inverse_transform(unclipped), Y, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_round_trip(rng, dtype):
    X = data(rng, (257, 19), dtype, offset=-40.0, spread=100.0)
    for s in (MinMaxScaler((-3, 7)), StandardScaler()):
        back = s.inverse_transform(s.fit_transform(X))
        assert back.dtype == dtype
        np.testing.assert_allclose(back, X, rtol=1e-5 if dtype == np.float32 else 1e-13,
                                   atol=1e-3 if dtype == np.float32 else 1e-11)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("cls", [MinMaxScaler, StandardScaler])
def test_bad_input(rng, cls):
    s = cls()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        s.transform(np.zeros((2, 2)))
    assert not hasattr(s, "scale_") and not hasattr(s, "n_samples_seen_")
    with pytest.raises(ValueError, match=r"X: expected a 2-D array.*\(5,\).*reshape"):
        s.fit(np.zeros(5))
    with pytest.raises(ValueError, match=r"X: expected a 2-D array.*\(2, 2, 2\)"):
        s.fit(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="at least 1 sample"):
        s.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least 1 feature"):
        s.fit(np.zeros((3, 0)))
    with pytest.raises(TypeError, match="X: expected real numbers.*complex"):
        s.fit(np.zeros((2, 2), np.complex128))
    with pytest.raises(TypeError, match="X: expected real numbers"):
        s.fit(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="X: expected a numpy array or gradfuse Tensor"):
        s.fit(None)
    s.fit(data(rng, (5, 3), np.float32))
    before = s.state_dict()
    with pytest.raises(ValueError, match=r"X: has 4 features, but .* fitted with 3 features"):
        s.transform(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="X: has 2 features"):
        s.partial_fit(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="X: has 2 features"):
        s.inverse_transform(np.zeros((2, 2)))
    _assert_state_equal(s.state_dict(), before)
    assert s.transform(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_bad_hyperparameters():
    for fr in [(1, 1), (2, 1), (0, np.inf), (0,), "ab", (0, "1"), None, (True, 2)]:
        with pytest.raises(ValueError, match="feature_range"):
            MinMaxScaler(fr)
    with pytest.raises(TypeError, match="clip"):
        MinMaxScaler(clip=1)
    with pytest.raises(TypeError, match="with_mean"):
        StandardScaler(with_mean="yes")
    with pytest.raises(TypeError, match="with_std"):
        StandardScaler(with_std=None)
    for cls in (MinMaxScaler, StandardScaler):
        with pytest.raises(ValueError, match="nan_policy: expected 'raise' or 'ignore'"):
            cls(nan_policy="omit")


# --------------------------------------------------------------------------- threads

@pytest.mark.parametrize("shape", [(100003, 7), (130, 2500), (70001, 1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_thread_count(rng, shape, dtype):
    X = data(rng, shape, dtype, offset=7.0)
    X[rng.integers(0, shape[0], 5), rng.integers(0, shape[1], 5)] = np.nan
    prev = gf.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            gf.set_num_threads(t)
            st = StandardScaler(nan_policy="ignore").fit(X)
            mm = MinMaxScaler(nan_policy="ignore", clip=True).fit(X)
            results.append([st.mean_, st.var_, mm.data_min_, mm.data_max_, st.transform(X),
                            mm.transform(X), st.inverse_transform(X)])
    finally:
        gf.set_num_threads(prev)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)  # bitwise, NaN positions included


# --------------------------------------------------------------------------- state_dict

def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def test_state_dict_round_trip(rng):
    X = _with_nans(rng, (40, 5), np.float32)
    for s, fresh in [(MinMaxScaler((-1, 1), clip=True, nan_policy="ignore"), MinMaxScaler()),
                     (StandardScaler(nan_policy="ignore"), StandardScaler()),
                     (StandardScaler(with_mean=False), StandardScaler()),
                     (StandardScaler(with_mean=False, with_std=False), StandardScaler())]:
        s.fit(np.nan_to_num(X) if s.nan_policy == "raise" else X)
        state = s.state_dict()
        for v in state.values():
            assert v is None or isinstance(v, (bool, int, float, str, tuple, np.ndarray))
        fresh.load_state_dict(state)
        assert repr(fresh) == repr(s)
        _assert_state_equal(fresh.state_dict(), state)
        Y = np.nan_to_num(X)
        np.testing.assert_array_equal(fresh.transform(Y), s.transform(Y))
        np.testing.assert_array_equal(fresh.inverse_transform(Y), s.inverse_transform(Y))
        # continuing to stream after a reload gives the same statistics
        s.partial_fit(Y[:7])
        fresh.partial_fit(Y[:7])
        np.testing.assert_allclose(fresh.transform(Y), s.transform(Y), rtol=1e-6, atol=1e-6)
        state["n_samples_seen"] = None if isinstance(s, StandardScaler) else 0
        # the returned arrays are copies
        if isinstance(s, MinMaxScaler):
            state["data_min"][:] = 1e9
            assert s.data_min_[0] != 1e9


def test_state_dict_unfitted_and_attributes_read_only(rng):
    for cls in (MinMaxScaler, StandardScaler):
        s = cls()
        fresh = cls()
        fresh.load_state_dict(s.state_dict())
        with pytest.raises(NotFittedError):
            fresh.transform(np.zeros((1, 1)))
        s.fit(data(rng, (5, 2), np.float64))
        with pytest.raises(ValueError, match="read-only"):
            s.scale_[0] = 3.0


def test_load_state_dict_rejects_bad_state_and_changes_nothing(rng):
    X = data(rng, (10, 3), np.float64)
    mm = MinMaxScaler().fit(X)
    st = StandardScaler().fit(X)
    good_mm, good_st = mm.state_dict(), st.state_dict()
    bad = [
        (mm, {**good_mm, "extra": 1}, ValueError, "unexpected keys"),
        (mm, {k: v for k, v in good_mm.items() if k != "data_max"}, ValueError, "missing keys"),
        (mm, {**good_mm, "data_min": good_mm["data_min"][:2]}, ValueError, r"data_max.*shape \(2,\)"),
        (mm, {**good_mm, "data_min": good_mm["data_max"] + 1}, ValueError, "exceeds"),
        (mm, {**good_mm, "feature_range": (1, 0)}, ValueError, "feature_range"),
        (mm, {**good_mm, "n_samples_seen": -1}, ValueError, "n_samples_seen"),
        (mm, {**good_mm, "data_min": [1.0, 2.0, 3.0]}, ValueError, "numpy array"),
        (mm, {**good_mm, "fit_dtype": "int8"}, ValueError, "fit_dtype"),
        (st, {**good_st, "var": -good_st["var"]}, ValueError, "var"),
        (st, {**good_st, "mean": None}, ValueError, "mean"),
        (st, {**good_st, "with_std": "no"}, TypeError, "with_std"),
        (st, {**good_st, "nan_policy": "skip"}, ValueError, "nan_policy"),
        (st, [1, 2], TypeError, "expected a dict"),
    ]
    for s, state, exc, match in bad:
        before = s.state_dict()
        with pytest.raises(exc, match=match):
            s.load_state_dict(state)
        _assert_state_equal(s.state_dict(), before)


# --------------------------------------------------------------------------- scikit-learn

def _sk_compare(ours, theirs, attrs, rtol):
    for k in attrs:
        a, b = getattr(ours, k), getattr(theirs, k)
        if b is None:
            assert a is None, k
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (13, 1), (129, 37), (4000, 5)], ids=str)
def test_minmax_matches_sklearn(rng, dtype, shape):
    skp = pytest.importorskip("sklearn.preprocessing")
    X = data(rng, shape, dtype)
    X[:, 0] = 2.5  # a constant feature
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    for kw in [dict(), dict(feature_range=(-2, 0.5), clip=True)]:
        ours, theirs = MinMaxScaler(**kw), skp.MinMaxScaler(**kw)
        out, want = ours.fit_transform(X), theirs.fit_transform(X)
        assert out.dtype == want.dtype
        np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol)
        _sk_compare(ours, theirs, ["data_min_", "data_max_", "data_range_", "scale_", "min_"], rtol)
        assert ours.n_samples_seen_ == theirs.n_samples_seen_
        assert ours.n_features_in_ == theirs.n_features_in_
        Z = data(rng, shape, dtype, offset=4.0, spread=5.0)  # partly outside the fitted range
        np.testing.assert_allclose(ours.transform(Z), theirs.transform(Z), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(ours.inverse_transform(Z), theirs.inverse_transform(Z),
                                   rtol=rtol, atol=10 * rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (13, 1), (129, 37), (4000, 5)], ids=str)
@pytest.mark.parametrize("with_mean,with_std", [(True, True), (False, True), (True, False), (False, False)])
def test_standard_matches_sklearn(rng, dtype, shape, with_mean, with_std):
    skp = pytest.importorskip("sklearn.preprocessing")
    X = data(rng, shape, dtype)
    X[:, 0] = 2.5
    ours = StandardScaler(with_mean=with_mean, with_std=with_std)
    theirs = skp.StandardScaler(with_mean=with_mean, with_std=with_std)
    out, want = ours.fit_transform(X), theirs.fit_transform(X)
    assert out.dtype == want.dtype
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol)
    _sk_compare(ours, theirs, ["mean_", "var_", "scale_"], 1e-12)
    assert ours.n_samples_seen_ == theirs.n_samples_seen_
    np.testing.assert_allclose(ours.inverse_transform(out), theirs.inverse_transform(want),
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("cls_name", ["MinMaxScaler", "StandardScaler"])
def test_streaming_and_nan_ignore_match_sklearn(rng, cls_name):
    skp = pytest.importorskip("sklearn.preprocessing")
    X = _with_nans(rng, (300, 6))
    ours = getattr(gf.data, cls_name)(nan_policy="ignore")
    theirs = getattr(skp, cls_name)()
    for chunk in np.array_split(X, 10):
        ours.partial_fit(chunk)
        theirs.partial_fit(chunk)
    attrs = ["mean_", "var_", "scale_"] if cls_name == "StandardScaler" else [
        "data_min_", "data_max_", "data_range_", "scale_", "min_"]
    _sk_compare(ours, theirs, attrs, 1e-12)
    np.testing.assert_array_equal(ours.n_samples_seen_, theirs.n_samples_seen_)
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.inverse_transform(X), theirs.inverse_transform(X),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- images

def _image_ref_stats(x, axis):
    x = x.astype(np.float64) / 255
    if axis is None:
        return np.array([x.mean()]), np.array([x.std()])
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return x.mean(axis=axes), x.std(axis=axes)


def test_scale_images_minmax_is_exactly_x_over_255(rng):
    x = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(gf.data.scale_images(x), (x / 255).astype(np.float32))
    big = rng.integers(0, 256, (1000, 785), dtype=np.uint8)  # past one 64 KiB chunk, odd size
    out = gf.data.scale_images(big)
    assert out.dtype == np.float32 and out.shape == big.shape
    np.testing.assert_array_equal(out, (big / 255).astype(np.float32))
    out = gf.data.scale_images(big, feature_range=(-1, 1))
    np.testing.assert_allclose(out, -1 + big / 127.5, rtol=1e-6, atol=1e-6)
    t = gf.data.scale_images(gf.tensor(big[:3]))
    assert isinstance(t, gf.Tensor) and t.dtype == np.float32


LAYOUTS = [((6, 3, 9, 11), 1), ((6, 9, 11, 3), -1), ((7, 5, 7), 1), ((50, 784), None),
           ((4, 2, 70), 1), ((3, 130), -1), ((1, 1), 0)]


@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=str)
def test_image_stats_and_standardize_match_numpy(rng, shape, axis):
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    mean, std = gf.data.image_stats(x, channel_axis=axis)
    want_m, want_s = _image_ref_stats(x, axis)
    np.testing.assert_allclose(mean, want_m, rtol=1e-14)
    np.testing.assert_allclose(std, want_s, rtol=1e-12, atol=1e-15)
    out = gf.data.scale_images(x, "standardize", channel_axis=axis)
    s = np.where(want_s == 0, 1.0, want_s)
    shape_c = [1] * x.ndim
    if axis is not None:
        shape_c[axis] = -1
    want = (x / 255 - want_m.reshape(shape_c)) / s.reshape(shape_c)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    # given statistics (e.g. from the training set): one pass, same result
    if (want_s > 0).all():
        given = gf.data.scale_images(x, "standardize", channel_axis=axis, mean=mean, std=std)
        np.testing.assert_array_equal(given, out)


def test_scale_images_with_torchvision_style_constants(rng):
    x = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    out = gf.data.scale_images(x, "standardize", mean=0.1307, std=0.3081)
    np.testing.assert_allclose(out, (x / 255 - 0.1307) / 0.3081, rtol=1e-6, atol=1e-6)
    rgb = rng.integers(0, 256, (2, 3, 5, 5), dtype=np.uint8)
    m, s = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = gf.data.scale_images(rgb, "standardize", channel_axis=1, mean=m, std=s)
    want = (rgb / 255 - np.array(m)[:, None, None]) / np.array(s)[:, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_image_stats_are_exact_for_a_constant_channel_and_extremes():
    x = np.zeros((2, 3, 100), np.uint8)
    x[:, 1] = 255
    x[0, 2], x[1, 2] = 0, 255
    mean, std = gf.data.image_stats(x, channel_axis=1)
    np.testing.assert_array_equal(mean, [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(std, [0.0, 0.0, 0.5])
    out = gf.data.scale_images(x, "standardize", channel_axis=1)
    np.testing.assert_array_equal(out[:, 0], 0.0)  # constant channel: std 1, centred
    np.testing.assert_array_equal(out[:, 1], 0.0)


def test_image_path_is_thread_count_independent(rng):
    x = rng.integers(0, 256, (64, 33, 33, 3), dtype=np.uint8)
    prev = gf.get_num_threads()
    try:
        res = []
        for t in (1, 2, 3):
            gf.set_num_threads(t)
            res.append((gf.data.image_stats(x, channel_axis=-1),
                        gf.data.scale_images(x, "standardize", channel_axis=-1)))
    finally:
        gf.set_num_threads(prev)
    for (m, s), out in res[1:]:
        np.testing.assert_array_equal(m, res[0][0][0])
        np.testing.assert_array_equal(s, res[0][0][1])
        np.testing.assert_array_equal(out, res[0][1])


def test_scale_images_bad_input(rng):
    x = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    with pytest.raises(TypeError, match="x: expected dtype uint8.*float32"):
        gf.data.scale_images(x.astype(np.float32))
    with pytest.raises(TypeError, match="x: expected dtype uint8"):
        gf.data.image_stats(x.astype(np.int64))
    with pytest.raises(ValueError, match="mode: expected 'minmax' or 'standardize'"):
        gf.data.scale_images(x, "zscore")
    with pytest.raises(ValueError, match="channel_axis: 3 is out of range"):
        gf.data.scale_images(x, "standardize", channel_axis=3)
    with pytest.raises(TypeError, match="channel_axis: expected an int"):
        gf.data.image_stats(x, channel_axis="C")
    with pytest.raises(ValueError, match="give both"):
        gf.data.scale_images(x, "standardize", mean=0.5)
    with pytest.raises(ValueError, match="std: expected values > 0"):
        gf.data.scale_images(x, "standardize", mean=0.5, std=0.0)
    with pytest.raises(ValueError, match=r"mean: expected a scalar or 3 values"):
        gf.data.scale_images(x, "standardize", channel_axis=1, mean=[0.1, 0.2], std=1.0)
    with pytest.raises(ValueError, match="only used with mode='standardize'"):
        gf.data.scale_images(x, mean=0.5, std=0.2)
    with pytest.raises(ValueError, match="feature_range"):
        gf.data.scale_images(x, feature_range=(1, 0))
    with pytest.raises(ValueError, match="at least one pixel"):
        gf.data.image_stats(np.zeros((0, 3), np.uint8))
    assert gf.data.scale_images(np.zeros((0, 3), np.uint8)).shape == (0, 3)


def test_backend_image_layout_rejects_a_product_that_overflows():
    from gradfuse import _backend

    # (2^61 + 1) * 1 * 8 wraps to 8 in int64 arithmetic: it must not pass for 8 pixels
    x = np.zeros(8, np.uint8)
    one, zero = np.ones(1), np.zeros(1)
    with pytest.raises(ValueError, match="layout"):
        _backend.image_channel_stats(x, 2**61 + 1, 1, 8)
    with pytest.raises(ValueError, match="layout"):
        _backend.image_affine(x, 2**61 + 1, 1, 8, zero, one, zero)
    with pytest.raises(ValueError, match="layout"):
        _backend.image_channel_stats(np.zeros(0, np.uint8), 2**32, 2, 2**31)


def test_image_stats_exact_past_the_uint32_partial_sums():
    # all 255: per-position sums of squares overflow uint32 after 66052 values; the kernel
    # flushes its partial sums to uint64 before that, on one thread (longest run) or more
    prev = gf.get_num_threads()
    try:
        for t in (1, 2):
            gf.set_num_threads(t)
            for shape, axis in [((2_200_000, 3), -1), ((2, 3_000_000), None)]:
                mean, std = gf.data.image_stats(np.full(shape, 255, np.uint8), channel_axis=axis)
                np.testing.assert_array_equal(mean, 1.0)
                np.testing.assert_array_equal(std, 0.0)
    finally:
        gf.set_num_threads(prev)


@pytest.mark.parametrize("shape", [(70001, 31), (9001, 255), (1100, 2100), (500_003, 5)], ids=str)
def test_large_outputs_match_reference(rng, shape):
    # outputs of 8 MiB and more take the streaming-store path of the kernels (odd row counts
    # and row lengths: unaligned segment starts)
    X = data(rng, shape, np.float32)
    X[shape[0] // 2, shape[1] - 1] = np.nan
    s = MinMaxScaler((-1, 1), clip=True, nan_policy="ignore").fit(X)
    np.testing.assert_allclose(s.transform(X), np.clip(ref_minmax(X, (-1, 1))["out"], -1, 1),
                               rtol=2e-6, atol=2e-6)
    strict = StandardScaler().fit(np.nan_to_num(X))
    with pytest.raises(ValueError, match=rf"column {shape[1] - 1} contains NaN"):
        strict.transform(X)


@pytest.mark.parametrize("shape,axis", [((2100, 1001), None), ((700, 1001, 3), -1), ((3, 5, 700, 201), 1)], ids=str)
def test_large_images_match_numpy(rng, shape, axis):
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(gf.data.scale_images(x), (x / 255).astype(np.float32))
    m, s = gf.data.image_stats(x, channel_axis=axis)
    out = gf.data.scale_images(x, "standardize", channel_axis=axis, mean=m, std=s)
    shape_c = [1] * x.ndim
    if axis is not None:
        shape_c[axis] = -1
    want = (x / 255 - m.reshape(shape_c)) / s.reshape(shape_c)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_docs_data_scalers_example_runs():
    from docs_util import python_block

    block = python_block("docs/data.md", "Data scalers")
    scope = {}
    exec(compile(block, "docs/data.md data scalers", "exec"), scope)
    x, x_train = scope["x"], scope["x_train"]
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x_train.numpy().mean(), 0, atol=1e-5)
    np.testing.assert_allclose(x_train.numpy().std(), 1, atol=1e-5)
    assert isinstance(scope["features"], gf.Tensor) and scope["features"].dtype == np.float32
    fresh = StandardScaler()
    fresh.load_state_dict(scope["checkpoint"]["scaler"])
    assert fresh.n_samples_seen_ == 1000


def test_float64_overflow_is_an_error_not_garbage():
    X = np.array([[1.0, 1.5e308], [2.0, -1.5e308]])
    with pytest.raises(ValueError, match="column 1 overflows float64 statistics"):
        StandardScaler().fit(X)
    # the range alone does not overflow a MinMaxScaler's statistics (data_range_ is inf)
    assert MinMaxScaler().fit(X).data_min_[1] == -1.5e308
