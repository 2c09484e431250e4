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
    Moments,
    SufficientStatistics,
    moments,
    moments_from_sufficient_statistics,
    statistics_dtype,
    sufficient_statistics,
)

__all__ = [
    "Moments",
    "Reduction",
    "SufficientStatistics",
    "batch_reduction",
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
