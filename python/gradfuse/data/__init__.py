"""Data preparation (``gf.data``): feature scalers with scikit-learn's API and uint8 image
scaling on compiled kernels; data sets and mini-batch loading with PyTorch's API.

Example::

    >>> import numpy as np, gradfuse as gf
    >>> X = np.array([[1.0], [3.0]], dtype=np.float32)
    >>> gf.data.StandardScaler().fit_transform(X)
    array([[-1.],
           [ 1.]], dtype=float32)
    >>> loader = gf.data.DataLoader(gf.data.TensorDataset(X, np.arange(2)), batch_size=2)
    >>> [xb.shape for xb, yb in loader]
    [(2, 1)]
"""

from .dataset import Dataset, Subset, TensorDataset, random_split
from .datasets import load_digits, load_idx, make_classification, make_regression, make_spirals
from .loader import DataLoader, collate, permutation
from .sampler import DistributedSampler, Sampler, SequentialSampler
from .scalers import MinMaxScaler, NotFittedError, StandardScaler, image_stats, scale_images

__all__ = [
    "MinMaxScaler",
    "StandardScaler",
    "NotFittedError",
    "scale_images",
    "image_stats",
    "Dataset",
    "TensorDataset",
    "Subset",
    "random_split",
    "DataLoader",
    "collate",
    "permutation",
    "Sampler",
    "SequentialSampler",
    "DistributedSampler",
    "load_digits",
    "load_idx",
    "make_spirals",
    "make_classification",
    "make_regression",
]
