"""Statistics: the first half of every normalization.

Everything here is written with `keras.ops`, so it runs on every backend. Two forms are offered:

- `moments`: mean and biased variance by two passes (the variance of `x - mean`), which survives a large
  common offset where the one-pass E[x^2] - E[x]^2 loses every digit;
- `sufficient_statistics`: count, shifted sum and shifted sum of squares, which add across devices or
  ghost batches and are combined by `moments_from_sufficient_statistics` (the form synchronized batch
  statistics need).

float16 and bfloat16 data are reduced in float32: squares of |x| > 256 overflow float16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from keras import ops

Tensor = Any

_LOW_PRECISION = ("float16", "bfloat16")


def statistics_dtype(dtype: Any) -> str:
    """The dtype statistics are computed in: float32 for 16-bit floats and float32, float64 stays."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    name = name.replace("torch.", "")
    if name == "float64":
        return "float64"
    return "float32"


def to_statistics_dtype(x: Tensor) -> Tensor:
    dtype = statistics_dtype(_dtype_name(x))
    return x if _dtype_name(x) == dtype else ops.cast(x, dtype)


def _dtype_name(x: Tensor) -> str:
    from keras import backend

    return backend.standardize_dtype(x.dtype)


class Moments(NamedTuple):
    mean: Tensor
    variance: Tensor


class SufficientStatistics(NamedTuple):
    """Additive statistics: combine replicas or sub-batches by summing every field but `shift`."""

    count: Tensor
    shifted_sum: Tensor
    shifted_sum_of_squares: Tensor
    shift: Tensor


def moments(
    x: Tensor,
    axes: Sequence[int],
    *,
    mask: Tensor | None = None,
    keepdims: bool = True,
) -> Moments:
    """Mean and biased variance of `x` over `axes`, two-pass, in the statistics dtype.

    `mask`, if given, broadcasts against `x`; positions where it is 0 are left out of both statistics.
    A reduction over zero elements gives NaN (callers that must survive it check the count).
    """
    x = to_statistics_dtype(x)
    axes = tuple(axes)
    if mask is None:
        mean = ops.mean(x, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
    else:
        weights = ops.cast(mask, x.dtype)
        weights = ops.broadcast_to(weights, ops.shape(x))
        count = ops.sum(weights, axis=axes, keepdims=True)
        mean = ops.sum(x * weights, axis=axes, keepdims=True) / count
        variance = ops.sum(ops.square(x - mean) * weights, axis=axes, keepdims=True) / count
    if not keepdims:
        mean = ops.squeeze(mean, axis=axes)
        variance = ops.squeeze(variance, axis=axes)
    return Moments(mean, variance)


def sufficient_statistics(
    x: Tensor,
    axes: Sequence[int],
    *,
    shift: Tensor | None = None,
    mask: Tensor | None = None,
    keepdims: bool = True,
) -> SufficientStatistics:
    """Count, sum of (x - shift) and sum of (x - shift)^2 over `axes`.

    A good shift (any value near the mean, e.g. a moving mean or an earlier pass's mean) keeps the sums
    small so that the variance survives a large offset. Without one the shift is zero.
    """
    x = to_statistics_dtype(x)
    axes = tuple(axes)
    if shift is None:
        shift = ops.zeros((), dtype=x.dtype)
    shift = ops.cast(shift, x.dtype)
    centered = x - shift
    if mask is None:
        count = 1.0
        for a in axes:
            count = count * ops.cast(ops.shape(x)[a], x.dtype)
        count = ops.cast(count, x.dtype)
        shifted_sum = ops.sum(centered, axis=axes, keepdims=keepdims)
        shifted_sum_of_squares = ops.sum(ops.square(centered), axis=axes, keepdims=keepdims)
    else:
        weights = ops.broadcast_to(ops.cast(mask, x.dtype), ops.shape(x))
        count = ops.sum(weights, axis=axes, keepdims=keepdims)
        shifted_sum = ops.sum(centered * weights, axis=axes, keepdims=keepdims)
        shifted_sum_of_squares = ops.sum(ops.square(centered) * weights, axis=axes, keepdims=keepdims)
    return SufficientStatistics(count, shifted_sum, shifted_sum_of_squares, shift)


def moments_from_sufficient_statistics(stats: SufficientStatistics) -> Moments:
    """Mean and biased variance from (possibly summed-across-replicas) sufficient statistics."""
    shifted_mean = stats.shifted_sum / stats.count
    variance = ops.maximum(stats.shifted_sum_of_squares / stats.count - ops.square(shifted_mean), 0.0)
    return Moments(shifted_mean + stats.shift, variance)
