"""Feature scalers with scikit-learn's API, and uint8 image scaling, on compiled kernels.

:class:`MinMaxScaler` and :class:`StandardScaler` mirror scikit-learn's (``fit``,
``partial_fit``, ``transform``, ``fit_transform``, ``inverse_transform`` and the fitted
attributes), with the byte-heavy work in ``csrc/kernels/scale.cpp``:

* ``fit`` / ``partial_fit`` read X once: per-column count and either min and max
  (MinMaxScaler) or mean and M2 (sum of squared deviations; StandardScaler), accumulated in
  float64 for any input, per fixed-size block (mean and M2 by two passes over the block while
  it is in cache) and merged with Chan, Golub & LeVeque's
  pairwise update, all relative to a value of each column (so the block means keep their
  digits when the mean is far from 0). Chunks given to ``partial_fit`` are merged the same way,
  so ten ``partial_fit`` calls agree with one ``fit`` on the concatenation to about 1e-15
  relative (1e-13 for the variance when the mean is 1e6 standard deviations from 0, where the
  float64 chunk means themselves round), and results are bitwise the same for any thread
  count. NaN and infinity are found in the same pass.
* ``transform`` / ``inverse_transform`` are one fused pass: ``(x - shift[j]) * mul[j] + add[j]``
  per column (with the clip of ``MinMaxScaler(clip=True)``), in float64 arithmetic, rounded once
  to the output type; outputs of 8 MiB and more are written with streaming stores (no read of
  the destination lines), so a large transform moves about what a copy moves.

Input: a numpy array or a :class:`gradfuse.Tensor` of shape (n_samples, n_features);
the output has the same kind (Tensor in, Tensor out; never recorded by autograd). float32 stays
float32 and float64 stays float64; integer, bool and float16 input gives float32 (integers are
converted exactly, through float64). Fitted attributes are always float64 (scikit-learn keeps
float32 for MinMaxScaler on float32 input).
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import _backend
from ..tensor import Tensor

__all__ = ["MinMaxScaler", "StandardScaler", "NotFittedError", "scale_images", "image_stats"]

_NAN_POLICIES = ("raise", "ignore")
_F64_EPS = float(np.finfo(np.float64).eps)


class NotFittedError(ValueError, AttributeError):
    """A scaler was used (``transform``, a fitted attribute) before ``fit``/``partial_fit``.

    A ``ValueError`` and an ``AttributeError``, as scikit-learn's: ``hasattr(scaler, "scale_")``
    is False before fitting.
    """


# --------------------------------------------------------------------------- input handling

def _unwrap(x, name: str):
    """(numpy array, was a Tensor) for array-like input; the Tensor's data is not copied."""
    if isinstance(x, Tensor):
        return x.data, True
    if isinstance(x, np.ndarray):
        return x, False
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{name}: expected a numpy array or gradfuse Tensor, got "
                        f"{type(x).__name__}")
    try:
        return np.asarray(x), False
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a numpy array or gradfuse Tensor, got "
                        f"{type(x).__name__} ({e})") from None


def _prepare(X, name: str = "X"):
    """X as a C-contiguous float32/float64 (n, d) array for the kernels.

    Returns (array, was_tensor, output dtype). Integers and bool are computed in float64
    (exact below 2**53) and returned as float32, float16 is computed and returned as float32.
    """
    a, was_tensor = _unwrap(X, name)
    dt = a.dtype
    if dt == np.float32 or dt == np.float64:
        compute, out = dt, dt
    elif dt.kind == "f":  # float16, longdouble
        compute = np.dtype(np.float32) if dt.itemsize < 4 else np.dtype(np.float64)
        out = compute
    elif dt.kind in "biu":
        compute, out = np.dtype(np.float64), np.dtype(np.float32)
    else:
        raise TypeError(f"{name}: expected real numbers (float, int or bool), got dtype {dt}")
    if a.ndim != 2:
        hint = "; use X.reshape(-1, 1) for a single feature" if a.ndim == 1 else ""
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape "
                         f"{a.shape}{hint}")
    return np.ascontiguousarray(a, dtype=compute), was_tensor, out


def _finish(out: np.ndarray, was_tensor: bool, dtype: np.dtype):
    if out.dtype != dtype:
        out = out.astype(dtype)
    return Tensor(out) if was_tensor else out


