"""normkit's functional API: stateless normalizations on any Keras backend's tensors (or NumPy arrays).

    >>> import numpy as np, normkit
    >>> x = np.random.default_rng(0).normal(size=(2, 8, 8, 10)).astype("float32")
    >>> y = normkit.ops.group_norm(x, groups=5, axis=3)
"""

from normkit.core.functional import (
    batch_norm,
    batch_norm_with_statistics,
    group_norm,
    instance_norm,
    layer_norm,
    moments,
    sufficient_statistics,
)
from normkit.core.statistics import (
    Moments,
    SufficientStatistics,
    moments_from_sufficient_statistics,
)

__all__ = [
    "Moments",
    "SufficientStatistics",
    "batch_norm",
    "batch_norm_with_statistics",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments",
    "moments_from_sufficient_statistics",
    "sufficient_statistics",
]
