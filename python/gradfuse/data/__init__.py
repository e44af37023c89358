"""Data preparation (``gf.data``): feature scalers with scikit-learn's API and uint8 image
scaling, on compiled kernels.

Example::

    >>> import numpy as np, gradfuse as gf
    >>> X = np.array([[1.0], [3.0]], dtype=np.float32)
    >>> gf.data.StandardScaler().fit_transform(X)
    array([[-1.],
           [ 1.]], dtype=float32)
"""

from .scalers import MinMaxScaler, NotFittedError, StandardScaler, image_stats, scale_images

__all__ = ["MinMaxScaler", "StandardScaler", "NotFittedError", "scale_images", "image_stats"]