def _first_bad(a: np.ndarray, cols: np.ndarray, test) -> tuple[int, int]:
    """(row, column) of the first bad value among the flagged columns (slow path: errors only)."""
    j = int(cols[0])
    return int(np.argmax(test(a[:, j]))), j


def _raise_nonfinite(a: np.ndarray, name: str, *, nan_cols, inf_cols, scaler: str) -> None:
    """Raise the error that names the first column holding a rejected value (if any)."""
    nan_cols = np.flatnonzero(nan_cols) if nan_cols is not None else np.zeros(0, np.intp)
    inf_cols = np.flatnonzero(inf_cols)
    if inf_cols.size and (not nan_cols.size or inf_cols[0] <= nan_cols[0]):
        i, j = _first_bad(a, inf_cols, np.isinf)
        raise ValueError(f"{name}: column {j} contains infinity (first at row {i}); "
                         f"{scaler} needs finite values (or NaN with nan_policy='ignore')")
    if nan_cols.size:
        i, j = _first_bad(a, nan_cols, np.isnan)
        raise ValueError(f"{name}: column {j} contains NaN (first at row {i}); pass "
                         f"nan_policy='ignore' to {scaler} to leave NaNs out of the statistics "
                         f"and pass them through transform")


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _check_nan_policy(value) -> str:
    if value not in _NAN_POLICIES:
        raise ValueError(f"nan_policy: expected 'raise' or 'ignore', got {value!r}")
    return value


def _readonly(a):
    if a is None:
        return None
    v = a.view()
    v.flags.writeable = False
    return v


def _check_state_keys(state, expected: tuple, owner: str) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"state_dict: expected a dict, got {type(state).__name__}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"state_dict: not a {owner} state (missing keys {missing}, "
                         f"unexpected keys {unexpected})")


def _state_array(state, key: str, d, dtype) -> np.ndarray:
    v = state[key]
    if isinstance(v, Tensor):  # gf.load(path, tensors=True) gives Tensors
        v = v.data
    if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype.kind not in "fiu":
        raise ValueError(f"state_dict[{key!r}]: expected a 1-D numeric numpy array or Tensor, got "
                         f"{type(v).__name__}{getattr(v, 'shape', '')}")
    if d is not None and v.shape[0] != d:
        raise ValueError(f"state_dict[{key!r}]: expected shape ({d},), got {v.shape}")
    if v.shape[0] == 0:
        raise ValueError(f"state_dict[{key!r}]: expected at least one feature")
    return np.array(v, dtype=dtype)  # a copy: the scaler owns its state


# --------------------------------------------------------------------------- scalers

