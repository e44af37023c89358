"""The datasets a study trains on, split and standardized the same way for every run.

``digits`` (scikit-learn's bundled 8x8 digits, 1797 x 64, 10 classes; the default),
``spirals`` (2-D interleaved spirals, 3 classes: needs a nonlinear model), ``classification``
(a 20-feature Gaussian-cluster problem, 4 classes) and ``idx:<images>,<labels>`` (MNIST-style
IDX files, gzipped or not, images flattened). The split is drawn once from ``split_seed``,
so the seeds of a study vary only the weights and the batch order; a
``gf.data.StandardScaler`` is fitted on the training split only and applied to both.

Example::

    >>> from gradfuse.study import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.x_train.shape, ds.x_val.shape, ds.n_classes
    ((1438, 64), (359, 64), 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import gradfuse as gf

__all__ = ["Dataset", "load_dataset", "DATASETS"]

DATASETS = ("digits", "spirals", "classification", "idx:<images>,<labels>")


@dataclass
class Dataset:
    """Standardized float32 features and int64 labels, split into train and validation."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max())) + 1

    def describe(self) -> str:
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} validation samples, "
                f"{self.n_features} features, {self.n_classes} classes")


def _raw(spec: str):
    if spec == "digits":
        return gf.data.load_digits()
    if spec == "spirals":
        return gf.data.make_spirals(n_samples=1500, n_classes=3, noise=0.2, seed=0)
    if spec == "classification":
        return gf.data.make_classification(n_samples=2000, n_features=20, n_classes=4, seed=0)
    if spec.startswith("idx:"):
        parts = spec[4:].split(",")
        if len(parts) != 2 or not all(parts):
            raise ValueError("--dataset: expected idx:<images.idx[.gz]>,<labels.idx[.gz]>, "
                             f"got {spec!r}")
        x, y = gf.data.load_idx(parts[0]), gf.data.load_idx(parts[1])
        x = np.asarray(x)
        x = x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float32)
        y = np.asarray(y).reshape(-1)  # checked to be class indices by load_dataset
        if len(x) != len(y):
            raise ValueError(f"--dataset: {len(x)} images but {len(y)} labels in {spec!r}")
        return x, y
    raise ValueError(f"--dataset: unknown dataset {spec!r}; choose from {', '.join(DATASETS)}")


def load_dataset(spec: str = "digits", val_fraction: float = 0.2, train_size=None,
                 split_seed: int = 0) -> Dataset:
    """Load ``spec``, hold out ``val_fraction`` for validation, keep at most ``train_size``
    training samples (None: all), and standardize with the training split's statistics."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    x, y = _raw(spec)
    x, y = np.asarray(x, dtype=np.float32), _class_indices(np.asarray(y))
    if len(x) < 2:
        raise ValueError(f"--dataset: {len(x)} sample{'' if len(x) == 1 else 's'}; at least 2 "
                         f"are needed (one to train on, one to validate) in {spec!r}")
    order = np.random.default_rng(split_seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction)))
    if n_val >= len(x):
        raise ValueError(f"val_fraction: {val_fraction:g} of {len(x)} samples leaves none to "
                         "train on")
    val, train = order[:n_val], order[n_val:]
    if train_size is not None:
        train = train[:train_size]
    scaler = gf.data.StandardScaler()
    x_train = scaler.fit_transform(x[train])
    return Dataset(spec, np.ascontiguousarray(x_train, dtype=np.float32), y[train],
                   np.ascontiguousarray(scaler.transform(x[val]), dtype=np.float32), y[val])


def _class_indices(y):
    """``y`` as int64 class indices, or ValueError: the loss would otherwise fail mid-run on a
    negative label, and a fractional one would be silently truncated."""
    if y.dtype.kind == "f":
        bad = y[~np.isfinite(y) | (y != np.round(y))] if y.size else y
        if bad.size:
            raise ValueError(f"--dataset: labels must be whole numbers, found {bad[0]:.3g}")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"--dataset: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"--dataset: labels must be class indices >= 0, found {y.min()}")
    return y
