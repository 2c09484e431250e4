"""normkit's core: statistics and normalization shared by every layer (see `normalize.py`)."""

from normkit.core.normalize import (
    Reduction,
    batch_reduction,
    group_reduction,
    layer_reduction,
    normalize,
    normalize_with_batch_statistics,
    normalize_with_given_statistics,
)
from normkit.core.statistics import (
    CrossReplicaSum,
    Moments,
    Statistics,
    SufficientStatistics,
    compute_statistics,
    moments,
    moments_from_sufficient_statistics,
    statistics_dtype,
    sufficient_statistics,
)

__all__ = [
    "CrossReplicaSum",
    "Moments",
    "Reduction",
    "Statistics",
    "SufficientStatistics",
    "batch_reduction",
    "compute_statistics",
    "group_reduction",
    "layer_reduction",
    "moments",
    "moments_from_sufficient_statistics",
    "normalize",
    "normalize_with_batch_statistics",
    "normalize_with_given_statistics",
    "statistics_dtype",
    "sufficient_statistics",
]