class _Scaler:
    """What both scalers share: input checks, the fit/merge protocol, the fused transform.

    A subclass provides ``_moments`` (whether fit needs mean/M2), ``_merge(stats, n, dtype)``
    (fold a batch's statistics into the fitted state; must not fail), ``_coefficients(inverse)``
    -> (shift, mul, add) and ``_clip_range(inverse)`` -> (lo, hi) or None.
    """

    _moments = True

    def __init__(self, nan_policy: str):
        self.nan_policy = _check_nan_policy(nan_policy)
        self._n_features = None

    # ---- fitting
    def _check_features(self, a: np.ndarray) -> None:
        if self._n_features is not None and a.shape[1] != self._n_features:
            raise ValueError(f"X: has {a.shape[1]} features, but {type(self).__name__} was "
                             f"fitted with {self._n_features} features")

    def _batch_stats(self, a: np.ndarray) -> dict:
        """Statistics of one batch, or an error naming the first column with a rejected value.

        Nothing of the fitted state is touched here, so a rejected batch changes nothing.
        """
        if a.shape[0] == 0:
            raise ValueError(f"X: expected at least 1 sample, got shape {a.shape}")
        if a.shape[1] == 0:
            raise ValueError(f"X: expected at least 1 feature, got shape {a.shape}")
        count, mean, m2, mn, mx = _backend.column_stats(a, self._moments)
        empty = count == 0
        if self._moments:
            # the sums skip NaN, so only infinity (or float64 overflow) makes them non-finite
            suspect = ~empty & ~(np.isfinite(mean) & np.isfinite(m2))
            inf_cols = np.zeros(a.shape[1], bool)
            for j in np.flatnonzero(suspect):  # slow path, errors only
                inf_cols[j] = np.isinf(a[:, j]).any()
                if not inf_cols[j]:
                    raise ValueError(f"X: column {j} overflows float64 statistics (values "
                                     f"up to {np.nanmax(np.abs(a[:, j])):g})")
        else:
            # a column holding +inf has max == inf (min/max skip NaN, so this is exact)
            inf_cols = (mn == -np.inf) | (mx == np.inf)
            if empty.any():  # columns without any value (all NaN under 'ignore'): no range
                mn = np.where(empty, np.nan, mn)
                mx = np.where(empty, np.nan, mx)
        nan_cols = count < a.shape[0] if self.nan_policy == "raise" else None
        if inf_cols.any() or (nan_cols is not None and nan_cols.any()):
            _raise_nonfinite(a, "X", nan_cols=nan_cols, inf_cols=inf_cols,
                             scaler=type(self).__name__)
        return {"count": count, "mean": mean, "m2": m2, "min": mn, "max": mx}

    def _fit_array(self, a: np.ndarray, reset: bool) -> None:
        if not reset:
            self._check_features(a)
        stats = self._batch_stats(a)
        if reset:
            self._reset()
        self._merge(stats, a.shape[0], a.dtype)
        self._n_features = a.shape[1]

    def fit(self, X, y=None):
        """Compute the statistics of X (n_samples, n_features), forgetting earlier fits.

        ``y`` is ignored (scikit-learn's pipeline signature). Returns ``self``.
        """
        a, _, _ = _prepare(X)
        self._fit_array(a, reset=True)
        return self

    def partial_fit(self, X, y=None):
        """Fold one chunk X (n_samples, n_features) into the statistics (streaming fit).

        Chunks are merged with Chan's pairwise formula, so fitting a data set chunk by chunk
        gives the same result as one ``fit`` (to a few ulps). A rejected chunk (NaN under
        ``nan_policy='raise'``, infinity, wrong number of features) leaves the state unchanged.
        Returns ``self``.
        """
        a, _, _ = _prepare(X)
        self._fit_array(a, reset=self._n_features is None)
        return self

    # ---- transforming
    def _check_fitted(self) -> None:
        if self._n_features is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit or "
                                 f"partial_fit before using it")

    def _apply(self, X, inverse: bool):
        self._check_fitted()
        a, was_tensor, out_dtype = _prepare(X)
        self._check_features(a)
        return _finish(self._affine(a, inverse), was_tensor, out_dtype)

    def _affine(self, a: np.ndarray, inverse: bool) -> np.ndarray:
        shift, mul, add = self._coefficients(inverse)
        clip = self._clip_range(inverse)
        lo, hi = clip if clip is not None else (0.0, 0.0)
        out, saw_nan, saw_inf = _backend.affine_columns(a, shift, mul, add, clip is not None,
                                                        lo, hi)
        if saw_inf or (saw_nan and self.nan_policy == "raise"):
            nan_cols = np.isnan(a).any(axis=0) if self.nan_policy == "raise" else None
            _raise_nonfinite(a, "X", nan_cols=nan_cols, inf_cols=np.isinf(a).any(axis=0),
                             scaler=type(self).__name__)
        return out

    def transform(self, X):
        """Scale X (n_samples, n_features) with the fitted statistics; a new array/Tensor.

        NaN passes through under ``nan_policy='ignore'`` and is an error under ``'raise'``.
        """
        return self._apply(X, inverse=False)

    def inverse_transform(self, X):
        """Undo :meth:`transform`: X (n_samples, n_features) back in the original units."""
        return self._apply(X, inverse=True)

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``, converting X only once."""
        a, was_tensor, out_dtype = _prepare(X)
        self._fit_array(a, reset=True)
        return _finish(self._affine(a, inverse=False), was_tensor, out_dtype)

    # ---- attributes shared by both
    @property
    def n_features_in_(self) -> int:
        """Number of features seen in fit."""
        self._check_fitted()
        return self._n_features


class MinMaxScaler(_Scaler):
    """Scale each feature to ``feature_range`` by its minimum and maximum (scikit-learn's).

    ``X_scaled = (X - data_min_) * scale_ + feature_range[0]`` with
    ``scale_ = (max - min of feature_range) / data_range_``; a constant feature (range below
    10 eps of the fitted float type, as scikit-learn) gets ``scale_`` 1 instead of a division by
    zero, so it maps to ``feature_range[0]``.

    Args:
        feature_range: (min, max) of the transformed data, min < max.
        clip: clip transformed values to ``feature_range`` (for data outside the fitted range).
        nan_policy: ``'raise'`` (default): NaN in X is an error naming its column;
            ``'ignore'``: NaNs are left out of the statistics and pass through ``transform``
            as NaN, as in scikit-learn. Infinity is always an error.

    Fitted attributes (float64 arrays of shape (n_features,)): ``data_min_``, ``data_max_``,
    ``data_range_``, ``scale_``, ``min_`` (so ``X * scale_ + min_`` is the transform);
    ``n_samples_seen_`` (int, rows seen, NaN or not), ``n_features_in_``.

    Example::

        >>> import numpy as np, gradfuse as gf
        >>> X = np.array([[1.0, -1.0], [3.0, 0.0], [5.0, 1.0]], dtype=np.float32)
        >>> s = gf.data.MinMaxScaler().fit(X)
        >>> s.transform(X)
        array([[0. , 0. ],
               [0.5, 0.5],
               [1. , 1. ]], dtype=float32)
        >>> s.data_min_, s.scale_
        (array([ 1., -1.]), array([0.25, 0.5 ]))
    """

    _moments = False
    _STATE_KEYS = ("feature_range", "clip", "nan_policy", "n_samples_seen", "data_min",
                   "data_max", "fit_dtype")

    def __init__(self, feature_range=(0, 1), *, clip: bool = False, nan_policy: str = "raise"):
        self.feature_range = self._check_range(feature_range)
        self.clip = _check_bool(clip, "clip")
        super().__init__(nan_policy)

    @staticmethod
    def _check_range(feature_range) -> tuple:
        try:
            lo, hi = feature_range
        except (TypeError, ValueError):
            raise ValueError(f"feature_range: expected (min, max), got {feature_range!r}") \
                from None
        for v in (lo, hi):
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not np.isfinite(v):
                raise ValueError(f"feature_range: expected two finite numbers, got "
                                 f"{feature_range!r}")
        if not lo < hi:
            raise ValueError(f"feature_range: minimum of desired feature range must be smaller "
                             f"than maximum, got {feature_range!r}")
        return (lo, hi)

    def __repr__(self) -> str:
        return (f"MinMaxScaler(feature_range={self.feature_range!r}, clip={self.clip}, "
                f"nan_policy={self.nan_policy!r})")

    def _reset(self) -> None:
        self._n_features = None
        self._n_seen = 0
        self._data_min = self._data_max = None
        self._fit_dtype = None

    def _merge(self, stats: dict, n: int, dtype) -> None:
        mn, mx = stats["min"], stats["max"]
        if self._data_min is not None:
            # fmin/fmax: a column that was all NaN so far takes the new chunk's range
            mn = np.fmin(self._data_min, mn)
            mx = np.fmax(self._data_max, mx)
        self._data_min, self._data_max = mn, mx
        self._n_seen += int(n)
        self._fit_dtype = np.dtype(dtype).name
        self._derive()

    def _derive(self) -> None:
        lo, hi = (float(v) for v in self.feature_range)
        with np.errstate(over="ignore"):  # a range past float64's max is inf: scale_ 0
            rng = self._data_max - self._data_min
        eps = float(np.finfo(self._fit_dtype).eps)
        safe = np.where(rng < 10 * eps, 1.0, rng)  # NaN (all-NaN column) stays NaN
        self._range = rng
        self._scale = (hi - lo) / safe
        self._min = lo - self._data_min * self._scale

    def _coefficients(self, inverse: bool):
        lo = np.full(self._n_features, float(self.feature_range[0]))
        if inverse:  # X = (Y - lo) / scale_ + data_min_
            with np.errstate(divide="ignore"):  # scale_ 0 only if the range overflowed to inf
                return lo, 1.0 / self._scale, self._data_min
        return self._data_min, self._scale, lo

    def _clip_range(self, inverse: bool):
        if self.clip and not inverse:
            return float(self.feature_range[0]), float(self.feature_range[1])
        return None

    @property
    def data_min_(self) -> np.ndarray:
        """Per-feature minimum seen (NaNs skipped), shape (n_features,)."""
        self._check_fitted()
        return _readonly(self._data_min)

    @property
    def data_max_(self) -> np.ndarray:
        """Per-feature maximum seen (NaNs skipped), shape (n_features,)."""
        self._check_fitted()
        return _readonly(self._data_max)

    @property
    def data_range_(self) -> np.ndarray:
        """``data_max_ - data_min_``, shape (n_features,)."""
        self._check_fitted()
        return _readonly(self._range)

    @property
    def scale_(self) -> np.ndarray:
        """Per-feature factor: ``(max - min of feature_range) / data_range_`` (1 if constant)."""
        self._check_fitted()
        return _readonly(self._scale)

    @property
    def min_(self) -> np.ndarray:
        """Per-feature offset: ``feature_range[0] - data_min_ * scale_``."""
        self._check_fitted()
        return _readonly(self._min)

    @property
    def n_samples_seen_(self) -> int:
        """Rows seen by fit / partial_fit (rows with NaN included, as scikit-learn)."""
        self._check_fitted()
        return self._n_seen

    def state_dict(self) -> dict:
        """Hyperparameters and fitted state as plain values and numpy arrays (copies).

        Keys: ``feature_range``, ``clip``, ``nan_policy``, ``n_samples_seen`` (int),
        ``data_min``, ``data_max`` (float64 (n_features,), None before fit), ``fit_dtype``
        (the float type the constant-feature threshold uses). Save it with the model's
        state; :meth:`load_state_dict` restores an equal scaler.
        """
        fitted = self._n_features is not None
        return {
            "feature_range": tuple(self.feature_range),
            "clip": self.clip,
            "nan_policy": self.nan_policy,
            "n_samples_seen": self._n_seen if fitted else 0,
            "data_min": self._data_min.copy() if fitted else None,
            "data_max": self._data_max.copy() if fitted else None,
            "fit_dtype": self._fit_dtype if fitted else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; everything is checked before anything
        changes, so a bad state leaves the scaler as it was."""
        _check_state_keys(state, self._STATE_KEYS, "MinMaxScaler")
        feature_range = self._check_range(state["feature_range"])
        clip = _check_bool(state["clip"], "state_dict['clip']")
        nan_policy = _check_nan_policy(state["nan_policy"])
        n_seen = state["n_samples_seen"]
        if not isinstance(n_seen, (int, np.integer)) or isinstance(n_seen, bool) or n_seen < 0:
            raise ValueError(f"state_dict['n_samples_seen']: expected an int >= 0, got "
                             f"{n_seen!r}")
        if state["data_min"] is None or state["data_max"] is None:
            if not (state["data_min"] is None and state["data_max"] is None and n_seen == 0):
                raise ValueError("state_dict: data_min and data_max must both be None (not "
                                 "fitted, n_samples_seen 0) or both arrays")
            data = None
        else:
            if n_seen == 0:
                raise ValueError("state_dict['n_samples_seen']: a fitted state needs > 0")
            if state["fit_dtype"] not in ("float32", "float64"):
                raise ValueError(f"state_dict['fit_dtype']: expected 'float32' or 'float64', "
                                 f"got {state['fit_dtype']!r}")
            dmin = _state_array(state, "data_min", None, np.float64)
            dmax = _state_array(state, "data_max", dmin.shape[0], np.float64)
            if (dmin > dmax).any():
                raise ValueError("state_dict: data_min exceeds data_max")
            data = (dmin, dmax, state["fit_dtype"])
        self.feature_range, self.clip, self.nan_policy = feature_range, clip, nan_policy
        self._reset()
        if data is not None:
            self._data_min, self._data_max, self._fit_dtype = data
            self._n_seen = int(n_seen)
            self._n_features = data[0].shape[0]
            self._derive()


class StandardScaler(_Scaler):
    """Standardize each feature to mean 0 and standard deviation 1 (scikit-learn's).

    ``X_scaled = (X - mean_) / scale_`` with ``scale_ = sqrt(var_)`` (population variance,
    ddof=0). A feature whose variance is indistinguishable from 0 (scikit-learn's rounding
    bound ``var <= n eps var + (n mean eps)^2``) gets ``scale_`` 1, so it maps to 0.

    Args:
        with_mean: subtract the mean (``mean_`` is still computed when only ``with_std``).
        with_std: divide by the standard deviation.
        nan_policy: ``'raise'`` (default): NaN in X is an error naming its column;
            ``'ignore'``: NaNs are left out of the statistics (per-feature counts) and pass
            through ``transform`` as NaN, as in scikit-learn. Infinity is always an error.

    Fitted attributes: ``mean_`` (None when neither flag is set), ``var_`` and ``scale_``
    (None without ``with_std``), float64 arrays of shape (n_features,);
    ``n_samples_seen_``: an int, or an int64 array (n_features,) when NaNs made the per-feature
    counts differ (scikit-learn's convention); ``n_features_in_``.

    Example::

        >>> import numpy as np, gradfuse as gf
        >>> X = np.array([[0.0, 10.0], [2.0, 10.0]])
        >>> s = gf.data.StandardScaler().fit(X)
        >>> s.mean_, s.scale_
        (array([ 1., 10.]), array([1., 1.]))
        >>> s.transform(X)
        array([[-1.,  0.],
               [ 1.,  0.]])
    """

    _STATE_KEYS = ("with_mean", "with_std", "nan_policy", "n_samples_seen", "mean", "var")

    def __init__(self, *, with_mean: bool = True, with_std: bool = True,
                 nan_policy: str = "raise"):
        self.with_mean = _check_bool(with_mean, "with_mean")
        self.with_std = _check_bool(with_std, "with_std")
        super().__init__(nan_policy)
        self._moments = self.with_mean or self.with_std

    def __repr__(self) -> str:
        return (f"StandardScaler(with_mean={self.with_mean}, with_std={self.with_std}, "
                f"nan_policy={self.nan_policy!r})")

    def _reset(self) -> None:
        self._n_features = None
        self._count = self._mean = self._m2 = None

    def _merge(self, stats: dict, n: int, dtype) -> None:
        nb = stats["count"]
        if self._count is None:
            self._count = nb.astype(np.int64)
            if self._moments:
                self._mean = np.where(nb > 0, stats["mean"], 0.0)
                self._m2 = np.where(nb > 0, stats["m2"], 0.0)
        else:
            na = self._count.astype(np.float64)
            if self._moments:
                # Chan et al.: the same pairwise update the kernel uses between its blocks
                mb = np.where(nb > 0, stats["mean"], 0.0)
                m2b = np.where(nb > 0, stats["m2"], 0.0)
                total = na + nb
                frac = np.divide(nb, total, out=np.zeros_like(nb), where=total > 0)
                delta = mb - self._mean
                self._mean = self._mean + delta * frac
                self._m2 = self._m2 + m2b + delta * delta * na * frac
            self._count = self._count + nb.astype(np.int64)
        self._derive()

    def _derive(self) -> None:
        if not self._moments:
            self._var = self._scale = None
            return
        cnt = self._count.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._mean_seen = np.where(cnt > 0, self._mean, np.nan)
            self._var = np.where(cnt > 0, self._m2 / cnt, np.nan)
        if self.with_std:
            # scikit-learn's _is_constant_feature: the variance is within the rounding error
            # bound of the two-pass algorithm (Chan, Golub & LeVeque)
            bound = cnt * _F64_EPS * self._var + (cnt * self._mean_seen * _F64_EPS) ** 2
            self._scale = np.where(self._var <= bound, 1.0, np.sqrt(self._var))
        else:
            self._scale = None

    def _coefficients(self, inverse: bool):
        d = self._n_features
        zero = np.zeros(d)
        mean = self._mean_seen if self.with_mean else zero
        scale = self._scale if self.with_std else np.ones(d)
        if inverse:  # X = Y * scale_ + mean_
            return zero, scale, mean
        return mean, 1.0 / scale, zero

    def _clip_range(self, inverse: bool):
        return None

    @property
    def mean_(self):
        """Per-feature mean (NaNs skipped), shape (n_features,); None if neither flag is set."""
        self._check_fitted()
        return _readonly(self._mean_seen) if self._moments else None

    @property
    def var_(self):
        """Per-feature population variance, shape (n_features,); None without with_std."""
        self._check_fitted()
        return _readonly(self._var) if self.with_std else None

    @property
    def scale_(self):
        """Per-feature divisor ``sqrt(var_)`` (1 for constant features); None without with_std."""
        self._check_fitted()
        return _readonly(self._scale) if self.with_std else None

    @property
    def n_samples_seen_(self):
        """Non-NaN samples seen: an int when equal for all features, else an int64 array."""
        self._check_fitted()
        c = self._count
        return int(c[0]) if (c == c[0]).all() else _readonly(c)

    def state_dict(self) -> dict:
        """Hyperparameters and fitted state as plain values and numpy arrays (copies).

        Keys: ``with_mean``, ``with_std``, ``nan_policy``, ``n_samples_seen`` (int64 array of
        per-feature counts), ``mean`` and ``var`` (float64 (n_features,)); arrays are None
        before fit, and ``mean``/``var`` are None when neither flag is set.
        """
        fitted = self._n_features is not None
        keep = fitted and self._moments
        return {
            "with_mean": self.with_mean,
            "with_std": self.with_std,
            "nan_policy": self.nan_policy,
            "n_samples_seen": self._count.copy() if fitted else None,
            "mean": self._mean.copy() if keep else None,
            "var": self._var.copy() if keep else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; everything is checked before anything
        changes, so a bad state leaves the scaler as it was."""
        _check_state_keys(state, self._STATE_KEYS, "StandardScaler")
        with_mean = _check_bool(state["with_mean"], "state_dict['with_mean']")
        with_std = _check_bool(state["with_std"], "state_dict['with_std']")
        nan_policy = _check_nan_policy(state["nan_policy"])
        moments = with_mean or with_std
        data = None
        if state["n_samples_seen"] is not None:
            count = _state_array(state, "n_samples_seen", None, np.float64)
            if (count < 0).any() or (count != np.round(count)).any():
                raise ValueError("state_dict['n_samples_seen']: expected counts >= 0")
            d = count.shape[0]
            mean = var = None
            if moments:
                if state["mean"] is None or state["var"] is None:
                    raise ValueError("state_dict: 'mean' and 'var' are needed with with_mean "
                                     "or with_std")
                mean = _state_array(state, "mean", d, np.float64)
                var = _state_array(state, "var", d, np.float64)
                if (var < 0).any():
                    raise ValueError("state_dict['var']: expected values >= 0")
            data = (count.astype(np.int64), mean, var)
        elif state["mean"] is not None or state["var"] is not None:
            raise ValueError("state_dict: 'mean'/'var' given without 'n_samples_seen'")
        self.with_mean, self.with_std, self.nan_policy = with_mean, with_std, nan_policy
        self._moments = moments
        self._reset()
        if data is not None:
            count, mean, var = data
            self._count = count
            if moments:
                cnt = count.astype(np.float64)
                self._mean = np.where(cnt > 0, np.nan_to_num(mean), 0.0)
                self._m2 = np.where(cnt > 0, np.nan_to_num(var) * cnt, 0.0)
            self._n_features = count.shape[0]
            self._derive()


# --------------------------------------------------------------------------- images

def _image_layout(a: np.ndarray, channel_axis):
    """(outer, channels, inner) of a C-contiguous array for the channel axis (None: one)."""
    if channel_axis is None:
        return 1, 1, int(a.size)
    if not isinstance(channel_axis, (int, np.integer)) or isinstance(channel_axis, bool):
        raise TypeError(f"channel_axis: expected an int or None, got "
                        f"{type(channel_axis).__name__}")
    ax = int(channel_axis)
    if not -a.ndim <= ax < a.ndim:
        raise ValueError(f"channel_axis: {ax} is out of range for x of shape {a.shape}")
    ax %= a.ndim
    return (int(np.prod(a.shape[:ax], dtype=np.int64)), int(a.shape[ax]),
            int(np.prod(a.shape[ax + 1:], dtype=np.int64)))


def _image_input(x):
    a, was_tensor = _unwrap(x, "x")
    if a.dtype != np.uint8:
        raise TypeError(f"x: expected dtype uint8 (pixels 0..255), got {a.dtype}; "
                        f"MinMaxScaler/StandardScaler scale float data")
    return np.ascontiguousarray(a), was_tensor


def image_stats(x, channel_axis=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 pixels, in [0, 1] units (pixel / 255).

    Exact: the sums of pixels and squared pixels are integers, so the result does not depend on
    the order or the thread count. Compute them on the training set and pass them to
    :func:`scale_images` for every split.

    Args:
        x: uint8 array or Tensor of any shape.
        channel_axis: axis of the channels (1 for NCHW, -1 for NHWC); None: all pixels are one
            channel (grayscale, or a flat (N, D) batch such as MNIST's 60000 x 784).

    Returns:
        (mean, std): float64 arrays of shape (channels,) (population std, ddof=0).

    Example::

        >>> import numpy as np, gradfuse as gf
        >>> gf.data.image_stats(np.array([[0, 255], [0, 255]], dtype=np.uint8))
        (array([0.5]), array([0.5]))
    """
    a, _ = _image_input(x)
    outer, c, inner = _image_layout(a, channel_axis)
    if a.size == 0:
        raise ValueError(f"x: expected at least one pixel, got shape {a.shape}")
    mean, var = _backend.image_channel_stats(a, outer, c, inner)
    return mean / 255.0, np.sqrt(var) / 255.0


def _channel_values(v, c: int, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.full(c, arr[0])
    if arr.size != c:
        raise ValueError(f"{name}: expected a scalar or {c} values (one per channel), got "
                         f"{arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got {arr}")
    return arr


def scale_images(x, mode: str = "minmax", *, channel_axis=None, mean=None, std=None,
                 feature_range=(0.0, 1.0)):
    """uint8 pixels (0..255) to float32 in one compiled pass: min-max or standardization.

    * ``mode='minmax'``: ``lo + x * (hi - lo) / 255`` with ``(lo, hi) = feature_range``,
      i.e. ``x / 255`` in [0, 1] by default (the fixed pixel range, not the batch's min/max, so
      every split is scaled alike).
    * ``mode='standardize'``: per channel ``(x / 255 - mean[c]) / std[c]``, with ``mean``
      and ``std`` in [0, 1] units (torchvision's ``Normalize`` convention, e.g. MNIST's 0.1307
      and 0.3081). When both are None they are computed from ``x`` by :func:`image_stats`
      (an extra read of x; a constant channel gets std 1, as the scalers do).

    Args:
        x: uint8 array or Tensor of any shape; the output has the same shape and kind.
        channel_axis: axis of the channels for 'standardize' (1: NCHW, -1: NHWC, None: one
            channel, e.g. a flat (N, D) batch).
        mean, std: scalars or one value per channel; std > 0.

    Returns:
        float32 array (or Tensor) of x's shape.

    Example::

        >>> import numpy as np, gradfuse as gf
        >>> gf.data.scale_images(np.array([[0, 51, 255]], dtype=np.uint8))
        array([[0. , 0.2, 1. ]], dtype=float32)
    """
    a, was_tensor = _image_input(x)
    if mode not in ("minmax", "standardize"):
        raise ValueError(f"mode: expected 'minmax' or 'standardize', got {mode!r}")
    outer, c, inner = _image_layout(a, channel_axis)
    if mode == "minmax":
        if mean is not None or std is not None:
            raise ValueError("mean, std: only used with mode='standardize'")
        lo, hi = MinMaxScaler._check_range(feature_range)
        shift = np.zeros(c)
        mul = np.full(c, (float(hi) - float(lo)) / 255.0)
        add = np.full(c, float(lo))
    else:
        if (mean is None) != (std is None):
            raise ValueError("mean, std: give both (e.g. from image_stats on the training "
                             "set) or neither (computed from x)")
        if mean is None:
            if a.size == 0:
                raise ValueError(f"x: cannot compute mean/std of an empty batch {a.shape}")
            m, s = image_stats(a, channel_axis)
            s = np.where(s == 0.0, 1.0, s)
        else:
            m = _channel_values(mean, c, "mean")
            s = _channel_values(std, c, "std")
            if (s <= 0).any():
                raise ValueError(f"std: expected values > 0, got {s}")
        # (x / 255 - m) / s as (x - 255 m) / (255 s): x - 255 m is exact for a whole-pixel mean
        shift = 255.0 * m
        mul = 1.0 / (255.0 * s)
        add = np.zeros(c)
    if a.size == 0:
        out = np.empty(a.shape, np.float32)
    else:
        out = _backend.image_affine(a, outer, c, inner, shift, mul, add)
    return Tensor(out) if was_tensor else out
